"""The connection tracker's engine: one numba loop over a batch, the table in numpy arrays.

Theory of operation
-------------------
``_run`` walks the packets of a batch in order and, for each, classifies it (the per-protocol
trackers below apply the tables of ``ct_tables``) and then commits the planned change if the packet
passes, all without creating a Python object. The table (``CtTable``) lives across calls, since
replay feeds chunk after chunk:

* ``K`` (int64, one row per slot): the direction-free key -- word 0 packs family, protocol and the
  two ports (ICMP: identifier and request type), words 1-4 the two addresses (a canonical
  endpoint order for port flows, request direction for ICMP) -- and word 5 its hash.
* ``E`` (int64, one row per slot): flags and the TCP tracking state (``struct ip_ct_tcp`` as far
  as we model it; -1 stands for "not seen yet"). ``F`` (float64): created, expires, timeout.
  A row per entry rather than a column per field: a packet touches one entry, so its fields
  share cache lines.
* ``IDX``: an open-addressing hash index (linear probing, power-of-two size, at most half full,
  backward-shift deletion) from key to slot.
* ``FIFO``: slots in creation order, with holes (-1) where entries went away. The early-drop
  victim is the first expired or non-assured entry in that order, and ``entries()`` lists in it;
  a re-created entry (reopened, or replacing an expired one under the same key) moves to the end.
  That is the order of the dict the first Python implementation kept, so eviction picks the same
  victims.
* ``M``: count, slots used, free-list head (free slots chain through their ``_POS`` field),
  FIFO head and tail.

A packet changes the table only if it passes. ``_run`` finds the entry, works out the ctstate
(reply direction or reply seen: ESTABLISHED) and hands the tracker a row to edit: the entry itself
for an ESTABLISHED packet, which always passes, else a copy (``W``) or a fresh row. The tracker
returns a plan (ctstate, reason, action, timeout); ``_run`` checks the table has room for a new
entry, and carries the plan out only if the packet passes -- so a NEW packet the policy denies
leaves nothing. Trackers decide INVALID before they edit anything.

The loop prefetches: it hashes the packet a few positions ahead and asks for its index bucket,
and for a nearer one reads that bucket and asks for the entry's rows, so the misses of a table
bigger than the caches overlap with work instead of stalling it.

The kernel cannot allocate the caller's arrays, so it stops (returning the index of the packet it
did not process) when every slot is used and the table may still grow; ``CtTable.track`` doubles
the arrays and calls again from there.

The same code runs as plain Python under ``NUMBA_DISABLE_JIT=1``. Everything is int64 (the
uint64 address columns are passed as int64 views: numba would turn uint64 mixed with int64 into
float64; any total order of addresses serves for the canonical key), every column read goes
through ``np.int64(...)``, and the hash multiplies 32-bit values by 31-bit constants so no
product overflows in either mode. Row copies are loops, not slice assignments: the kernel is
compiled without NRT (see ``_helper``), which slice assignment needs; scratch arrays come from the
caller for the same reason.

Reasons are codes into ``REASON_TEXT``; the texts are the ones the per-packet Python tracker
produced (the formatted ones are enumerated: event x state, chunk x state, ICMP type).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
from numba import njit

from dataplane.ct_tables import (
    ICMP_ERRORS,
    ICMP_REPLIES,
    ICMP_REQUESTS,
    ICMPV6_REPLIES,
    ICMPV6_REQUESTS,
    ICMPV6_UNTRACKED,
    SCTP_OOTB_DISCARD,
    SCTP_TRANSITIONS,
    TCP_FLAG_MASK,
    TCP_MAX_RETRANS,
    TCP_TRANSITIONS,
    TCP_VALID_FLAGS,
    UDP_STREAM_AFTER,
    CtState,
    SctpChunk,
    SctpState,
    TcpEvent,
    TcpState,
    Timeouts,
)
from dataplane.engine_kernel import policy_verdict
from dataplane.packets import ACK, FIN, FRAGMENT, NOT_IP, OK, RST, SYN, PacketBatch
from dataplane.prefetch import prefetch as _prefetch
from dataplane.program import CT_CODES

# --------------------------------------------------------------------------------------------------
# Plain-int mirrors of the enums. numba freezes globals into the cached machine code and its cache
# only notices edits to this file, so the numbers the kernel branches on are spelled out here and
# checked against ct_tables below. (TCP flag bits and packet statuses come from packets.py: the
# wire format fixes them.)

_NEW, _EST, _REL, _INV, _UNT = 0, 1, 2, 3, 4
_T_NONE, _T_SS, _T_SR, _T_ES, _T_FW, _T_CW, _T_LA, _T_TW, _T_CL, _T_S2, _T_IV, _T_IG = range(12)
_E_SYN, _E_SYNACK, _E_FIN, _E_ACK, _E_RST, _E_NONE = range(6)
_S_NONE, _S_CLOSED, _S_ES, _S_IV = 0, 1, 4, 9
_C_INIT, _C_ABORT, _C_COOKIE_ACK, _C_SHUTDOWN_COMPLETE = 1, 6, 11, 14
_MAX_RETRANS = 3
_STREAM_AFTER = 2.0
_FLAG_MASK = 0x37
_M32 = 0xFFFFFFFF

assert tuple(CtState) == (_NEW, _EST, _REL, _INV, _UNT)
assert CT_CODES["NEW"] == _NEW  # the code policy_verdict is given for the engine's ctstate
assert tuple(range(12)) == tuple(TcpState) and tuple(range(6)) == tuple(TcpEvent)
assert (_S_NONE, _S_CLOSED, _S_ES, _S_IV) == (
    SctpState.NONE,
    SctpState.CLOSED,
    SctpState.ESTABLISHED,
    SctpState.INVALID,
)
assert (_C_INIT, _C_ABORT, _C_COOKIE_ACK, _C_SHUTDOWN_COMPLETE) == (
    SctpChunk.INIT,
    SctpChunk.ABORT,
    SctpChunk.COOKIE_ACK,
    SctpChunk.SHUTDOWN_COMPLETE,
)
assert {_C_ABORT, _C_COOKIE_ACK, _C_SHUTDOWN_COMPLETE} == SCTP_OOTB_DISCARD
assert (_MAX_RETRANS, _STREAM_AFTER, _FLAG_MASK) == (
    TCP_MAX_RETRANS,
    UDP_STREAM_AFTER,
    TCP_FLAG_MASK,
)

# planned actions; _REOPEN: a TCP SYN that kills a closed connection and starts a new one
_NOOP, _CREATE, _UPDATE, _DELETE, _REOPEN = 0, 1, 2, 3, 4

# --------------------------------------------------------------------------------------------------
# Table layout

# E columns; per-direction fields take two (index + direction, 0 = original, 1 = reply)
_SWAP = 0  # the original direction's source is the key's second endpoint
_SEEN = 1
_ASSURED = 2
_POS = 3  # position in FIFO; for a free slot, the next free slot
_SCTP = 4
_TST = 5  # TcpState
_END = 6  # td_end, highest seq + len sent (-1: nothing seen yet)
_UNACK = 8  # data unacknowledged
_MAXACK = 10  # td_maxack (-1: none)
_CLOSE = 12  # this side sent the FIN that closed
_LIDX = 14  # last event, its direction, seq, ack, end, window
_LDIR = 15
_LSEQ = 16
_LACK = 17
_LEND = 18
_LWIN = 19
_RETRANS = 20
_SIMOPEN = 21
_CHACK = 22  # IP_CT_EXP_CHALLENGE_ACK
_SERIAL = 23  # which connection holds the slot (numbered from 1 as they are created)
NI = 24

# F columns
_CREATED, _EXPIRES, _TIMEOUT = 0, 1, 2
# M fields
_COUNT, _USED, _FREE, _HEAD, _TAIL, _SERIALS = 0, 1, 2, 3, 4, 5
# prefetch distance (packets) and the ring of keys computed ahead (a power of two > 2 * _AHEAD)
_AHEAD = 4
_RING = 16

# timeout vector: TCP by state (0-9), SCTP by state (10-18), then the rest
_TO_SCTP = 10
_TO_MAX_RETRANS = 19
_TO_UNACK = 20
_TO_UDP = 21
_TO_UDP_STREAM = 22
_TO_ICMP = 23
_TO_ICMPV6 = 24
_TO_GENERIC = 25

# --------------------------------------------------------------------------------------------------
# Reason codes. The formatted families are laid out arithmetically: base + index.

_FIXED = (
    "",
    "not ip",
    "fragment: follows its datagram",
    "malformed",
    "table full",
    "invalid tcp flag combination",
    "mid-stream ack and loose pickup is off",
    "syn opens",
    "syn reopens closed connection",
    "loose pickup of mid-stream ack",
    "syn-ack answers an ignored syn: resync",
    "rfc5961 challenge ack ignored",
    "rst below the peer's highest ack",
    "rst with inexact sequence: state kept",
    "rst before any reply: entry deleted",
    "syn retransmit (timeout not renewed)",
    "udp opens",
    "udp",
    "udp reply",
    "udp stream",
    "generic opens",
    "generic",
    "icmp of the other address family",
    "neighbour discovery / MLD is not tracked",
    "icmp request opens",
    "icmp request",
    "icmp reply",
    "unsolicited icmp reply",
    "icmp error quotes an untrackable icmp packet",
    "icmp error quotes no tracked flow",
    "quotes tracked flow",
    "sctp init with non-zero verification tag",
    "sctp opens",
    "sctp",
    "sctp init retransmit (timeout not renewed)",
    "out-of-the-blue sctp abort",
    "out-of-the-blue sctp cookie_ack",
    "out-of-the-blue sctp shutdown_complete",
    "icmp type cannot be tracked",
)
(
    _R_NONE,
    _R_NOT_IP,
    _R_FRAGMENT,
    _R_MALFORMED,
    _R_TABLE_FULL,
    _R_TCP_FLAGS,
    _R_LOOSE_OFF,
    _R_SYN_OPENS,
    _R_SYN_REOPENS,
    _R_LOOSE_PICKUP,
    _R_RESYNC,
    _R_CHALLENGE,
    _R_RST_BELOW,
    _R_RST_INEXACT,
    _R_RST_DELETE,
    _R_SYN_RETRANS,
    _R_UDP_OPENS,
    _R_UDP,
    _R_UDP_REPLY,
    _R_UDP_STREAM,
    _R_GENERIC_OPENS,
    _R_GENERIC,
    _R_ICMP_FAMILY,
    _R_ICMP_ND,
    _R_ICMP_OPENS,
    _R_ICMP_REQUEST,
    _R_ICMP_REPLY,
    _R_ICMP_UNSOLICITED,
    _R_QUOTES_UNTRACKABLE,
    _R_QUOTES_NOTHING,
    _R_RELATED,
    _R_SCTP_VTAG,
    _R_SCTP_OPENS,
    _R_SCTP,
    _R_SCTP_INIT_RETRANS,
    _R_OOTB_ABORT,
    _R_OOTB_COOKIE_ACK,
    _R_OOTB_SHUTDOWN_COMPLETE,
    _R_ICMP_TYPE_OTHER,
) = range(39)
assert len(_FIXED) == 39
_R_CANNOT_OPEN = 39  # + TcpEvent
_R_TCP_NAME = _R_CANNOT_OPEN + 6  # + (direction * 6 + event) * 10 + state: "ack in SYN_SENT"
_R_TCP_IGNORED = _R_TCP_NAME + 120  # "ignored: " + name
_R_TCP_INVALID = _R_TCP_IGNORED + 120  # "invalid transition: " + name
_R_SCTP_INVALID = _R_TCP_INVALID + 120  # + chunk * 9 + state
_R_SCTP_CANNOT_OPEN = _R_SCTP_INVALID + 15 * 9  # + chunk type (0-255)
_R_ICMP_TYPE = _R_SCTP_CANNOT_OPEN + 256  # + type + 1, for types -1..255
_R_END = _R_ICMP_TYPE + 257

_CANNOT_OPEN = {
    TcpEvent.SYN: "",
    TcpEvent.SYNACK: "unsolicited syn-ack",
    TcpEvent.FIN: "fin cannot open a connection",
    TcpEvent.ACK: "",
    TcpEvent.RST: "rst cannot open a connection",
    TcpEvent.NONE: "no flags cannot open a connection",
}


def _reason_texts() -> tuple[str, ...]:
    texts = list(_FIXED)
    texts += [_CANNOT_OPEN[ev] for ev in TcpEvent]
    names = [
        f"{ev.name.lower()} in {TcpState(st).name}" + (" (reply)" if d else "")
        for d in (0, 1)
        for ev in TcpEvent
        for st in range(10)
    ]
    texts += names
    texts += [f"ignored: {n}" for n in names]
    texts += [f"invalid transition: {n}" for n in names]
    chunk_names = {int(c): c.name.lower() for c in SctpChunk}
    texts += [
        f"sctp {chunk_names.get(c, str(c))} invalid in {SctpState(st).name}"
        for c in range(15)
        for st in range(9)
    ]
    texts += [f"sctp chunk {c} cannot open an association" for c in range(256)]
    texts += [f"icmp type {t} cannot be tracked" for t in range(-1, 256)]
    assert len(texts) == _R_END
    return tuple(texts)


REASON_TEXT: tuple[str, ...] = _reason_texts()

# --------------------------------------------------------------------------------------------------
# The tables as one flat int64 array, RULES (an argument, not a global: numba freezes globals into
# its cache, which would not notice an edit of ct_tables). Offsets:
_RT_TCP = 0  # [direction][event][state] -> next TcpState
_RT_VALID = _RT_TCP + 2 * 6 * 10  # [flags & TCP_FLAG_MASK] -> 1 if tcp_error() lets it through
_RT_SCTP = _RT_VALID + 64  # [direction][chunk type < 15][state] -> next SctpState, -1: no event
_RT_ICMP = _RT_SCTP + 2 * 15 * 9  # [row][type], rows below
_RT_END = _RT_ICMP + 6 * 256
# ICMP rows: v4 request -> reply type, v4 reply -> request type, the same for v6 (-1: neither),
# v4 error (0/1), v6 untracked (0/1)


def _rules() -> np.ndarray:
    tcp = np.empty((2, 6, 10), np.int64)
    for d, rows in TCP_TRANSITIONS.items():
        for ev, row in rows.items():
            tcp[d, ev] = row
    valid = np.zeros(64, np.int64)
    valid[list(TCP_VALID_FLAGS)] = 1
    sctp = np.full((2, 15, 9), -1, np.int64)
    for d, rows in SCTP_TRANSITIONS.items():
        for ev, row in rows.items():
            sctp[d, ev] = row
    icmp = np.full((6, 256), -1, np.int64)
    for row, mapping in enumerate((ICMP_REQUESTS, ICMP_REPLIES, ICMPV6_REQUESTS, ICMPV6_REPLIES)):
        for t, other in mapping.items():
            icmp[row, t] = other
    icmp[4:] = 0
    icmp[4, list(ICMP_ERRORS)] = 1
    icmp[5, list(ICMPV6_UNTRACKED)] = 1
    out = np.concatenate([tcp.ravel(), valid, sctp.ravel(), icmp.ravel()])
    assert len(out) == _RT_END
    return out


RULES = _rules()


@lru_cache(maxsize=16)
def timeout_vector(t: Timeouts) -> np.ndarray:
    """The profile as the kernel indexes it (see the _TO_* offsets). Do not modify the result."""
    vec = [float(t.tcp(TcpState(s))) for s in range(10)]
    vec += [float(t.sctp(SctpState(s))) for s in range(9)]
    vec += [
        t.tcp_max_retrans,
        t.tcp_unacknowledged,
        t.udp,
        t.udp_stream,
        t.icmp,
        t.icmpv6,
        t.generic,
    ]
    return np.array(vec, np.float64)


# --------------------------------------------------------------------------------------------------
# Compilation

# The kernel is compiled without NRT reference counting: every array argument a refcounted
# function binds costs an atomic increment and decrement, which was half of the kernel's time.
# (_nrt is numba's own switch for this.) So nothing in it allocates: the arrays, scratch included,
# come from CtTable, which outlives every call. Mixing the two is unsafe -- a refcounted caller
# would release an array an unrefcounted callee returns -- so every function here is a _helper
# except the entry points that only pass arrays down (_reindex, _expire). The hot calls also
# take few arrays: each one is passed as 7-11 machine words.
# engine_kernel.policy_verdict is compiled into _run's cached machine code, which numba refreshes
# only when this file changes: after editing engine_kernel.py in a checkout, touch this file too
# (an install replaces both).
_helper = njit(cache=True, _nrt=False)
# Inlined into their one caller: removing these two calls from the per-packet path measured 20%
# faster; inlining more (the bigger _tcp_apply has two callers) made it slower.
_inline = njit(cache=True, _nrt=False, inline="always")


# --------------------------------------------------------------------------------------------------
# Rule lookups (RULES is the flat int64 array built by _rules)


@_helper
def _tcp_next(RULES, d, ev, st):
    return RULES[_RT_TCP + (d * 6 + ev) * 10 + st]


@_helper
def _sctp_next(RULES, d, chunk, st):
    return RULES[_RT_SCTP + (d * 15 + chunk) * 9 + st]


@_helper
def _icmp_rule(RULES, row, t):
    return RULES[_RT_ICMP + row * 256 + t]


# --------------------------------------------------------------------------------------------------
# Keys and the hash index


@_helper
def _mix(h, x):
    # h, x < 2**32 and a multiplier < 2**31: the product fits int64, jitted or not
    h = ((h ^ x) * 0x5BD1E995) & _M32
    return h ^ (h >> 13)


@_helper
def _key_hash(k0, ahi, alo, bhi, blo):
    # xor-fold each endpoint to 32 bits first: three multiply rounds instead of ten (a weaker mix
    # only lengthens probes, it never changes a result)
    a = (ahi ^ (ahi >> 32) ^ alo ^ (alo >> 32)) & _M32
    b = (bhi ^ (bhi >> 32) ^ blo ^ (blo >> 32)) & _M32
    h = _mix(_mix(_mix(0x9747B28C, (k0 ^ (k0 >> 32)) & _M32), a), b)
    h = (h * 0x2545F491) & _M32
    return h ^ (h >> 16)


@_helper
def _port_key(fam, proto, shi, slo, sport, dhi, dlo, dport):
    """The direction-free key of a port (or generic) flow -> (swap, k0, k1, k2, k3, k4, hash);
    swap = 1 if the packet's source is the key's second endpoint."""
    if shi > dhi or (shi == dhi and (slo > dlo or (slo == dlo and sport > dport))):
        k0 = fam | (proto << 8) | (dport << 16) | (sport << 32)
        return 1, k0, dhi, dlo, shi, slo, _key_hash(k0, dhi, dlo, shi, slo)
    k0 = fam | (proto << 8) | (sport << 16) | (dport << 32)
    return 0, k0, shi, slo, dhi, dlo, _key_hash(k0, shi, slo, dhi, dlo)


@_helper
def _icmp_key(KEY, fam, proto, shi, slo, dhi, dlo, ident, request_type):
    """An ICMP flow's key (request direction, identifier, request type) into KEY."""
    k0 = fam | (proto << 8) | (ident << 16) | (request_type << 32)
    KEY[0] = k0
    KEY[1] = shi
    KEY[2] = slo
    KEY[3] = dhi
    KEY[4] = dlo
    KEY[5] = _key_hash(k0, shi, slo, dhi, dlo)


