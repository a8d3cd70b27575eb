"""dataplane/conntrack.py against the real kernel (see tests/ct_lab.py for the topology).

Every scenario sends the same Scapy packets through the kernel (namespace ``r`` forwards them) and
through the emulator, and after every packet compares the ctstate, and the table as
``conntrack -L`` shows it: protocol state, ASSURED, UNREPLIED and the remaining timeout (within 2 s).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NS,
    IPv6,
)
from scapy.layers.sctp import (
    SCTP,
    SCTPChunkCookieAck,
    SCTPChunkCookieEcho,
    SCTPChunkData,
    SCTPChunkInit,
    SCTPChunkInitAck,
    SCTPChunkShutdown,
    SCTPChunkShutdownAck,
    SCTPChunkShutdownComplete,
)

from dataplane.conntrack import Conntrack, CtState
from dataplane.packets import PacketBatch
from tests.ct_lab import A4, A6, B4, B6, Lab
from tests.ct_lab import columns as to_columns

pytestmark = pytest.mark.netns

N, E, R, IV, U = (
    CtState.NEW,
    CtState.ESTABLISHED,
    CtState.RELATED,
    CtState.INVALID,
    CtState.UNTRACKED,
)


@pytest.fixture(scope="module")
def module_lab() -> Iterator[Lab]:
    lab = Lab()
    try:
        lab.up()
        yield lab
    finally:
        lab.close()


@pytest.fixture
def lab(module_lab: Lab) -> Iterator[Lab]:
    module_lab.flush()
    try:
        yield module_lab
    finally:
        module_lab.sysctl("net.netfilter.nf_conntrack_tcp_loose", "1")
        module_lab.flush()


def c2s(flags: str, seq: int, ack: int = 0, data: bytes = b"", sport: int = 40000) -> Any:
    return "a", IP(src=A4, dst=B4) / TCP(
        sport=sport, dport=80, flags=flags, seq=seq, ack=ack, window=64240
    ) / data


def s2c(flags: str, seq: int, ack: int = 0, data: bytes = b"", sport: int = 40000) -> Any:
    return "b", IP(src=B4, dst=A4) / TCP(
        sport=80, dport=sport, flags=flags, seq=seq, ack=ack, window=64240
    ) / data


def replay(
    lab: Lab,
    steps: list[tuple[str, Any, CtState]],
    loose: bool = True,
    pause: dict[int, float] | None = None,
) -> list[list[Any]]:
    """Send each step through kernel and emulator; assert ctstate and table agree after each."""
    ct = Conntrack(loose=loose)
    tables = []
    for n, (side, pkt, expected) in enumerate(steps):
        if pause and n in pause:
            time.sleep(pause[n])
        now = time.monotonic()
        kernel_state = lab.send(side, pkt)
        # r's FORWARD chain accepts everything: allowed, as if policy did
        res = ct.step(PacketBatch.from_columns(**to_columns(pkt, now)), 0, allowed=True)
        where = f"step {n} ({pkt.summary()})"
        assert kernel_state == expected, f"{where}: kernel said {kernel_state.name}"
        assert res.state == kernel_state, f"{where}: emulator {res.state.name} ({res.reason})"
        kernel = sorted(lab.conntrack(), key=lambda k: (k.sport, k.dport, k.src))
        read_at = time.monotonic()
        emu = sorted(ct.entries(now=read_at), key=lambda e: (e.sport, e.dport, e.src))
        assert len(kernel) == len(emu), f"{where}: kernel {kernel} emulator {emu}"
        for k, e in zip(kernel, emu, strict=True):
            assert k.state == e.state, f"{where}: {k} vs {e}"
            assert k.assured == e.assured, f"{where}: assured {k} vs {e}"
            assert k.unreplied == (not e.seen_reply), f"{where}: unreplied {k} vs {e}"
            assert abs(k.timeout - (e.expires - read_at)) <= 2.0, f"{where}: timeout {k} vs {e}"
        tables.append(kernel)
    return tables


def test_tcp_handshake_data_and_close_client_first(lab: Lab) -> None:
    tables = replay(
        lab,
        [
            (*c2s("S", 100), N),
            (*s2c("SA", 500, 101), E),  # the SYN-ACK itself is ESTABLISHED
            (*c2s("A", 101, 501), E),
            (*c2s("PA", 101, 501, b"x" * 100), E),  # unacknowledged data: 300 s
            (*s2c("A", 501, 201), E),  # acked: back to 432000 s
            (*c2s("FA", 201, 501), E),
            (*s2c("A", 501, 202), E),
            (*s2c("FA", 501, 202), E),
            (*c2s("A", 202, 502), E),
        ],
    )
    states = [t[0].state for t in tables]
    assert states == [
        "SYN_SENT",
        "SYN_RECV",
        "ESTABLISHED",
        "ESTABLISHED",
        "ESTABLISHED",
        "FIN_WAIT",
        "CLOSE_WAIT",
        "LAST_ACK",
        "TIME_WAIT",
    ]
    assert [t[0].timeout // 10 for t in tables] == [11, 5, 43199, 29, 43199, 11, 5, 2, 11]


def test_tcp_close_server_first_and_syn_reopens_time_wait(lab: Lab) -> None:
    replay(
        lab,
        [
            (*c2s("S", 100), N),
            (*s2c("SA", 500, 101), E),
            (*c2s("A", 101, 501), E),
            (*s2c("FA", 501, 101), E),
            (*c2s("FA", 101, 502), E),  # FIN_WAIT -> LAST_ACK
            (*s2c("A", 502, 102), E),  # -> TIME_WAIT
            (*c2s("S", 7000), N),  # a new SYN replaces the TIME_WAIT entry
        ],
    )


def test_tcp_invalid_first_packets(lab: Lab) -> None:
    replay(
        lab,
        [
            (*s2c("SA", 500, 101), IV),
            (*c2s("FA", 5, 9, sport=40001), IV),
            (*c2s("R", 5, sport=40002), IV),
            (*c2s("RA", 5, 9, sport=40003), IV),
            (*c2s("", 5, sport=40004), IV),
            (*c2s("F", 5, sport=40005), IV),
            (*c2s("SF", 5, sport=40006), IV),
        ],
    )


def test_tcp_loose_pickup_on_and_off(lab: Lab) -> None:
    replay(lab, [(*c2s("A", 5, 9), N), (*s2c("A", 9, 5), E), (*c2s("PA", 5, 9, b"hi"), E)])
    lab.flush()
    lab.sysctl("net.netfilter.nf_conntrack_tcp_loose", "0")
    replay(lab, [(*c2s("A", 5, 9, sport=40001), IV)], loose=False)


def test_tcp_rst_before_reply_deletes_and_rst_after_closes(lab: Lab) -> None:
    tables = replay(lab, [(*c2s("S", 100), N), (*s2c("RA", 0, 101), E)])
    assert tables[-1] == []
    tables = replay(
        lab,
        [
            (*c2s("S", 100, sport=40001), N),
            (*s2c("SA", 500, 101, sport=40001), E),
            (*c2s("A", 101, 501, sport=40001), E),
            (*c2s("RA", 101, 501, sport=40001), E),
        ],
    )
    assert tables[-1][0].state == "CLOSE" and tables[-1][0].timeout <= 10


def test_tcp_invalid_transitions_and_simultaneous_open(lab: Lab) -> None:
    replay(
        lab,
        [
            (*c2s("S", 100), N),
            (*c2s("A", 101, 1), IV),  # ACK in SYN_SENT: sIV
            (*c2s("FA", 101, 1), IV),  # FIN in SYN_SENT: sIV
            (*s2c("S", 900), E),  # SYN from the other side: SYN_SENT2
            (*c2s("SA", 100, 901), E),
            (*s2c("A", 901, 101), E),
        ],
    )


def test_tcp_syn_retransmit_does_not_renew(lab: Lab) -> None:
    tables = replay(lab, [(*c2s("S", 100), N), (*c2s("S", 100), N)], pause={1: 1.6})
    assert tables[-1][0].timeout <= 118


def test_udp_reply_then_stream(lab: Lab) -> None:
    q = ("a", IP(src=A4, dst=B4) / UDP(sport=5000, dport=53) / b"q")
    r = ("b", IP(src=B4, dst=A4) / UDP(sport=53, dport=5000) / b"r")
    tables = replay(lab, [(*q, N), (*r, E), (*q, E), (*q, E)], pause={3: 2.2})
    assert [(t[0].timeout // 10, t[0].assured) for t in tables] == [
        (2, False),
        (2, False),
        (2, False),
        (11, True),
    ]


def test_icmp_echo_and_unsolicited_reply(lab: Lab) -> None:
    replay(
        lab,
        [
            ("b", IP(src=B4, dst=A4) / ICMP(type=0, id=9, seq=1), IV),
            ("a", IP(src=A4, dst=B4) / ICMP(type=8, id=7, seq=1), N),
            ("b", IP(src=B4, dst=A4) / ICMP(type=0, id=7, seq=1), E),
            ("a", IP(src=A4, dst=B4) / ICMP(type=13, id=8), N),  # timestamp request
            ("b", IP(src=B4, dst=A4) / ICMP(type=9), IV),  # router advertisement: untrackable
        ],
    )


def test_icmp_errors_related_or_invalid(lab: Lab) -> None:
    quoted = IP(src=A4, dst=B4) / UDP(sport=5000, dport=53)
    replay(
        lab,
        [
            ("a", IP(src=A4, dst=B4) / UDP(sport=5000, dport=53) / b"q", N),
            ("b", IP(src=B4, dst=A4) / ICMP(type=3, code=3) / quoted, R),
            ("b", IP(src=B4, dst=A4) / ICMP(type=11, code=0) / quoted, R),
            (
                "b",
                IP(src=B4, dst=A4)
                / ICMP(type=3, code=3)
                / IP(src=A4, dst=B4)
                / UDP(sport=5999, dport=53),
                IV,
            ),
            ("a", IP(src=A4, dst=B4) / ICMP(type=8, id=3), N),
            (
                "b",
                IP(src=B4, dst=A4) / ICMP(type=3, code=1) / IP(src=A4, dst=B4) / ICMP(type=8, id=3),
                R,
            ),
        ],
    )


def test_icmpv6_nd_untracked_echo_and_errors(lab: Lab) -> None:
    quoted = IPv6(src=A6, dst=B6) / UDP(sport=5000, dport=53)
    replay(
        lab,
        [
            ("a", IPv6(src=A6, dst=B6, hlim=255) / ICMPv6ND_NS(tgt=B6), U),
            ("a", IPv6(src=A6, dst=B6) / ICMPv6EchoRequest(id=5), N),
            ("b", IPv6(src=B6, dst=A6) / ICMPv6EchoReply(id=5), E),
            ("b", IPv6(src=B6, dst=A6) / ICMPv6EchoReply(id=6), IV),
            ("a", IPv6(src=A6, dst=B6) / UDP(sport=5000, dport=53) / b"q", N),
            ("b", IPv6(src=B6, dst=A6) / ICMPv6DestUnreach(code=4) / quoted, R),
            (
                "b",
                IPv6(src=B6, dst=A6)
                / ICMPv6DestUnreach(code=4)
                / IPv6(src=A6, dst=B6)
                / UDP(sport=1, dport=2),
                IV,
            ),
        ],
    )


def test_sctp_association_and_shutdown(lab: Lab) -> None:
    def a(chunk: Any, tag: int) -> Any:
        return "a", IP(src=A4, dst=B4) / SCTP(sport=7000, dport=9, tag=tag) / chunk

    def b(chunk: Any, tag: int) -> Any:
        return "b", IP(src=B4, dst=A4) / SCTP(sport=9, dport=7000, tag=tag) / chunk

    tables = replay(
        lab,
        [
            (
                *a(
                    SCTPChunkInit(
                        init_tag=0x1111, a_rwnd=65535, n_out_streams=1, n_in_streams=1, init_tsn=1
                    ),
                    0,
                ),
                N,
            ),
            (
                *b(
                    SCTPChunkInitAck(
                        init_tag=0x2222, a_rwnd=65535, n_out_streams=1, n_in_streams=1, init_tsn=1
                    ),
                    0x1111,
                ),
                E,
            ),
            (*a(SCTPChunkCookieEcho(cookie=b"cookie!!"), 0x2222), E),
            (*b(SCTPChunkCookieAck(), 0x1111), E),
            (*a(SCTPChunkData(tsn=1, data=b"hello"), 0x2222), E),
            (*a(SCTPChunkShutdown(cumul_tsn_ack=1), 0x2222), E),
            (*b(SCTPChunkShutdownAck(), 0x1111), E),
            (*a(SCTPChunkShutdownComplete(), 0x2222), E),
        ],
    )
    assert [t[0].state for t in tables] == [
        "CLOSED",
        "COOKIE_WAIT",
        "COOKIE_ECHOED",
        "ESTABLISHED",
        "ESTABLISHED",
        "SHUTDOWN_SENT",
        "SHUTDOWN_ACK_SENT",
        "CLOSED",
    ]


def test_generic_protocol(lab: Lab) -> None:
    tables = replay(
        lab,
        [
            ("a", IP(src=A4, dst=B4, proto=253) / b"opaque", N),
            ("b", IP(src=B4, dst=A4, proto=253) / b"opaque", E),
        ],
    )
    assert tables[0][0].timeout >= 598
