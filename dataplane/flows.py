"""Scapy flow generators: realistic, deterministic traffic for tests, demos and benchmarks.

Every generator returns a list of Scapy packets ``Ether()/IP|IPv6/...`` with ``.time`` set (float
seconds). Nothing here reads a clock, a random source or a file (``write_pcap`` excepted): times
come from the caller's ``start`` and randomness from a caller-seeded ``random.Random``, so the same
arguments always give the same bytes.

Timing model. Packets are "seen" at one capture point in the middle of the path (the node's FORWARD
hook). A packet's answer is seen one ``rtt`` later (half an RTT to the peer, half back); a host's
back-to-back packets are ``SEGMENT_GAP`` apart (about a 1500-byte frame at 1 Gbit/s). TCP data is
sent in MSS-sized segments limited by the receiver's window; the receiver ACKs every second segment
and the last of each message (Linux's delayed-ACK behaviour under a stream). Retransmitted SYNs
follow Linux: initial RTO 1 s (``TCP_TIMEOUT_INIT``, RFC 6298), doubled on every retry.

Packets are materialised (``Ether(bytes(p))``) before they are returned, so lengths and checksums
are concrete fields and the objects are exactly what a pcap reader would hand back.
"""

from __future__ import annotations

import hashlib
import ipaddress
import random
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6PacketTooBig,
    ICMPv6ParamProblem,
    ICMPv6TimeExceeded,
    IPv6,
)
from scapy.layers.l2 import Ether
from scapy.layers.sctp import (
    SCTP,
    SCTPChunkCookieAck,
    SCTPChunkCookieEcho,
    SCTPChunkData,
    SCTPChunkInit,
    SCTPChunkInitAck,
    SCTPChunkParamECNCapable,
    SCTPChunkParamStateCookie,
    SCTPChunkParamSupportedAddrTypes,
    SCTPChunkSACK,
    SCTPChunkShutdown,
    SCTPChunkShutdownAck,
    SCTPChunkShutdownComplete,
)
from scapy.packet import Packet, Raw
from scapy.utils import wrpcap

from compiler.model import Cluster, Pod

__all__ = [
    "C2S",
    "DEFAULT_PORTS",
    "EPHEMERAL_PORTS",
    "LINUX_SYN_RETRIES",
    "S2C",
    "SCENARIOS",
    "SEGMENT_GAP",
    "TCP_TIMEOUT_INIT",
    "Scenario",
    "all_pairs",
    "connections",
    "endpoints_of",
    "icmp_echo",
    "icmp_error",
    "mac_for",
    "mid_stream",
    "port_scan",
    "random_workload",
    "sctp_association",
    "sort_by_time",
    "syn_backoff",
    "syn_flood",
    "tcp_connection",
    "tcp_syn_only",
    "three_tier",
    "udp_exchange",
    "unsolicited_echo_reply",
    "unsolicited_synack",
    "unsolicited_tcp",
    "write_pcap",
]

# Directions of a data message: from the client (connection opener) or from the server.
C2S, S2C = "c2s", "s2c"

# Linux: TCP_TIMEOUT_INIT (include/net/tcp.h) is 1 s since 2.6.39 (RFC 6298); each SYN retransmit
# doubles it, and net.ipv4.tcp_syn_retries defaults to 6 (7 SYNs over 63 s).
TCP_TIMEOUT_INIT = 1.0
LINUX_SYN_RETRIES = 6
# Linux net.ipv4.ip_local_port_range default.
EPHEMERAL_PORTS = (32768, 60999)
# Back-to-back frames from one host: ~1514 bytes at 1 Gbit/s.
SEGMENT_GAP = 12e-6
# Host processing before an application answers (a reply is seen rtt + this after its request).
_THINK = 50e-6

# Linux defaults for a fresh socket without timestamps: SYN window 64240 (44 * 1460), SYN-ACK 65160,
# window scale 7; afterwards the advertised (scaled) window stays near 502 << 7 = 64256 bytes.
_SYN_WINDOW, _SYNACK_WINDOW, _WSCALE, _WINDOW = 64240, 65160, 7, 502
_TTL = 64
# Largest quoted original in an ICMP error: Linux icmp_send() fits the error in 576 bytes (v4);
# ICMPv6 errors fit in the IPv6 minimum MTU of 1280 (RFC 4443 2.4(c)).
_ICMP4_ERROR_MAX, _ICMP6_ERROR_MAX = 576, 1280

DEFAULT_PORTS: tuple[tuple[int, str], ...] = ((80, "TCP"),)

# ICMPv4 (type, code) -> ICMPv6 (class, code), as SIIT translates them (RFC 7915 4.2), so the
# default "port unreachable" works for both families.
_ICMP4_TO_6: dict[tuple[int, int], tuple[type[Packet], int]] = {
    (3, 0): (ICMPv6DestUnreach, 0),  # net unreachable -> no route
    (3, 1): (ICMPv6DestUnreach, 3),  # host unreachable -> address unreachable
    (3, 3): (ICMPv6DestUnreach, 4),  # port unreachable
    (3, 4): (ICMPv6PacketTooBig, 0),  # fragmentation needed -> packet too big
    (3, 9): (ICMPv6DestUnreach, 1),  # net administratively prohibited
    (3, 10): (ICMPv6DestUnreach, 1),  # host administratively prohibited
    (3, 13): (ICMPv6DestUnreach, 1),  # communication administratively prohibited
    (11, 0): (ICMPv6TimeExceeded, 0),  # TTL exceeded in transit -> hop limit exceeded
    (11, 1): (ICMPv6TimeExceeded, 1),  # fragment reassembly time exceeded
    (12, 0): (ICMPv6ParamProblem, 0),  # parameter problem -> erroneous header field
}

Data = Sequence[tuple[str, int]]


# ----------------------------------------------------------------------------------- addressing


