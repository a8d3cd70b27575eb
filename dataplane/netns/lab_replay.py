"""`npemu lab replay`: one capture through the kernel (the namespace lab) and through npemu.

Pass 1 (``scan``) reads the capture once for its addresses, protocols and idle gaps. Every
address that is no pod's and no node's becomes an external host of the lab (up to
``max_externals``), so a capture with traffic from the internet replays without extra flags.

Pass 2 reads it again in chunks. npemu decides each chunk exactly as ``npemu replay`` does
(``Replayer.decide``, on capture timestamps); then each packet of the chunk is injected into the
lab from its source's namespace and its kernel verdict is read at the far side
(``dataplane.netns.inject``). Rows come out in capture order, each with both verdicts.

Time: npemu uses the capture's timestamps, the lab sends packets back to back. That is the same
thing as long as no flow sits idle long enough for a conntrack timeout to expire; ``scan`` finds
flows idle for ``IDLE_WARN`` seconds or more and the summary says so. ``realtime=True`` honours
the capture's gaps instead.
"""

from __future__ import annotations

import ipaddress
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from compiler.lower import lower
from compiler.model import Cluster
from compiler.tables import Ruleset
from dataplane.capture import open_capture
from dataplane.packets import OK, PROTO_NAMES, STATUS_NAMES, pair_to_ip
from dataplane.replay import CT_LABELS, Replayer

from .inject import SETTLE, Injector, InjectStats, mute, places, prepare, strip_link
from .lab import Lab
from .topology import plan
from .verify import load_ruleset

IDLE_WARN = 10.0  # seconds: the shortest conntrack timeout a flow can be in (TCP CLOSE)
MAX_EXTERNALS = 64  # each external host is a namespace and a veth
CHUNK = 65536


@dataclass
class Row:
    """One packet: what npemu decided and what the kernel did."""

    index: int
    ts: float
    src: str
    dst: str
    protocol: str
    sport: int
    dport: int
    emulator: str  # allow / drop
    ct: str
    reason: str
    kernel: str = "n/a"  # allow / drop / n/a (not injected)
    detail: str = ""  # why a packet was not injected, or what was corrected before sending

    @property
    def agree(self) -> bool | None:
        """None when the packet was not injected (no kernel verdict to compare)."""
        return None if self.kernel == "n/a" else self.kernel == self.emulator

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "ts": self.ts,
            "src": self.src,
            "dst": self.dst,
            "protocol": self.protocol,
            "sport": self.sport,
            "dport": self.dport,
            "emulator": self.emulator,
            "ct": self.ct,
            "reason": self.reason,
            "kernel": self.kernel,
            "agree": self.agree,
            "detail": self.detail,
        }


@dataclass
class Scan:
    """What pass 1 learns from a capture."""

    packets: int = 0
    addresses: dict[str, int] = field(default_factory=dict)  # IP -> first packet index
    protocols: set[int] = field(default_factory=set)
    idle_flows: int = 0  # flows with a gap of IDLE_WARN seconds or more between two packets
    longest_gap: float = 0.0