@_helper
def _find(K, IDX, k0, k1, k2, k3, k4, h):
    """The slot holding the key (live or expired), or -1."""
    mask = IDX.shape[0] - 1
    b = h & mask
    while True:
        s = IDX[b]
        if s < 0:
            return -1
        if (
            K[s, 5] == h
            and K[s, 0] == k0
            and K[s, 2] == k2
            and K[s, 4] == k4
            and K[s, 1] == k1
            and K[s, 3] == k3
        ):
            return s
        b = (b + 1) & mask


@_helper
def _find_key(K, IDX, KEY):
    return _find(K, IDX, KEY[0], KEY[1], KEY[2], KEY[3], KEY[4], KEY[5])


@_helper
def _index_insert(K, IDX, s):
    mask = IDX.shape[0] - 1
    b = K[s, 5] & mask
    while IDX[b] >= 0:
        b = (b + 1) & mask
    IDX[b] = s


@_helper
def _index_remove(K, IDX, s):
    mask = IDX.shape[0] - 1
    b = K[s, 5] & mask
    while IDX[b] != s:
        b = (b + 1) & mask
    # backward shift: pull later members of the probe run into the hole, so lookups never need
    # tombstones
    j = b
    while True:
        j = (j + 1) & mask
        t = IDX[j]
        if t < 0:
            break
        home = K[t, 5] & mask
        if (b < j and (home <= b or home > j)) or (b > j and home <= b and home > j):
            IDX[b] = t
            b = j
    IDX[b] = -1


