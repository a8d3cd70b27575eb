"""Replay end to end (read + parse + conntrack + classify + count) against the baselines on the
same capture; every run must report the verdict counts the workload implies."""

from __future__ import annotations

from bench.baselines import RuleLoop, handwritten_replay, scapy_replay
from dataplane.capture import open_capture
from dataplane.replay import Replayer, ReplaySummary, replay

SCAPY_PREFIX = 200


def _replay(path: str, replayer: Replayer) -> ReplaySummary:
    return replay((c.parse() for c in open_capture(path).chunks()), replayer)


def test_replay_npemu(benchmark, quick_workload) -> None:
    rs = quick_workload.ruleset
    # start-up (engine compile, numba cache load) stays out of the timing: fresh state per round
    summary = benchmark.pedantic(
        _replay, setup=lambda: ((quick_workload.path, Replayer(rs)), {}), rounds=1
    )
    benchmark.extra_info.update(packets=summary.packets, rules=rs.rule_count())
    assert (summary.allowed, summary.dropped) == quick_workload.expected
    assert summary.packets == quick_workload.capture.packets


def test_replay_handwritten_baseline(benchmark, quick_workload) -> None:
    rs = quick_workload.ruleset
    loop = RuleLoop(rs)
    res = benchmark.pedantic(
        handwritten_replay, args=(quick_workload.path, rs), kwargs={"rules": loop}, rounds=1
    )
    assert (res.allowed, res.dropped) == quick_workload.expected


def test_replay_scapy_baseline(benchmark, quick_workload) -> None:
    rs = quick_workload.ruleset
    loop = RuleLoop(rs)
    res = benchmark.pedantic(
        scapy_replay, args=(quick_workload.path, rs, SCAPY_PREFIX), kwargs={"rules": loop}, rounds=1
    )
    ref = handwritten_replay(quick_workload.path, rs, max_packets=SCAPY_PREFIX, rules=loop)
    assert res.packets == SCAPY_PREFIX
    assert (res.allowed, res.dropped) == (ref.allowed, ref.dropped)
