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


def test_profile_report_names_every_stage(tmp_path) -> None:
    """``python -m bench.sweep --profile`` on a small capture: every stage is timed and the
    stages account for the replay (the glue line is what they leave out)."""
    from bench.sweep import profile_replay

    report = profile_replay(tmp_path, packets=5_000, flows=200)
    assert (tmp_path / "profile.txt").read_text() == report
    assert report.startswith("replay of 5000 packets / 200 flows")
    rows = {
        line.split()[0]: line.split()
        for line in report.splitlines()[3:10]
        if line and not line.startswith(" ")
    }
    stages = ["read", "parse", "conntrack", "reasons", "count", "(glue)"]
    assert list(rows) == stages
    ns_per_packet = {name: float(row[-1]) for name, row in rows.items() if name != "(glue)"}
    assert all(ns > 0 for ns in ns_per_packet.values()), ns_per_packet
    assert "function calls" in report and "Ordered by: internal time" in report  # cProfile