@njit(cache=True)
def _reindex(K, IDX, slots):
    for j in range(IDX.shape[0]):
        IDX[j] = -1
    for s in slots:
        _index_insert(K, IDX, s)


# --------------------------------------------------------------------------------------------------
# Slots and creation order


@_helper
def _fifo_append(FIFO, E, M, s):
    if M[_TAIL] == FIFO.shape[0]:
        # out of room: squeeze out the holes (FIFO is twice the slot count, so half is free after)
        n = 0
        for j in range(M[_HEAD], M[_TAIL]):
            t = FIFO[j]
            if t >= 0:
                FIFO[n] = t
                E[t, _POS] = n
                n += 1
        for j in range(n, FIFO.shape[0]):
            FIFO[j] = -1
        M[_HEAD] = 0
        M[_TAIL] = n
    FIFO[M[_TAIL]] = s
    E[s, _POS] = M[_TAIL]
    M[_TAIL] += 1


@_helper
def _delete(K, E, IDX, FIFO, M, s):
    _index_remove(K, IDX, s)
    FIFO[E[s, _POS]] = -1
    E[s, _POS] = M[_FREE]
    M[_FREE] = s
    M[_COUNT] -= 1


@_helper
def _victim(E, F, FIFO, M, now):
    """The oldest entry that is expired or not assured, or -1 (the early-drop choice)."""
    h = M[_HEAD]
    t = M[_TAIL]
    while h < t and FIFO[h] < 0:
        h += 1
    M[_HEAD] = h
    for j in range(h, t):
        s = FIFO[j]
        if s >= 0 and (F[s, _EXPIRES] <= now or E[s, _ASSURED] == 0):
            return s
    return -1


