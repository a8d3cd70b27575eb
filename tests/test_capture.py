"""dataplane.capture: pcap/pcapng reading (synthetic and real captures) and pcap writing."""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, UDPerror, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrRouting
from scapy.layers.l2 import ARP, CookedLinux, CookedLinuxV2, Dot1Q, Ether, Loopback
from scapy.layers.sctp import SCTP, SCTPChunkInit
from scapy.packet import Raw
from scapy.utils import PcapNgWriter, rdpcap

from dataplane.capture import CaptureError, CaptureWriter, open_capture, write_scapy
from dataplane.packets import FRAGMENT, MALFORMED, NOT_IP, OK, PacketBatch, pair_to_ip
from dataplane.parse import packets_from_scapy, parse_frames

CAPTURES = Path("/work/shared/captures/tcpdump-tests")
TSV = Path("/work/shared/captures/tcpdump-tests.tsv")
MAC = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}
T0 = 1_700_000_000


def ether_packets() -> list:
    pkts = [
        Ether(**MAC) / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1234, dport=80, flags="S"),
        Ether(**MAC) / Dot1Q(vlan=4) / IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrRouting() / UDP(sport=9, dport=53),
        Ether(**MAC) / IP(src="192.0.2.1", dst="10.0.0.1") / ICMP(type=3, code=3) / IPerror(src="10.0.0.1", dst="10.0.0.9") / UDPerror(sport=1, dport=2),
        Ether(**MAC) / IP(src="10.0.0.1", dst="10.0.0.2") / SCTP(sport=5, dport=6) / SCTPChunkInit(),
        Ether(**MAC) / ARP(),
        *[Ether(**MAC) / f for f in fragment(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=3, dport=4) / Raw(b"f" * 2000), 800)],
        Ether(**MAC) / IP(src="10.0.0.3", dst="10.0.0.4") / TCP(sport=1, dport=2, flags="A") / Raw(b"d" * 1400),
    ]  # fmt: skip
    for i, p in enumerate(pkts):
        p.time = T0 + i + 0.123456  # exactly representable in micro- and nanoseconds
    return pkts


def ts_ns(pkts) -> list[int]:
    return [T0 * 10**9 + i * 10**9 + 123_456_000 for i in range(len(pkts))]


