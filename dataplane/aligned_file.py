"""A file written in whole 2 MiB pieces at 2 MiB offsets, so that its page cache is fast to map.

Linux's page cache keeps what one ``write()`` brings in folios no larger than that write: a file
written 8 KiB at a time sits in small folios, and mapping it for a replay costs a page fault and
a reverse-map update per 4 KiB page — about 60 ns per 600-byte packet on the benchmark machine,
a quarter of a whole replay. Written (or read back by the kernel's readahead) in aligned 2 MiB
pieces, the same file sits in 2 MiB folios that map in one step, and reading it costs about a
tenth of that (docs/benchmarks.md, "Where the time goes"). The bytes are those of an ordinary
file; the last ones (under 2 MiB) reach it at ``close``.
"""

from __future__ import annotations

import os
from typing import Any

PIECE = 2 << 20  # a PMD-mapped folio on x86-64 and arm64 with 4 KiB pages


class AlignedFile:
    """``AlignedFile(path)``: ``write(bytes-like)``, ``close()``; a context manager.

    Every ``write()`` it makes to the file starts at a multiple of PIECE and writes a multiple of
    PIECE, except the last one, at ``close``. At most PIECE - 1 bytes wait in between."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._f = open(path, "wb", buffering=0)  # noqa: SIM115 (closed by close())
        self._pending = bytearray()

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        n = len(view)
        need = PIECE - len(self._pending)
        if n < need:
            self._pending += view
            return n
        if self._pending:
            self._pending += view[:need]
            self._write_all(memoryview(self._pending))
            self._pending = bytearray()
            view = view[need:]
        whole = len(view) - len(view) % PIECE
        if whole:
            self._write_all(view[:whole])  # straight from the caller's buffer: no copy
        self._pending += view[whole:]
        return n

    def _write_all(self, view: memoryview) -> None:
        while len(view):
            view = view[self._f.write(view) :]

    @property
    def closed(self) -> bool:
        return self._f.closed

    def close(self) -> None:
        if self._f.closed:
            return
        try:
            self._write_all(memoryview(self._pending))
            self._pending = bytearray()
        finally:
            self._f.close()

    def __enter__(self) -> AlignedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
