"""Conntrack as data: packet states, the TCP and SCTP state machines, ICMP types, timeouts.

Nothing here runs per packet. The tables are written the way the kernel writes them (h11's
``_state.py`` is the model: named states and events, then one transition table), so they can be
checked cell by cell against net/netfilter/nf_conntrack_proto_{tcp,sctp}.c. ``ct_kernel`` turns
them into numpy arrays and applies them; docs/conntrack.md explains every cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from dataplane.packets import ACK, FIN, RST, SYN, URG

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
# (NONE, SYN_SENT, SYN_RECV, ESTABLISHED, FIN_WAIT, CLOSE_WAIT, LAST_ACK, TIME_WAIT, CLOSE,
# SYN_SENT2).
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
TCP_FLAG_MASK = FIN | SYN | RST | ACK | URG

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
SCTP_OOTB_DISCARD = frozenset({_C.ABORT, _C.SHUTDOWN_COMPLETE, _C.COOKIE_ACK})

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


__all__ = [
    "DEFAULT_MAX_ENTRIES",
    "ICMPV6_REPLIES",
    "ICMPV6_REQUESTS",
    "ICMPV6_UNTRACKED",
    "ICMP_ERRORS",
    "ICMP_REPLIES",
    "ICMP_REQUESTS",
    "ORIGINAL",
    "PROFILES",
    "REPLY",
    "SCTP_OOTB_DISCARD",
    "SCTP_TRANSITIONS",
    "TCP_FLAG_MASK",
    "TCP_MAX_RETRANS",
    "TCP_TRANSITIONS",
    "TCP_VALID_FLAGS",
    "UDP_STREAM_AFTER",
    "CtState",
    "SctpChunk",
    "SctpState",
    "TcpEvent",
    "TcpState",
    "Timeouts",
    "tcp_event",
]
