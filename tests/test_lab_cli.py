"""`npemu lab`: kernel and emulator agree on the bundled example; non-root gets one clear line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dataplane.cli import main

THREE_TIER = str(Path(__file__).resolve().parents[1] / "examples" / "three-tier")


@pytest.mark.netns
@pytest.mark.parametrize("backend", ["iptables", "nft"])
def test_lab_verify_three_tier_agrees(capsys: pytest.CaptureFixture[str], backend: str) -> None:
    code = main(
        [
            "lab",
            "verify",
            "-f",
            THREE_TIER,
            "--port",
            "80",
            "--port",
            "5000",
            "--port",
            "3306",
            "--port",
            "53/UDP",
            "--endpoint",
            "192.168.5.10",
            "--backend",
            backend,
            "-o",
            "json",
        ]
    )
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["agree"] is True
    assert len(data["results"]) == 5 * 5 * 4
    assert all(r["kernel"] in ("allow", "deny") for r in data["results"])
    cells = {(r["from"], r["to"], r["port"]): r["kernel"] for r in data["results"]}
    assert cells[("prod/api", "prod/db", 3306)] == "allow"
    assert cells[("prod/web", "prod/db", 3306)] == "deny"
    assert cells[("192.168.5.10", "prod/db", 3306)] == "allow"


def test_lab_needs_root_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    code = main(["lab", "verify", "-f", THREE_TIER])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "root" in err and "CAP_NET_ADMIN" in err


def test_lab_without_manifests_is_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lab", "verify"]) == 2
    assert "needs -f" in capsys.readouterr().err
