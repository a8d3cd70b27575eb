"""Replay of Scapy-built captures whose per-packet verdicts are known, in three capture formats."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from scapy.all import IP, CookedLinuxV2, IPv6, PcapNgWriter

from compiler.lower import lower
from compiler.model import (
    Cluster,
    LabelSelector,
    Namespace,
    NetworkPolicy,
    Node,
    Peer,
    Pod,
    PolicyPort,
    PolicyRule,
    labels_of,
)
from dataplane import flows
from dataplane.capture import open_capture, write_scapy
from dataplane.cli import run_replay
from dataplane.conntrack import Conntrack, Timeouts
from dataplane.engine import Engine
from dataplane.flowtable import FlowTable
from dataplane.replay import Replayer, packet_rows, replay

WEB, DB, EXT = "10.0.1.1", "10.0.2.1", "203.0.113.5"
NODE1, NODE2 = "192.168.0.1", "192.168.0.2"

CLUSTER = Cluster(
    namespaces=(Namespace("prod"),),
    pods=(
        Pod("prod", "web", labels_of({"app": "web"}), "n1", ips=(WEB,)),
        Pod("prod", "db", labels_of({"app": "db"}), "n2", ips=(DB,)),
    ),
    nodes=(Node("n1", addresses=(NODE1,)), Node("n2", addresses=(NODE2,))),
    policies=(
        NetworkPolicy(
            "prod",
            "db",
            LabelSelector(labels_of({"app": "db"})),
            ingress=(
                PolicyRule(
                    peers=(Peer(pod_selector=LabelSelector(labels_of({"app": "web"}))),),
                    ports=(PolicyPort("TCP", 5432), PolicyPort("UDP", 53)),
                ),
            ),
        ),
    ),
)


def expect(pkts, verdict: str, ct: str | list[str]) -> list[tuple[object, str, str]]:
    cts = ct if isinstance(ct, list) else [ct] * len(pkts)
    assert len(cts) == len(pkts)
    return [(p, verdict, c) for p, c in zip(pkts, cts, strict=True)]


def scenario() -> list[tuple[object, str, str]]:
    """(packet, verdict, ct) in time order; every block starts at its own time."""
    out: list[tuple[object, str, str]] = []
    conn = flows.tcp_connection(WEB, DB, 40001, 5432, start=0.0)
    out += expect(conn, "allow", ["new"] + ["established"] * (len(conn) - 1))
    syns = flows.tcp_syn_only(EXT, DB, 40002, 5432, start=10.0, retries=2)  # denied SYN retries
    out += expect(syns, "drop", "new")
    mid = flows.mid_stream(WEB, DB, 40003, 5432, start=100.0)  # loose pick-up of an allowed flow
    out += expect(mid, "allow", ["new"] + ["established"] * (len(mid) - 1))
    out += expect(flows.unsolicited_synack(EXT, DB, 40004, 5432, start=110.0), "drop", "invalid")
    out += expect(flows.unsolicited_echo_reply(EXT, WEB, start=120.0), "drop", "invalid")
    udp = flows.udp_exchange(WEB, DB, 40005, 53, start=130.0)
    out += expect(udp, "allow", ["new", "established"])
    out += expect(flows.icmp_error(DB, udp[0], delay=0.01), "allow", "related")
    stray = flows.udp_exchange(EXT, WEB, 40006, 9999, start=140.0, reply=False)
    out += expect(flows.icmp_error(WEB, stray[0], delay=0.01)[:1], "drop", "invalid")
    # a UDP flow started by db (not egress-isolated): web's answer within 30 s is ESTABLISHED;
    # 60 s later the entry has expired and the same packet is NEW, which db's ingress denies
    late = flows.udp_exchange(DB, WEB, 40007, 7000, start=200.0)
    out += expect(late, "allow", ["new", "established"])
    again = flows.udp_exchange(WEB, DB, 7000, 40007, start=260.0, reply=False)
    out += expect(again, "drop", "new")
    # TCP: an established connection opened by db; web's ACK after the 5-day timeout is a new
    # (loosely picked-up) flow toward a port db does not open
    conn2 = flows.tcp_connection(DB, WEB, 40008, 8080, start=300.0, close="none")
    out += expect(conn2, "allow", ["new"] + ["established"] * (len(conn2) - 1))
    stale = flows.mid_stream(WEB, DB, 8080, 40008, start=300.0 + 432_000 + 10, data=())
    out += expect(stale[:1], "drop", "new")
    out += expect(
        flows.tcp_syn_only(NODE2, DB, 40009, 22, start=433_000.0, retries=0), "allow", "new"
    )
    out += expect(
        flows.tcp_syn_only(NODE1, DB, 40010, 22, start=433_001.0, retries=0), "drop", "new"
    )
    out += expect(
        flows.tcp_syn_only(DB, DB, 40011, 9999, start=433_002.0, retries=0), "allow", "new"
    )
    return out


def _write(kind: str, path: Path, pkts: list) -> None:
    if kind == "ethernet-pcap":
        write_scapy(str(path), pkts)
    elif kind == "raw-ip-pcap":
        raw = []
        for p in pkts:
            inner = (p[IP] if IP in p else p[IPv6]).copy()
            inner.time = p.time
            raw.append(inner)
        write_scapy(str(path), raw, link_type=101)
    else:  # SLL2 in pcapng, as `tcpdump -i any` writes on recent systems
        with PcapNgWriter(str(path)) as w:
            for p in pkts:
                inner = p[IP] if IP in p else p[IPv6]
                sll = CookedLinuxV2(proto=0x0800 if IP in p else 0x86DD, pkttype=0) / inner.copy()
                sll.time = p.time
                w.write(sll)


@pytest.mark.parametrize("kind", ["ethernet-pcap", "sll2-pcapng", "raw-ip-pcap"])
def test_per_packet_verdicts(tmp_path: Path, kind: str) -> None:
    cases = scenario()
    pkts = [p for p, _, _ in cases]
    path = tmp_path / "capture"
    _write(kind, path, pkts)
    reader = open_capture(str(path))
    rows: list[dict] = []
    summary = replay(
        reader.batches(max_packets=7),
        Replayer(lower(CLUSTER)),
        on_chunk=lambda v: rows.extend(packet_rows(v)),
    )
    assert not reader.warnings
    got = [(r["verdict"], r["ct"]) for r in rows]
    want = [(v, c) for _, v, c in cases]
    bad = [
        (i, pkts[i].summary(), want[i], got[i], rows[i]["reason"])
        for i in range(len(want))
        if want[i] != got[i]
    ]
    assert not bad, bad
    assert summary.packets == len(cases)
    assert summary.allowed == sum(v == "allow" for _, v, _ in cases)


def test_reasons_are_counted_per_verdict_in_first_seen_order(tmp_path: Path) -> None:
    """by_reason equals a recount of the per-packet rows, whatever the chunk size; labels with
    equal counts keep the order they were first met in (chunk by chunk, by label within one)."""
    path = tmp_path / "capture.pcap"
    write_scapy(str(path), [p for p, _, _ in scenario()])
    for chunk in (1, 7, 1000):
        rows: list[dict] = []
        summary = replay(
            open_capture(str(path)).batches(max_packets=chunk),
            Replayer(lower(CLUSTER)),
            on_chunk=lambda v, rows=rows: rows.extend(packet_rows(v)),
        )
        labels = [f"{r['verdict']}: {r['reason']}" for r in rows]
        assert summary.by_reason == Counter(labels)
        assert sum(summary.by_reason.values()) == summary.packets == len(rows)
        first_seen: list[str] = []
        for start in range(0, len(labels), chunk):
            met = {x for x in labels[start : start + chunk] if x not in first_seen}
            first_seen.extend(sorted(met))
        assert list(summary.by_reason) == first_seen
        assert len(set(summary.by_reason.values())) < len(summary.by_reason)  # ties exist


def test_write_allowed_and_dropped_split_the_capture(tmp_path: Path) -> None:
    cases = scenario()
    src = tmp_path / "in.pcap"
    write_scapy(str(src), [p for p, _, _ in cases])
    allowed, dropped = tmp_path / "allowed.pcap", tmp_path / "dropped.pcap"
    summary = run_replay(
        str(src), CLUSTER, output="json", write_allowed=str(allowed), write_dropped=str(dropped)
    )
    n_allowed = sum(len(b) for b in open_capture(str(allowed)).batches())
    n_dropped = sum(len(b) for b in open_capture(str(dropped)).batches())
    assert (n_allowed, n_dropped) == (summary.allowed, summary.dropped)
    assert n_allowed + n_dropped == len(cases)
    assert n_allowed == sum(v == "allow" for _, v, _ in cases)


def test_denied_flow_reasons_name_the_deciding_rule(tmp_path: Path) -> None:
    src = tmp_path / "in.pcap"
    write_scapy(str(src), flows.tcp_syn_only(EXT, DB, 40002, 5432, start=0.0, retries=1))
    summary = run_replay(str(src), CLUSTER, output="json")
    assert dict(summary.by_reason) == {"drop: new: no ingress rule allows (prod/db)": 2}
    (row,) = summary.to_dict()["flows"]
    assert (row["src"], row["dst"], row["dport"], row["dropped"]) == (EXT, DB, 5432, 2)


def test_exempted_packets_name_the_node_exemption_and_pings_stay_apart(tmp_path: Path) -> None:
    """A probe from the pod's node is reported as let in by the node exemption (not "allowed by
    policy"); two pings between the same pair in opposite directions are two flows (ICMP flows
    are keyed by echo identifier)."""
    src = tmp_path / "in.pcap"
    pkts = flows.tcp_syn_only(NODE2, DB, 40003, 5432, start=0.0, retries=0)
    pkts += flows.icmp_echo(WEB, DB, 1.0, count=1, ident=7)
    pkts += flows.icmp_echo(DB, WEB, 2.0, count=1, ident=9)
    write_scapy(str(src), pkts)
    summary = run_replay(str(src), CLUSTER, output="json")
    assert summary.by_reason["allow: new: node exemption (n2)"] == 1
    icmp = [r for r in summary.to_dict()["flows"] if r["protocol"] == "ICMP"]
    assert [(r["src"], r["dst"], r["packets"]) for r in icmp] == [(WEB, DB, 2), (DB, WEB, 2)]


def _classify_all_then_track(replayer: Replayer, batch) -> tuple:
    """The straightforward order: every packet classified as NEW, then conntrack."""
    allowed_if_new, decider = replayer.engine.evaluate_explained(batch, "NEW")
    verdict, ct, reason = replayer.conntrack.run(batch, allowed_if_new)
    return verdict, ct, reason, decider


def _asked(engine: Engine) -> int:
    """Packets the engine answered: by its policy index, its cache or a walk."""
    return sum(engine.stats[k] for k in ("indexed", "hits", "walks"))


def test_classifying_only_fresh_packets_matches_classifying_every_packet(tmp_path: Path) -> None:
    """Replay asks the engine only about the packets that need a verdict; it must decide what
    classifying every packet first and tracking afterwards decides: same verdicts, states and
    reasons, and the same deciding rule for every NEW or UNTRACKED packet."""
    from bench.synth import cluster_for_rules, workload

    _spec, cluster, ruleset = cluster_for_rules(100)
    flows_set, info = workload(cluster, ruleset, 300, 6000, tmp_path / "w.pcap")
    assert (~flows_set.complete).any() and flows_set.complete.any()  # drops and passes both
    write_scapy(str(tmp_path / "s.pcap"), [p for p, _, _ in scenario()])
    quick = Timeouts(tcp_time_wait=0.001, tcp_close=0.001)
    cases = (
        (info.path, ruleset, Conntrack),
        # connections that end at once in a small table: their slots go to other connections
        (info.path, ruleset, lambda: Conntrack(quick, max_entries=48)),
        (tmp_path / "s.pcap", lower(CLUSTER), Conntrack),
    )
    for path, rs, tracker in cases:
        fused, plain = Replayer(rs, tracker()), Replayer(rs, tracker())
        tagged, hashed = FlowTable.empty(), FlowTable.empty()
        serials_per_slot: dict[int, set[int]] = {}
        for batch in open_capture(str(path)).batches(max_packets=1000):
            policy = fused.engine.policy(batch)
            *got, tags = fused.conntrack.run_policy(batch, policy)
            want = _classify_all_then_track(plain, batch)
            for g, w in zip(got, want[:3], strict=True):
                assert (g == w).all()
            fresh = (got[1] == 0) | (got[1] == 4)  # NEW, UNTRACKED
            assert (policy[-1][fresh] == want[3][fresh]).all()
            # flows counted through conntrack's tags == flows counted by hashing every packet
            tagged.add(batch, got[0], got[2], tags, fused.conntrack.connection_slots)
            hashed.add(batch, want[0], want[2])
            for tag in set(tags[tags >= 0].tolist()):
                serials_per_slot.setdefault(tag & 0xFFFFFFFF, set()).add(tag >> 32)
        assert serials_per_slot
        if tracker is not Conntrack:
            assert max(len(v) for v in serials_per_slot.values()) > 1  # slots were reused
        assert tagged.used == hashed.used
        for name in ("first", "first_index", "first_reason", "packets", "allowed"):
            assert (
                getattr(tagged, name)[: tagged.used] == getattr(hashed, name)[: hashed.used]
            ).all()
        assert _asked(fused.engine) < _asked(plain.engine)
