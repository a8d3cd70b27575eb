"""Compilation: policies + inventory -> Ruleset (``lower``), and the engine's build on top."""

from __future__ import annotations

from bench.synth import ClusterSpec, make_cluster
from compiler.lower import lower
from dataplane.engine import Engine

SPEC = ClusterSpec(pods=1_000, namespaces=10, policies=100, nodes=10)


def test_compile_lower(benchmark) -> None:
    cluster = make_cluster(SPEC)
    rs = benchmark.pedantic(lower, args=(cluster,), rounds=3)
    benchmark.extra_info.update(pods=SPEC.pods, policies=SPEC.policies, rules=rs.rule_count())
    assert rs.rule_count() > SPEC.policies
    # deterministic: the same input lowers to the same IR
    assert lower(make_cluster(SPEC)).to_dict() == rs.to_dict()


def test_compile_engine_build(benchmark) -> None:
    rs = lower(make_cluster(SPEC))
    engine = benchmark.pedantic(Engine, args=(rs,), rounds=1)
    # every ipset a rule tests is interned, and nothing else
    used = {
        m.set for c in rs.chains.values() for r in c.rules for m in r.matches if hasattr(m, "set")
    }
    assert {s for s in engine.sets if not s.startswith("cidr:")} == used


def test_make_cluster_is_seeded() -> None:
    assert make_cluster(SPEC) == make_cluster(SPEC)
    assert len(make_cluster(SPEC).pods) == SPEC.pods
