"""The scaling sweep: ``python -m bench.sweep [--quick] [--out DIR] [--img DIR]``.

Every point runs in its own subprocess (``--point JSON``) so that it can be killed when it
exceeds its time budget (recorded as ``"exceeded"``; the sweep goes on) and so that its peak RSS
(``ru_maxrss``) is its own. Sections:

* classify  -- NEW packets (every packet a new flow) at 100 .. 100k rules: engine vs walker vs the
               hand-written rule loop, ns per packet, walker ``rules_inspected`` per packet.
* compile   -- pods x policies up to 150k x 10k: model build, ``lower`` (inventory included),
               engine build, peak RSS.
* replay    -- end to end (read + parse + conntrack + classify + count) against the two
               baselines in the same process, over capture sizes, flow counts and a SYN scan;
               RSS after the replay (before the baselines run) against capture size.

Writes ``sweep.json`` and ``sweep.csv`` into ``--out`` and log-log plots into ``--img``.
Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
IMG_DIR = Path(__file__).resolve().parent.parent / "docs" / "img"


def _rss_mb() -> float:
    """Peak RSS of this process so far, MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _log(msg: str) -> None:
    print(f"[sweep {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# points (run in a child process)


def point_classify(rules: int, packets: int, walker_budget_s: float, walker_max: int) -> dict:
    import numpy as np

    from bench.baselines import RuleLoop
    from bench.synth import cluster_for_rules, describe, flows_batch, scan_flows
    from dataplane.engine import Engine
    from dataplane.walker import Packet, Walker

    t0 = time.perf_counter()
    spec, cluster, rs = cluster_for_rules(rules)
    build_s = time.perf_counter() - t0
    batch = flows_batch(scan_flows(cluster, packets))
    t0 = time.perf_counter()
    engine = Engine(rs)
    engine_build_s = time.perf_counter() - t0
    engine.evaluate(batch.take(slice(0, 64)), "NEW")  # warm-up: first-call overheads

    def best_of(fn: Any, rounds: int = 7, setup: Any = None) -> float:
        """The fastest of ``rounds`` runs of ``fn``; ``setup`` runs before each, untimed."""
        best = float("inf")
        for _ in range(rounds):
            if setup is not None:
                setup()
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
            if best > 5.0:  # slow points: one round is measurement enough
                break
        return best

    # "cold": the verdict cache emptied before each run (outside the timing), so no packet is
    # answered from an earlier run
    cold_s = best_of(lambda: engine.evaluate(batch, "NEW"), setup=engine.clear_cache)
    before = engine.stats
    verdict = engine.evaluate(batch, "NEW")
    indexed = engine.stats["indexed"] - before["indexed"]
    consulted = engine.stats["policies_consulted"] - before["policies_consulted"]
    # the same engine without its policy index: a verdict cache in front of the walk
    cached = Engine(rs, policy_index=False)
    cached.evaluate(batch.take(slice(0, 64)), "NEW")

    cold_walks: list[int] = []  # walks per cold run: the same in every run

    def cache_cold() -> None:
        before = cached.stats["walks"]
        cached.evaluate(batch, "NEW")
        cold_walks.append(cached.stats["walks"] - before)

    cache_cold_s = best_of(cache_cold, setup=cached.clear_cache)
    cached.evaluate(batch, "NEW")  # the cache is warm: every packet a hit
    warm_s = best_of(lambda: cached.evaluate(batch, "NEW"))
    walker_only = Engine(rs, cache_size=0, policy_index=False)
    walker_only.evaluate(batch.take(slice(0, 64)), "NEW")
    start = walker_only.stats
    walk_s = best_of(lambda: walker_only.evaluate(batch, "NEW"), rounds=1)
    walked = walker_only.stats
    engine_rules_per_walk = (walked["rules_inspected"] - start["rules_inspected"]) / max(
        walked["walks"] - start["walks"], 1
    )
    walker, loop = Walker(rs), RuleLoop(rs)
    pkts = [
        Packet(4, int(batch.src_lo[i]), int(batch.dst_lo[i]), 6, int(batch.dport[i]))
        for i in range(min(walker_max, len(batch)))
    ]
    inspected: list[int] = []
    walked: list[bool] = []
    t0 = time.perf_counter()
    for p in pkts:
        tr = walker.walk(p)
        inspected.append(tr.rules_inspected)
        walked.append(tr.verdict == "ACCEPT")
        if time.perf_counter() - t0 > walker_budget_s:
            break
    walker_s = time.perf_counter() - t0
    k = len(inspected)
    t0 = time.perf_counter()
    looped = [loop.accepts(4, p.src, p.dst, 6, p.dport) for p in pkts[:k]]
    loop_s = time.perf_counter() - t0
    agree = walked == [bool(v) for v in verdict[:k]] and looped == walked
    return {
        "target_rules": rules,
        "rules": rs.rule_count(),
        "sets": len(rs.sets),
        "cluster": describe(spec),
        "packets": len(batch),
        "distinct_headers": int(
            np.unique(
                np.stack([batch.src_lo, batch.dst_lo, batch.dport.astype(np.uint64)]), axis=1
            ).shape[1]
        ),
        "allowed_fraction": float(verdict.mean()),
        "build_s": build_s,
        "engine_build_s": engine_build_s,
        "engine_ns_per_packet": cold_s / len(batch) * 1e9,
        "engine_indexed_fraction": indexed / len(batch),
        "engine_policies_per_packet": consulted / len(batch),
        "engine_index": engine.index.reason or "on",
        "engine_cache_cold_ns_per_packet": cache_cold_s / len(batch) * 1e9,
        "engine_warm_ns_per_packet": warm_s / len(batch) * 1e9,
        "engine_walk_ns_per_packet": walk_s / len(batch) * 1e9,
        "engine_cold_walk_fraction": cold_walks[-1] / len(batch),
        "engine_rules_inspected": engine_rules_per_walk,
        "identities": sum(engine.classes.identities.values()),
        "walker_packets": k,
        "walker_ns_per_packet": walker_s / k * 1e9,
        "walker_rules_inspected": float(np.mean(inspected)),
        "loop_ns_per_packet": loop_s / k * 1e9,
        "engine_agrees_with_walker": bool(agree),
        "rss_mb": _rss_mb(),
    }


def point_compile(pods: int, policies: int, engine: bool) -> dict:
    from bench.synth import ClusterSpec, describe, make_cluster
    from compiler.lower import lower

    spec = ClusterSpec(
        pods=pods,
        namespaces=max(pods // 100, 1),
        policies=policies,
        nodes=max(pods // 100, 1),
    )
    t0 = time.perf_counter()
    cluster = make_cluster(spec)
    model_s = time.perf_counter() - t0
    rss_model = _rss_mb()
    t0 = time.perf_counter()
    rs = lower(cluster)
    lower_s = time.perf_counter() - t0
    rss_lower = _rss_mb()
    out: dict[str, Any] = {
        "pods": pods,
        "policies": policies,
        "cluster": describe(spec),
        "rules": rs.rule_count(),
        "chains": len(rs.chains),
        "sets": len(rs.sets),
        "set_entries": sum(len(s.entries) for s in rs.sets.values()),
        "model_s": model_s,
        "lower_s": lower_s,
        "rss_after_model_mb": rss_model,
        "rss_after_lower_mb": rss_lower,
    }
    if engine:
        from dataplane.engine import Engine

        t0 = time.perf_counter()
        Engine(rs)
        out["engine_build_s"] = time.perf_counter() - t0
    out["rss_mb"] = _rss_mb()
    return out


def point_capture(path: str, packets: int, flows: int, rules: int, mtu: bool, scan: bool) -> dict:
    """Write a workload capture (its own process: the generator's arrays must not count in a
    replay's RSS). Returns what the replay must report."""
    from bench.synth import (
        cluster_for_rules,
        expected_counts,
        scan_flows,
        workload,
        write_syn_scan,
    )

    _spec, cluster, rs = cluster_for_rules(rules)
    huge_before = _file_huge_pages_mb()
    t0 = time.perf_counter()
    if scan:
        info = write_syn_scan(path, scan_flows(cluster, packets))
        expected = None
    else:
        fl, info = workload(cluster, rs, flows, packets, path, mtu_payload=mtu)
        expected = expected_counts(fl, info.packets)
    return {
        "write_s": time.perf_counter() - t0,
        "packets": info.packets,
        "flows": info.flows,
        "bytes": info.bytes,
        "capture_seconds": info.seconds,
        "rules": rs.rule_count(),
        "expected": expected,
        # how much of the new capture the page cache holds in 2 MiB folios (0 where the file
        # system or kernel keeps 4 KiB pages): mapping small pages costs a replay ~60 ns/packet.
        # A system-wide counter, so approximate: other files' folios come and go meanwhile
        "page_cache_2mib_mb": _file_huge_pages_mb() - huge_before,
    }


def _meminfo_kib(field: str) -> int | None:
    """A /proc/meminfo figure in KiB (None where there is no such file or field)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _file_huge_pages_mb() -> float:
    """The page cache held in 2 MiB folios, system-wide (FileHugePages)."""
    kib = _meminfo_kib("FileHugePages")
    return float("nan") if kib is None else kib / 1024


def _load_kernels(path: str, rs: Any) -> None:
    """Numba's cached kernels load on their first call; a replay of the capture's first 256
    packets calls them all, so that start-up stays out of a timed replay."""
    from dataplane.capture import open_capture
    from dataplane.replay import Replayer, replay

    first = itertools.islice(open_capture(path).chunks(256), 1)
    replay((c.parse() for c in first), Replayer(rs))


REPLAY_RUNS = 5  # npemu's replay time is the median of this many runs (the best is kept too)


def point_replay(
    path: str, rules: int, expected: list[int] | None, scapy_prefix: int, baseline: bool
) -> dict:
    from bench.baselines import RuleLoop, handwritten_replay, scapy_replay
    from bench.synth import cluster_for_rules
    from dataplane.capture import open_capture
    from dataplane.replay import Replayer, replay

    _spec, _cluster, rs = cluster_for_rules(rules)
    # start-up (excluded from the timing): numba's cached kernels load on their first call (a
    # replay of the first 256 packets calls them all), the engine compiles the ruleset
    t0 = time.perf_counter()
    _load_kernels(path, rs)
    replayer = Replayer(rs)
    startup_s = time.perf_counter() - t0
    rss_before = _rss_mb()
    # the median of REPLAY_RUNS replays, a fresh Replayer each: one run on a shared VM can be
    # 1.5x off. The best run is recorded beside it: what the core does when nothing interferes
    # (timeit's reading of repeated runs)
    runs = []
    for run in range(REPLAY_RUNS):
        replayer = replayer if run == 0 else Replayer(rs)
        t0 = time.perf_counter()
        summary = replay((c.parse() for c in open_capture(path).chunks()), replayer)
        runs.append(time.perf_counter() - t0)
        if run == 0:
            rss_after = _rss_mb()
            first = (summary.allowed, summary.dropped)
        assert (summary.allowed, summary.dropped) == first
    replay_s = statistics.median(runs)
    out: dict[str, Any] = {
        "rules": rs.rule_count(),
        "packets": summary.packets,
        "allowed": summary.allowed,
        "dropped": summary.dropped,
        "startup_s": startup_s,
        "replay_s": replay_s,
        "replay_runs_s": runs,
        "npemu_pps": summary.packets / replay_s,
        "npemu_best_pps": summary.packets / min(runs),
        "rss_before_mb": rss_before,
        "rss_mb": rss_after,
        "counts_match_expected": expected is None
        or [summary.allowed, summary.dropped] == list(expected),
    }
    del summary, replayer
    if baseline:
        loop = RuleLoop(rs)
        hw = handwritten_replay(path, rs, rules=loop)
        out.update(
            handwritten_s=hw.seconds,
            handwritten_pps=hw.pps,
            handwritten_counts_match=[hw.allowed, hw.dropped] == [out["allowed"], out["dropped"]],
            ratio_vs_handwritten=out["npemu_pps"] / hw.pps,
        )
        if scapy_prefix:
            sc = scapy_replay(path, rs, scapy_prefix, out["packets"], rules=loop)
            ref = handwritten_replay(path, rs, max_packets=scapy_prefix, rules=loop)
            out.update(
                scapy_prefix=sc.extrapolated_from or sc.packets,
                scapy_pps=sc.pps,
                scapy_extrapolated_s=sc.seconds,
                scapy_counts_match_prefix=[sc.allowed, sc.dropped] == [ref.allowed, ref.dropped],
                ratio_vs_scapy=out["npemu_pps"] / sc.pps,
            )
    return out


POINTS = {
    "classify": point_classify,
    "compile": point_compile,
    "capture": point_capture,
    "replay": point_replay,
}


def run_point(kind: str, budget_s: float, **params: Any) -> dict:
    """Run one point in a child process; ``{"status": "exceeded"}`` past ``budget_s``."""
    arg = json.dumps({"kind": kind, "params": params})
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "bench.sweep", "--point", arg],
            capture_output=True,
            text=True,
            timeout=budget_s,
            cwd=Path(__file__).resolve().parent.parent,
        )
    except subprocess.TimeoutExpired:
        return {"status": "exceeded", "budget_s": budget_s, **params}
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-5:]
        return {"status": "error", "error": "\n".join(tail), **params}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"status": "ok", "wall_s": wall, **params, **result}


# "{example}" stands for the bundled three-tier example's folder, wherever npemu is installed
STARTUP_COMMANDS = {
    "npemu demo": ["demo"],
    "npemu replay (three-tier)": ["replay", "-f", "{example}", "{example}/traffic.pcap"],
}


def startup(runs: int) -> list[dict]:
    """Wall time of whole CLI runs on the three-tier example, each a fresh interpreter: imports,
    numba's cache load, compile and the work itself. Python may write bytecode caches, as it
    has after a ``pip install`` (an unset PYTHONDONTWRITEBYTECODE): one untimed run first
    writes them."""
    from dataplane.cli import example_dir

    root = Path(__file__).resolve().parent.parent
    example = example_dir("three-tier")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    rows = []
    for label, args in STARTUP_COMMANDS.items():
        cmd = [sys.executable, "-m", "dataplane.cli", *(a.format(example=example) for a in args)]
        times = []
        for i in range(runs + 1):
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                rows.append({"command": label, "status": "error", "error": proc.stderr[-500:]})
                break
            if i:
                times.append(time.perf_counter() - t0)
        else:
            rows.append(
                {
                    "command": label,
                    "status": "ok",
                    "runs_s": times,
                    "median_s": statistics.median(times),
                    "max_s": max(times),
                }
            )
    return rows


# ---------------------------------------------------------------------------------------------
# plan


def plan(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "classify": [100, 1_000, 10_000],
            "classify_packets": 5_000,
            "walker_max": 100,
            "compile": [(100, 10), (1_000, 100), (5_000, 1_000)],
            "replay_sizes": [20_000, 50_000],
            "replay_flows": 2_000,
            "flow_sweep": [],
            "scan": 10_000,
            "big": None,
            "scapy_prefix": 300,
            "startup_runs": 1,
            "budget": 120.0,
        }
    return {
        "classify": [100, 1_000, 10_000, 100_000],
        "classify_packets": 10_000,
        "walker_max": 300,
        "compile": [
            (100, 10),
            (1_000, 100),
            (5_000, 1_000),
            (20_000, 2_000),
            (50_000, 5_000),
            (150_000, 10_000),
        ],
        "replay_sizes": [50_000, 100_000, 300_000, 1_000_000],
        "replay_flows": 10_000,
        "flow_sweep": [100, 1_000, 20_000],
        "scan": 100_000,
        "big": 2 << 30,  # bytes: the DESIGN's "2 GB capture" memory point
        "scapy_prefix": 2_000,
        "startup_runs": 5,
        "budget": 300.0,
    }


def sweep(quick: bool, out: Path, img: Path) -> dict:
    p = plan(quick)
    budget = p["budget"]
    results: dict[str, Any] = {"machine": machine(), "quick": quick, "started": time.time()}
    t_start = time.perf_counter()

    _log(f"start-up: {p['startup_runs']} runs of each command")
    results["startup"] = startup(p["startup_runs"])
    for r in results["startup"]:
        _log(f"  -> {r['command']}: {_brief(r, 'median_s', 'max_s')}")

    results["classify"] = []
    for rules in p["classify"]:
        _log(f"classify: {rules} rules")
        r = run_point(
            "classify",
            budget,
            rules=rules,
            packets=p["classify_packets"],
            walker_budget_s=10.0 if not quick else 3.0,
            walker_max=p["walker_max"],
        )
        results["classify"].append(r)
        _log(f"  -> {_brief(r, 'rules', 'engine_ns_per_packet', 'walker_ns_per_packet')}")

    results["compile"] = []
    for pods, policies in p["compile"]:
        _log(f"compile: {pods} pods x {policies} policies")
        # the engine build's memory grows faster than lower's (see docs/benchmarks.md): it is
        # measured up to 20k pods, so the large points' RSS is lower's own
        r = run_point("compile", budget, pods=pods, policies=policies, engine=pods <= 20_000)
        if r["status"] == "exceeded":  # maybe only the engine build was too slow: retry without
            r = run_point("compile", budget, pods=pods, policies=policies, engine=False)
        results["compile"].append(r)
        _log(f"  -> {_brief(r, 'rules', 'lower_s', 'rss_mb')}")

    results["replay"] = []
    with tempfile.TemporaryDirectory(prefix="npemu-sweep-") as tmp:

        def replay_point(
            label: str,
            packets: int,
            flows: int,
            mtu: bool = False,
            scan: bool = False,
            baseline: bool = True,
        ) -> None:
            path = os.path.join(tmp, f"{label}.pcap")
            _log(f"replay [{label}]: writing {packets} packets / {flows} flows")
            cap = run_point(
                "capture",
                budget,
                path=path,
                packets=packets,
                flows=flows,
                rules=1_000,
                mtu=mtu,
                scan=scan,
            )
            if cap["status"] != "ok":
                results["replay"].append({"label": label, **cap})
                return
            r = run_point(
                "replay",
                budget,
                path=path,
                rules=1_000,
                expected=cap["expected"],
                scapy_prefix=p["scapy_prefix"] if baseline else 0,
                baseline=baseline,
            )
            r.pop("path", None)
            row = {"label": label, **r, "capture": {k: v for k, v in cap.items() if k != "path"}}
            results["replay"].append(row)
            os.unlink(path)
            _log(
                f"  -> {_brief(r, 'npemu_pps', 'handwritten_pps', 'ratio_vs_handwritten', 'rss_mb')}"
            )

        for n in p["replay_sizes"]:
            replay_point(f"size-{n}", n, p["replay_flows"])
        for f in p["flow_sweep"]:
            replay_point(f"flows-{f}", 100_000, f)
        replay_point("syn-scan", p["scan"], p["scan"], scan=True)
        if p["big"]:
            # bulk transfer: full 1448-byte segments, 1518-byte records
            replay_point("big-2GiB", p["big"] // 1518, 10_000, mtu=True)

    results["total_s"] = time.perf_counter() - t_start
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(results, indent=2, default=str))
    write_csv(results, out / "sweep.csv")
    plot(results, img)
    _log(f"done in {results['total_s']:.0f} s: {out / 'sweep.json'}, plots in {img}")
    return results


def _brief(r: dict, *keys: str) -> str:
    if r.get("status") != "ok":
        return f"{r.get('status')}: {r.get('error', '')}"
    parts = []
    for k in keys:
        v = r.get(k)
        parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return " ".join(parts)


def write_csv(results: dict, path: Path) -> None:
    rows = []
    for section in ("classify", "compile", "replay"):
        for r in results.get(section, []):
            flat = {"section": section}
            for k, v in r.items():
                if isinstance(v, dict):
                    flat.update({f"{k}.{kk}": vv for kk, vv in v.items()})
                else:
                    flat[k] = v
            rows.append(flat)
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def plot(results: dict, img: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img.mkdir(parents=True, exist_ok=True)
    ok = [r for r in results["classify"] if r["status"] == "ok"]
    if ok:
        fig, ax = plt.subplots(1, 2, figsize=(11, 4))
        x = [r["rules"] for r in ok]
        ax[0].loglog(
            x, [r["engine_ns_per_packet"] for r in ok], "o-", label="engine (policy index)"
        )
        for key, style, label in (
            ("engine_cache_cold_ns_per_packet", "o:", "engine without index, cold cache"),
            ("engine_warm_ns_per_packet", "o--", "engine without index, warm cache"),
        ):
            got = [r for r in ok if key in r]
            ax[0].loglog([r["rules"] for r in got], [r[key] for r in got], style, label=label)
        ax[0].loglog(x, [r["walker_ns_per_packet"] for r in ok], "s-", label="walker")
        ax[0].loglog(x, [r["loop_ns_per_packet"] for r in ok], "^-", label="hand-written loop")
        ax[0].set(xlabel="rules", ylabel="ns per NEW packet", title="NEW-packet classification")
        ax[0].legend()
        ax[0].grid(True, which="both", alpha=0.3)
        ax[1].loglog(x, [r["walker_rules_inspected"] for r in ok], "s-", color="C1", label="walker")
        for key, style, color, label in (
            ("engine_rules_inspected", "o-", "C0", "engine walk"),
            ("engine_policies_per_packet", "D--", "C2", "policy index: policy chains consulted"),
        ):
            got = [r for r in ok if key in r]  # sweeps from before a column have no value
            ax[1].loglog(
                [r["rules"] for r in got], [r[key] for r in got], style, color=color, label=label
            )
        ax[1].set(
            xlabel="rules", ylabel="rules (or policy chains) per packet", title="work per packet"
        )
        ax[1].legend()
        ax[1].grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        fig.savefig(img / "classify.png", dpi=110)
        plt.close(fig)
    ok = [r for r in results["compile"] if r["status"] == "ok"]
    if ok:
        fig, ax = plt.subplots(1, 2, figsize=(11, 4))
        x = [r["pods"] for r in ok]
        ax[0].loglog(x, [r["lower_s"] for r in ok], "o-", label="lower (inventory + IR)")
        ax[0].loglog(x, [r["model_s"] for r in ok], "s-", label="model objects")
        eng = [r for r in ok if "engine_build_s" in r]
        ax[0].loglog(
            [r["pods"] for r in eng], [r["engine_build_s"] for r in eng], "^-", label="engine build"
        )
        ax[0].axhline(60, color="red", ls=":", label="target 60 s (150k pods)")
        ax[0].set(xlabel="pods (policies: see the table)", ylabel="seconds", title="compile")
        ax[0].legend()
        ax[0].grid(True, which="both", alpha=0.3)
        ax[1].loglog(x, [r["rss_mb"] for r in ok], "o-")
        ax[1].axhline(4096, color="red", ls=":", label="target 4 GiB")
        ax[1].set(xlabel="pods", ylabel="peak RSS (MiB)", title="compile memory")
        ax[1].legend()
        ax[1].grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        fig.savefig(img / "compile.png", dpi=110)
        plt.close(fig)
    ok = [r for r in results["replay"] if r["status"] == "ok" and r["label"].startswith("size-")]
    if ok:
        fig, ax = plt.subplots(1, 2, figsize=(11, 4))
        x = [r["packets"] for r in ok]
        ax[0].loglog(x, [r["npemu_pps"] for r in ok], "o-", label="npemu replay")
        ax[0].loglog(x, [r["handwritten_pps"] for r in ok], "s-", label="hand-written Python")
        sc = [r for r in ok if "scapy_pps" in r]
        ax[0].loglog(
            [r["packets"] for r in sc],
            [r["scapy_pps"] for r in sc],
            "^-",
            label="Scapy (prefix, extrapolated)",
        )
        ax[0].axhline(5e6, color="red", ls=":", label="target 5 M/s")
        flows = ok[0]["capture"]["flows"]
        ax[0].set(
            xlabel=f"capture packets ({flows} flows, ~1k rules)",
            ylabel="packets per second",
            title="replay end to end",
        )
        ax[0].legend()
        ax[0].grid(True, which="both", alpha=0.3)
        rows = [r for r in results["replay"] if r["status"] == "ok"]
        ax[1].loglog(
            [r["capture"]["bytes"] / 2**20 for r in rows], [r["rss_mb"] for r in rows], "o"
        )
        for r in rows:
            ax[1].annotate(r["label"], (r["capture"]["bytes"] / 2**20, r["rss_mb"]), fontsize=7)
        ax[1].axhline(500, color="red", ls=":", label="target 500 MB")
        ax[1].set(
            xlabel="capture size (MiB)", ylabel="replay peak RSS (MiB)", title="replay memory"
        )
        ax[1].legend()
        ax[1].grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        fig.savefig(img / "replay.png", dpi=110)
        plt.close(fig)


def _fmt(v: Any, digits: int = 3) -> str:
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def tables(results: dict) -> str:
    """The results as markdown tables (what docs/benchmarks.md shows)."""
    out: list[str] = []

    def table(head: list[str], rows: list[list[Any]]) -> None:
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        out.extend("| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows)
        out.append("")

    if results.get("startup"):
        table(
            ["command", "median s", "slowest s", "runs"],
            [
                [r["command"], r["median_s"], r["max_s"], len(r["runs_s"])]
                if r["status"] == "ok"
                else [r["command"], r["status"], "", ""]
                for r in results["startup"]
            ],
        )
    rows = []
    for r in results["classify"]:
        if r["status"] != "ok":
            rows.append([r["rules"], r["status"], "", "", "", "", "", "", "", "", ""])
            continue
        rows.append(
            [
                r["rules"],
                r["cluster"],
                r["engine_ns_per_packet"] / 1e3,
                r.get("engine_indexed_fraction", float("nan")),
                r.get("engine_policies_per_packet", float("nan")),
                r.get("engine_cache_cold_ns_per_packet", float("nan")) / 1e3,
                r.get("engine_warm_ns_per_packet", float("nan")) / 1e3,
                r.get("engine_cold_walk_fraction", float("nan")),
                r.get("engine_rules_inspected", float("nan")),
                r["walker_ns_per_packet"] / 1e3,
                r["walker_rules_inspected"],
                r["loop_ns_per_packet"] / 1e3,
                r["engine_agrees_with_walker"],
            ]
        )
    table(
        [
            "rules",
            "cluster",
            "engine µs/pkt (policy index)",
            "decided by the index",
            "policy chains per packet (index)",
            "without index µs/pkt (cold cache)",
            "without index µs/pkt (warm cache)",
            "packets walked (cold cache)",
            "engine rules inspected per walk",
            "walker µs/pkt",
            "walker rules inspected",
            "hand-written loop µs/pkt",
            "engine == walker",
        ],
        rows,
    )
    rows = []
    for r in results["compile"]:
        if r["status"] != "ok":
            rows.append([r["pods"], r["policies"], r["status"], "", "", "", ""])
            continue
        rows.append(
            [
                r["pods"],
                r["policies"],
                r["rules"],
                r["sets"],
                r["model_s"],
                r["lower_s"],
                r.get("engine_build_s", "-"),
                r["rss_mb"],
            ]
        )
    table(
        [
            "pods",
            "policies",
            "rules",
            "ipsets",
            "model s",
            "lower s",
            "engine build s",
            "peak RSS MiB",
        ],
        rows,
    )
    rows = []
    for r in results["replay"]:
        if r["status"] != "ok":
            rows.append([r["label"], r["status"]] + [""] * 10)
            continue
        c = r["capture"]
        rows.append(
            [
                r["label"],
                r["packets"],
                c["flows"],
                c["bytes"] / 2**20,
                r["npemu_pps"],
                r.get("npemu_best_pps", "-"),
                r.get("handwritten_pps", "-"),
                r.get("ratio_vs_handwritten", "-"),
                r.get("scapy_pps", "-"),
                r.get("ratio_vs_scapy", "-"),
                r["rss_mb"],
                r["counts_match_expected"] and r.get("handwritten_counts_match", True),
            ]
        )
    table(
        [
            "capture",
            "packets",
            "flows",
            "MiB",
            "npemu pkt/s (median)",
            "npemu pkt/s (best)",
            "hand-written pkt/s",
            "npemu / hand-written",
            "Scapy pkt/s (extrap.)",
            "npemu / Scapy",
            "replay peak RSS MiB",
            "verdict counts agree",
        ],
        rows,
    )
    return "\n".join(out)


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    total = _meminfo_kib("MemTotal")
    mem = "" if total is None else f"{total / 2**20:.1f} GiB"
    import numba
    import numpy

    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory": mem,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "numba": numba.__version__,
        "platform": platform.platform(),
    }


def profile_replay(out: Path, packets: int = 1_000_000, flows: int = 10_000) -> str:
    """Time each stage of one end-to-end replay, then cProfile a second one; writes and
    returns the report."""
    import cProfile
    import io
    import pstats

    from bench.synth import cluster_for_rules, workload
    from dataplane.capture import open_capture
    from dataplane.replay import Replayer, replay

    _spec, cluster, rs = cluster_for_rules(1_000)
    buf = io.StringIO()
    with tempfile.TemporaryDirectory(prefix="npemu-prof-") as tmp:
        path = os.path.join(tmp, "p.pcap")
        workload(cluster, rs, flows, packets, path)
        _load_kernels(path, rs)
        replayer = Replayer(rs)
        stages = {"read + scan": 0.0, "parse": 0.0}

        def timed_chunks() -> Any:
            chunks = iter(open_capture(path).chunks())
            while True:
                t0 = time.perf_counter()
                chunk = next(chunks, None)
                t1 = time.perf_counter()
                if chunk is None:
                    return
                batch = chunk.parse()
                stages["read + scan"] += t1 - t0
                stages["parse"] += time.perf_counter() - t1
                yield batch

        t0 = time.perf_counter()
        summary = replay(timed_chunks(), replayer)
        wall = time.perf_counter() - t0
        stages.update(replayer.stage_seconds)
        buf.write(
            f"replay of {summary.packets} packets / {flows} flows / {rs.rule_count()} rules: "
            f"{wall:.3f} s, {summary.packets / wall / 1e6:.2f} M packets/s\n\n"
            f"{'stage':<20}{'seconds':>9}{'share':>8}{'ns/packet':>11}\n"
        )
        for name, secs in stages.items():
            buf.write(
                f"{name:<20}{secs:>9.3f}{secs / wall:>8.0%}{secs / summary.packets * 1e9:>11.1f}\n"
            )
        other = wall - sum(stages.values())
        buf.write(f"{'(glue)':<20}{other:>9.3f}{other / wall:>8.0%}\n\n")
        prof = cProfile.Profile()
        prof.enable()
        replay((c.parse() for c in open_capture(path).chunks()), Replayer(rs))
        prof.disable()
    stats = pstats.Stats(prof, stream=buf)
    stats.sort_stats("tottime").print_stats(15)
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile.txt").write_text(buf.getvalue())
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.sweep", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    ap.add_argument("--out", type=Path, default=None, help="JSON/CSV directory (bench/results)")
    ap.add_argument(
        "--img",
        type=Path,
        default=None,
        help="plot directory (docs/img; with --quick: the --out directory)",
    )
    ap.add_argument("--profile", action="store_true", help="only cProfile one replay")
    ap.add_argument("--replot", type=Path, help="redraw the plots from a sweep.json")
    ap.add_argument("--tables", type=Path, help="print a sweep.json as markdown tables")
    ap.add_argument("--point", help=argparse.SUPPRESS)  # internal: run one point, print JSON
    args = ap.parse_args(argv)
    if args.point:
        spec = json.loads(args.point)
        print(json.dumps(POINTS[spec["kind"]](**spec["params"])))
        return 0
    if args.tables:
        print(tables(json.loads(args.tables.read_text())))
        return 0
    if args.replot:
        plot(json.loads(args.replot.read_text()), args.img or IMG_DIR)
        return 0
    out = args.out or (RESULTS_DIR / ("quick" if args.quick else "full"))
    if args.profile:
        print(profile_replay(out))
        return 0
    img = args.img or (out if args.quick else IMG_DIR)
    sweep(args.quick, out, img)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