@dataclass
class Summary:
    backend: str
    packets: int = 0
    injected: int = 0
    agree: int = 0
    disagree: int = 0
    kernel: Counter[str] = field(default_factory=Counter)  # over injected packets
    emulator: Counter[str] = field(default_factory=Counter)  # over injected packets
    not_injectable: Counter[str] = field(default_factory=Counter)  # reason -> packets
    fixed: Counter[str] = field(default_factory=Counter)
    externals: list[str] = field(default_factory=list)
    emulator_seconds: float = 0.0
    kernel_seconds: float = 0.0
    wall_seconds: float = 0.0
    settle: float = SETTLE
    realtime: bool = False
    stats: InjectStats = field(default_factory=InjectStats)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.disagree == 0

    def to_dict(self) -> dict[str, Any]:
        s = self.stats
        return {
            "backend": self.backend,
            "packets": self.packets,
            "injected": self.injected,
            "agree": self.agree,
            "disagree": self.disagree,
            "not_injectable": sum(self.not_injectable.values()),
            "not_injectable_reasons": dict(self.not_injectable.most_common()),
            "kernel": {"allow": self.kernel["allow"], "drop": self.kernel["drop"]},
            "emulator": {"allow": self.emulator["allow"], "drop": self.emulator["drop"]},
            "corrected": dict(self.fixed),
            "externals": self.externals,
            "kernel_seconds": round(self.kernel_seconds, 6),
            "emulator_seconds": round(self.emulator_seconds, 6),
            "wall_seconds": round(self.wall_seconds, 6),
            "settle": self.settle,
            "realtime": self.realtime,
            "duplicate_waits": s.duplicate_waits,
            "late_arrivals": s.late_arrivals,
            "sniffer_drops": s.sniffer_drops,
            "backlog_drops": s.backlog_drops,
            "warnings": self.warnings,
        }

    def line(self) -> str:
        n_x = sum(self.not_injectable.values())
        return (
            f"{self.packets} packets through the kernel ({self.backend}) and the emulator: "
            f"{self.agree} agree, {self.disagree} disagree, {n_x} not injectable; "
            f"kernel {self.kernel['allow']} allowed / {self.kernel['drop']} dropped, "
            f"npemu {self.emulator['allow']} / {self.emulator['drop']}"
        )


# ---------------------------------------------------------------------------------------------
# Pass 1


def scan(capture: str, chunk: int = CHUNK) -> Scan:
    """Addresses (in order of first appearance), protocols and idle gaps of a capture."""
    out = Scan()
    last_seen: dict[tuple[int, ...], float] = {}
    with open_capture(capture) as reader:
        for raw in reader.chunks(chunk):
            b = raw.parse()
            out.packets += len(b)
            ok = np.flatnonzero(b.status == OK)
            if not len(ok):
                continue
            out.protocols.update(int(p) for p in np.unique(b.proto[ok]))
            fam, index, ts = b.family[ok], b.index[ok], b.ts[ok]
            for hi, lo in ((b.src_hi[ok], b.src_lo[ok]), (b.dst_hi[ok], b.dst_lo[ok])):
                cols = np.stack([fam.astype(np.uint64), hi, lo], axis=1)
                uniq, first = np.unique(cols, axis=0, return_index=True)
                for (f, h, lo_), i in zip(uniq.tolist(), first.tolist(), strict=True):
                    ip = pair_to_ip(f, h, lo_)
                    out.addresses[ip] = min(out.addresses.get(ip, int(index[i])), int(index[i]))
            # A flow is its 5-tuple in either direction.
            a = np.stack([b.src_hi[ok], b.src_lo[ok], b.sport[ok].astype(np.uint64)], axis=1)
            z = np.stack([b.dst_hi[ok], b.dst_lo[ok], b.dport[ok].astype(np.uint64)], axis=1)
            rows = zip(a.tolist(), z.tolist(), b.proto[ok].tolist(), ts.tolist(), strict=True)
            for x, y, proto, t in rows:
                key = (*x, *y, proto) if x <= y else (*y, *x, proto)
                prev = last_seen.get(key)
                if prev is not None and t - prev >= IDLE_WARN:
                    out.idle_flows += 1
                    out.longest_gap = max(out.longest_gap, t - prev)
                last_seen[key] = t
    out.addresses = dict(sorted(out.addresses.items(), key=lambda kv: kv[1]))
    return out


def external_candidates(
    cluster: Cluster, addresses: Sequence[str], limit: int = MAX_EXTERNALS
) -> tuple[list[str], dict[str, str]]:
    """Which capture addresses become external hosts; the others with the reason why not."""
    owned = plan(cluster, (), "npemu-000000-").owners
    chosen: list[str] = []
    refused: dict[str, str] = {}
    for text in addresses:
        if text in owned:
            continue
        ip = ipaddress.ip_address(text)
        special = ip.is_multicast or ip.is_unspecified or ip.is_loopback or ip.is_link_local
        if special or (ip.version == 4 and ip.is_reserved):  # 240/4 holds 255.255.255.255
            refused[text] = "not a unicast host address"
        elif len(chosen) >= limit:
            refused[text] = f"more external hosts than --max-externals {limit}"
        else:
            chosen.append(text)
    return chosen, refused


