"""dataplane/conntrack.py, walked step by step: after every packet the full state is asserted."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dataplane.conntrack import (
    PROFILES,
    REASON_TEXT,
    TCP_TRANSITIONS,
    Conntrack,
    CtState,
    EntryView,
    SctpState,
    TcpEvent,
    TcpState,
    Timeouts,
)
from dataplane.ct_kernel import CtTable
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
    """A one-packet batch. TCP gets a non-zero window unless told (a zero window shortens
    timeouts)."""
    fam, shi, slo = ip_to_pair(src)
    _, dhi, dlo = ip_to_pair(dst)
    if proto == 6:
        cols.setdefault("window", 64240)
    return PacketBatch.from_columns(
        ts=ts, family=fam, src_hi=shi, src_lo=slo, dst_hi=dhi, dst_lo=dlo, proto=proto, **cols
    )


class Walk:
    """Feeds packets one by one (as if policy allowed everything) and keeps the time."""

    def __init__(self, ct: Conntrack | None = None) -> None:
        self.ct = ct if ct is not None else Conntrack()
        self.now = 1000.0

    def send(self, batch: PacketBatch, at: float | None = None, allowed: bool = True) -> CtState:
        if at is not None:
            self.now = at
        batch.ts[:] = self.now
        self.last = self.ct.step(batch, 0, allowed)
        return self.last.state

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
    table = w.ct._table
    gre = next(s for s, e in zip(table.slots(), table.rows(), strict=True) if e["proto"] == 47)
    table.set_assured(gre)  # both assured now
    assert w.send(udp("c", w.now)) == IV
    assert w.last.reason == "table full"
    assert len(w.ct) == 2
    w.now += 600  # the GRE entry expires: its slot can be taken
    assert w.send(udp("c", w.now)) == N


def test_denied_new_packet_does_not_mutate() -> None:
    ct = Conntrack()
    b = pkt(C, S, 6, sport=1, dport=2, tcp_flags=SYN)
    res = ct.step(b, 0, allowed=False)
    assert res.state == N and len(ct) == 0
    ct.step(b, 0, allowed=True)
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
    assert [REASON_TEXT[c] for c in reasons] == ["syn opens", "unsolicited syn-ack"]
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
    assert [REASON_TEXT[c] for c in reasons[:3]] == [
        "not ip",
        "malformed",
        "fragment: follows its datagram",
    ]
    assert len(ct) == 0


# ------------------------------------------------------------------------------------------------
# the kernel is also plain Python (NUMBA_DISABLE_JIT=1): both must give the same replay


def mixed_traffic(seed: int, n: int) -> PacketBatch:
    """Seeded traffic on a few tuples, so flows collide: TCP with mostly consistent seq/ack numbers
    (handshakes, data, FINs, RSTs, SYNs on closed connections, bad flags), UDP, ICMP echo and
    errors quoting earlier packets, ICMPv6 (ND too), SCTP chunks, GRE; time gaps that cross the
    2 s / 10 s / 30 s / 120 s / 300 s boundaries."""
    r = random.Random(seed)
    v4 = [ip_to_pair(f"10.0.0.{i}") for i in (1, 2, 3)]
    v6 = [ip_to_pair(f"fd00::{i}") for i in (1, 2)]
    conns = [(v4[0], 40000, v4[1], 80), (v4[0], 40001, v4[1], 80), (v6[1], 5000, v6[0], 22)]
    sent: list[dict[str, Any]] = []

    def emit(src: tuple[int, int, int], dst: tuple[int, int, int], **fields: Any) -> None:
        row = {"family": src[0], "src_hi": src[1], "src_lo": src[2], "dst_hi": dst[1]}
        row.update(dst_lo=dst[2], icmp_type=-1, window=64240)
        row.update(fields)
        sent.append(row)

    # scripted start (for max_entries=4): four handshakes fill the table with assured entries,
    # a UDP packet finds it full, one connection closes and a SYN re-opens it
    a, b = v4[0], v4[1]
    script = []  # (from a?, client port, flags, seq, ack)
    for k in range(4):
        isn = 100 * k
        script += [(True, k, SYN, isn, 0), (False, k, SYN | ACK, 9, isn + 1)]
        script += [(True, k, ACK, isn + 1, 10)]
    script += [(True, -1, 0, 0, 0)]  # the UDP packet
    script += [(True, 0, FIN | ACK, 1, 10), (False, 0, ACK, 10, 2)]
    script += [(False, 0, FIN | ACK, 10, 2), (True, 0, ACK, 2, 11), (True, 0, SYN, 7777, 0)]
    t = 1000.0
    for from_a, k, flags, sq, ak in script:
        t += 0.01
        if k < 0:
            emit(a, b, ts=t, proto=17, sport=5000, dport=53)
            continue
        ports = (41000 + k, 80) if from_a else (80, 41000 + k)
        src, dst = (a, b) if from_a else (b, a)
        emit(src, dst, ts=t, proto=6, sport=ports[0], dport=ports[1], tcp_flags=flags, seq=sq,
             ack=ak)  # fmt: skip

    nxt: dict[tuple[int, int], int] = {}  # (address, port) -> next sequence number it sends
    while len(sent) < n:
        t += r.choice([0.0, 0.01, 0.3, 0.3, 0.3, 1.0, 2.0, 2.5, 10.0, 31.0, 121.0, 301.0])
        proto = r.choice([6, 6, 6, 6, 6, 17, 17, 1, 58, 132, 47])
        pool = v6 if proto == 58 or (proto != 1 and r.random() < 0.2) else v4
        src, dst = r.choice(pool), r.choice(pool)
        sp, dp = r.choice([(40000, 80), (80, 40000), (40001, 80), (80, 40001)])
        if proto in (6, 17):  # three connections, either direction
            src, sp, dst, dp = r.choice(conns)
            if r.random() < 0.5:
                src, sp, dst, dp = dst, dp, src, sp
        row: dict[str, Any] = {"ts": t, "proto": proto, "sport": sp, "dport": dp}
        row["window"] = r.choice([64240] * 9 + [0])
        if proto == 6:
            flags = r.choice([SYN, SYN, SYN | ACK, SYN | ACK, ACK, ACK, ACK, PSH | ACK, FIN | ACK])
            flags = r.choice([flags] * 8 + [RST, RST | ACK, FIN, 0, SYN | FIN])
            mine, theirs = nxt.get((src[2], sp), 1000 * sp), nxt.get((dst[2], dp), 1000 * dp)
            seq = r.choice([mine] * 6 + [0, mine - 3, mine + 7, r.getrandbits(32)]) & 0xFFFFFFFF
            plen = r.choice([0, 0, 0, 100]) if flags & ACK and not flags & (SYN | RST) else 0
            ack = r.choice([theirs] * 5 + [0, theirs + 9]) & 0xFFFFFFFF
            row.update(tcp_flags=flags, seq=seq, ack=ack, payload_len=plen)
            if r.random() < 0.05:
                nxt[(src[2], sp)] = r.getrandbits(31)  # a new ISN: the next SYN re-opens
            elif not flags & RST:
                nxt[(src[2], sp)] = (seq + plen + bool(flags & (SYN | FIN))) & 0xFFFFFFFF
        elif proto == 132:
            row["sctp_chunk"] = r.choice([1, 1, 2, 10, 11, 0, 3, 7, 8, 14, 6, 4, 5, 9, 200])
            row["seq"] = r.choice([0, 0, 0, 5])
        elif proto in (1, 58):
            types = [8, 0, 0, 13, 14, 3, 11, 5, 9] if proto == 1 else [128, 129, 1, 2, 135, 137]
            row.update(icmp_type=r.choice(types), icmp_id=r.choice([1, 2]), sport=0, dport=0)
            q = r.choice(sent[-20:])  # what an error quotes (as sent, or turned around)
            x, y = (q["src_hi"], q["src_lo"]), (q["dst_hi"], q["dst_lo"])
            if r.random() < 0.3:
                x, y = y, x
            row.update(inner_proto=q["proto"], inner_src_hi=x[0], inner_src_lo=x[1])
            row.update(inner_dst_hi=y[0], inner_dst_lo=y[1])
            if q["proto"] in (1, 58):
                row.update(inner_sport=q.get("icmp_id", 0), inner_dport=max(q["icmp_type"], 0))
            else:
                row.update(inner_sport=q["sport"], inner_dport=q["dport"])
        emit(src, dst, **row)
    names = sorted({k for row in sent for k in row})
    cols = {k: [row.get(k, -1 if k == "icmp_type" else 0) for row in sent] for k in names}
    return PacketBatch.from_columns(n=n, **cols)


def replay_outputs(batch: PacketBatch, allowed: np.ndarray, chunk: int) -> dict[str, np.ndarray]:
    """Replay as the pipeline does, chunk after chunk into one table, twice: with a table limit of
    4 (evictions, table full) and without one on a table that starts with 2 slots (it grows).
    Per-packet outputs and the final tables."""
    result: dict[str, np.ndarray] = {}
    for name, ct in (("small", Conntrack(max_entries=4)), ("growing", Conntrack())):
        if name == "growing":
            ct._table = CtTable(capacity=2)
        out: dict[str, list[np.ndarray]] = {"verdict": [], "state": [], "reason": []}
        for lo in range(0, len(batch), chunk):
            v, s, r = ct.run(batch.take(slice(lo, lo + chunk)), allowed[lo : lo + chunk])
            for k, col in zip(out, (v, s, r), strict=True):
                out[k].append(col)
        result.update({f"{name}-{k}": np.concatenate(v) for k, v in out.items()})
        result[f"{name}-entries"] = np.array([repr(e) for e in ct.entries()])
        result[f"{name}-size"] = np.array(
            [len(ct), ct._table.capacity, ct.expire(float(batch.ts[-1]) + 60)]
        )
    return result


def test_same_replay_without_jit(tmp_path: Path) -> None:
    batch = mixed_traffic(7, 3000)
    allowed = np.random.default_rng(7).random(len(batch)) < 0.8
    allowed[:20] = True  # the scripted start
    np.savez(tmp_path / "in.npz", allowed=allowed, **batch.columns())
    script = textwrap.dedent(
        f"""
        import numpy as np
        from dataplane import ct_kernel
        from dataplane.packets import PacketBatch
        from tests.test_conntrack import replay_outputs
        assert not hasattr(ct_kernel._run, "overloads")  # plain Python, not a numba dispatcher
        z = np.load({str(tmp_path / "in.npz")!r})
        batch = PacketBatch(**{{k: z[k] for k in z.files if k != "allowed"}})
        np.savez({str(tmp_path / "out.npz")!r}, **replay_outputs(batch, z["allowed"], 250))
        """
    )
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    root = Path(__file__).resolve().parent.parent
    subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-c", script],
        check=True,
        env=env,
        cwd=root,
        timeout=300,
    )
    plain = np.load(tmp_path / "out.npz")
    jit = replay_outputs(batch, allowed, 250)
    for name, col in jit.items():
        assert plain[name].dtype == col.dtype, name
        assert (plain[name] == col).all(), name
    # representative: most trackers and their special cases took part
    assert jit["growing-size"][1] > 2
    texts = {REASON_TEXT[c] for c in jit["small-reason"]}
    for wanted in (
        "syn reopens closed connection",
        "table full",
        "udp stream",
        "quotes tracked flow",
        "sctp opens",
        "neighbour discovery / MLD is not tracked",
        "invalid tcp flag combination",
    ):
        assert wanted in texts, wanted
    assert len(texts) >= 45, sorted(texts)