def mac_for(ip: str) -> str:
    """A stable, locally administered unicast MAC for an IP (hashlib, not ``hash()``, which is
    salted per process)."""
    packed = ipaddress.ip_address(ip).packed
    digest = hashlib.sha256(packed).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def _family(ip: str) -> int:
    return ipaddress.ip_address(ip).version


def _stable_int(*parts: object, bits: int = 32) -> int:
    """A deterministic pseudo-random integer from the parts (ISNs, IP IDs, flow labels, tags)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << bits) - 1)


def _frame(
    src: str, dst: str, *upper: Packet | bytes, t: float, ip_id: int = 0, flowlabel: int = 0
) -> Packet:
    """Ether + IPv4/IPv6 header as Linux sends it (TTL/hop limit 64, DF on IPv4) + ``upper``
    layers, materialised (see ``_finish``) and stamped with time ``t``."""
    fs, fd = _family(src), _family(dst)
    if fs != fd:
        raise ValueError(f"address families differ: {src} and {dst}")
    if fs == 4:
        l3 = IP(src=src, dst=dst, ttl=_TTL, flags="DF", id=ip_id & 0xFFFF)
    else:
        l3 = IPv6(src=src, dst=dst, hlim=_TTL, fl=flowlabel & 0xFFFFF)
    # add_payload links layers in place; `a / b` would copy the whole stack at every step, which
    # is a quarter of the cost of building a packet in Scapy.
    top = Ether(src=mac_for(src), dst=mac_for(dst))
    layer = top
    for nxt in (l3, *upper):
        nxt = Raw(nxt) if isinstance(nxt, bytes) else nxt
        layer.add_payload(nxt)
        layer = nxt
    return _finish(top, t)


def _finish(pkt: Packet, t: float) -> Packet:
    """Materialise to wire bytes and back so every length and checksum is a concrete field (and
    later ``bytes()`` calls hit Scapy's raw cache), then stamp the time (dissection drops it)."""
    out = Ether(bytes(pkt))
    out.time = float(t)
    return out


def sort_by_time(packets: Iterable[Packet]) -> list[Packet]:
    """Stable sort on ``.time``: packets of one flow keep their causal order on equal times."""
    return sorted(packets, key=lambda p: float(p.time))


def syn_backoff(retries: int, start: float = 0.0) -> list[float]:
    """Send times of a SYN and its ``retries`` retransmits: start, +1, +3, +7, ... (RTO doubling
    from ``TCP_TIMEOUT_INIT``)."""
    times, t, rto = [start], start, TCP_TIMEOUT_INIT
    for _ in range(retries):
        t += rto
        times.append(t)
        rto *= 2
    return times


def _payload(offset: int, n: int) -> bytes:
    """n printable bytes of a stream starting at stream offset ``offset`` (a retransmission of the
    same range would carry the same bytes)."""
    alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789"
    k = len(alphabet)
    start = offset % k
    reps = (start + n) // k + 1
    return (alphabet * reps)[start : start + n]


# ------------------------------------------------------------------------------------------ TCP


@dataclass
class _TcpEnd:
    """One end of a TCP connection: what it has sent and what it has received."""

    ip: str
    port: int
    snd_nxt: int  # next sequence number to send (mod 2**32)
    rcv_nxt: int  # next sequence number expected from the peer
    ip_id: int
    flowlabel: int
    mss: int
    # Flow control across the whole connection, in sequence space (data bytes and FIN): how
    # much this end has sent, and the peer's ACKs as (time seen in the capture, amount acked).
    sent: int = 0
    acks_in: list[tuple[float, int]] = field(default_factory=list)

    def wait_for_window(self, t: float, extra: int, rtt: float) -> float:
        """When ``extra`` more sequence numbers fit in the peer's window: Linux sends nothing,
        FIN included (tcp_snd_wnd_test), past the last ACK it has seen plus the window."""
        need = self.sent + extra - (_WINDOW << _WSCALE)
        if need <= 0:
            return t
        ack_t = next(at for at, acked in self.acks_in if acked >= need)
        return max(t, ack_t + rtt)

    def packet(self, peer: _TcpEnd, flags: str, t: float, payload: bytes = b"", **tcp) -> Packet:
        seq = tcp.pop("seq", self.snd_nxt)
        ack = self.rcv_nxt if "A" in flags else 0
        segment = TCP(
            sport=self.port,
            dport=peer.port,
            seq=seq & 0xFFFFFFFF,
            ack=ack & 0xFFFFFFFF,
            flags=flags,
            window=tcp.pop("window", _WINDOW),
            **tcp,
        )
        upper = (segment, payload) if payload else (segment,)
        pkt = _frame(self.ip, peer.ip, *upper, t=t, ip_id=self.ip_id, flowlabel=self.flowlabel)
        self.ip_id += 1
        return pkt


def _tcp_ends(
    client_ip: str,
    server_ip: str,
    sport: int,
    dport: int,
    start: float,
    isn: int | None,
    server_isn: int | None,
) -> tuple[_TcpEnd, _TcpEnd]:
    # Linux's ISN is a keyed hash of the tuple plus a clock; a stable hash of the same inputs gives
    # realistic-looking, reproducible ISNs when the caller does not pick them.
    key = (client_ip, server_ip, sport, dport, round(start, 9))
    c_isn = _stable_int("isn", *key) if isn is None else isn & 0xFFFFFFFF
    s_isn = _stable_int("server-isn", *key) if server_isn is None else server_isn & 0xFFFFFFFF
    # IPv4 payload after 20 + 20 header bytes; IPv6 after 40 + 20.
    mss = 1460 if _family(client_ip) == 4 else 1440
    fl = _stable_int("flowlabel", *key, bits=20)
    client = _TcpEnd(client_ip, sport, c_isn, s_isn, _stable_int("ipid-c", *key, bits=16), fl, mss)
    server = _TcpEnd(server_ip, dport, s_isn, c_isn, _stable_int("ipid-s", *key, bits=16), fl, mss)
    return client, server


def _syn_options(mss: int) -> list[tuple[str, object]]:
    # Linux's layout without timestamps: MSS, NOP, NOP, SACK-permitted, NOP, window scale.
    return [
        ("MSS", mss),
        ("NOP", None),
        ("NOP", None),
        ("SAckOK", b""),
        ("NOP", None),
        ("WScale", _WSCALE),
    ]


def _send_message(
    out: list[Packet],
    snd: _TcpEnd,
    rcv: _TcpEnd,
    nbytes: int,
    t0: float,
    rtt: float,
    stream_offset: int,
) -> float:
    """Send ``nbytes`` from ``snd`` to ``rcv`` starting at ``t0``; return the last segment's time.

    Segments go back to back while the receiver's window allows; otherwise the sender waits for
    the ACK that opens it (seen rtt after the ACK). The receiver ACKs every second segment and
    the last one, each seen rtt after the segment it acknowledges.
    """
    sent = 0
    t = t0
    n_seg = 0
    while sent < nbytes:
        size = min(snd.mss, nbytes - sent)
        # all of the segment must fit in the window above the latest ACK the sender has seen
        t = snd.wait_for_window(t, size, rtt)
        last = sent + size == nbytes
        flags = "PA" if last else "A"
        out.append(snd.packet(rcv, flags, t, _payload(stream_offset + sent, size)))
        snd.snd_nxt = (snd.snd_nxt + size) & 0xFFFFFFFF
        snd.sent += size
        sent += size
        n_seg += 1
        if n_seg % 2 == 0 or last:
            rcv.rcv_nxt = snd.snd_nxt
            ack_t = t + rtt
            out.append(rcv.packet(snd, "A", ack_t))
            snd.acks_in.append((ack_t, snd.sent))
        last_t = t
        t += SEGMENT_GAP
    return last_t


def _exchange(
    out: list[Packet],
    client: _TcpEnd,
    server: _TcpEnd,
    data: Data,
    t: float,
    rtt: float,
    last_sender: str | None,
) -> tuple[float, str | None]:
    """Send the messages of ``data`` in order. Returns (time the next client action may start,
    direction of the last message)."""
    offsets = {C2S: 0, S2C: 0}
    for direction, nbytes in data:
        if direction not in (C2S, S2C):
            raise ValueError(f"data direction must be {C2S!r} or {S2C!r}, not {direction!r}")
        if nbytes <= 0:
            continue
        snd, rcv = (client, server) if direction == C2S else (server, client)
        # A reply to the other side's message starts once that message arrived (rtt after its
        # last segment was seen, plus the application's think time); a follow-up message from
        # the same side starts right away.
        if last_sender is not None and last_sender != direction:
            t = t + rtt + _THINK
        t = _send_message(out, snd, rcv, nbytes, t, rtt, offsets[direction]) + SEGMENT_GAP
        offsets[direction] += nbytes
        last_sender = direction
    return t, last_sender


def tcp_connection(
    client_ip: str,
    server_ip: str,
    sport: int,
    dport: int,
    *,
    start: float,
    rtt: float = 0.001,
    data: Data = ((C2S, 120), (S2C, 600)),
    close: str = "fin",
    retransmit_syn: int = 0,
    isn: int | None = None,
    server_isn: int | None = None,
) -> list[Packet]:
    """A complete TCP connection: handshake, data messages (each direction ACKed), then close.

    ``data`` is a list of ``(C2S | S2C, nbytes)`` messages, sent in order. ``close`` is ``"fin"``
    (client FIN, server ACK, server FIN, client ACK), ``"rst"`` (client aborts with RST/ACK) or
    ``"none"`` (the connection stays open). ``retransmit_syn`` SYNs precede the answered one, with
    the same ISN at Linux's 1 s, 2 s, 4 s ... backoff. ISNs default to a stable hash of the tuple.
    """
    if rtt <= 0:
        raise ValueError("rtt must be positive")
    if close not in ("fin", "rst", "none"):
        raise ValueError(f"close must be 'fin', 'rst' or 'none', not {close!r}")
    client, server = _tcp_ends(client_ip, server_ip, sport, dport, start, isn, server_isn)
    out: list[Packet] = []

    syn_times = syn_backoff(retransmit_syn, start)
    for t in syn_times:
        # Each retransmit repeats the same ISN: Linux resends the very same SYN.
        out.append(
            client.packet(server, "S", t, window=_SYN_WINDOW, options=_syn_options(client.mss))
        )
    client.snd_nxt = (client.snd_nxt + 1) & 0xFFFFFFFF  # the SYN takes one sequence number
    server.rcv_nxt = client.snd_nxt
    t = syn_times[-1] + rtt
    out.append(
        server.packet(client, "SA", t, window=_SYNACK_WINDOW, options=_syn_options(server.mss))
    )
    server.snd_nxt = (server.snd_nxt + 1) & 0xFFFFFFFF
    client.rcv_nxt = server.snd_nxt
    t += rtt
    out.append(client.packet(server, "A", t))
    t += SEGMENT_GAP

    t, last = _exchange(out, client, server, data, t, rtt, C2S)
    _close(out, client, server, t, rtt, close, last)
    return sort_by_time(out)


def _close(
    out: list[Packet],
    client: _TcpEnd,
    server: _TcpEnd,
    t: float,
    rtt: float,
    close: str,
    last_sender: str | None,
) -> None:
    """Append the client-initiated close (``t`` = when the client may act next)."""
    if close == "none":
        return
    if last_sender == S2C:
        # The client closes after the server's last data arrived (and it ACKed it, rtt later).
        t += rtt
    if close == "rst":
        # An abortive close (SO_LINGER 0 or unread data) sends RST|ACK at snd_nxt; no answer.
        out.append(client.packet(server, "RA", t))
        return
    t = client.wait_for_window(t, 1, rtt)  # a FIN takes one sequence number of the window
    out.append(client.packet(server, "FA", t))
    client.snd_nxt = (client.snd_nxt + 1) & 0xFFFFFFFF
    client.sent += 1
    server.rcv_nxt = client.snd_nxt
    t += rtt
    out.append(server.packet(client, "A", t))
    client.acks_in.append((t, client.sent))
    t = server.wait_for_window(t + _THINK, 1, rtt)  # the server reads EOF, then closes its side
    out.append(server.packet(client, "FA", t))
    server.snd_nxt = (server.snd_nxt + 1) & 0xFFFFFFFF
    client.rcv_nxt = server.snd_nxt
    out.append(client.packet(server, "A", t + rtt))


def tcp_syn_only(
    client: str,
    server: str,
    sport: int,
    dport: int,
    start: float,
    retries: int = LINUX_SYN_RETRIES,
    *,
    isn: int | None = None,
) -> list[Packet]:
    """An unanswered connection attempt (a silently dropped SYN): the SYN and ``retries``
    retransmits at Linux's backoff (default 6 retries: 0, 1, 3, 7, 15, 31, 63 s)."""
    c, _ = _tcp_ends(client, server, sport, dport, start, isn, None)
    peer = _TcpEnd(server, dport, 0, 0, 0, 0, c.mss)
    return [
        c.packet(peer, "S", t, window=_SYN_WINDOW, options=_syn_options(c.mss))
        for t in syn_backoff(retries, start)
    ]


def mid_stream(
    client: str,
    server: str,
    sport: int,
    dport: int,
    start: float,
    *,
    rtt: float = 0.001,
    data: Data = ((C2S, 200), (S2C, 1000)),
    close: str = "none",
    isn: int | None = None,
    server_isn: int | None = None,
) -> list[Packet]:
    """Packets of an established connection whose handshake is not in the capture (the capture
    started late, or conntrack lost the entry): data and ACKs only, consistent with each other."""
    c, s = _tcp_ends(client, server, sport, dport, start, isn, server_isn)
    out: list[Packet] = []
    t, last = _exchange(out, c, s, data, start, rtt, None)
    _close(out, c, s, t, rtt, close, last)
    return sort_by_time(out)


def unsolicited_tcp(
    src: str, dst: str, sport: int, dport: int, start: float, flags: str, *, seq: int | None = None
) -> list[Packet]:
    """One TCP segment out of nowhere with the given flags (``"SA"``, ``"F"``, ``"R"``, ``""``):
    what conntrack must call INVALID as a first packet."""
    seq = (
        _stable_int("unsolicited", src, dst, sport, dport, round(start, 9)) if seq is None else seq
    )
    ack = _stable_int("unsolicited-ack", src, dst, sport, dport, round(start, 9))
    end = _TcpEnd(src, sport, seq, ack, _stable_int("ipid", src, start, bits=16), 0, 0)
    peer = _TcpEnd(dst, dport, 0, 0, 0, 0, 0)
    return [end.packet(peer, flags, start)]


def unsolicited_synack(
    client: str, server: str, sport: int, dport: int, start: float
) -> list[Packet]:
    """A SYN-ACK from ``server:dport`` to ``client:sport`` answering a SYN that was never sent."""
    return unsolicited_tcp(server, client, dport, sport, start, "SA")


# ------------------------------------------------------------------------------------------ UDP


def udp_exchange(
    client: str,
    server: str,
    sport: int,
    dport: int,
    start: float,
    requests: int = 1,
    reply: bool = True,
    payload: bytes = b"npemu-probe\n",
    *,
    rtt: float = 0.001,
    interval: float = 0.1,
    reply_payload: bytes | None = None,
) -> list[Packet]:
    """``requests`` datagrams ``interval`` apart, each answered rtt later (an echo of the request
    unless ``reply_payload`` is given) when ``reply``."""
    key = (client, server, sport, dport, round(start, 9))
    c_id, s_id = _stable_int("ipid-c", *key, bits=16), _stable_int("ipid-s", *key, bits=16)
    fl = _stable_int("flowlabel", *key, bits=20)
    answer = payload if reply_payload is None else reply_payload
    out = []
    for i in range(requests):
        t = start + i * interval
        udp = UDP(sport=sport, dport=dport)
        out.append(_frame(client, server, udp, payload, t=t, ip_id=c_id + i, flowlabel=fl))
        if reply:
            udp = UDP(sport=dport, dport=sport)
            t_reply = t + rtt + _THINK
            out.append(_frame(server, client, udp, answer, t=t_reply, ip_id=s_id + i, flowlabel=fl))
    return sort_by_time(out)


# ----------------------------------------------------------------------------------------- ICMP


def _ping_data(t: float) -> bytes:
    """Linux ping's 56 data bytes: a struct timeval (two little-endian 64-bit words) of the send
    time, then the fill pattern 0x10, 0x11, ..."""
    sec = int(t)
    usec = round((t - sec) * 1e6)
    return struct.pack("<qq", sec, usec) + bytes(range(0x10, 0x10 + 40))


def _echo(
    src: str, dst: str, ident: int, seq: int, data: bytes, reply: bool, ip_id: int, t: float
) -> Packet:
    if _family(src) == 4:
        icmp = ICMP(type=0 if reply else 8, id=ident, seq=seq)
        return _frame(src, dst, icmp, data, t=t, ip_id=ip_id)
    cls = ICMPv6EchoReply if reply else ICMPv6EchoRequest
    return _frame(src, dst, cls(id=ident, seq=seq, data=data), t=t)


def icmp_echo(
    a: str,
    b: str,
    start: float,
    count: int = 1,
    ident: int = 1,
    reply: bool = True,
    *,
    rtt: float = 0.001,
    interval: float = 1.0,
) -> list[Packet]:
    """``ping -c count b`` from a: echo requests (ICMP or ICMPv6 by family) one ``interval`` apart,
    sequence numbers from 1, each answered rtt later when ``reply``."""
    base = _stable_int("ipid", a, b, ident, bits=16)
    out = []
    for i in range(count):
        t = start + i * interval
        data = _ping_data(t)
        out.append(_echo(a, b, ident, i + 1, data, False, base + i, t))
        if reply:
            out.append(_echo(b, a, ident, i + 1, data, True, base + 0x8000 + i, t + rtt))
    return sort_by_time(out)


def unsolicited_echo_reply(
    a: str, b: str, start: float, ident: int = 1, seq: int = 1
) -> list[Packet]:
    """An echo reply from b to a for a request a never sent (INVALID for conntrack)."""
    return [_echo(b, a, ident, seq, _ping_data(start), True, 0, start)]


def icmp_error(
    reporter_ip: str,
    original_packet: Packet,
    type: int = 3,
    code: int = 3,
    *,
    delay: float = 0.0005,
    mtu: int = 1500,
) -> list[Packet]:
    """An ICMP error about ``original_packet`` from ``reporter_ip`` back to its source.

    ``type``/``code`` are ICMPv4 values (default: port unreachable); for an IPv6 original they are
    translated to ICMPv6 as SIIT does (3/3 -> destination unreachable / port unreachable). The
    quote is the original IP packet from its header on, as much as fits in 576 bytes (IPv4, as
    Linux's icmp_send) or 1280 bytes (IPv6, RFC 4443): always the full header plus the first 8
    transport bytes that carry the ports. ``mtu`` fills "fragmentation needed"/"packet too big".
    """
    if IP in original_packet:
        inner = original_packet[IP]
        quote = bytes(inner)[: _ICMP4_ERROR_MAX - 20 - 8]
        icmp = ICMP(type=type, code=code, nexthopmtu=mtu if (type, code) == (3, 4) else 0)
        ip_id = _stable_int("ipid", reporter_ip, bits=16)
        upper = (icmp, quote)
    elif IPv6 in original_packet:
        inner = original_packet[IPv6]
        try:
            cls, code6 = _ICMP4_TO_6[(type, code)]
        except KeyError:
            raise ValueError(f"no ICMPv6 equivalent of ICMP type {type} code {code}") from None
        quote = bytes(inner)[: _ICMP6_ERROR_MAX - 40 - 8]
        icmp6 = cls(mtu=mtu) if cls is ICMPv6PacketTooBig else cls(code=code6)
        ip_id, upper = 0, (icmp6, quote)
    else:
        raise ValueError("original_packet has no IP or IPv6 layer")
    t = float(original_packet.time) + delay
    return [_frame(reporter_ip, inner.src, *upper, t=t, ip_id=ip_id)]


# ----------------------------------------------------------------------------------------- SCTP


def sctp_association(
    client: str,
    server: str,
    sport: int,
    dport: int,
    start: float,
    *,
    rtt: float = 0.001,
    messages: Data = ((C2S, 100),),
    tags: tuple[int, int] | None = None,
) -> list[Packet]:
    """A whole SCTP association (RFC 9260): INIT, INIT-ACK, COOKIE-ECHO, COOKIE-ACK, one DATA per
    message each SACKed by the peer, SHUTDOWN, SHUTDOWN-ACK, SHUTDOWN-COMPLETE.

    Verification tags: INIT carries 0; every later packet carries the receiver's Initiate Tag
    (the client's tag on server->client packets, the server's on client->server ones).
    ``tags`` = (client tag, server tag); by default a stable hash of the tuple (never 0).
    """
    key = (client, server, sport, dport, round(start, 9))
    if tags is None:
        tags = (_stable_int("tag-c", *key) or 1, _stable_int("tag-s", *key) or 1)
    c_tag, s_tag = tags
    c_tsn, s_tsn = _stable_int("tsn-c", *key), _stable_int("tsn-s", *key)
    fl = _stable_int("flowlabel", *key, bits=20)
    ids = {"c": _stable_int("ipid-c", *key, bits=16), "s": _stable_int("ipid-s", *key, bits=16)}
    addr_types = [5, 6] if _family(client) == 4 else [6]  # 5 = IPv4, 6 = IPv6 (RFC 9260 3.3.2.1)
    cookie = hashlib.sha256(repr(("cookie", *key, c_tag, s_tag)).encode()).digest()
    rwnd = 106496  # Linux's default a_rwnd

    out: list[Packet] = []

    def send(from_client: bool, vtag: int, chunk: Packet, t: float) -> None:
        side = "c" if from_client else "s"
        src, dst = (client, server) if from_client else (server, client)
        sp, dp = (sport, dport) if from_client else (dport, sport)
        header = SCTP(sport=sp, dport=dp, tag=vtag)
        out.append(_frame(src, dst, header, chunk, t=t, ip_id=ids[side], flowlabel=fl))
        ids[side] += 1

    t = start
    send(
        True,
        0,
        SCTPChunkInit(
            init_tag=c_tag,
            a_rwnd=rwnd,
            n_out_streams=10,
            n_in_streams=65535,
            init_tsn=c_tsn,
            # Supported Address Types first: its padding (one type = 6 bytes) is then inside the
            # chunk length, which RFC 9260 3.2 counts for every parameter but the last.
            params=[
                SCTPChunkParamSupportedAddrTypes(addr_type_list=addr_types),
                SCTPChunkParamECNCapable(),
            ],
        ),
        t,
    )
    t += rtt
    send(
        False,
        c_tag,
        SCTPChunkInitAck(
            init_tag=s_tag,
            a_rwnd=rwnd,
            n_out_streams=10,
            n_in_streams=10,
            init_tsn=s_tsn,
            params=[SCTPChunkParamStateCookie(cookie=cookie), SCTPChunkParamECNCapable()],
        ),
        t,
    )
    t += rtt
    send(True, s_tag, SCTPChunkCookieEcho(cookie=cookie), t)
    t += rtt
    send(False, c_tag, SCTPChunkCookieAck(), t)

    next_tsn = {True: c_tsn, False: s_tsn}  # keyed by "from client"
    ssn = {True: 0, False: 0}
    for direction, nbytes in messages:
        if direction not in (C2S, S2C):
            raise ValueError(f"message direction must be {C2S!r} or {S2C!r}, not {direction!r}")
        from_client = direction == C2S
        t += rtt
        data = SCTPChunkData(
            beginning=1,
            ending=1,
            tsn=next_tsn[from_client] & 0xFFFFFFFF,
            stream_id=0,
            stream_seq=ssn[from_client],
            proto_id=0,
            data=_payload(0, nbytes),
        )
        send(from_client, s_tag if from_client else c_tag, data, t)
        t += rtt
        sack = SCTPChunkSACK(
            cumul_tsn_ack=next_tsn[from_client] & 0xFFFFFFFF, a_rwnd=rwnd, n_gap_ack=0, n_dup_tsn=0
        )
        send(not from_client, c_tag if from_client else s_tag, sack, t)
        next_tsn[from_client] += 1
        ssn[from_client] = (ssn[from_client] + 1) & 0xFFFF

    t += rtt
    # SHUTDOWN's cumulative TSN ack is the last TSN the client received from the server.
    send(True, s_tag, SCTPChunkShutdown(cumul_tsn_ack=(next_tsn[False] - 1) & 0xFFFFFFFF), t)
    t += rtt
    send(False, c_tag, SCTPChunkShutdownAck(), t)
    t += rtt
    # T bit clear: the tag is the peer's own (we have a TCB).
    send(True, s_tag, SCTPChunkShutdownComplete(TCB=0), t)
    return out


# ------------------------------------------------------------------------------------ scenarios


class Scenario(Protocol):
    def __call__(
        self, cluster: Cluster, *, seed: int, ports: list[tuple[int, str]], externals: list[str]
    ) -> list[Packet]: ...


def endpoints_of(cluster: Cluster, externals: Iterable[str] = ()) -> list[tuple[str, str]]:
    """(name, ip) for every pod IP (manifest order, one entry per IP; hostNetwork pods sharing a
    node IP counted once), then the external IPs. Pods that finished have no live IP."""
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    for pod in cluster.pods:
        if pod.phase in ("Succeeded", "Failed"):
            continue
        for ip in pod.ips:
            canon = str(ipaddress.ip_address(ip))
            if canon not in seen:
                seen.add(canon)
                out.append((pod.key, canon))
    for ip in externals:
        canon = str(ipaddress.ip_address(ip))
        if canon not in seen:
            seen.add(canon)
            out.append((canon, canon))
    return out


class _PortPicker:
    """Ephemeral source ports as Linux hands them out: random in ip_local_port_range, not reused
    by one source address until the range runs out (then reused only towards other tuples)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: dict[str, set[int]] = {}
        self.tuples: set[tuple[str, int, str, int, str]] = set()

    def pick(self, src: str, dst: str, dport: int, proto: str) -> int:
        lo, hi = EPHEMERAL_PORTS
        used = self.used.setdefault(src, set())
        fresh = len(used) < hi - lo + 1
        while True:
            port = self.rng.randint(lo, hi)
            if port not in used if fresh else (src, port, dst, dport, proto) not in self.tuples:
                break
        used.add(port)
        self.tuples.add((src, port, dst, dport, proto))
        return port


def _flow(
    proto: str,
    src: str,
    dst: str,
    sport: int,
    dport: int,
    start: float,
    rng: random.Random,
    *,
    data: Data = ((C2S, 120), (S2C, 600)),
    close: str = "fin",
) -> list[Packet]:
    """One request/response of the protocol; ISNs and tags come from the scenario's rng so that
    a different seed changes the bytes."""
    proto = proto.upper()
    if proto == "TCP":
        return tcp_connection(
            src,
            dst,
            sport,
            dport,
            start=start,
            data=data,
            close=close,
            isn=rng.getrandbits(32),
            server_isn=rng.getrandbits(32),
        )
    if proto == "UDP":
        # one datagram each way, kept under a 1500-byte MTU so nothing is IP-fragmented
        req = next((n for d, n in data if d == C2S), 64)
        rep = next((n for d, n in data if d == S2C), 64)
        return udp_exchange(
            src,
            dst,
            sport,
            dport,
            start,
            payload=_payload(0, min(max(req, 1), 1400)),
            reply_payload=_payload(0, min(max(rep, 1), 1400)),
        )
    if proto == "SCTP":
        tags = (rng.getrandbits(32) or 1, rng.getrandbits(32) or 1)
        return sctp_association(
            src,
            dst,
            sport,
            dport,
            start,
            tags=tags,
            messages=[(d, min(n, 1400)) for d, n in data if n > 0],
        )
    if proto in ("ICMP", "ICMPV6"):
        return icmp_echo(src, dst, start, count=1, ident=sport)
    raise ValueError(f"unknown protocol {proto!r} (TCP, UDP, SCTP or ICMP)")


def all_pairs(
    cluster: Cluster,
    ports: Sequence[tuple[int, str]] = DEFAULT_PORTS,
    start: float = 0.0,
    *,
    externals: Sequence[str] = (),
    seed: int = 0,
    spacing: float = 0.01,
) -> list[Packet]:
    """One complete connection attempt per ordered pair of distinct endpoints (pods, and the given
    external IPs as clients and servers of pods; never external to external), per port and per
    address family both share. Attempts start ``spacing`` apart; the replay decides what passes.
    A port's protocol may also be ``ICMP`` (one echo, the port ignored)."""
    rng = random.Random(seed)
    picker = _PortPicker(rng)
    external = {str(ipaddress.ip_address(ip)) for ip in externals}
    eps = endpoints_of(cluster, externals)
    out: list[Packet] = []
    t = start
    for name_a, a in eps:
        for name_b, b in eps:
            if name_a == name_b or _family(a) != _family(b) or (a in external and b in external):
                continue
            for port, proto in ports:
                sport = picker.pick(a, b, port, proto)
                out.extend(_flow(proto, a, b, sport, port, t, rng))
                t += spacing
    return sort_by_time(out)


def _heavy_tailed(rng: random.Random, minimum: int, cap: int, alpha: float = 1.2) -> int:
    """Pareto-sized byte count: most small, a few huge (web object sizes; alpha ~1.1-1.3)."""
    return int(min(cap, minimum * rng.paretovariate(alpha)))


def random_workload(
    cluster: Cluster,
    n_flows: int,
    seed: int,
    ports: Sequence[tuple[int, str]] = DEFAULT_PORTS,
    *,
    externals: Sequence[str] = (),
    start: float = 0.0,
    mean_gap: float = 0.005,
    max_bytes: int = 256 * 1024,
) -> list[Packet]:
    """``n_flows`` flows between random endpoint pairs on random ports of ``ports``: Poisson
    arrivals (exponential gaps, mean ``mean_gap``), Pareto-sized requests and responses, mostly
    FIN-closed with a few resets and a few left open."""
    rng = random.Random(seed)
    picker = _PortPicker(rng)
    external = {str(ipaddress.ip_address(ip)) for ip in externals}
    eps = endpoints_of(cluster, externals)
    pairs = [
        (a, b)
        for na, a in eps
        for nb, b in eps
        if na != nb and _family(a) == _family(b) and not (a in external and b in external)
    ]
    if not pairs:
        raise ValueError("the cluster needs at least two endpoints of one address family")
    out: list[Packet] = []
    t = start
    for _ in range(n_flows):
        t += rng.expovariate(1.0 / mean_gap)
        a, b = rng.choice(pairs)
        port, proto = rng.choice(list(ports))
        data = [(C2S, _heavy_tailed(rng, 80, 4096)), (S2C, _heavy_tailed(rng, 300, max_bytes))]
        close = rng.choices(("fin", "rst", "none"), weights=(90, 5, 5))[0]
        sport = picker.pick(a, b, port, proto)
        out.extend(_flow(proto, a, b, sport, port, t, rng, data=data, close=close))
    return sort_by_time(out)


def port_scan(
    src: str,
    dst: str,
    ports: Iterable[int],
    start: float,
    *,
    open_ports: Iterable[int] | None = None,
    seed: int = 0,
    interval: float = 0.001,
    rtt: float = 0.001,
) -> list[Packet]:
    """A SYN scan (``nmap -sS``): one SYN per port from one source port, ``interval`` apart.

    With ``open_ports`` the target answers like a real host: SYN-ACK on an open port (then the
    scanner's RST, as nmap's raw socket never completes the handshake), RST-ACK on a closed one.
    Without it only the probes are generated.
    """
    rng = random.Random(seed)
    sport = rng.randint(*EPHEMERAL_PORTS)
    opened = None if open_ports is None else set(open_ports)
    out: list[Packet] = []
    for i, port in enumerate(ports):
        t = start + i * interval
        c, s = _tcp_ends(src, dst, sport, port, t, rng.getrandbits(32), rng.getrandbits(32))
        out.append(c.packet(s, "S", t, window=1024, options=[("MSS", 1460)]))
        if opened is None:
            continue
        c.snd_nxt += 1
        s.rcv_nxt = c.snd_nxt
        if port in opened:
            out.append(
                s.packet(c, "SA", t + rtt, window=_SYNACK_WINDOW, options=_syn_options(s.mss))
            )
            out.append(c.packet(s, "R", t + 2 * rtt, window=0))
        else:
            out.append(s.packet(c, "RA", t + rtt, seq=0, window=0))
    return sort_by_time(out)


def syn_flood(
    src_ips: Sequence[str],
    dst: str,
    dport: int,
    n: int,
    start: float,
    *,
    seed: int = 0,
    rate: float = 10000.0,
) -> list[Packet]:
    """``n`` SYNs at ``rate`` per second from random ports of ``src_ips`` (spoofed sources, taken
    in random order), random ISNs, never answered: fills conntrack with SYN_SENT entries."""
    if not src_ips:
        raise ValueError("syn_flood needs at least one source IP")
    rng = random.Random(seed)
    out = []
    for i in range(n):
        src = rng.choice(list(src_ips))
        sport = rng.randint(1024, 65535)
        t = start + i / rate
        c, s = _tcp_ends(src, dst, sport, dport, t, rng.getrandbits(32), 0)
        out.append(c.packet(s, "S", t, window=_SYN_WINDOW, options=_syn_options(c.mss)))
    return out


THREE_TIER_CLIENT = "203.0.113.10"
THREE_TIER_BACKUP = "192.168.5.10"


def _tier(cluster: Cluster, namespace: str, app: str) -> list[Pod]:
    pods = [
        p
        for p in cluster.pods
        if p.namespace == namespace and p.label_dict.get("app") == app and p.ips
    ]
    if not pods:
        raise ValueError(
            f"three-tier needs a pod labelled app={app} with an IP in namespace {namespace}"
        )
    return pods


def three_tier(
    cluster: Cluster,
    *,
    seed: int = 0,
    start: float = 0.0,
    client_ip: str = THREE_TIER_CLIENT,
    backup_ip: str = THREE_TIER_BACKUP,
    namespace: str = "prod",
    spacing: float = 0.05,
) -> list[Packet]:
    """The three-tier app's traffic: client->web:80, web->api:5000, api->db:3306, backup->db:3306
    and db->backup:80 (what the policies mean to allow), then web->db:3306, client->api:5000 and
    db->api:5000 (what they mean to deny). Every one is a full TCP connection attempt: the
    scenario builds traffic, the replay decides. Each pod of a tier talks to each of the next."""
    rng = random.Random(seed)
    picker = _PortPicker(rng)
    web, api, db = (_tier(cluster, namespace, app) for app in ("web", "api", "db"))

    def ips(pods: list[Pod], family: int) -> list[str]:
        return [ip for p in pods for ip in p.ips if _family(ip) == family]

    fam = _family(client_ip)
    client = [client_ip]
    backup = [backup_ip] if _family(backup_ip) == fam else []
    plan = [
        (client, ips(web, fam), 80),
        (ips(web, fam), ips(api, fam), 5000),
        (ips(api, fam), ips(db, fam), 3306),
        (backup, ips(db, fam), 3306),
        (ips(db, fam), backup, 80),
        (ips(web, fam), ips(db, fam), 3306),
        (client, ips(api, fam), 5000),
        (ips(db, fam), ips(api, fam), 5000),
    ]
    out: list[Packet] = []
    t = start
    for sources, targets, port in plan:
        for a in sources:
            for b in targets:
                sport = picker.pick(a, b, port, "TCP")
                out.extend(_flow("TCP", a, b, sport, port, t, rng))
                t += spacing
    return sort_by_time(out)


def _addresses_of(cluster: Cluster, endpoint: str) -> list[str]:
    """A ``namespace/pod`` key's IPs, or an IP literal (canonical form)."""
    try:
        return [str(ipaddress.ip_address(endpoint))]
    except ValueError:
        pass
    pod = next((p for p in cluster.pods if p.key == endpoint), None)
    if pod is None:
        raise ValueError(f"unknown endpoint {endpoint!r}: use namespace/pod or an IP address")
    if not pod.ips:
        raise ValueError(f"pod {endpoint} has no IP address (status.podIP(s) is empty)")
    return [str(ipaddress.ip_address(ip)) for ip in pod.ips]


def connections(
    cluster: Cluster,
    plan: Sequence[tuple[str, str, int, str]],
    *,
    seed: int = 0,
    start: float = 0.0,
    spacing: float = 0.05,
) -> list[Packet]:
    """One complete attempt per ``(from, to, port, protocol)`` of ``plan``, in order, ``spacing``
    apart. Ends are ``namespace/pod`` (its first address of a family both ends have, IPv4
    first) or IP literals, e.g. a node's address for a kubelet probe. TCP: handshake,
    request/response, FIN; UDP: request and reply; SCTP: an association; ``ICMP`` (port ignored):
    one echo request and its reply, the identifier drawn like a source port."""
    rng = random.Random(seed)
    picker = _PortPicker(rng)
    out: list[Packet] = []
    t = start
    for src, dst, port, proto in plan:
        a_ips, b_ips = _addresses_of(cluster, src), _addresses_of(cluster, dst)
        pair = next(
            (
                (a, b)
                for fam in (4, 6)
                for a in a_ips
                for b in b_ips
                if _family(a) == fam and _family(b) == fam
            ),
            None,
        )
        if pair is None:
            raise ValueError(f"{src} and {dst} share no IP family")
        a, b = pair
        proto = proto.upper()
        sport = picker.pick(a, b, port, proto)
        out.extend(_flow(proto, a, b, sport, port, t, rng))
        t += spacing
    return sort_by_time(out)


# Uniform entry points for `npemu generate SCENARIO`.


def _scenario_all_pairs(
    cluster: Cluster, *, seed: int, ports: list[tuple[int, str]], externals: list[str]
) -> list[Packet]:
    return all_pairs(cluster, ports or DEFAULT_PORTS, externals=externals, seed=seed)


def _scenario_random(
    cluster: Cluster, *, seed: int, ports: list[tuple[int, str]], externals: list[str]
) -> list[Packet]:
    return random_workload(cluster, 200, seed, ports or DEFAULT_PORTS, externals=externals)


def _target_pod(cluster: Cluster, seed: int, scenario: str) -> Pod:
    """The pod a one-target scenario aims at, chosen by the seed among pods with an address."""
    pods = [p for p in cluster.pods if p.ips and not p.host_network]
    if not pods:
        raise ValueError(f"{scenario} needs a pod with an IP")
    return random.Random(seed).choice(pods)


def _scenario_port_scan(
    cluster: Cluster, *, seed: int, ports: list[tuple[int, str]], externals: list[str]
) -> list[Packet]:
    # An outsider (the first external, else a TEST-NET-3 address) scans ports 1-1024 plus the
    # given TCP ports of one pod; the pod "listens" on its declared TCP container ports.
    target = _target_pod(cluster, seed, "port-scan")
    dst = target.ips[0]
    src = next((e for e in externals if _family(e) == _family(dst)), None)
    src = src or ("203.0.113.66" if _family(dst) == 4 else "2001:db8::66")
    scanned = sorted(set(range(1, 1025)) | {p for p, proto in ports if proto.upper() == "TCP"})
    listening = [cp.port for cp in target.ports if cp.protocol == "TCP"]
    return port_scan(src, dst, scanned, 0.0, open_ports=listening, seed=seed)


def _scenario_syn_flood(
    cluster: Cluster, *, seed: int, ports: list[tuple[int, str]], externals: list[str]
) -> list[Packet]:
    dst = _target_pod(cluster, seed, "syn-flood").ips[0]
    dport = next((p for p, proto in ports if proto.upper() == "TCP"), 80)
    srcs = [e for e in externals if _family(e) == _family(dst)]
    if not srcs:  # spoofed sources from a documentation range
        srcs = (
            [f"198.51.100.{i}" for i in range(1, 255)]
            if _family(dst) == 4
            else [f"2001:db8:5::{i:x}" for i in range(1, 255)]
        )
    return syn_flood(srcs, dst, dport, 1000, 0.0, seed=seed)


def _scenario_three_tier(
    cluster: Cluster, *, seed: int, ports: list[tuple[int, str]], externals: list[str]
) -> list[Packet]:
    return three_tier(
        cluster, seed=seed, client_ip=externals[0] if externals else THREE_TIER_CLIENT
    )


SCENARIOS: dict[str, Scenario] = {
    "all-pairs": _scenario_all_pairs,
    "random": _scenario_random,
    "port-scan": _scenario_port_scan,
    "syn-flood": _scenario_syn_flood,
    "three-tier": _scenario_three_tier,
}


# ------------------------------------------------------------------------------------------ I/O


def write_pcap(path: str, packets: Sequence[Packet]) -> None:
    """Write packets (in the order given) to a classic pcap, link type Ethernet (1)."""
    wrpcap(path, list(packets), linktype=1)
