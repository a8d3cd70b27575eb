"""NEW-packet classification (every packet a new flow): fast engine against the walker and the
hand-written rule loop, at about 100 / 1k / 10k rules. Verdicts must agree."""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
import pytest

from bench.baselines import RuleLoop
from bench.conftest import ruleset_of
from bench.synth import flows_batch, scan_flows
from dataplane.engine import Engine
from dataplane.walker import Packet, Walker

RULES = [100, 1_000, 10_000]
ENGINE_PACKETS = 2_000
WALKER_PACKETS = 100


@cache
def _setup(rules: int) -> tuple[Any, Any, list[Packet], np.ndarray]:
    cluster, rs = ruleset_of(rules)
    batch = flows_batch(scan_flows(cluster, ENGINE_PACKETS))
    sample = [
        Packet(4, int(batch.src_lo[i]), int(batch.dst_lo[i]), 6, int(batch.dport[i]))
        for i in range(WALKER_PACKETS)
    ]
    walked = np.array([Walker(rs).walk(p).verdict == "ACCEPT" for p in sample])
    return rs, batch, sample, walked


@pytest.mark.parametrize("rules", RULES)
def test_classify_engine(benchmark, rules: int) -> None:
    rs, batch, _sample, walked = _setup(rules)
    engine = Engine(rs)
    verdict = benchmark.pedantic(engine.evaluate, args=(batch, "NEW"), rounds=1)
    benchmark.extra_info.update(rules=rs.rule_count(), packets=len(batch))
    assert len(verdict) == len(batch)
    assert (verdict[:WALKER_PACKETS] == walked).all()


@pytest.mark.parametrize("rules", RULES)
def test_classify_walker(benchmark, rules: int) -> None:
    rs, _batch, sample, walked = _setup(rules)
    walker = Walker(rs)
    traces = benchmark.pedantic(lambda: [walker.walk(p) for p in sample], rounds=1)
    inspected = [t.rules_inspected for t in traces]
    benchmark.extra_info.update(
        rules=rs.rule_count(), packets=len(sample), rules_inspected_mean=float(np.mean(inspected))
    )
    assert [t.verdict == "ACCEPT" for t in traces] == walked.tolist()
    assert min(inspected) >= 1


@pytest.mark.parametrize("rules", RULES)
def test_classify_handwritten_loop(benchmark, rules: int) -> None:
    rs, _batch, sample, walked = _setup(rules)
    loop = RuleLoop(rs)
    got = benchmark.pedantic(
        lambda: [loop.accepts(4, p.src, p.dst, 6, p.dport) for p in sample], rounds=1
    )
    benchmark.extra_info.update(rules=rs.rule_count(), packets=len(sample))
    assert got == walked.tolist()
