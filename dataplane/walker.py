"""The reference evaluator: walks a Ruleset rule by rule exactly as netfilter walks chains.

First match wins; JUMP pushes the current position and RETURN (or the end of a chain) pops it;
MARK rewrites the packet mark (``--set-xmark value/mask``: mark = (mark & ~mask) ^ value) and
continues; the end of the entry chain returns to FORWARD, whose policy is ACCEPT. Sets follow
ipset: ``hash:ip`` exact members, ``hash:net`` longest prefix with ``nomatch``.

Slow by design (one packet at a time, every rule inspected): it is the oracle the fast engine is
tested against, and its trace is what ``npemu check`` explains.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from compiler.tables import (
    IP_PROTOCOLS,
    AddrMatch,
    CtStateMatch,
    IPSet,
    MarkMatch,
    Match,
    PortMatch,
    ProtoMatch,
    Rule,
    Ruleset,
    SetMatch,
)

PORT_PROTOCOLS = (6, 17, 132)
CT_NAMES = ("NEW", "ESTABLISHED", "RELATED", "INVALID", "UNTRACKED")


@dataclass(frozen=True)
class Packet:
    """What the filter table looks at. ``ctstate`` is the conntrack verdict (CT_NAMES)."""

    family: int
    src: int
    dst: int
    proto: int
    dport: int = 0
    ctstate: str = "NEW"

    @classmethod
    def make(
        cls, src: str, dst: str, proto: int | str, dport: int = 0, ctstate: str = "NEW"
    ) -> Packet:
        s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
        if s.version != d.version:
            raise ValueError(f"{src} and {dst} are of different IP families")
        number = IP_PROTOCOLS[proto.lower()] if isinstance(proto, str) else proto
        return cls(s.version, int(s), int(d), number, dport, ctstate)


@dataclass(frozen=True)
class Step:
    """A rule that matched on the way: chain, 0-based rule index, the rule."""

    chain: str
    index: int
    rule: Rule


@dataclass
class Trace:
    verdict: str  # "ACCEPT" or "DROP"
    steps: list[Step] = field(default_factory=list)
    rules_inspected: int = 0
    final: Step | None = None  # the rule that gave the verdict (None: FORWARD's policy)


class SetLookup:
    """ipset semantics over one IPSet."""

    def __init__(self, ipset: IPSet) -> None:
        self.family = ipset.family
        self.kind = ipset.kind
        self.bits = 32 if ipset.family == 4 else 128
        if ipset.kind == "hash:ip":
            self.members = {int(ipaddress.ip_address(e.split("/")[0])) for e in ipset.entries}
        else:
            self.prefixes: dict[int, dict[int, bool]] = {}
            for entry, nomatch in [(e, False) for e in ipset.entries] + [
                (e, True) for e in ipset.nomatch
            ]:
                net = ipaddress.ip_network(entry, strict=False)
                # an entry given both ways: nomatch wins, as a later `add ... nomatch` would
                self.prefixes.setdefault(net.prefixlen, {})[int(net.network_address)] = (
                    nomatch
                    or self.prefixes.get(net.prefixlen, {}).get(int(net.network_address), False)
                )
            self.lengths = sorted(self.prefixes, reverse=True)

    def contains(self, family: int, address: int) -> bool:
        if family != self.family:
            return False
        if self.kind == "hash:ip":
            return address in self.members
        for plen in self.lengths:
            shift = self.bits - plen
            network = (address >> shift) << shift if shift < self.bits else 0
            hit = self.prefixes[plen].get(network)
            if hit is not None:
                return not hit
        return False


class Walker:
    def __init__(self, ruleset: Ruleset) -> None:
        self.ruleset = ruleset
        self.sets = {name: SetLookup(s) for name, s in ruleset.sets.items()}
        self._addr_cache: dict[str, ipaddress.IPv4Network | ipaddress.IPv6Network] = {}

    def _net(self, cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        net = self._addr_cache.get(cidr)
        if net is None:
            net = self._addr_cache[cidr] = ipaddress.ip_network(cidr, strict=False)
        return net

    def matches(self, rule: Rule, pkt: Packet, mark: int) -> bool:
        if rule.family is not None and rule.family != pkt.family:
            return False
        return all(self._match(m, pkt, mark) for m in rule.matches)

    def _match(self, m: Match, pkt: Packet, mark: int) -> bool:
        if isinstance(m, SetMatch):
            return self.sets[m.set].contains(pkt.family, pkt.src if m.dir == "src" else pkt.dst)
        if isinstance(m, AddrMatch):
            net = self._net(m.cidr)
            if net.version != pkt.family:
                return False
            addr = pkt.src if m.dir == "src" else pkt.dst
            return int(net.network_address) <= addr <= int(net.broadcast_address)
        if isinstance(m, ProtoMatch):
            return pkt.proto == IP_PROTOCOLS[m.protocol]
        if isinstance(m, PortMatch):
            return pkt.proto in PORT_PROTOCOLS and m.lo <= pkt.dport <= m.hi
        if isinstance(m, CtStateMatch):
            return pkt.ctstate in m.states
        if isinstance(m, MarkMatch):
            return (mark & m.mask) == m.value
        raise TypeError(f"unknown match {m!r}")

    def walk(self, pkt: Packet, start: str | None = None) -> Trace:
        """Walk from the entry chain (or ``start``); ``verdict`` is ACCEPT when the packet falls
        through or RETURNs from the first chain (for ``start``: "this chain did not drop")."""
        trace = Trace(verdict="ACCEPT")
        mark = 0
        stack: list[tuple[str, int]] = []
        chain, pos = start or self.ruleset.entry, 0
        while True:
            rules = self.ruleset.chains[chain].rules
            if pos >= len(rules):  # end of chain: implicit RETURN
                if not stack:
                    return trace  # back in FORWARD: policy ACCEPT
                chain, pos = stack.pop()
                continue
            rule = rules[pos]
            trace.rules_inspected += 1
            if not self.matches(rule, pkt, mark):
                pos += 1
                continue
            step = Step(chain, pos, rule)
            trace.steps.append(step)
            if rule.target in ("ACCEPT", "DROP"):
                trace.verdict, trace.final = rule.target, step
                return trace
            if rule.target == "RETURN":
                if not stack:
                    return trace
                chain, pos = stack.pop()
            elif rule.target == "JUMP":
                stack.append((chain, pos + 1))
                chain, pos = rule.jump or "", 0
            elif rule.target == "MARK":
                value, mask = rule.mark or (0, 0)
                mark = (mark & ~mask) ^ value
                pos += 1
            else:
                raise ValueError(f"unknown target {rule.target!r}")