@_helper
def _room(E, F, FIFO, M, slot, now, max_entries):
    """Can a new entry be created? -> (ok, slot to evict first or -1). ``slot`` >= 0: an entry
    with the same key exists (expired, or being reopened) and is replaced, no growth."""
    if slot >= 0 or M[_COUNT] < max_entries:
        return True, -1
    v = _victim(E, F, FIFO, M, now)
    return v >= 0, v


@_helper
def _fresh(W, swap):
    for j in range(NI):
        W[j] = 0
    W[_SWAP] = swap
    W[_END] = -1
    W[_END + 1] = -1
    W[_MAXACK] = -1
    W[_MAXACK + 1] = -1
    W[_LIDX] = _E_NONE
    return W


@_helper
def _copy(E, W, slot):
    """W = the entry's row. A tracker edits the entry itself when the packet is ESTABLISHED (it
    passes whatever the policy says, so the change is committed anyway), else this copy, which
    is written back only if the packet is accepted. Trackers refuse (INVALID) before they
    edit."""
    for j in range(NI):
        W[j] = E[slot, j]
    return W


@_helper
def _create(K, E, F, IDX, FIFO, M, KEY, W, slot, victim, timeout, now):
    if slot >= 0:
        # same key: the entry is reborn and moves to the end of the creation order
        FIFO[E[slot, _POS]] = -1
        s = slot
    else:
        if victim >= 0:
            _delete(K, E, IDX, FIFO, M, victim)
        s = M[_FREE]
        if s >= 0:
            M[_FREE] = E[s, _POS]
        else:
            s = M[_USED]
            M[_USED] += 1
        for j in range(6):
            K[s, j] = KEY[j]
        _index_insert(K, IDX, s)
        M[_COUNT] += 1
    for j in range(NI):
        E[s, j] = W[j]
    M[_SERIALS] += 1
    E[s, _SERIAL] = M[_SERIALS]
    _fifo_append(FIFO, E, M, s)
    F[s, _CREATED] = now
    F[s, _EXPIRES] = now + timeout
    F[s, _TIMEOUT] = timeout
    return s


@_helper
def _expire_kernel(K, E, F, IDX, FIFO, M, now):
    n = 0
    for j in range(M[_HEAD], M[_TAIL]):
        s = FIFO[j]
        if s >= 0 and F[s, _EXPIRES] <= now:
            _delete(K, E, IDX, FIFO, M, s)
            n += 1
    return n


@njit(cache=True)
def _expire(K, E, F, IDX, FIFO, M, now):
    return _expire_kernel(K, E, F, IDX, FIFO, M, now)


# --------------------------------------------------------------------------------------------------
# Trackers. Each gets R, the row to edit (the entry, a copy of it, or a fresh row for a new
# entry, chosen by _run) and returns the plan (ctstate, reason, is_reply, action, timeout);
# timeout NaN = keep the expiry. _CREATE means "create if there is room": _run checks the table.


@_helper
def _after(a, b):
    """Sequence-space a > b (mod 2**32), the kernel's after()."""
    d = (a - b) & _M32
    return d != 0 and d < 0x80000000


@_helper
def _tcp_event(flags):
    if flags & RST:
        return _E_RST
    if flags & SYN:
        return _E_SYNACK if flags & ACK else _E_SYN
    if flags & FIN:
        return _E_FIN
    if flags & ACK:
        return _E_ACK
    return _E_NONE


@_inline
def _window_update(R, d, flags, index, seq, ackno, end, win):
    """The bookkeeping half of tcp_in_window (the window *checks* are not modelled): per
    direction the highest sequence end sent, unacknowledged data, the highest ACK, and the
    retransmission counter -- what selects the 300 s timeouts."""
    r = 1 - d
    if R[_END + d] < 0:
        # first packet seen from this side: adopt its numbers (td_maxwin == 0 in the kernel)
        R[_END + d] = end
        if flags & SYN:
            if not flags & ACK:
                return  # simultaneous open: the kernel returns before the ACK bookkeeping
        elif R[_END + r] < 0:
            R[_END + r] = ackno
        elif ackno == ((R[_END + r] + 1) & _M32):
            R[_END + r] = ackno  # reply to a keepalive
    elif ((R[_TST] == _T_SS and d == 0) or (R[_TST] == _T_SR and d == 1)) and _after(
        end, R[_END + d]
    ):
        R[_END + d] = end  # SYN retransmitted with a new ISN
    # the ACK this packet carries in effect (-1: none, the other side sent nothing yet)
    ack_eff = R[_END + r] if not flags & ACK or (flags & RST and ackno == 0) else ackno
    if flags & RST and seq == 0 and R[_TST] == _T_SS:
        seq = R[_END + d]  # RST answering a SYN
        end = seq
    if _after(end, R[_END + d]):
        R[_END + d] = end
        R[_UNACK + d] = 1
    if flags & ACK and (R[_MAXACK + d] < 0 or _after(ackno, R[_MAXACK + d])):
        R[_MAXACK + d] = ackno
    if ack_eff >= 0 and ack_eff == R[_END + r]:
        R[_UNACK + r] = 0
    if index == _E_ACK:
        if (
            R[_LDIR] == d
            and R[_LSEQ] == seq
            and R[_LACK] == ack_eff
            and R[_LEND] == end
            and R[_LWIN] == win
        ):
            R[_RETRANS] += 1
        else:
            R[_LDIR] = d
            R[_LSEQ] = seq
            R[_LEND] = end
            R[_LWIN] = win
            R[_LACK] = ack_eff if ack_eff >= 0 else 0
            R[_RETRANS] = 0


