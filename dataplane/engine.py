"""The fast evaluator: the walker's verdicts for whole batches, at numba speed.

Built once per Ruleset: the tables are flattened into a ``Program`` (runs of address-keyed rules
indexed by address), address and port equivalence classes are computed, and a bounded cache maps
(family, source identity, destination identity, protocol, port class, ct state) to the verdict
and the deciding rule. In front of the cache, the policy index (``dataplane.policy_index``)
decides a packet from a fixed set of table lookups when the tables have the shape
``compiler.lower`` gives them. A batch is one kernel call: the index costs a few lookups, a
cache hit an identity lookup and a hash probe, a miss a walk of only the rules that can match
the packet. None of them depends on how many rules there are.
"""

from __future__ import annotations

import numpy as np

from compiler.gc_pause import cyclic_gc_paused
from compiler.tables import Rule, Ruleset

from .classes import Classes, build_classes
from .engine_kernel import MAX_DEPTH, classify
from .packets import PacketBatch
from .policy_index import PolicyIndex, build_policy_index
from .program import CT_CODES, Program, compile_program, ipset_intervals

__all__ = ["CT_CODES", "Engine", "ipset_intervals"]

DEFAULT_CACHE = 1 << 16


class Engine:
    """``Engine(ruleset).evaluate(batch, ctstate)``. ``policy_index=False`` leaves every
    verdict to the cache and the walk; with it off, ``cache_size=0`` walks every packet."""

    def __init__(
        self, ruleset: Ruleset, cache_size: int = DEFAULT_CACHE, policy_index: bool = True
    ) -> None:
        if cache_size and cache_size & (cache_size - 1):
            raise ValueError("cache_size must be a power of two (or 0)")
        self.ruleset = ruleset
        # The build allocates millions of small objects next to a Ruleset of millions more: with
        # the collector on, its full passes over all of them took a good part of the build.
        with cyclic_gc_paused():
            self.program: Program = compile_program(ruleset)
            self.classes: Classes = build_classes(self.program)
            self.index: PolicyIndex = (
                build_policy_index(self.program, self.classes)
                if policy_index
                else PolicyIndex.off("turned off")
            )
        # (chain, index, rule) for every rule; evaluate_explained() reports positions in this list
        self.rules: list[tuple[str, int, Rule]] = self.program.rules
        self._prog = self.program.arrays()
        self._classes = self.classes.arrays()
        self._cache_keys = np.zeros((cache_size, 2), dtype=np.uint64)
        self._cache_vals = np.zeros(cache_size, dtype=np.int64)
        self._counters = np.zeros(6, dtype=np.int64)
        self._stack = np.zeros((MAX_DEPTH, 4), dtype=np.int64)

    @property
    def sets(self) -> list[str]:
        """The address sets the tables test: ipset names and ``cidr:<prefix>`` literals."""
        return self.program.set_names

    @property
    def stats(self) -> dict[str, int]:
        """Packets the policy index decided and the policy chains it consulted for them, cache
        hits, walks (misses) and the rules those walks inspected, so far."""
        return {
            "indexed": int(self._counters[4]),
            "hits": int(self._counters[0]),
            "walks": int(self._counters[1]),
            "rules_inspected": int(self._counters[3]),
            "policies_consulted": int(self._counters[5]),
        }

    def clear_cache(self) -> None:
        """Forget every cached verdict (benchmarks use it to time cold classification)."""
        self._cache_vals[:] = 0
        self._counters[2] = 0

    def evaluate(self, batch: PacketBatch, ctstate: np.ndarray | str = "NEW") -> np.ndarray:
        """ACCEPT (True) or DROP (False) per packet, as the walker would decide.

        ``ctstate``: one name for all packets, or a uint8 array of CT_CODES per packet.
        """
        return self.evaluate_explained(batch, ctstate)[0]

    def _kernel_args(self, batch: PacketBatch) -> tuple:
        """What the kernels take before their per-call arguments: the engine's arrays, then
        ``batch``'s columns."""
        return (
            self._prog,
            self.program.entry,
            len(self.program.s_family),
            self._classes,
            self.index.arrays,
            self._cache_keys,
            self._cache_vals,
            self._counters,
            self._stack,
            np.ascontiguousarray(batch.family),
            np.ascontiguousarray(batch.src_hi),
            np.ascontiguousarray(batch.src_lo),
            np.ascontiguousarray(batch.dst_hi),
            np.ascontiguousarray(batch.dst_lo),
            np.ascontiguousarray(batch.proto),
            np.ascontiguousarray(batch.dport),
        )

    def policy(self, batch: PacketBatch) -> tuple:
        """The engine's arrays and ``batch``'s columns, as ``Conntrack.run_policy`` hands them to
        its kernel; the last item is the decider array (int64, -1 = FORWARD's policy) it fills
        for the packets it asks about (the others keep -1)."""
        return (*self._kernel_args(batch), np.full(len(batch), -1, dtype=np.int64))

    def evaluate_explained(
        self, batch: PacketBatch, ctstate: np.ndarray | str = "NEW"
    ) -> tuple[np.ndarray, np.ndarray]:
        """(accepted, decider): decider is the index in ``self.rules`` of the ACCEPT or DROP rule
        that ended each packet's walk, or -1 when it fell through to FORWARD's policy."""
        n = len(batch)
        ct = (
            np.full(n, CT_CODES[ctstate], np.uint8)
            if isinstance(ctstate, str)
            else np.ascontiguousarray(ctstate, dtype=np.uint8)
        )
        ok = np.zeros(n, dtype=np.bool_)
        rule = np.zeros(n, dtype=np.int64)
        if n == 0:
            return ok, rule
        with np.errstate(over="ignore"):  # hashing wraps on purpose (matters only unjitted)
            classify(*self._kernel_args(batch), ct, ok, rule)
        return ok, rule
