"""An ``nft -f`` script for a Ruleset: one ``inet`` table, replaced atomically.

    table inet npemu {}            # make sure it exists, so that...
    delete table inet npemu        # ...this never fails (nft 1.0.6 has no `destroy`)
    table inet npemu { ... }       # the whole new table; the file is one transaction

The table holds a ``forward`` base chain (filter hook, priority 0, policy accept) that jumps to
the entry chain, one regular chain per IR chain, and one named set per ipset. nft sets have no
``nomatch``: a ``hash:net`` set becomes an interval set holding exactly the addresses ipset would
match (``intervals.match_intervals``), written as disjoint prefixes/ranges, without
``auto-merge`` (which could merge an except away).

Differences from the iptables rendering, by necessity: one rule serves both families, so a
family-specific rule gets ``meta nfproto ipv4|ipv6`` unless an address or set match already
implies it; ``--set-xmark V/M`` (mark = (mark & ~M) ^ V) becomes ``meta mark set meta mark & ~M
^ V`` (simplified when it is a plain set-bits or clear-bits); comments are limited to 128 bytes
and cannot contain ``"`` (nft strings have no escapes), which becomes ``'``.
"""

from __future__ import annotations

from compiler.render._common import (
    check_chain_name,
    check_rule,
    check_set_name,
    clean_text,
    hash_ip_entries,
    network,
    rule_families,
    rule_text,
    set_networks,
    truncate_utf8,
)
from compiler.render.intervals import interval_text, match_intervals
from compiler.tables import (
    AddrMatch,
    CtStateMatch,
    IPSet,
    MarkMatch,
    PortMatch,
    ProtoMatch,
    Rule,
    Ruleset,
    SetMatch,
)

TABLE = "npemu"
BASE_CHAIN = "forward"
MAX_COMMENT_BYTES = 128  # NFTNL_UDATA_COMMENT_MAXLEN; nft rejects 129
FULL = 0xFFFFFFFF
_L4 = {"icmpv6": "ipv6-icmp"}
_NFT_CT_ORDER = ("INVALID", "ESTABLISHED", "RELATED", "NEW", "UNTRACKED")
_NFPROTO = {4: "ipv4", 6: "ipv6"}
_ADDR = {4: "ip", 6: "ip6"}
# nft keywords a bare chain or set name must not be (the parser would read them as syntax).
_RESERVED = frozenset(
    [
        "accept",
        "drop",
        "return",
        "jump",
        "goto",
        "continue",
        "queue",
        "table",
        "chain",
        "set",
        "map",
        "rule",
        "element",
        "counter",
        "comment",
        "ip",
        "ip6",
        "inet",
        "meta",
        "ct",
        "tcp",
        "udp",
        "sctp",
        "th",
        "icmp",
        "type",
        "hook",
        "priority",
        "policy",
        "flags",
        "elements",
        "forward",
        "filter",
    ]
)


def quote_comment(text: str) -> str:
    """``"..."`` for nft: one line, at most 128 bytes, no ``"`` inside (nft has no escapes)."""
    text = clean_text(text).replace('"', "'")
    return '"' + truncate_utf8(text, MAX_COMMENT_BYTES) + '"'


def set_elements(s: IPSet) -> list[str]:
    """The elements of the nft set for ``s``: addresses for hash:ip; for hash:net the exact
    ipset-equivalent address space as disjoint prefixes and ranges."""
    if s.kind == "hash:ip":
        return hash_ip_entries(s)
    entries, nomatch = set_networks(s)
    return [interval_text(lo, hi, s.family) for lo, hi in match_intervals(entries, nomatch)]


def _check_name(name: str) -> None:
    if name.lower() in _RESERVED:
        raise ValueError(f"{name!r} is an nft keyword and cannot name a chain or set")


def render_set(s: IPSet) -> list[str]:
    check_set_name(s.name)
    _check_name(s.name)
    if s.kind not in ("hash:ip", "hash:net"):
        raise ValueError(f"set {s.name}: unknown kind {s.kind!r}")
    lines = [f"\tset {s.name} {{", f"\t\ttype {'ipv4_addr' if s.family == 4 else 'ipv6_addr'}"]
    if s.kind == "hash:net":
        lines.append("\t\tflags interval")
    if s.comment:
        lines.append(f"\t\tcomment {quote_comment(s.comment)}")
    elements = set_elements(s)
    if elements:  # `elements = { }` is a syntax error
        rows = [", ".join(elements[i : i + 4]) for i in range(0, len(elements), 4)]
        lines.append("\t\telements = { " + ",\n\t\t\t     ".join(rows) + " }")
    lines.append("\t}")
    return lines


