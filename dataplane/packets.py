"""PacketBatch: packets as columns of numpy arrays.

Every column has one entry per packet. Addresses are IPv6-sized: two uint64 halves (``*_hi``,
``*_lo``); an IPv4 address lives in ``*_lo`` with ``*_hi == 0`` and ``family == 4``. Columns that
do not apply to a packet hold 0 (or -1 for ICMP type/code).

``status`` says what the parser made of the frame: OK (an IP packet with its transport header),
NOT_IP (ARP, LLDP, ...: passes unfiltered), MALFORMED (truncated or inconsistent), FRAGMENT (a
non-first IP fragment: follows its datagram's verdict, see ``frag_*``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

# status values
OK, NOT_IP, MALFORMED, FRAGMENT = 0, 1, 2, 3
STATUS_NAMES = {OK: "ok", NOT_IP: "not ip", MALFORMED: "malformed", FRAGMENT: "fragment"}

# TCP flag bits, as in the TCP header
FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80

PROTO_ICMP, PROTO_TCP, PROTO_UDP, PROTO_ICMPV6, PROTO_SCTP = 1, 6, 17, 58, 132
PROTO_NAMES = {
    PROTO_ICMP: "ICMP",
    PROTO_TCP: "TCP",
    PROTO_UDP: "UDP",
    PROTO_ICMPV6: "ICMPv6",
    PROTO_SCTP: "SCTP",
}
PROTO_NUMBERS = {name: num for num, name in PROTO_NAMES.items()}

# column name -> dtype. Order is the canonical column order.
COLUMNS: dict[str, Any] = {
    "index": np.int64,  # position in the capture (or in the list it was built from)
    "ts": np.float64,  # seconds since the epoch
    "length": np.uint32,  # original length on the wire
    "status": np.uint8,
    "family": np.uint8,  # 4, 6, or 0 when not IP
    "src_hi": np.uint64,
    "src_lo": np.uint64,
    "dst_hi": np.uint64,
    "dst_lo": np.uint64,
    "proto": np.uint8,  # transport protocol after IPv6 extension headers
    "sport": np.uint16,
    "dport": np.uint16,
    "tcp_flags": np.uint8,
    "seq": np.uint32,  # TCP sequence number; SCTP verification tag
    "ack": np.uint32,  # TCP acknowledgement number
    "window": np.uint16,  # TCP window (unscaled)
    "payload_len": np.uint32,  # transport payload bytes
    "sctp_chunk": np.uint8,  # first SCTP chunk type (INIT=1, INIT_ACK=2, ...)
    "icmp_type": np.int16,  # -1 when not ICMP/ICMPv6
    "icmp_code": np.int16,
    "icmp_id": np.uint16,  # echo identifier
    # ICMP errors: the quoted packet's tuple (as the quoted packet itself was sent)
    "inner_proto": np.uint8,
    "inner_src_hi": np.uint64,
    "inner_src_lo": np.uint64,
    "inner_dst_hi": np.uint64,
    "inner_dst_lo": np.uint64,
    "inner_sport": np.uint16,  # ICMP inner: echo identifier
    "inner_dport": np.uint16,  # ICMP inner: echo type
    # IP fragments: frag_id is the IP identification; frag_offset in bytes; more-fragments flag
    "frag_id": np.uint32,
    "frag_offset": np.uint32,
    "frag_more": np.bool_,
}

_DEFAULTS = {"icmp_type": -1, "icmp_code": -1}


@dataclass
class PacketBatch:
    """Columnar packets. Construct with ``PacketBatch.empty(n)`` and fill, or ``from_columns``."""

    index: np.ndarray
    ts: np.ndarray
    length: np.ndarray
    status: np.ndarray
    family: np.ndarray
    src_hi: np.ndarray
    src_lo: np.ndarray
    dst_hi: np.ndarray
    dst_lo: np.ndarray
    proto: np.ndarray
    sport: np.ndarray
    dport: np.ndarray
    tcp_flags: np.ndarray
    seq: np.ndarray
    ack: np.ndarray
    window: np.ndarray
    payload_len: np.ndarray
    sctp_chunk: np.ndarray
    icmp_type: np.ndarray
    icmp_code: np.ndarray
    icmp_id: np.ndarray
    inner_proto: np.ndarray
    inner_src_hi: np.ndarray
    inner_src_lo: np.ndarray
    inner_dst_hi: np.ndarray
    inner_dst_lo: np.ndarray
    inner_sport: np.ndarray
    inner_dport: np.ndarray
    frag_id: np.ndarray
    frag_offset: np.ndarray
    frag_more: np.ndarray

    @classmethod
    def empty(cls, n: int) -> PacketBatch:
        cols = {}
        for name, dtype in COLUMNS.items():
            fill = _DEFAULTS.get(name, 0)
            cols[name] = np.full(n, fill, dtype=dtype)
        cols["index"] = np.arange(n, dtype=np.int64)
        return cls(**cols)

    @classmethod
    def from_columns(cls, n: int | None = None, **columns: Any) -> PacketBatch:
        """Build from some columns; the rest take their defaults. Values are cast to the
        column dtype; scalars broadcast."""
        if n is None:
            n = max((len(v) for v in columns.values() if np.ndim(v) > 0), default=1)
        batch = cls.empty(n)
        for name, value in columns.items():
            if name not in COLUMNS:
                raise KeyError(f"unknown PacketBatch column {name!r}")
            arr = getattr(batch, name)
            arr[:] = np.asarray(
                value, dtype=COLUMNS[name]
            )  # direct: a detour via float64 loses address bits
        return batch

    @classmethod
    def concat(cls, batches: Sequence[PacketBatch]) -> PacketBatch:
        if not batches:
            return cls.empty(0)
        return cls(
            **{f.name: np.concatenate([getattr(b, f.name) for b in batches]) for f in fields(cls)}
        )

    def __len__(self) -> int:
        return len(self.ts)

    def take(self, idx: np.ndarray | slice) -> PacketBatch:
        return PacketBatch(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    def columns(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def row(self, i: int) -> dict[str, Any]:
        """One packet as a dict of Python scalars (for explanations and tests)."""
        return {f.name: getattr(self, f.name)[i].item() for f in fields(self)}


def ip_to_pair(
    address: str | ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> tuple[int, int, int]:
    """``"10.0.0.1"`` -> (4, 0, 0x0a000001); IPv6 -> (6, high 64 bits, low 64 bits)."""
    ip = ipaddress.ip_address(address)
    value = int(ip)
    if ip.version == 4:
        return 4, 0, value
    return 6, value >> 64, value & 0xFFFFFFFFFFFFFFFF


def pair_to_ip(family: int, hi: int, lo: int) -> str:
    if family == 4:
        return str(ipaddress.IPv4Address(int(lo) & 0xFFFFFFFF))
    if family == 6:
        return str(ipaddress.IPv6Address((int(hi) << 64) | int(lo)))
    return ""


def addresses_to_columns(addresses: Iterable[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vector form of ``ip_to_pair``: (family, hi, lo) arrays."""
    triples = [ip_to_pair(a) for a in addresses]
    if not triples:
        return (np.zeros(0, np.uint8), np.zeros(0, np.uint64), np.zeros(0, np.uint64))
    fam, hi, lo = zip(*triples, strict=True)
    return np.array(fam, np.uint8), np.array(hi, np.uint64), np.array(lo, np.uint64)
