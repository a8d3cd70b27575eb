"""Send captured IP packets into a running lab and see which of them reach the far side.

Theory of operation
-------------------
*Injection.* Each packet leaves from the namespace that owns its source address, exactly as
captured (only the link header is replaced), one at a time and in capture order, from one thread:

* a pod or an external host sends with an ``AF_PACKET`` socket on its ``eth0``, with the
  Ethernet header a real pod would write (its own MAC, the router's MAC as destination). The
  frame skips the sender's own IP stack and arrives at the router like any frame from a pod, so
  the node's PREROUTING, conntrack, FORWARD and the compiled ruleset see it as they would;
* a node (or a hostNetwork pod) sends with a raw ``IPPROTO_RAW`` socket (header included), so
  the packet takes the node's OUTPUT path, as traffic a node originates does. These sockets set
  ``SO_MARK`` = ``MARK`` to tell them apart from what the node's own stack sends (below).

*Verdicts.* A packet is allowed by the kernel iff it arrives where it was going:

* at a pod or external host, an ``AF_PACKET`` socket on ``eth0`` (incoming only) sees it. Packet
  taps run before netfilter, so that namespace's own rules (below) do not hide anything;
* at a node address, a raw IP socket per protocol sees it: raw delivery happens after the
  INPUT hook, so it sees exactly what INPUT accepted.

Counters were the other option (a counter rule per packet, or reading the policy chains'
counters): they give totals but not which of two packets of a flow was dropped, and polling
them per packet is slower than sniffing. Sniffing gives a per-packet answer for free.

*Matching.* Forwarding changes the TTL (hop limit) and the IPv4 header checksum, and nothing
else here (no NAT). An arrival is matched on what forwarding leaves alone: source, destination,
protocol, IPv4 identification and the whole transport segment (header and payload). Identical
packets (a retransmission with the same IP ID, or IPv6 without one) are handled by never having
two of them in flight: before sending a packet whose key is still pending, the injector waits
until the earlier one has arrived or has been given up. A packet that has not arrived ``settle``
seconds after it was sent is given up (dropped). Forwarding between namespaces runs in softirq
right after ``send()``, normally within microseconds, so the margin is wide; an arrival that
comes later finds nothing pending and is counted in ``late_arrivals``, which the report shows.

*Silence.* Real endpoints would answer injected packets (RST for a SYN nobody listens to, ICMP
unreachables) and those answers would create conntrack state the capture never had. So every pod
and external namespace drops everything at PREROUTING and OUTPUT (after the packet tap has seen
it, and the injector's ``AF_PACKET`` sends bypass both hooks), and every node drops at OUTPUT,
before conntrack, whatever does not carry ``MARK``: its TCP stack's resets, ICMP errors, echo
replies. The lab's probe servers never listen during a replay.
"""

from __future__ import annotations

import contextlib
import errno
import select
import socket
import struct
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from dataplane.netns.apply import run_in
from dataplane.netns.topology import LabError, Plan, entered

MARK = 0x4E50  # on packets the injector sends from nodes; the compiled rules only use 0x100000
MTU = 1500  # every lab veth
MIN_TTL = 8  # a captured TTL below this could expire on the lab's 2-3 router hops
SETTLE = 0.25  # seconds a packet may take to arrive before it counts as dropped

_ETH_P_ALL = 0x0003
_ETH_P_IP = 0x0800
_ETH_P_IPV6 = 0x86DD
_SOL_PACKET = 263
_PACKET_STATISTICS = 6
_PACKET_IGNORE_OUTGOING = 23
_SO_RCVBUFFORCE = 33
_RCVBUF = 32 << 20
_BUF = 4096  # read size: lab links have a 1500-byte MTU
_VLAN_TYPES = (0x8100, 0x88A8, 0x9100)
_V6_EXT = (0, 43, 60)  # hop-by-hop, routing, destination options: walked to the upper layer
_V6_FRAGMENT = 44

