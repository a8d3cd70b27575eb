"""Replay: capture chunks -> conntrack + tables -> verdicts, counters and per-flow rows.

Per chunk: the engine decides, for every packet at once, what the tables would say if the
packet were NEW (the tables' only stateful matches are the conntrack ones at the top of the
dispatch chain); then conntrack walks the chunk in capture order, on the packets' own timestamps,
accepting ESTABLISHED/RELATED, dropping INVALID and taking the policy verdict for NEW packets. The
connection table lives across chunks, so memory stays bounded by the chunk size and the table
limit, never by the capture.

Non-first IP fragments follow the verdict of their datagram's first fragment, because the kernel
filters after reassembly; one whose first fragment was not seen earlier is dropped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from compiler.tables import Ruleset

from .conntrack import Conntrack, CtState
from .engine import Engine
from .packets import FRAGMENT, MALFORMED, NOT_IP, OK, PROTO_NAMES, PacketBatch, pair_to_ip

CT_LABELS = {int(s): s.name.lower() for s in CtState}


@dataclass
class FlowStats:
    first_index: int
    first_ts: float
    packets: int = 0
    allowed: int = 0
    dropped: int = 0
    first_reason: str = ""
    key: tuple = ()  # the 5-tuple in the direction of the flow's first packet


@dataclass
class ChunkVerdicts:
    """The decisions for one chunk, in capture order."""

    batch: PacketBatch
    allowed: np.ndarray  # bool
    ct: np.ndarray  # uint8 CtState
    reasons: np.ndarray  # object array of str


@dataclass
class ReplaySummary:
    packets: int = 0
    allowed: int = 0
    dropped: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)
    flows: dict[tuple, FlowStats] = field(default_factory=dict)

    def to_dict(self, max_flows: int | None = None) -> dict[str, Any]:
        flows = sorted(self.flows.items(), key=lambda kv: kv[1].first_index)
        if max_flows is not None:
            flows = flows[:max_flows]
        return {
            "packets": self.packets,
            "allowed": self.allowed,
            "dropped": self.dropped,
            "by_reason": dict(self.by_reason.most_common()),
            "flows": [flow_row(key, st) for key, st in flows],
        }

    def finish(self) -> None:
        """After the last chunk: key flows by their first packet's direction (during the replay
        they are keyed direction-independently so that replies join their flow)."""
        self.flows = {st.key: st for st in self.flows.values()}

    def top_denied(self, n: int = 10) -> list[tuple[tuple, FlowStats]]:
        denied = [(k, st) for k, st in self.flows.items() if st.dropped]
        denied.sort(key=lambda kv: (-kv[1].dropped, kv[1].first_index))
        return denied[:n]


def flow_row(key: tuple, st: FlowStats) -> dict[str, Any]:
    family, shi, slo, dhi, dlo, proto, sport, dport = key
    return {
        "src": pair_to_ip(family, shi, slo),
        "dst": pair_to_ip(family, dhi, dlo),
        "protocol": PROTO_NAMES.get(proto, str(proto)),
        "sport": sport,
        "dport": dport,
        "packets": st.packets,
        "allowed": st.allowed,
        "dropped": st.dropped,
        "first_index": st.first_index,
        "reason": st.first_reason,
    }


class Replayer:
    """Holds the state of one replay: conntrack table, fragment verdicts, explanations."""

    def __init__(self, ruleset: Ruleset, conntrack: Conntrack | None = None) -> None:
        self.ruleset = ruleset
        self.engine = Engine(ruleset)
        self.conntrack = conntrack if conntrack is not None else Conntrack()
        self._fragments: dict[tuple, bool] = {}

    def decide(self, batch: PacketBatch) -> ChunkVerdicts:
        allowed_if_new, decider = self.engine.evaluate_explained(batch, "NEW")
        allowed, ct, ct_reasons = self.conntrack.run(batch, allowed_if_new)
        allowed = np.asarray(allowed, dtype=bool).copy()
        ct = np.asarray(ct, dtype=np.uint8)
        reasons = self._reasons(batch, allowed, ct, ct_reasons, decider)
        self._follow_fragments(batch, allowed, reasons)
        return ChunkVerdicts(batch, allowed, ct, reasons)

    def _reasons(
        self,
        batch: PacketBatch,
        allowed: np.ndarray,
        ct: np.ndarray,
        ct_reasons: Any,
        decider: np.ndarray,
    ) -> np.ndarray:
        """One reason string per packet (an object array), assigned by groups, not per packet."""
        reasons = np.empty(len(batch), dtype=object)
        status = batch.status
        reasons[status == NOT_IP] = "not ip"
        reasons[status == MALFORMED] = "malformed"
        reasons[status == FRAGMENT] = "fragment"
        ok = status == OK
        for state in (CtState.ESTABLISHED, CtState.RELATED):
            reasons[ok & (ct == state)] = CT_LABELS[state]
        for i in np.flatnonzero(ok & (ct == CtState.INVALID)):
            detail = str(ct_reasons[i]) if ct_reasons is not None else ""
            reasons[i] = f"invalid: {detail}" if detail else "invalid"
        for state in (CtState.NEW, CtState.UNTRACKED):
            fresh = ok & (ct == state)
            reasons[fresh & allowed] = f"{CT_LABELS[state]}: allowed by policy"
            denied = np.flatnonzero(fresh & ~allowed)
            for rule_index in np.unique(decider[denied]):
                comment = self.engine.rules[rule_index][2].comment if rule_index >= 0 else "denied"
                reasons[denied[decider[denied] == rule_index]] = f"{CT_LABELS[state]}: {comment}"
        return reasons

    def _follow_fragments(
        self, batch: PacketBatch, allowed: np.ndarray, reasons: list[str]
    ) -> None:
        firsts = (batch.status == OK) & batch.frag_more & (batch.frag_offset == 0)
        rows = np.flatnonzero(firsts | (batch.status == FRAGMENT))
        for i in rows:
            key = (
                int(batch.family[i]),
                int(batch.src_hi[i]),
                int(batch.src_lo[i]),
                int(batch.dst_hi[i]),
                int(batch.dst_lo[i]),
                int(batch.frag_id[i]),
            )
            if batch.status[i] == OK:
                self._fragments[key] = bool(allowed[i])
                if len(self._fragments) > 65536:  # the kernel's reassembly queue is bounded too
                    self._fragments.pop(next(iter(self._fragments)))
                continue
            verdict = self._fragments.get(key)
            allowed[i] = bool(verdict)
            reasons[i] = (
                "fragment: follows its datagram"
                if verdict is not None
                else "fragment: first fragment not seen"
            )


def flow_keys(batch: PacketBatch) -> np.ndarray:
    """Direction-independent flow key rows (the first packet's direction is kept per flow)."""
    a = np.stack([batch.src_hi, batch.src_lo, batch.sport.astype(np.uint64)], axis=1)
    b = np.stack([batch.dst_hi, batch.dst_lo, batch.dport.astype(np.uint64)], axis=1)
    a_first = (a[:, 0] < b[:, 0]) | (
        (a[:, 0] == b[:, 0]) & ((a[:, 1] < b[:, 1]) | ((a[:, 1] == b[:, 1]) & (a[:, 2] <= b[:, 2])))
    )
    lo = np.where(a_first[:, None], a, b)
    hi = np.where(a_first[:, None], b, a)
    return np.concatenate(
        [batch.family.astype(np.uint64)[:, None], lo, hi, batch.proto.astype(np.uint64)[:, None]],
        axis=1,
    )


def accumulate(summary: ReplaySummary, v: ChunkVerdicts) -> None:
    """Add one chunk's verdicts to the totals, reasons and per-flow rows."""
    n = len(v.batch)
    summary.packets += n
    n_allowed = int(v.allowed.sum())
    summary.allowed += n_allowed
    summary.dropped += n - n_allowed
    if n:
        labels = np.where(v.allowed, "allow: ", "drop: ").astype(object) + v.reasons
        for label, count in zip(*np.unique(labels, return_counts=True), strict=True):
            summary.by_reason[label] += int(count)
    ip = (v.batch.status == OK) | (v.batch.status == FRAGMENT)
    if not ip.any():
        return
    keys = flow_keys(v.batch)
    idx = np.flatnonzero(ip)
    uniq, first, inverse = np.unique(keys[idx], axis=0, return_index=True, return_inverse=True)
    inverse = inverse.ravel()
    counts = np.bincount(inverse, minlength=len(uniq))
    allowed_counts = np.bincount(inverse, weights=v.allowed[idx], minlength=len(uniq)).astype(
        np.int64
    )
    b = v.batch
    for u in range(len(uniq)):
        row = idx[first[u]]
        canon = tuple(int(x) for x in uniq[u])
        st = summary.flows.get(canon)
        if st is None:
            key = (
                int(b.family[row]),
                int(b.src_hi[row]),
                int(b.src_lo[row]),
                int(b.dst_hi[row]),
                int(b.dst_lo[row]),
                int(b.proto[row]),
                int(b.sport[row]),
                int(b.dport[row]),
            )
            st = FlowStats(
                int(b.index[row]), float(b.ts[row]), first_reason=v.reasons[row], key=key
            )
            summary.flows[canon] = st
        st.packets += int(counts[u])
        st.allowed += int(allowed_counts[u])
        st.dropped += int(counts[u] - allowed_counts[u])


def replay(
    chunks: Iterable[PacketBatch],
    replayer: Replayer,
    on_chunk: Callable[[ChunkVerdicts], None] | None = None,
) -> ReplaySummary:
    summary = ReplaySummary()
    for batch in chunks:
        v = replayer.decide(batch)
        accumulate(summary, v)
        if on_chunk is not None:
            on_chunk(v)
    summary.finish()
    return summary


def packet_rows(v: ChunkVerdicts) -> Iterator[dict[str, Any]]:
    """One JSON object per packet, in capture order (``-o jsonl``)."""
    b = v.batch
    for i in range(len(b)):
        fam = int(b.family[i])
        proto = int(b.proto[i])
        yield {
            "index": int(b.index[i]),
            "ts": float(b.ts[i]),
            "src": pair_to_ip(fam, b.src_hi[i], b.src_lo[i]),
            "dst": pair_to_ip(fam, b.dst_hi[i], b.dst_lo[i]),
            "protocol": PROTO_NAMES.get(proto, str(proto)) if fam else "",
            "sport": int(b.sport[i]),
            "dport": int(b.dport[i]),
            "verdict": "allow" if v.allowed[i] else "drop",
            "ct": CT_LABELS.get(int(v.ct[i]), "untracked"),
            "reason": v.reasons[i],
        }
