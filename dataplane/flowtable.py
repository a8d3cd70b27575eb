"""Per-flow counters for a replay: an open-addressing hash table in numpy arrays, fed by numba.

A flow is keyed direction-free (the lower (address, port) end first), so a reply counts with the
connection it answers; ICMP packets use their echo identifier as both ports, so two pings between
the same pair in opposite directions stay two flows; the first packet seen fixes the flow's
direction, index, time and reason. The table grows by doubling before a chunk could overfill it,
so a chunk is one kernel call. With conntrack's connection tags (``Conntrack.run_policy``), a
connection's flow is hashed for once and then found by the connection's slot (``known``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numba import njit

from .packets import FRAGMENT, OK, PacketBatch

_C1 = np.uint64(0x9E3779B97F4A7C15)
_C2 = np.uint64(0xFF51AFD7ED558CCD)
_S33 = np.uint64(33)
_ONE = np.uint64(1)
KEY_WORDS = 8  # family, proto, low (hi, lo, port), high (hi, lo, port)
FIRST_WORDS = 8  # family, src_hi, src_lo, dst_hi, dst_lo, proto, sport, dport


# Without NRT reference counting: array arguments would otherwise cost an atomic increment and
# decrement per call, and nothing here allocates.
_kernel = njit(cache=True, nogil=True, _nrt=False)


@_kernel
def _mix(x, w):
    x = (x ^ w) * _C1
    return x ^ (x >> _S33)


@_kernel
def _hash(k0, k1, k2, k3, k4, k5, k6, k7):
    x = _mix(_mix(_mix(_mix(np.uint64(0), k0), k1), k2), k3)
    x = _mix(_mix(_mix(_mix(x, k4), k5), k6), k7) * _C2
    return x ^ (x >> _S33)


@_kernel
def _insert_slot(slots, keys, k0, k1, k2, k3, k4, k5, k6, k7, mask):
    """The slot holding the key, or the empty slot where it belongs (slots[s] == -1)."""
    s = _hash(k0, k1, k2, k3, k4, k5, k6, k7) & mask
    while True:
        f = slots[s]
        if f < 0:
            return s
        if (
            keys[f, 0] == k0 and keys[f, 1] == k1 and keys[f, 2] == k2 and keys[f, 3] == k3
            and keys[f, 4] == k4 and keys[f, 5] == k5 and keys[f, 6] == k6 and keys[f, 7] == k7
        ):  # fmt: skip
            return s
        s = (s + _ONE) & mask


@_kernel
def _rehash(slots, keys, used):
    mask = np.uint64(slots.shape[0] - 1)
    for f in range(used):
        k = keys[f]
        s = _insert_slot(slots, keys, k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7], mask)
        slots[s] = f


@_kernel
def _accumulate(
    slots, keys, first, first_index, first_ts, first_reason, packets, allowed_n, used,
    status, family, src_hi, src_lo, dst_hi, dst_lo, proto, sport, dport, icmp_id, index, ts,
    allowed, reason, tags, known,
):  # fmt: skip
    mask = np.uint64(slots.shape[0] - 1)
    tagged = tags.shape[0] > 0
    for p in range(status.shape[0]):
        if status[p] != OK and status[p] != FRAGMENT:
            continue
        t = tags[p] if tagged else -1
        if t >= 0:
            e = t & 0xFFFFFFFF
            if known[e, 0] == t >> 32:  # a connection already tied to its flow: no hashing
                f = known[e, 1]
                packets[f] += 1
                if allowed[p]:
                    allowed_n[f] += 1
                continue
        a_hi, a_lo, a_port = src_hi[p], src_lo[p], np.uint64(sport[p])
        b_hi, b_lo, b_port = dst_hi[p], dst_lo[p], np.uint64(dport[p])
        if proto[p] == 1 or proto[p] == 58:  # ICMP: an echo exchange is keyed by its identifier
            a_port = np.uint64(icmp_id[p])
            b_port = a_port
        if not (
            a_hi < b_hi or (a_hi == b_hi and (a_lo < b_lo or (a_lo == b_lo and a_port <= b_port)))
        ):
            a_hi, a_lo, a_port, b_hi, b_lo, b_port = b_hi, b_lo, b_port, a_hi, a_lo, a_port
        fam, pr = np.uint64(family[p]), np.uint64(proto[p])
        s = _insert_slot(slots, keys, fam, pr, a_hi, a_lo, a_port, b_hi, b_lo, b_port, mask)
        f = slots[s]
        if f < 0:
            f = used
            used += 1
            slots[s] = f
            keys[f, 0], keys[f, 1], keys[f, 2], keys[f, 3] = fam, pr, a_hi, a_lo
            keys[f, 4], keys[f, 5], keys[f, 6], keys[f, 7] = a_port, b_hi, b_lo, b_port
            first[f, 0] = fam
            first[f, 1] = src_hi[p]
            first[f, 2] = src_lo[p]
            first[f, 3] = dst_hi[p]
            first[f, 4] = dst_lo[p]
            first[f, 5] = pr
            first[f, 6] = np.uint64(sport[p])
            first[f, 7] = np.uint64(dport[p])
            first_index[f] = index[p]
            first_ts[f] = ts[p]
            first_reason[f] = reason[p]
        if t >= 0:
            known[e, 0] = t >> 32
            known[e, 1] = f
        packets[f] += 1
        if allowed[p]:
            allowed_n[f] += 1
    return used


@dataclass
class FlowTable:
    """Flows seen so far; ``rows()`` lists them as (first-direction key, counters)."""

    slots: np.ndarray
    keys: np.ndarray
    first: np.ndarray
    first_index: np.ndarray
    first_ts: np.ndarray
    first_reason: np.ndarray
    packets: np.ndarray
    allowed: np.ndarray
    used: int = 0
    # connection slot -> (serial, flow) for the tags conntrack gives (Conntrack.run_policy)
    known: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))

    @classmethod
    def empty(cls, capacity: int = 1024) -> FlowTable:
        return cls(
            slots=np.full(2 * capacity, -1, dtype=np.int64),
            keys=np.zeros((capacity, KEY_WORDS), dtype=np.uint64),
            first=np.zeros((capacity, FIRST_WORDS), dtype=np.uint64),
            first_index=np.zeros(capacity, dtype=np.int64),
            first_ts=np.zeros(capacity, dtype=np.float64),
            first_reason=np.zeros(capacity, dtype=np.int64),
            packets=np.zeros(capacity, dtype=np.int64),
            allowed=np.zeros(capacity, dtype=np.int64),
        )

    def _reserve(self, more: int) -> None:
        need = self.used + more
        capacity = len(self.first_index)
        if need <= capacity:
            return
        while capacity < need:
            capacity *= 2
        for name in ("keys", "first", "first_index", "first_ts", "first_reason", "packets"):
            old = getattr(self, name)
            new = np.zeros((capacity, *old.shape[1:]), dtype=old.dtype)
            new[: self.used] = old[: self.used]
            setattr(self, name, new)
        allowed = np.zeros(capacity, dtype=np.int64)
        allowed[: self.used] = self.allowed[: self.used]
        self.allowed = allowed
        self.slots = np.full(2 * capacity, -1, dtype=np.int64)  # load stays <= 1/2
        with np.errstate(over="ignore"):  # hashing wraps on purpose (matters only unjitted)
            _rehash(self.slots, self.keys, self.used)

    def add(
        self,
        batch: PacketBatch,
        allowed: np.ndarray,
        reason: np.ndarray,
        tags: np.ndarray | None = None,
        tag_slots: int = 0,
    ) -> None:
        """Count one chunk's IP packets (``reason``: a code per packet, kept for first packets).

        ``tags`` (optional, from ``Conntrack.run_policy``; slots below ``tag_slots``) name the
        connection each packet passed in: a connection's flow is looked up once, and its later
        packets are counted without hashing their 5-tuple."""
        self._reserve(len(batch))
        if tags is None:
            tags = np.empty(0, dtype=np.int64)
        elif tag_slots > len(self.known):
            known = np.zeros((tag_slots, 2), dtype=np.int64)  # serial 0: no connection
            known[: len(self.known)] = self.known
            self.known = known
        with np.errstate(over="ignore"):
            self.used = self._add(batch, allowed, reason, tags)

    def _add(
        self, batch: PacketBatch, allowed: np.ndarray, reason: np.ndarray, tags: np.ndarray
    ) -> int:
        return int(
            _accumulate(
                self.slots, self.keys, self.first, self.first_index, self.first_ts,
                self.first_reason, self.packets, self.allowed, self.used, batch.status,
                batch.family, batch.src_hi, batch.src_lo, batch.dst_hi, batch.dst_lo, batch.proto,
                batch.sport, batch.dport, batch.icmp_id, batch.index, batch.ts,
                np.ascontiguousarray(allowed, dtype=np.bool_),
                np.ascontiguousarray(reason, dtype=np.int64),
                np.ascontiguousarray(tags, dtype=np.int64), self.known,
            )
        )  # fmt: skip
