"""`npemu bench`: the scaling sweep from the command line, run for real in its quick mode."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from dataplane.cli import _failed_points, main


@pytest.fixture(scope="module")
def quick_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict, str, Path]:
    """One `npemu bench --quick -o json` run (about half a minute), shared by the tests; capsys
    is per test, so output is captured by hand."""
    out = tmp_path_factory.mktemp("bench")
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["bench", "--quick", "--out", str(out), "-o", "json"])
    return code, json.loads(stdout.getvalue()), stderr.getvalue(), out


@pytest.mark.slow
def test_quick_sweep_measures_every_section_and_agrees_with_its_baselines(
    quick_sweep: tuple[int, dict, str, Path],
) -> None:
    code, results, _err, _out = quick_sweep
    assert code == 0
    assert results["quick"] is True
    for section in ("startup", "classify", "compile", "replay"):
        assert results[section], section
        assert all(r["status"] == "ok" for r in results[section]), section
    classify = results["classify"]
    assert [r["target_rules"] for r in classify] == [100, 1_000, 10_000]
    assert all(r["engine_agrees_with_walker"] for r in classify)
    assert all(r["engine_ns_per_packet"] > 0 for r in classify)
    # the walker's linear growth is what the engine avoids
    walker = [r["walker_rules_inspected"] for r in classify]
    assert walker == sorted(walker) and walker[-1] > 10 * walker[0]
    replay = {r["label"]: r for r in results["replay"]}
    assert set(replay) == {"size-20000", "size-50000", "syn-scan"}
    for r in replay.values():
        assert r["counts_match_expected"] and r["handwritten_counts_match"], r["label"]
        assert r["packets"] == r["allowed"] + r["dropped"] > 0
        assert r["ratio_vs_handwritten"] > 0
    assert replay["size-50000"]["scapy_counts_match_prefix"]


@pytest.mark.slow
def test_quick_sweep_writes_results_and_plots_and_reports_progress(
    quick_sweep: tuple[int, dict, str, Path],
) -> None:
    _code, results, err, out = quick_sweep
    assert json.loads((out / "sweep.json").read_text())["replay"] == results["replay"]
    csv_lines = (out / "sweep.csv").read_text().splitlines()
    sections = [line.split(",", 1)[0] for line in csv_lines[1:]]
    assert csv_lines[0].startswith("section,")
    assert sections.count("classify") == 3 and sections.count("replay") == 3
    for name in ("classify.png", "compile.png", "replay.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert "classify: 100 rules" in err and "done in" in err  # progress on stderr


@pytest.mark.slow
def test_tables_prints_an_earlier_run(
    quick_sweep: tuple[int, dict, str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _code, _results, _err, out = quick_sweep
    assert main(["bench", "--tables", str(out / "sweep.json")]) == 0
    text = capsys.readouterr().out
    assert "| size-50000 |" in text and "| syn-scan |" in text
    assert main(["bench", "--tables", str(out / "sweep.json"), "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["quick"] is True


def test_bad_tables_input_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "--tables", str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("npemu: error: cannot read sweep results") and err.count("\n") == 1
    other = tmp_path / "other.json"
    other.write_text('{"results": []}')
    assert main(["bench", "--tables", str(other)]) == 2
    assert "is not a sweep.json" in capsys.readouterr().err


def test_an_unwritable_results_folder_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["bench", "--quick", "--out", str(blocker / "sub")]) == 2
    assert "cannot create the results folder" in capsys.readouterr().err


def test_failed_points_are_named_and_exceeded_ones_are_not() -> None:
    results = {
        "startup": [{"command": "npemu demo", "status": "ok"}],
        "classify": [{"rules": 100, "status": "exceeded"}],
        "compile": [{"pods": 5000, "status": "error", "error": "MemoryError\n"}],
        "replay": [{"label": "size-50000", "status": "error", "error": "boom"}],
    }
    assert _failed_points(results) == ["compile 5000: MemoryError", "replay size-50000: boom"]
    assert _failed_points({"replay": [{"label": "x", "status": "ok"}]}) == []