@_helper
def _tcp_apply(R, RULES, T, d, is_reply, seen, assured, state, reason, action, index, flags,
               seq, ackno, end, win):  # fmt: skip
    """nf_conntrack_tcp_packet from the table lookup on; ``seen``/``assured`` are the entry's
    flags before this packet."""
    nan = np.nan
    old = R[_TST]
    new = _tcp_next(RULES, d, index, old)
    name = (d * 6 + index) * 10 + old
    if reason == _R_NONE:
        reason = _R_TCP_NAME + name

    if new == _T_SS and old >= _T_TW:
        new = _T_IG  # SYN on TIME_WAIT/CLOSE that does not reopen (_tcp handled reopening)
    if new == _T_IG:
        if index == _E_SYNACK and R[_LIDX] == _E_SYN and R[_LDIR] != d and ackno == R[_LEND]:
            # a SYN-ACK answering a SYN we ignored: both ends agree, resync from that SYN
            old = _T_SS
            new = _T_SR
            ld = R[_LDIR]
            R[_END + ld] = R[_LEND]
            R[_UNACK + ld] = 0
            R[_MAXACK + ld] = -1
            R[_CLOSE + ld] = 0
            R[_END + d] = -1
            R[_UNACK + d] = 0
            R[_MAXACK + d] = -1
            R[_CLOSE + d] = 0
            R[_CHACK] = 0
            reason = _R_RESYNC
        else:
            R[_LIDX] = index
            R[_LDIR] = d
            R[_LSEQ] = seq
            R[_LEND] = end
            R[_LWIN] = win
            if index == _E_SYN and d == 0:
                R[_CHACK] = 1 if old == _T_LA else 0
            if is_reply:
                R[_SEEN] = 1
            return state, _R_TCP_IGNORED + name, is_reply, action, nan
    elif new == _T_IV:
        return _INV, _R_TCP_INVALID + name, False, _NOOP, nan
    elif new == _T_TW:
        if (
            old == _T_LA
            and index == _E_ACK
            and R[_LDIR] != d
            and R[_LIDX] == _E_SYN
            and R[_CHACK] != 0
        ):
            R[_CHACK] = 0
            if is_reply:
                R[_SEEN] = 1
            return state, _R_CHALLENGE, is_reply, action, nan
    elif new == _T_S2:
        R[_SIMOPEN] = 1
    elif new == _T_SR:
        if d == 1 and index == _E_ACK and R[_SIMOPEN] != 0:
            new = _T_ES
    elif new == _T_CL and index == _E_RST:
        other = R[_MAXACK + 1 - d]
        if other >= 0 and R[_LIDX] != _E_SYN:
            established = old == _T_ES and assured
            if not (seq == 0 and not established):
                if _after(other, seq):
                    return _INV, _R_RST_BELOW, False, _NOOP, nan
                if (
                    established
                    and seq != other
                    and not (R[_LIDX] == _E_ACK and R[_LDIR] == d and seq == R[_LEND])
                ):
                    new = old  # inexact RST: keep the state for a challenge ACK
                    reason = _R_RST_INEXACT

    _window_update(R, d, flags, index, seq, ackno, end, win)
    R[_LIDX] = index
    R[_LDIR] = d
    R[_TST] = new
    if old != new and new == _T_FW:
        R[_CLOSE + d] = 1

    # timeout selection, in the kernel's order
    state_timeout = T[new]
    if R[_RETRANS] >= _MAX_RETRANS and state_timeout > T[_TO_MAX_RETRANS]:
        timeout = T[_TO_MAX_RETRANS]
    elif index == _E_RST:
        timeout = T[_T_CL]
    elif (R[_UNACK] != 0 or R[_UNACK + 1] != 0) and state_timeout > T[_TO_UNACK]:
        timeout = T[_TO_UNACK]
    elif R[_LWIN] == 0 and state_timeout > T[_TO_MAX_RETRANS]:
        timeout = T[_TO_MAX_RETRANS]
    else:
        timeout = state_timeout
    if is_reply:
        R[_SEEN] = 1
    if not seen:
        if index == _E_RST:
            # "if only reply is a RST ... we can delete the conntrack immediately"
            return state, _R_RST_DELETE, is_reply, _DELETE, timeout
        if index == _E_SYN and old == _T_SS:
            return state, _R_SYN_RETRANS, is_reply, action, nan
        if new == _T_ES and timeout > T[_TO_UNACK]:
            timeout = T[_TO_UNACK]  # picked up, unreplied: keep it short
    elif not assured and old in (_T_SR, _T_ES) and new == _T_ES:
        R[_ASSURED] = 1
    return state, reason, is_reply, action, timeout


@_helper
def _tcp_open(R, RULES, T, loose, reopened, index, flags, seq, ackno, end, win):
    """tcp_new(): what may open a connection, from NONE in the original direction. R is fresh."""
    nan = np.nan
    opened = _tcp_next(RULES, 0, index, _T_NONE)
    if opened == _T_IV:
        return _INV, _R_CANNOT_OPEN + index, False, _NOOP, nan
    if opened != _T_SS and not loose:
        return _INV, _R_LOOSE_OFF, False, _NOOP, nan
    reason = _R_SYN_REOPENS if reopened else _R_SYN_OPENS
    if opened != _T_SS:
        reason = _R_LOOSE_PICKUP
    R[_END] = end
    return _tcp_apply(R, RULES, T, 0, False, False, False, _NEW, reason, _CREATE, index, flags,
                      seq, ackno, end, win)  # fmt: skip


@_inline
def _tcp(R, RULES, T, loose, live, is_reply, seen, assured, state, flags, seq, ackno, plen, win):
    """-> plan; action _REOPEN: the packet re-opens a closed connection (``_run`` starts it
    afresh with ``_tcp_open``)."""
    nan = np.nan
    if RULES[_RT_VALID + (flags & _FLAG_MASK)] == 0:
        # tcp_error(): no flags, FIN without ACK, SYN+FIN, ...: INVALID in every state
        return _INV, _R_TCP_FLAGS, False, _NOOP, nan
    index = _tcp_event(flags)
    end = (seq + plen + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)) & _M32
    if not live:
        return _tcp_open(R, RULES, T, loose, False, index, flags, seq, ackno, end, win)
    d = 1 if is_reply else 0
    old = R[_TST]
    # SYN on TIME_WAIT/CLOSE: if the old connection was closed by a FIN, or reset by this same
    # side, the kernel kills the entry and looks the packet up again (-NF_REPEAT)
    if (
        _tcp_next(RULES, d, index, old) == _T_SS
        and old >= _T_TW
        and (R[_CLOSE] != 0 or R[_CLOSE + 1] != 0 or (R[_LDIR] == d and R[_LIDX] == _E_RST))
    ):
        return _NEW, _R_SYN_REOPENS, False, _REOPEN, nan
    return _tcp_apply(R, RULES, T, d, is_reply, seen, assured, state, _R_NONE, _UPDATE, index,
                      flags, seq, ackno, end, win)  # fmt: skip


@_helper
def _udp(R, T, now, created, live, is_reply, seen, state):
    if not live:
        return _NEW, _R_UDP_OPENS, False, _CREATE, T[_TO_UDP]
    if is_reply:
        R[_SEEN] = 1
    # nf_conntrack_udp_packet(): SEEN_REPLY is tested before this packet sets it, and the stream
    # timeout only applies once the flow has lived 2 seconds
    if seen and now > created + _STREAM_AFTER:
        R[_ASSURED] = 1
        return state, _R_UDP_STREAM, is_reply, _UPDATE, T[_TO_UDP_STREAM]
    reason = _R_UDP_REPLY if is_reply and not seen else _R_UDP
    return state, reason, is_reply, _UPDATE, T[_TO_UDP]