# Mute rules (see "Silence" above). Priority -310 runs before conntrack (-200), so what is
# dropped here leaves no state behind.
_MUTE_ENDPOINT = """\
table inet npemu_replay_mute {
  chain pre { type filter hook prerouting priority -310; policy drop; }
  chain out { type filter hook output priority -310; policy drop; }
}
"""
_MUTE_NODE = f"""\
table inet npemu_replay_mute {{
  chain out {{ type filter hook output priority -310; meta mark != {MARK:#x} drop; }}
}}
"""


# ---------------------------------------------------------------------------------------------
# Packets: from captured frames to what is sent and the key arrivals are matched on.


Key = tuple[bytes, bytes, int, int, bytes]  # src, dst, protocol, IPv4 id (-1 for IPv6), segment


@dataclass(frozen=True, slots=True)
class IpPacket:
    """An IP packet ready to inject: its bytes and the fields the injector needs."""

    data: bytes
    family: int  # 4 or 6
    src: bytes  # packed address
    dst: bytes
    proto: int
    key: Key
    fixed: str = ""  # what was corrected before sending ("checksum", "ttl"), "" if nothing


def strip_link(frame: bytes, link_type: int) -> bytes | None:
    """The IP packet inside a captured frame (maybe with trailing padding), or None if the frame
    holds no IPv4/IPv6 packet. Link types as ``dataplane.parse`` reads them."""
    if link_type == 1:  # Ethernet, any number of VLAN tags
        off, etype = 14, int.from_bytes(frame[12:14], "big")
        while etype in _VLAN_TYPES:
            etype = int.from_bytes(frame[off + 2 : off + 4], "big")
            off += 4
    elif link_type in (101, 12, 14, 228, 229):  # raw IP
        return frame
    elif link_type == 113:  # Linux cooked (SLL)
        off, etype = 16, int.from_bytes(frame[14:16], "big")
    elif link_type == 276:  # SLL2
        off, etype = 20, int.from_bytes(frame[0:2], "big")
    elif link_type in (0, 108):  # BSD loopback: the IP version decides
        return frame[4:]
    else:
        return None
    return frame[off:] if etype in (_ETH_P_IP, _ETH_P_IPV6) else None


def _sum_ok(data: bytes) -> bool:
    """Does the one's-complement checksum over ``data`` (checksum field included) verify?

    The one's-complement sum of 16-bit words is the number the bytes spell, modulo 0xffff
    (2**16 = 1 mod 0xffff), so one big-integer remainder does the whole sum in C."""
    if len(data) % 2:
        data += b"\0"
    return int.from_bytes(data, "big") % 0xFFFF == 0


def _checksum(data: bytes) -> int:
    """The checksum to store in a zeroed checksum field so that ``data`` verifies."""
    if len(data) % 2:
        data += b"\0"
    rest = int.from_bytes(data, "big") % 0xFFFF
    return 0xFFFF - rest if rest else 0


