"""A cache-line prefetch hint for numba kernels.

Kernels that visit scattered memory (a hash table's slots, the headers of frames laid out one
after another in a capture) know where they will read a few iterations before they get there;
asking for those lines early overlaps the trips to memory instead of waiting on each in turn.
"""

from __future__ import annotations

from llvmlite import ir as llir
from numba import config, types
from numba.core import cgutils
from numba.extending import intrinsic

if config.DISABLE_JIT:

    def prefetch(arr, i, offset):
        pass

else:

    @intrinsic
    def prefetch(typingctx, arr, i, offset):
        """Ask the CPU to start loading the cache line ``offset`` bytes into row ``i`` of
        ``arr``. A hint: nothing waits for it and no result depends on it."""

        def codegen(context, builder, sig, args):
            aryty = sig.args[0]
            ary = context.make_array(aryty)(context, builder, args[0])
            inds = [args[1]] + [context.get_constant(types.intp, 0)] * (aryty.ndim - 1)
            ptr = cgutils.get_item_pointer2(
                context,
                builder,
                data=ary.data,
                shape=cgutils.unpack_tuple(builder, ary.shape),
                strides=cgutils.unpack_tuple(builder, ary.strides),
                layout=aryty.layout,
                inds=inds,
                wraparound=False,
            )
            i8p = llir.IntType(8).as_pointer()
            i32 = llir.IntType(32)
            ptr = builder.gep(builder.bitcast(ptr, i8p), [args[2]])
            fnty = llir.FunctionType(llir.VoidType(), [i8p, i32, i32, i32])
            fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
            builder.call(fn, [ptr, i32(0), i32(3), i32(1)])  # read, keep in all levels, data
            return context.get_dummy_value()

        return types.void(arr, i, offset), codegen