@_helper
def _generic(R, T, live, is_reply, state):
    if not live:
        return _NEW, _R_GENERIC_OPENS, False, _CREATE, T[_TO_GENERIC]
    if is_reply:
        R[_SEEN] = 1
    return state, _R_GENERIC, is_reply, _UPDATE, T[_TO_GENERIC]


@_helper
def _sctp(R, RULES, T, live, is_reply, state, chunk, vtag):
    nan = np.nan
    # DATA, SACK, ... are no events
    ev = chunk if chunk < 15 and _sctp_next(RULES, 0, chunk, 0) >= 0 else -1
    if ev == _C_INIT and vtag != 0:
        return _INV, _R_SCTP_VTAG, False, _NOOP, nan
    if not live:
        # out-of-the-blue packets that never create an entry (RFC 4960 8.4)
        if ev == _C_ABORT:
            return _INV, _R_OOTB_ABORT, False, _NOOP, nan
        if ev == _C_SHUTDOWN_COMPLETE:
            return _INV, _R_OOTB_SHUTDOWN_COMPLETE, False, _NOOP, nan
        if ev == _C_COOKIE_ACK:
            return _INV, _R_OOTB_COOKIE_ACK, False, _NOOP, nan
        if ev < 0:
            return _INV, _R_SCTP_CANNOT_OPEN + chunk, False, _NOOP, nan
        new = _sctp_next(RULES, 0, ev, _S_NONE)
        R[_SCTP] = new
        return _NEW, _R_SCTP_OPENS, False, _CREATE, T[_TO_SCTP + new]
    old = R[_SCTP]
    new = old if ev < 0 else _sctp_next(RULES, 1 if is_reply else 0, ev, old)
    if new == _S_IV:
        return _INV, _R_SCTP_INVALID + ev * 9 + old, False, _NOOP, nan
    if is_reply:
        R[_SEEN] = 1
    R[_SCTP] = new
    if ev == _C_INIT and old == _S_CLOSED and new == _S_CLOSED:
        return state, _R_SCTP_INIT_RETRANS, is_reply, _UPDATE, nan
    if new != old and new == _S_ES:
        R[_ASSURED] = 1
    return state, _R_SCTP, is_reply, _UPDATE, T[_TO_SCTP + new]


@_helper
def _icmp(K, E, F, IDX, KEY, W, RULES, T, now, fam, proto, shi, slo, dhi, dlo, itype, ident,
          iproto, ishi, islo, idhi, idlo, isport, idport):  # fmt: skip
    """ICMP and ICMPv6, keyed on their own: -> plan + the entry's slot; leaves the key in KEY and
    the row in W (or edits the entry in place, when ESTABLISHED)."""
    nan = np.nan
    v6 = proto == 58
    if (fam == 6) != v6:
        return _INV, _R_ICMP_FAMILY, False, _NOOP, nan, -1
    known = 0 <= itype < 256
    if v6 and known and _icmp_rule(RULES, 5, itype) != 0:
        return _UNT, _R_ICMP_ND, False, _NOOP, nan, -1
    if (not v6 and known and _icmp_rule(RULES, 4, itype) != 0) or (v6 and 0 <= itype < 128):
        return _icmp_error(K, E, F, IDX, KEY, RULES, now, fam, iproto, ishi, islo, idhi, idlo,
                           isport, idport)  # fmt: skip
    row = 2 if v6 else 0
    timeout = T[_TO_ICMPV6] if v6 else T[_TO_ICMP]
    if known and _icmp_rule(RULES, row, itype) >= 0:  # a request: opens or refreshes its flow
        _icmp_key(KEY, fam, proto, shi, slo, dhi, dlo, ident, itype)
        slot = _find_key(K, IDX, KEY)
        if slot < 0 or F[slot, _EXPIRES] <= now:
            _fresh(W, 0)
            return _NEW, _R_ICMP_OPENS, False, _CREATE, timeout, slot
        state = _EST if E[slot, _SEEN] != 0 else _NEW
        if state != _EST:
            _copy(E, W, slot)  # nothing to edit but the expiry
        return state, _R_ICMP_REQUEST, False, _UPDATE, timeout, slot
    if known and _icmp_rule(RULES, row + 1, itype) >= 0:  # a reply: only to a tracked request
        request = _icmp_rule(RULES, row + 1, itype)
        _icmp_key(KEY, fam, proto, dhi, dlo, shi, slo, ident, request)
        slot = _find_key(K, IDX, KEY)
        if slot < 0 or F[slot, _EXPIRES] <= now:
            return _INV, _R_ICMP_UNSOLICITED, False, _NOOP, nan, -1
        E[slot, _SEEN] = 1  # ESTABLISHED: edited in place
        return _EST, _R_ICMP_REPLY, True, _UPDATE, timeout, slot
    if -1 <= itype < 256:
        return _INV, _R_ICMP_TYPE + itype + 1, False, _NOOP, nan, -1
    return _INV, _R_ICMP_TYPE_OTHER, False, _NOOP, nan, -1


@_helper
def _icmp_error(K, E, F, IDX, KEY, RULES, now, fam, iproto, ishi, islo, idhi, idlo, isport,
                idport):  # fmt: skip
    """nf_conntrack_inet_error(): the quoted packet's flow must be in the table. A RELATED packet
    does not refresh the entry."""
    nan = np.nan
    if iproto == 1 or iproto == 58:
        row = 2 if iproto == 58 else 0  # inner_sport = identifier, inner_dport = type
        if idport < 256 and _icmp_rule(RULES, row, idport) >= 0:
            _icmp_key(KEY, fam, iproto, ishi, islo, idhi, idlo, isport, idport)
            quoted_reply = False
        elif idport < 256 and _icmp_rule(RULES, row + 1, idport) >= 0:
            request = _icmp_rule(RULES, row + 1, idport)
            _icmp_key(KEY, fam, iproto, idhi, idlo, ishi, islo, isport, request)
            quoted_reply = True
        else:
            return _INV, _R_QUOTES_UNTRACKABLE, False, _NOOP, nan, -1
        slot = _find_key(K, IDX, KEY)
        live = slot >= 0 and F[slot, _EXPIRES] > now
    else:
        if iproto != 6 and iproto != 17 and iproto != 132:
            isport = 0
            idport = 0
        qswap, k0, k1, k2, k3, k4, h = _port_key(fam, iproto, ishi, islo, isport, idhi, idlo,
                                                 idport)  # fmt: skip
        slot = _find(K, IDX, k0, k1, k2, k3, k4, h)
        live = slot >= 0 and F[slot, _EXPIRES] > now
        quoted_reply = live and E[slot, _SWAP] != qswap
    if not live:
        return _INV, _R_QUOTES_NOTHING, False, _NOOP, nan, -1
    # the error travels against the quoted packet: a quoted original packet -> reply direction
    return _REL, _R_RELATED, not quoted_reply, _NOOP, nan, slot


# --------------------------------------------------------------------------------------------------
# The loop


