"""Streaming pcap / pcapng reader and pcap writer: the I/O edge in front of ``dataplane.parse``.

Reader theory of operation
--------------------------
A regular file is mapped in windows (8 MiB by default); a pipe or stream is read in blocks of
that size into a byte buffer, reused once no chunk views it. A numba scanner walks the record
headers and fills per-record arrays (frame offset, captured and original length, timestamp in
integer nanoseconds, link type) until it has ``max_packets`` records, reaches a block it does not
handle, or runs out of bytes. Those arrays are views of a few buffers per reader, each reused once
no chunk views it any more. Each scan becomes a ``RawChunk`` whose ``data`` is a view of the
window or buffer, so frames are never copied one by one. When the bytes run out mid-record, the
next window starts at the unread record (or the unread tail is moved in front of the next
block), so a record spanning two reads is handled and at most ``block + largest record`` bytes
are held.

pcapng's rare blocks (section header, interface description, statistics, name resolution,
custom, unknown) go back to Python, which updates the per-section state (byte order,
interfaces: link type, timestamp resolution and offset, snap length) and skips the rest by length.

Problems in the middle of a file (truncated last record, corrupt length) end the stream with a
message in ``reader.warnings``; problems that leave nothing to read (not a capture, truncated file
header, an unsupported pcap link type) raise ``CaptureError`` at ``open_capture``. In pcapng each
interface has its own link type: packets of an interface whose link type is unsupported are kept
(with their index) and parse as MALFORMED, with one warning per interface.

Writer: classic pcap, little-endian, microsecond or nanosecond timestamps. ``write_chunk`` copies
the selected records' bytes, lengths and timestamps unchanged. A file it opens itself is written
in aligned 2 MiB pieces (``dataplane.aligned_file``), which makes it quick to replay right away.
"""

from __future__ import annotations

import io
import mmap
import os
import stat
import struct
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
from numba import njit

from dataplane.aligned_file import AlignedFile
from dataplane.packets import PacketBatch
from dataplane.parse import (
    SUPPORTED_LINK_TYPES,
    link_type_name,
    parse_frames,
    scapy_link_type,
)

DEFAULT_BLOCK = 8 << 20
MAX_RECORD = 64 << 20  # a record claiming more than this is corruption, not a packet

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAP_MAGIC_KUZNETZOV = 0xA1B2CD34  # "modified pcap": 8 extra bytes per record header
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BOM = 0x1A2B3C4D

_BT_IDB, _BT_OPB, _BT_SPB, _BT_EPB = 1, 2, 3, 6

# scanner outcomes
_FULL, _NEED, _BAD, _OTHER = 0, 1, 2, 3


class CaptureError(Exception):
    """The file cannot be read as a capture (the message says why and names the file)."""


def _supported_list() -> str:
    return ", ".join(f"{k} ({v})" for k, v in sorted(SUPPORTED_LINK_TYPES.items()))


@dataclass
class RawChunk:
    """Consecutive capture records, unparsed. Frame ``i`` is
    ``data[offsets[i] : offsets[i] + caplen[i]]``; ``data`` may contain other bytes (record
    headers) in between."""

    data: np.ndarray  # uint8
    offsets: np.ndarray  # int64
    caplen: np.ndarray  # int64
    origlen: np.ndarray  # int64
    ts_ns: np.ndarray  # int64 nanoseconds since the epoch (exact for pcap and decimal pcapng)
    link_type: np.ndarray  # int64 LINKTYPE_*, -1 = unknown pcapng interface
    index: np.ndarray  # int64 position in the capture

    def __len__(self) -> int:
        return len(self.offsets)

    @property
    def ts(self) -> np.ndarray:
        return self.ts_ns / 1e9

    def frame(self, i: int) -> bytes:
        o = int(self.offsets[i])
        return self.data[o : o + int(self.caplen[i])].tobytes()

    def parse(self) -> PacketBatch:
        return parse_frames(
            self.data, self.offsets, self.caplen, self.origlen, self.ts, self.link_type, self.index
        )


