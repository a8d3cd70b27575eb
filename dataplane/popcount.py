"""Counting a word's set bits in numba kernels (LLVM's ctpop: one instruction on x86-64)."""

from __future__ import annotations

import numpy as np
from numba import config, njit, types
from numba.extending import intrinsic

if config.DISABLE_JIT:

    def popcount(x):
        return np.uint64(bin(int(x)).count("1"))

else:

    @intrinsic
    def _ctpop(typingctx, x):
        if x != types.uint64:
            return None

        def codegen(context, builder, sig, args):
            return builder.ctpop(args[0])

        return types.uint64(types.uint64), codegen

    @njit(cache=True, nogil=True, inline="always")
    def popcount(x):
        """The number of set bits in the uint64 ``x`` (callable from Python too)."""
        return _ctpop(x)
