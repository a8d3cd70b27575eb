"""dataplane.parse: Scapy-built frames through the one parser, every column checked."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import (
    GRE,
    ICMP,
    IP,
    TCP,
    UDP,
    ICMPerror,
    IPerror,
    TCPerror,
    UDPerror,
    fragment,
)
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6PacketTooBig,
    ICMPv6ParamProblem,
    ICMPv6TimeExceeded,
    IPerror6,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    fragment6,
)
from scapy.layers.l2 import ARP, CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q, Ether, Loopback
from scapy.layers.sctp import SCTP, SCTPChunkData, SCTPChunkInit
from scapy.packet import Raw

from dataplane import parse
from dataplane.packets import (
    ACK,
    COLUMNS,
    FRAGMENT,
    MALFORMED,
    NOT_IP,
    OK,
    PSH,
    SYN,
    PacketBatch,
    ip_to_pair,
)
from dataplane.parse import packets_from_scapy, parse_frames

MAC = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}


def eth(**kw):
    return Ether(**MAC, **kw)


def addrs(src: str, dst: str, prefix: str = "") -> dict[str, int]:
    fam, shi, slo = ip_to_pair(src)
    _, dhi, dlo = ip_to_pair(dst)
    out = {f"{prefix}src_hi": shi, f"{prefix}src_lo": slo, f"{prefix}dst_hi": dhi}
    out[f"{prefix}dst_lo"] = dlo
    if not prefix:
        out["family"] = fam
    return out


def default_row(pkt, index: int = 0) -> dict:
    row = {name: 0 for name in COLUMNS}
    row.update(icmp_type=-1, icmp_code=-1, frag_more=False, index=index)
    row["ts"] = float(pkt.time)
    row["length"] = len(bytes(pkt))
    return row


def check(pkt, link_type: int | None = None, **expected) -> dict:
    """Parse one packet and compare every column with the defaults updated by ``expected``."""
    batch = packets_from_scapy([pkt], link_type=link_type)
    row = batch.row(0)
    want = default_row(pkt)
    want.update(expected)
    assert row == want
    return row


def tcp_v4(**extra):
    return {
        **addrs("10.0.0.1", "10.0.0.2"),
        "status": OK,
        "proto": 6,
        "sport": 1234,
        "dport": 80,
        **extra,
    }


# --- link layers ----------------------------------------------------------------------------


def test_ethernet_ipv4_tcp_every_column():
    pkt = (
        eth()
        / IP(src="10.0.0.1", dst="10.0.0.2")
        / TCP(sport=1234, dport=80, flags="PA", seq=1000, ack=2000, window=512)
        / Raw(b"hello")
    )
    check(pkt, **tcp_v4(tcp_flags=PSH | ACK, seq=1000, ack=2000, window=512, payload_len=5))


def test_ip_options_and_ethernet_padding():
    # IHL 6 (one 4-byte option); a 60-byte minimum Ethernet frame pads after the IP packet
    ip = IP(src="10.0.0.1", dst="10.0.0.2", options=b"\x94\x04\x00\x00")
    pkt = eth() / ip / TCP(sport=1234, dport=80, flags="S")
    frame = bytes(pkt) + b"\x00" * 20
    batch = parse_frames(frame, [0], [len(frame)], link_type=1)
    assert batch.status[0] == OK and batch.payload_len[0] == 0 and batch.tcp_flags[0] == SYN
    assert batch.sport[0] == 1234 and batch.length[0] == len(frame)


@pytest.mark.parametrize(
    "tags",
    [
        lambda: Dot1Q(vlan=5),
        lambda: Dot1AD(vlan=7) / Dot1Q(vlan=5),
        lambda: Dot1Q(vlan=9) / Dot1Q(vlan=5),
    ],
    ids=["802.1Q", "QinQ-88a8", "QinQ-8100"],
)
def test_vlan_ipv6_extension_headers_udp(tags):
    pkt = (
        eth()
        / tags()
        / IPv6(src="2001:db8::1", dst="2001:db8::2")
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrRouting()
        / IPv6ExtHdrDestOpt()
        / UDP(sport=5000, dport=53)
        / Raw(b"abcd")
    )
    check(
        pkt,
        **addrs("2001:db8::1", "2001:db8::2"),
        status=OK,
        proto=17,
        sport=5000,
        dport=53,
        payload_len=4,
    )


def test_vlan_9100():
    frame = bytes(eth(type=0x9100)) + bytes(
        Dot1Q(vlan=3) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2)
    )
    b = parse_frames(frame, [0], [len(frame)], link_type=1)
    assert (b.status[0], b.family[0], b.proto[0], b.sport[0], b.dport[0]) == (OK, 4, 17, 1, 2)


def test_cooked_linux_sll_and_sll2():
    v4 = IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1234, dport=80, flags="S")
    check(CookedLinux(proto=0x0800) / v4, **tcp_v4(tcp_flags=SYN, window=8192))
    v6 = IPv6(src="fd00::1", dst="fd00::2") / TCP(sport=4, dport=443, flags="A", seq=7)
    row = check(
        CookedLinuxV2(proto=0x86DD) / v6,
        **addrs("fd00::1", "fd00::2"),
        status=OK,
        proto=6,
        sport=4,
        dport=443,
        tcp_flags=ACK,
        seq=7,
        window=8192,
    )
    assert row["family"] == 6
    # SLL carrying ARP is not IP
    check(CookedLinux(proto=0x0806) / ARP(), status=NOT_IP)


def test_raw_ip_linktypes():
    v4 = IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1234, dport=80, flags="S")
    for lt in (101, 12, 14, 228):
        check(v4, link_type=lt, **tcp_v4(tcp_flags=SYN, window=8192))
    v6 = IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=1, dport=2)
    for lt in (101, 229):
        check(
            v6, link_type=lt, **addrs("fd00::1", "fd00::2"), status=OK, proto=17, sport=1, dport=2
        )
    # LINKTYPE_IPV4 promises IPv4: an IPv6 header there is malformed (Linux ip_rcv drops it)
    assert packets_from_scapy([v6], link_type=228).status[0] == MALFORMED


def test_loopback_null_and_loop():
    v4 = IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1234, dport=80, flags="S")
    check(Loopback(type=2) / v4, **tcp_v4(tcp_flags=SYN, window=8192))  # little-endian AF_INET
    v6 = IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=1, dport=2)
    for family in (24, 28, 30):
        for order in ("big", "little"):
            frame = family.to_bytes(4, order) + bytes(v6)
            for lt in (0, 108):
                b = parse_frames(frame, [0], [len(frame)], link_type=lt)
                assert (b.status[0], b.family[0], b.sport[0]) == (OK, 6, 1)
    frame = (7).to_bytes(4, "big") + bytes(v6)  # AF_OSI
    assert parse_frames(frame, [0], [len(frame)], link_type=0).status[0] == NOT_IP


def test_non_ip_ethertypes():
    check(eth() / ARP(), status=NOT_IP)
    check(eth(type=0x88CC) / Raw(b"\x02\x07" + b"\x00" * 30), status=NOT_IP)  # LLDP
    # 802.3 length field + LLC/SNAP carrying IP: Linux does not receive it as IP
    snap = b"\xaa\xaa\x03\x00\x00\x00\x08\x00" + bytes(IP() / UDP())
    frame = bytes(eth(type=len(snap))) + snap
    assert parse_frames(frame, [0], [len(frame)]).status[0] == NOT_IP


def test_unsupported_link_type_is_malformed():
    frame = bytes(eth() / IP() / UDP())
    assert parse_frames(frame, [0], [len(frame)], link_type=105).status[0] == MALFORMED


# --- transport ------------------------------------------------------------------------------


def test_udp_and_sctp_init():
    check(
        IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=53, dport=33000) / Raw(b"x" * 10),
        **addrs("10.0.0.1", "10.0.0.2"),
        status=OK,
        proto=17,
        sport=53,
        dport=33000,
        payload_len=10,
    )
    init = (
        IP(src="10.0.0.1", dst="10.0.0.2")
        / SCTP(sport=5000, dport=38412, tag=0)
        / SCTPChunkInit(init_tag=0x1234)
    )
    row = check(init, **addrs("10.0.0.1", "10.0.0.2"), status=OK, proto=132, sport=5000, dport=38412,
                sctp_chunk=1, payload_len=len(bytes(init)) - 20 - 12)  # fmt: skip
    assert row["seq"] == 0  # INIT carries verification tag 0
    data = (
        IPv6(src="fd00::1", dst="fd00::2")
        / SCTP(sport=1, dport=2, tag=0xDEADBEEF)
        / SCTPChunkData(data=b"zz")
    )
    check(data, **addrs("fd00::1", "fd00::2"), status=OK, proto=132, sport=1, dport=2, seq=0xDEADBEEF,
          sctp_chunk=0, payload_len=len(bytes(data)) - 40 - 12)  # fmt: skip


def test_icmp_echo_and_v6_echo():
    check(
        IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(type=8, id=77, seq=1) / Raw(b"ping"),
        **addrs("10.0.0.1", "10.0.0.2"),
        status=OK,
        proto=1,
        icmp_type=8,
        icmp_code=0,
        icmp_id=77,
        payload_len=4,
    )
    for cls, typ in ((ICMPv6EchoRequest, 128), (ICMPv6EchoReply, 129)):
        check(
            IPv6(src="fd00::1", dst="fd00::2") / cls(id=99, data=b"ab"),
            **addrs("fd00::1", "fd00::2"),
            status=OK,
            proto=58,
            icmp_type=typ,
            icmp_code=0,
            icmp_id=99,
            payload_len=2,
        )


@pytest.mark.parametrize("typ,code", [(3, 3), (11, 0), (3, 4), (12, 0), (4, 0), (5, 1)])
def test_icmp_errors_quote_inner_tuple(typ, code):
    outer = IP(src="192.0.2.1", dst="10.0.0.1") / ICMP(type=typ, code=code)
    quotes = [
        (IPerror(src="10.0.0.1", dst="10.0.0.9") / UDPerror(sport=4000, dport=53), 17, 4000, 53),
        (IPerror(src="10.0.0.1", dst="10.0.0.9") / TCPerror(sport=4001, dport=80), 6, 4001, 80),
        (IPerror(src="10.0.0.1", dst="10.0.0.9") / ICMPerror(type=8, id=55), 1, 55, 8),
    ]
    for quote, proto, isport, idport in quotes:
        pkt = outer / quote
        check(
            pkt,
            **addrs("192.0.2.1", "10.0.0.1"),
            **addrs("10.0.0.1", "10.0.0.9", prefix="inner_"),
            status=OK,
            proto=1,
            icmp_type=typ,
            icmp_code=code,
            payload_len=len(bytes(quote)),
            inner_proto=proto,
            inner_sport=isport,
            inner_dport=idport,
        )


@pytest.mark.parametrize(
    "error,typ",
    [
        (ICMPv6DestUnreach(code=1), 1),
        (ICMPv6PacketTooBig(mtu=1280), 2),
        (ICMPv6TimeExceeded(), 3),
        (ICMPv6ParamProblem(ptr=6), 4),
    ],
)
def test_icmpv6_errors_quote_inner_tuple(error, typ):
    quote = (
        IPerror6(src="fd00::1", dst="fd00::9")
        / IPv6ExtHdrDestOpt(nh=6)
        / TCPerror(sport=1, dport=22)
    )
    pkt = IPv6(src="fd00::ff", dst="fd00::1") / error / quote
    check(
        pkt,
        **addrs("fd00::ff", "fd00::1"),
        **addrs("fd00::1", "fd00::9", prefix="inner_"),
        status=OK,
        proto=58,
        icmp_type=typ,
        icmp_code=error.code,
        payload_len=len(bytes(quote)),
        inner_proto=6,
        inner_sport=1,
        inner_dport=22,
    )
    echo = IPerror6(src="fd00::1", dst="fd00::9") / ICMPv6EchoRequest(id=42)
    row = packets_from_scapy([IPv6(src="fd00::ff", dst="fd00::1") / error / echo]).row(0)
    assert (row["inner_proto"], row["inner_sport"], row["inner_dport"]) == (58, 42, 128)


def test_icmp_error_with_truncated_quote_is_malformed():
    pkt = (
        IP(src="192.0.2.1", dst="10.0.0.1")
        / ICMP(type=3, code=1)
        / bytes(IPerror(src="10.0.0.1"))[:12]
    )
    row = packets_from_scapy([pkt]).row(0)
    assert row["status"] == MALFORMED and row["icmp_type"] == 3


def test_gre_tunnel_filtered_on_outer_header():
    inner = IP(src="172.16.0.1", dst="172.16.0.2") / TCP(sport=9, dport=10)
    pkt = eth() / IP(src="10.0.0.1", dst="10.0.0.2") / GRE() / inner
    check(
        pkt, **addrs("10.0.0.1", "10.0.0.2"), status=OK, proto=47, payload_len=4 + len(bytes(inner))
    )
    ipip = IP(src="10.0.0.1", dst="10.0.0.2") / inner
    check(ipip, **addrs("10.0.0.1", "10.0.0.2"), status=OK, proto=4, payload_len=len(bytes(inner)))


# --- fragments ------------------------------------------------------------------------------


def test_ipv4_fragments():
    big = IP(src="10.0.0.1", dst="10.0.0.2", id=4242) / UDP(sport=7, dport=8) / Raw(b"q" * 3000)
    frags = fragment(big, fragsize=1000)
    batch = packets_from_scapy(frags)
    assert len(batch) == 4
    first = batch.row(0)
    assert first["status"] == OK and first["sport"] == 7 and first["dport"] == 8
    assert (first["frag_id"], first["frag_offset"], first["frag_more"]) == (4242, 0, True)
    for i in (1, 2, 3):
        row = batch.row(i)
        want = default_row(frags[i], index=i)
        want.update(addrs("10.0.0.1", "10.0.0.2"), status=FRAGMENT, proto=17, frag_id=4242)
        want.update(frag_offset=1000 * i, frag_more=i < 3, payload_len=len(bytes(frags[i])) - 20)
        assert row == want


def test_ipv6_fragments():
    big = (
        IPv6(src="fd00::1", dst="fd00::2")
        / IPv6ExtHdrFragment(id=0xABCDEF01)
        / UDP(sport=7, dport=8)
        / Raw(b"q" * 3000)
    )
    frags = fragment6(big, 1280)
    batch = packets_from_scapy(frags)
    assert len(batch) == 3
    assert batch.status.tolist() == [OK, FRAGMENT, FRAGMENT]
    assert batch.proto.tolist() == [17, 17, 17]
    assert batch.sport.tolist() == [7, 0, 0]
    assert batch.frag_id.tolist() == [0xABCDEF01] * 3
    assert batch.frag_more.tolist() == [True, True, False]
    assert batch.frag_offset[0] == 0 and batch.frag_offset[1] > 0
    assert (batch.family == 6).all()


# --- malformed ------------------------------------------------------------------------------


def _one(frame: bytes, caplen: int | None = None, origlen: int | None = None, lt: int = 1):
    cap = len(frame) if caplen is None else caplen
    return parse_frames(frame, [0], [cap], [cap if origlen is None else origlen], link_type=lt)


def test_malformed_headers():
    good = bytes(eth() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1, dport=2))
    ip = 14
    cases = {
        "ihl 4": good[:ip] + bytes([0x44]) + good[ip + 1 :],
        "version 5": good[:ip] + bytes([0x55]) + good[ip + 1 :],
        "total length > frame": good[: ip + 2] + b"\x05\xdc" + good[ip + 4 :],
        "total length < ihl": good[: ip + 2] + b"\x00\x10" + good[ip + 4 :],
        "tcp data offset 2": good[: ip + 32] + bytes([0x20]) + good[ip + 33 :],
        "short ethernet": good[:10],
        "short ip": good[: ip + 12],
    }
    for name, frame in cases.items():
        assert _one(frame).status[0] == MALFORMED, name


def test_tso_total_length_zero_uses_frame_length():
    good = bytes(
        eth() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1, dport=2) / Raw(b"x" * 100)
    )
    frame = good[:16] + b"\x00\x00" + good[18:]
    b = _one(frame)
    assert b.status[0] == OK and b.payload_len[0] == 100


def test_snaplen_truncated_packet_keeps_headers():
    full = bytes(
        eth() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1, dport=2) / Raw(b"x" * 1000)
    )
    b = _one(full, caplen=68, origlen=len(full))  # tcpdump's old default snaplen
    assert b.status[0] == OK and b.sport[0] == 1 and b.payload_len[0] == 1000
    assert b.length[0] == len(full)
    # but a frame whose wire length really is shorter than the IP total length is malformed
    assert _one(full[:68]).status[0] == MALFORMED
    # and a snaplen that cuts the TCP header leaves nothing to filter on
    assert _one(full, caplen=40, origlen=len(full)).status[0] == MALFORMED


def test_ipv6_extension_chain_past_the_end():
    pkt = bytes(IPv6(src="fd00::1", dst="fd00::2", nh=0, plen=8) / IPv6ExtHdrHopByHop(len=3, nh=17))
    b = _one(pkt, lt=101)
    assert b.status[0] == MALFORMED and b.family[0] == 6


ALL_PACKETS = [
    eth()
    / IP(src="10.0.0.1", dst="10.0.0.2")
    / TCP(sport=1, dport=2, options=[("MSS", 1460)])
    / Raw(b"abc"),
    eth() / Dot1Q() / IPv6() / IPv6ExtHdrHopByHop() / IPv6ExtHdrFragment() / UDP() / Raw(b"x" * 9),
    eth() / IP() / ICMP(type=3) / IPerror() / TCPerror(),
    eth() / IPv6() / ICMPv6DestUnreach() / IPerror6() / UDPerror(),
    eth() / IP() / SCTP() / SCTPChunkInit(),
    eth() / IP(flags="MF", frag=0) / UDP() / Raw(b"z" * 16),
    CookedLinuxV2(proto=0x0800) / IP() / UDP(),
]


@pytest.mark.parametrize("pkt", ALL_PACKETS, ids=range(len(ALL_PACKETS)))
def test_every_truncation_is_handled(pkt):
    """Cut each packet at every length, as a truncated frame (caplen = origlen) and as a
    snaplen-short capture (origlen = full): never an exception, never garbage statuses."""
    frame = bytes(pkt)
    lt = parse.scapy_link_type(pkt)
    n = len(frame)
    cuts = np.arange(n)
    data = frame * n
    offsets = cuts * 0 + np.arange(n) * n
    truncated = parse_frames(data, offsets, cuts, cuts, 0.0, lt)
    assert set(truncated.status.tolist()) <= {NOT_IP, MALFORMED, OK}
    # a frame cut short of its IP length is malformed: nothing after the cut can be trusted
    full = parse_frames(frame, [0], [n], link_type=lt)
    ok_cut = truncated.status == OK
    assert (truncated.sport[ok_cut] == full.sport[0]).all()
    snapped = parse_frames(data, offsets, cuts, np.full(n, n), 0.0, lt)
    assert set(snapped.status.tolist()) <= {MALFORMED, full.status[0]}
    good = snapped.status == full.status[0]
    assert (snapped.sport[good] == full.sport[0]).all() and (
        snapped.proto[good] == full.proto[0]
    ).all()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    frames=st.lists(st.binary(min_size=0, max_size=120), min_size=1, max_size=20),
    lt=st.sampled_from([0, 1, 12, 14, 101, 108, 113, 228, 229, 276, 999]),
)
def test_random_bytes_never_raise(frames, lt):
    lengths = np.array([len(f) for f in frames])
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    b = parse_frames(b"".join(frames), offsets, lengths, lengths + 7, 1.5, lt)
    assert set(b.status.tolist()) <= {OK, NOT_IP, MALFORMED, FRAGMENT}
    assert (b.length == lengths + 7).all() and (b.ts == 1.5).all()


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_mutated_packets_never_raise(data):
    base = bytes(data.draw(st.sampled_from(ALL_PACKETS[:5])))
    pos = data.draw(st.integers(0, len(base) - 1))
    val = data.draw(st.integers(0, 255))
    frame = base[:pos] + bytes([val]) + base[pos + 1 :]
    b = parse_frames(frame, [0], [len(frame)], link_type=1)
    assert b.status[0] in (OK, NOT_IP, MALFORMED, FRAGMENT)


def test_parse_frames_arguments():
    frames = [bytes(eth() / IP() / UDP(sport=i, dport=9)) for i in range(4)]
    data = np.frombuffer(b"".join(frames), dtype=np.uint8)
    lens = [len(f) for f in frames]
    b = parse_frames(
        data, np.arange(4) * lens[0], lens, None, np.arange(4.0), 1, index=[10, 11, 12, 13]
    )
    assert b.sport.tolist() == [0, 1, 2, 3]
    assert b.index.tolist() == [10, 11, 12, 13] and b.ts.tolist() == [0.0, 1.0, 2.0, 3.0]
    assert len(parse_frames(b"", [], [])) == 0
    with pytest.raises(ValueError):
        parse_frames(data, [0, 1], [1], [1, 1])
    with pytest.raises(ValueError):
        packets_from_scapy([Raw(b"x")])
    assert isinstance(b, PacketBatch)


def test_no_float_arithmetic_in_kernels():
    """numba unifies uint64 with int64 into float64: check no kernel signature fell into it."""
    packets_from_scapy(ALL_PACKETS)
    for name in dir(parse):
        fn = getattr(parse, name)
        for sig in getattr(fn, "nopython_signatures", []):
            assert "float" not in str(sig.return_type), (name, sig)


def test_same_result_without_jit(tmp_path):
    """The kernel is also plain Python (NUMBA_DISABLE_JIT=1): both give the same columns."""
    pkts = [
        *ALL_PACKETS,
        IP(src="192.0.2.1", dst="10.0.0.1")
        / ICMP(type=11)
        / IPerror(src="10.0.0.1")
        / UDPerror(sport=5, dport=6),
        IPv6() / ICMPv6PacketTooBig() / IPerror6() / TCPerror(sport=3, dport=4),
        eth() / ARP(),
        Loopback(type=2) / IP() / TCP(),
    ]
    for i, p in enumerate(pkts):
        p.time = 1000.0 + i
    path = tmp_path / "frames.npz"
    frames = [bytes(p) for p in pkts]
    lts = [parse.scapy_link_type(p) for p in pkts]
    np.savez(
        path, data=np.frombuffer(b"".join(frames), np.uint8), lens=[len(f) for f in frames], lts=lts
    )
    script = textwrap.dedent(
        f"""
        import numpy as np
        from dataplane.parse import parse_frames
        z = np.load({str(path)!r})
        lens = z["lens"]
        offs = np.concatenate([[0], np.cumsum(lens)[:-1]])
        b = parse_frames(z["data"], offs, lens, lens, 0.0, z["lts"])
        np.savez({str(tmp_path / "out.npz")!r}, **b.columns())
        """
    )
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=120)
    plain = np.load(tmp_path / "out.npz")
    lens = np.array([len(f) for f in frames])
    jit = parse_frames(
        b"".join(frames), np.concatenate([[0], np.cumsum(lens)[:-1]]), lens, lens, 0.0, lts
    )
    for name, col in jit.columns().items():
        assert plain[name].dtype == col.dtype, name
        assert (plain[name] == col).all(), name