@_helper
def _run(lo, start, hi, status, ts, family, proto, src_hi, src_lo, dst_hi, dst_lo, sport, dport,
         tcp_flags, seq, ack, window, payload_len, sctp_chunk, icmp_type, icmp_id, inner_proto,
         inner_src_hi, inner_src_lo, inner_dst_hi, inner_dst_lo, inner_sport, inner_dport,
         allowed, verdict, states, reasons, replies, tags, K, E, F, IDX, FIFO, M, RULES, T,
         loose, max_entries, KEY, W, ring, policy):  # fmt: skip
    """Packets start..hi-1 in order; outputs and ``allowed`` are indexed from ``lo``. KEY, W and
    ring are scratch. Returns where it stopped: hi, or the packet that needs a bigger table.

    ``policy``: None, when ``allowed`` holds the policy's verdict for every packet; or the
    engine's arrays for this batch (``Engine.policy``), which decide just the packets that need
    a verdict (NEW, UNTRACKED, fragments) as they come, and ``allowed`` is not read. numba
    compiles one variant per case (``policy is None`` is settled at compile time).

    ``tags``: for a packet that passed as part of its own connection (NEW, ESTABLISHED; not
    RELATED) of TCP, UDP, SCTP or ICMP echo, the connection's serial << 32 | its slot; else -1.
    Those connections are keyed exactly like replay's flows, so the flow counters can find a
    packet's flow from its tag instead of hashing its 5-tuple again."""
    cap = K.shape[0]
    mask = IDX.shape[0] - 1
    for i in range(start, hi):
        o = i - lo
        # Prefetch (hides most of the cache misses of a big table): hash the packet 2 * _AHEAD
        # ahead and fetch its index bucket; for the one _AHEAD ahead read that bucket (cached by
        # now) and fetch the entry's rows. Wrong guesses (ICMP keys, changed tables) cost nothing
        # but a wasted fetch.
        j = i + 2 * _AHEAD
        if j < hi:
            pj = np.int64(proto[j])
            ported = pj == 6 or pj == 17 or pj == 132
            key = _port_key(np.int64(family[j]), pj, src_hi[j], src_lo[j],
                            np.int64(sport[j]) if ported else np.int64(0), dst_hi[j], dst_lo[j],
                            np.int64(dport[j]) if ported else np.int64(0))  # fmt: skip
            r = j % _RING
            for w in range(7):
                ring[r, w] = key[w]
            _prefetch(IDX, key[6] & mask, 0)
        j = i + _AHEAD
        if j < hi:
            s = IDX[ring[j % _RING, 6] & mask]
            if s >= 0:
                _prefetch(K, s, 0)
                _prefetch(F, s, 0)
                _prefetch(E, s, 0)
                _prefetch(E, s, 64)
                _prefetch(E, s, 128)

        st = status[i]
        if st != OK:
            if st == NOT_IP:
                verdict[o] = True
                states[o] = _UNT
                reasons[o] = _R_NOT_IP
            elif st == FRAGMENT:
                verdict[o] = allowed[o] if policy is None else policy_verdict(policy, i, _NEW)
                states[o] = _UNT
                reasons[o] = _R_FRAGMENT
            else:  # MALFORMED
                verdict[o] = False
                states[o] = _INV
                reasons[o] = _R_MALFORMED
            tags[o] = -1
            continue
        if M[_COUNT] >= cap and cap < max_entries:
            return i  # no free slot: the caller grows the table and calls again from i
        now = ts[i]
        fam = np.int64(family[i])
        p = np.int64(proto[i])
        if p == 1 or p == 58:
            state, reason, is_reply, action, timeout, slot = _icmp(
                K, E, F, IDX, KEY, W, RULES, T, now, fam, p, src_hi[i], src_lo[i], dst_hi[i],
                dst_lo[i], np.int64(icmp_type[i]), np.int64(icmp_id[i]),
                np.int64(inner_proto[i]), inner_src_hi[i], inner_src_lo[i], inner_dst_hi[i],
                inner_dst_lo[i], np.int64(inner_sport[i]), np.int64(inner_dport[i]),
            )  # fmt: skip
        else:
            if p == 6 or p == 17 or p == 132:
                sp = np.int64(sport[i])
                dp = np.int64(dport[i])
            else:
                sp = np.int64(0)  # generic: addresses and protocol only
                dp = np.int64(0)
            if i >= start + 2 * _AHEAD:  # computed for the prefetch already
                r = i % _RING
                pswap, k0, k1, k2, k3, k4, h = (ring[r, 0], ring[r, 1], ring[r, 2], ring[r, 3],
                                                ring[r, 4], ring[r, 5], ring[r, 6])  # fmt: skip
            else:
                pswap, k0, k1, k2, k3, k4, h = _port_key(fam, p, src_hi[i], src_lo[i], sp,
                                                         dst_hi[i], dst_lo[i], dp)  # fmt: skip
            KEY[0] = k0
            KEY[1] = k1
            KEY[2] = k2
            KEY[3] = k3
            KEY[4] = k4
            KEY[5] = h
            slot = _find(K, IDX, k0, k1, k2, k3, k4, h)
            live = slot >= 0 and F[slot, _EXPIRES] > now
            if live:
                is_reply = E[slot, _SWAP] != pswap
                seen = E[slot, _SEEN] != 0
                # resolve_normal_ct(): any reply-direction packet is ESTABLISHED; original-
                # direction ones are ESTABLISHED once a reply was seen, NEW before
                state = _EST if is_reply or seen else _NEW
                R = E[slot] if state == _EST else _copy(E, W, slot)
            else:
                is_reply = False
                seen = False
                state = _NEW
                R = _fresh(W, pswap)
            if p == 6:
                flags = np.int64(tcp_flags[i])
                sq = np.int64(seq[i])
                ak = np.int64(ack[i])
                pl = np.int64(payload_len[i])
                wn = np.int64(window[i])
                assured = live and E[slot, _ASSURED] != 0
                state, reason, is_reply, action, timeout = _tcp(
                    R, RULES, T, loose, live, is_reply, seen, assured, state, flags, sq, ak, pl,
                    wn
                )  # fmt: skip
                if action == _REOPEN:
                    index = _tcp_event(flags)
                    end = (sq + pl + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)) & _M32
                    state, reason, is_reply, action, timeout = _tcp_open(
                        _fresh(W, pswap), RULES, T, loose, True, index, flags, sq, ak, end, wn
                    )  # fmt: skip
            elif p == 17:
                created = F[slot, _CREATED] if live else now
                state, reason, is_reply, action, timeout = _udp(
                    R, T, now, created, live, is_reply, seen, state
                )  # fmt: skip
            elif p == 132:
                state, reason, is_reply, action, timeout = _sctp(
                    R, RULES, T, live, is_reply, state, np.int64(sctp_chunk[i]), np.int64(seq[i])
                )  # fmt: skip
            else:
                state, reason, is_reply, action, timeout = _generic(R, T, live, is_reply, state)

        victim = -1
        if action == _CREATE:
            ok, victim = _room(E, F, FIFO, M, slot, now, max_entries)
            if not ok:
                state = _INV
                reason = _R_TABLE_FULL
                is_reply = False
                action = _NOOP
        if state in (_EST, _REL):
            ok = True
            commit = True
        elif state == _INV:
            ok = False
            commit = False
        else:
            ok = allowed[o] if policy is None else policy_verdict(policy, i, _NEW)
            commit = ok and state == _NEW
        tag = -1
        if commit:
            if action == _UPDATE:
                if state != _EST:  # else the tracker edited the entry in place
                    for jj in range(NI):
                        E[slot, jj] = W[jj]
                if timeout == timeout:  # NaN: keep the expiry
                    F[slot, _EXPIRES] = now + timeout
                    F[slot, _TIMEOUT] = timeout
                tag = slot
            elif action == _CREATE:
                tag = _create(K, E, F, IDX, FIFO, M, KEY, W, slot, victim, timeout, now)
            elif action == _DELETE:
                _delete(K, E, IDX, FIFO, M, slot)
            elif state == _EST:
                tag = slot
        # generic protocols (UDP-Lite included) are tracked without ports, flows with them
        if tag >= 0 and state != _REL and (p == 6 or p == 17 or p == 132 or p == 1 or p == 58):
            tags[o] = (E[tag, _SERIAL] << 32) | tag
        else:
            tags[o] = -1
        verdict[o] = ok
        states[o] = state
        reasons[o] = reason
        replies[o] = is_reply
    return hi


