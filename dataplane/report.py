"""Output formatting for matrix and check: text tables, CSV, JSON, PNG heatmaps."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from itertools import groupby
from typing import Any

from compiler.inventory import Endpoint

from .probe import ProbeResult

RED, GREEN, DIM, RESET = "\033[31m", "\033[32m", "\033[2m", "\033[0m"
CELL = {"allow": ".", "deny": "X", "n/a": "-"}


def matrix_json(results: Sequence[ProbeResult]) -> str:
    return json.dumps({"results": [r.row() for r in results]}, indent=2)


def matrix_csv(results: Sequence[ProbeResult]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(
        out, fieldnames=["from", "to", "port", "protocol", "verdict"], lineterminator="\n"
    )
    writer.writeheader()
    for r in results:
        writer.writerow(r.row())
    return out.getvalue()


def _namespace(label: str) -> str:
    return label.split("/", 1)[0] if "/" in label else "(ip)"


def matrix_table(results: Sequence[ProbeResult], colour: bool = False) -> str:
    """One grid per port: rows are sources, columns destinations (numbered, with a legend),
    grouped by namespace. ``.`` allow, ``X`` deny, ``-`` no common IP family."""
    lines: list[str] = []
    by_port = groupby(results, key=lambda r: (r.spec.port, r.spec.protocol))
    for (port, proto), group in by_port:
        rows = list(group)
        labels = list(dict.fromkeys(r.spec.src.label for r in rows))
        index = {label: i for i, label in enumerate(labels, 1)}
        cells = {(r.spec.src.label, r.spec.dst.label): r.verdict for r in rows}
        width = max(len(label) for label in labels)
        denied = sum(r.verdict == "deny" for r in rows)
        lines.append(
            f"port {port}/{proto}: {len(rows) - denied} allowed, {denied} denied "
            f"(rows: from, columns: to; . allow, X deny)"
        )
        groups = [list(members) for _, members in groupby(labels, key=_namespace)]
        # every cell is 3 wide; one extra space separates namespaces
        lines.append(
            " " * (width + 5)
            + " ".join("".join(f"{index[m] % 100:>2} " for m in g) for g in groups).rstrip()
        )
        for g_src in groups:
            for src in g_src:
                cells_text = []
                for g in groups:
                    part = ""
                    for dst in g:
                        verdict = cells.get((src, dst), "n/a")
                        mark = CELL[verdict]
                        if colour:
                            mark = (
                                (RED if verdict == "deny" else GREEN if verdict == "allow" else DIM)
                                + mark
                                + RESET
                            )
                        part += f" {mark} "
                    cells_text.append(part)
                lines.append(f"{index[src]:>3} {src:<{width}} " + " ".join(cells_text).rstrip())
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def matrix_png(results: Sequence[ProbeResult], path: str) -> None:
    """A heatmap per port, readable at 50+ pods (labels shrink with the count)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import ListedColormap

    groups = [
        (key, list(g)) for key, g in groupby(results, key=lambda r: (r.spec.port, r.spec.protocol))
    ]
    n_ports = max(len(groups), 1)
    labels0 = list(dict.fromkeys(r.spec.src.label for r in groups[0][1])) if groups else []
    size = max(6.0, 0.22 * len(labels0) + 3)
    fig, axes = plt.subplots(1, n_ports, figsize=(size * n_ports, size), squeeze=False)
    cmap = ListedColormap(["#d62728", "#2ca02c", "#cccccc"])
    for ax, ((port, proto), rows) in zip(axes[0], groups, strict=False):
        labels = list(dict.fromkeys(r.spec.src.label for r in rows))
        pos = {label: i for i, label in enumerate(labels)}
        grid = np.full((len(labels), len(labels)), 2)
        for r in rows:
            grid[pos[r.spec.src.label], pos[r.spec.dst.label]] = {"deny": 0, "allow": 1}.get(
                r.verdict, 2
            )
        ax.imshow(grid, cmap=cmap, vmin=0, vmax=2)
        fontsize = max(4, min(10, int(500 / max(len(labels), 1))))
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=fontsize)
        ax.set_yticks(range(len(labels)), labels, fontsize=fontsize)
        ax.set_xlabel("to")
        ax.set_ylabel("from")
        ax.set_title(f"{port}/{proto}  (green allow, red deny)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _named(endpoint: Endpoint) -> str:
    """``10.0.0.1 (prod/web)`` for a pod's address, else the label."""
    if endpoint.pod is not None and endpoint.pod.key != endpoint.label:
        return f"{endpoint.label} ({endpoint.pod.key})"
    return endpoint.label


def check_text(result: ProbeResult) -> str:
    spec, exp = result.spec, result.explanation
    head = f"{_named(spec.src)} -> {_named(spec.dst)} {spec.port}/{spec.protocol}"
    lines = [f"{head}: {result.verdict.upper()}"]
    if "error" in exp:
        return lines[0] + f"\n  {exp['error']}\n"
    for direction in ("egress", "ingress"):
        d = exp[direction]
        who = _named(spec.src if direction == "egress" else spec.dst)
        iso = "isolated" if d.get("isolated") else "not isolated"
        pols = f" by {', '.join(d['policies'])}" if d.get("policies") else ""
        lines.append(f"  {direction:<8} of {who}: {d.get('verdict', '?')} ({iso}{pols})")
        where = f" [{d['chain']} rule {d['rule']}]" if d.get("chain") else ""
        lines.append(f"           {d.get('reason', '')}{where}")
    for pkt in exp.get("packets", []):
        dec = pkt["decided_by"]
        where = (
            f"{dec['chain']} rule {dec['rule']}" if dec.get("rule") is not None else dec["chain"]
        )
        lines.append(
            f"  {pkt['packet']:<8} ct={pkt['ct']:<11} {pkt['verdict']:<6} {where}: {dec['reason']}"
        )
    return "\n".join(lines) + "\n"


def check_json(result: ProbeResult) -> str:
    data: dict[str, Any] = dict(result.row())
    data.update(result.explanation)
    return json.dumps(data, indent=2)
