"""Replay: capture chunks -> conntrack + tables -> verdicts, counters and per-flow rows.

Per chunk: conntrack walks the chunk in capture order, on the packets' own timestamps,
accepting ESTABLISHED/RELATED, dropping INVALID, and asking the engine what the tables say about
each packet that needs the policy's verdict (NEW, UNTRACKED, fragments) as it meets it: the
tables' only stateful matches are the conntrack ones at the top of the dispatch chain, so the
rest of the tables see such a packet as NEW. Packets of established flows are never classified.
The connection table lives across chunks, so memory stays bounded by the chunk size and the
table limit, never by the capture.

Non-first IP fragments follow the verdict of their datagram's first fragment, because the kernel
filters after reassembly; one whose first fragment was not seen earlier is dropped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

import numpy as np
from numba import njit

from compiler.tables import Ruleset

from .conntrack import REASON_TEXT as CT_REASON_TEXT
from .conntrack import Conntrack, CtState
from .engine import Engine
from .flowtable import FlowTable
from .packets import FRAGMENT, MALFORMED, NOT_IP, OK, PROTO_NAMES, PacketBatch, pair_to_ip

CT_LABELS = {int(s): s.name.lower() for s in CtState}
_FRESH = (CtState.NEW, CtState.UNTRACKED)  # the states whose packets the policy decides


@dataclass
class FlowStats:
    first_index: int
    first_ts: float
    packets: int = 0
    allowed: int = 0
    dropped: int = 0
    first_reason: str = ""
    key: tuple = ()  # the 5-tuple in the direction of the flow's first packet


class ReasonTable:
    """Reason strings, interned: packets carry a code, text is made only when asked for."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self._codes: dict[str, int] = {}

    def code(self, text: str) -> int:
        code = self._codes.get(text)
        if code is None:
            code = self._codes[text] = len(self.texts)
            self.texts.append(text)
        return code

    def text(self, codes: np.ndarray) -> np.ndarray:
        return np.array(self.texts, dtype=object)[codes] if len(codes) else np.empty(0, object)


@dataclass
class ChunkVerdicts:
    """The decisions for one chunk, in capture order."""

    batch: PacketBatch
    allowed: np.ndarray  # bool
    ct: np.ndarray  # uint8 CtState
    reason_code: np.ndarray  # int64 codes into ``reason_table``
    reason_table: ReasonTable
    # conntrack's connection per packet (Conntrack.run_policy), for the flow counters
    connection: np.ndarray | None = None
    connection_slots: int = 0

    @property
    def reasons(self) -> np.ndarray:
        """One reason string per packet (an object array, built on first use)."""
        cached = self.__dict__.get("_reasons")
        if cached is None:
            cached = self.__dict__["_reasons"] = self.reason_table.text(self.reason_code)
        return cached