def _pseudo(family: int, src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if family == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!I3xB", length, proto)


# transport protocol -> (offset of its checksum, covered by the pseudo-header)
_CHECKSUMS = {6: (16, True), 17: (6, True), 1: (2, False), 58: (2, True)}


def _fix_transport(family: int, src: bytes, dst: bytes, proto: int, seg: bytes) -> bytes | None:
    """The segment with a correct checksum, or None if it was already correct (or has none)."""
    spec = _CHECKSUMS.get(proto)
    if spec is None or (proto == 1 and family == 6) or (proto == 58 and family == 4):
        return None
    off, pseudo = spec
    if len(seg) < off + 2:
        return None
    if proto == 17 and family == 4 and seg[6:8] == b"\0\0":
        return None  # IPv4 UDP without a checksum is valid
    head = _pseudo(family, src, dst, proto, len(seg)) if pseudo else b""
    if _sum_ok(head + seg):
        return None
    zeroed = seg[:off] + b"\0\0" + seg[off + 2 :]
    value = _checksum(head + zeroed)
    if proto == 17 and value == 0:
        value = 0xFFFF  # UDP sends a computed 0 as all ones
    return seg[:off] + value.to_bytes(2, "big") + seg[off + 2 :]


def _fix_ttl_and_transport(
    family: int,
    head: bytearray,
    ttl_at: int,
    src: bytes,
    dst: bytes,
    proto: int,
    seg: bytes,
    fixed: list[str],
) -> bytes:
    """Raise a TTL / hop limit below MIN_TTL in ``head`` and correct the transport checksum,
    noting each in ``fixed``; -> the segment to send."""
    if head[ttl_at] < MIN_TTL:
        head[ttl_at] = 64
        fixed.append("ttl")
    new_seg = _fix_transport(family, src, dst, proto, seg)
    if new_seg is None:
        return seg
    fixed.append("checksum")
    return new_seg


def prepare(ip: bytes) -> IpPacket | str:
    """Check and ready one captured IP packet for injection; a string says why it cannot be.

    The packet is sent as captured, with two exceptions that no filter decision depends on and
    that are counted in ``fixed``: a wrong transport (or IPv4 header) checksum is corrected,
    because a capture taken on the sending host holds checksums its NIC had yet to fill in
    (the wire carried correct ones, and conntrack drops bad ones as INVALID); and a TTL or hop
    limit below ``MIN_TTL`` is raised to 64, so the packet survives the lab's router hops.
    """
    if len(ip) < 20:
        return "malformed (shorter than an IP header)"
    version = ip[0] >> 4
    fixed = []
    if version == 4:
        ihl = (ip[0] & 0x0F) * 4
        total = int.from_bytes(ip[2:4], "big") or len(ip)
        if ihl < 20 or total < ihl:
            return "malformed IPv4 header"
        if total > len(ip):
            return "truncated in the capture (snap length)"
        if int.from_bytes(ip[6:8], "big") & 0x3FFF:
            return "IP fragment (the kernel reassembles before filtering: no per-fragment verdict)"
        src, dst, proto = ip[12:16], ip[16:20], ip[9]
        head, seg = bytearray(ip[:ihl]), ip[ihl:total]
        head[2:4] = total.to_bytes(2, "big")
        seg = _fix_ttl_and_transport(4, head, 8, src, dst, proto, seg, fixed)
        if not _sum_ok(bytes(head)):
            head[10:12] = b"\0\0"
            head[10:12] = _checksum(bytes(head)).to_bytes(2, "big")
            if "ttl" not in fixed:
                fixed.append("checksum")
        data = bytes(head) + seg
        ident = int.from_bytes(ip[4:6], "big")
    elif version == 6:
        if len(ip) < 40:
            return "malformed IPv6 header"
        plen = int.from_bytes(ip[4:6], "big")
        if plen == 0:
            return "IPv6 jumbogram (larger than the lab's MTU)"
        total = 40 + plen
        if total > len(ip):
            return "truncated in the capture (snap length)"
        src, dst = ip[8:24], ip[24:40]
        proto, q = ip[6], 40
        while proto in _V6_EXT:
            if q + 2 > total:
                return "malformed IPv6 extension header"
            proto, q = ip[q], q + (ip[q + 1] + 1) * 8
        if proto == _V6_FRAGMENT:
            return "IP fragment (the kernel reassembles before filtering: no per-fragment verdict)"
        if q > total:
            return "malformed IPv6 extension header"
        head, seg = bytearray(ip[:q]), ip[q:total]
        seg = _fix_ttl_and_transport(6, head, 7, src, dst, proto, seg, fixed)
        data = bytes(head) + seg
        ident = -1
    else:
        return f"not IPv4 or IPv6 (version {version})"
    if len(data) > MTU:
        return f"{len(data)} bytes, more than the lab's {MTU}-byte MTU"
    return IpPacket(data, version, src, dst, proto, (src, dst, proto, ident, seg), ",".join(fixed))


def arrival_key(ip: bytes) -> Key | None:
    """The match key of a packet seen at the far side (a whole IP packet)."""
    if len(ip) < 20:
        return None
    if ip[0] >> 4 == 4:
        ihl = (ip[0] & 0x0F) * 4
        total = int.from_bytes(ip[2:4], "big")
        return (ip[12:16], ip[16:20], ip[9], int.from_bytes(ip[4:6], "big"), ip[ihl:total])
    if ip[0] >> 4 == 6 and len(ip) >= 40:
        total = 40 + int.from_bytes(ip[4:6], "big")
        proto, q = ip[6], 40
        while proto in _V6_EXT and q + 2 <= total:
            proto, q = ip[q], q + (ip[q + 1] + 1) * 8
        return (ip[8:24], ip[24:40], proto, -1, ip[q:total])
    return None


# ---------------------------------------------------------------------------------------------
# Where packets start and end


@dataclass(frozen=True, slots=True)
class Place:
    """A lab endpoint as the injector sees it."""

    label: str  # pod key, node/<name> or the external IP
    netns: str
    kind: str  # "pod" and "external" send and sniff on eth0; "host" is a node namespace
    mac: bytes = b""  # eth0's MAC (pod, external)
    gateway_mac: bytes = b""  # the router's MAC on the other end of eth0


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def places(plan: Plan) -> dict[bytes, Place]:
    """Packed address -> the endpoint that owns it, for every address in the lab."""
    out: dict[bytes, Place] = {}

    def add(ip: str, place: Place) -> None:
        fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
        out[socket.inet_pton(fam, ip)] = place

    for node in plan.nodes.values():
        host = Place(f"node/{node.name}", node.netns, "host")
        for ip in node.addresses:
            add(ip, host)
    for pod in plan.pods.values():
        place = Place(pod.key, pod.netns, "pod", _mac(pod.pod_mac), _mac(pod.node_mac))
        for ip in pod.ips:
            add(ip, place)
    for ext in plan.externals.values():
        add(ext.ip, Place(ext.ip, ext.netns, "external", _mac(ext.ext_mac), _mac(ext.fabric_mac)))
    return out


# ---------------------------------------------------------------------------------------------
# The injector


@dataclass(slots=True)
class Sent:
    """One injected packet; ``arrived`` is None while pending."""

    index: int
    key: Key
    sent_at: float
    arrived: bool | None = None


@dataclass
class InjectStats:
    sent: int = 0
    arrived: int = 0
    given_up: int = 0
    duplicate_waits: int = 0  # times a send waited for an identical earlier packet
    late_arrivals: int = 0  # arrivals that matched nothing pending (late, or not ours)
    sniffer_drops: int = 0  # packets the kernel could not queue on a sniffer socket
    backlog_drops: int = 0  # /proc/net/softnet_stat drops during the run (all namespaces)
    first_send: float = 0.0
    last_activity: float = 0.0  # last send or last matched arrival

    @property
    def busy_seconds(self) -> float:
        """From the first send to the last send or matched arrival: the kernel's share."""
        return max(self.last_activity - self.first_send, 0.0)


def mute(plan: Plan) -> None:
    """Install the silence rules (see the module comment) in every namespace of the lab."""
    for ns in [*(p.netns for p in plan.pods.values()), *(e.netns for e in plan.externals.values())]:
        run_in(ns, ["nft", "-f", "-"], _MUTE_ENDPOINT)
    # The fabric never sends an injected packet, so MARK never matches there and its OUTPUT
    # drops all it would say on its own (ICMP errors, MLD reports of freshly raised links).
    for ns in [*(n.netns for n in plan.nodes.values()), plan.fabric]:
        run_in(ns, ["nft", "-f", "-"], _MUTE_NODE)


def softnet_drops() -> int:
    """Packets dropped because a CPU's input backlog was full (all namespaces, since boot)."""
    try:
        with open("/proc/net/softnet_stat") as f:
            return sum(int(line.split()[1], 16) for line in f if line.strip())
    except OSError:
        return 0


class Injector:
    """Sockets in the lab's namespaces, one send at a time, arrivals matched as they come.

    Use as a context manager; ``send`` and ``poll`` from one thread only.
    """

    def __init__(
        self, plan: Plan, protocols: Iterable[int] = (6, 17, 1, 58), settle: float = SETTLE
    ) -> None:
        self.plan = plan
        self.settle = settle
        self.stats = InjectStats()
        self._protocols = sorted({p for p in protocols if 0 < p < 255})
        self._senders: dict[tuple[str, int], socket.socket] = {}
        self._sniffers: dict[int, tuple[socket.socket, str]] = {}  # fd -> (socket, kind)
        self._packet_sniffers: list[socket.socket] = []
        self._epoll = select.epoll()
        self._pending: dict[Key, deque[Sent]] = {}
        self._inflight: deque[Sent] = deque()
        self._dest_cache: dict[bytes, tuple[str, int] | tuple[str, int, int, int]] = {}
        self._backlog_start = 0
        self._since_poll = 0

    # -- life cycle

    def __enter__(self) -> Injector:
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self) -> None:
        for pod in self.plan.pods.values():
            self._open_endpoint(pod.netns)
        for ext in self.plan.externals.values():
            self._open_endpoint(ext.netns)
        for node in self.plan.nodes.values():
            self._open_node(node.netns)
        self._backlog_start = softnet_drops()

    def _open_endpoint(self, ns: str) -> None:
        with entered(ns):
            tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: receives nothing
            self._senders[(ns, 0)] = tx
            tx.bind(("eth0", 0))
            # Created deaf (protocol 0) and bound to eth0 and every protocol afterwards, so it
            # never sees another interface; SOCK_DGRAM hands over the IP packet without its
            # link header, and the injector's own sends from here are ignored.
            rx = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)
            self._add_sniffer(rx, "l3")
            rx.setsockopt(_SOL_PACKET, _PACKET_IGNORE_OUTGOING, 1)
            rx.bind(("eth0", _ETH_P_ALL))
            self._packet_sniffers.append(rx)

    def _open_node(self, ns: str) -> None:
        with entered(ns):
            for fam in (socket.AF_INET, socket.AF_INET6):
                tx = socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_RAW)  # header included
                self._senders[(ns, fam)] = tx
                tx.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, MARK)
            for proto in self._protocols:
                self._add_sniffer(socket.socket(socket.AF_INET, socket.SOCK_RAW, proto), "raw4")
                rx6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, proto)
                self._add_sniffer(rx6, f"raw6:{proto}")
                rx6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)

    def _add_sniffer(self, s: socket.socket, kind: str) -> None:
        self._sniffers[s.fileno()] = (s, kind)
        s.setblocking(False)
        # Room for every arrival between two polls even when the run stalls for a while.
        with contextlib.suppress(OSError):
            s.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, _RCVBUF)
        self._epoll.register(s.fileno(), select.EPOLLIN)

    def close(self) -> None:
        """Close every socket (a socket pins its namespace, so this comes before teardown)."""
        for s in self._senders.values():
            s.close()
        for s, _ in self._sniffers.values():
            s.close()
        self._senders.clear()
        self._sniffers.clear()
        self._packet_sniffers.clear()
        self._epoll.close()

    # -- sending

    def send(self, index: int, pkt: IpPacket, src: Place) -> Sent:
        """Inject one packet from ``src``; returns its record (resolved later by ``poll``).

        Raises OSError if the kernel refuses the send (the caller reports the packet)."""
        key = pkt.key
        if src.kind == "host" and pkt.family == 4 and key[3] == 0:
            # raw_send_hdrinc may pick an IP ID for a packet sent with ID 0: match without it
            key = (key[0], key[1], key[2], -2, key[4])
        pending = self._pending.get(key)
        if pending:
            # An identical packet is still unresolved: wait, so an arrival has one candidate.
            self.stats.duplicate_waits += 1
            while pending:
                self.poll(self.settle / 4)
        if src.kind == "host":
            fam = socket.AF_INET if pkt.family == 4 else socket.AF_INET6
            self._senders[(src.netns, fam)].sendto(pkt.data, self._dest(pkt.dst, fam))
        else:
            ethertype = b"\x08\x00" if pkt.family == 4 else b"\x86\xdd"
            self._senders[(src.netns, 0)].send(src.gateway_mac + src.mac + ethertype + pkt.data)
        now = time.monotonic()
        if not self.stats.sent:
            self.stats.first_send = now
        self.stats.sent += 1
        self.stats.last_activity = now
        rec = Sent(index, key, now)
        self._pending.setdefault(key, deque()).append(rec)
        self._inflight.append(rec)
        self._since_poll += 1
        if self._since_poll >= 32:
            self.poll(0)
        return rec

    def _dest(self, dst: bytes, fam: int) -> tuple[str, int] | tuple[str, int, int, int]:
        addr = self._dest_cache.get(dst)
        if addr is None:
            text = socket.inet_ntop(fam, dst)
            addr = (text, 0) if fam == socket.AF_INET else (text, 0, 0, 0)
            self._dest_cache[dst] = addr
        return addr

    # -- receiving

    def poll(self, timeout: float = 0.0) -> None:
        """Read every arrival queued so far (waiting up to ``timeout`` for the first), match
        them, and give up on packets sent more than ``settle`` seconds ago."""
        self._since_poll = 0
        # Anything sent before `horizon` has had `settle` seconds; its arrival, if any, is
        # already queued on a sniffer when the drain below runs.
        horizon = time.monotonic() - self.settle
        for fd, _ in self._epoll.poll(timeout):
            s, kind = self._sniffers[fd]
            self._drain(s, kind)
        while self._inflight:
            rec = self._inflight[0]
            if rec.arrived is None:
                if rec.sent_at > horizon:
                    break
                rec.arrived = False
                self.stats.given_up += 1
                queue = self._pending[rec.key]
                queue.remove(rec)
                if not queue:
                    del self._pending[rec.key]
            self._inflight.popleft()

    def _drain(self, s: socket.socket, kind: str) -> None:
        while True:
            try:
                if kind.startswith("raw6:"):
                    data, anc, _, addr = s.recvmsg(_BUF, 64)
                    key = self._raw6_key(data, anc, addr, int(kind[5:]))
                else:
                    key = arrival_key(s.recv(_BUF))
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    return
                raise
            if key is not None:
                self._match(key)

    @staticmethod
    def _raw6_key(data: bytes, anc: list, addr: tuple, proto: int) -> Key | None:
        # IPv6 raw sockets hand over the payload only: the addresses come from the socket
        # address (source) and IPV6_PKTINFO (destination).
        for level, ctype, cdata in anc:
            if level == socket.IPPROTO_IPV6 and ctype == socket.IPV6_PKTINFO:
                src = socket.inet_pton(socket.AF_INET6, addr[0].split("%")[0])
                return (src, bytes(cdata[:16]), proto, -1, data)
        return None

    def _match(self, key: Key) -> None:
        queue = self._pending.get(key)
        if not queue and key[3] >= 0:
            key = (key[0], key[1], key[2], -2, key[4])
            queue = self._pending.get(key)
        if not queue:
            if key[0][:2] != b"\xfe\x80":  # link-local: router chatter from before mute()
                self.stats.late_arrivals += 1
            return
        rec = queue.popleft()
        if not queue:
            del self._pending[key]
        rec.arrived = True
        self.stats.arrived += 1
        self.stats.last_activity = time.monotonic()

    @property
    def unresolved(self) -> int:
        return len(self._inflight)

    def finish(self) -> None:
        """Wait until every packet has arrived or been given up; collect drop counters."""
        while self._inflight:
            self.poll(self.settle / 4)
        self.stats.backlog_drops = softnet_drops() - self._backlog_start
        for s in self._packet_sniffers:
            with contextlib.suppress(OSError):
                _, drops = struct.unpack("II", s.getsockopt(_SOL_PACKET, _PACKET_STATISTICS, 8))
                self.stats.sniffer_drops += drops


__all__ = [
    "MARK",
    "SETTLE",
    "InjectStats",
    "Injector",
    "IpPacket",
    "LabError",
    "Place",
    "arrival_key",
    "mute",
    "places",
    "prepare",
    "softnet_drops",
    "strip_link",
]
