"""The reader's record arrays and the parser's columns are views of buffers reused once nothing
views them: what is still held must stay intact, and what is reused must not leak old values."""

from __future__ import annotations

import io

import numpy as np
from scapy.layers.inet import ICMP, IP, TCP, IPerror, TCPerror
from scapy.layers.inet6 import ICMPv6DestUnreach, IPerror6, IPv6
from scapy.layers.l2 import Ether

from dataplane import parse
from dataplane.capture import open_capture
from dataplane.packets import PacketBatch
from dataplane.parse import parse_frames
from tests.test_capture import MAC, ether_packets, write_pcap

CHUNK_FIELDS = ("offsets", "caplen", "origlen", "ts_ns", "link_type", "index")


def chunk_copy(chunk) -> dict[str, np.ndarray]:
    return {f: getattr(chunk, f).copy() for f in CHUNK_FIELDS}


def batch_copy(batch: PacketBatch) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in batch.columns().items()}


def assert_columns(got: PacketBatch, want: dict[str, np.ndarray]) -> None:
    for name, col in want.items():
        np.testing.assert_array_equal(getattr(got, name), col, err_msg=name)


def test_held_chunks_and_batches_stay_intact(tmp_path):
    frames = [bytes(p) for p in ether_packets() * 60]
    times = [i * 10**9 + i for i in range(len(frames))]
    data = write_pcap(tmp_path / "t.pcap", frames, 1, nano=True, times_ns=times)
    for block in (700, 5000, 1 << 20):
        for source in (tmp_path / "t.pcap", io.BytesIO(data)):
            held = []
            for chunk in open_capture(source, block_size=block).chunks(max_packets=9):
                batch = chunk.parse()
                held.append((chunk, chunk_copy(chunk), batch, batch_copy(batch)))
            assert sum(len(c) for c, *_ in held) == len(frames)
            for chunk, arrays, batch, columns in held:
                for f in CHUNK_FIELDS:
                    np.testing.assert_array_equal(getattr(chunk, f), arrays[f], err_msg=f)
                assert_columns(batch, columns)
            indexes = np.concatenate([c.index for c, *_ in held])
            np.testing.assert_array_equal(indexes, np.arange(len(frames)))
            np.testing.assert_array_equal(np.concatenate([c.ts_ns for c, *_ in held]), times)


def test_dropped_chunks_buffers_are_reused(tmp_path):
    """What makes the recycling worth having: a consumer that holds one chunk (and its batch)
    at a time gets the same few buffers over and over, not fresh memory."""
    path = tmp_path / "t.pcap"
    write_pcap(path, [bytes(p) for p in ether_packets() * 100], 1)
    chunk_bases, column_bases = set(), set()
    for batch in open_capture(path).batches(max_packets=10):
        chunk_bases.add(id(batch.index.base))
        column_bases.add(id(batch.src_lo.base))
    assert len(chunk_bases) <= 3 and len(column_bases) <= 3


def frames_args(frames: list[bytes]) -> tuple[bytes, np.ndarray, np.ndarray]:
    lengths = np.array([len(f) for f in frames])
    return b"".join(frames), np.cumsum(lengths) - lengths, lengths


def test_one_column_held_stays_intact():
    frames = [bytes(p) for p in ether_packets()]
    kept = parse_frames(*frames_args(frames)).src_lo
    want = kept.copy()
    for _ in range(10):
        parse_frames(*frames_args(frames[::-1]))
    np.testing.assert_array_equal(kept, want)


def test_reused_columns_take_their_defaults_again(monkeypatch):
    """A reused buffer holds the previous batch's values: every column the kernel may leave
    unwritten must be back at its default (ICMP quotes, IPv6 halves, fragments)."""
    noisy = [
        Ether(**MAC) / IP(src="192.0.2.1", dst="10.0.0.1") / ICMP(type=3, code=3)
        / IPerror(src="10.0.0.1", dst="10.0.0.9", id=7) / TCPerror(sport=1, dport=2),
        Ether(**MAC) / IPv6(src="fd00::1", dst="fd00::2") / ICMPv6DestUnreach()
        / IPerror6(src="fd00::3", dst="fd00::4") / TCPerror(sport=5, dport=6),
        Ether(**MAC) / IP(src="10.0.0.1", dst="10.0.0.2", flags="MF", frag=0) / TCP(flags="S"),
    ] * 30  # fmt: skip
    quiet = [bytes(Ether(**MAC) / IP(src="10.0.0.5", dst="10.0.0.6") / TCP())] * 90
    noisy = [bytes(p) for p in noisy]

    def run(frames, caplen=None):
        data, offsets, lengths = frames_args(frames)
        caps = lengths if caplen is None else np.minimum(lengths, caplen)
        return parse_frames(data, offsets, caps, lengths, 1.5)

    def fresh_buffers():
        monkeypatch.setattr(parse, "_spare", {name: [] for name in parse._spare})

    for cap in (None, 20, 40):
        fresh_buffers()
        want = batch_copy(run(quiet, cap))
        fresh_buffers()
        dirty = run(noisy)
        base = id(dirty.inner_src_lo.base)
        del dirty
        got = run(quiet, cap)
        assert id(got.inner_src_lo.base) == base  # reused, so the comparison means something
        assert_columns(got, want)
