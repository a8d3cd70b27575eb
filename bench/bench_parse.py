"""Capture reading + parsing: npemu's numba reader against a struct walk of the same records."""

from __future__ import annotations

import mmap
import struct

import numpy as np

from dataplane.capture import open_capture
from dataplane.packets import OK


def _npemu_parse(path: str) -> tuple[int, int, int]:
    n = ok = dports = 0
    for chunk in open_capture(path).chunks():
        batch = chunk.parse()
        n += len(batch)
        ok += int((batch.status == OK).sum())
        dports += int(batch.dport.astype(np.int64).sum())
    return n, ok, dports


def _struct_parse(path: str) -> tuple[int, int, int]:
    """The hand-written baseline's parsing half: record headers and TCP ports with struct."""
    rec, ports = struct.Struct("<IIII").unpack_from, struct.Struct("!HH").unpack_from
    n = ok = dports = 0
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        pos = 24
        while pos + 16 <= len(mm):
            _s, _u, caplen, _o = rec(mm, pos)
            p = pos + 16
            pos = p + caplen
            n += 1
            if mm[p + 12] == 8 and mm[p + 13] == 0 and mm[p + 23] == 6:
                ok += 1
                dports += ports(mm, p + 14 + (mm[p + 14] & 15) * 4)[1]
    return n, ok, dports


def test_parse_npemu(benchmark, quick_workload) -> None:
    _npemu_parse(quick_workload.path)  # warm-up: numba's cached kernels load on first call
    n, ok, dports = benchmark.pedantic(_npemu_parse, args=(quick_workload.path,), rounds=3)
    benchmark.extra_info["packets"] = n
    assert n == ok == quick_workload.capture.packets
    assert (n, ok, dports) == _struct_parse(quick_workload.path)


def test_parse_struct_baseline(benchmark, quick_workload) -> None:
    n, ok, _ = benchmark.pedantic(_struct_parse, args=(quick_workload.path,), rounds=1)
    benchmark.extra_info["packets"] = n
    assert n == ok == quick_workload.capture.packets