# ---------------------------------------------------------------------------------------------
# Pass 2


def lab_replay(
    capture: str,
    cluster: Cluster,
    *,
    backend: str = "iptables",
    externals: Sequence[str] = (),
    max_externals: int = MAX_EXTERNALS,
    settle: float = SETTLE,
    realtime: bool = False,
    kernel_ruleset: Ruleset | None = None,
    on_row: Callable[[Row], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    chunk: int = CHUNK,
) -> Summary:
    """Replay ``capture`` through a fresh lab of ``cluster`` and through npemu; call ``on_row``
    for every packet in capture order and return the totals.

    ``kernel_ruleset`` loads a different ruleset into the kernel than npemu uses (tests use it
    to show a wrong ruleset is caught). Raises CaptureError for an unreadable capture and
    LabError when the lab cannot be built.
    """
    started = time.monotonic()
    found = scan(capture, chunk)
    ruleset = lower(cluster)
    extra, refused = external_candidates(cluster, list(found.addresses), max_externals)
    chosen = list(dict.fromkeys([*externals, *extra]))
    summary = Summary(backend, externals=chosen, settle=settle, realtime=realtime)
    if found.idle_flows and not realtime:
        summary.warnings.append(
            f"{found.idle_flows} time(s) a flow sits idle for {IDLE_WARN:g} s or more "
            f"(longest {found.longest_gap:.1f} s): npemu replays on capture time but the lab "
            "sends back to back, so conntrack timeouts may expire in one and not the other; "
            "--realtime honours the gaps"
        )
    emit = on_row or (lambda row: None)
    names: dict[tuple[int, int, int], str] = {}

    def name(fam: int, hi: int, lo: int) -> str:
        got = names.get((fam, hi, lo))
        if got is None:
            got = names[(fam, hi, lo)] = pair_to_ip(fam, hi, lo)
        return got

    with Lab(cluster, externals=chosen) as lab:
        load_ruleset(lab, kernel_ruleset if kernel_ruleset is not None else ruleset, backend)
        mute(lab.plan)
        owner = places(lab.plan)
        replayer = Replayer(ruleset)
        with Injector(lab.plan, found.protocols, settle) as injector:
            lab.flush_conntrack()
            queue: list[tuple[Row, Any]] = []
            head = 0
            first_ts: float | None = None
            wall0 = 0.0
            last_progress = time.monotonic()
            emulating_while_injecting = 0.0

            def flush(final: bool = False) -> None:
                nonlocal head, queue
                while head < len(queue):
                    row, rec = queue[head]
                    if rec is not None:
                        if rec.arrived is None and not final:
                            break
                        row.kernel = "allow" if rec.arrived else "drop"
                        summary.injected += 1
                        summary.kernel[row.kernel] += 1
                        summary.emulator[row.emulator] += 1
                        if row.agree:
                            summary.agree += 1
                        else:
                            summary.disagree += 1
                    else:
                        summary.not_injectable[row.detail] += 1
                    emit(row)
                    head += 1
                if head > 4096:
                    queue, head = queue[head:], 0

            with open_capture(capture) as reader:
                for raw in reader.chunks(chunk):
                    t0 = time.perf_counter()
                    b = raw.parse()
                    v = replayer.decide(b)
                    spent = time.perf_counter() - t0
                    summary.emulator_seconds += spent
                    if injector.stats.sent:
                        emulating_while_injecting += spent  # not the kernel's time
                    fam, proto, status = b.family.tolist(), b.proto.tolist(), b.status.tolist()
                    src_hi, src_lo = b.src_hi.tolist(), b.src_lo.tolist()
                    dst_hi, dst_lo = b.dst_hi.tolist(), b.dst_lo.tolist()
                    sport, dport, ts = b.sport.tolist(), b.dport.tolist(), b.ts.tolist()
                    index, allowed, ct = b.index.tolist(), v.allowed.tolist(), v.ct.tolist()
                    links, reasons = raw.link_type.tolist(), v.reasons.tolist()
                    for i in range(len(b)):
                        f = fam[i]
                        row = Row(
                            index[i],
                            ts[i],
                            name(f, src_hi[i], src_lo[i]) if f else "",
                            name(f, dst_hi[i], dst_lo[i]) if f else "",
                            PROTO_NAMES.get(proto[i], str(proto[i])) if f else "",
                            sport[i],
                            dport[i],
                            "allow" if allowed[i] else "drop",
                            CT_LABELS.get(ct[i], "untracked"),
                            str(reasons[i]),
                        )
                        rec = None
                        if status[i] != OK:
                            row.detail = STATUS_NAMES.get(status[i], "not parsed")
                        else:
                            ip = strip_link(raw.frame(i), links[i])
                            pkt = prepare(ip) if ip is not None else "not IP"
                            if isinstance(pkt, str):
                                row.detail = pkt
                            else:
                                src, dst = owner.get(pkt.src), owner.get(pkt.dst)
                                if src is None or dst is None:
                                    which = "source" if src is None else "destination"
                                    addr = row.src if src is None else row.dst
                                    why = refused.get(addr, "no lab endpoint has it")
                                    row.detail = f"{which} {addr} is not in the lab: {why}"
                                elif src.netns == dst.netns:
                                    row.detail = (
                                        "source and destination share a namespace: "
                                        "the packet never reaches a node"
                                    )
                                else:
                                    if realtime:
                                        if first_ts is None:
                                            first_ts, wall0 = ts[i], time.monotonic()
                                        while (
                                            wait := wall0 + ts[i] - first_ts - time.monotonic()
                                        ) > 0:
                                            injector.poll(min(wait, 0.05))
                                    try:
                                        rec = injector.send(index[i], pkt, src)
                                    except OSError as e:
                                        row.detail = f"send failed: {e.strerror}"
                                    else:
                                        if pkt.fixed:
                                            row.detail = f"corrected before sending: {pkt.fixed}"
                                            for what in pkt.fixed.split(","):
                                                summary.fixed[what] += 1
                        queue.append((row, rec))
                        summary.packets += 1
                        if rec is not None and injector.stats.sent % 256 == 0:
                            flush()
                            now = time.monotonic()
                            if on_progress is not None and now - last_progress >= 1.0:
                                last_progress = now
                                on_progress(summary.packets, found.packets)
                    flush()
            injector.finish()
            flush(final=True)
            summary.stats = injector.stats
    summary.kernel_seconds = max(injector.stats.busy_seconds - emulating_while_injecting, 0.0)
    summary.wall_seconds = time.monotonic() - started
    _warn(summary)
    return summary


def _warn(summary: Summary) -> None:
    s = summary.stats
    if s.late_arrivals:
        summary.warnings.append(
            f"{s.late_arrivals} arrival(s) matched no packet still pending (given up too early, "
            "or sent by the kernel itself); a larger --settle gives packets more time"
        )
    if s.backlog_drops:
        summary.warnings.append(
            f"the kernel dropped {s.backlog_drops} packet(s) at a full CPU input backlog "
            "during the run (net.core.netdev_max_backlog): some kernel drops may not be policy"
        )
    if s.sniffer_drops:
        summary.warnings.append(
            f"{s.sniffer_drops} arrival(s) were lost on a full sniffer socket: "
            "some kernel drops may not be policy"
        )


__all__ = ["IDLE_WARN", "MAX_EXTERNALS", "Row", "Scan", "Summary", "lab_replay", "scan"]
