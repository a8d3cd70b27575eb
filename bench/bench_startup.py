"""The start-up measurement the sweep reports (``python -m bench.sweep``): whole CLI runs."""

from __future__ import annotations

from bench.sweep import STARTUP_COMMANDS, startup, tables


def test_startup_times_each_command_in_a_fresh_interpreter() -> None:
    rows = startup(runs=1)
    assert [r["command"] for r in rows] == list(STARTUP_COMMANDS)
    for r in rows:
        assert r["status"] == "ok", r.get("error")
        assert len(r["runs_s"]) == 1
        assert 0 < r["median_s"] <= r["max_s"]
    md = tables({"startup": rows, "classify": [], "compile": [], "replay": []})
    assert "| npemu demo |" in md and "| npemu replay (three-tier) |" in md
