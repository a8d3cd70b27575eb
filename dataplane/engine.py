"""The fast evaluator: the walker's semantics, vectorised over a batch of packets.

The Ruleset is compiled once: every set becomes sorted disjoint address intervals (ipset's
longest-prefix ``nomatch`` semantics resolved at compile time), and runs of consecutive
single-address rules (the per-pod dispatch rules) become one sorted lookup table. A batch is
first reduced to its distinct headers; each chain is then evaluated for all packets that reach
it at once (numpy masks per rule, not a Python loop per packet).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import numpy as np

from compiler.render.intervals import match_intervals
from compiler.tables import (
    IP_PROTOCOLS,
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

from .packets import PacketBatch

CT_CODES = {"NEW": 0, "ESTABLISHED": 1, "RELATED": 2, "INVALID": 3, "UNTRACKED": 4}
PORT_PROTOCOLS = np.array([6, 17, 132], dtype=np.uint8)

_CONTINUE, _ACCEPT, _DROP, _RETURN = 0, 1, 2, 3


def ipset_intervals(ipset: IPSet) -> list[tuple[int, int]]:
    """The exact membership of an ipset as sorted disjoint [start, end] integer intervals."""
    if ipset.kind == "hash:ip":
        values = sorted({int(ipaddress.ip_address(e.split("/")[0])) for e in ipset.entries})
        return [(v, v) for v in values]
    return match_intervals(
        [ipaddress.ip_network(e, strict=False) for e in ipset.entries],
        [ipaddress.ip_network(e, strict=False) for e in ipset.nomatch],
    )


def _keys6(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """128-bit addresses as big-endian 16-byte strings, which sort numerically."""
    arr = np.empty((len(hi), 2), dtype=">u8")
    arr[:, 0] = hi
    arr[:, 1] = lo
    return arr.view("S16").ravel()


def _int_keys6(values: list[int]) -> np.ndarray:
    hi = np.array([v >> 64 for v in values], dtype=np.uint64)
    lo = np.array([v & 0xFFFFFFFFFFFFFFFF for v in values], dtype=np.uint64)
    return _keys6(hi, lo)


@dataclass
class _CompiledSet:
    family: int
    starts: np.ndarray
    ends: np.ndarray

    @classmethod
    def build(cls, ipset: IPSet) -> _CompiledSet:
        intervals = ipset_intervals(ipset)
        if ipset.family == 4:
            starts = np.array([s for s, _ in intervals], dtype=np.uint64)
            ends = np.array([e for _, e in intervals], dtype=np.uint64)
        else:
            starts = _int_keys6([s for s, _ in intervals])
            ends = _int_keys6([e for _, e in intervals])
        return cls(ipset.family, starts, ends)

    def contains(self, family: np.ndarray, key4: np.ndarray, key6: np.ndarray) -> np.ndarray:
        keys = key4 if self.family == 4 else key6
        out = family == self.family
        if not len(self.starts) or not out.any():
            return np.zeros(len(family), dtype=bool)
        pos = np.searchsorted(self.starts, keys, side="right") - 1
        valid = pos >= 0
        clipped = np.where(valid, pos, 0)
        return out & valid & (keys <= self.ends[clipped])


@dataclass
class _Headers:
    """Distinct packet headers, the engine's working set."""

    family: np.ndarray
    src4: np.ndarray
    dst4: np.ndarray
    src6: np.ndarray
    dst6: np.ndarray
    proto: np.ndarray
    dport: np.ndarray
    ct: np.ndarray


@dataclass
class _State:
    """Per-evaluation arrays over the distinct headers."""

    mark: np.ndarray  # uint64 packet mark
    outcome: np.ndarray  # uint8 _CONTINUE/_ACCEPT/_DROP
    decider: np.ndarray  # int64 index into Engine.rules of the ACCEPT/DROP rule, -1 = none