def _mark_statement(value: int, mask: int) -> str:
    """``--set-xmark value/mask``: mark = (mark & ~mask) ^ value."""
    if mask == FULL:
        return f"meta mark set {value:#010x}"
    if value == mask:
        return f"meta mark set meta mark | {mask:#010x}"
    if value == 0:
        return f"meta mark set meta mark & {FULL & ~mask:#010x}"
    return f"meta mark set meta mark & {FULL & ~mask:#010x} ^ {value:#010x}"


def rule_line(rule: Rule, rs: Ruleset, families: frozenset[int]) -> str:
    """One nft rule for ``rule`` (which can match in ``families``, non-empty)."""
    parts: list[str] = []
    implied = {
        rs.sets[m.set].family if isinstance(m, SetMatch) else network(m.cidr).version
        for m in rule.matches
        if isinstance(m, SetMatch | AddrMatch)
    }
    if len(families) == 1 and not implied:
        parts.append(f"meta nfproto {_NFPROTO[next(iter(families))]}")
    for m in rule.matches:
        if isinstance(m, AddrMatch):
            net = network(m.cidr)
            parts.append(f"{_ADDR[net.version]} {m.dir[0]}addr {net}")
        elif isinstance(m, SetMatch):
            parts.append(f"{_ADDR[rs.sets[m.set].family]} {m.dir[0]}addr @{m.set}")
    proto = next((m for m in rule.matches if isinstance(m, ProtoMatch)), None)
    if proto is not None:
        parts.append(f"meta l4proto {_L4.get(proto.protocol, proto.protocol)}")
    for m in rule.matches:
        if isinstance(m, PortMatch):
            parts.append(f"th dport {m.lo}" if m.lo == m.hi else f"th dport {m.lo}-{m.hi}")
        elif isinstance(m, CtStateMatch):
            # nft lists states in its bit order; writing them so keeps `nft list` identical.
            states = [s.lower() for s in _NFT_CT_ORDER if s in m.states]
            parts.append("ct state " + ",".join(states))
        elif isinstance(m, MarkMatch):
            if m.mask == FULL:
                parts.append(f"meta mark {m.value:#010x}")
            else:
                parts.append(f"meta mark & {m.mask:#010x} == {m.value:#010x}")
    if rule.target == "JUMP":
        parts.append(f"jump {rule.jump}")
    elif rule.target == "MARK":
        assert rule.mark is not None  # check_rule
        parts.append(_mark_statement(*rule.mark))
    else:
        parts.append(rule.target.lower())
    text = rule_text(rule)
    if text:
        parts.append("comment " + quote_comment(text))
    return " ".join(parts)


def render_nft(rs: Ruleset, *, table: str = TABLE, priority: int = 0) -> str:
    """An ``nft -f`` script that atomically (re)creates ``table inet <table>`` for ``rs``."""
    check_chain_name(table)
    if rs.entry not in rs.chains:
        raise ValueError(f"entry chain {rs.entry!r} is not in the ruleset")
    lines = [
        "#!/usr/sbin/nft -f",
        "# npemu ruleset: load with `nft -f FILE` (one transaction; re-applying replaces it)",
        f"table inet {table} {{}}",
        f"delete table inet {table}",
        f"table inet {table} {{",
    ]
    for s in rs.sets.values():
        lines += render_set(s)
        lines.append("")
    lines += [
        f"\tchain {BASE_CHAIN} {{",
        f"\t\ttype filter hook forward priority {priority}; policy accept;",
        f"\t\tjump {rs.entry}",
        "\t}",
    ]
    for chain in rs.chains.values():
        check_chain_name(chain.name)
        _check_name(chain.name)
        lines += ["", f"\tchain {chain.name} {{"]
        if chain.comment:
            lines.append(f"\t\tcomment {quote_comment(chain.comment)}")
        for rule in chain.rules:
            check_rule(rule, rs)
            families = rule_families(rule, rs)
            if not families:
                lines.append("\t\t# (a rule whose matches contradict each other is left out)")
                continue
            lines.append("\t\t" + rule_line(rule, rs, families))
        lines.append("\t}")
    lines.append("}")
    return "\n".join(lines) + "\n"