# ---------------------------------------------------------------------------------------------
# numba scanners


@njit(cache=True)
def _rd32(b, p, le):
    if le:
        return (
            np.int64(b[p])
            | (np.int64(b[p + 1]) << 8)
            | (np.int64(b[p + 2]) << 16)
            | (np.int64(b[p + 3]) << 24)
        )
    return (
        (np.int64(b[p]) << 24)
        | (np.int64(b[p + 1]) << 16)
        | (np.int64(b[p + 2]) << 8)
        | np.int64(b[p + 3])
    )


@njit(cache=True)
def _rd16(b, p, le):
    if le:
        return np.int64(b[p]) | (np.int64(b[p + 1]) << 8)
    return (np.int64(b[p]) << 8) | np.int64(b[p + 1])


@njit(cache=True)
def _touch_lines(buf, start, stop):
    """Read one byte per cache line of a record. Hopping from record header to record header is
    a chain of dependent loads that the hardware prefetcher does not follow (each a trip to
    memory: 140 ns per record measured); reading every line makes the access a sequential
    stream it does follow (30 ns per record). It stays a real call: inlined into the scanner, LLVM
    drops the reads (nothing uses what they return) and the scan took twice as long."""
    seen = np.uint8(0)
    for q in range(start, stop, 64):
        seen |= buf[q]
    return seen


@njit(cache=True)
def _scan_pcap(buf, pos, end, le, hdrlen, frac_ns, max_n, offs, caps, origs, tsns):
    """pcap records from pos. -> (count, new pos, outcome, bytes needed for the next record)."""
    n = 0
    while n < max_n:
        if pos + hdrlen > end:
            return n, pos, _NEED, hdrlen
        cl = _rd32(buf, pos + 8, le)
        if cl > MAX_RECORD:
            return n, pos, _BAD, 0
        if pos + hdrlen + cl > end:
            return n, pos, _NEED, hdrlen + cl
        _touch_lines(buf, pos, pos + hdrlen + cl)
        offs[n] = pos + hdrlen
        caps[n] = cl
        origs[n] = _rd32(buf, pos + 12, le)
        tsns[n] = _rd32(buf, pos, le) * 1_000_000_000 + _rd32(buf, pos + 4, le) * frac_ns
        n += 1
        pos += hdrlen + cl
    return n, pos, _FULL, 0