def write_pcap(path: Path, frames, link_type: int, *, big: bool = False, nano: bool = False,
               times_ns=None, origlens=None) -> bytes:  # fmt: skip
    """A pcap writer independent of the one under test (any byte order / resolution)."""
    e = ">" if big else "<"
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(e + "IHHiIII", magic, 2, 4, 0, 0, 65535, link_type)]
    for i, f in enumerate(frames):
        t = times_ns[i] if times_ns is not None else i * 10**9
        frac = t % 10**9 if nano else (t % 10**9) // 1000
        orig = len(f) if origlens is None else origlens[i]
        out.append(struct.pack(e + "IIII", t // 10**9, frac, len(f), orig) + f)
    data = b"".join(out)
    path.write_bytes(data)
    return data


def read_all(path, **kw) -> tuple[PacketBatch, list[str]]:
    reader = open_capture(path, **kw)
    batches = list(reader.batches(max_packets=kw.pop("max_packets", 65536)))
    return PacketBatch.concat(batches), reader.warnings


def assert_same(a: PacketBatch, b: PacketBatch, *, ts: bool = True) -> None:
    for name, col in a.columns().items():
        if name == "ts" and not ts:
            continue
        assert (col == getattr(b, name)).all(), name


# --- pcap -----------------------------------------------------------------------------------


@pytest.mark.parametrize("big", [False, True], ids=["le", "be"])
@pytest.mark.parametrize("nano", [False, True], ids=["us", "ns"])
def test_pcap_round_trip_every_column(tmp_path, big, nano):
    pkts = ether_packets()
    frames = [bytes(p) for p in pkts]
    path = tmp_path / "t.pcap"
    write_pcap(path, frames, 1, big=big, nano=nano, times_ns=ts_ns(pkts))
    reader = open_capture(path)
    assert (reader.format, reader.link_type, reader.nanosecond) == ("pcap", 1, nano)
    chunks = list(reader.chunks())
    assert reader.warnings == []
    assert [c.frame(i) for c in chunks for i in range(len(c))] == frames
    assert np.concatenate([c.ts_ns for c in chunks]).tolist() == ts_ns(pkts)
    got = PacketBatch.concat([c.parse() for c in chunks])
    want = packets_from_scapy(pkts)
    assert_same(got, want)
    assert got.status.tolist() == [OK] * 4 + [NOT_IP, OK, FRAGMENT, FRAGMENT, OK]
    assert got.index.tolist() == list(range(len(pkts)))


@pytest.mark.parametrize(
    "link_type,pkts",
    [
        (
            113,
            [CookedLinux(proto=0x0800) / IP(src="1.1.1.1", dst="2.2.2.2") / UDP(sport=1, dport=2)],
        ),
        (
            276,
            [
                CookedLinuxV2(proto=0x86DD)
                / IPv6(src="fd00::1", dst="fd00::2")
                / TCP(sport=3, dport=4)
            ],
        ),
        (101, [IP(src="1.1.1.1", dst="2.2.2.2") / TCP(), IPv6() / UDP()]),
        (228, [IP(src="1.1.1.1", dst="2.2.2.2") / TCP()]),
        (229, [IPv6(src="fd00::1", dst="fd00::2") / UDP()]),
        (0, [Loopback(type=2) / IP(src="1.1.1.1", dst="2.2.2.2") / ICMP(id=7)]),
    ],
    ids=["sll", "sll2", "raw", "ipv4", "ipv6", "null"],
)
def test_pcap_link_types(tmp_path, link_type, pkts):
    for i, p in enumerate(pkts):
        p.time = T0 + i
    path = tmp_path / "t.pcap"
    write_scapy(path, pkts, link_type=link_type)
    got, warnings = read_all(path)
    assert warnings == []
    assert_same(got, packets_from_scapy(pkts, link_type=link_type))
    assert (got.status == OK).all()


def test_records_spanning_read_blocks(tmp_path):
    """Tiny read blocks: every record crosses a block boundary; chunk limits too."""
    pkts = ether_packets() * 20
    path = tmp_path / "t.pcap"
    write_pcap(path, [bytes(p) for p in pkts], 1)
    whole, _ = read_all(path)
    for block in (64, 100, 1500):
        for max_packets in (1, 3, 1000):
            reader = open_capture(path, block_size=block)
            got = PacketBatch.concat(list(reader.batches(max_packets=max_packets)))
            assert reader.warnings == []
            assert_same(got, whole)


@pytest.mark.parametrize("keep", [True, False])
def test_mapped_file_and_read_stream_agree_while_chunks_live_or_die(tmp_path, keep):
    """A path is read through mapped windows, a stream into reused buffers; both must give the
    same frames whether earlier chunks are still held (their window or buffer must stay
    intact) or dropped (their buffer gets reused)."""
    frames = [bytes(p) for p in ether_packets() * 40]
    data = write_pcap(tmp_path / "t.pcap", frames, 1)
    for block in (64, 700, 5000):
        for source in (tmp_path / "t.pcap", io.BytesIO(data)):
            reader = open_capture(source, block_size=block)
            assert reader._mapped == isinstance(source, Path)
            held, seen = [], []
            for chunk in reader.chunks(max_packets=7):
                seen += [chunk.frame(i) for i in range(len(chunk))]
                if keep:
                    held.append(chunk)
            assert seen == frames
            if keep:  # still intact after the reader moved past them
                assert [c.frame(i) for c in held for i in range(len(c))] == frames


def test_file_object_and_single_pass(tmp_path):
    pkts = ether_packets()
    data = write_pcap(tmp_path / "t.pcap", [bytes(p) for p in pkts], 1)
    reader = open_capture(io.BytesIO(data))
    assert sum(len(b) for b in reader.batches()) == len(pkts)
    assert reader.bytes_read == len(data)
    with pytest.raises(CaptureError, match="only be iterated once"):
        next(reader.chunks())


# --- pcapng ---------------------------------------------------------------------------------


def _block(e: str, btype: int, body: bytes) -> bytes:
    body += b"\x00" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack(e + "II", btype, n) + body + struct.pack(e + "I", n)


def _opt(e: str, code: int, value: bytes) -> bytes:
    return struct.pack(e + "HH", code, len(value)) + value + b"\x00" * (-len(value) % 4)


def shb(e: str) -> bytes:
    return _block(e, 0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def idb(e: str, link_type: int, tsresol: int | None = None, tsoffset: int | None = None) -> bytes:
    opts = b""
    if tsresol is not None:
        opts += _opt(e, 9, bytes([tsresol]))
    if tsoffset is not None:
        opts += _opt(e, 14, struct.pack(e + "q", tsoffset))
    if opts:
        opts += _opt(e, 0, b"")
    return _block(e, 1, struct.pack(e + "HHI", link_type, 0, 0) + opts)


def epb(e: str, ifid: int, ticks: int, frame: bytes, orig: int | None = None) -> bytes:
    head = struct.pack(
        e + "IIIII", ifid, ticks >> 32, ticks & 0xFFFFFFFF, len(frame), orig or len(frame)
    )
    return _block(e, 6, head + frame)


def opb(e: str, ifid: int, ticks: int, frame: bytes) -> bytes:
    head = struct.pack(
        e + "HHIIII", ifid, 0, ticks >> 32, ticks & 0xFFFFFFFF, len(frame), len(frame)
    )
    return _block(e, 2, head + frame)


def spb(e: str, frame: bytes) -> bytes:
    return _block(e, 3, struct.pack(e + "I", len(frame)) + frame)


def test_pcapng_sections_interfaces_resolutions(tmp_path):
    eth = [bytes(p) for p in ether_packets()[:4]]
    raw = [bytes(IP(src="1.1.1.1", dst="2.2.2.2") / UDP(sport=i, dport=99)) for i in range(3)]
    t = T0
    # section 1, little-endian: Ethernet at default microseconds, raw IP at 2^-20 s
    s1 = [
        shb("<"),
        idb("<", 1),
        _block("<", 4, b"\x00" * 8),  # name resolution block: skipped
        idb("<", 101, tsresol=0x80 | 20),
        epb("<", 0, t * 10**6 + 5, eth[0]),
        epb("<", 1, (t << 20) + (1 << 19), raw[0]),  # + 0.5 s
        spb("<", eth[1]),  # no timestamp: the previous one
        opb("<", 0, t * 10**6 + 7, eth[2]),
        _block("<", 5, b"\x00" * 12),  # interface statistics: skipped
        _block("<", 0x40000BAD, b"\x00" * 8),  # custom block: skipped
        _block("<", 0x1234, b"\x00" * 4),  # unknown block: skipped
    ]
    # section 2, big-endian: raw IP at nanoseconds with a 10 s offset, then Ethernet at 10^-3
    s2 = [
        shb(">"),
        idb(">", 101, tsresol=9, tsoffset=10),
        idb(">", 1, tsresol=3),
        epb(">", 0, t * 10**9 + 1, raw[1]),
        epb(">", 1, t * 10**3 + 2, eth[3]),
        epb(">", 0, t * 10**9 + 3, raw[2]),
    ]
    path = tmp_path / "t.pcapng"
    path.write_bytes(b"".join(s1 + s2))
    reader = open_capture(path)
    chunks = list(reader.chunks())
    assert reader.format == "pcapng" and reader.warnings == [] and reader.nanosecond
    frames = [c.frame(i) for c in chunks for i in range(len(c))]
    assert frames == [eth[0], raw[0], eth[1], eth[2], raw[1], eth[3], raw[2]]
    tsn = np.concatenate([c.ts_ns for c in chunks]).tolist()
    s = t * 10**9
    assert tsn == [s + 5000, s + 500_000_000, s + 500_000_000, s + 7000,
                   s + 10 * 10**9 + 1, s + 2_000_000, s + 10 * 10**9 + 3]  # fmt: skip
    lts = np.concatenate([c.link_type for c in chunks]).tolist()
    assert lts == [1, 101, 1, 1, 101, 1, 101]
    got = PacketBatch.concat([c.parse() for c in chunks])
    want = parse_frames(b"".join(frames), np.cumsum([0] + [len(f) for f in frames[:-1]]),
                        [len(f) for f in frames], None, np.array(tsn) / 1e9, lts)  # fmt: skip
    assert_same(got, want)
    assert [got.sport[i] for i in (1, 4, 6)] == [0, 1, 2]


def test_pcapng_unsupported_interface_is_malformed_with_warning(tmp_path):
    e = "<"
    frame = bytes(Ether(**MAC) / IP() / UDP())
    data = (
        shb(e)
        + idb(e, 1)
        + idb(e, 105)
        + epb(e, 0, 1, frame)
        + epb(e, 1, 2, frame)
        + epb(e, 7, 3, frame)
    )
    path = tmp_path / "t.pcapng"
    path.write_bytes(data)
    got, warnings = read_all(path)
    assert got.status.tolist() == [OK, MALFORMED, MALFORMED]
    assert any("link type 105 (IEEE802_11)" in w for w in warnings)
    assert any("undefined interface" in w for w in warnings)


def test_scapy_pcapng_writer_interop(tmp_path):
    pkts = ether_packets()
    path = tmp_path / "scapy.pcapng"
    with PcapNgWriter(str(path)) as w:
        for p in pkts:
            w.write(p)
    got, warnings = read_all(path)
    assert warnings == []
    assert_same(got, packets_from_scapy(pkts), ts=False)
    assert np.allclose(got.ts, [float(p.time) for p in pkts], atol=1e-6)


# --- bad files ------------------------------------------------------------------------------


def test_stdin(tmp_path):
    data = write_pcap(tmp_path / "t.pcap", [bytes(p) for p in ether_packets()], 1)
    script = "from dataplane.capture import open_capture\n"
    script += "print(sum(len(b) for b in open_capture('-').batches()))"
    out = subprocess.run(
        [sys.executable, "-c", script], input=data, capture_output=True, timeout=120
    )
    assert out.stdout.decode().strip() == str(len(ether_packets()))


def test_not_a_capture(tmp_path):
    for content, match in [
        (b"", "empty file"),
        (b"hello world, this is not a capture at all", "not a pcap or pcapng"),
        (os.urandom(4096).replace(b"\xd4\xc3", b"xx").replace(b"\x0a\x0d", b"yy"), "not a pcap"),
        (b"\xd4\xc3\xb2\xa1\x02\x00", "truncated pcap file header"),
        (b"\x0a\x0d\x0d\x0a\x1c\x00\x00\x00\x99\x99\x99\x99", "pcapng section header"),
    ]:
        path = tmp_path / "bad"
        path.write_bytes(content)
        with pytest.raises(CaptureError, match=match):
            open_capture(path)
    with pytest.raises(CaptureError, match="cannot open"):
        open_capture(tmp_path / "missing.pcap")


def test_unsupported_link_type_names_it(tmp_path):
    path = tmp_path / "wifi.pcap"
    write_pcap(path, [b"\x00" * 30], 105)
    with pytest.raises(CaptureError) as err:
        open_capture(path)
    msg = str(err.value)
    assert "wifi.pcap" in msg and "link type 105 (IEEE802_11) is not supported" in msg
    assert "1 (ETHERNET)" in msg and "276 (LINUX_SLL2)" in msg


def test_truncated_pcap_at_every_byte(tmp_path):
    pkts = ether_packets()[:4]
    frames = [bytes(p) for p in pkts]
    data = write_pcap(tmp_path / "full.pcap", frames, 1)
    ends = np.cumsum([24] + [16 + len(f) for f in frames])  # complete-record boundaries
    path = tmp_path / "cut.pcap"
    for cut in range(len(data) + 1):
        path.write_bytes(data[:cut])
        if cut < 24:
            with pytest.raises(CaptureError):
                open_capture(path)
            continue
        got, warnings = read_all(path, block_size=64)
        complete = int(np.searchsorted(ends, cut, side="right")) - 1
        assert len(got) == complete
        assert bool(warnings) == (cut not in ends)
        if warnings:
            assert "truncated file" in warnings[0] and f"after {complete} packets" in warnings[0]


def test_truncated_pcapng_at_every_byte(tmp_path):
    e = "<"
    frames = [bytes(p) for p in ether_packets()[:3]]
    blocks = [shb(e), idb(e, 1)] + [epb(e, 0, i, f) for i, f in enumerate(frames)]
    data = b"".join(blocks)
    ends = np.cumsum([len(b) for b in blocks])
    path = tmp_path / "cut.pcapng"
    for cut in range(len(blocks[0]), len(data) + 1):
        path.write_bytes(data[:cut])
        got, warnings = read_all(path, block_size=64)
        complete = max(int(np.searchsorted(ends, cut, side="right")) - 2, 0)
        assert len(got) == complete, cut
        assert bool(warnings) == (cut not in ends), cut


def test_corrupt_record_length_stops_with_warning(tmp_path):
    frames = [bytes(p) for p in ether_packets()[:3]]
    data = bytearray(write_pcap(tmp_path / "t.pcap", frames, 1))
    second = 24 + 16 + len(frames[0])
    data[second + 8 : second + 12] = struct.pack("<I", 0x7FFFFFFF)
    (tmp_path / "t.pcap").write_bytes(bytes(data))
    got, warnings = read_all(tmp_path / "t.pcap")
    assert len(got) == 1 and "corrupt record" in warnings[0]
    ng = bytearray(shb("<") + idb("<", 1) + epb("<", 0, 1, frames[0]) + epb("<", 0, 2, frames[1]))
    ng[-4:] = b"\x00\x00\x00\x00"  # trailing length disagrees
    (tmp_path / "t.pcapng").write_bytes(bytes(ng))
    got, warnings = read_all(tmp_path / "t.pcapng")
    assert len(got) == 1 and "corrupt packet block" in warnings[0]


def test_truncated_packets_are_malformed(tmp_path):
    frame = bytes(
        Ether(**MAC) / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1, dport=2) / Raw(b"x" * 100)
    )
    path = tmp_path / "t.pcap"
    # 1: cut inside the TCP header with origlen saying so; 2: the wire frame itself is short;
    # 3: snaplen 54 keeps the headers
    write_pcap(path, [frame[:40], frame[:40], frame[:54]], 1, origlens=[len(frame), 40, len(frame)])
    got, _ = read_all(path)
    assert got.status.tolist() == [MALFORMED, MALFORMED, OK]
    assert got.length.tolist() == [len(frame), 40, len(frame)]
    assert got.payload_len[2] == 100


# --- writer ---------------------------------------------------------------------------------


@pytest.mark.parametrize("nano", [False, True])
def test_writer_copies_selected_records_unchanged(tmp_path, nano):
    pkts = ether_packets()
    frames = [bytes(p) for p in pkts]
    origs = [len(f) + 10 for f in frames]  # as if captured with a snap length
    src = tmp_path / "src.pcap"
    write_pcap(src, frames, 1, nano=True, times_ns=[t + 789 for t in ts_ns(pkts)], origlens=origs)
    mask_of = lambda c: c.index % 2 == 0  # noqa: E731
    with CaptureWriter(tmp_path / "even.pcap", 1, nanosecond=nano) as w:
        for chunk in open_capture(src, block_size=200).chunks(max_packets=3):
            w.write_chunk(chunk, mask_of(chunk))
    assert w.count == (len(pkts) + 1) // 2
    chunks = list(open_capture(tmp_path / "even.pcap").chunks())
    got = [c.frame(i) for c in chunks for i in range(len(c))]
    assert got == frames[::2]
    assert np.concatenate([c.origlen for c in chunks]).tolist() == origs[::2]
    want_ts = [t + (789 if nano else 0) for t in ts_ns(pkts)[::2]]
    assert np.concatenate([c.ts_ns for c in chunks]).tolist() == want_ts
    if nano:  # same format and resolution: the file is byte-for-byte the source's records
        src_bytes = src.read_bytes()
        out = (tmp_path / "even.pcap").read_bytes()
        assert out[24:] == b"".join(
            src_bytes[s : s + 16 + len(f)]
            for s, f in zip(
                np.cumsum([24] + [16 + len(x) for x in frames])[::2], frames[::2], strict=False
            )
        )


def test_writer_rejects_other_link_type(tmp_path):
    path = tmp_path / "raw.pcap"
    write_pcap(path, [bytes(IP() / UDP())], 101)
    chunk = next(open_capture(path).chunks())
    with (
        CaptureWriter(tmp_path / "out.pcap", 1) as w,
        pytest.raises(CaptureError, match="link type"),
    ):
        w.write_chunk(chunk)


def test_write_packets_and_scapy_interop(tmp_path):
    pkts = ether_packets()
    path = tmp_path / "gen.pcap"
    assert write_scapy(path, pkts) == len(pkts)
    back = rdpcap(str(path))  # Scapy reads what we write
    assert [bytes(p) for p in back] == [bytes(p) for p in pkts]
    assert [float(p.time) for p in back] == pytest.approx([float(p.time) for p in pkts], abs=1e-6)
    got, _ = read_all(path)
    assert_same(got, packets_from_scapy(pkts), ts=False)
    with CaptureWriter(tmp_path / "n.pcap", 101, nanosecond=True) as w:
        w.write_packets([bytes(IP() / UDP())] * 2, np.array([1.5, 2.000000001]))
    chunk = next(open_capture(tmp_path / "n.pcap").chunks())
    assert chunk.ts_ns.tolist() == [1_500_000_000, 2_000_000_001]


# --- bounded memory -------------------------------------------------------------------------


@pytest.mark.slow
def test_reading_a_200mb_capture_keeps_memory_bounded(tmp_path):
    """~200 MB through batches() in a fresh interpreter: peak RSS grows by far less than the
    file (the reader holds one 8 MiB block plus the chunk being parsed)."""
    frames = [bytes(Ether(**MAC) / IP(src="10.0.0.1", dst=f"10.0.{i}.2") / TCP(sport=i, dport=80) / Raw(b"x" * (60 + i))) for i in range(64)]  # fmt: skip
    block = b"".join(struct.pack("<IIII", T0, i, len(f), len(f)) + f for i, f in enumerate(frames))
    reps = 200_000_000 // len(block) + 1
    path = tmp_path / "big.pcap"
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        chunk = block * 1000
        for _ in range(reps // 1000 + 1):
            f.write(chunk)
    size = path.stat().st_size
    assert size > 190_000_000
    script = textwrap.dedent(
        f"""
        import resource
        from dataplane.capture import open_capture
        from dataplane.parse import parse_frames
        parse_frames(b"\\x00" * 60, [0], [60])  # load the compiled kernels first
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        reader = open_capture({str(path)!r})
        n = ok = 0
        for batch in reader.batches():
            n += len(batch)
            ok += int((batch.status == 0).sum())
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(n, ok, (peak - base) * 1024, len(reader.warnings))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    n, ok, growth, nwarn = map(int, out.stdout.split())
    assert n == ok == (size - 24) // len(block) * 64 and nwarn == 0
    assert growth < 100 * 2**20, (
        f"RSS grew by {growth / 2**20:.0f} MiB reading {size / 2**20:.0f} MiB"
    )


# --- real captures --------------------------------------------------------------------------


def _real_files() -> list[str]:
    return sorted(os.listdir(CAPTURES)) if CAPTURES.is_dir() else []


def _tsv() -> dict[str, tuple[str, int]]:
    rows = (line.split("\t") for line in TSV.read_text().splitlines() if line.strip())
    return {r[0]: (r[1], int(r[2])) for r in rows}


needs_captures = pytest.mark.skipif(not CAPTURES.is_dir(), reason=f"{CAPTURES} not present")


@needs_captures
@pytest.mark.parametrize("name", _real_files())
def test_real_capture_reads_with_expected_count(name):
    got, warnings = read_all(CAPTURES / name)
    assert len(got) == _tsv()[name][1]
    assert warnings == []


# Packets where npemu and tshark legitimately disagree: file -> (what differs, why).
# "we-malformed": npemu reports MALFORMED (no IP header parsed), tshark shows an address.
# "we-not-ip": npemu reports NOT_IP, tshark dissects IP.
# "tshark-no-address": npemu parsed the addresses but calls the packet MALFORMED; tshark
#     rejects the header before showing any address.
# "tshark-no-ports": npemu parses the ports, tshark does not dissect the transport.
TSHARK_EXCEPTIONS: dict[str, tuple[str, str]] = {
    "LINKTYPE_IPV4_invalid.pcap": ("we-malformed", "LINKTYPE_IPV4 frame holding an IPv6 header; tshark dissects by the version nibble, the link type promises IPv4"),
    "kday1.pcap": ("we-malformed", "ethertype IPv4 with a version-6 header: Linux ip_rcv drops it, tshark dissects it as IPv6"),
    "kday3.pcap": ("we-malformed", "ethertype IPv4 with a version-6 header (as kday1)"),
    "ipv4_invalid_length.pcap": ("we-malformed", "frame ends inside the IPv4 header; tshark shows the source address it could read"),
    "ipv6_39_byte_header.pcap": ("we-malformed", "frame ends inside the IPv6 header (39 bytes); tshark shows the source address"),
    "ipv6_invalid_length.pcap": ("we-malformed", "frame ends inside the IPv6 header; tshark shows the source address"),
    "arista_ether.pcap": ("we-not-ip", "Arista vendor timestamp ethertype 0xd28b before IP: tshark decodes it, Linux does not receive it as IP"),
    "macsec-integonly.pcap": ("we-not-ip", "IP inside MACsec (0x88e5, integrity only): on the wire it is not IP until a macsec device verifies it"),
    "macsec-short-longer.pcap": ("we-not-ip", "IP inside MACsec, as macsec-integonly"),
    "macsec-short-shorter.pcap": ("we-not-ip", "IP inside MACsec, as macsec-integonly"),
    "macsec-short-valid.pcap": ("we-not-ip", "IP inside MACsec, as macsec-integonly"),
    "icmp-rfc8335-missing-bytes.pcap": ("we-not-ip", "IP inside MACsec, as macsec-integonly"),
    "nsh.pcap": ("we-not-ip", "IP inside a Network Service Header (0x894f): not IP to netfilter"),
    "tok2str-oobr-2.pcap": ("we-not-ip", "IP inside MPLS (0x8847): not IP to netfilter's IP chains"),
    "ipv4_invalid_hdr_length.pcap": ("tshark-no-address", "IHL below 5: both call it invalid; tshark adds no address fields"),
    "ipv4_invalid_total_length_2.pcap": ("tshark-no-address", "total length below the header length: both call it invalid"),
    "bigtcp-ipv6.pcap": ("tshark-no-ports", "IPv6 BIG TCP (payload length 0, no jumbo option): npemu takes the length from the frame, tshark 4.0 stops at IPv6"),
    "bigtcp-ipv6-geneve-ipv4.pcap": ("tshark-no-ports", "IPv6 BIG TCP outer header, as bigtcp-ipv6"),
    "bigtcp-ipv6-geneve-ipv6.pcap": ("tshark-no-ports", "IPv6 BIG TCP outer header, as bigtcp-ipv6"),
    "bigtcp-ipv6-vxlan-ipv4.pcap": ("tshark-no-ports", "IPv6 BIG TCP outer header, as bigtcp-ipv6"),
    "bigtcp-ipv6-vxlan-ipv6.pcap": ("tshark-no-ports", "IPv6 BIG TCP outer header, as bigtcp-ipv6"),
}  # fmt: skip

TSHARK_FIELDS = ["frame.number", "ip.src", "ip.dst", "ipv6.src", "ipv6.dst", "ip.proto", "ipv6.nxt",
                 "tcp.srcport", "tcp.dstport", "udp.srcport", "udp.dstport"]  # fmt: skip
IPV6_EXTENSIONS = {0, 43, 44, 51, 60}


def compare_with_tshark(
    batch: PacketBatch, lines: list[str]
) -> tuple[int, list[tuple[str, int, str]]]:
    """-> (IP packets compared, [(kind, frame number, detail)]). tshark lists every occurrence
    of a field (tunnels, ICMP quotes): the first one is the outer header, which is ours."""
    compared = 0
    problems: list[tuple[str, int, str]] = []
    seen = 0
    for line in lines:
        cols = line.split("\t") + [""] * len(TSHARK_FIELDS)
        f = dict(zip(TSHARK_FIELDS, (c.split(",")[0] for c in cols), strict=False))
        num = int(f["frame.number"])
        seen += 1
        i = num - 1
        if i >= len(batch):
            problems.append(("count", num, "tshark has more frames"))
            continue
        fam, status = int(batch.family[i]), int(batch.status[i])
        if fam == 0:
            if f["ip.src"] or f["ipv6.src"]:
                kind = "we-not-ip" if status != MALFORMED else "we-malformed"
                problems.append((kind, num, f"tshark {f['ip.src'] or f['ipv6.src']}"))
            continue
        compared += 1
        v = "ip" if fam == 4 else "ipv6"
        src = pair_to_ip(fam, batch.src_hi[i], batch.src_lo[i])
        dst = pair_to_ip(fam, batch.dst_hi[i], batch.dst_lo[i])
        if not f[f"{v}.src"]:
            problems.append(("tshark-no-address", num, f"we {src} status {status}"))
            continue
        if (src, dst) != (f[f"{v}.src"], f[f"{v}.dst"]):
            problems.append(
                ("address", num, f"we {src}>{dst}, tshark {f[v + '.src']}>{f[v + '.dst']}")
            )
            continue
        tproto = int(f["ip.proto"] if fam == 4 else f["ipv6.nxt"])
        # ipv6.nxt is the fixed header's next header; ours is after the extension headers
        if (fam == 4 or tproto not in IPV6_EXTENSIONS) and tproto != batch.proto[i]:
            problems.append(("proto", num, f"we {batch.proto[i]}, tshark {tproto}"))
            continue
        if status == OK and batch.proto[i] in (6, 17):
            t = "tcp" if batch.proto[i] == 6 else "udp"
            ours = (str(batch.sport[i]), str(batch.dport[i]))
            theirs = (f[f"{t}.srcport"], f[f"{t}.dstport"])
            if ours != theirs:
                kind = "tshark-no-ports" if theirs == ("", "") else "ports"
                problems.append((kind, num, f"we {ours}, tshark {theirs}"))
    if seen != len(batch):
        problems.append(("count", seen, f"tshark saw {seen} frames, we read {len(batch)}"))
    return compared, problems


@needs_captures
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
@pytest.mark.parametrize("name", _real_files())
def test_real_capture_matches_tshark(name):
    got, _ = read_all(CAPTURES / name)
    cmd = ["tshark", "-n", "-r", str(CAPTURES / name)]
    # no IP reassembly: tshark then dissects first fragments' ports as we do
    cmd += ["-o", "ip.defragment:FALSE", "-o", "ipv6.defragment:FALSE", "-T", "fields"]
    for field in TSHARK_FIELDS:
        cmd += ["-e", field]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    _, problems = compare_with_tshark(got, out.stdout.splitlines())
    allowed = TSHARK_EXCEPTIONS.get(name)
    if allowed is None:
        assert problems == []
    else:
        kinds = {kind for kind, _, _ in problems}
        assert kinds == {allowed[0]}, (problems, allowed)
