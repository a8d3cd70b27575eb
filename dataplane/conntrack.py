"""Linux netfilter connection tracking, emulated (pure: no I/O, no clock; ``now`` is passed in).

Theory of operation
-------------------
Every tracked packet is reduced to a *canonical key*, the same for both directions of a flow, and
looked up in one table (a dict). The first packet of a flow fixes the *original* direction; a packet
travelling the other way is a *reply*. What ``-m conntrack --ctstate`` sees for a packet is:

* INVALID     -- the protocol tracker refused it (bad TCP flags, a transition marked ``sIV``, an
                 unsolicited ICMP reply, an ICMP error quoting nothing we track, table full, ...).
                 Nothing is created or changed.
* NEW         -- original direction and no reply seen yet (the first packet, or a retransmission).
* ESTABLISHED -- any reply-direction packet, or an original-direction one once a reply was seen.
                 (So the TCP SYN-ACK itself is ESTABLISHED, exactly as in the kernel.)
* RELATED     -- an ICMP/ICMPv6 error whose quoted packet belongs to a tracked flow.
* UNTRACKED   -- ICMPv6 neighbour discovery and MLD, which the kernel never tracks.

Per-protocol trackers are state machines written as data, in the style of h11's ``_state.py``:
named states and events, one transition table, then small code applying it. The TCP table is the
kernel's ``tcp_conntracks[2][6][TCP_CONNTRACK_MAX]`` (net/netfilter/nf_conntrack_proto_tcp.c), the
SCTP table its ``sctp_conntracks`` (nf_conntrack_proto_sctp.c). Special cases the kernel handles in
code around its table (re-opening from TIME_WAIT/CLOSE, the ignored-SYN resync, simultaneous open,
RST sequence checks, the RFC 5961 challenge ACK) are handled the same way here.

Two-phase API: ``lookup`` classifies a packet without touching the table and returns a ``CtResult``
holding the planned change; ``commit`` applies it. That lets the caller create state only for packets
that the policy accepted ("only a packet accepted all the way creates state"). A ``commit`` must follow
its own ``lookup`` with no other commit in between. ``run`` does both for a batch.

What is modelled and what is not is listed in docs/conntrack.md; in short: no TCP window tracking
(every segment is taken as in-window, like ``nf_conntrack_tcp_be_liberal=1``, except the RST sequence
checks), no SCTP verification-tag checks beyond "INIT carries vtag 0", no helpers/expectations, no
NAT, no zones, and no GRE/DCCP/UDP-Lite trackers (they fall back to the generic tracker).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

from dataplane.packets import (
    ACK,
    FIN,
    FRAGMENT,
    NOT_IP,
    OK,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_SCTP,
    PROTO_TCP,
    PROTO_UDP,
    RST,
    SYN,
    URG,
    PacketBatch,
    pair_to_ip,
)

# --------------------------------------------------------------------------------------------------
# Packet states (what `-m conntrack --ctstate` matches)


class CtState(IntEnum):
    NEW = 0
    ESTABLISHED = 1
    RELATED = 2
    INVALID = 3
    UNTRACKED = 4


ORIGINAL, REPLY = 0, 1

# --------------------------------------------------------------------------------------------------
# TCP: states, events, the transition table


class TcpState(IntEnum):
    """``enum tcp_conntrack`` (include/uapi/linux/netfilter/nf_conntrack_tcp.h), same numbering."""

    NONE = 0
    SYN_SENT = 1
    SYN_RECV = 2
    ESTABLISHED = 3
    FIN_WAIT = 4
    CLOSE_WAIT = 5
    LAST_ACK = 6
    TIME_WAIT = 7
    CLOSE = 8
    SYN_SENT2 = 9  # SYN seen from the reply direction: simultaneous open
    # table verdicts that are not states:
    INVALID = 10  # sIV: the packet is INVALID, the entry is left alone
    IGNORE = 11  # sIG: the packet passes with the entry's ctstate, the entry is left alone


class TcpEvent(IntEnum):
    """The row index, chosen from the flags as ``get_conntrack_index`` does (RST wins, then SYN)."""

    SYN = 0
    SYNACK = 1
    FIN = 2
    ACK = 3
    RST = 4
    NONE = 5


def tcp_event(flags: int) -> TcpEvent:
    if flags & RST:
        return TcpEvent.RST
    if flags & SYN:
        return TcpEvent.SYNACK if flags & ACK else TcpEvent.SYN
    if flags & FIN:
        return TcpEvent.FIN
    if flags & ACK:
        return TcpEvent.ACK
    return TcpEvent.NONE


_NO, _SS, _SR, _ES, _FW, _CW, _LA, _TW, _CL, _S2, _IV, _IG = TcpState

# TCP_TRANSITIONS[direction][event] = next state for each current state, in TcpState order
# (NONE, SYN_SENT, SYN_RECV, ESTABLISHED, FIN_WAIT, CLOSE_WAIT, LAST_ACK, TIME_WAIT, CLOSE, SYN_SENT2).
# Copied cell by cell from the kernel's tcp_conntracks (Linux 5.x/6.x).
# fmt: off
TCP_TRANSITIONS: dict[int, dict[TcpEvent, tuple[TcpState, ...]]] = {
    ORIGINAL: {
        #                 NO   SS   SR   ES   FW   CW   LA   TW   CL   S2
        TcpEvent.SYN:    (_SS, _SS, _IG, _IG, _IG, _IG, _IG, _SS, _SS, _S2),
        TcpEvent.SYNACK: (_IV, _IV, _SR, _IV, _IV, _IV, _IV, _IV, _IV, _SR),
        TcpEvent.FIN:    (_IV, _IV, _FW, _FW, _LA, _LA, _LA, _TW, _CL, _IV),
        TcpEvent.ACK:    (_ES, _IV, _ES, _ES, _CW, _CW, _TW, _TW, _CL, _IV),
        TcpEvent.RST:    (_IV, _CL, _CL, _CL, _CL, _CL, _CL, _CL, _CL, _CL),
        TcpEvent.NONE:   (_IV, _IV, _IV, _IV, _IV, _IV, _IV, _IV, _IV, _IV),
    },
    REPLY: {
        #                 NO   SS   SR   ES   FW   CW   LA   TW   CL   S2
        TcpEvent.SYN:    (_IV, _S2, _IV, _IV, _IV, _IV, _IV, _SS, _IV, _S2),
        TcpEvent.SYNACK: (_IV, _SR, _IG, _IG, _IG, _IG, _IG, _IG, _IG, _SR),
        TcpEvent.FIN:    (_IV, _IV, _FW, _FW, _LA, _LA, _LA, _TW, _CL, _IV),
        TcpEvent.ACK:    (_IV, _IG, _SR, _ES, _CW, _CW, _TW, _TW, _CL, _IG),
        TcpEvent.RST:    (_IV, _CL, _CL, _CL, _CL, _CL, _CL, _CL, _CL, _CL),
        TcpEvent.NONE:   (_IV, _IV, _IV, _IV, _IV, _IV, _IV, _IV, _IV, _IV),
    },
}
# fmt: on

# tcp_error(): flag combinations the kernel accepts at all (PSH, ECE and CWR are masked off first).
# Anything else -- FIN without ACK, no flags, SYN+FIN, SYN+RST, ... -- is INVALID in every state.
TCP_VALID_FLAGS = frozenset(
    {SYN, SYN | URG, SYN | ACK, RST, RST | ACK, FIN | ACK, FIN | ACK | URG, ACK, ACK | URG}
)
_TCP_FLAG_MASK = FIN | SYN | RST | ACK | URG

# --------------------------------------------------------------------------------------------------
# SCTP: states, events (chunk types), the transition table


class SctpState(IntEnum):
    """``enum sctp_conntrack`` (HEARTBEAT_ACKED is gone since Linux 6.1)."""

    NONE = 0
    CLOSED = 1
    COOKIE_WAIT = 2
    COOKIE_ECHOED = 3
    ESTABLISHED = 4
    SHUTDOWN_SENT = 5
    SHUTDOWN_RECD = 6
    SHUTDOWN_ACK_SENT = 7
    HEARTBEAT_SENT = 8
    INVALID = 9  # sIV


class SctpChunk(IntEnum):
    DATA = 0
    INIT = 1
    INIT_ACK = 2
    SACK = 3
    HEARTBEAT = 4
    HEARTBEAT_ACK = 5
    ABORT = 6
    SHUTDOWN = 7
    SHUTDOWN_ACK = 8
    ERROR = 9
    COOKIE_ECHO = 10
    COOKIE_ACK = 11
    SHUTDOWN_COMPLETE = 14


_sNO, _sCL, _sCW, _sCE, _sES, _sSS, _sSR, _sSA, _sHS, _sIV = SctpState
_C = SctpChunk

# SCTP_TRANSITIONS[direction][chunk] = next state for each current state, in SctpState order
# (NONE, CLOSED, COOKIE_WAIT, COOKIE_ECHOED, ESTABLISHED, SHUTDOWN_SENT, SHUTDOWN_RECD,
# SHUTDOWN_ACK_SENT, HEARTBEAT_SENT). Chunks not listed (DATA, SACK, ...) never change the state.
# Note the modern kernel: INIT alone only makes CLOSED; the INIT_ACK reply makes COOKIE_WAIT.
# fmt: off
SCTP_TRANSITIONS: dict[int, dict[SctpChunk, tuple[SctpState, ...]]] = {
    ORIGINAL: {
        #                      sNO   sCL   sCW   sCE   sES   sSS   sSR   sSA   sHS
        _C.INIT:              (_sCL, _sCL, _sCW, _sCE, _sES, _sSS, _sSR, _sSA, _sCW),
        _C.INIT_ACK:          (_sCL, _sCL, _sCW, _sCE, _sES, _sSS, _sSR, _sSA, _sCL),
        _C.ABORT:             (_sCL, _sCL, _sCL, _sCL, _sCL, _sCL, _sCL, _sCL, _sCL),
        _C.SHUTDOWN:          (_sCL, _sCL, _sCW, _sCE, _sSS, _sSS, _sSR, _sSA, _sCL),
        _C.SHUTDOWN_ACK:      (_sSA, _sCL, _sCW, _sCE, _sES, _sSA, _sSA, _sSA, _sSA),
        _C.ERROR:             (_sCL, _sCL, _sCW, _sCE, _sES, _sSS, _sSR, _sSA, _sCL),
        _C.COOKIE_ECHO:       (_sCL, _sCL, _sCE, _sCE, _sES, _sSS, _sSR, _sSA, _sCL),
        _C.COOKIE_ACK:        (_sCL, _sCL, _sCW, _sCE, _sES, _sSS, _sSR, _sSA, _sCL),
        _C.SHUTDOWN_COMPLETE: (_sCL, _sCL, _sCW, _sCE, _sES, _sSS, _sSR, _sCL, _sCL),
        _C.HEARTBEAT:         (_sHS, _sCL, _sCW, _sCE, _sES, _sSS, _sSR, _sSA, _sHS),
        _C.HEARTBEAT_ACK:     (_sCL, _sCL, _sCW, _sCE, _sES, _sSS, _sSR, _sSA, _sHS),
    },
    REPLY: {
        #                      sNO   sCL   sCW   sCE   sES   sSS   sSR   sSA   sHS
        _C.INIT:              (_sIV, _sCL, _sCW, _sCE, _sES, _sSS, _sSR, _sSA, _sIV),
        _C.INIT_ACK:          (_sIV, _sCW, _sCW, _sCE, _sES, _sSS, _sSR, _sSA, _sIV),
        _C.ABORT:             (_sIV, _sCL, _sCL, _sCL, _sCL, _sCL, _sCL, _sCL, _sIV),
        _C.SHUTDOWN:          (_sIV, _sCL, _sCW, _sCE, _sSR, _sSS, _sSR, _sSA, _sIV),
        _C.SHUTDOWN_ACK:      (_sIV, _sCL, _sCW, _sCE, _sES, _sSA, _sSA, _sSA, _sIV),
        _C.ERROR:             (_sIV, _sCL, _sCW, _sCL, _sES, _sSS, _sSR, _sSA, _sIV),
        _C.COOKIE_ECHO:       (_sIV, _sCL, _sCW, _sCE, _sES, _sSS, _sSR, _sSA, _sIV),
        _C.COOKIE_ACK:        (_sIV, _sCL, _sCW, _sES, _sES, _sSS, _sSR, _sSA, _sIV),
        _C.SHUTDOWN_COMPLETE: (_sIV, _sCL, _sCW, _sCE, _sES, _sSS, _sSR, _sCL, _sIV),
        _C.HEARTBEAT:         (_sIV, _sCL, _sCW, _sCE, _sES, _sSS, _sSR, _sSA, _sHS),
        _C.HEARTBEAT_ACK:     (_sIV, _sCL, _sCW, _sCE, _sES, _sSS, _sSR, _sSA, _sES),
    },
}
# fmt: on

# An out-of-the-blue packet starting with one of these never creates an entry (RFC 4960 8.4).
_SCTP_OOTB_DISCARD = frozenset({_C.ABORT, _C.SHUTDOWN_COMPLETE, _C.COOKIE_ACK})

# --------------------------------------------------------------------------------------------------
# ICMP: which types open a flow, which answer one, which are errors

# request type -> reply type (nf_conntrack_proto_icmp.c invmap / valid_new)
ICMP_REQUESTS = {8: 0, 13: 14, 15: 16, 17: 18}  # echo, timestamp, info, address mask
ICMP_REPLIES = {reply: req for req, reply in ICMP_REQUESTS.items()}
ICMP_ERRORS = frozenset({3, 4, 5, 11, 12})  # unreachable, quench, redirect, time exceeded, param
ICMPV6_REQUESTS = {128: 129, 139: 140}  # echo, node information query
ICMPV6_REPLIES = {reply: req for req, reply in ICMPV6_REQUESTS.items()}
# noct_valid_new: MLD query/report/done, router/neighbour solicitation/advertisement, MLDv2 report
ICMPV6_UNTRACKED = frozenset({130, 131, 132, 133, 134, 135, 136, 143})
# ICMPv6 types below 128 are errors (unreachable, packet too big, time exceeded, parameter problem)

# --------------------------------------------------------------------------------------------------
# Timeouts


@dataclass(frozen=True)
class Timeouts:
    """Seconds; names follow the ``net.netfilter.nf_conntrack_*_timeout*`` sysctls."""

    tcp_syn_sent: float = 120
    tcp_syn_recv: float = 60
    tcp_established: float = 432000
    tcp_fin_wait: float = 120
    tcp_close_wait: float = 60
    tcp_last_ack: float = 30
    tcp_time_wait: float = 120
    tcp_close: float = 10
    tcp_max_retrans: float = 300  # after tcp_max_retrans_count identical retransmissions
    tcp_unacknowledged: float = 300  # data in flight
    udp: float = 30
    udp_stream: float = 120
    icmp: float = 30
    icmpv6: float = 30
    generic: float = 600
    sctp_closed: float = 10
    sctp_cookie_wait: float = 3
    sctp_cookie_echoed: float = 3
    sctp_established: float = 210
    sctp_shutdown_sent: float = 3
    sctp_shutdown_recd: float = 3
    sctp_shutdown_ack_sent: float = 3
    sctp_heartbeat_sent: float = 30

    def tcp(self, state: TcpState) -> float:
        return _TCP_TIMEOUT_FIELD[state](self)

    def sctp(self, state: SctpState) -> float:
        return _SCTP_TIMEOUT_FIELD[state](self)


_TCP_TIMEOUT_FIELD = {
    TcpState.NONE: lambda t: t.tcp_close,
    TcpState.SYN_SENT: lambda t: t.tcp_syn_sent,
    TcpState.SYN_RECV: lambda t: t.tcp_syn_recv,
    TcpState.ESTABLISHED: lambda t: t.tcp_established,
    TcpState.FIN_WAIT: lambda t: t.tcp_fin_wait,
    TcpState.CLOSE_WAIT: lambda t: t.tcp_close_wait,
    TcpState.LAST_ACK: lambda t: t.tcp_last_ack,
    TcpState.TIME_WAIT: lambda t: t.tcp_time_wait,
    TcpState.CLOSE: lambda t: t.tcp_close,
    TcpState.SYN_SENT2: lambda t: t.tcp_syn_sent,  # the kernel's SYN_SENT2 timeout is SYN_SENT's
}
_SCTP_TIMEOUT_FIELD = {
    SctpState.NONE: lambda t: t.sctp_closed,
    SctpState.CLOSED: lambda t: t.sctp_closed,
    SctpState.COOKIE_WAIT: lambda t: t.sctp_cookie_wait,
    SctpState.COOKIE_ECHOED: lambda t: t.sctp_cookie_echoed,
    SctpState.ESTABLISHED: lambda t: t.sctp_established,
    SctpState.SHUTDOWN_SENT: lambda t: t.sctp_shutdown_sent,
    SctpState.SHUTDOWN_RECD: lambda t: t.sctp_shutdown_recd,
    SctpState.SHUTDOWN_ACK_SENT: lambda t: t.sctp_shutdown_ack_sent,
    SctpState.HEARTBEAT_SENT: lambda t: t.sctp_heartbeat_sent,
}

PROFILES: dict[str, Timeouts] = {
    "default": Timeouts(),
    # kube-proxy sets these two sysctls on every node (--conntrack-tcp-timeout-*)
    "kube-proxy": Timeouts(tcp_established=86400, tcp_close_wait=3600),
}

DEFAULT_MAX_ENTRIES = 262144
TCP_MAX_RETRANS = 3  # nf_conntrack_tcp_max_retrans
UDP_STREAM_AFTER = 2.0  # a replied UDP flow becomes a "stream" (120 s, assured) after 2 s

# --------------------------------------------------------------------------------------------------
# Entries and results

_U32 = 0xFFFFFFFF


def _after(a: int, b: int) -> bool:
    """Sequence-space ``a > b`` (mod 2**32), as the kernel's ``after()``."""
    d = (a - b) & _U32
    return d != 0 and d < 0x80000000


