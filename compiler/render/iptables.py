"""``iptables-restore`` / ``ip6tables-restore`` input for a Ruleset (the ``*filter`` table).

The output is meant for ``iptables-restore --noflush`` on a node that has rules of its own: it
never declares a built-in chain (that would reset its policy) and touches only npemu's chains.
Declaring a user chain (``:NPEMU-FORWARD - [0:0]``) creates it, or flushes it when it exists, even
under ``--noflush``; so re-applying replaces npemu's rules in one transaction.

The hook ``FORWARD -> NPEMU-FORWARD`` is the one thing restore syntax cannot make idempotent:
``-I`` always adds a rule and ``-D`` fails when there is none. So the renderer takes the node's
current ``iptables-save`` text (optional, pure text in): it deletes as many hooks as that text
shows, then inserts one at the top of FORWARD (policy must run before the node's own ACCEPTs).
The same text names npemu chains that the new ruleset no longer has; they are flushed and
removed (``-X``). Without it, the output assumes a node with no npemu rules yet.
"""

from __future__ import annotations

import re

from compiler.render._common import (
    check_chain_name,
    check_rule,
    clean_text,
    ct_states,
    network,
    rule_families,
    rule_text,
    truncate_utf8,
)
from compiler.tables import (
    AddrMatch,
    CtStateMatch,
    MarkMatch,
    PortMatch,
    ProtoMatch,
    Rule,
    Ruleset,
    SetMatch,
)

HOOK_CHAIN = "FORWARD"
OWNED_PREFIX = "NPEMU-"  # chains with this prefix belong to npemu (stale ones get removed)
BUILTIN_CHAINS = frozenset(("INPUT", "FORWARD", "OUTPUT", "PREROUTING", "POSTROUTING"))
# xt_comment stores 256 bytes including the terminating NUL.
MAX_COMMENT_BYTES = 255
# What xtables_save_string leaves unquoted.
_BARE_WORD = re.compile(r"[A-Za-z0-9_-]+")

_PROTO_NAME = {"icmpv6": "ipv6-icmp"}  # the name iptables-save prints


def quote_comment(text: str) -> str:
    """A ``--comment`` argument: one line, at most 255 bytes, written the way iptables-save
    writes it (so a read-back compares equal): a bare word as is, anything else in double quotes
    with ``"``, ``'`` and ``\\`` backslash-escaped."""
    text = truncate_utf8(clean_text(text), MAX_COMMENT_BYTES)
    if _BARE_WORD.fullmatch(text):
        return text
    return '"' + re.sub(r"""(["'\\])""", r"\\\1", text) + '"'


def hook_rule(rs: Ruleset) -> str:
    """The rule spec that hooks npemu into FORWARD (as iptables-save prints it)."""
    return f"{HOOK_CHAIN} -j {rs.entry}"


def rule_spec(rule: Rule) -> str:
    """The part of an ``-A CHAIN ...`` line after the chain name, in iptables-save's order:
    addresses and protocol (part of the entry itself), then the match modules, then the
    comment, then the target."""
    parts: list[str] = []
    for d, flag in (("src", "-s"), ("dst", "-d")):
        for m in rule.matches:
            # A /0 only says "this family": the family's table already does (iptables-save
            # would drop it too).
            if isinstance(m, AddrMatch) and m.dir == d and network(m.cidr).prefixlen:
                parts.append(f"{flag} {network(m.cidr)}")
    proto = next((m for m in rule.matches if isinstance(m, ProtoMatch)), None)
    if proto is not None:
        parts.append("-p " + _PROTO_NAME.get(proto.protocol, proto.protocol))
    for m in rule.matches:
        if isinstance(m, PortMatch):
            assert proto is not None  # check_rule
            ports = str(m.lo) if m.lo == m.hi else f"{m.lo}:{m.hi}"
            parts.append(f"-m {proto.protocol} --dport {ports}")
        elif isinstance(m, SetMatch):
            parts.append(f"-m set --match-set {m.set} {m.dir}")
        elif isinstance(m, CtStateMatch):
            parts.append("-m conntrack --ctstate " + ",".join(ct_states(m.states)))
        elif isinstance(m, MarkMatch):
            # iptables-save drops a full mask; so do we, for an exact read-back.
            mark = f"{m.value:#x}" if m.mask == 0xFFFFFFFF else f"{m.value:#x}/{m.mask:#x}"
            parts.append(f"-m mark --mark {mark}")
    text = rule_text(rule)
    if text:
        parts.append("-m comment --comment " + quote_comment(text))
    if rule.target == "JUMP":
        parts.append(f"-j {rule.jump}")
    elif rule.target == "MARK":
        assert rule.mark is not None  # check_rule
        parts.append(f"-j MARK --set-xmark {rule.mark[0]:#x}/{rule.mark[1]:#x}")
    else:
        parts.append(f"-j {rule.target}")
    return " ".join(parts)


def _current_state(current: str | None, rs: Ruleset) -> tuple[int, list[str]]:
    """From ``iptables-save`` text: how many hooks exist, and which npemu chains (by prefix)
    exist in its ``*filter`` table."""
    if not current:
        return 0, []
    hooks, chains, in_filter = 0, [], False
    hook = "-A " + hook_rule(rs)
    for raw in current.splitlines():
        line = raw.strip()
        if line.startswith("*"):
            in_filter = line == "*filter"
        elif not in_filter:
            continue
        elif line == hook:
            hooks += 1
        elif line.startswith(":" + OWNED_PREFIX):
            chains.append(line[1:].split()[0])
    return hooks, chains


def render_iptables(rs: Ruleset, family: int = 4, *, current: str | None = None) -> str:
    """``iptables-restore`` (family 4) or ``ip6tables-restore`` (family 6) input for ``rs``, to be
    loaded with ``--noflush`` after the sets (``render_ipset``). ``current`` is the node's
    ``iptables-save`` output for the same family, if known (see the module docstring)."""
    if family not in (4, 6):
        raise ValueError("family must be 4 or 6")
    if rs.entry not in rs.chains:
        raise ValueError(f"entry chain {rs.entry!r} is not in the ruleset")
    for name in rs.chains:
        check_chain_name(name)
        if name in BUILTIN_CHAINS:
            raise ValueError(f"chain {name!r} is a built-in chain name")
    hooks, existing = _current_state(current, rs)
    stale = [c for c in existing if c not in rs.chains]

    tool = "iptables-restore" if family == 4 else "ip6tables-restore"
    lines = [
        f"# npemu IPv{family} filter rules: load with `{tool} --noflush < FILE` after the ipsets",
        "*filter",
    ]
    lines += [f":{name} - [0:0]" for name in [*rs.chains, *stale]]
    for chain in rs.chains.values():
        for rule in chain.rules:
            check_rule(rule, rs)
            if family not in rule_families(rule, rs):
                continue  # cannot match in this family (v6 set, ICMPv4, family=4, ...)
            lines.append(f"-A {chain.name} {rule_spec(rule)}")
    lines += [f"-D {hook_rule(rs)}"] * hooks
    lines.append(f"-I {hook_rule(rs)}")
    lines += [f"-X {name}" for name in stale]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"