@dataclass
class ReplaySummary:
    packets: int = 0
    allowed: int = 0
    dropped: int = 0
    table: FlowTable = field(default_factory=FlowTable.empty)
    reason_table: ReasonTable | None = None
    # packets per reason code * 2 + allowed, and those slots in the order they were first
    # counted (chunk by chunk, by label within a chunk), which is by_reason's order for ties
    reason_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    _reason_order: list[int] = field(default_factory=list, init=False, repr=False)
    _by_reason: Counter[str] | None = field(default=None, init=False, repr=False)
    _flows: dict[tuple, FlowStats] | None = field(default=None, init=False, repr=False)

    @property
    def by_reason(self) -> Counter[str]:
        """Packets per "allow: reason" / "drop: reason" label (built on first use)."""
        if self._by_reason is None:
            texts = self.reason_table.texts if self.reason_table is not None else []
            self._by_reason = Counter(
                {_reason_label(texts, slot): int(self.reason_counts[slot])
                 for slot in self._reason_order}
            )  # fmt: skip
        return self._by_reason

    def _count_reasons(self, v: ChunkVerdicts) -> int:
        """Add the chunk's packets per reason and verdict; -> how many were allowed."""
        size = 2 * len(v.reason_table.texts)
        if len(self.reason_counts) < size:
            grown = np.zeros(size, dtype=np.int64)
            grown[: len(self.reason_counts)] = self.reason_counts
            self.reason_counts = grown
        before = self.reason_counts.copy()
        n_allowed = int(_count_reasons(v.reason_code, v.allowed, self.reason_counts))
        new = np.flatnonzero((before == 0) & (self.reason_counts > 0)).tolist()
        if new:
            new.sort(key=lambda slot: _reason_label(v.reason_table.texts, slot))
            self._reason_order.extend(new)
        self._by_reason = None
        return n_allowed

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
        """After the last chunk: the flow rows are built from the table when first asked for."""
        self._flows = None

    @property
    def flows(self) -> dict[tuple, FlowStats]:
        """Flow rows keyed by the 5-tuple of each flow's first packet (built on first use:
        a replay that only wants totals never pays for a Python object per flow)."""
        if self._flows is None:
            self._flows = self._build_flows()
        return self._flows

    def _build_flows(self) -> dict[tuple, FlowStats]:
        t = self.table
        n = t.used
        texts = self.reason_table.texts if self.reason_table is not None else []
        first = t.first[:n].tolist()
        index = t.first_index[:n].tolist()
        ts = t.first_ts[:n].tolist()
        reason = t.first_reason[:n].tolist()
        packets = t.packets[:n].tolist()
        allowed = t.allowed[:n].tolist()
        return {
            tuple(first[f]): FlowStats(
                index[f],
                ts[f],
                packets=packets[f],
                allowed=allowed[f],
                dropped=packets[f] - allowed[f],
                first_reason=texts[reason[f]] if texts else "",
                key=tuple(first[f]),
            )
            for f in range(n)
        }

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
        self.reason_table = ReasonTable()
        rt = self.reason_table
        # the codes the reason kernel writes: fixed ones (in _reason_codes' order), conntrack's
        # INVALID reasons, the fall-through "allowed by policy" per state [NEW, UNTRACKED]
        self._fixed_codes = np.array(
            [rt.code(k) for k in ("not ip", "malformed", "fragment", "established", "related")],
            dtype=np.int64,
        )
        self._fragment_codes = (
            rt.code("fragment: follows its datagram"),
            rt.code("fragment: first fragment not seen"),
        )
        self._invalid = np.array(
            [rt.code(f"invalid: {t}" if t else "invalid") for t in CT_REASON_TEXT], dtype=np.int64
        )
        self._allowed_codes = np.array(
            [rt.code(f"{CT_LABELS[state]}: allowed by policy") for state in _FRESH], dtype=np.int64
        )
        # reasons naming the deciding rule: [NEW, UNTRACKED] x (rule index + 1, 0 = the chain's
        # policy), -1 until a packet first needs one
        self._decided_codes = np.full((2, len(self.engine.rules) + 1), -1, dtype=np.int64)
        self._fragments: dict[tuple, bool] = {}
        # where a replay's time goes, per stage (a few clock reads per chunk, never per packet)
        self.stage_seconds: Counter[str] = Counter()

    def decide(self, batch: PacketBatch) -> ChunkVerdicts:
        t0 = perf_counter()
        policy = self.engine.policy(batch)
        allowed, ct, ct_reason, connection = self.conntrack.run_policy(batch, policy)
        decider = policy[-1]
        t1 = perf_counter()
        ct = np.asarray(ct, dtype=np.uint8)
        codes = self._reasons(batch, allowed, ct, np.asarray(ct_reason), decider)
        self._follow_fragments(batch, allowed, codes)
        seconds = self.stage_seconds
        seconds["conntrack + policy"] += t1 - t0
        seconds["reasons"] += perf_counter() - t1
        return ChunkVerdicts(
            batch, allowed, ct, codes, self.reason_table, connection,
            self.conntrack.connection_slots,
        )  # fmt: skip

    def _reasons(
        self,
        batch: PacketBatch,
        allowed: np.ndarray,
        ct: np.ndarray,
        ct_reason: np.ndarray,
        decider: np.ndarray,
    ) -> np.ndarray:
        """A reason code per packet, by one kernel pass; reasons naming a rule not met before
        are interned afterwards, for the (few) rows that need them."""
        codes = np.empty(len(batch), dtype=np.int64)
        missing = _reason_codes(
            batch.status, ct, allowed, ct_reason, decider.astype(np.int64, copy=False),
            self._fixed_codes, self._invalid, self._allowed_codes, self._decided_codes, codes,
        )  # fmt: skip
        if missing:
            rows = np.flatnonzero(codes < 0)
            row_state = (ct[rows] == CtState.UNTRACKED).astype(np.int64)
            row_rule = decider[rows].astype(np.int64) + 1
            for state, rule in set(zip(row_state.tolist(), row_rule.tolist(), strict=True)):
                comment = self.engine.rules[rule - 1][2].comment if rule else "denied"
                text = f"{CT_LABELS[_FRESH[state]]}: {comment}"
                self._decided_codes[state, rule] = self.reason_table.code(text)
            codes[rows] = self._decided_codes[row_state, row_rule]
        return codes

    def _follow_fragments(self, batch: PacketBatch, allowed: np.ndarray, codes: np.ndarray) -> None:
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
            codes[i] = self._fragment_codes[0 if verdict is not None else 1]


