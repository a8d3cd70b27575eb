"""AlignedFile: the bytes of an ordinary file, written in aligned 2 MiB pieces."""

from __future__ import annotations

import random

import numpy as np
import pytest

from dataplane.aligned_file import PIECE, AlignedFile
from dataplane.capture import CaptureWriter, open_capture


class _Recorder:
    """Wraps the raw file: records (offset, length) of every write; ``short`` makes each write
    take at most that many bytes, as a raw write may."""

    def __init__(self, raw, short: int | None = None) -> None:
        self.raw, self.short, self.calls, self.at = raw, short, [], 0

    def write(self, view) -> int:
        view = view[: self.short] if self.short else view
        n = self.raw.write(view)
        self.calls.append((self.at, n))
        self.at += n
        return n

    def __getattr__(self, name):
        return getattr(self.raw, name)


@pytest.mark.parametrize("seed", range(6))
def test_bytes_are_kept_and_every_write_but_the_last_is_whole_aligned_pieces(tmp_path, seed):
    rng = random.Random(seed)
    sizes = [rng.choice([0, 1, 24, 4096, PIECE - 1, PIECE, PIECE + 1, 3 * PIECE + 77])
             for _ in range(12)]  # fmt: skip
    chunks = [rng.randbytes(n) for n in sizes]
    path = tmp_path / "f.bin"
    f = AlignedFile(path)
    rec = f._f = _Recorder(f._f)
    for c in chunks:
        assert f.write(c) == len(c)
    f.close()
    assert path.read_bytes() == b"".join(chunks)
    *middle, last = rec.calls or [(0, 0)]
    assert all(at % PIECE == 0 and n % PIECE == 0 and n for at, n in middle)
    assert last[0] % PIECE == 0 and last[0] + last[1] == sum(sizes)


def test_short_raw_writes_are_completed(tmp_path):
    data = np.random.default_rng(1).integers(0, 256, 5 * PIECE + 123, dtype=np.uint8)
    path = tmp_path / "f.bin"
    with AlignedFile(path) as f:
        f._f = _Recorder(f._f, short=100_000)
        f.write(data[:7])
        f.write(data[7:])  # numpy arrays are bytes-like too
    assert path.read_bytes() == data.tobytes()


def test_close_twice_and_close_on_error(tmp_path):
    path = tmp_path / "f.bin"
    with pytest.raises(RuntimeError), AlignedFile(path) as f:
        f.write(b"kept")
        raise RuntimeError
    assert f.closed and path.read_bytes() == b"kept"
    f.close()
    assert path.read_bytes() == b"kept"


def test_a_capture_larger_than_a_piece_reads_back_unchanged(tmp_path):
    rng = np.random.default_rng(2)
    frames = [rng.integers(0, 256, int(n), dtype=np.uint8).tobytes()
              for n in rng.integers(60, 1500, 8000)]  # fmt: skip
    ts = 1_700_000_000 + np.arange(len(frames)) * 1e-3
    path = tmp_path / "big.pcap"
    with CaptureWriter(path, 1) as w:
        for i in range(0, len(frames), 700):
            w.write_packets(frames[i : i + 700], ts[i : i + 700])
    assert path.stat().st_size > 2 * PIECE
    with open_capture(str(path)) as r:
        got = [c.frame(i) for c in r.chunks(512) for i in range(len(c))]
    assert got == frames
