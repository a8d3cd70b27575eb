"""Pausing Python's cyclic garbage collector around builds of many long-lived objects."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Builds that allocate hundreds of thousands of long-lived objects trigger full collections
    that traverse the whole, growing heap, again and again. What the compiler and the engine
    build has no reference cycles, so reference counting still frees all of its garbage. The
    collector is switched back on however the block is left, and left off if the caller had
    switched it off."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