def _before(a: int, b: int) -> bool:
    return _after(b, a)


@dataclass(slots=True)
class TcpTrack:
    """The part of ``struct ip_ct_tcp`` this model keeps. Index 0/1 = original/reply sender.

    ``end`` approximates ``td_end`` (highest seq + len seen, None = not seen yet), ``unacked`` the
    IP_CT_TCP_FLAG_DATA_UNACKNOWLEDGED flag, ``maxack`` ``td_maxack``.
    """

    state: TcpState = TcpState.NONE
    end: list[int | None] = field(default_factory=lambda: [None, None])
    unacked: list[bool] = field(default_factory=lambda: [False, False])
    maxack: list[int | None] = field(default_factory=lambda: [None, None])
    close_init: list[bool] = field(default_factory=lambda: [False, False])
    last_index: TcpEvent = TcpEvent.NONE
    last_dir: int = ORIGINAL
    last_seq: int = 0
    last_ack: int = 0
    last_end: int = 0
    last_win: int = 0
    retrans: int = 0
    simultaneous_open: bool = False
    challenge_ack: bool = False  # IP_CT_EXP_CHALLENGE_ACK

    def clone(self) -> TcpTrack:
        return TcpTrack(
            self.state,
            list(self.end),
            list(self.unacked),
            list(self.maxack),
            list(self.close_init),
            self.last_index,
            self.last_dir,
            self.last_seq,
            self.last_ack,
            self.last_end,
            self.last_win,
            self.retrans,
            self.simultaneous_open,
            self.challenge_ack,
        )


