"""A human rendering of a Ruleset: like ``iptables -L``, plus where each rule came from.

Chain NPEMU-FORWARD (entry)
 #  match                                   target         from
 1  ctstate INVALID                         DROP           conntrack
 2  src 10.0.0.5/32                         NPEMU-E-abc    dispatch (prod/api)

Set NPEMU-S-1 hash:net IPv4 (3 entries, 1 nomatch)  prod/allow ingress[0] from[0]
  10.0.0.0/8  !10.1.0.0/16  ...
"""

from __future__ import annotations

from compiler.render._common import clean_text, ct_states, network
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

MAX_MEMBERS = 20  # members shown per set before "... and N more"


def match_text(rule: Rule) -> str:
    parts: list[str] = []
    if rule.family:
        parts.append(f"IPv{rule.family}")
    for m in rule.matches:
        if isinstance(m, SetMatch):
            parts.append(f"{m.dir} in @{m.set}")
        elif isinstance(m, AddrMatch):
            parts.append(f"{m.dir} {network(m.cidr)}")
        elif isinstance(m, ProtoMatch):
            parts.append(m.protocol)
        elif isinstance(m, PortMatch):
            parts.append(f"dport {m.lo}" if m.lo == m.hi else f"dport {m.lo}-{m.hi}")
        elif isinstance(m, CtStateMatch):
            parts.append("ctstate " + ",".join(ct_states(m.states)))
        elif isinstance(m, MarkMatch):
            parts.append(f"mark {m.value:#x}/{m.mask:#x}")
    return " ".join(parts) or "any"


def target_text(rule: Rule) -> str:
    if rule.target == "JUMP":
        return f"-> {rule.jump}"
    if rule.target == "MARK" and rule.mark is not None:
        return f"MARK {rule.mark[0]:#x}/{rule.mark[1]:#x}"
    return rule.target


def origin_text(rule: Rule) -> str:
    texts = [rule.provenance.describe()] if rule.provenance else []
    if rule.comment and rule.comment not in texts:
        texts.append(rule.comment)
    return clean_text(" | ".join(texts))


def render_text(rs: Ruleset, *, max_members: int = MAX_MEMBERS) -> str:
    """Chains with numbered rules and their origin, then sets with (at most ``max_members``
    of) their members; a nomatch member is shown as ``!prefix``."""
    out: list[str] = []
    head = f"Ruleset: {len(rs.chains)} chains, {rs.rule_count()} rules, {len(rs.sets)} sets"
    out.append(head + (f" (node {rs.node})" if rs.node else ""))
    for chain in rs.chains.values():
        notes = [n for n in ("entry" if chain.name == rs.entry else "", chain.owner or "") if n]
        title = f"Chain {chain.name}" + (f" ({', '.join(notes)})" if notes else "")
        out += ["", title]
        if chain.comment:
            out.append("  # " + clean_text(chain.comment))
        rows = [(match_text(r), target_text(r), origin_text(r)) for r in chain.rules]
        wm = max([5, *(len(r[0]) for r in rows)])
        wt = max([6, *(len(r[1]) for r in rows)])
        out.append(f" {'#':>3}  {'match':<{wm}}  {'target':<{wt}}  from")
        for i, (m, t, o) in enumerate(rows, 1):
            out.append(f" {i:>3}  {m:<{wm}}  {t:<{wt}}  {o}".rstrip())
        if not rows:
            out.append("      (no rules: falls through)")
    for s in rs.sets.values():
        members = [*s.entries, *(f"!{n}" for n in s.nomatch)]
        count = f"{len(s.entries)} entries" + (f", {len(s.nomatch)} nomatch" if s.nomatch else "")
        out += ["", f"Set {s.name} {s.kind} IPv{s.family} ({count})"]
        if s.comment:
            out[-1] += "  " + clean_text(s.comment)
        shown = members[:max_members]
        if shown:
            out.append("  " + "  ".join(clean_text(m) for m in shown))
        if len(members) > len(shown):
            out.append(f"  ... and {len(members) - len(shown)} more")
    return "\n".join(out) + "\n"