class Engine:
    def __init__(self, ruleset: Ruleset) -> None:
        self.ruleset = ruleset
        self.sets = {name: _CompiledSet.build(s) for name, s in ruleset.sets.items()}
        # (chain, index, rule) for every rule; evaluate_explained() reports positions in this list
        self.rules: list[tuple[str, int, Rule]] = [
            (name, i, rule)
            for name, chain in ruleset.chains.items()
            for i, rule in enumerate(chain.rules)
        ]
        self._rule_id = {id(rule): k for k, (_, _, rule) in enumerate(self.rules)}
        self._plans = {name: self._plan(chain.rules) for name, chain in ruleset.chains.items()}

    # -- compile -------------------------------------------------------------------------------

    def _plan(self, rules: tuple[Rule, ...]) -> list[tuple[str, object]]:
        """Group runs of host-address rules into lookups; everything else stays a single rule."""
        plan: list[tuple[str, object]] = []
        run: list[tuple[int, ipaddress.IPv4Address | ipaddress.IPv6Address, Rule]] = []
        run_dir: str | None = None
        seen: set[tuple[int, int]] = set()

        def flush() -> None:
            nonlocal run, run_dir, seen
            if len(run) >= 4:
                plan.append(("lookup", self._lookup(run, run_dir or "src")))
            else:
                plan.extend(("rule", r) for _, _, r in run)
            run, run_dir, seen = [], None, set()

        for rule in rules:
            host = _host_rule(rule)
            if host is None:
                flush()
                plan.append(("rule", rule))
                continue
            direction, addr = host
            ident = (addr.version, int(addr))
            if run and (direction != run_dir or ident in seen):
                flush()
            run.append((addr.version, addr, rule))
            run_dir = direction
            seen.add(ident)
        flush()
        return plan

    @staticmethod
    def _lookup(run: list, direction: str) -> dict[str, object]:
        table: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for fam in (4, 6):
            items = sorted((int(a), i) for i, (f, a, _) in enumerate(run) if f == fam)
            values = [v for v, _ in items]
            keys = np.array(values, dtype=np.uint64) if fam == 4 else _int_keys6(values)
            table[fam] = (keys, np.array([i for _, i in items], dtype=np.int64))
        return {"dir": direction, "table": table, "rules": [r for _, _, r in run]}

    # -- evaluate ------------------------------------------------------------------------------

    def evaluate(self, batch: PacketBatch, ctstate: np.ndarray | str = "NEW") -> np.ndarray:
        """ACCEPT (True) or DROP (False) per packet, as the walker would decide.

        ``ctstate``: one name for all packets, or a uint8 array of CT_CODES per packet.
        """
        return self.evaluate_explained(batch, ctstate)[0]

    def evaluate_explained(
        self, batch: PacketBatch, ctstate: np.ndarray | str = "NEW"
    ) -> tuple[np.ndarray, np.ndarray]:
        """(accepted, decider): decider is the index in ``self.rules`` of the ACCEPT or DROP rule
        that ended each packet's walk, or -1 when it fell through to FORWARD's policy."""
        n = len(batch)
        ct = (
            np.full(n, CT_CODES[ctstate], np.uint8)
            if isinstance(ctstate, str)
            else np.asarray(ctstate, dtype=np.uint8)
        )
        if n == 0:
            return np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int64)
        fam = batch.family.astype(np.uint64)
        rows = np.stack(
            [
                fam,
                batch.src_hi,
                batch.src_lo,
                batch.dst_hi,
                batch.dst_lo,
                batch.proto.astype(np.uint64),
                batch.dport.astype(np.uint64),
                ct.astype(np.uint64),
            ],
            axis=1,
        )
        uniq, inverse = np.unique(rows, axis=0, return_inverse=True)
        h = _Headers(
            family=uniq[:, 0].astype(np.uint8),
            src4=uniq[:, 2],
            dst4=uniq[:, 4],
            src6=_keys6(uniq[:, 1], uniq[:, 2]),
            dst6=_keys6(uniq[:, 3], uniq[:, 4]),
            proto=uniq[:, 5].astype(np.uint8),
            dport=uniq[:, 6].astype(np.uint16),
            ct=uniq[:, 7].astype(np.uint8),
        )
        m = len(uniq)
        st = _State(
            mark=np.zeros(m, dtype=np.uint64),
            outcome=np.full(m, _CONTINUE, dtype=np.uint8),
            decider=np.full(m, -1, dtype=np.int64),
        )
        self._run(self.ruleset.entry, np.arange(m), h, st)
        accepted = st.outcome != _DROP  # fall-through of the entry chain = FORWARD policy ACCEPT
        inverse = inverse.ravel()
        return accepted[inverse], st.decider[inverse]

    def _run(self, chain: str, active: np.ndarray, h: _Headers, st: _State) -> np.ndarray:
        """Evaluate ``chain`` for packets ``active``; sets ``outcome`` for ACCEPT/DROP and returns
        the indices that RETURNed (explicitly or by falling off the end)."""
        returned: list[np.ndarray] = []
        for kind, item in self._plans[chain]:
            if not len(active):
                break
            if kind == "lookup":
                active = self._run_lookup(item, active, h, st, returned)  # type: ignore[arg-type]
                continue
            rule: Rule = item  # type: ignore[assignment]
            hit = self._match(rule, active, h, st.mark)
            if not hit.any():
                continue
            matched, active = active[hit], active[~hit]
            active = np.concatenate([active, self._apply(rule, matched, h, st, returned)])
            active.sort()
        returned.append(active)
        return np.concatenate(returned) if returned else active

    def _apply(
        self,
        rule: Rule,
        matched: np.ndarray,
        h: _Headers,
        st: _State,
        returned: list[np.ndarray],
    ) -> np.ndarray:
        """Apply a matched rule's target; returns the packets that continue in this chain."""
        if rule.target in ("ACCEPT", "DROP"):
            st.outcome[matched] = _ACCEPT if rule.target == "ACCEPT" else _DROP
            st.decider[matched] = self._rule_id[id(rule)]
        elif rule.target == "RETURN":
            returned.append(matched)
        elif rule.target == "MARK":
            value, mask = rule.mark or (0, 0)
            st.mark[matched] = (st.mark[matched] & np.uint64(~mask & 0xFFFFFFFF)) ^ np.uint64(value)
            return matched
        elif rule.target == "JUMP":
            return self._run(rule.jump or "", matched, h, st)
        else:
            raise ValueError(f"unknown target {rule.target!r}")
        return matched[:0]

    def _run_lookup(
        self,
        item: dict,
        active: np.ndarray,
        h: _Headers,
        st: _State,
        returned: list[np.ndarray],
    ) -> np.ndarray:
        rule_of = np.full(len(active), -1, dtype=np.int64)
        for fam, (keys, rule_idx) in item["table"].items():
            if not len(keys):
                continue
            sel = h.family[active] == fam
            if not sel.any():
                continue
            if fam == 4:
                addr = (h.src4 if item["dir"] == "src" else h.dst4)[active[sel]]
            else:
                addr = (h.src6 if item["dir"] == "src" else h.dst6)[active[sel]]
            pos = np.searchsorted(keys, addr)
            pos_c = np.minimum(pos, len(keys) - 1)
            found = (pos < len(keys)) & (keys[pos_c] == addr)
            idx = np.full(len(addr), -1, dtype=np.int64)
            idx[found] = rule_idx[pos_c[found]]
            rule_of[sel] = idx
        keep = [active[rule_of < 0]]
        for ri in np.unique(rule_of[rule_of >= 0]):
            rule = item["rules"][ri]
            group = active[rule_of == ri]
            rest = self._match(rule, group, h, st.mark)  # family/ct/other matches of the rule
            keep.append(group[~rest])
            keep.append(self._apply(rule, group[rest], h, st, returned))
        out = np.concatenate(keep)
        out.sort()
        return out

    def _match(self, rule: Rule, idx: np.ndarray, h: _Headers, mark: np.ndarray) -> np.ndarray:
        ok = np.ones(len(idx), dtype=bool)
        if rule.family is not None:
            ok &= h.family[idx] == rule.family
        for m in rule.matches:
            if not ok.any():
                break
            if isinstance(m, SetMatch):
                s = self.sets[m.set]
                if m.dir == "src":
                    ok &= s.contains(h.family[idx], h.src4[idx], h.src6[idx])
                else:
                    ok &= s.contains(h.family[idx], h.dst4[idx], h.dst6[idx])
            elif isinstance(m, AddrMatch):
                net = ipaddress.ip_network(m.cidr, strict=False)
                lo, hi = int(net.network_address), int(net.broadcast_address)
                fam_ok = h.family[idx] == net.version
                if net.version == 4:
                    addr = (h.src4 if m.dir == "src" else h.dst4)[idx]
                    ok &= fam_ok & (addr >= lo) & (addr <= hi)
                else:
                    addr = (h.src6 if m.dir == "src" else h.dst6)[idx]
                    lo_k, hi_k = _int_keys6([lo, hi])
                    ok &= fam_ok & (addr >= lo_k) & (addr <= hi_k)
            elif isinstance(m, ProtoMatch):
                ok &= h.proto[idx] == IP_PROTOCOLS[m.protocol]
            elif isinstance(m, PortMatch):
                p = h.dport[idx]
                ok &= np.isin(h.proto[idx], PORT_PROTOCOLS) & (p >= m.lo) & (p <= m.hi)
            elif isinstance(m, CtStateMatch):
                ok &= np.isin(h.ct[idx], [CT_CODES[s] for s in m.states])
            elif isinstance(m, MarkMatch):
                ok &= (mark[idx] & np.uint64(m.mask)) == np.uint64(m.value)
            else:
                raise TypeError(f"unknown match {m!r}")
        return ok


def _host_rule(rule: Rule) -> tuple[str, ipaddress.IPv4Address | ipaddress.IPv6Address] | None:
    """(direction, address) when the rule's only match is one host address."""
    if len(rule.matches) != 1 or not isinstance(rule.matches[0], AddrMatch):
        return None
    net = ipaddress.ip_network(rule.matches[0].cidr, strict=False)
    if net.num_addresses != 1:
        return None
    return rule.matches[0].dir, net.network_address