Key = tuple[int, ...]


@dataclass(slots=True)
class Entry:
    key: Key
    family: int
    proto: int
    orig: tuple[int, int, int, int, int, int]  # src_hi, src_lo, sport, dst_hi, dst_lo, dport
    created: float
    expires: float = 0.0
    timeout: float = 0.0  # the last timeout set (seconds)
    seen_reply: bool = False
    assured: bool = False
    tcp: TcpTrack | None = None
    sctp: SctpState = SctpState.NONE
    icmp_type: int = -1  # ICMP: the request type that opened it


@dataclass(frozen=True)
class EntryView:
    """A snapshot of one entry, for tests and explanations (``conntrack -L`` in spirit)."""

    family: int
    proto: int
    src: str
    dst: str
    sport: int
    dport: int
    state: str  # TCP/SCTP state name, "" for other protocols
    tcp_state: TcpState | None
    sctp_state: SctpState | None
    expires: float
    timeout: float
    assured: bool
    seen_reply: bool

    @property
    def tuple(self) -> tuple[int, int, str, str, int, int]:
        return (self.family, self.proto, self.src, self.dst, self.sport, self.dport)


# planned actions
_NOOP, _CREATE, _UPDATE, _DELETE = 0, 1, 2, 3


@dataclass(slots=True)
class CtResult:
    """What ``lookup`` decided for one packet; ``commit`` applies the planned change."""

    state: CtState
    reason: str
    is_reply: bool = False
    key: Key | None = None
    entry: Entry | None = None  # the entry the packet belongs to (new for _CREATE)
    action: int = _NOOP
    timeout: float | None = None  # refresh to now + timeout; None keeps the expiry
    tcp: TcpTrack | None = None  # new TCP tracking data
    sctp: SctpState | None = None
    set_assured: bool = False
    set_seen_reply: bool = False
    evict: Key | None = None  # make room first (early drop)
    replaces: bool = False  # an old entry under the same key goes away (reopen / expired)


