"""Raw frames -> PacketBatch: the link, IP and transport headers a netfilter FORWARD chain sees.

Pure: no I/O, no clock. The input is one contiguous byte buffer holding many frames plus per-frame
arrays (offset, captured length, original length, timestamp, link type, capture index), so a
capture reader can hand over whole chunks without building a Python object per packet.

Theory of operation
-------------------
One numba loop (``_parse_kernel``) walks the frames. Each layer is a small function that reads
big-endian fields straight from the buffer and checks every read against the captured end of the
frame, so truncated input is reported, never raised. The kernel writes each field straight into
the batch's column of its own dtype: the columns travel as two tuples of arrays (``V``, the small
integers, and ``U``, the address halves). The layers are inlined into the loop, since a real
call would copy every array descriptor of the tuples (that measured 3x slower than a staging
matrix) or spill the loop's live values around it, and the kernel runs without NRT reference
counting. Frames a few places ahead are prefetched: with frames hundreds of bytes apart, each
header is otherwise a separate trip to memory, and overlapping those trips made the loop about 3x
faster on captures not in cache. The columns of batches up to 65,536 rows are views of buffers
that a later parse reuses once no array views them any more (see ``_columns``).

The same code runs as plain Python under ``NUMBA_DISABLE_JIT=1`` (slowly), which is why byte
reads go through ``np.int64(...)``: a uint8 shifted left would overflow in plain Python, and
numba types ``int(uint8)`` as uint8 whose shifts become uint64 (and uint64 mixed with int64 becomes
float64).

Semantics chosen (and why):

* Two ends per frame. ``cap_end`` is the end of the captured bytes; ``wire_end`` the end of the
  frame on the wire (original length). A packet cut short by the capture's snap length is still a
  real packet: its IP total length is checked against the wire length, and it is OK as long as
  the headers we need were captured. Headers we need but that were not captured -> MALFORMED.
* MALFORMED rows may carry what was parsed before the problem (family, addresses, protocol):
  informative only, the dataplane must not match on them.
* IPv4 total length 0 is taken as "use the frame length": that is how TCP segmentation offload
  packets look when captured on the sending host. Same for IPv6 payload length 0 (jumbograms,
  BIG TCP). Checksums are not verified (captures of offloaded traffic carry garbage checksums).
* Fragments: a non-first fragment (offset != 0) is FRAGMENT with ``frag_*`` and the protocol
  filled but no transport fields; a first fragment is parsed normally and carries
  ``frag_more = 1``. IPv6 uses the fragment extension header the same way.
* IPv6 extension headers are walked as ip6tables' ``ipv6_find_hdr`` does (hop-by-hop, routing,
  destination options, fragment, AH); ``proto`` is the upper-layer protocol, ESP (50) and
  no-next-header (59) end the walk. IPv4 AH is not skipped: iptables ``-p`` matches 51 there.
* Tunnels (GRE, IP-in-IP, 6in4, UDP encapsulations) are filtered on the outer header only: that
  is what the FORWARD chain of the node forwarding the tunnel sees, so inner packets are never
  parsed (ICMP error quotes are the one exception, see ``inner_*``).
* ICMP / ICMPv6 errors (v4 types 3, 4, 5, 11, 12; v6 types 1-4) quote the offending packet; its
  header and first transport bytes go into ``inner_*`` so conntrack can find the flow (RELATED).
  An error whose quote cannot be parsed is MALFORMED (conntrack would call it INVALID).
* Link layers follow Linux: IP in 802.2 LLC/SNAP on Ethernet is NOT_IP (the Linux IP stack does
  not receive it); VLAN tags (802.1Q, 802.1ad, 0x9100) are skipped.
* An unknown link type makes the frame MALFORMED (readers reject such files up front).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterable
from typing import Any

import numpy as np
from numba import njit

from dataplane.packets import COLUMNS, FRAGMENT, MALFORMED, NOT_IP, OK, PacketBatch
from dataplane.prefetch import prefetch

# ---------------------------------------------------------------------------------------------
# Link types (the LINKTYPE_* values written in pcap/pcapng headers)

LINKTYPE_NULL = 0  # BSD loopback: 4-byte address family in the capturing host's byte order
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW_12 = 12  # DLT_RAW on most BSDs
LINKTYPE_RAW_14 = 14  # DLT_RAW on OpenBSD
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108  # OpenBSD loopback: address family in network byte order
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

SUPPORTED_LINK_TYPES: dict[int, str] = {
    LINKTYPE_NULL: "NULL",
    LINKTYPE_ETHERNET: "ETHERNET",
    LINKTYPE_RAW_12: "RAW",
    LINKTYPE_RAW_14: "RAW",
    LINKTYPE_RAW: "RAW",
    LINKTYPE_LOOP: "LOOP",
    LINKTYPE_LINUX_SLL: "LINUX_SLL",
    LINKTYPE_IPV4: "IPV4",
    LINKTYPE_IPV6: "IPV6",
    LINKTYPE_LINUX_SLL2: "LINUX_SLL2",
}

# Names of some common link types we do not read, for error messages.
LINK_TYPE_NAMES: dict[int, str] = {
    **SUPPORTED_LINK_TYPES,
    3: "AX25",
    6: "IEEE802_5",
    7: "ARCNET_BSD",
    8: "SLIP",
    9: "PPP",
    10: "FDDI",
    50: "PPP_HDLC",
    51: "PPP_ETHER",
    104: "C_HDLC",
    105: "IEEE802_11",
    107: "FRELAY",
    117: "PFLOG",
    119: "IEEE802_11_PRISM",
    122: "IP_OVER_FC",
    127: "IEEE802_11_RADIOTAP",
    138: "APPLE_IP_OVER_IEEE1394",
    143: "DOCSIS",
    163: "IEEE802_11_AVS",
    165: "BACNET_MS_TP",
    166: "PPP_PPPD",
    189: "USB_LINUX",
    192: "PPI",
    195: "IEEE802_15_4_WITHFCS",
    197: "ERF",
    201: "BLUETOOTH_HCI_H4_WITH_PHDR",
    220: "USB_LINUX_MMAPPED",
    227: "CAN_SOCKETCAN",
    239: "NFLOG",
    249: "NETLINK",
    254: "USBPCAP",
}


def link_type_name(link_type: int) -> str:
    return LINK_TYPE_NAMES.get(int(link_type), "unknown")


# ---------------------------------------------------------------------------------------------
# Kernel output layout: rows of V (int64) and U (uint64)

(
    _ST,
    _FAM,
    _PROTO,
    _SPORT,
    _DPORT,
    _FLAGS,
    _SEQ,
    _ACK,
    _WIN,
    _PLEN,
    _CHUNK,
    _ITYPE,
    _ICODE,
    _IID,
    _IPROTO,
    _ISPORT,
    _IDPORT,
    _FID,
    _FOFF,
    _FMORE,
) = range(20)
_V_COLUMNS = (
    "status",
    "family",
    "proto",
    "sport",
    "dport",
    "tcp_flags",
    "seq",
    "ack",
    "window",
    "payload_len",
    "sctp_chunk",
    "icmp_type",
    "icmp_code",
    "icmp_id",
    "inner_proto",
    "inner_sport",
    "inner_dport",
    "frag_id",
    "frag_offset",
    "frag_more",
)
# Without NRT reference counting: every array argument a refcounted function binds costs an
# atomic increment and decrement, and the parse calls a layer function per header. Nothing here
# allocates.
_kernel = njit(cache=True, _nrt=False)
# The layers that write columns are inlined: the columns travel as tuples of arrays, and passing
# those to a real call copies every array's descriptor. The link layer and the IPv6 walkers are
# inlined too: LLVM left them as calls, which spill the kernel's many live values around each one
# (the call to _link alone was 30 of the 43 ns per packet, on frames in cache). The two-line
# readers stay plain functions: LLVM inlines those itself, and inlining them in numba's IR as
# well measured slower.
_layer = njit(cache=True, _nrt=False, inline="always")
# Frames are parsed this many ahead of their headers being asked for (prefetch): each frame is
# typically a trip to memory, and overlapping them was 3x faster than waiting on each.
_AHEAD = 16

_SHI, _SLO, _DHI, _DLO, _ISHI, _ISLO, _IDHI, _IDLO = range(8)
_U_COLUMNS = (
    "src_hi",
    "src_lo",
    "dst_hi",
    "dst_lo",
    "inner_src_hi",
    "inner_src_lo",
    "inner_dst_hi",
    "inner_dst_lo",
)

# what the link layer found
_K_BAD, _K_NOT_IP, _K_IP4, _K_IP6 = -1, 0, 4, 6

_ETH_IPV4, _ETH_IPV6 = 0x0800, 0x86DD
_MAX_VLAN_TAGS = 8  # more than this is not a real frame; stop instead of looping on garbage

# ---------------------------------------------------------------------------------------------
# Byte readers (big-endian). Callers check bounds first.


@_kernel
def _u16(b, p):
    return (np.int64(b[p]) << 8) | np.int64(b[p + 1])


@_kernel
def _u32(b, p):
    return (
        (np.int64(b[p]) << 24)
        | (np.int64(b[p + 1]) << 16)
        | (np.int64(b[p + 2]) << 8)
        | np.int64(b[p + 3])
    )


@_layer
def _u64(b, p):
    v = np.uint64(0)
    for k in range(8):
        v = (v << np.uint64(8)) | np.uint64(b[p + k])
    return v


# ---------------------------------------------------------------------------------------------
# Link layer: -> (start of the network header, _K_*)


@_layer
def _after_ethertype(b, p, end, etype):
    """Skip VLAN tags, then classify the ethertype."""
    tags = 0
    while etype == 0x8100 or etype == 0x88A8 or etype == 0x9100:
        tags += 1
        if tags > _MAX_VLAN_TAGS or p + 4 > end:
            return p, _K_BAD
        etype = _u16(b, p + 2)  # tag = 2 bytes TCI, then the next ethertype
        p += 4
    if etype == _ETH_IPV4:
        return p, _K_IP4
    if etype == _ETH_IPV6:
        return p, _K_IP6
    return p, _K_NOT_IP


@_layer
def _link(b, off, end, lt):
    if lt == 1:  # Ethernet: dst(6) src(6) type(2)
        if off + 14 > end:
            return off, _K_BAD
        etype = _u16(b, off + 12)
        if etype < 0x0600:  # 802.3 length field: LLC payload, not received as IP by Linux
            return off + 14, _K_NOT_IP
        return _after_ethertype(b, off + 14, end, etype)
    if lt == 101 or lt == 12 or lt == 14:  # raw IP: the version nibble decides
        if off + 1 > end:
            return off, _K_BAD
        v = np.int64(b[off]) >> 4
        if v == 4:
            return off, _K_IP4
        if v == 6:
            return off, _K_IP6
        return off, _K_BAD
    if lt == 228:
        return off, _K_IP4
    if lt == 229:
        return off, _K_IP6
    if lt == 113:  # SLL: pkttype(2) hatype(2) halen(2) addr(8) protocol(2)
        if off + 16 > end:
            return off, _K_BAD
        hatype = _u16(b, off + 2)
        proto = _u16(b, off + 14)
        if hatype == 824 or proto < 0x0600:  # netlink, or LINUX_SLL_P_* (802.2, CAN, ...)
            return off + 16, _K_NOT_IP
        return _after_ethertype(b, off + 16, end, proto)
    if lt == 276:  # SLL2: protocol(2) reserved(2) ifindex(4) hatype(2) pkttype(1) halen(1) addr(8)
        if off + 20 > end:
            return off, _K_BAD
        proto = _u16(b, off)
        hatype = _u16(b, off + 8)
        if hatype == 824 or proto < 0x0600:
            return off + 20, _K_NOT_IP
        return _after_ethertype(b, off + 20, end, proto)
    if lt == 0 or lt == 108:  # NULL / LOOP: 4-byte address family
        if off + 4 > end:
            return off, _K_BAD
        fam = _u32(b, off)
        if fam > 0xFFFF:  # written in little-endian (NULL is host byte order)
            fam = (
                ((fam & 0xFF) << 24)
                | ((fam & 0xFF00) << 8)
                | ((fam >> 8) & 0xFF00)
                | ((fam >> 24) & 0xFF)
            )
        if fam == 2:  # AF_INET everywhere
            return off + 4, _K_IP4
        if fam == 24 or fam == 28 or fam == 30:  # AF_INET6: NetBSD/OpenBSD, FreeBSD, macOS
            return off + 4, _K_IP6
        return off + 4, _K_NOT_IP
    return off, _K_BAD  # unsupported link type


# ---------------------------------------------------------------------------------------------
# IPv6 extension headers


@_layer
def _v6_ext(b, q, cap_end, wire_end, nh):
    """Walk extension headers from q. Returns (transport offset, upper protocol, ok, frag_id,
    frag_offset, frag_more). Stops at a non-first fragment: its payload is not a header."""
    fid = 0
    foff = 0
    fmore = 0
    while True:
        if nh == 0 or nh == 43 or nh == 60 or nh == 51:
            if q + 2 > cap_end:
                return q, nh, False, fid, foff, fmore
            # AH counts 4-byte units minus 2; the others 8-byte units not counting the first 8
            hl = (np.int64(b[q + 1]) + 2) * 4 if nh == 51 else (np.int64(b[q + 1]) + 1) * 8
            nxt = np.int64(b[q])
            if q + hl > wire_end:
                return q, nh, False, fid, foff, fmore
            q += hl
            nh = nxt
        elif nh == 44:
            if q + 8 > cap_end or q + 8 > wire_end:
                return q, nh, False, fid, foff, fmore
            nxt = np.int64(b[q])
            fo = _u16(b, q + 2)
            foff = fo & 0xFFF8
            fmore = fo & 1
            fid = _u32(b, q + 4)
            q += 8
            nh = nxt
            if foff != 0:
                return q, nh, True, fid, foff, fmore
        else:
            return q, nh, True, fid, foff, fmore


# ---------------------------------------------------------------------------------------------
# ICMP error quotes


@_kernel
def _is_icmp_error(proto, typ):
    if proto == 1:
        return typ == 3 or typ == 4 or typ == 5 or typ == 11 or typ == 12
    return 1 <= typ <= 4


@_layer
def _inner(b, q, cap_end, fam, i, V, U):
    """Parse the quoted packet of an ICMP error at q (bounded by the captured end only: the
    quote's own length fields describe the original, untruncated packet). -> ok."""
    if fam == 4:
        if q + 20 > cap_end or (np.int64(b[q]) >> 4) != 4:
            return False
        ihl = (np.int64(b[q]) & 15) * 4
        if ihl < 20:
            return False
        proto = np.int64(b[q + 9])
        V[_IPROTO][i] = proto
        U[_ISLO][i] = np.uint64(_u32(b, q + 12))
        U[_IDLO][i] = np.uint64(_u32(b, q + 16))
        if (_u16(b, q + 6) & 0x1FFF) != 0:  # quoted a non-first fragment: no ports to quote
            return True
        t = q + ihl
        icmp = 1
    else:
        if q + 40 > cap_end or (np.int64(b[q]) >> 4) != 6:
            return False
        U[_ISHI][i] = _u64(b, q + 8)
        U[_ISLO][i] = _u64(b, q + 16)
        U[_IDHI][i] = _u64(b, q + 24)
        U[_IDLO][i] = _u64(b, q + 32)
        t, proto, ok, _fid, foff, _more = _v6_ext(b, q + 40, cap_end, cap_end, np.int64(b[q + 6]))
        V[_IPROTO][i] = proto
        if not ok:
            return False
        if foff != 0:
            return True
        icmp = 58
    if proto == 6 or proto == 17 or proto == 132 or proto == 136:  # TCP, UDP, SCTP, UDP-Lite
        if t + 4 > cap_end:
            return False
        V[_ISPORT][i] = _u16(b, t)
        V[_IDPORT][i] = _u16(b, t + 2)
    elif proto == icmp:
        if t + 6 > cap_end:
            return False
        V[_ISPORT][i] = _u16(b, t + 4)  # echo identifier
        V[_IDPORT][i] = np.int64(b[t])  # type
    return True


# ---------------------------------------------------------------------------------------------
# Transport


@_layer
def _transport(b, q, cap_end, l4len, proto, fam, first_frag, i, V, U):
    """Transport header at q; l4len = bytes of this IP packet's payload on the wire;
    first_frag: the datagram continues in further fragments."""
    ok = True
    if proto == 6:  # TCP
        if q + 20 > cap_end or l4len < 20:
            ok = False
        else:
            V[_SPORT][i] = _u16(b, q)
            V[_DPORT][i] = _u16(b, q + 2)
            V[_SEQ][i] = _u32(b, q + 4)
            V[_ACK][i] = _u32(b, q + 8)
            doff = (np.int64(b[q + 12]) >> 4) * 4
            V[_FLAGS][i] = np.int64(b[q + 13])
            V[_WIN][i] = _u16(b, q + 14)
            if doff < 20 or doff > l4len:
                ok = False
            else:
                V[_PLEN][i] = l4len - doff
    elif proto == 17 or proto == 136:  # UDP, UDP-Lite (same header; -p udplite ports)
        if q + 8 > cap_end or l4len < 8:
            ok = False
        else:
            V[_SPORT][i] = _u16(b, q)
            V[_DPORT][i] = _u16(b, q + 2)
            ulen = _u16(b, q + 4)
            # UDP-Lite: coverage, not length; v6 jumbogram: 0; first fragment: whole datagram
            if proto == 136 or first_frag or (ulen == 0 and fam == 6):
                V[_PLEN][i] = l4len - 8
            elif ulen < 8 or ulen > l4len:
                ok = False
            else:
                V[_PLEN][i] = ulen - 8
    elif proto == 132:  # SCTP: common header (12) then the first chunk's type
        if q + 13 > cap_end or l4len < 16:
            ok = False
        else:
            V[_SPORT][i] = _u16(b, q)
            V[_DPORT][i] = _u16(b, q + 2)
            V[_SEQ][i] = _u32(b, q + 4)  # verification tag
            V[_CHUNK][i] = np.int64(b[q + 12])
            V[_PLEN][i] = l4len - 12
    elif (proto == 1 and fam == 4) or (proto == 58 and fam == 6):
        if q + 8 > cap_end or l4len < 8:
            ok = False
        else:
            typ = np.int64(b[q])
            V[_ITYPE][i] = typ
            V[_ICODE][i] = np.int64(b[q + 1])
            V[_PLEN][i] = l4len - 8
            if proto == 1:
                # echo, timestamp, information, address mask: identifier at bytes 4-5
                if typ == 0 or typ == 8 or (13 <= typ <= 18):
                    V[_IID][i] = _u16(b, q + 4)
            elif typ == 128 or typ == 129:
                V[_IID][i] = _u16(b, q + 4)
            if _is_icmp_error(proto, typ):
                ok = _inner(b, q + 8, cap_end, fam, i, V, U)
    else:
        # Anything else (GRE, IP-in-IP, ESP, OSPF, ...): the outer header is what gets filtered.
        V[_PLEN][i] = l4len
    V[_ST][i] = OK if ok else MALFORMED


# ---------------------------------------------------------------------------------------------
# Network layer


@_layer
def _ipv4(b, p, cap_end, wire_end, i, V, U):
    if p + 20 > cap_end or (np.int64(b[p]) >> 4) != 4:
        V[_ST][i] = MALFORMED
        return
    V[_FAM][i] = 4
    U[_SLO][i] = np.uint64(_u32(b, p + 12))
    U[_DLO][i] = np.uint64(_u32(b, p + 16))
    proto = np.int64(b[p + 9])
    V[_PROTO][i] = proto
    ihl = (np.int64(b[p]) & 15) * 4
    tot = _u16(b, p + 2)
    if tot == 0:  # TSO packet captured on the sender: the frame says how long it is
        tot = wire_end - p
    if ihl < 20 or tot < ihl or p + tot > wire_end:
        V[_ST][i] = MALFORMED
        return
    ff = _u16(b, p + 6)
    more = (ff >> 13) & 1
    foff = (ff & 0x1FFF) * 8
    if more != 0 or foff != 0:
        V[_FID][i] = _u16(b, p + 4)
        V[_FOFF][i] = foff
        V[_FMORE][i] = more
    if foff != 0:
        V[_ST][i] = FRAGMENT
        V[_PLEN][i] = tot - ihl
        return
    end = p + tot
    if p + ihl > cap_end:
        V[_ST][i] = MALFORMED
        return
    _transport(b, p + ihl, min(cap_end, end), tot - ihl, proto, 4, more != 0, i, V, U)


@_layer
def _ipv6(b, p, cap_end, wire_end, i, V, U):
    if p + 40 > cap_end or (np.int64(b[p]) >> 4) != 6:
        V[_ST][i] = MALFORMED
        return
    V[_FAM][i] = 6
    U[_SHI][i] = _u64(b, p + 8)
    U[_SLO][i] = _u64(b, p + 16)
    U[_DHI][i] = _u64(b, p + 24)
    U[_DLO][i] = _u64(b, p + 32)
    nh = np.int64(b[p + 6])
    V[_PROTO][i] = nh
    plen = _u16(b, p + 4)
    if plen == 0:  # jumbogram / BIG TCP: the frame says how long it is
        plen = max(wire_end - p - 40, 0)
    end = p + 40 + plen
    if end > wire_end:
        V[_ST][i] = MALFORMED
        return
    cend = min(cap_end, end)
    q, proto, ok, fid, foff, fmore = _v6_ext(b, p + 40, cend, end, nh)
    V[_PROTO][i] = proto
    if not ok:
        V[_ST][i] = MALFORMED
        return
    if fmore != 0 or foff != 0 or fid != 0:
        V[_FID][i] = fid
        V[_FOFF][i] = foff
        V[_FMORE][i] = fmore
    if foff != 0:
        V[_ST][i] = FRAGMENT
        V[_PLEN][i] = end - q
        return
    _transport(b, q, cend, end - q, proto, 6, fmore != 0, i, V, U)


@_kernel
def _parse_kernel(buf, offsets, caplen, origlen, link_type, V, U):
    n = offsets.shape[0]
    size = buf.shape[0]
    for i in range(n):
        if i + _AHEAD < n:
            ahead = int(offsets[i + _AHEAD])
            if 0 <= ahead < size:
                prefetch(buf, ahead, 0)
                prefetch(buf, min(ahead + 64, size - 1), 0)
        off = int(offsets[i])
        cap = int(caplen[i])
        if off < 0 or cap < 0 or off > size:
            V[_ST][i] = MALFORMED
            continue
        cap_end = min(off + cap, size)
        wire_end = off + max(int(origlen[i]), cap)
        p, kind = _link(buf, off, cap_end, int(link_type[i]))
        if kind == _K_IP4:
            _ipv4(buf, p, cap_end, wire_end, i, V, U)
        elif kind == _K_IP6:
            _ipv6(buf, p, cap_end, wire_end, i, V, U)
        elif kind == _K_NOT_IP:
            V[_ST][i] = NOT_IP
        else:
            V[_ST][i] = MALFORMED


# ---------------------------------------------------------------------------------------------
# Column memory

# Fresh columns for every chunk cost more than the parse itself: freeing a batch gives its pages
# back to the OS, and the next chunk's columns take a page fault per 4 KiB (14,000 faults and
# 45 ms per 1M packets here). So batches of up to _RECYCLE_ROWS rows take their columns from
# buffers that earlier batches used and no longer view. A few buffers per column, because
# whoever iterates still holds the previous batch while the next one is parsed.
_RECYCLE_ROWS = 1 << 16
_ROUND_ROWS = 4096  # chunks of a capture differ by a few rows: let one buffer serve them all
_KEEP = 4
_spare: dict[str, list[np.ndarray]] = {name: [] for name in COLUMNS if name != "index"}
_spare_lock = threading.Lock()  # between finding a free buffer and viewing it
_DEFAULT = {name: col[0] for name, col in PacketBatch.empty(1).columns().items()}
# written in full by parse_frames: no default needed
_WRITTEN = frozenset({"ts", "length", "status"})


def _column(pool: list[np.ndarray], n: int, dtype: Any) -> np.ndarray:
    if n > _RECYCLE_ROWS:
        return np.empty(n, dtype=dtype)
    for i in range(len(pool)):
        buf = pool[i]
        # a batch's column is a view, which holds a reference to its buffer: with none left,
        # the references are the pool's, this local's and getrefcount's argument
        if sys.getrefcount(buf) <= 3:
            if buf.shape[0] < n:
                buf = pool[i] = np.empty(-(-n // _ROUND_ROWS) * _ROUND_ROWS, dtype=dtype)
            return buf[:n]
    buf = np.empty(-(-n // _ROUND_ROWS) * _ROUND_ROWS, dtype=dtype)
    if len(pool) < _KEEP:
        pool.append(buf)
    return buf[:n]


def _columns(n: int) -> dict[str, np.ndarray]:
    """Columns for n rows (all but ``index``), at their defaults except those in _WRITTEN."""
    with _spare_lock:
        cols = {name: _column(_spare[name], n, COLUMNS[name]) for name in _spare}
    for name, col in cols.items():
        if name not in _WRITTEN:
            col.fill(_DEFAULT[name])
    return cols


# ---------------------------------------------------------------------------------------------
# Public API


def _as_int64(values: Any, n: int) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim == 0:
        return np.full(n, int(arr), dtype=np.int64)
    return np.ascontiguousarray(arr, dtype=np.int64)


def parse_frames(
    data: bytes | bytearray | memoryview | np.ndarray,
    offsets: Any,
    caplen: Any,
    origlen: Any = None,
    ts: Any = 0.0,
    link_type: Any = LINKTYPE_ETHERNET,
    index: Any = None,
) -> PacketBatch:
    """Parse the frames ``data[offsets[i] : offsets[i] + caplen[i]]`` into a PacketBatch.

    ``origlen`` (wire length) defaults to ``caplen``; ``ts`` (seconds), ``link_type`` (LINKTYPE_*)
    and ``index`` (capture position, default 0..n-1) may be scalars or per-frame arrays.
    Never raises on bad frame contents: see the module docstring for statuses.
    """
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    if buf.dtype != np.uint8 or buf.ndim != 1:
        buf = np.ascontiguousarray(buf).reshape(-1).view(np.uint8)
    offs = _as_int64(offsets, 0)
    n = len(offs)
    caps = _as_int64(caplen, n)
    origs = caps if origlen is None else _as_int64(origlen, n)
    lts = _as_int64(link_type, n)
    if not (len(caps) == len(origs) == len(lts) == n):
        raise ValueError("offsets, caplen, origlen and link_type must have the same length")

    cols = _columns(n)  # at their defaults; the kernel fills them in place
    if n:
        V = tuple(cols[name] for name in _V_COLUMNS)
        U = tuple(cols[name] for name in _U_COLUMNS)
        _parse_kernel(buf, offs, caps, origs, lts, V, U)
    cols["index"] = np.arange(n, dtype=np.int64) if index is None else _as_int64(index, n)
    np.copyto(cols["ts"], np.broadcast_to(np.asarray(ts, dtype=np.float64), (n,)))
    np.copyto(cols["length"], origs, casting="unsafe")
    return PacketBatch(**cols)


def scapy_link_type(pkt: Any) -> int:
    """The LINKTYPE_* of a Scapy packet's first layer."""
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import CookedLinux, CookedLinuxV2, Dot3, Ether, Loopback

    if isinstance(pkt, Ether | Dot3):
        return LINKTYPE_ETHERNET
    if isinstance(pkt, IP | IPv6):
        return LINKTYPE_RAW
    if isinstance(pkt, CookedLinuxV2):
        return LINKTYPE_LINUX_SLL2
    if isinstance(pkt, CookedLinux):
        return LINKTYPE_LINUX_SLL
    if isinstance(pkt, Loopback):
        return LINKTYPE_NULL
    raise ValueError(f"cannot tell the link type of a Scapy {type(pkt).__name__} packet")


def packets_from_scapy(pkts: Iterable[Any], link_type: int | None = None) -> PacketBatch:
    """Scapy packets -> PacketBatch through the same parser as captures.

    The link type is detected per packet from its first layer (Ether, IP/IPv6 = raw,
    CookedLinux, CookedLinuxV2, Loopback) unless ``link_type`` is given. Timestamps are
    ``pkt.time``.
    """
    frames: list[bytes] = []
    times: list[float] = []
    lts: list[int] = []
    for pkt in pkts:
        frames.append(bytes(pkt))
        times.append(float(pkt.time))
        lts.append(scapy_link_type(pkt) if link_type is None else int(link_type))
    lengths = np.array([len(f) for f in frames], dtype=np.int64)
    offsets = np.zeros(len(frames), dtype=np.int64)
    if len(frames) > 1:
        offsets[1:] = np.cumsum(lengths)[:-1]
    return parse_frames(
        b"".join(frames),
        offsets,
        lengths,
        lengths,
        np.array(times, dtype=np.float64),
        np.array(lts, dtype=np.int64),
    )
