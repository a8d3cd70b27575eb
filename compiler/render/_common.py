"""Helpers shared by the renderers: name checks, rule families, comment text, set contents.

Everything here is pure. The renderers turn manifest-derived text (comments, provenance) into
quoted strings inside line-oriented kernel tool input, so the cleaning below is a safety
boundary (DESIGN §9): no newline or quote from a manifest may ever end a line or a string early.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata

from compiler.tables import (
    MAX_CHAIN_NAME,
    MAX_SET_NAME,
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

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

BOTH: frozenset[int] = frozenset((4, 6))

# Names go unquoted into iptables-restore, ipset restore and nft input; anything outside this
# alphabet (spaces, quotes, '#', '@', a leading '-') could be parsed as syntax. nft also wants a
# leading letter or '_' (nft 1.0.6 accepts no quoted set names).
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")

CT_STATES = ("INVALID", "NEW", "RELATED", "ESTABLISHED", "UNTRACKED")  # iptables-save's order
PORT_PROTOCOLS = ("tcp", "udp", "sctp")
PROTO_FAMILY: dict[str, frozenset[int]] = {"icmp": frozenset((4,)), "icmpv6": frozenset((6,))}


def check_chain_name(name: str) -> None:
    if len(name) > MAX_CHAIN_NAME:
        raise ValueError(f"chain name {name!r} is longer than {MAX_CHAIN_NAME} characters")
    if not _NAME_RE.fullmatch(name):
        raise ValueError(f"chain name {name!r} has characters a ruleset cannot carry")


def check_set_name(name: str) -> None:
    if len(name) > MAX_SET_NAME:
        raise ValueError(f"set name {name!r} is longer than {MAX_SET_NAME} characters")
    if not _NAME_RE.fullmatch(name):
        raise ValueError(f"set name {name!r} has characters a ruleset cannot carry")


def network(cidr: str) -> IPNetwork:
    """A prefix with host bits cleared (the kernel would clear them too, silently)."""
    try:
        return ipaddress.ip_network(cidr.strip(), strict=False)
    except ValueError as err:
        raise ValueError(f"not an IP address or prefix: {cidr!r}") from err


def rule_families(rule: Rule, rs: Ruleset) -> frozenset[int]:
    """The IP families in which ``rule`` can match: empty when its matches contradict each other
    (a v4 set and a v6 address, ``family=4`` with ICMPv6, ...); such a rule never matches and is
    left out of every rendering."""
    fams = BOTH if rule.family is None else frozenset((rule.family,))
    for m in rule.matches:
        if isinstance(m, SetMatch):
            if m.set not in rs.sets:
                raise ValueError(f"rule matches unknown set {m.set!r}")
            fams &= {rs.sets[m.set].family}
        elif isinstance(m, AddrMatch):
            fams &= {network(m.cidr).version}
        elif isinstance(m, ProtoMatch):
            fams &= PROTO_FAMILY.get(m.protocol, BOTH)
    return fams


def check_rule(rule: Rule, rs: Ruleset) -> None:
    """Reject IR that no kernel syntax can express, rather than render something else."""
    protos = [m for m in rule.matches if isinstance(m, ProtoMatch)]
    ports = [m for m in rule.matches if isinstance(m, PortMatch)]
    for d in ("src", "dst"):
        if sum(1 for m in rule.matches if isinstance(m, AddrMatch) and m.dir == d) > 1:
            raise ValueError(f"rule has more than one {d} address match")
    if len(protos) > 1:
        raise ValueError("rule has more than one protocol match")
    for p in protos:
        if p.protocol not in (*PORT_PROTOCOLS, *PROTO_FAMILY):
            raise ValueError(f"unknown protocol {p.protocol!r}")
    if len(ports) > 1:
        raise ValueError("rule has more than one port match")
    for p in ports:
        if not protos or protos[0].protocol not in PORT_PROTOCOLS:
            raise ValueError("a port match needs a tcp, udp or sctp protocol match")
        if not 0 <= p.lo <= p.hi <= 65535:
            raise ValueError(f"bad port range {p.lo}-{p.hi}")
    for m in rule.matches:
        if isinstance(m, CtStateMatch):
            bad = [s for s in m.states if s not in CT_STATES]
            if bad or not m.states:
                raise ValueError(f"bad conntrack states {m.states!r}")
        if isinstance(m, MarkMatch) and not (
            0 <= m.value <= 0xFFFFFFFF and 0 <= m.mask <= 0xFFFFFFFF
        ):
            raise ValueError("mark value/mask must fit 32 bits")
    if rule.target == "JUMP":
        if not rule.jump or rule.jump not in rs.chains:
            raise ValueError(f"rule jumps to unknown chain {rule.jump!r}")
    elif rule.target == "MARK":
        if rule.mark is None or not all(0 <= x <= 0xFFFFFFFF for x in rule.mark):
            raise ValueError("a MARK rule needs a 32-bit (value, mask)")
    elif rule.target not in ("ACCEPT", "DROP", "RETURN"):
        raise ValueError(f"unknown target {rule.target!r}")


def ct_states(states: tuple[str, ...]) -> list[str]:
    """Deduplicated, in the order iptables-save prints them (so a read-back compares equal)."""
    return [s for s in CT_STATES if s in states]


def rule_text(rule: Rule) -> str:
    """What a rule's comment says: its own comment, else its provenance."""
    if rule.comment:
        return rule.comment
    return rule.provenance.describe() if rule.provenance else ""