def _invalid(reason: str) -> CtResult:
    return CtResult(CtState.INVALID, reason)


# --------------------------------------------------------------------------------------------------
# The tracker


class Conntrack:
    """The connection table plus the per-protocol trackers. See the module docstring."""

    def __init__(
        self,
        timeouts: Timeouts = PROFILES["default"],
        max_entries: int = DEFAULT_MAX_ENTRIES,
        loose: bool = True,
    ) -> None:
        self.timeouts = timeouts
        self.max_entries = max_entries
        self.loose = loose
        # insertion-ordered: the first non-assured entry found is the oldest (early-drop victim)
        self._table: dict[Key, Entry] = {}

    def __len__(self) -> int:
        return len(self._table)

    # -- queries ----------------------------------------------------------------------------------

    def entries(self, now: float | None = None) -> list[EntryView]:
        """Snapshot of the table; with ``now``, entries that have expired are left out."""
        out = []
        for e in self._table.values():
            if now is not None and e.expires <= now:
                continue
            shi, slo, sport, dhi, dlo, dport = e.orig
            tcp_state = e.tcp.state if e.tcp is not None else None
            sctp_state = e.sctp if e.proto == PROTO_SCTP else None
            name = tcp_state.name if tcp_state is not None else ""
            if sctp_state is not None:
                name = sctp_state.name
            out.append(
                EntryView(
                    e.family,
                    e.proto,
                    pair_to_ip(e.family, shi, slo),
                    pair_to_ip(e.family, dhi, dlo),
                    sport,
                    dport,
                    name,
                    tcp_state,
                    sctp_state,
                    e.expires,
                    e.timeout,
                    e.assured,
                    e.seen_reply,
                )
            )
        return out

    def expire(self, now: float) -> int:
        """Drop every entry whose timeout has passed (the kernel's GC worker); returns how many."""
        dead = [k for k, e in self._table.items() if e.expires <= now]
        for k in dead:
            del self._table[k]
        return len(dead)

    # -- phase 1: classify ------------------------------------------------------------------------

    def lookup(self, pkt: PacketBatch, i: int, now: float) -> CtResult:
        """Classify packet ``i`` of ``pkt`` (a row with ``status == OK``). No mutation."""
        family = int(pkt.family[i])
        proto = int(pkt.proto[i])
        shi, slo = int(pkt.src_hi[i]), int(pkt.src_lo[i])
        dhi, dlo = int(pkt.dst_hi[i]), int(pkt.dst_lo[i])

        if proto in (PROTO_ICMP, PROTO_ICMPV6):
            return self._icmp(pkt, i, now, family, proto, shi, slo, dhi, dlo)

        if proto in (PROTO_TCP, PROTO_UDP, PROTO_SCTP):
            sport, dport = int(pkt.sport[i]), int(pkt.dport[i])
        else:
            sport = dport = 0  # generic: addresses and protocol only
        key, orig = _port_key(family, proto, shi, slo, sport, dhi, dlo, dport)
        entry = self._live(key, now)
        is_reply = entry is not None and entry.orig != orig
        if proto == PROTO_TCP:
            return self._tcp(pkt, i, now, key, orig, entry, is_reply)
        if proto == PROTO_SCTP:
            return self._sctp(pkt, i, now, key, orig, entry, is_reply)
        if proto == PROTO_UDP:
            return self._udp(now, key, orig, family, entry, is_reply)
        return self._generic(now, key, orig, family, proto, entry, is_reply)

    def _live(self, key: Key, now: float) -> Entry | None:
        e = self._table.get(key)
        if e is not None and e.expires <= now:
            return None  # expired: gone for this packet; commit removes or overwrites it
        return e

    def _ctstate(self, entry: Entry, is_reply: bool) -> CtState:
        # resolve_normal_ct(): any reply-direction packet is ESTABLISHED; original-direction ones
        # are ESTABLISHED once a reply was seen, NEW before.
        if is_reply or entry.seen_reply:
            return CtState.ESTABLISHED
        return CtState.NEW

    def _new(
        self,
        now: float,
        key: Key,
        orig: tuple[int, ...],
        family: int,
        proto: int,
        timeout: float,
        reason: str,
    ) -> CtResult:
        """Plan the creation of an entry, making room if the table is full."""
        entry = Entry(key, family, proto, orig, created=now)  # type: ignore[arg-type]
        res = CtResult(CtState.NEW, reason, False, key, entry, _CREATE, timeout)
        if key in self._table:
            res.replaces = True  # expired (or being reopened): no growth
        elif len(self._table) >= self.max_entries:
            victim = self._early_drop_victim(now)
            if victim is None:
                return _invalid("table full")
            res.evict = victim
        return res

    def _early_drop_victim(self, now: float) -> Key | None:
        # The kernel's early_drop() looks at a few entries of the new tuple's hash bucket and drops
        # a non-assured one. We take an expired entry or the oldest non-assured one instead.
        for k, e in self._table.items():
            if e.expires <= now or not e.assured:
                return k
        return None

    # -- UDP and generic ----------------------------------------------------------------------------

    def _udp(self, now, key, orig, family, entry, is_reply) -> CtResult:
        t = self.timeouts
        if entry is None:
            return self._new(now, key, orig, family, PROTO_UDP, t.udp, "udp opens")
        res = CtResult(self._ctstate(entry, is_reply), "udp", is_reply, key, entry, _UPDATE)
        res.set_seen_reply = is_reply
        # nf_conntrack_udp_packet(): SEEN_REPLY is tested before this packet sets it, and the
        # stream timeout only applies once the flow has lived 2 seconds.
        if entry.seen_reply and now > entry.created + UDP_STREAM_AFTER:
            res.timeout = t.udp_stream
            res.set_assured = True
            res.reason = "udp stream"
        else:
            res.timeout = t.udp
            res.reason = "udp reply" if is_reply and not entry.seen_reply else "udp"
        return res

    def _generic(self, now, key, orig, family, proto, entry, is_reply) -> CtResult:
        if entry is None:
            return self._new(now, key, orig, family, proto, self.timeouts.generic, "generic opens")
        res = CtResult(self._ctstate(entry, is_reply), "generic", is_reply, key, entry, _UPDATE)
        res.set_seen_reply = is_reply
        res.timeout = self.timeouts.generic
        return res

    # -- ICMP / ICMPv6 ------------------------------------------------------------------------------

    def _icmp(self, pkt, i, now, family, proto, shi, slo, dhi, dlo) -> CtResult:
        v6 = proto == PROTO_ICMPV6
        if (family == 6) != v6:
            return _invalid("icmp of the other address family")
        itype = int(pkt.icmp_type[i])
        if v6 and itype in ICMPV6_UNTRACKED:
            return CtResult(CtState.UNTRACKED, "neighbour discovery / MLD is not tracked")
        if (not v6 and itype in ICMP_ERRORS) or (v6 and 0 <= itype < 128):
            return self._icmp_error(pkt, i, now, family)
        requests, replies = (
            (ICMPV6_REQUESTS, ICMPV6_REPLIES) if v6 else (ICMP_REQUESTS, ICMP_REPLIES)
        )
        ident = int(pkt.icmp_id[i])
        if itype in requests:
            key = (family, proto, shi, slo, dhi, dlo, ident, itype)
            entry = self._live(key, now)
            timeout = self.timeouts.icmpv6 if v6 else self.timeouts.icmp
            if entry is None:
                res = self._new(
                    now,
                    key,
                    (shi, slo, ident, dhi, dlo, 0),
                    family,
                    proto,
                    timeout,
                    "icmp request opens",
                )
                if res.entry is not None:
                    res.entry.icmp_type = itype
                return res
            res = CtResult(self._ctstate(entry, False), "icmp request", False, key, entry, _UPDATE)
            res.timeout = timeout
            return res
        if itype in replies:
            key = (family, proto, dhi, dlo, shi, slo, ident, replies[itype])
            entry = self._live(key, now)
            if entry is None:
                return _invalid("unsolicited icmp reply")
            res = CtResult(CtState.ESTABLISHED, "icmp reply", True, key, entry, _UPDATE)
            res.set_seen_reply = True
            res.timeout = self.timeouts.icmpv6 if v6 else self.timeouts.icmp
            return res
        return _invalid(f"icmp type {itype} cannot be tracked")

    def _icmp_error(self, pkt, i, now, family) -> CtResult:
        # nf_conntrack_inet_error(): the quoted packet's tuple, inverted, must be in the table. The
        # symmetric key makes "inverted" implicit. A RELATED packet does not refresh the entry.
        iproto = int(pkt.inner_proto[i])
        ishi, islo = int(pkt.inner_src_hi[i]), int(pkt.inner_src_lo[i])
        idhi, idlo = int(pkt.inner_dst_hi[i]), int(pkt.inner_dst_lo[i])
        isport, idport = int(pkt.inner_sport[i]), int(pkt.inner_dport[i])
        entry = None
        orig: tuple[int, ...] | None = None
        if iproto in (PROTO_ICMP, PROTO_ICMPV6):
            # inner_sport = identifier, inner_dport = type
            requests, replies = (
                (ICMPV6_REQUESTS, ICMPV6_REPLIES)
                if iproto == PROTO_ICMPV6
                else (ICMP_REQUESTS, ICMP_REPLIES)
            )
            if idport in requests:
                key = (family, iproto, ishi, islo, idhi, idlo, isport, idport)
                quoted_reply = False
            elif idport in replies:
                key = (family, iproto, idhi, idlo, ishi, islo, isport, replies[idport])
                quoted_reply = True
            else:
                return _invalid("icmp error quotes an untrackable icmp packet")
            entry = self._live(key, now)
        else:
            if iproto not in (PROTO_TCP, PROTO_UDP, PROTO_SCTP):
                isport = idport = 0
            key, orig = _port_key(family, iproto, ishi, islo, isport, idhi, idlo, idport)
            entry = self._live(key, now)
            quoted_reply = entry is not None and entry.orig != orig
        if entry is None:
            return _invalid("icmp error quotes no tracked flow")
        # the error travels against the quoted packet: a quoted original packet -> reply direction
        return CtResult(CtState.RELATED, "quotes tracked flow", not quoted_reply, key, entry)

    # -- SCTP ----------------------------------------------------------------------------------------

    def _sctp(self, pkt, i, now, key, orig, entry, is_reply) -> CtResult:
        chunk = int(pkt.sctp_chunk[i])
        vtag = int(pkt.seq[i])
        t = self.timeouts
        try:
            ev: SctpChunk | None = SctpChunk(chunk)
        except ValueError:
            ev = None
        if ev is not None and ev not in SCTP_TRANSITIONS[ORIGINAL]:
            ev = None  # DATA, SACK: no state change
        if ev == SctpChunk.INIT and vtag != 0:
            return _invalid("sctp init with non-zero verification tag")
        if entry is None:
            if ev in _SCTP_OOTB_DISCARD:
                return _invalid(f"out-of-the-blue sctp {ev.name.lower()}")  # type: ignore[union-attr]
            if ev is None:
                return _invalid(f"sctp chunk {chunk} cannot open an association")
            new = SCTP_TRANSITIONS[ORIGINAL][ev][SctpState.NONE]
            res = self._new(
                now, key, orig, pkt.family[i].item(), PROTO_SCTP, t.sctp(new), "sctp opens"
            )
            res.sctp = new
            return res
        old = entry.sctp
        new = old if ev is None else SCTP_TRANSITIONS[REPLY if is_reply else ORIGINAL][ev][old]
        if new == SctpState.INVALID:
            return _invalid(f"sctp {ev.name.lower()} invalid in {old.name}")  # type: ignore[union-attr]
        res = CtResult(self._ctstate(entry, is_reply), "sctp", is_reply, key, entry, _UPDATE)
        res.set_seen_reply = is_reply
        res.sctp = new
        if ev == SctpChunk.INIT and old == new == SctpState.CLOSED:
            res.reason = "sctp init retransmit (timeout not renewed)"
            return res
        res.timeout = t.sctp(new)
        res.set_assured = new != old and new == SctpState.ESTABLISHED
        return res

    # -- TCP -----------------------------------------------------------------------------------------

    def _tcp(self, pkt, i, now, key, orig, entry, is_reply, reopened: bool = False) -> CtResult:
        flags = int(pkt.tcp_flags[i])
        if (flags & _TCP_FLAG_MASK) not in TCP_VALID_FLAGS:
            return _invalid("invalid tcp flag combination")
        index = tcp_event(flags)
        seq, ackno = int(pkt.seq[i]), int(pkt.ack[i])
        plen, win = int(pkt.payload_len[i]), int(pkt.window[i])
        end = (seq + plen + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)) & _U32
        t = self.timeouts

        if entry is None:
            # tcp_new(): what may open a connection, from state NONE in the original direction
            opened = TCP_TRANSITIONS[ORIGINAL][index][TcpState.NONE]
            if opened == TcpState.INVALID:
                return _invalid(_CANNOT_OPEN[index])
            if opened != TcpState.SYN_SENT and not self.loose:
                return _invalid("mid-stream ack and loose pickup is off")
            family = pkt.family[i].item()
            res = self._new(
                now,
                key,
                orig,
                family,
                PROTO_TCP,
                0.0,
                "syn reopens closed connection" if reopened else "syn opens",
            )
            if res.state == CtState.INVALID:
                return res
            if opened != TcpState.SYN_SENT:
                res.reason = "loose pickup of mid-stream ack"
            tr = TcpTrack()
            tr.end[ORIGINAL] = end
            entry = res.entry
            assert entry is not None
            direction, seen_reply, assured = ORIGINAL, False, False
        else:
            assert entry.tcp is not None
            tr = entry.tcp.clone()
            direction = REPLY if is_reply else ORIGINAL
            seen_reply, assured = entry.seen_reply, entry.assured
            res = CtResult(self._ctstate(entry, is_reply), "", is_reply, key, entry, _UPDATE)
            res.set_seen_reply = is_reply

        old = tr.state
        new = TCP_TRANSITIONS[direction][index][old]
        name = f"{index.name.lower()} in {old.name}"
        if is_reply:
            name += " (reply)"
        res.reason = res.reason or name

        if new == TcpState.SYN_SENT and old >= TcpState.TIME_WAIT:
            # SYN on TIME_WAIT/CLOSE: if the old connection was closed by a FIN, or reset by this
            # same side, the kernel kills the entry and looks the packet up again (-NF_REPEAT).
            if (tr.close_init[0] or tr.close_init[1]) or (
                tr.last_dir == direction and tr.last_index == TcpEvent.RST
            ):
                reopen = self._tcp(pkt, i, now, key, orig, None, False, reopened=True)
                if reopen.action == _CREATE:
                    reopen.replaces = True
                    reopen.evict = None  # the old entry's slot is reused
                return reopen
            new = TcpState.IGNORE
        if new == TcpState.IGNORE:
            if (
                index == TcpEvent.SYNACK
                and tr.last_index == TcpEvent.SYN
                and tr.last_dir != direction
                and ackno == tr.last_end
            ):
                # a SYN-ACK answering a SYN we ignored: both ends agree, resync from that SYN
                old, new = TcpState.SYN_SENT, TcpState.SYN_RECV
                ld = tr.last_dir
                tr.end[ld] = tr.last_end
                tr.unacked[ld] = False
                tr.maxack[ld] = None
                tr.close_init[ld] = False
                tr.end[direction] = None
                tr.unacked[direction] = False
                tr.maxack[direction] = None
                tr.close_init[direction] = False
                tr.challenge_ack = False
                res.reason = "syn-ack answers an ignored syn: resync"
            else:
                tr.last_index, tr.last_dir = index, direction
                tr.last_seq, tr.last_end, tr.last_win = seq, end, win
                if index == TcpEvent.SYN and direction == ORIGINAL:
                    tr.challenge_ack = old == TcpState.LAST_ACK
                res.tcp = tr
                res.reason = f"ignored: {name}"
                return res  # accepted, state and timeout unchanged
        elif new == TcpState.INVALID:
            return _invalid(f"invalid transition: {name}")
        elif new == TcpState.TIME_WAIT:
            if (
                old == TcpState.LAST_ACK
                and index == TcpEvent.ACK
                and tr.last_dir != direction
                and tr.last_index == TcpEvent.SYN
                and tr.challenge_ack
            ):
                tr.challenge_ack = False
                res.tcp = tr
                res.reason = "rfc5961 challenge ack ignored"
                return res
        elif new == TcpState.SYN_SENT2:
            tr.simultaneous_open = True
        elif new == TcpState.SYN_RECV:
            if direction == REPLY and index == TcpEvent.ACK and tr.simultaneous_open:
                new = TcpState.ESTABLISHED
        elif new == TcpState.CLOSE and index == TcpEvent.RST:
            other = tr.maxack[1 - direction]
            if other is not None and tr.last_index != TcpEvent.SYN:
                established = old == TcpState.ESTABLISHED and assured
                if not (seq == 0 and not established):
                    if _before(seq, other):
                        return _invalid("rst below the peer's highest ack")
                    if (
                        established
                        and seq != other
                        and not (
                            tr.last_index == TcpEvent.ACK
                            and tr.last_dir == direction
                            and seq == tr.last_end
                        )
                    ):
                        new = old  # inexact RST: keep the state for a challenge ACK
                        res.reason = "rst with inexact sequence: state kept"

        _window_update(tr, direction, flags, index, seq, ackno, end, win)
        tr.last_index, tr.last_dir = index, direction
        tr.state = new
        if old != new and new == TcpState.FIN_WAIT:
            tr.close_init[direction] = True

        # timeout selection, in the kernel's order
        state_timeout = t.tcp(new)
        if tr.retrans >= TCP_MAX_RETRANS and state_timeout > t.tcp_max_retrans:
            timeout = t.tcp_max_retrans
        elif index == TcpEvent.RST:
            timeout = t.tcp_close
        elif (tr.unacked[0] or tr.unacked[1]) and state_timeout > t.tcp_unacknowledged:
            timeout = t.tcp_unacknowledged
        elif tr.last_win == 0 and state_timeout > t.tcp_max_retrans:
            timeout = t.tcp_max_retrans
        else:
            timeout = state_timeout
        res.tcp = tr
        res.timeout = timeout
        if not seen_reply:
            if index == TcpEvent.RST:
                # "if only reply is a RST ... we can delete the conntrack immediately"
                res.action = _DELETE  # (a RST never creates: sIV from NONE)
                res.reason = "rst before any reply: entry deleted"
            elif index == TcpEvent.SYN and old == TcpState.SYN_SENT:
                res.timeout = None  # retransmitted SYN does not renew the timeout
                res.reason = "syn retransmit (timeout not renewed)"
            elif new == TcpState.ESTABLISHED and timeout > t.tcp_unacknowledged:
                res.timeout = t.tcp_unacknowledged  # picked up, unreplied: keep it short
        elif (
            not assured
            and old in (TcpState.SYN_RECV, TcpState.ESTABLISHED)
            and new == TcpState.ESTABLISHED
        ):
            res.set_assured = True
        return res

    # -- phase 2: apply ------------------------------------------------------------------------------

    def commit(self, res: CtResult, now: float) -> None:
        """Apply what ``lookup`` planned for this packet."""
        action = res.action
        if action == _NOOP:
            return
        key = res.key
        assert key is not None and res.entry is not None
        if action == _DELETE:
            self._table.pop(key, None)
            return
        e = res.entry
        if action == _CREATE:
            if res.evict is not None:
                self._table.pop(res.evict, None)
            if res.replaces:
                self._table.pop(key, None)
            self._table[key] = e
            e.expires = now + (res.timeout or 0.0)
            e.timeout = res.timeout or 0.0
        elif res.timeout is not None:
            e.expires = now + res.timeout
            e.timeout = res.timeout
        if res.tcp is not None:
            e.tcp = res.tcp
        if res.sctp is not None:
            e.sctp = res.sctp
        if res.set_seen_reply:
            e.seen_reply = True
        if res.set_assured:
            e.assured = True

    # -- batches -------------------------------------------------------------------------------------

    def run(
        self, batch: PacketBatch, allowed_if_new: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Process a batch in order. Returns (verdict, ct_state as uint8, reasons).

        ESTABLISHED/RELATED pass and commit; INVALID is dropped; NEW and UNTRACKED take
        ``allowed_if_new[i]`` and a NEW packet commits only if allowed.
        """
        n = len(batch)
        verdict = np.zeros(n, dtype=bool)
        states = np.zeros(n, dtype=np.uint8)
        reasons: list[str] = [""] * n
        status = batch.status
        ts = batch.ts
        for i in range(n):
            st = status[i]
            if st == OK:
                now = float(ts[i])
                res = self.lookup(batch, i, now)
                s = res.state
                if s == CtState.ESTABLISHED or s == CtState.RELATED:
                    ok = True
                    self.commit(res, now)
                elif s == CtState.INVALID:
                    ok = False
                else:
                    ok = bool(allowed_if_new[i])
                    if ok and s == CtState.NEW:
                        self.commit(res, now)
                verdict[i] = ok
                states[i] = s
                reasons[i] = res.reason
            elif st == NOT_IP:
                verdict[i] = True
                states[i] = CtState.UNTRACKED
                reasons[i] = "not ip"
            elif st == FRAGMENT:
                verdict[i] = bool(allowed_if_new[i])
                states[i] = CtState.UNTRACKED
                reasons[i] = "fragment: follows its datagram"
            else:  # MALFORMED
                verdict[i] = False
                states[i] = CtState.INVALID
                reasons[i] = "malformed"
        return verdict, states, reasons


_CANNOT_OPEN = {
    TcpEvent.SYNACK: "unsolicited syn-ack",
    TcpEvent.FIN: "fin cannot open a connection",
    TcpEvent.RST: "rst cannot open a connection",
    TcpEvent.NONE: "no flags cannot open a connection",
    TcpEvent.SYN: "",
    TcpEvent.ACK: "",
}


def _port_key(
    family: int, proto: int, shi: int, slo: int, sport: int, dhi: int, dlo: int, dport: int
) -> tuple[Key, tuple[int, int, int, int, int, int]]:
    """The direction-free key of a port-based (or generic) flow, and the packet's own tuple."""
    a = (shi, slo, sport)
    b = (dhi, dlo, dport)
    key = (family, proto, *a, *b) if a <= b else (family, proto, *b, *a)
    return key, (shi, slo, sport, dhi, dlo, dport)


def _window_update(
    tr: TcpTrack, d: int, flags: int, index: TcpEvent, seq: int, ackno: int, end: int, win: int
) -> None:
    """The bookkeeping half of ``tcp_in_window`` (the window *checks* are not modelled).

    Tracks, per direction, the highest sequence end sent (``td_end``), whether data is
    unacknowledged, the highest ACK sent (``td_maxack``) and the retransmission counter, from the
    seq/ack/payload_len/window columns. This is what selects the 300 s "unacknowledged" timeout.
    """
    r = 1 - d
    if tr.end[d] is None:
        # first packet seen from this side: adopt its numbers (td_maxwin == 0 in the kernel)
        tr.end[d] = end
        if flags & SYN:
            if not flags & ACK:
                return  # simultaneous open: the kernel returns before the ACK bookkeeping
        elif tr.end[r] is None:
            tr.end[r] = ackno
        elif ackno == (tr.end[r] + 1) & _U32:
            tr.end[r] = ackno  # reply to a keepalive
    elif (
        (tr.state == TcpState.SYN_SENT and d == ORIGINAL)
        or (tr.state == TcpState.SYN_RECV and d == REPLY)
    ) and _after(end, tr.end[d]):
        tr.end[d] = end  # SYN retransmitted with a new ISN
    ack_eff = tr.end[r] if not flags & ACK or (flags & RST and ackno == 0) else ackno
    if flags & RST and seq == 0 and tr.state == TcpState.SYN_SENT:
        seq = end = tr.end[d]  # RST answering a SYN
    if _after(end, tr.end[d]):
        tr.end[d] = end
        tr.unacked[d] = True
    if flags & ACK and (tr.maxack[d] is None or _after(ackno, tr.maxack[d])):
        tr.maxack[d] = ackno
    if ack_eff is not None and ack_eff == tr.end[r]:
        tr.unacked[r] = False
    if index == TcpEvent.ACK:
        if (
            tr.last_dir == d
            and tr.last_seq == seq
            and tr.last_ack == ack_eff
            and tr.last_end == end
            and tr.last_win == win
        ):
            tr.retrans += 1
        else:
            tr.last_dir, tr.last_seq, tr.last_end, tr.last_win = d, seq, end, win
            tr.last_ack = ack_eff if ack_eff is not None else 0
            tr.retrans = 0


__all__ = [
    "ICMPV6_UNTRACKED",
    "ICMP_ERRORS",
    "ICMP_REQUESTS",
    "PROFILES",
    "SCTP_TRANSITIONS",
    "TCP_TRANSITIONS",
    "TCP_VALID_FLAGS",
    "Conntrack",
    "CtResult",
    "CtState",
    "Entry",
    "EntryView",
    "SctpChunk",
    "SctpState",
    "TcpEvent",
    "TcpState",
    "Timeouts",
    "tcp_event",
]
