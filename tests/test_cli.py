"""The command line: outputs, exit codes and error messages, on the bundled example."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dataplane.cli import main

ROOT = Path(__file__).resolve().parents[1]
THREE_TIER = str(ROOT / "examples" / "three-tier")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_matrix_json_has_the_contracted_shape(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "matrix",
        "-f",
        THREE_TIER,
        "--port",
        "3306",
        "--endpoint",
        "192.168.5.10",
        "-o",
        "json",
    )
    assert code == 0
    results = json.loads(out)["results"]
    cells = {(r["from"], r["to"], r["port"], r["protocol"]): r["verdict"] for r in results}
    assert len(cells) == 25  # 4 pods + 1 endpoint, squared
    assert cells[("prod/api", "prod/db", 3306, "TCP")] == "allow"
    assert cells[("prod/web", "prod/db", 3306, "TCP")] == "deny"
    assert cells[("192.168.5.10", "prod/db", 3306, "TCP")] == "allow"
    assert cells[("prod/db", "192.168.5.10", 3306, "TCP")] == "deny"  # db may only push on 80


def test_matrix_csv_and_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "matrix", "-f", THREE_TIER, "--port", "80/TCP", "-o", "csv")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "from,to,port,protocol,verdict"
    assert "monitoring/prometheus,prod/web,80,TCP,allow" in lines
    code, out, _ = run(capsys, "matrix", "-f", THREE_TIER, "--port", "5000")
    assert code == 0 and "port 5000/TCP" in out and " X " in out and "\033[" not in out


def test_check_explains_and_sets_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "check", "-f", THREE_TIER, "--from", "prod/api", "--to", "prod/db", "--port", "3306"
    )
    assert code == 0
    assert "prod/db ingress[0] from[0] ports[0]" in out and "ct=established" in out
    code, out, _ = run(
        capsys,
        "check",
        "-f",
        THREE_TIER,
        "--from",
        "prod/web",
        "--to",
        "prod/db",
        "--port",
        "3306",
        "-o",
        "json",
    )
    assert code == 1
    data = json.loads(out)
    assert data["verdict"] == "deny"
    assert (
        data["egress"]["verdict"] == "deny"
        and data["egress"]["reason"] == "no egress rule allows (prod/web)"
    )
    assert data["ingress"]["verdict"] == "deny" and data["ingress"]["policies"] == ["prod/db"]
    assert [p["ct"] for p in data["packets"]] == ["new", "invalid"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["check", "--from", "prod/nope", "--to", "prod/db", "--port", "80"],
            "unknown pod 'prod/nope'",
        ),
        (
            ["check", "--from", "prod/web", "--to", "prod/db", "--port", "80/ICMP"],
            "bad port '80/ICMP'",
        ),
        (["check", "--from", "prod/web", "--to", "prod/db", "--port", "70000"], "bad port '70000'"),
        (["matrix", "--endpoint", "not-an-ip"], "neither namespace/pod nor an IP address"),
        (["compile", "--node", "node-9"], "unknown node 'node-9'"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, _, err = run(capsys, *argv[:1], "-f", THREE_TIER, *argv[1:])
    assert code == 2
    assert message in err and "Traceback" not in err
    assert err.count("\n") == 1


def test_invalid_manifest_reports_field_path_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("""apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from:
    - ipBlock: {cidr: 10.0.0.0/16, except: [10.0.0.0/8]}
""")
    code, _, err = run(capsys, "compile", "-f", str(bad))
    assert code == 2
    assert "NetworkPolicy x/p" in err and "spec.ingress[0].from[0].ipBlock.except[0]" in err


@pytest.mark.parametrize("fmt", ["text", "json", "iptables", "ip6tables", "ipset", "nft"])
def test_compile_outputs(capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    code, out, _ = run(capsys, "compile", "-f", THREE_TIER, "-o", fmt)
    assert code == 0 and out.strip()
    if fmt == "json":
        assert json.loads(out)["entry"] == "NPEMU-FORWARD"
    if fmt == "iptables":
        assert out.startswith("*filter") or "*filter" in out
        assert "-j NPEMU-FORWARD" in out


def test_compile_reads_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    text = (
        (Path(THREE_TIER) / "cluster.yaml").read_text()
        + "---\n"
        + (Path(THREE_TIER) / "policies.yaml").read_text()
    )
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    code, out, _ = run(capsys, "compile", "-f", "-", "-o", "json")
    assert code == 0 and len(json.loads(out)["chains"]) > 3


def test_console_script_help_teaches() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dataplane.cli", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0
    for word in ("compile", "matrix", "check", "replay", "generate", "demo", "examples:"):
        assert word in proc.stdout


def test_matrix_png_heatmap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "m.png"
    code, _, err = run(
        capsys, "matrix", "-f", THREE_TIER, "--port", "80", "--port", "3306", "--png", str(png)
    )
    assert code == 0 and "heatmap written" in err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_commands_run_without_numba_blas_and_leave_scipy_importable() -> None:
    """The command line keeps numba from loading SciPy's BLAS while a command runs (start-up
    time), and puts sys.modules back afterwards, so SciPy stays importable in the process."""
    script = """
import importlib.util, io, sys, contextlib
from dataplane.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    code = main(["check", "-f", "examples/three-tier", "--from", "prod/web", "--to", "prod/db",
                 "--port", "3306"])
import numba.np.arraymath as arraymath
blas = "scipy.linalg.cython_blas"
print(code in (0, 1), arraymath._HAVE_BLAS, blas in sys.modules and sys.modules[blas] is None)
if importlib.util.find_spec("scipy") is not None:
    import scipy.linalg  # would fail if the None entry had been left behind
"""
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["True", "False", "False"], out.stdout
