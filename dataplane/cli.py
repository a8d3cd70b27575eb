"""The `npemu` command line. All I/O and output formatting lives here and in report.py."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

EXAMPLES = """\
examples:
  npemu demo
  npemu compile -f examples/three-tier -o iptables
  npemu matrix -f examples/three-tier --port 80/TCP --port 3306/TCP --endpoint 192.168.5.10
  npemu check -f examples/three-tier --from prod/web --to prod/db --port 3306
  npemu bench --quick
"""


class InputError(Exception):
    """Bad command-line input: reported on one line, exit code 2."""


def _manifest_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-f",
        "--filename",
        dest="files",
        action="append",
        required=True,
        metavar="PATH",
        help="manifest file, directory (recursive *.yaml, *.yml, *.json) or - for stdin; "
        "repeatable. Takes NetworkPolicy, Namespace, Pod and Node objects, "
        "as `kubectl get -o yaml` prints them",
    )


def _load(args: argparse.Namespace) -> Any:
    from compiler.parse import load_cluster

    stdin_text = sys.stdin.read() if "-" in args.files else None
    cluster = load_cluster(args.files, stdin_text=stdin_text)
    for warning in cluster.warnings:
        print(f"npemu: warning: {warning}", file=sys.stderr)
    return cluster


def _colour() -> bool:
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ


# -- compile -------------------------------------------------------------------------------------


def cmd_compile(args: argparse.Namespace) -> int:
    from compiler.lower import lower
    from compiler.render import ipset, iptables, json, nft, text

    cluster = _load(args)
    if args.node and args.node not in {n.name for n in cluster.nodes} | {
        p.node_name for p in cluster.pods
    }:
        raise InputError(f"unknown node {args.node!r}: no Node manifest or pod names it")
    rs = lower(cluster, node=args.node)
    renderers: dict[str, Callable[[], str]] = {
        "text": lambda: text.render_text(rs),
        "json": lambda: json.render_json(rs),
        "ipset": lambda: ipset.render_ipset(rs),
        "iptables": lambda: iptables.render_iptables(rs, family=4),
        "ip6tables": lambda: iptables.render_iptables(rs, family=6),
        "nft": lambda: nft.render_nft(rs),
    }
    sys.stdout.write(renderers[args.output]())
    return 0


# -- matrix and check ----------------------------------------------------------------------------


def _prober(cluster: Any) -> Any:
    from compiler.inventory import Inventory
    from compiler.lower import lower

    from .probe import Prober

    inventory = Inventory(cluster)
    return Prober(lower(cluster, inventory=inventory), inventory)


def _ports(texts: Sequence[str] | None) -> list[tuple[int, str]]:
    from .probe import parse_port

    try:
        return [parse_port(t) for t in (texts or ["80/TCP"])]
    except ValueError as e:
        raise InputError(str(e)) from None


def _endpoint(inventory: Any, text: str) -> Any:
    try:
        return inventory.endpoint(text)
    except (KeyError, ValueError) as e:
        raise InputError(e.args[0]) from None


def cmd_matrix(args: argparse.Namespace) -> int:
    from . import report

    cluster = _load(args)
    ports = _ports(args.port)
    prober = _prober(cluster)
    endpoints = prober.inventory.pod_endpoints()
    endpoints += [_endpoint(prober.inventory, e) for e in args.endpoint or []]
    if not endpoints:
        raise InputError(
            "no endpoints: the manifests hold no pod with an IP; add pods or --endpoint IP"
        )
    results = prober.matrix(endpoints, ports)
    if args.png:
        report.matrix_png(results, args.png)
        print(f"npemu: heatmap written to {args.png}", file=sys.stderr)
    out = {
        "table": lambda: report.matrix_table(results, colour=_colour()),
        "json": lambda: report.matrix_json(results) + "\n",
        "csv": lambda: report.matrix_csv(results),
    }[args.output]()
    sys.stdout.write(out)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from . import report
    from .probe import ProbeSpec

    cluster = _load(args)
    ((port, proto),) = _ports([args.port])
    prober = _prober(cluster)
    spec = ProbeSpec(
        _endpoint(prober.inventory, args.src), _endpoint(prober.inventory, args.dst), port, proto
    )
    result = prober.explain(spec)
    sys.stdout.write(
        report.check_json(result) + "\n" if args.output == "json" else report.check_text(result)
    )
    if result.verdict == "n/a":
        raise InputError(result.explanation.get("error", "no common IP family"))
    return 0 if result.verdict == "allow" else 1


# -- replay, generate, demo ----------------------------------------------------------------------


def _open_capture(path: str) -> Any:
    from .capture import CaptureError, open_capture

    try:
        return open_capture(path)
    except CaptureError as e:
        raise InputError(str(e)) from None


def _progress(path: str, reader: Any) -> Any:
    """A rich progress bar over the capture's bytes on a TTY; None otherwise."""
    if not sys.stderr.isatty() or path == "-":
        return None
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        transient=True,
        console=None,
    )
    progress.start()
    progress.add_task(f"replaying {os.path.basename(path)}", total=os.path.getsize(path))
    return progress


