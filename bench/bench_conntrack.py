"""Connection tracking over a parsed capture: npemu's Conntrack against the dict baseline."""

from __future__ import annotations

import numpy as np

from bench.baselines import DictConntrack, RuleLoop
from dataplane.capture import open_capture
from dataplane.conntrack import Conntrack
from dataplane.engine import Engine
from dataplane.packets import PacketBatch


def _batch(path: str) -> PacketBatch:
    return PacketBatch.concat([c.parse() for c in open_capture(path).chunks()])


def test_conntrack_run(benchmark, quick_workload) -> None:
    batch = _batch(quick_workload.path)
    allowed_if_new = Engine(quick_workload.ruleset).evaluate(batch, "NEW")

    def run() -> np.ndarray:
        verdict, _states, _reasons = Conntrack().run(batch, allowed_if_new)
        return np.asarray(verdict, dtype=bool)

    verdict = benchmark.pedantic(run, rounds=1)
    benchmark.extra_info["packets"] = len(batch)
    assert (int(verdict.sum()), int((~verdict).sum())) == quick_workload.expected


def test_conntrack_dict_baseline(benchmark, quick_workload) -> None:
    batch = _batch(quick_workload.path)
    rows = list(
        zip(
            batch.ts.tolist(),
            batch.src_lo.tolist(),
            batch.dst_lo.tolist(),
            batch.proto.tolist(),
            batch.sport.tolist(),
            batch.dport.tolist(),
            batch.tcp_flags.tolist(),
            strict=True,
        )
    )
    loop = RuleLoop(quick_workload.ruleset)

    def run() -> int:
        ct = DictConntrack()
        return sum(ct.decide(loop, t, 4, s, d, p, sp, dp, f) for t, s, d, p, sp, dp, f in rows)

    allowed = benchmark.pedantic(run, rounds=1)
    assert (allowed, len(rows) - allowed) == quick_workload.expected
