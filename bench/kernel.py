"""npemu versus the kernel: ``python -m bench.kernel [--packets N] [--out FILE]`` (root only).

One seeded cluster and one generated capture go through both:

* the kernel: ``npemu lab replay``'s machinery (``dataplane.netns.lab_replay``) builds the
  cluster as namespaces, loads the compiled ruleset into every node, injects each packet from its
  source's namespace in capture order and reads which ones arrive. Its time is the injector's
  busy time, first send to last send or arrival (lab build, rule loading and the final settle
  wait that proves the last drops are excluded and reported apart);
* npemu: ``replay`` over the same file, end to end (read, parse, conntrack, classify, count),
  best of three runs after one warm-up run (so numba's compilation is not timed).

The run checks that both give the same verdict counts (and agree packet for packet) and writes
JSON (default ``bench/results/full/kernel.json``). Exit status 1 if they disagree.

The capture: TCP flows between random pods and a few external hosts (``bench.synth``), the ones
the policy denies written as unanswered SYNs sent three times (t, t+1 s, t+3 s), as a capture
taken in front of the filter shows them.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "full" / "kernel.json"
EXTERNALS = 8  # external hosts in the capture (each is a lab namespace)


def _log(msg: str) -> None:
    print(f"[kernel {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build_capture(path: str, packets: int, seed: int) -> tuple[Any, Any, dict[str, Any]]:
    """(cluster, ruleset, facts): a small seeded cluster and a ``packets``-packet capture."""
    from bench.synth import (
        EXTERNAL_BASE,
        ClusterSpec,
        classify_flows,
        describe,
        flows_batch,
        make_cluster,
        random_flows,
        write_flow_capture,
    )
    from compiler.lower import lower
    from dataplane.replay import Replayer

    spec = ClusterSpec(pods=60, namespaces=4, policies=12, nodes=3, seed=seed)
    cluster = make_cluster(spec)
    ruleset = lower(cluster)
    n_flows = max(packets // 12, 1)
    flows = random_flows(cluster, n_flows, seed=seed + 1, external_fraction=0.0)
    # A pod talking to itself never leaves its namespace (nothing to compare): move those
    # flows to the next pod.
    ips = np.array([int(ipaddress.IPv4Address(p.ips[0])) for p in cluster.pods], dtype=np.uint32)
    same = np.flatnonzero(flows.src == flows.dst)
    flows.dst[same] = ips[(np.searchsorted(ips, flows.dst[same]) + 1) % len(ips)]
    # A few external clients (inside the ipBlock space the policies draw CIDRs from), not one
    # per flow: every external address is a namespace in the lab.
    rng = np.random.default_rng(seed + 2)
    pool = EXTERNAL_BASE + rng.integers(0, 1 << 16, EXTERNALS).astype(np.uint32)
    ext = rng.random(n_flows) < 0.05
    flows.src[ext] = pool[rng.integers(0, EXTERNALS, int(ext.sum()))]
    # Denied flows become unanswered SYNs; npemu's verdict on each flow's first packet decides.
    allowed = Replayer(ruleset).decide(flows_batch(flows)).allowed
    flows = classify_flows(flows, allowed)
    info = write_flow_capture(path, flows, packets, seed=seed + 3)
    facts = {
        "cluster": describe(spec),
        "rules": ruleset.rule_count(),
        "flows": n_flows,
        "denied_flows": int((~flows.complete).sum()),
        "external_hosts": sorted(
            str(ipaddress.IPv4Address(int(x))) for x in np.unique(flows.src[ext])
        ),
        "capture_bytes": info.bytes,
        "capture_seconds": info.seconds,
    }
    return cluster, ruleset, facts


def time_npemu(path: str, ruleset: Any, runs: int = 3) -> tuple[float, Any]:
    """Best wall time of ``runs`` end-to-end replays (after a warm-up), and the last summary."""
    from dataplane.capture import open_capture
    from dataplane.replay import Replayer, replay

    def once() -> Any:
        with open_capture(path) as reader:
            return replay(reader.batches(), Replayer(ruleset))

    once()  # compile / load numba's cache outside the timing
    best, summary = float("inf"), None
    for _ in range(runs):
        t0 = time.perf_counter()
        summary = once()
        best = min(best, time.perf_counter() - t0)
    return best, summary


def run(packets: int, seed: int, backend: str, settle: float) -> dict[str, Any]:
    from bench.sweep import machine
    from dataplane.netns.lab_replay import lab_replay

    with tempfile.TemporaryDirectory(prefix="npemu-kernel-") as tmp:
        path = os.path.join(tmp, "flows.pcap")
        _log(f"writing a {packets}-packet capture")
        cluster, ruleset, facts = build_capture(path, packets, seed)
        _log(f"npemu replay ({facts['rules']} rules)")
        npemu_s, emu = time_npemu(path, ruleset)
        _log(f"kernel: lab replay ({backend})")
        rows_disagree: list[dict[str, Any]] = []

        def on_row(row: Any) -> None:
            if row.agree is False and len(rows_disagree) < 20:
                rows_disagree.append(row.to_dict())

        def on_progress(done: int, total: int) -> None:
            _log(f"  {done}/{total} packets")

        lab = lab_replay(
            path,
            cluster,
            backend=backend,
            settle=settle,
            on_row=on_row,
            on_progress=on_progress,
        )
    kernel_s = lab.kernel_seconds
    counts_equal = (
        lab.injected == emu.packets
        and lab.kernel["allow"] == emu.allowed
        and lab.kernel["drop"] == emu.dropped
    )
    return {
        "machine": machine(),
        "started": time.time(),
        "backend": backend,
        "seed": seed,
        "packets": packets,
        **facts,
        "npemu": {
            "seconds": npemu_s,
            "packets_per_second": packets / npemu_s if npemu_s else None,
            "allowed": emu.allowed,
            "dropped": emu.dropped,
            "what": "replay(open_capture(...).batches(), Replayer(ruleset)), best of 3",
        },
        "kernel": {
            "seconds": kernel_s,
            "packets_per_second": lab.injected / kernel_s if kernel_s else None,
            "allowed": lab.kernel["allow"],
            "dropped": lab.kernel["drop"],
            "injected": lab.injected,
            "settle_seconds": settle,
            "lab_wall_seconds": lab.wall_seconds,
            "what": "injector busy time: first send to last send or matched arrival",
        },
        "speedup": kernel_s / npemu_s if npemu_s else None,
        "counts_equal": counts_equal,
        "agree": lab.agree,
        "disagree": lab.disagree,
        "not_injectable": dict(lab.not_injectable),
        "lab": lab.to_dict(),
        "disagreements": rows_disagree,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.kernel", description=__doc__.split("\n")[0])
    ap.add_argument("--packets", type=int, default=20000, help="capture size (default 20000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--backend", choices=["iptables", "nft"], default="iptables")
    ap.add_argument("--settle", type=float, default=0.25, help="seconds before a drop is final")
    ap.add_argument("--out", type=Path, default=RESULTS, help=f"JSON file (default {RESULTS})")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.kernel: needs root (CAP_NET_ADMIN) for the namespace lab", file=sys.stderr)
        return 2
    if args.packets < 12:
        print("bench.kernel: --packets must be at least 12", file=sys.stderr)
        return 2
    result = run(args.packets, args.seed, args.backend, args.settle)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    k, e = result["kernel"], result["npemu"]
    print(
        f"{result['packets']} packets, {result['rules']} rules ({result['cluster']}): "
        f"kernel {k['seconds']:.3f} s ({k['allowed']} allowed / {k['dropped']} dropped), "
        f"npemu replay {e['seconds']:.3f} s ({e['allowed']} / {e['dropped']}): "
        f"npemu {result['speedup']:.1f}x faster; counts equal: {result['counts_equal']}, "
        f"{result['agree']} agree, {result['disagree']} disagree -> {args.out}"
    )
    return 0 if result["counts_equal"] and not result["disagree"] else 1


if __name__ == "__main__":
    sys.exit(main())