def run_replay(
    capture: str,
    cluster: Any,
    *,
    output: str,
    write_allowed: str | None = None,
    write_dropped: str | None = None,
    chunk: int = 65536,
    out: Any = None,
) -> Any:
    """Replay a capture through a cluster's tables; writes jsonl rows to ``out`` as it goes."""
    import json as jsonlib

    from compiler.lower import lower

    from .capture import CaptureWriter
    from .replay import Replayer, ReplaySummary, accumulate, packet_rows

    out = out or sys.stdout
    reader = _open_capture(capture)
    replayer = Replayer(lower(cluster))
    summary = ReplaySummary()
    writers: dict[str, Any] = {}
    progress = _progress(capture, reader)
    try:
        for raw in reader.chunks(chunk):
            v = replayer.decide(raw.parse())
            accumulate(summary, v)
            for which, path, mask in (
                ("allowed", write_allowed, v.allowed),
                ("dropped", write_dropped, ~v.allowed),
            ):
                if path:
                    if which not in writers:
                        writers[which] = CaptureWriter(
                            path,
                            int(raw.link_type[0]) if len(raw) else 1,
                            nanosecond=reader.nanosecond,
                        )
                    writers[which].write_chunk(raw, mask)
            if output == "jsonl":
                out.write("".join(jsonlib.dumps(row) + "\n" for row in packet_rows(v)))
            if progress is not None:
                progress.update(progress.task_ids[0], completed=reader.bytes_read)
    finally:
        if progress is not None:
            progress.stop()
        for w in writers.values():
            w.close()
    summary.finish()
    for warning in reader.warnings:
        print(f"npemu: warning: {warning}", file=sys.stderr)
    return summary


def replay_text(summary: Any, prober: Any, top: int = 10) -> str:
    from . import report
    from .probe import ProbeSpec
    from .replay import flow_row

    lines = [f"{summary.packets} packets: {summary.allowed} allowed, {summary.dropped} dropped"]
    lines.append("by reason:")
    for reason, count in summary.by_reason.most_common():
        lines.append(f"  {count:>8}  {reason}")
    denied = summary.top_denied(top)
    if denied:
        lines.append(
            f"top denied flows ({len(denied)} of {sum(1 for s in summary.flows.values() if s.dropped)}):"
        )
    for key, st in denied:
        row = flow_row(key, st)
        lines.append(
            f"  {row['src']}:{row['sport']} -> {row['dst']}:{row['dport']} {row['protocol']}: "
            f"{st.dropped} of {st.packets} packets dropped ({st.first_reason})"
        )
        if row["protocol"] in ("TCP", "UDP", "SCTP") and prober is not None:
            try:
                spec = ProbeSpec(
                    prober.inventory.endpoint(row["src"]),
                    prober.inventory.endpoint(row["dst"]),
                    row["dport"],
                    row["protocol"],
                )
            except (KeyError, ValueError):
                continue
            text = report.check_text(prober.explain(spec))
            lines.extend("    " + t for t in text.rstrip().splitlines())
    return "\n".join(lines) + "\n"


def cmd_replay(args: argparse.Namespace) -> int:
    import json as jsonlib

    cluster = _load(args)
    summary = run_replay(
        args.capture,
        cluster,
        output=args.output,
        write_allowed=args.write_allowed,
        write_dropped=args.write_dropped,
    )
    if args.output == "json":
        sys.stdout.write(jsonlib.dumps(summary.to_dict(), indent=2) + "\n")
    elif args.output == "text":
        sys.stdout.write(replay_text(summary, _prober(cluster)))
    return 0