@njit(cache=True, nogil=True, _nrt=False)
def _reason_codes(status, ct, allowed, ct_reason, decider, fixed, invalid, allowed_codes,
                  decided, codes):  # fmt: skip
    """codes[i] for every packet (see ``Replayer._reasons``); -1 where a rule's reason is not
    interned yet. -> how many of those."""
    missing = 0
    for i in range(status.shape[0]):
        st = status[i]
        if st == NOT_IP:
            code = fixed[0]
        elif st == MALFORMED:
            code = fixed[1]
        elif st == FRAGMENT:
            code = fixed[2]
        else:
            c = ct[i]
            code = fixed[0]
            if c == _ESTABLISHED:
                code = fixed[3]
            elif c == _RELATED:
                code = fixed[4]
            elif c == _INVALID:
                code = invalid[ct_reason[i]]
            elif c == _NEW or c == _UNTRACKED:  # noqa: SIM109 (numba: plain compares)
                # a fall-through is "allowed by policy"; a rule that decided (an ACCEPT such as
                # the node exemption, or a DROP) is named by its comment
                row = 0 if c == _NEW else 1
                rule = decider[i]
                if allowed[i] and rule < 0:
                    code = allowed_codes[row]
                else:
                    code = decided[row, rule + 1]
                    if code < 0:
                        missing += 1
        codes[i] = code
    return missing


_NEW, _ESTABLISHED, _RELATED, _INVALID, _UNTRACKED = (
    int(CtState.NEW), int(CtState.ESTABLISHED), int(CtState.RELATED), int(CtState.INVALID),
    int(CtState.UNTRACKED),
)  # fmt: skip


def accumulate(summary: ReplaySummary, v: ChunkVerdicts) -> None:
    """Add one chunk's verdicts to the totals, reasons and per-flow counters."""
    n = len(v.batch)
    summary.packets += n
    summary.reason_table = v.reason_table
    if not n:
        return
    n_allowed = summary._count_reasons(v)
    summary.allowed += n_allowed
    summary.dropped += n - n_allowed
    summary.table.add(v.batch, v.allowed, v.reason_code, v.connection, v.connection_slots)
    summary._flows = None  # rows built before this chunk are stale


def _reason_label(texts: list[str], slot: int) -> str:
    return ("allow: " if slot & 1 else "drop: ") + texts[slot >> 1]


@njit(cache=True, nogil=True, _nrt=False)
def _count_reasons(codes, allowed, counts):
    """counts[code * 2 + allowed] += 1 per packet; -> how many were allowed."""
    n_allowed = 0
    for i in range(codes.shape[0]):
        a = 1 if allowed[i] else 0
        counts[codes[i] * 2 + a] += 1
        n_allowed += a
    return n_allowed


def replay(
    chunks: Iterable[PacketBatch],
    replayer: Replayer,
    on_chunk: Callable[[ChunkVerdicts], None] | None = None,
) -> ReplaySummary:
    summary = ReplaySummary()
    for batch in chunks:
        v = replayer.decide(batch)
        t0 = perf_counter()
        accumulate(summary, v)
        replayer.stage_seconds["count"] += perf_counter() - t0
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