# --------------------------------------------------------------------------------------------------
# The table object


_I64_COLUMNS = ("src_hi", "src_lo", "dst_hi", "dst_lo", "inner_src_hi", "inner_src_lo")
_I64_COLUMNS += ("inner_dst_hi", "inner_dst_lo")
_KERNEL_COLUMNS = (
    "status",
    "ts",
    "family",
    "proto",
    "src_hi",
    "src_lo",
    "dst_hi",
    "dst_lo",
    "sport",
    "dport",
    "tcp_flags",
    "seq",
    "ack",
    "window",
    "payload_len",
    "sctp_chunk",
    "icmp_type",
    "icmp_id",
    "inner_proto",
    "inner_src_hi",
    "inner_src_lo",
    "inner_dst_hi",
    "inner_dst_lo",
    "inner_sport",
    "inner_dport",
)


def _columns(batch: PacketBatch) -> list[np.ndarray]:
    cols = []
    for name in _KERNEL_COLUMNS:
        col = np.ascontiguousarray(getattr(batch, name))
        if name in _I64_COLUMNS:
            col = col.view(np.int64)
        cols.append(col)
    return cols


class CtTable:
    """The connection table: the arrays described in the module docstring, grown on demand."""

    def __init__(self, capacity: int = 64) -> None:
        self.M = np.array([0, 0, -1, 0, 0, 0], np.int64)
        self._allocate(max(capacity, 1))

    def _allocate(self, cap: int) -> None:
        self.K = np.zeros((cap, 6), np.int64)
        self.E = np.zeros((cap, NI), np.int64)
        self.F = np.zeros((cap, 3), np.float64)
        self.IDX = np.full(1 << (2 * cap - 1).bit_length(), -1, np.int64)
        self.FIFO = np.full(2 * cap, -1, np.int64)

    def __len__(self) -> int:
        return int(self.M[_COUNT])

    @property
    def capacity(self) -> int:
        return len(self.K)

    def slots(self) -> np.ndarray:
        """Slots of the entries, oldest first."""
        order = self.FIFO[self.M[_HEAD] : self.M[_TAIL]]
        return order[order >= 0]

    def grow(self, max_entries: int) -> None:
        old_k, old_e, old_f = self.K, self.E, self.F
        live = self.slots()
        used = int(self.M[_USED])
        self._allocate(min(2 * len(old_k), max(max_entries, len(old_k) + 1)))
        self.K[:used] = old_k[:used]
        self.E[:used] = old_e[:used]
        self.F[:used] = old_f[:used]
        self.FIFO[: len(live)] = live
        self.E[live, _POS] = np.arange(len(live))
        self.M[_HEAD] = 0
        self.M[_TAIL] = len(live)
        _reindex(self.K, self.IDX, live)

    def track(
        self,
        batch: PacketBatch,
        lo: int,
        hi: int,
        allowed: np.ndarray | None,
        out: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
        timeouts: Timeouts,
        loose: bool,
        max_entries: int,
        policy: tuple | None = None,
    ) -> None:
        """Run packets lo..hi-1 of ``batch``; ``allowed`` and ``out`` (verdict, state, reason,
        is_reply) are indexed from ``lo``. With ``policy`` (``Engine.policy(batch)``) the
        engine decides the packets that need a verdict and ``allowed`` is ignored."""
        cols = _columns(batch)
        tv = timeout_vector(timeouts)
        if policy is not None:
            allowed = np.zeros(hi - lo, dtype=np.bool_)  # not read
        allowed = np.ascontiguousarray(allowed, dtype=np.bool_)
        if allowed.ndim != 1 or len(allowed) < hi - lo or not 0 <= lo <= hi <= len(batch):
            # the kernel does not check bounds: refuse here what would read past an array
            raise IndexError(
                f"packets {lo}..{hi - 1} of {len(batch)}, {len(allowed)} policy verdicts"
            )
        scratch = (np.zeros(6, np.int64), np.zeros(NI, np.int64), np.zeros((_RING, 7), np.int64))
        i = lo
        while i < hi:
            table = (self.K, self.E, self.F, self.IDX, self.FIFO, self.M)
            i = _run(lo, i, hi, *cols, allowed, *out, *table, RULES, tv, bool(loose),
                     int(max_entries), *scratch, policy)  # fmt: skip
            if i < hi:
                self.grow(max_entries)

    def expire(self, now: float) -> int:
        return int(_expire(self.K, self.E, self.F, self.IDX, self.FIFO, self.M, float(now)))

    def rows(self, now: float | None = None) -> list[dict[str, Any]]:
        """The entries, oldest first, as plain values (for EntryView)."""
        slots = self.slots()
        if now is not None:
            slots = slots[self.F[slots, _EXPIRES] > now]
        out = []
        keys = self.K[slots].view(np.uint64)
        for s, key in zip(slots.tolist(), keys.tolist(), strict=True):
            k0, ahi, alo, bhi, blo = key[:5]
            proto = (k0 >> 8) & 0xFF
            x1, x2 = (k0 >> 16) & 0xFFFF, (k0 >> 32) & 0xFFFF
            row = self.E[s]
            if proto in (1, 58):  # ICMP: request direction, identifier as the source port
                src, sport, dst, dport = (ahi, alo), x1, (bhi, blo), 0
            elif row[_SWAP]:
                src, sport, dst, dport = (bhi, blo), x2, (ahi, alo), x1
            else:
                src, sport, dst, dport = (ahi, alo), x1, (bhi, blo), x2
            out.append(
                {
                    "family": k0 & 0xFF,
                    "proto": proto,
                    "src": src,
                    "dst": dst,
                    "sport": sport,
                    "dport": dport,
                    "tcp_state": int(row[_TST]),
                    "sctp_state": int(row[_SCTP]),
                    "expires": float(self.F[s, _EXPIRES]),
                    "timeout": float(self.F[s, _TIMEOUT]),
                    "assured": bool(row[_ASSURED]),
                    "seen_reply": bool(row[_SEEN]),
                }
            )
        return out

    def set_assured(self, slot: int) -> None:
        """For tests that need a table full of assured entries."""
        self.E[slot, _ASSURED] = 1