_VISIBLE_CONTROLS = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def clean_text(text: str) -> str:
    """Make manifest text one printable line: line breaks and other control characters become
    visible escapes (``\\n``, ``\\x1b``), so nothing can end the line it is written into."""
    out = []
    for ch in text:
        if ch in _VISIBLE_CONTROLS:
            out.append(_VISIBLE_CONTROLS[ch])
        elif unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"):
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def truncate_utf8(text: str, max_bytes: int, marker: str = "...") -> str:
    """Cut ``text`` to at most ``max_bytes`` UTF-8 bytes on a character boundary, ending with
    ``marker`` when something was cut (the kernel limits are in bytes, not characters)."""
    if len(text.encode()) <= max_bytes:
        return text
    budget = max_bytes - len(marker.encode())
    cut = text.encode()[:budget].decode("utf-8", errors="ignore")
    return cut + marker


def hash_ip_entries(s: IPSet) -> list[str]:
    """A hash:ip set's members as plain addresses (a /32 or /128 is an address; a wider prefix
    or a nomatch entry is an error: hash:ip cannot express it)."""
    if s.nomatch:
        raise ValueError(f"set {s.name}: hash:ip has no nomatch entries")
    out: dict[str, None] = {}
    for e in s.entries:
        net = network(e)
        if net.version != s.family:
            raise ValueError(f"set {s.name}: {e} is not an IPv{s.family} address")
        if net.prefixlen != net.max_prefixlen:
            raise ValueError(f"set {s.name}: hash:ip entry {e} is not a single address")
        if int(net.network_address) == 0:
            # The kernel refuses it ("Null-valued element"); it is never a pod or node IP.
            raise ValueError(f"set {s.name}: hash:ip cannot hold the all-zeros address")
        out[str(net.network_address)] = None
    return list(out)


def set_networks(s: IPSet) -> tuple[list[IPNetwork], list[IPNetwork]]:
    """A hash:net set's (entries, nomatch) as normalized prefixes: deduplicated, in input order,
    of the set's family. A prefix listed both ways is a nomatch (the except wins)."""
    if s.kind != "hash:net":
        raise ValueError(f"set {s.name}: not a hash:net set")

    def nets(cidrs: tuple[str, ...]) -> dict[IPNetwork, None]:
        out: dict[IPNetwork, None] = {}
        for c in cidrs:
            net = network(c)
            if net.version != s.family:
                raise ValueError(f"set {s.name}: {c} is not an IPv{s.family} prefix")
            out[net] = None
        return out

    nomatch = nets(s.nomatch)
    entries = [n for n in nets(s.entries) if n not in nomatch]
    return entries, list(nomatch)
