"""Renderers: golden-ish text checks, the nft set-difference property, and the real kernel.

The `netns` tests load every rendering into a fresh network namespace (ipsets, iptables and nft
are per namespace), read it back, and compare with what was meant; they also ask the kernel's own
ipset and nft lookups about boundary addresses and compare with the longest-prefix reference.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import re
import subprocess
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compiler.render.intervals import (
    interval_contains,
    interval_text,
    ipset_matches,
    match_intervals,
)
from compiler.render.ipset import render_ipset, temp_set_name
from compiler.render.iptables import quote_comment, render_iptables
from compiler.render.json import render_json
from compiler.render.nft import render_nft
from compiler.render.nft import set_elements as nft_set_elements
from compiler.render.text import render_text
from compiler.tables import (
    ALLOW_MARK,
    ENTRY_CHAIN,
    AddrMatch,
    Chain,
    CtStateMatch,
    IPSet,
    MarkMatch,
    PortMatch,
    ProtoMatch,
    Provenance,
    Rule,
    Ruleset,
    SetMatch,
)

NASTY = 'it\'s "quoted"\nCOMMIT\n-A FORWARD -j ACCEPT # \\ é'


def net(c: str):
    return ipaddress.ip_network(c, strict=False)


def make_ruleset() -> Ruleset:
    """Every match and target kind, both families, nested excepts, /0, a hostile comment."""
    pol = Provenance("policy-rule", "prod/allow-api", "ingress", 0, 1, 0)
    egress = Provenance("policy-rule", "prod/allow-dns", "egress", 0, None, None)
    fwd = (
        Rule((CtStateMatch(("INVALID",)),), "DROP", provenance=Provenance("conntrack")),
        Rule(
            (CtStateMatch(("ESTABLISHED", "RELATED")),),
            "ACCEPT",
            provenance=Provenance("conntrack"),
        ),
        Rule(
            (AddrMatch("10.0.1.5", "src"), SetMatch("NODE-IPS-4", "dst")),
            "ACCEPT",
            provenance=Provenance("node-exemption", node="n1"),
        ),
        Rule((AddrMatch("10.0.1.5/32", "src"),), "JUMP", jump="NPEMU-E-api"),
        Rule((AddrMatch("fd00::1:5", "src"),), "JUMP", jump="NPEMU-E-api"),
        Rule((AddrMatch("10.0.1.5", "dst"),), "JUMP", jump="NPEMU-I-api"),
        Rule((AddrMatch("fd00::1:5/128", "dst"),), "JUMP", jump="NPEMU-I-api"),
    )
    per_pod_e = (
        Rule((AddrMatch("10.0.1.5", "dst"),), "RETURN", provenance=Provenance("self", pod="p/a")),
        Rule((), "MARK", mark=(0, ALLOW_MARK), provenance=Provenance("clear-mark")),
        Rule((), "JUMP", jump="NPEMU-PE-dns", provenance=Provenance("policy-jump", "p/dns")),
        Rule((MarkMatch(ALLOW_MARK, ALLOW_MARK),), "RETURN", provenance=Provenance("allow-check")),
        Rule((), "DROP", provenance=Provenance("default-deny", direction="egress", pod="p/a")),
    )
    per_pod_i = (
        Rule((), "MARK", mark=(0, ALLOW_MARK)),
        Rule((), "JUMP", jump="NPEMU-PI-api"),
        Rule((MarkMatch(ALLOW_MARK, ALLOW_MARK),), "RETURN"),
        Rule((MarkMatch(0x5, 0xFFFFFFFF),), "RETURN", comment="full mask"),
        Rule((), "DROP", comment=NASTY),
    )
    pe = (
        Rule(
            (SetMatch("CIDR-4", "dst"), ProtoMatch("udp"), PortMatch(53, 53)),
            "MARK",
            mark=(ALLOW_MARK, ALLOW_MARK),
            provenance=egress,
        ),
        Rule(
            (SetMatch("CIDR-6", "dst"), ProtoMatch("udp"), PortMatch(53, 53)),
            "MARK",
            mark=(ALLOW_MARK, ALLOW_MARK),
            provenance=egress,
        ),
        Rule((SetMatch("ALL-4", "dst"),), "MARK", mark=(ALLOW_MARK, ALLOW_MARK)),
        Rule((SetMatch("ALL-6", "dst"),), "MARK", mark=(ALLOW_MARK, ALLOW_MARK)),
    )
    pi = (
        Rule(
            (SetMatch("PODS-4", "src"), ProtoMatch("tcp"), PortMatch(8080, 8090)),
            "MARK",
            mark=(ALLOW_MARK, ALLOW_MARK),
            provenance=pol,
        ),
        Rule(
            (SetMatch("PODS-6", "src"), ProtoMatch("sctp"), PortMatch(9000, 9000)),
            "MARK",
            mark=(ALLOW_MARK, ALLOW_MARK),
            provenance=pol,
        ),
        Rule((ProtoMatch("icmp"),), "MARK", mark=(ALLOW_MARK, ALLOW_MARK), comment="v4 ping"),
        Rule((ProtoMatch("icmpv6"),), "MARK", mark=(ALLOW_MARK, ALLOW_MARK), family=6),
        Rule((ProtoMatch("tcp"),), "MARK", mark=(0x1, 0x0), family=4, comment="toggle bit 0"),
        Rule((ProtoMatch("udp"), PortMatch(1, 65535)), "MARK", mark=(0x3, 0xFF), family=6),
        # Contradictions: never match anywhere, so left out of every rendering.
        Rule((SetMatch("PODS-4", "src"), AddrMatch("fd00::9", "dst")), "ACCEPT"),
        Rule((ProtoMatch("icmp"),), "ACCEPT", family=6),
        Rule((AddrMatch("::/0", "src"),), "DROP", comment="any v6 source"),
    )
    chains = [
        Chain(ENTRY_CHAIN, fwd, comment="entry"),
        Chain("NPEMU-E-api", per_pod_e, owner="p/a"),
        Chain("NPEMU-I-api", per_pod_i, owner="p/a"),
        Chain("NPEMU-PE-dns", pe, owner="p/dns"),
        Chain("NPEMU-PI-api", pi, owner="prod/allow-api"),
    ]
    sets = [
        IPSet("NODE-IPS-4", "hash:ip", 4, ("192.168.0.1/32", "192.168.0.2"), comment="node n1"),
        IPSet("PODS-4", "hash:ip", 4, ("10.0.1.7", "10.0.2.9", "10.0.1.7/32")),
        IPSet("PODS-6", "hash:ip", 6, ("fd00::1:7/128", "fd00::2:9")),
        # Nested excepts: an entry inside an except inside an entry inside an except.
        IPSet(
            "CIDR-4",
            "hash:net",
            4,
            ("10.0.0.0/8", "10.1.2.0/24", "10.1.2.128/28"),
            ("10.1.0.0/16", "10.1.2.128/25", "10.1.2.130/31"),
            comment='ipBlock "prod" \n except',
        ),
        IPSet("CIDR-6", "hash:net", 6, ("fd00::/16", "fd00:1::/32"), ("fd00::/32",)),
        IPSet("ALL-4", "hash:net", 4, ("0.0.0.0/0",), ("10.0.0.0/8", "172.16.0.0/12")),
        IPSet("ALL-6", "hash:net", 6, ("::/0", "8000::/1"), ("fd00::/8",)),
    ]
    return Ruleset({c.name: c for c in chains}, {s.name: s for s in sets})


def rule_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("-A ")]


# ---------------------------------------------------------------------------------------------
# ipset


def test_ipset_text() -> None:
    text = render_ipset(make_ruleset())
    tmp = temp_set_name(make_ruleset().sets["CIDR-4"])
    assert len(tmp) <= 31
    assert "create CIDR-4 hash:net family inet maxelem 1048576 -exist" in text
    assert f"create {tmp} hash:net family inet maxelem 1048576 -exist\nflush {tmp}\n" in text
    assert f"add {tmp} 10.1.0.0/16 nomatch\n" in text
    assert f"add {tmp} 10.1.2.128/28\n" in text
    assert f"swap {tmp} CIDR-4\ndestroy {tmp}\n" in text
    assert "create PODS-6 hash:ip family inet6" in text
    # The set comment is a `#` line with the newline escaped: nothing can start a command.
    assert '# ipBlock "prod" \\n except\n' in text
    for line in text.splitlines():
        assert line.startswith(("#", "create ", "flush ", "add ", "swap ", "destroy "))


def test_ipset_fixups() -> None:
    rs = make_ruleset()
    text = render_ipset(rs)
    t = {n: temp_set_name(s) for n, s in rs.sets.items()}
    # hash:ip: /32 and /128 become addresses, duplicates go.
    assert f"add {t['NODE-IPS-4']} 192.168.0.1\n" in text
    assert text.count(f"add {t['PODS-4']} 10.0.1.7\n") == 1
    assert f"add {t['PODS-6']} fd00::1:7\n" in text
    # /0 -> two /1; for ALL-6 the 8000::/1 listed itself replaces that half.
    assert f"add {t['ALL-4']} 0.0.0.0/1\n" in text and f"add {t['ALL-4']} 128.0.0.0/1\n" in text
    assert "/0" not in text
    assert text.count(f"add {t['ALL-6']} 8000::/1\n") == 1
    assert f"add {t['ALL-6']} ::/1\n" in text


def test_ipset_zero_nomatch_versus_half() -> None:
    """A /0 nomatch split must not override an explicitly listed /1 entry (more specific)."""
    s = IPSet("Z", "hash:net", 4, ("0.0.0.0/1", "10.0.0.0/8"), ("0.0.0.0/0", "10.0.0.0/8"))
    text = render_ipset(Ruleset({}, {"Z": s}))
    tmp = temp_set_name(s)
    adds = sorted(ln.removeprefix(f"add {tmp} ") for ln in text.splitlines() if " add " in f" {ln}")
    # 10.0.0.0/8 is listed both ways: nomatch wins; 0/0 nomatch only keeps the 128/1 half.
    assert adds == ["0.0.0.0/1", "10.0.0.0/8 nomatch", "128.0.0.0/1 nomatch"]


@pytest.mark.parametrize(
    "bad",
    [
        IPSet("A", "hash:ip", 4, ("10.0.0.0/24",)),
        IPSet("A", "hash:ip", 4, ("10.0.0.1",), ("10.0.0.2",)),
        IPSet("A", "hash:ip", 4, ("fd00::1",)),
        IPSet("A", "hash:ip", 4, ("0.0.0.0",)),
        IPSet("A", "hash:net", 6, ("10.0.0.0/8",)),
        IPSet("A", "hash:net", 4, ("nonsense",)),
        IPSet("A" * 32, "hash:ip", 4, ()),
        IPSet("bad name", "hash:ip", 4, ()),
        IPSet("-x", "hash:ip", 4, ()),
    ],
)
def test_ipset_rejects(bad: IPSet) -> None:
    with pytest.raises(ValueError):
        render_ipset(Ruleset({}, {bad.name: bad}))


# ---------------------------------------------------------------------------------------------
# iptables


def test_iptables_v4_text() -> None:
    text = render_iptables(make_ruleset(), 4)
    lines = text.splitlines()
    assert lines[1] == "*filter" and lines[-1] == "COMMIT"
    assert ":NPEMU-FORWARD - [0:0]" in lines and ":NPEMU-PI-api - [0:0]" in lines
    assert not any(ln.startswith(":FORWARD") for ln in lines)  # never reset a built-in chain
    assert lines[-2] == "-I FORWARD -j NPEMU-FORWARD"
    assert not any(ln.startswith("-D ") for ln in lines)
    rl = rule_lines(text)
    assert (
        rl[0]
        == "-A NPEMU-FORWARD -m conntrack --ctstate INVALID -m comment --comment conntrack -j DROP"
    )
    assert "-A NPEMU-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED" in rl[1]
    assert (
        "-A NPEMU-FORWARD -s 10.0.1.5/32 -m set --match-set NODE-IPS-4 dst "
        '-m comment --comment "node exemption (n1)" -j ACCEPT'
    ) in rl
    assert "-A NPEMU-FORWARD -s 10.0.1.5/32 -j NPEMU-E-api" in rl
    assert "-A NPEMU-FORWARD -d 10.0.1.5/32 -j NPEMU-I-api" in rl
    assert (
        "-A NPEMU-PI-api -p tcp -m set --match-set PODS-4 src -m tcp --dport 8080:8090 "
        '-m comment --comment "prod/allow-api ingress[0] from[1] ports[0]" '
        "-j MARK --set-xmark 0x100000/0x100000"
    ) in rl
    assert (
        "-A NPEMU-PE-dns -p udp -m set --match-set CIDR-4 dst -m udp --dport 53 "
        '-m comment --comment "prod/allow-dns egress[0] to[*] ports[*]" '
        "-j MARK --set-xmark 0x100000/0x100000"
    ) in rl
    assert '-A NPEMU-PI-api -p icmp -m comment --comment "v4 ping" -j MARK' in text
    assert '-p tcp -m comment --comment "toggle bit 0" -j MARK --set-xmark 0x1/0x0' in text
    assert '-A NPEMU-I-api -m mark --mark 0x5 -m comment --comment "full mask" -j RETURN' in rl
    assert "-A NPEMU-I-api -m mark --mark 0x100000/0x100000 -j RETURN" in rl
    assert "-m comment --comment clear-mark -j MARK --set-xmark 0x0/0x100000" in text
    # Nothing of the other family, nothing contradictory.
    assert not re.search(r"fd00|PODS-6|CIDR-6|ALL-6|ipv6-icmp|sctp", text)
    assert len(rl) == 5 + 5 + 5 + 2 + 3


def test_iptables_v6_text() -> None:
    text = render_iptables(make_ruleset(), 6)
    rl = rule_lines(text)
    assert "-A NPEMU-FORWARD -s fd00::1:5/128 -j NPEMU-E-api" in rl
    assert "-A NPEMU-PI-api -p ipv6-icmp -j MARK --set-xmark 0x100000/0x100000" in rl
    assert "-A NPEMU-PI-api -p sctp -m set --match-set PODS-6 src -m sctp --dport 9000 " in text
    assert "-A NPEMU-PI-api -p udp -m udp --dport 1:65535 -j MARK --set-xmark 0x3/0xff" in rl
    assert '-A NPEMU-PI-api -m comment --comment "any v6 source" -j DROP' in rl
    assert not re.search(r"10\.0\.|PODS-4|NODE-IPS-4|-p icmp |toggle", text)
    # Rules with no match of a family (conntrack, clear-mark, jumps, drops) are in both.
    assert sum("--ctstate" in ln for ln in rl) == 2


def test_iptables_comment_escaping_and_truncation() -> None:
    text = render_iptables(make_ruleset(), 4)
    (line,) = [ln for ln in rule_lines(text) if "COMMIT" in ln]
    assert line.endswith(
        r'--comment "it\'s \"quoted\"\\nCOMMIT\\n-A FORWARD -j ACCEPT # \\ é" -j DROP'
    )
    assert text.count("\nCOMMIT\n") == 1 and text.endswith("\nCOMMIT\n")
    # Byte limit on the unescaped text, on a character boundary, never splitting an escape.
    long = quote_comment('é"' * 200)
    body = long[1:-1].replace('\\"', '"')
    assert len(body.encode()) <= 255 and body.endswith("...")
    assert not long[1:-1].replace('\\"', "").count('"')
    assert quote_comment("a\\") == '"a\\\\"'


def test_iptables_current_state() -> None:
    rs = make_ruleset()
    current = "\n".join(
        [
            "*nat",
            "-A FORWARD -j NPEMU-FORWARD",  # another table: not ours to count
            "COMMIT",
            "*filter",
            ":FORWARD ACCEPT [0:0]",
            ":NPEMU-FORWARD - [0:0]",
            ":NPEMU-E-old - [0:0]",
            ":KUBE-FORWARD - [0:0]",
            "-A FORWARD -j NPEMU-FORWARD",
            "-A FORWARD -j NPEMU-FORWARD",
            "-A FORWARD -j KUBE-FORWARD",
            "COMMIT",
        ]
    )
    lines = render_iptables(rs, 4, current=current).splitlines()
    assert lines.count("-D FORWARD -j NPEMU-FORWARD") == 2
    assert lines.count("-I FORWARD -j NPEMU-FORWARD") == 1
    assert ":NPEMU-E-old - [0:0]" in lines and "-X NPEMU-E-old" in lines
    assert not any("KUBE" in ln for ln in lines)
    assert lines.index("-X NPEMU-E-old") > lines.index("-I FORWARD -j NPEMU-FORWARD")


@pytest.mark.parametrize(
    "chains",
    [
        {"NPEMU-FORWARD": Chain("NPEMU-FORWARD", (Rule((), "JUMP", jump="NOPE"),))},
        {"NPEMU-FORWARD": Chain("NPEMU-FORWARD", (Rule((PortMatch(1, 2),)),))},
        {"NPEMU-FORWARD": Chain("NPEMU-FORWARD", (Rule((ProtoMatch("icmp"), PortMatch(1, 2))),))},
        {"NPEMU-FORWARD": Chain("NPEMU-FORWARD", (Rule((SetMatch("NOPE", "src"),)),))},
        {"NPEMU-FORWARD": Chain("NPEMU-FORWARD", (Rule((CtStateMatch(("BOGUS",)),)),))},
        {"NPEMU-FORWARD": Chain("NPEMU-FORWARD", (Rule((), "MARK"),))},
        {"NPEMU-FORWARD": Chain("NPEMU-FORWARD"), "X" * 29: Chain("X" * 29)},
        {"NPEMU-FORWARD": Chain("NPEMU-FORWARD"), "A B": Chain("A B")},
        {"NPEMU-FORWARD": Chain("NPEMU-FORWARD"), "FORWARD": Chain("FORWARD")},
        {"OTHER": Chain("OTHER")},
    ],
)
def test_iptables_rejects(chains: dict[str, Chain]) -> None:
    with pytest.raises(ValueError):
        render_iptables(Ruleset(chains), 4)
    with pytest.raises(ValueError):
        render_nft(Ruleset(chains))


# ---------------------------------------------------------------------------------------------
# nft


def test_nft_text() -> None:
    text = render_nft(make_ruleset())
    lines = [ln.strip() for ln in text.splitlines()]
    assert lines[2:5] == ["table inet npemu {}", "delete table inet npemu", "table inet npemu {"]
    assert "type filter hook forward priority 0; policy accept;" in lines
    assert "jump NPEMU-FORWARD" in lines
    assert (
        "ip daddr @CIDR-4 meta l4proto udp th dport 53 meta mark set meta mark | 0x00100000" in text
    )
    assert "ip6 saddr @PODS-6 meta l4proto sctp th dport 9000 meta mark set" in text
    assert "ip saddr 10.0.1.5/32 ip daddr @NODE-IPS-4 accept" in text
    assert "ct state invalid drop" in text and "ct state established,related accept" in text
    assert "meta mark set meta mark & 0xffefffff comment" in text
    assert "meta mark & 0x00100000 == 0x00100000 return" in text
    assert 'meta mark 0x00000005 return comment "full mask"' in text
    assert "meta nfproto ipv4 meta l4proto icmp meta mark set" in text
    assert "meta nfproto ipv6 meta l4proto ipv6-icmp meta mark set" in text
    assert (
        "meta nfproto ipv4 meta l4proto tcp meta mark set meta mark & 0xffffffff ^ 0x00000001"
        in text
    )
    assert (
        "meta nfproto ipv6 meta l4proto udp th dport 1-65535 meta mark set meta mark & 0xffffff00 ^ 0x00000003"
        in text
    )
    assert text.count("left out") == 2
    assert 'ip6 saddr ::/0 drop comment "any v6 source"' in text
    assert "COMMIT" in text and '"quoted"' not in text and "'quoted'" in text
    for m in re.finditer(r'comment "([^"]*)"', text):
        assert len(m.group(1).encode()) <= 128 and "\n" not in m.group(1)


def test_nft_set_elements() -> None:
    rs = make_ruleset()
    assert nft_set_elements(rs.sets["CIDR-4"]) == [
        "10.0.0.0/16",
        "10.1.2.0-10.1.2.129",  # 10.1.2.128/31 (in the /28) is adjacent to 10.1.2.0/25
        "10.1.2.132-10.1.2.143",
        "10.2.0.0-10.255.255.255",
    ]
    assert nft_set_elements(rs.sets["CIDR-6"]) == [
        "fd00:1::-fd00:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    ]
    assert nft_set_elements(rs.sets["ALL-4"]) == [
        "0.0.0.0-9.255.255.255",
        "11.0.0.0-172.15.255.255",
        "172.32.0.0-255.255.255.255",
    ]
    assert nft_set_elements(rs.sets["PODS-4"]) == ["10.0.1.7", "10.0.2.9"]


# ---------------------------------------------------------------------------------------------
# intervals: nft's set difference equals ipset's longest-prefix semantics


def test_interval_text() -> None:
    assert interval_text(0, 2**32 - 1, 4) == "0.0.0.0/0"
    assert (
        interval_text(
            int(ipaddress.IPv4Address("10.0.0.0")), int(ipaddress.IPv4Address("10.0.2.255")), 4
        )
        == "10.0.0.0-10.0.2.255"
    )
    assert interval_text(1, 1, 6) == "::1/128"


def _prefixes(family: int) -> st.SearchStrategy:
    # A narrow universe, so that prefixes nest and collide often.
    if family == 4:
        base, bits, lo, hi = int(ipaddress.IPv4Address("10.0.0.0")), 32, 14, 32
        cls = ipaddress.IPv4Network
    else:
        base, bits, lo, hi = int(ipaddress.IPv6Address("fd00::")), 128, 110, 128
        cls = ipaddress.IPv6Network

    def build(offset: int, plen: int):
        return cls((base + offset, plen), strict=False)

    wide = st.sampled_from([cls((0, 0)), cls((base, 8), strict=False)])
    narrow = st.builds(build, st.integers(0, 2 ** (bits - lo) - 1), st.integers(lo, hi))
    return st.one_of(narrow, narrow, narrow, wide)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([4, 6]).flatmap(
        lambda f: st.tuples(
            st.lists(_prefixes(f), max_size=8),
            st.lists(_prefixes(f), max_size=8),
            st.lists(st.integers(0, 2**18), max_size=20),
            st.just(f),
        )
    )
)
def test_intervals_equal_ipset_semantics(case) -> None:
    entries, nomatch, offsets, family = case
    ivs = match_intervals(entries, nomatch)
    # Sorted, disjoint, not adjacent (adjacent ones are merged).
    assert all(a[1] + 1 < b[0] for a, b in itertools.pairwise(ivs))
    assert all(lo <= hi for lo, hi in ivs)
    cls = ipaddress.IPv4Address if family == 4 else ipaddress.IPv6Address
    base = int(cls("10.0.0.0" if family == 4 else "fd00::"))
    probes = {base + o for o in offsets}
    for n in [*entries, *nomatch]:  # every boundary and its neighbours
        for v in (int(n.network_address), int(n.broadcast_address)):
            probes |= {v - 1, v, v + 1}
    for v in probes:
        if not 0 <= v < 2 ** (32 if family == 4 else 128):
            continue
        assert interval_contains(ivs, v) == ipset_matches(entries, nomatch, cls(v)), cls(v)


# ---------------------------------------------------------------------------------------------
# text and JSON


def test_text_and_json() -> None:
    rs = make_ruleset()
    text = render_text(rs)
    assert "Chain NPEMU-FORWARD (entry)" in text
    assert "prod/allow-api ingress[0] from[1] ports[0]" in text
    assert "-> NPEMU-E-api" in text and "MARK 0x100000/0x100000" in text
    assert "!10.1.0.0/16" in text and "hash:net IPv4 (3 entries, 3 nomatch)" in text
    assert "COMMIT\n" not in text  # the newline in the comment is shown escaped
    big = IPSet("BIG", "hash:ip", 4, tuple(f"10.9.0.{i}" for i in range(1, 101)))
    assert "... and 80 more" in render_text(Ruleset({}, {"BIG": big}))
    data = json.loads(render_json(rs))
    assert data == json.loads(json.dumps(rs.to_dict()))
    assert data["entry"] == ENTRY_CHAIN and len(data["chains"]) == 5


# ---------------------------------------------------------------------------------------------
# the real kernel


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"npemu-rt-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def ns_run(
    ns: str, *argv: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, *argv], input=stdin, capture_output=True, text=True
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} failed ({proc.returncode}): {proc.stderr}")
    return proc


def load_iptables(ns: str, rs: Ruleset) -> None:
    ns_run(ns, "ipset", "restore", stdin=render_ipset(rs))
    for family, save, restore in (
        (4, "iptables-save", "iptables-restore"),
        (6, "ip6tables-save", "ip6tables-restore"),
    ):
        current = ns_run(ns, save, "-t", "filter").stdout
        ns_run(ns, restore, "--noflush", stdin=render_iptables(rs, family, current=current))


def saved_rules(ns: str, family: int) -> list[str]:
    save = "iptables-save" if family == 4 else "ip6tables-save"
    return rule_lines(ns_run(ns, save, "-t", "filter").stdout)


@pytest.mark.netns
def test_kernel_accepts_all(netns: str) -> None:
    rs = make_ruleset()
    ns_run(netns, "ipset", "restore", stdin=render_ipset(rs))
    ns_run(netns, "iptables-restore", "--test", "--noflush", stdin=render_iptables(rs, 4))
    ns_run(netns, "ip6tables-restore", "--test", "--noflush", stdin=render_iptables(rs, 6))
    ns_run(netns, "nft", "-c", "-f", "-", stdin=render_nft(rs))


@pytest.mark.netns
def test_kernel_iptables_load_and_read_back(netns: str) -> None:
    rs = make_ruleset()
    # The node already has rules of its own: they must survive, untouched.
    ns_run(netns, "iptables", "-N", "KUBE-FORWARD")
    ns_run(netns, "iptables", "-A", "FORWARD", "-j", "KUBE-FORWARD")
    ns_run(netns, "iptables", "-A", "KUBE-FORWARD", "-p", "tcp", "-j", "ACCEPT")
    load_iptables(netns, rs)
    for family in (4, 6):
        got = saved_rules(netns, family)
        want = rule_lines(render_iptables(rs, family))
        ours = [ln for ln in got if ln.startswith("-A NPEMU-")]
        # iptables-save lists chains by name; within a chain the order is ours, text identical.
        assert sorted(ours) == sorted(want)
        for chain in rs.chains:
            assert [ln for ln in ours if ln.split()[1] == chain] == [
                ln for ln in want if ln.split()[1] == chain
            ]
        hooks = [ln for ln in got if ln.startswith("-A FORWARD")]
        assert hooks[0] == "-A FORWARD -j NPEMU-FORWARD"  # first: policy before node ACCEPTs
        assert hooks.count("-A FORWARD -j NPEMU-FORWARD") == 1
    assert "-A KUBE-FORWARD -p tcp -j ACCEPT" in saved_rules(netns, 4)
    assert "-A FORWARD -j KUBE-FORWARD" in saved_rules(netns, 4)

    # ipsets hold what was meant (after the /0 and /32 fix-ups).
    listed = ns_run(netns, "ipset", "list", "CIDR-4").stdout
    members = listed.split("Members:\n", 1)[1].split()
    assert "10.1.0.0/16" in members and "10.1.2.130/31" in members
    assert members.count("nomatch") == 3 and "References: 1" in listed
    all4 = ns_run(netns, "ipset", "list", "ALL-4").stdout.split("Members:\n", 1)[1]
    assert sorted(all4.split("\n")) == sorted(
        ["0.0.0.0/1", "128.0.0.0/1", "10.0.0.0/8 nomatch", "172.16.0.0/12 nomatch", ""]
    )
    assert "192.168.0.1\n" in ns_run(netns, "ipset", "list", "NODE-IPS-4").stdout

    # Re-applying (sets swapped while referenced, chains flushed and refilled) is idempotent.
    def state() -> list:
        # A swapped-in set is a new set: its hash seed (initval) and member order differ.
        sets = re.sub(r" initval 0x[0-9a-f]+", "", ns_run(netns, "ipset", "save").stdout)
        return [saved_rules(netns, 4), saved_rules(netns, 6), sorted(sets.splitlines())]

    before = state()
    load_iptables(netns, rs)
    after = state()
    assert after == before
    assert "npemu-t-" not in "".join(after[2])  # no temporary set left behind

    # A smaller ruleset: the stale chains are removed, the hook stays single.
    small = Ruleset({ENTRY_CHAIN: Chain(ENTRY_CHAIN, (Rule((), "RETURN", comment="only"),))}, {})
    load_iptables(netns, small)
    got = saved_rules(netns, 4)
    assert [ln for ln in got if "NPEMU" in ln] == [
        "-A FORWARD -j NPEMU-FORWARD",
        "-A NPEMU-FORWARD -m comment --comment only -j RETURN",
    ]
    assert not re.search(r"^:NPEMU-(E|I|PE|PI)-", ns_run(netns, "iptables-save").stdout, re.M)


def _probe_addresses(s: IPSet) -> list[str]:
    cls = ipaddress.IPv4Address if s.family == 4 else ipaddress.IPv6Address
    top = 2 ** (32 if s.family == 4 else 128)
    vals: set[int] = set()
    for c in (*s.entries, *s.nomatch):
        n = net(c)
        for v in (int(n.network_address), int(n.broadcast_address)):
            vals |= {x for x in (v - 1, v, v + 1) if 0 < x < top - 1}
    return [str(cls(v)) for v in sorted(vals)]


@pytest.mark.netns
def test_kernel_nft_load_and_sets_equal_ipset(netns: str) -> None:
    rs = make_ruleset()
    script = render_nft(rs)
    ns_run(netns, "nft", "-f", "-", stdin=script)
    first = ns_run(netns, "nft", "list", "ruleset").stdout
    ns_run(netns, "nft", "-f", "-", stdin=script)  # re-apply: atomic replace, same result
    assert ns_run(netns, "nft", "list", "ruleset").stdout == first
    assert first.count("table inet npemu") == 1 and "chain NPEMU-PI-api" in first

    # The kernel kept exactly the computed intervals.
    for name in ("CIDR-4", "CIDR-6", "ALL-4", "ALL-6"):
        s = rs.sets[name]
        data = json.loads(ns_run(netns, "nft", "-j", "list", "set", "inet", "npemu", name).stdout)
        (elem,) = [x["set"] for x in data["nftables"] if "set" in x]
        kernel = []
        for e in elem.get("elem", []):
            if isinstance(e, dict) and "prefix" in e:
                n = net(f"{e['prefix']['addr']}/{e['prefix']['len']}")
                kernel.append((int(n.network_address), int(n.broadcast_address)))
            elif isinstance(e, dict) and "range" in e:
                lo, hi = (int(ipaddress.ip_address(a)) for a in e["range"])
                kernel.append((lo, hi))
            else:
                kernel.append((int(ipaddress.ip_address(e)),) * 2)
        entries = [net(c) for c in s.entries]
        nomatch = [net(c) for c in s.nomatch]
        assert sorted(kernel) == match_intervals(entries, nomatch), name

    # Both kernel lookups agree with the reference on every boundary address: ipset's own
    # longest-prefix match (`ipset test`) and nft's interval set (`nft get element`).
    ns_run(netns, "ipset", "restore", stdin=render_ipset(rs))
    for name in ("CIDR-4", "ALL-4", "CIDR-6", "ALL-6"):
        s = rs.sets[name]
        entries = [net(c) for c in s.entries]
        nomatch = [net(c) for c in s.nomatch]
        for addr in _probe_addresses(s):
            want = ipset_matches(entries, nomatch, ipaddress.ip_address(addr))
            in_ipset = ns_run(netns, "ipset", "test", name, addr, check=False).returncode == 0
            in_nft = (
                ns_run(
                    netns,
                    "nft",
                    "get",
                    "element",
                    "inet",
                    "npemu",
                    name,
                    "{",
                    addr,
                    "}",
                    check=False,
                ).returncode
                == 0
            )
            assert (in_ipset, in_nft) == (want, want), (name, addr)


@pytest.mark.netns
def test_kernel_nft_mark_bytecode(netns: str) -> None:
    """--set-xmark V/M is mark = (mark & ~M) ^ V: check the bytecode nft generated."""
    marks = [(0x100000, 0x100000), (0, 0x100000), (0x1, 0x0), (0x3, 0xFF), (0x7, 0xFFFFFFFF)]
    rules = tuple(Rule((), "MARK", mark=m) for m in marks)
    rs = Ruleset({ENTRY_CHAIN: Chain(ENTRY_CHAIN, rules)}, {})
    out = ns_run(netns, "nft", "--debug=netlink", "-c", "-f", "-", stdin=render_nft(rs)).stdout
    got = re.findall(
        r"bitwise reg 1 = \( reg 1 & (0x[0-9a-f]+) \) \^ (0x[0-9a-f]+)|immediate reg 1 (0x[0-9a-f]+)",
        out,
    )
    want = []
    for v, m in marks:
        if m == 0xFFFFFFFF:
            want.append(("", "", f"{v:#010x}"))
        else:
            want.append((f"{0xFFFFFFFF & ~m:#010x}", f"{v:#010x}", ""))
    assert got == want


@pytest.mark.netns
def test_kernel_long_comments(netns: str) -> None:
    """Comments at and past the kernel limits, with multi-byte characters and quotes at the cut."""
    texts = ["x" * 300, "é" * 200, '"' * 300, "\\" * 300, "a\nb\rc\td\x00e\u2028f"]
    rules = tuple(Rule((), "RETURN", comment=t) for t in texts)
    rs = Ruleset({ENTRY_CHAIN: Chain(ENTRY_CHAIN, rules)}, {})
    load_iptables(netns, rs)
    assert [ln for ln in saved_rules(netns, 4) if ln.startswith("-A NPEMU")] == rule_lines(
        render_iptables(rs, 4)
    )
    ns_run(netns, "nft", "-f", "-", stdin=render_nft(rs))
    listed = ns_run(netns, "nft", "list", "chain", "inet", "npemu", ENTRY_CHAIN).stdout
    assert listed.count("return comment") == len(texts)