def _connect_plan(specs: Sequence[Sequence[str]] | None) -> list[tuple[str, str, int, str]]:
    """``--connect FROM TO PORT`` triples; PORT is 80, 80/TCP, 53/UDP, 9000/SCTP or ICMP."""
    if not specs:
        raise InputError("generate connections needs at least one --connect FROM TO PORT")
    return [
        (src, dst, *((0, "ICMP") if port.upper() == "ICMP" else _ports([port])[0]))
        for src, dst, port in specs
    ]


def cmd_generate(args: argparse.Namespace) -> int:
    from .capture import write_scapy
    from .flows import SCENARIOS, connections

    cluster = _load(args)
    if args.scenario == "connections":
        try:
            packets = connections(cluster, _connect_plan(args.connect), seed=args.seed)
        except ValueError as e:
            raise InputError(str(e)) from None
    else:
        if args.connect:
            raise InputError("--connect is for the connections scenario")
        packets = SCENARIOS[args.scenario](
            cluster, seed=args.seed, ports=_ports(args.port), externals=args.endpoint or []
        )
    if not packets:
        raise InputError(f"scenario {args.scenario!r} made no packets from these manifests")
    n = write_scapy(args.output, packets)
    print(f"npemu: wrote {n} packets to {args.output}", file=sys.stderr)
    return 0


def example_dir(name: str) -> str:
    """The bundled example's folder, from the installed package."""
    from importlib.resources import files

    return str(files("npemu_examples") / name)


def _failed_points(results: dict[str, Any]) -> list[str]:
    """The sweep's points that errored (a point over its time budget is a result, not a
    failure)."""
    failed = []
    for section in ("startup", "classify", "compile", "replay"):
        for r in results.get(section, []):
            if r.get("status") == "error":
                what = r.get("label") or r.get("command") or r.get("rules") or r.get("pods")
                failed.append(f"{section} {what}: {r.get('error', '').strip()}")
    return failed