@njit(cache=True)
def _scan_pcapng(
    buf, pos, end, le, max_n, if_lt, if_mul, if_div, if_bin, if_off, if_snap, offs, caps, origs,
    tsns, lts, last_ts
):  # fmt: skip
    """Packet blocks (EPB, SPB, OPB) from pos; returns at any other block type.
    -> (count, new pos, outcome, bytes needed, last timestamp)."""
    n = 0
    nif = if_lt.shape[0]
    while n < max_n:
        if pos + 8 > end:
            return n, pos, _NEED, 8, last_ts
        bt = _rd32(buf, pos, le)
        if bt != _BT_EPB and bt != _BT_SPB and bt != _BT_OPB:
            return n, pos, _OTHER, 0, last_ts
        bl = _rd32(buf, pos + 4, le)
        if bl < 16 or (bl & 3) != 0 or bl > MAX_RECORD:
            return n, pos, _BAD, 0, last_ts
        if pos + bl > end:
            return n, pos, _NEED, bl, last_ts
        if _rd32(buf, pos + bl - 4, le) != bl:
            return n, pos, _BAD, 0, last_ts
        _touch_lines(buf, pos, pos + bl)
        if bt == _BT_SPB:  # simple packet block: interface 0, no timestamp
            ifid = 0
            ol = _rd32(buf, pos + 8, le)
            cl = min(ol, bl - 16)
            if nif > 0 and if_snap[0] > 0:
                cl = min(cl, if_snap[0])
            data = pos + 12
            t = -1
        else:
            if bl < 32:
                return n, pos, _BAD, 0, last_ts
            # the obsolete packet block has a 16-bit interface id (then a 16-bit drop count)
            ifid = _rd32(buf, pos + 8, le) if bt == _BT_EPB else _rd16(buf, pos + 8, le)
            t = (_rd32(buf, pos + 12, le) << 32) | _rd32(buf, pos + 16, le)
            cl = _rd32(buf, pos + 20, le)
            ol = _rd32(buf, pos + 24, le)
            data = pos + 28
            if 28 + cl + 4 > bl:
                return n, pos, _BAD, 0, last_ts
        if ifid < nif:
            lts[n] = if_lt[ifid]
            if t >= 0:
                if if_bin[ifid] > 0:  # resolution 2^-e
                    e = if_bin[ifid]
                    sec = t >> e
                    frac = t - (sec << e)
                    last_ts = sec * 1_000_000_000 + int(frac * (1e9 / (1 << e))) + if_off[ifid]
                else:  # resolution 10^-e: multiply or divide to reach nanoseconds
                    last_ts = (t // if_div[ifid]) * if_mul[ifid] + if_off[ifid]
        else:
            lts[n] = -1
            if t >= 0:
                last_ts = t * 1000
        offs[n] = data
        caps[n] = cl
        origs[n] = ol
        tsns[n] = last_ts
        n += 1
        pos += bl
    return n, pos, _FULL, 0, last_ts


@njit(cache=True)
def _pack_records(data, offsets, caplen, origlen, sec, frac, out):
    """Write pcap records (little-endian header + frame bytes) for the given frames into out."""
    w = 0
    for i in range(offsets.shape[0]):
        hdr = (sec[i], frac[i], caplen[i], origlen[i])
        for h in range(4):
            v = hdr[h]
            for k in range(4):
                out[w + k] = (v >> (8 * k)) & 0xFF
            w += 4
        o = offsets[i]
        for k in range(caplen[i]):
            out[w + k] = data[o + k]
        w += caplen[i]
    return w


# ---------------------------------------------------------------------------------------------
# Reader

# Buffers kept per record array: whoever iterates still holds the previous chunk while the next
# one is scanned, and may hold a few.
_KEEP = 4


def _take(pool: list[np.ndarray], n: int) -> np.ndarray:
    """n int64 rows from a buffer in pool that no chunk views any more, else from a new one.
    Fresh arrays for every chunk were given back to the OS when the chunk went, and took a page
    fault per 4 KiB when the next one wrote them (4,000 faults per 1M packets)."""
    for i in range(len(pool)):
        buf = pool[i]
        # a chunk's array is a view, which holds a reference to its buffer: with none left, the
        # references are the pool's, this local's and getrefcount's argument
        if sys.getrefcount(buf) <= 3:
            if buf.shape[0] < n:
                buf = pool[i] = np.empty(n, dtype=np.int64)
            return buf[:n]
    buf = np.empty(n, dtype=np.int64)
    if len(pool) < _KEEP:
        pool.append(buf)
    return buf[:n]


@dataclass
class _Interface:
    link_type: int
    snaplen: int
    mul: int = 1000  # default resolution: microseconds
    div: int = 1
    bin_exp: int = 0
    offset_ns: int = 0


class CaptureReader:
    """Streams a pcap or pcapng capture as RawChunks or PacketBatches (single pass).

    Attributes: ``format`` ("pcap" or "pcapng"), ``link_type`` (pcap: the file's; pcapng: the
    first interface's, None before any), ``nanosecond`` (timestamps finer than 1 µs),
    ``warnings`` (problems met while reading), ``packets`` (records read so far),
    ``bytes_read`` (file bytes consumed so far).
    """

    def __init__(self, f: BinaryIO, name: str, *, close: bool, block_size: int = DEFAULT_BLOCK):
        self.name = name
        self._f = f
        self._close = close
        self._block = max(int(block_size), 64)
        self.warnings: list[str] = []
        self.packets = 0
        self._buf = np.empty(0, dtype=np.uint8)
        self._spare: np.ndarray | None = None
        self._scratch: tuple[list[np.ndarray], ...] = tuple([] for _ in range(6))
        self._ramp = np.empty(0, dtype=np.int64)
        self._mapped = _mappable(f)
        self._base = 0  # file offset of _buf[0]
        self._pos = 0
        self._end = 0
        self._eof = False
        self._started = False
        self.link_type: int | None = None
        self.nanosecond = False
        self.snaplen = 0
        try:
            self._read_header()
        except BaseException:
            self.close()
            raise

    # -- buffer management ------------------------------------------------------------------

    def _fill(self, need: int = 0) -> bool:
        """Keep the unread tail and read at least one more block (more if one record needs
        ``need`` bytes). Returns False when nothing more could be read."""
        if self._eof:
            return False
        if self._mapped:
            return self._map_window(need)
        tail = self._end - self._pos
        size = max(tail + self._block, need)
        buf = self._spare
        # a spare buffer is reused only when no chunk still views it (a view holds a reference
        # to its base): fresh buffers cost a page fault per 4 KiB, as much as the read itself
        if buf is None or buf.size < size or sys.getrefcount(buf) > 3:
            buf = np.empty(size, dtype=np.uint8)
        self._spare = None
        buf[:tail] = self._buf[self._pos : self._end]
        got = tail
        view = memoryview(buf)
        while got < size:
            k = self._f.readinto(view[got:])
            if not k:
                self._eof = True
                break
            got += k
        self._base += self._pos
        self._spare = self._buf if self._buf.size else None
        self._buf, self._pos, self._end = buf, 0, got
        return got > tail

    def _ensure(self, n: int) -> bool:
        """At least n unread bytes buffered (False at end of file)."""
        while self._end - self._pos < n:
            if not self._fill(n):
                return False
        return True

    def _here(self) -> int:
        return self._base + self._pos

    @property
    def bytes_read(self) -> int:
        """Bytes of the file consumed so far (for progress bars)."""
        return self._base + self._pos

    # -- headers ----------------------------------------------------------------------------

    def _read_header(self) -> None:
        self._ensure(24)
        avail = self._end - self._pos
        if avail == 0:
            raise CaptureError(f"{self.name}: empty file, not a capture")
        head = bytes(self._buf[: min(avail, 24)])
        if avail >= 4 and struct.unpack("<I", head[:4])[0] == PCAPNG_SHB:
            self.format = "pcapng"
            self._le = True
            self._interfaces: list[_Interface] = []
            self._warned_if: set[tuple[int, int]] = set()
            self._section = 0
            self._last_ts = 0
            self._warned_undefined = False
            if avail < 12 or not self._read_shb():
                raise CaptureError(f"{self.name}: truncated or corrupt pcapng section header")
            return
        for le, fmt in ((True, "<"), (False, ">")):  # noqa: B007 (le is used after the loop)
            m = struct.unpack(fmt + "I", head[:4])[0] if avail >= 4 else None
            if m in (PCAP_MAGIC_US, PCAP_MAGIC_NS, PCAP_MAGIC_KUZNETZOV):
                break
        else:
            shown = head[:8].hex(" ")
            raise CaptureError(f"{self.name}: not a pcap or pcapng capture (starts with {shown!r})")
        if avail < 24:
            raise CaptureError(f"{self.name}: truncated pcap file header ({avail} of 24 bytes)")
        self.format = "pcap"
        self._le = le
        _, vmaj, vmin, _, _, snaplen, lt = struct.unpack(fmt + "IHHiIII", head)
        self._hdrlen = 24 if m == PCAP_MAGIC_KUZNETZOV else 16
        self._frac_ns = 1 if m == PCAP_MAGIC_NS else 1000
        self.nanosecond = m == PCAP_MAGIC_NS
        self.snaplen = snaplen
        # the upper bits of the link type field carry FCS information, not the link type
        lt &= 0xFFFF
        self.link_type = lt
        if lt not in SUPPORTED_LINK_TYPES:
            raise CaptureError(
                f"{self.name}: link type {lt} ({link_type_name(lt)}) is not supported; "
                f"supported: {_supported_list()}"
            )
        if vmaj != 2:
            self.warnings.append(f"{self.name}: unusual pcap version {vmaj}.{vmin}")
        self._pos += 24

    def _block_bytes(self, length: int) -> bytes | None:
        if not self._ensure(length):
            return None
        return bytes(self._buf[self._pos : self._pos + length])

    def _read_shb(self) -> bool:
        """Section header block at _pos: sets the byte order, resets the interfaces."""
        head = self._block_bytes(12)
        if head is None:
            return False
        if struct.unpack("<I", head[8:12])[0] == PCAPNG_BOM:
            self._le = True
        elif struct.unpack(">I", head[8:12])[0] == PCAPNG_BOM:
            self._le = False
        else:
            return False
        blen = struct.unpack(("<" if self._le else ">") + "I", head[4:8])[0]
        if blen < 28 or blen % 4 or blen > MAX_RECORD or self._block_bytes(blen) is None:
            return False
        self._interfaces = []
        self._section += 1
        self._pos += blen
        return True

    def _read_idb(self, body: bytes) -> None:
        e = "<" if self._le else ">"
        lt, _, snaplen = struct.unpack_from(e + "HHI", body, 0)
        iface = _Interface(lt, snaplen)
        p = 8
        while p + 4 <= len(body):
            code, olen = struct.unpack_from(e + "HH", body, p)
            val = body[p + 4 : p + 4 + olen]
            if code == 0:
                break
            if code == 9 and olen >= 1:  # if_tsresol
                r = val[0]
                if r & 0x80:
                    iface.bin_exp = r & 0x7F
                    self.nanosecond = True
                else:
                    iface.mul = 10 ** max(9 - r, 0)
                    iface.div = 10 ** max(r - 9, 0)
                    if r > 6:
                        self.nanosecond = True
            elif code == 14 and olen >= 8:  # if_tsoffset: seconds added to every timestamp
                iface.offset_ns = struct.unpack(e + "q", val[:8])[0] * 1_000_000_000
            p += 4 + ((olen + 3) & ~3)
        ifid = len(self._interfaces)
        self._interfaces.append(iface)
        if self.link_type is None:
            self.link_type = lt
            self.snaplen = snaplen
        if lt not in SUPPORTED_LINK_TYPES and (self._section, ifid) not in self._warned_if:
            self._warned_if.add((self._section, ifid))
            self.warnings.append(
                f"{self.name}: interface {ifid} has link type {lt} ({link_type_name(lt)}), "
                f"which is not supported; its packets are reported as malformed "
                f"(supported: {_supported_list()})"
            )

    def _other_block(self) -> bool:
        """A non-packet pcapng block at _pos. Returns False if the stream must stop."""
        head = self._block_bytes(8)
        if head is None:
            self.warnings.append(f"{self.name}: truncated block header at offset {self._here()}")
            return False
        btype = struct.unpack(("<" if self._le else ">") + "I", head[:4])[0]
        if btype == PCAPNG_SHB:
            if not self._read_shb():
                self.warnings.append(
                    f"{self.name}: truncated or corrupt section header at offset {self._here()}"
                )
                return False
            return True
        blen = struct.unpack(("<" if self._le else ">") + "I", head[4:8])[0]
        if blen < 12 or blen % 4 or blen > MAX_RECORD:
            self.warnings.append(
                f"{self.name}: corrupt block (type {btype:#x}, length {blen}) at offset "
                f"{self._here()}; stopped reading"
            )
            return False
        block = self._block_bytes(blen)
        if block is None:
            self.warnings.append(
                f"{self.name}: truncated file: block at offset {self._here()} needs {blen} "
                f"bytes, {self._end - self._pos} left"
            )
            return False
        if btype == _BT_IDB:
            if blen < 20:
                self.warnings.append(f"{self.name}: short interface block at {self._here()}")
                return False
            self._read_idb(block[8 : blen - 4])
        # everything else (NRB 4, ISB 5, DSB 10, custom 0xBAD/0x40000BAD, unknown) is skipped
        self._pos += blen
        return True

    def _map_window(self, need: int) -> bool:
        """Regular files: map the next window instead of reading it. Mapping skips the copy
        into a buffer (a third of the reader's time); chunks keep their window alive for as
        long as they view it, and the window is dropped once they are gone."""
        start = self._base + self._pos
        tail = self._end - self._pos
        size = os.fstat(self._f.fileno()).st_size
        aligned = start - start % mmap.ALLOCATIONGRANULARITY
        length = min(size - aligned, (start - aligned) + max(tail + self._block, need))
        if length <= start - aligned + tail:
            self._eof = True
            return False
        window = mmap.mmap(self._f.fileno(), length, access=mmap.ACCESS_READ, offset=aligned)
        self._buf = np.frombuffer(window, dtype=np.uint8)
        self._base, self._pos, self._end = aligned, start - aligned, length
        if aligned + length >= size:
            self._eof = True
        return True

    # -- iteration --------------------------------------------------------------------------

    def _iface_arrays(self) -> tuple[np.ndarray, ...]:
        ifs = self._interfaces
        return (
            np.array([i.link_type for i in ifs], dtype=np.int64),
            np.array([i.mul for i in ifs], dtype=np.int64),
            np.array([i.div for i in ifs], dtype=np.int64),
            np.array([i.bin_exp for i in ifs], dtype=np.int64),
            np.array([i.offset_ns for i in ifs], dtype=np.int64),
            np.array([i.snaplen for i in ifs], dtype=np.int64),
        )

    def chunks(self, max_packets: int = 65536) -> Iterator[RawChunk]:
        """Yield RawChunks of up to ``max_packets`` records until the end of the capture (or a
        problem, recorded in ``warnings``). A reader is read once."""
        if self._started:
            raise CaptureError(f"{self.name}: a CaptureReader can only be iterated once")
        self._started = True
        max_packets = max(int(max_packets), 1)
        try:
            if self.format == "pcap":
                yield from self._pcap_chunks(max_packets)
            else:
                yield from self._pcapng_chunks(max_packets)
        finally:
            self.close()

    def batches(self, max_packets: int = 65536) -> Iterator[PacketBatch]:
        for chunk in self.chunks(max_packets):
            yield chunk.parse()

    def _arrays(self, max_packets: int, min_record: int) -> tuple[np.ndarray, ...]:
        """Offsets, captured and original lengths, timestamps, link types and capture indexes
        for the next scan (a chunk's arrays are the first rows of these)."""
        n = max(1, min(max_packets, (self._end - self._pos) // min_record + 1))
        return tuple(_take(pool, n) for pool in self._scratch)

    def _emit(self, start: int, n: int, arrays: tuple[np.ndarray, ...]) -> RawChunk:
        offs, caps, origs, tsns, lts, index = (a[:n] for a in arrays)
        offs -= start
        if self._ramp.shape[0] < n:
            self._ramp = np.arange(len(arrays[0]), dtype=np.int64)
        np.add(self._ramp[:n], self.packets, out=index)
        self.packets += n
        return RawChunk(
            data=self._buf[start : self._pos],
            offsets=offs,
            caplen=caps,
            origlen=origs,
            ts_ns=tsns,
            link_type=lts,
            index=index,
        )

    def _truncated(self, need: int) -> None:
        left = self._end - self._pos
        if left:
            self.warnings.append(
                f"{self.name}: truncated file: the record at offset {self._here()} needs "
                f"{need} bytes, only {left} present; stopped after {self.packets} packets"
            )

    def _pcap_chunks(self, max_packets: int) -> Iterator[RawChunk]:
        lt = self.link_type
        while True:
            arrays = self._arrays(max_packets, self._hdrlen)
            offs, caps, origs, tsns, lts, _ = arrays
            start = self._pos
            n, pos, why, need = _scan_pcap(
                self._buf, start, self._end, self._le, self._hdrlen, self._frac_ns,
                len(offs), offs, caps, origs, tsns,
            )  # fmt: skip
            self._pos = pos
            if n:
                lts[:n] = lt
                yield self._emit(start, n, arrays)
            # so that the next scan can reuse them once the chunk is gone
            del arrays, offs, caps, origs, tsns, lts
            if why == _NEED:
                if not self._fill(need) and self._end - self._pos < need:
                    self._truncated(need)
                    return
            elif why == _BAD:
                cl = struct.unpack_from(
                    ("<" if self._le else ">") + "I", bytes(self._buf[pos + 8 : pos + 12])
                )[0]
                self.warnings.append(
                    f"{self.name}: corrupt record at offset {self._here()} (captured length "
                    f"{cl}); stopped after {self.packets} packets"
                )
                return

    def _pcapng_chunks(self, max_packets: int) -> Iterator[RawChunk]:
        ifa = self._iface_arrays()
        while True:
            arrays = self._arrays(max_packets, 16)
            offs, caps, origs, tsns, lts, _ = arrays
            start = self._pos
            n, pos, why, need, self._last_ts = _scan_pcapng(
                self._buf, start, self._end, self._le, len(offs), *ifa, offs, caps, origs,
                tsns, lts, self._last_ts,
            )  # fmt: skip
            self._pos = pos
            if n:
                if not self._warned_undefined and (lts[:n] < 0).any():
                    self._warned_undefined = True
                    self.warnings.append(
                        f"{self.name}: packets before offset {self._here()} refer to an "
                        f"undefined interface; reported as malformed"
                    )
                yield self._emit(start, n, arrays)
            del arrays, offs, caps, origs, tsns, lts
            if why == _NEED:
                if not self._fill(need) and self._end - self._pos < need:
                    self._truncated(need)
                    return
            elif why == _BAD:
                self.warnings.append(
                    f"{self.name}: corrupt packet block at offset {self._here()}; stopped "
                    f"after {self.packets} packets"
                )
                return
            elif why == _OTHER:
                if not self._other_block():
                    return
                ifa = self._iface_arrays()

    def close(self) -> None:
        if self._close and not self._f.closed:
            self._f.close()

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _mappable(f: BinaryIO) -> bool:
    """A regular file read from its start (pipes, sockets and wrapped streams are read)."""
    try:
        return stat.S_ISREG(os.fstat(f.fileno()).st_mode) and f.tell() == 0
    except (OSError, AttributeError, ValueError, io.UnsupportedOperation):
        return False


def open_capture(
    source: str | os.PathLike[str] | BinaryIO, *, block_size: int = DEFAULT_BLOCK
) -> CaptureReader:
    """Open a pcap or pcapng capture (a path, ``"-"`` for stdin, or a binary file object) for
    streaming. Raises CaptureError if it is not a readable capture."""
    if source == "-":
        return CaptureReader(sys.stdin.buffer, "<stdin>", close=False, block_size=block_size)
    if isinstance(source, str | os.PathLike):
        name = os.fspath(source)
        try:
            f = open(name, "rb")  # noqa: SIM115 (owned by the reader, closed by it)
        except OSError as e:
            raise CaptureError(f"{name}: cannot open: {e.strerror}") from e
        return CaptureReader(f, name, close=True, block_size=block_size)
    name = getattr(source, "name", "<stream>")
    if not hasattr(source, "readinto"):
        source = io.BufferedReader(source)  # type: ignore[arg-type]
    return CaptureReader(source, str(name), close=False, block_size=block_size)


# ---------------------------------------------------------------------------------------------
# Writer


class CaptureWriter:
    """Writes a classic pcap file (little-endian; microsecond or nanosecond timestamps)."""

    def __init__(
        self,
        path: str | os.PathLike[str] | BinaryIO,
        link_type: int,
        nanosecond: bool = False,
        snaplen: int = 262144,
    ):
        if isinstance(path, str | os.PathLike):
            self._f: BinaryIO | AlignedFile = AlignedFile(path)
            self._close = True
        else:
            self._f, self._close = path, False
        self.link_type = int(link_type)
        self.nanosecond = bool(nanosecond)
        self.count = 0
        magic = PCAP_MAGIC_NS if nanosecond else PCAP_MAGIC_US
        self._f.write(struct.pack("<IHHiIII", magic, 2, 4, 0, 0, snaplen, self.link_type))

    def _write(
        self, data: np.ndarray, offsets: np.ndarray, caplen: np.ndarray, origlen: np.ndarray,
        ts_ns: np.ndarray,
    ) -> int:  # fmt: skip
        n = len(offsets)
        if n == 0:
            return 0
        ts_ns = np.maximum(ts_ns.astype(np.int64), 0)
        sec = ts_ns // 1_000_000_000
        frac = ts_ns % 1_000_000_000
        if not self.nanosecond:
            frac //= 1000
        caplen = caplen.astype(np.int64)
        out = np.empty(int(caplen.sum()) + 16 * n, dtype=np.uint8)
        _pack_records(
            data, offsets.astype(np.int64), caplen, origlen.astype(np.int64), sec, frac, out
        )
        self._f.write(out.data)
        self.count += n
        return n

    def write_chunk(self, chunk: RawChunk, mask: np.ndarray | None = None) -> int:
        """Copy the records selected by ``mask`` (bool per record; all if None) unchanged.
        Returns how many were written."""
        sel = np.arange(len(chunk)) if mask is None else np.flatnonzero(np.asarray(mask))
        if len(sel) and (chunk.link_type[sel] != self.link_type).any():
            bad = sorted(set(chunk.link_type[sel].tolist()) - {self.link_type})
            raise CaptureError(
                f"cannot write packets of link type {bad} into a pcap of link type {self.link_type}"
            )
        return self._write(
            chunk.data, chunk.offsets[sel], chunk.caplen[sel], chunk.origlen[sel],
            chunk.ts_ns[sel],
        )  # fmt: skip

    def write_packets(self, frames: Sequence[bytes], ts: Iterable[float] | np.ndarray) -> int:
        """Write whole frames (bytes) with timestamps in seconds."""
        lengths = np.array([len(f) for f in frames], dtype=np.int64)
        offsets = np.zeros(len(frames), dtype=np.int64)
        if len(frames) > 1:
            offsets[1:] = np.cumsum(lengths)[:-1]
        ts_arr = np.asarray(list(ts) if not isinstance(ts, np.ndarray) else ts, dtype=np.float64)
        if len(ts_arr) != len(frames):
            raise ValueError("frames and ts must have the same length")
        # round to the microsecond/nanosecond rather than truncating float noise
        ts_ns = np.round(ts_arr * 1e6).astype(np.int64) * 1000
        if self.nanosecond:
            ts_ns = np.round(ts_arr * 1e9).astype(np.int64)
        data = np.frombuffer(b"".join(frames), dtype=np.uint8)
        return self._write(data, offsets, lengths, lengths, ts_ns)

    def close(self) -> None:
        if self._close:
            self._f.close()
        else:
            self._f.flush()

    def __enter__(self) -> CaptureWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_scapy(
    path: str | os.PathLike[str] | BinaryIO,
    pkts: Iterable[Any],
    *,
    link_type: int | None = None,
    nanosecond: bool = False,
) -> int:
    """Write Scapy packets to a pcap; the link type comes from the first packet's first layer
    unless given. Returns the number written."""
    pkts = list(pkts)
    if link_type is None:
        if not pkts:
            raise ValueError("no packets: pass link_type to write an empty capture")
        link_type = scapy_link_type(pkts[0])
    with CaptureWriter(path, link_type, nanosecond=nanosecond) as w:
        return w.write_packets([bytes(p) for p in pkts], [float(p.time) for p in pkts])
