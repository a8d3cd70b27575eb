"""dataplane/conntrack.py, walked step by step: after every packet the full state is asserted."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from dataplane.conntrack import (
    PROFILES,
    TCP_TRANSITIONS,
    Conntrack,
    CtState,
    EntryView,
    SctpState,
    TcpEvent,
    TcpState,
    Timeouts,
)
from dataplane.packets import (
    ACK,
    FIN,
    FRAGMENT,
    MALFORMED,
    NOT_IP,
    PSH,
    RST,
    SYN,
    PacketBatch,
    ip_to_pair,
)

N, E, R, IV, U = (
    CtState.NEW,
    CtState.ESTABLISHED,
    CtState.RELATED,
    CtState.INVALID,
    CtState.UNTRACKED,
)
C, S = "10.0.0.1", "10.0.0.2"  # client, server
C6, S6 = "fd00::1", "fd00::2"


def pkt(src: str, dst: str, proto: int = 6, ts: float = 0.0, **cols: Any) -> PacketBatch:
    """A one-packet batch. TCP gets a non-zero window unless told (a zero window shortens timeouts)."""
    fam, shi, slo = ip_to_pair(src)
    _, dhi, dlo = ip_to_pair(dst)
    if proto == 6:
        cols.setdefault("window", 64240)
    return PacketBatch.from_columns(
        ts=ts, family=fam, src_hi=shi, src_lo=slo, dst_hi=dhi, dst_lo=dlo, proto=proto, **cols
    )


class Walk:
    """Feeds packets through lookup+commit (as if policy allowed everything) and keeps the time."""

    def __init__(self, ct: Conntrack | None = None) -> None:
        self.ct = ct if ct is not None else Conntrack()
        self.now = 1000.0

    def send(self, batch: PacketBatch, at: float | None = None, commit: bool = True) -> CtState:
        if at is not None:
            self.now = at
        res = self.ct.lookup(batch, 0, self.now)
        self.last = res
        if commit and res.state != CtState.INVALID:
            self.ct.commit(res, self.now)
        return res.state

    def tcp(
        self, frm: str, flags: int, seq: int = 0, ack: int = 0, data: int = 0, **kw: Any
    ) -> CtState:
        sport, dport = (40000, 80) if frm == "c" else (80, 40000)
        src, dst = (C, S) if frm == "c" else (S, C)
        b = pkt(
            src,
            dst,
            6,
            sport=sport,
            dport=dport,
            tcp_flags=flags,
            seq=seq,
            ack=ack,
            payload_len=data,
            **kw,
        )
        return self.send(b)

    def only(self) -> EntryView:
        entries = self.ct.entries(now=self.now)
        assert len(entries) == 1, entries
        return entries[0]

    def expect(
        self, state: str, timeout: float, assured: bool, seen_reply: bool, size: int = 1
    ) -> None:
        assert len(self.ct) == size
        e = self.only()
        assert (e.state, e.timeout, e.expires, e.assured, e.seen_reply) == (
            state,
            timeout,
            self.now + timeout,
            assured,
            seen_reply,
        )


# ------------------------------------------------------------------------------------------------
# the table itself


def test_table_is_the_kernels() -> None:
    # spot checks of cells whose meaning is easy to state
    assert TCP_TRANSITIONS[0][TcpEvent.SYN][TcpState.NONE] == TcpState.SYN_SENT
    assert TCP_TRANSITIONS[1][TcpEvent.SYNACK][TcpState.SYN_SENT] == TcpState.SYN_RECV
    assert TCP_TRANSITIONS[0][TcpEvent.ACK][TcpState.SYN_RECV] == TcpState.ESTABLISHED
    assert TCP_TRANSITIONS[0][TcpEvent.SYNACK][TcpState.NONE] == TcpState.INVALID
    assert TCP_TRANSITIONS[1][TcpEvent.SYN][TcpState.TIME_WAIT] == TcpState.SYN_SENT
    assert all(len(row) == 10 for d in TCP_TRANSITIONS.values() for row in d.values())


# ------------------------------------------------------------------------------------------------
# TCP


def test_tcp_handshake_data_and_close_client_first() -> None:
    w = Walk()
    assert w.tcp("c", SYN, 100) == N
    w.expect("SYN_SENT", 120, False, False)
    assert w.tcp("s", SYN | ACK, 500, 101) == E  # the SYN-ACK is ESTABLISHED ctstate
    w.expect("SYN_RECV", 60, False, True)
    assert w.tcp("c", ACK, 101, 501) == E
    w.expect("ESTABLISHED", 432000, True, True)
    assert w.tcp("c", PSH | ACK, 101, 501, data=100) == E
    w.expect("ESTABLISHED", 300, True, True)  # data in flight
    assert w.tcp("s", ACK, 501, 201) == E
    w.expect("ESTABLISHED", 432000, True, True)  # acknowledged
    assert w.tcp("c", FIN | ACK, 201, 501) == E
    w.expect("FIN_WAIT", 120, True, True)
    assert w.tcp("s", ACK, 501, 202) == E
    w.expect("CLOSE_WAIT", 60, True, True)
    assert w.tcp("s", FIN | ACK, 501, 202) == E
    w.expect("LAST_ACK", 30, True, True)
    assert w.tcp("c", ACK, 202, 502) == E
    w.expect("TIME_WAIT", 120, True, True)
    w.now += 119
    assert w.tcp("c", ACK, 202, 502) == E  # retransmitted last ACK: still TIME_WAIT, refreshed
    w.expect("TIME_WAIT", 120, True, True)
    w.now += 121
    assert w.ct.entries(now=w.now) == []
    assert w.tcp("c", ACK, 202, 502) == N  # expired: a stray ACK is picked up anew
    w.expect("ESTABLISHED", 300, False, False)


def test_tcp_close_server_first() -> None:
    w = Walk()
    w.tcp("c", SYN, 100), w.tcp("s", SYN | ACK, 500, 101), w.tcp("c", ACK, 101, 501)
    assert w.tcp("s", FIN | ACK, 501, 101) == E
    w.expect("FIN_WAIT", 120, True, True)
    assert w.tcp("c", FIN | ACK, 101, 502) == E
    w.expect("LAST_ACK", 30, True, True)
    assert w.tcp("s", ACK, 502, 102) == E
    w.expect("TIME_WAIT", 120, True, True)


def test_syn_on_time_wait_replaces_entry() -> None:
    w = Walk()
    for frm, flags, seq, ack in [
        ("c", SYN, 100, 0),
        ("s", SYN | ACK, 500, 101),
        ("c", ACK, 101, 501),
        ("c", FIN | ACK, 101, 501),
        ("s", FIN | ACK, 501, 102),
        ("c", ACK, 102, 502),
    ]:
        w.tcp(frm, flags, seq, ack)
    w.expect("TIME_WAIT", 120, True, True)
    w.now += 5
    assert w.tcp("c", SYN, 9000) == N
    assert w.last.reason == "syn reopens closed connection"
    w.expect("SYN_SENT", 120, False, False)


def test_syn_on_close_after_rst_from_the_other_side_is_ignored() -> None:
    w = Walk()
    w.tcp("c", SYN, 100), w.tcp("s", SYN | ACK, 500, 101), w.tcp("c", ACK, 101, 501)
    assert w.tcp("s", RST | ACK, 501, 101) == E
    w.expect("CLOSE", 10, True, True)
    w.now += 1
    assert w.tcp("c", SYN, 7000) == E  # sIG: passes, entry untouched (last RST came from s)
    assert w.last.reason.startswith("ignored")
    assert w.only().state == "CLOSE" and w.only().expires == 1000 + 10
    assert w.tcp("s", SYN | ACK, 800, 7001) == E  # answers the ignored SYN: resync
    w.expect("SYN_RECV", 60, True, True)


def test_rst_closes_established() -> None:
    w = Walk()
    w.tcp("c", SYN, 100), w.tcp("s", SYN | ACK, 500, 101), w.tcp("c", ACK, 101, 501)
    assert w.tcp("c", RST | ACK, 101, 501) == E
    w.expect("CLOSE", 10, True, True)
    w.now += 10
    assert len(w.ct.entries(now=w.now)) == 0


def test_rst_before_reply_deletes_entry() -> None:
    w = Walk()
    assert w.tcp("c", SYN, 100) == N
    assert w.tcp("s", RST | ACK, 0, 101) == E  # reply direction: ESTABLISHED ctstate, entry gone
    assert len(w.ct) == 0
    assert w.tcp("c", SYN, 100) == N
    assert w.tcp("c", RST, 101) == N  # the client aborts before any reply: also deleted
    assert len(w.ct) == 0


def test_rst_below_peer_maxack_is_invalid() -> None:
    w = Walk()
    w.tcp("c", SYN, 100), w.tcp("s", SYN | ACK, 500, 101), w.tcp("c", ACK, 101, 501)
    assert w.tcp("s", RST, 400) == IV  # seq before what the client has acknowledged
    w.expect("ESTABLISHED", 432000, True, True)


def test_simultaneous_open() -> None:
    w = Walk()
    assert w.tcp("c", SYN, 100) == N
    assert w.tcp("s", SYN, 900) == E
    w.expect("SYN_SENT2", 120, False, True)
    assert w.tcp("c", SYN | ACK, 100, 901) == E
    w.expect("SYN_RECV", 60, False, True)
    assert w.tcp("s", ACK, 901, 101) == E
    w.expect("ESTABLISHED", 432000, True, True)


@pytest.mark.parametrize(
    ("flags", "reason"),
    [
        (SYN | ACK, "unsolicited syn-ack"),
        (FIN | ACK, "fin cannot open a connection"),
        (RST, "rst cannot open a connection"),
        (RST | ACK, "rst cannot open a connection"),
        (0, "invalid tcp flag combination"),
        (FIN, "invalid tcp flag combination"),
        (SYN | FIN, "invalid tcp flag combination"),
    ],
)
def test_invalid_first_packets(flags: int, reason: str) -> None:
    w = Walk()
    assert w.tcp("c", flags, 5, 9) == IV
    assert w.last.reason == reason
    assert len(w.ct) == 0


def test_invalid_transition_leaves_entry_alone() -> None:
    w = Walk()
    w.tcp("c", SYN, 100)
    w.now += 7
    assert w.tcp("c", ACK, 101, 1) == IV  # ACK in SYN_SENT: sIV
    assert w.last.reason == "invalid transition: ack in SYN_SENT"
    e = w.only()
    assert (e.state, e.expires) == ("SYN_SENT", 1000 + 120)


def test_syn_retransmit_does_not_renew_timeout() -> None:
    w = Walk()
    w.tcp("c", SYN, 100)
    w.now += 3
    assert w.tcp("c", SYN, 100) == N
    assert w.only().expires == 1000 + 120


def test_loose_pickup_on() -> None:
    w = Walk()
    assert w.tcp("c", ACK, 5, 9) == N
    w.expect("ESTABLISHED", 300, False, False)  # unreplied pick-up: capped at 300 s
    assert w.tcp("s", ACK, 9, 5) == E
    w.expect("ESTABLISHED", 300, False, True)
    assert w.tcp("c", ACK, 5, 9) == E
    w.expect("ESTABLISHED", 432000, True, True)


def test_loose_pickup_off() -> None:
    w = Walk(Conntrack(loose=False))
    assert w.tcp("c", ACK, 5, 9) == IV
    assert w.last.reason == "mid-stream ack and loose pickup is off"
    assert w.tcp("c", SYN, 5) == N


def test_kube_proxy_profile() -> None:
    w = Walk(Conntrack(timeouts=PROFILES["kube-proxy"]))
    w.tcp("c", SYN, 100), w.tcp("s", SYN | ACK, 500, 101), w.tcp("c", ACK, 101, 501)
    w.expect("ESTABLISHED", 86400, True, True)
    w.tcp("s", FIN | ACK, 501, 101)
    w.tcp("c", ACK, 101, 502)
    w.expect("CLOSE_WAIT", 3600, True, True)
    assert PROFILES["default"] == Timeouts()


def test_zero_window_and_retransmissions_shorten_established() -> None:
    w = Walk()
    w.tcp("c", SYN, 100), w.tcp("s", SYN | ACK, 500, 101), w.tcp("c", ACK, 101, 501)
    w.tcp("s", ACK, 501, 101, window=0)
    w.expect("ESTABLISHED", 300, True, True)
    w.tcp("s", ACK, 501, 101)
    w.expect("ESTABLISHED", 432000, True, True)


# ------------------------------------------------------------------------------------------------
# UDP, ICMP, generic


def udp(frm: str, ts: float) -> PacketBatch:
    src, dst, sp, dp = (C, S, 5000, 53) if frm == "c" else (S, C, 53, 5000)
    return pkt(src, dst, 17, ts=ts, sport=sp, dport=dp)


def test_udp_timeouts() -> None:
    w = Walk()
    assert w.send(udp("c", 0)) == N
    w.expect("", 30, False, False)
    w.now = 29.9
    assert w.send(udp("c", 0)) == N  # still unreplied: refreshed to 30 s
    w.expect("", 30, False, False)
    w.now = 60
    assert w.ct.entries(now=w.now) == []  # expired
    assert w.send(udp("c", 0)) == N
    assert w.send(udp("s", 0), at=60.5) == E  # reply within 2 s: still 30 s, not assured
    w.expect("", 30, False, True)
    assert w.send(udp("c", 0), at=61) == E
    w.expect("", 30, False, True)
    assert w.send(udp("c", 0), at=62.5) == E  # alive after 2 s: a stream
    w.expect("", 120, True, True)
    w.now += 120
    assert w.ct.entries(now=w.now) == []


def icmp(src: str, dst: str, t: int, ident: int = 7, **kw: Any) -> PacketBatch:
    proto = 58 if ":" in src else 1
    return pkt(src, dst, proto, icmp_type=t, icmp_code=0, icmp_id=ident, **kw)


def test_icmp_echo() -> None:
    w = Walk()
    assert w.send(icmp(C, S, 8)) == N
    w.expect("", 30, False, False)
    assert w.send(icmp(S, C, 0)) == E
    w.expect("", 30, False, True)
    assert w.send(icmp(S, C, 0, ident=8)) == IV  # another id: unsolicited
    assert w.last.reason == "unsolicited icmp reply"
    assert w.send(icmp(S, C, 8)) == N  # a request the other way is a flow of its own
    assert len(w.ct) == 2
    assert w.send(icmp(C, S, 9)) == IV  # router advertisement: cannot be tracked
    assert w.send(icmp(C, S, 13, ident=1)) == N  # timestamp request opens
    assert w.send(icmp(S, C, 14, ident=1)) == E


def quoting(
    src: str, dst: str, t: int, inner: tuple[str, str, int, int, int], code: int = 3
) -> PacketBatch:
    isrc, idst, iproto, isport, idport = inner
    _, ishi, islo = ip_to_pair(isrc)
    _, idhi, idlo = ip_to_pair(idst)
    return icmp(
        src,
        dst,
        t,
        ident=0,
        inner_proto=iproto,
        inner_src_hi=ishi,
        inner_src_lo=islo,
        inner_dst_hi=idhi,
        inner_dst_lo=idlo,
        inner_sport=isport,
        inner_dport=idport,
    )


def test_icmp_errors_related_or_invalid() -> None:
    w = Walk()
    w.send(udp("c", 0))
    before = w.only()
    w.now += 5
    assert w.send(quoting(S, C, 3, (C, S, 17, 5000, 53))) == R
    assert w.last.reason == "quotes tracked flow" and w.last.is_reply
    assert w.only() == before  # RELATED does not refresh
    assert w.send(quoting("10.9.9.9", C, 11, (C, S, 17, 5000, 53))) == R  # from a router
    assert w.send(quoting(S, C, 3, (C, S, 17, 5001, 53))) == IV
    assert w.last.reason == "icmp error quotes no tracked flow"
    w.send(icmp(C, S, 8, ident=3))
    assert w.send(quoting(S, C, 3, (C, S, 1, 3, 8))) == R  # quotes our echo request


def test_icmpv6() -> None:
    w = Walk()
    for nd in (130, 131, 132, 133, 134, 135, 136, 143):
        assert w.send(icmp(C6, S6, nd)) == U
    assert w.send(icmp(C6, S6, 137)) == IV  # redirect is tracked, and cannot open
    assert len(w.ct) == 0
    assert w.send(icmp(C6, S6, 128)) == N
    assert w.send(icmp(S6, C6, 129)) == E
    assert w.send(pkt(C6, S6, 17, sport=5000, dport=53)) == N
    assert w.send(quoting(S6, C6, 1, (C6, S6, 17, 5000, 53))) == R
    assert w.send(quoting(S6, C6, 2, (C6, S6, 17, 5000, 53))) == R  # packet too big
    assert w.send(quoting(S6, C6, 1, (C6, S6, 17, 1, 2))) == IV
    assert w.send(icmp(C, S, 128)) == IV  # ICMPv6 in IPv4


def test_generic_protocol() -> None:
    w = Walk()
    assert w.send(pkt(C, S, 47)) == N
    w.expect("", 600, False, False)
    assert w.send(pkt(S, C, 47)) == E
    w.expect("", 600, False, True)


# ------------------------------------------------------------------------------------------------
# SCTP


def sctp(frm: str, chunk: int, vtag: int) -> PacketBatch:
    src, dst, sp, dp = (C, S, 7000, 9) if frm == "c" else (S, C, 9, 7000)
    return pkt(src, dst, 132, sport=sp, dport=dp, sctp_chunk=chunk, seq=vtag)


def test_sctp_association() -> None:
    w = Walk()
    steps = [
        ("c", 1, 0, N, "CLOSED", 10, False),  # INIT
        ("s", 2, 0x11, E, "COOKIE_WAIT", 3, False),  # INIT_ACK
        ("c", 10, 0x22, E, "COOKIE_ECHOED", 3, False),  # COOKIE_ECHO
        ("s", 11, 0x11, E, "ESTABLISHED", 210, True),  # COOKIE_ACK
        ("c", 0, 0x22, E, "ESTABLISHED", 210, True),  # DATA
        ("c", 7, 0x22, E, "SHUTDOWN_SENT", 3, True),  # SHUTDOWN
        ("s", 8, 0x11, E, "SHUTDOWN_ACK_SENT", 3, True),  # SHUTDOWN_ACK
        ("c", 14, 0x22, E, "CLOSED", 10, True),  # SHUTDOWN_COMPLETE
    ]
    for frm, chunk, vtag, ctstate, state, timeout, assured in steps:
        assert w.send(sctp(frm, chunk, vtag)) == ctstate
        w.expect(state, timeout, assured, frm == "s" or w.only().seen_reply)
    assert w.only().sctp_state == SctpState.CLOSED


@pytest.mark.parametrize("chunk", [0, 3, 6, 11, 14])
def test_sctp_cannot_open(chunk: int) -> None:
    w = Walk()
    assert w.send(sctp("c", chunk, 5)) == IV
    assert len(w.ct) == 0


def test_sctp_init_needs_zero_vtag() -> None:
    assert Walk().send(sctp("c", 1, 5)) == IV


# ------------------------------------------------------------------------------------------------
# the table limit and the two-phase API


def test_table_full_evicts_oldest_non_assured_then_drops() -> None:
    w = Walk(Conntrack(max_entries=2))
    w.tcp("c", SYN, 100), w.tcp("s", SYN | ACK, 500, 101), w.tcp("c", ACK, 101, 501)  # assured
    assert w.send(udp("c", w.now)) == N  # not assured
    assert len(w.ct) == 2
    assert w.send(pkt(C, S, 47)) == N  # evicts the UDP entry
    assert len(w.ct) == 2 and {e.proto for e in w.ct.entries()} == {6, 47}
    w.send(pkt(S, C, 47))
    w.ct._table[next(k for k in w.ct._table if k[1] == 47)].assured = True  # both assured now
    assert w.send(udp("c", w.now)) == IV
    assert w.last.reason == "table full"
    assert len(w.ct) == 2
    w.now += 600  # the GRE entry expires: its slot can be taken
    assert w.send(udp("c", w.now)) == N


def test_lookup_does_not_mutate() -> None:
    ct = Conntrack()
    b = pkt(C, S, 6, sport=1, dport=2, tcp_flags=SYN)
    res = ct.lookup(b, 0, 0.0)
    assert res.state == N and len(ct) == 0
    ct.commit(res, 0.0)
    assert len(ct) == 1


def test_run_denied_first_packet_leaves_nothing() -> None:
    ct = Conntrack()
    b = PacketBatch.concat(
        [
            pkt(C, S, 6, ts=0, sport=1, dport=80, tcp_flags=SYN, seq=1),
            pkt(S, C, 6, ts=0.1, sport=80, dport=1, tcp_flags=SYN | ACK, seq=5, ack=2),
        ]
    )
    verdict, states, reasons = ct.run(b, np.array([False, False]))
    assert verdict.tolist() == [False, False]
    assert states.tolist() == [N, IV]  # nothing was created, so the SYN-ACK is unsolicited
    assert reasons == ["syn opens", "unsolicited syn-ack"]
    assert len(ct) == 0
    verdict, states, _ = ct.run(b, np.array([True, False]))
    assert verdict.tolist() == [True, True]  # the reply passes whatever the policy says
    assert states.tolist() == [N, E]
    assert len(ct) == 1


def test_run_statuses() -> None:
    b = PacketBatch.concat(
        [
            pkt(C, S, 17, sport=1, dport=2, status=NOT_IP),
            pkt(C, S, 17, sport=1, dport=2, status=MALFORMED),
            pkt(C, S, 17, sport=1, dport=2, status=FRAGMENT),
            pkt(C, S, 17, sport=1, dport=2, status=FRAGMENT),
            pkt(C6, S6, 58, icmp_type=135),
        ]
    )
    ct = Conntrack()
    verdict, states, reasons = ct.run(b, np.array([False, True, True, False, False]))
    assert verdict.tolist() == [True, False, True, False, False]
    assert states.tolist() == [U, IV, U, U, U]
    assert reasons[:3] == ["not ip", "malformed", "fragment: follows its datagram"]
    assert len(ct) == 0