def cmd_bench(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from bench import sweep as bench_sweep

    saved = None  # where this run's results went (None: printing an earlier run's)
    if args.tables is not None:
        try:
            results = json.loads(Path(args.tables).read_text())
        except (OSError, ValueError) as e:
            raise InputError(f"cannot read sweep results {args.tables}: {e}") from e
        if not isinstance(results, dict) or "replay" not in results:
            raise InputError(f"{args.tables} is not a sweep.json written by npemu bench")
    else:
        out = Path(args.out)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"cannot create the results folder {out}: {e}") from e
        if args.profile:
            sys.stdout.write(bench_sweep.profile_replay(out))
            return 0
        img = Path(args.img) if args.img else out
        results = bench_sweep.sweep(args.quick, out, img)
        saved = f"results: {out / 'sweep.json'}, {out / 'sweep.csv'}; plots in {img}"
    if args.output == "json":
        json.dump(results, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(bench_sweep.tables(results) + "\n")
        if saved:
            sys.stdout.write(f"\n{saved}\n")
    failed = _failed_points(results) if saved else []  # an earlier run's failures were reported
    for line in failed:
        print(f"npemu bench: point failed: {line}", file=sys.stderr)
    return 1 if failed else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from compiler.inventory import Inventory
    from compiler.lower import isolation, lower
    from compiler.parse import load_cluster

    from . import report
    from .probe import Prober

    folder = example_dir("three-tier")
    cluster = load_cluster(
        [os.path.join(folder, "cluster.yaml"), os.path.join(folder, "policies.yaml")]
    )
    inventory = Inventory(cluster)
    rs = lower(cluster, inventory=inventory)
    ingress_of, egress_of = isolation(inventory, cluster.policies)
    say = sys.stdout.write
    say("== npemu demo: the three-tier example (examples/three-tier, bundled with npemu)\n\n")
    say(
        f"compiled {len(cluster.policies)} policies over {len(cluster.pods)} pods and {len(cluster.nodes)} nodes: "
        f"{len(rs.chains)} chains, {rs.rule_count()} rules, {len(rs.sets)} ipsets\n"
    )
    for pod in cluster.pods:
        ing = ", ".join(p.name for p in ingress_of.get(pod.key, [])) or "-"
        eg = ", ".join(p.name for p in egress_of.get(pod.key, [])) or "-"
        say(f"  {pod.key:<24} ingress isolated by: {ing:<10} egress isolated by: {eg}\n")
    say("\n== matrix (request + reply through conntrack and the tables)\n")
    prober = Prober(rs, inventory)
    endpoints = [*inventory.pod_endpoints(), inventory.endpoint("192.168.5.10")]
    results = prober.matrix(endpoints, [(80, "TCP"), (5000, "TCP"), (3306, "TCP")])
    say(report.matrix_table(results, colour=_colour()))
    say("\n== replay of traffic.pcap (Scapy-built: three tiers plus what should be denied)\n")
    summary = run_replay(os.path.join(folder, "traffic.pcap"), cluster, output="text")
    say(replay_text(summary, prober, top=3))
    say(
        "\nno rule allows db's replies to api or to the backup server: conntrack does "
        "(see 'established' above).\n"
    )
    return 0


# -- lab -----------------------------------------------------------------------------------------


def _lab_guard() -> None:
    from .netns.lab import Lab, LabError

    try:
        Lab.require_root()
    except LabError as e:
        raise InputError(str(e)) from None


def cmd_lab(args: argparse.Namespace) -> int:
    import json as jsonlib

    from .netns.topology import cleanup_leftovers

    if args.action == "down":
        _lab_guard()
        removed = cleanup_leftovers()
        print(f"npemu: removed {len(removed)} namespace(s) of earlier lab runs", file=sys.stderr)
        return 0
    if not args.files:
        raise InputError(f"lab {args.action} needs -f MANIFESTS")
    if (args.capture is None) == (args.action == "replay"):
        raise InputError(
            "lab replay needs a CAPTURE"
            if args.action == "replay"
            else f"lab {args.action} takes no CAPTURE (did you mean lab replay?)"
        )
    if args.output == "jsonl" and args.action != "replay":
        raise InputError("-o jsonl is for lab replay")
    cluster = _load(args)
    if args.action == "replay":
        if args.capture == "-":
            raise InputError("lab replay reads CAPTURE twice: give a file, not -")
        _open_capture(args.capture).close()  # a bad capture is bad input, root or not
        _lab_guard()
        return _lab_replay(args, cluster)
    _lab_guard()
    if args.action == "verify":
        from .netns.verify import verify

        rows = verify(cluster, _ports(args.port), args.endpoint or [], backend=args.backend)
        disagree = [r for r in rows if not r.agree]
        if args.output == "json":
            sys.stdout.write(
                jsonlib.dumps(
                    {"agree": not disagree, "results": [r.to_dict() for r in rows]}, indent=2
                )
                + "\n"
            )
        else:
            skipped = sum(r.kernel == "skipped" for r in rows)
            print(
                f"{len(rows)} probes through the kernel ({args.backend}) and the emulator: "
                f"{len(rows) - len(disagree) - skipped} agree, {len(disagree)} disagree, {skipped} skipped"
            )
            for r in disagree:
                print(
                    f"  DISAGREE {r.src} -> {r.dst} {r.port}/{r.protocol}: emulator {r.emulator}, "
                    f"kernel {r.kernel} ({r.detail})"
                )
        return 0 if not disagree else 1
    # up: build, load, describe, then hold until Ctrl-C (everything is removed on the way out)
    import signal

    from compiler.lower import lower

    from .netns.lab import Lab
    from .netns.verify import load_ruleset

    with Lab(cluster, externals=args.endpoint or []) as lab:
        load_ruleset(lab, lower(cluster), args.backend)
        sys.stdout.write(jsonlib.dumps(lab.describe(), indent=2) + "\n")
        sys.stdout.flush()
        print(
            "npemu: lab is up; enter a pod with the commands above. Ctrl-C removes it.",
            file=sys.stderr,
        )
        signal.pause()
    return 0


def _lab_replay(args: argparse.Namespace, cluster: Any) -> int:
    """`lab replay`: rows stream out as the kernel's verdicts come in (capture order)."""
    import json as jsonlib

    from .capture import CaptureError
    from .netns.lab_replay import lab_replay
    from .netns.topology import LabError

    if args.settle <= 0 or args.max_externals < 0:
        raise InputError("--settle must be > 0 and --max-externals >= 0")
    out = sys.stdout
    rows: list[Any] = []  # -o json only: the document is written at the end
    rows_disagree: list[Any] = []
    tty = sys.stderr.isatty()
    if args.output == "table":
        out.write(
            f"{'index':>6}  {'from':<22} {'to':<22} {'proto':<6} {'npemu':<5}  {'kernel':<6}  "
            "agree  npemu's reason / note\n"
        )

    def on_row(row: Any) -> None:
        if args.output == "jsonl":
            out.write(jsonlib.dumps(row.to_dict()) + "\n")
        elif args.output == "json":
            rows.append(row)
        else:
            ports = row.protocol in ("TCP", "UDP", "SCTP")
            src = f"{row.src}:{row.sport}" if ports else row.src
            dst = f"{row.dst}:{row.dport}" if ports else row.dst
            agree = {True: "yes", False: "NO", None: "-"}[row.agree]
            note = row.reason + (f" [{row.detail}]" if row.detail else "")
            out.write(
                f"{row.index:>6}  {src:<22} {dst:<22} {row.protocol:<6} {row.emulator:<5}  "
                f"{row.kernel:<6}  {agree:<5}  {note}\n"
            )
        if row.agree is False:
            rows_disagree.append(row)

    def on_progress(done: int, total: int) -> None:
        if tty:
            print(f"\rnpemu: lab replay: {done}/{total} packets", end="", file=sys.stderr)

    try:
        summary = lab_replay(
            args.capture,
            cluster,
            backend=args.backend,
            externals=args.endpoint or [],
            max_externals=args.max_externals,
            settle=args.settle,
            realtime=args.realtime,
            on_row=on_row,
            on_progress=on_progress,
        )
    except (CaptureError, LabError) as e:
        raise InputError(str(e)) from None
    finally:
        if tty:
            print("\r\033[K", end="", file=sys.stderr)
    if args.output == "json":
        results = [r.to_dict() for r in rows]
        doc = {"agree": summary.ok, "summary": summary.to_dict(), "results": results}
        out.write(jsonlib.dumps(doc, indent=2) + "\n")
    elif args.output == "table":
        out.write(summary.line() + "\n")
        for r in rows_disagree[:20]:
            out.write(
                f"  DISAGREE #{r.index} {r.src} -> {r.dst} {r.protocol}: npemu {r.emulator} "
                f"({r.reason}), kernel {r.kernel}\n"
            )
    else:
        print(f"npemu: {summary.line()}", file=sys.stderr)
    for warning in summary.warnings:
        print(f"npemu: warning: {warning}", file=sys.stderr)
    return 0 if summary.ok else 1


# -- parser --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="npemu",
        description="Kubernetes NetworkPolicy enforcement dataplane you can run without a cluster: "
        "compile policies into iptables-style tables, decide packets with a Linux-like "
        "connection tracker, and check it all against the kernel.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "compile",
        help="validate manifests and print the compiled tables or a kernel ruleset",
        description="Validate the manifests and lower them into match tables. "
        "iptables/ip6tables/ipset/nft outputs load into a real kernel: "
        "`ipset restore`, `iptables-restore --noflush`, `nft -f`.",
        epilog="example: npemu compile -f examples/three-tier -o nft | nft -c -f -",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _manifest_args(p)
    p.add_argument(
        "-o",
        "--output",
        default="text",
        choices=["text", "json", "iptables", "ip6tables", "ipset", "nft"],
        help="text: tables with provenance (default); json: the IR; iptables/ip6tables: "
        "iptables-restore input (uses the ipset sets); ipset: ipset restore input; "
        "nft: one atomic nft script",
    )
    p.add_argument("--node", help="only the pods on this node (default: every pod, one ruleset)")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser(
        "matrix",
        help="truth table: every pod (and --endpoint) to every other, per port",
        description="Send a real request and reply through conntrack and the tables for "
        "every (from, to, port); allow iff both pass.",
        epilog="example: npemu matrix -f examples/three-tier --port 80 --port 3306/TCP -o csv",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _manifest_args(p)
    p.add_argument(
        "--port",
        action="append",
        metavar="PORT[/PROTO]",
        help="80/TCP, 53/UDP, 80 (= TCP); repeatable (default 80/TCP)",
    )
    p.add_argument(
        "--endpoint", action="append", metavar="IP", help="an extra endpoint outside the cluster"
    )
    p.add_argument("-o", "--output", default="table", choices=["table", "json", "csv"])
    p.add_argument("--png", metavar="FILE", help="also draw a heatmap to FILE")
    p.set_defaults(func=cmd_matrix)

    p = sub.add_parser(
        "check",
        help="one probe, explained: which chain, rule and policy decided",
        description="Exit status: 0 allowed, 1 denied, 2 bad input.",
        epilog="example: npemu check -f examples/three-tier --from prod/api --to prod/db --port 3306",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _manifest_args(p)
    p.add_argument(
        "--from", dest="src", required=True, metavar="ENDPOINT", help="namespace/pod or IP"
    )
    p.add_argument(
        "--to", dest="dst", required=True, metavar="ENDPOINT", help="namespace/pod or IP"
    )
    p.add_argument("--port", required=True, metavar="PORT[/PROTO]", help="80/TCP, 53/UDP or 80")
    p.add_argument("-o", "--output", default="text", choices=["text", "json"])
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "replay",
        help="replay a pcap/pcapng capture through conntrack and the tables",
        description="Replay a capture on its own timestamps. text: totals, drops by "
        "reason and the top denied flows explained; json: totals and "
        "per-flow rows; jsonl: one object per packet, in capture order.",
        epilog="example: npemu replay traffic.pcap -f examples/three-tier --write-dropped drops.pcap",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("capture", metavar="CAPTURE", help="pcap or pcapng file")
    _manifest_args(p)
    p.add_argument("-o", "--output", default="text", choices=["text", "json", "jsonl"])
    p.add_argument("--write-allowed", metavar="FILE", help="write the allowed packets to a pcap")
    p.add_argument("--write-dropped", metavar="FILE", help="write the dropped packets to a pcap")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser(
        "generate",
        help="write a scenario's Scapy-built traffic to a pcap",
        description="Scenarios: all-pairs (every pod to every pod on --port), random, "
        "port-scan, syn-flood, three-tier, connections (the --connect list, in order). "
        "Deterministic for a --seed.",
        epilog="examples:\n"
        "  npemu generate all-pairs -f examples/three-tier --port 80 -o all.pcap\n"
        "  npemu generate connections -f examples/three-tier -o two.pcap \\\n"
        "      --connect prod/web prod/api 5000 --connect 10.0.0.11 prod/web ICMP",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "scenario",
        choices=["all-pairs", "random", "port-scan", "syn-flood", "three-tier", "connections"],
    )
    _manifest_args(p)
    p.add_argument("-o", "--output", required=True, metavar="FILE.pcap")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--port", action="append", metavar="PORT[/PROTO]", help="ports to use (default 80/TCP)"
    )
    p.add_argument(
        "--endpoint", action="append", metavar="IP", help="external endpoints to include"
    )
    p.add_argument(
        "--connect",
        action="append",
        nargs=3,
        metavar=("FROM", "TO", "PORT"),
        help="for connections: one attempt from FROM to TO (namespace/pod or IP) on PORT "
        "(80, 53/UDP, 9000/SCTP, or ICMP for a ping); repeatable, sent in order",
    )
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "demo",
        help="the bundled three-tier example end to end",
        description="Compile summary, matrix and a replay with explained drops, "
        "from the example shipped with the package.",
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "bench",
        help="the scaling sweep: per-packet cost against rules, pods, flows and capture size",
        description="Measure npemu against its baselines in the same process: NEW-packet "
        "classification from 100 to 100k rules (engine, walker, hand-written rule loop), "
        "compile time and memory from 100 pods x 10 policies to 150k x 10k, and end-to-end "
        "replay of synthetic captures (50k packets to 2 GiB) against a hand-written Python "
        "evaluator and a Scapy-based one. Every point runs in its own process with a time "
        "budget; progress goes to stderr. Writes sweep.json, sweep.csv and log-log plots "
        "(classify.png, compile.png, replay.png) into --out and prints the result tables. "
        "The full sweep takes a few minutes and about 2.5 GB of free space in the temporary "
        "folder; --quick takes about half a minute.",
        epilog="examples:\n"
        "  npemu bench --quick                      # small sizes, into ./npemu-bench\n"
        "  npemu bench --out results/ -o json > sweep.json\n"
        "  npemu bench --tables results/sweep.json  # print an earlier run's tables\n"
        "  npemu bench --profile                    # where one replay's time goes, per stage",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="small sizes (about half a minute)")
    p.add_argument(
        "--out",
        default="npemu-bench",
        metavar="DIR",
        help="where sweep.json, sweep.csv, the plots and profile.txt go (default ./npemu-bench)",
    )
    p.add_argument("--img", metavar="DIR", help="put the plots here instead of --out")
    p.add_argument(
        "--profile",
        action="store_true",
        help="instead of the sweep: replay a synthetic 1M-packet capture, print the time per "
        "stage (read, parse, conntrack + policy, reasons, count) and a cProfile summary",
    )
    p.add_argument(
        "--tables", metavar="SWEEP.JSON", help="instead of the sweep: print an earlier run's tables"
    )
    p.add_argument(
        "-o",
        "--output",
        default="text",
        choices=["text", "json"],
        help="text (default): the result tables as markdown; json: the whole sweep.json",
    )
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "lab",
        help="the real-kernel lab: pods as network namespaces (needs root)",
        description="up: build the inventory as namespaces, load the compiled rules into "
        "each node's FORWARD path, print how to enter each pod, and hold "
        "until Ctrl-C. verify: build, probe every cell for real, compare "
        "with `npemu matrix`, tear down; exit 0 iff kernel and emulator "
        "agree. replay: build, inject CAPTURE's packets (each from its source's "
        "namespace, in capture order), read which arrive, compare per packet with "
        "`npemu replay`, tear down; exit 0 iff every injected packet agrees. "
        "down: remove namespaces left by earlier runs.",
        epilog="examples:\n"
        "  sudo npemu lab verify -f examples/three-tier --port 80 --port 3306 "
        "--endpoint 192.168.5.10\n"
        "  sudo npemu lab replay examples/three-tier/traffic.pcap -f examples/three-tier\n"
        "  sudo npemu lab replay big.pcap -f manifests/ --backend nft -o jsonl > verdicts.jsonl",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("action", choices=["up", "verify", "replay", "down"])
    p.add_argument("capture", nargs="?", metavar="CAPTURE", help="pcap or pcapng (replay only)")
    p.add_argument(
        "-f",
        "--filename",
        dest="files",
        action="append",
        metavar="PATH",
        help="manifests, as for the other commands (not needed for down)",
    )
    p.add_argument(
        "--port", action="append", metavar="PORT[/PROTO]", help="probed ports (default 80/TCP)"
    )
    p.add_argument("--endpoint", action="append", metavar="IP", help="an external host to add")
    p.add_argument(
        "--backend",
        choices=["iptables", "nft"],
        default="iptables",
        help="load ipset + iptables-restore (default) or one nft script",
    )
    p.add_argument(
        "-o",
        "--output",
        default="table",
        choices=["table", "json", "jsonl"],
        help="table (default), json, or for replay jsonl: one object per packet",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=0.25,
        metavar="SECONDS",
        help="replay: how long an injected packet may take to arrive before it counts as "
        "dropped (default 0.25)",
    )
    p.add_argument(
        "--max-externals",
        type=int,
        default=64,
        metavar="N",
        help="replay: capture addresses that are no pod's or node's become external hosts, "
        "at most N (default 64); packets of the others are reported as not injectable",
    )
    p.add_argument(
        "--realtime",
        action="store_true",
        help="replay: send on the capture's timestamps (default: back to back; the summary "
        "warns when an idle gap could let a conntrack timeout expire)",
    )
    p.set_defaults(func=cmd_lab)
    return parser


_BLAS = "scipy.linalg.cython_blas"


@contextlib.contextmanager
def _without_numba_blas() -> Iterator[None]:
    """numba's NumPy support imports SciPy's BLAS, where SciPy is installed, the first time a
    kernel loads: 0.25 s of a 1.5 s start-up, for linear algebra no npemu kernel does. A None
    entry in sys.modules makes that one import fail fast, and numba carries on without BLAS.
    The entry goes again when the command ends, so SciPy stays importable in the process;
    only the command line does this, as a program using npemu as a library may want numba's
    linear algebra."""
    hidden = _BLAS not in sys.modules
    if hidden:
        sys.modules[_BLAS] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if hidden and _BLAS in sys.modules and sys.modules[_BLAS] is None:
            del sys.modules[_BLAS]


def main(argv: Sequence[str] | None = None) -> int:
    from compiler.errors import ManifestError

    args = build_parser().parse_args(argv)
    try:
        with _without_numba_blas():
            return int(args.func(args))
    except ManifestError as e:
        for line in e.errors:
            print(line, file=sys.stderr)
        return 2
    except InputError as e:
        print(f"npemu: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("npemu: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (e.g. `| head`): not an error worth a traceback
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
