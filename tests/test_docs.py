"""Every command shown in docs/, README.md and examples/*/README.md runs, and prints what the
page says it prints. Commands run from the repository root.

A ```console block holds `$ command` lines each followed by its expected output; a line `...`
stands for any number of lines. Run with NPEMU_UPDATE_DOCS=1 to rewrite the blocks from real runs,
for every page or only the pages named
(`NPEMU_UPDATE_DOCS=1 python tests/test_docs.py examples/one-dash/README.md`): an excerpt that
still matches is kept as written, so hand-made elisions survive; otherwise a command followed only
by `...` is filled with the whole output, and any other excerpt keeps the lines before its first
`...` as its length.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "README.md",
    *sorted((ROOT / "examples").glob("*/README.md")),
]
BLOCK = re.compile(r"```console\n(.*?)```", re.S)


def _commands(text: str) -> list[tuple[str, list[str]]]:
    out: list[tuple[str, list[str]]] = []
    for block in BLOCK.findall(text):
        for line in block.splitlines():
            if line.startswith("$ "):
                out.append((line[2:], []))
            elif out:
                out[-1][1].append(line)
    return out


def _run(command: str) -> str:
    argv = shlex.split(command)
    if argv[0] == "npemu":
        argv = [sys.executable, "-m", "dataplane.cli", *argv[1:]]
    proc = subprocess.run(
        argv,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "100"},
    )
    return (proc.stdout + proc.stderr).rstrip("\n")


def _matches(expected: list[str], actual: list[str]) -> bool:
    if not expected:
        return not actual
    if expected[0] == "...":
        return any(_matches(expected[1:], actual[i:]) for i in range(len(actual) + 1))
    return (
        bool(actual)
        and expected[0].rstrip() == actual[0].rstrip()
        and _matches(expected[1:], actual[1:])
    )


CASES = [(doc, cmd, exp) for doc in DOCS for cmd, exp in _commands(doc.read_text())]


def _name(doc: Path) -> str:
    return doc.relative_to(ROOT).as_posix()


@pytest.mark.parametrize(
    ("doc", "command", "expected"), CASES, ids=[f"{_name(d)}:{c[:60]}" for d, c, _ in CASES]
)
def test_documented_command_output(doc: Path, command: str, expected: list[str]) -> None:
    actual = _run(command).splitlines()
    while expected and not expected[-1].strip():
        expected = expected[:-1]
    assert _matches(expected, actual), "\n".join(["expected:", *expected, "actual:", *actual])


def test_docs_have_commands() -> None:
    assert len(CASES) >= 5


def test_every_example_readme_is_covered() -> None:
    """Each example folder has a README whose console blocks run here."""
    folders = sorted(p for p in (ROOT / "examples").iterdir() if p.is_dir() and p.name[0] != "_")
    assert folders
    for folder in folders:
        readme = folder / "README.md"
        assert readme in DOCS, f"{_name(folder)} has no README.md"
        commands = [c for d, c, _ in CASES if d == readme]
        assert commands, f"{_name(readme)} shows no ```console command"
        assert all(f"examples/{folder.name}" in c for c in commands), _name(readme)


def update_docs(only: list[str] | None = None) -> None:
    """Rewrite the console blocks of every page, or only of the pages named (paths)."""
    chosen = {Path(p).resolve() for p in only or []}
    for doc in DOCS:
        if chosen and doc not in chosen:
            continue
        text = doc.read_text()

        def fill(match: re.Match[str]) -> str:
            lines: list[str] = []
            for command, expected in _commands("```console\n" + match.group(1) + "```"):
                actual = _run(command).splitlines()
                while expected and not expected[-1].strip():
                    expected = expected[:-1]
                if expected not in ([], ["..."]) and _matches(expected, actual):
                    lines += [f"$ {command}", *expected]
                    continue
                if "..." in expected and expected != ["..."]:
                    keep = expected.index("...")
                    actual = [*actual[:keep], "..."] if len(actual) > keep else actual
                lines += [f"$ {command}", *actual]
            return "```console\n" + "\n".join(lines) + "\n```"

        doc.write_text(BLOCK.sub(fill, text))


if __name__ == "__main__" and os.environ.get("NPEMU_UPDATE_DOCS"):
    # NPEMU_UPDATE_DOCS=1 python tests/test_docs.py [PAGE.md ...]
    update_docs(sys.argv[1:])
