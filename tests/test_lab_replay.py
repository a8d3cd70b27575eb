"""`npemu lab replay`: a capture's packets through the kernel and through npemu, per packet.

The namespace tests (marker ``netns``) build labs whose addresses are private test ranges and
send traffic only between the namespaces they create.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.layers.l2 import ARP, Ether

from compiler.lower import lower
from compiler.model import Cluster, NetworkPolicy, PolicyPort, PolicyRule
from compiler.parse import load_cluster
from dataplane.capture import write_scapy
from dataplane.cli import main
from dataplane.flows import (
    icmp_echo,
    icmp_error,
    sort_by_time,
    tcp_connection,
    tcp_syn_only,
    udp_exchange,
)
from dataplane.netns import lab as lab_module
from dataplane.netns.inject import arrival_key, prepare, strip_link
from dataplane.netns.lab_replay import Row, external_candidates, lab_replay, scan

from .test_lab import API_IP6, DB_IP, EXT, N2_IP, N2_IP6, WEB_IP, small_cluster

ROOT = Path(__file__).resolve().parents[1]
THREE_TIER = str(ROOT / "examples" / "three-tier")
TRAFFIC = str(ROOT / "examples" / "three-tier" / "traffic.pcap")


def lab_namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in out.stdout.splitlines()]


@pytest.fixture
def no_leftovers(monkeypatch: pytest.MonkeyPatch):
    """Every namespace the test's labs created is gone when it returns (labs of other
    processes may come and go meanwhile, so only this test's run prefixes are checked)."""
    prefixes: list[str] = []

    def recording_prefix(base: str = "npemu-") -> str:
        prefixes.append(real(base))
        return prefixes[-1]

    real = lab_module.new_run_prefix
    monkeypatch.setattr(lab_module, "new_run_prefix", recording_prefix)
    yield
    assert prefixes
    assert [ns for ns in lab_namespaces() if ns.startswith(tuple(prefixes))] == []


# ---------------------------------------------------------------------------------------------
# Packets and keys (no root needed).


def test_arrival_key_survives_forwarding() -> None:
    """TTL and IPv4 checksum change on the way; the key does not."""
    sent = bytes(IP(src=WEB_IP, dst=DB_IP, ttl=64, id=7) / TCP(sport=1234, dport=80, flags="S"))
    forwarded = bytes(
        IP(src=WEB_IP, dst=DB_IP, ttl=61, id=7) / TCP(sport=1234, dport=80, flags="S")
    )
    pkt = prepare(sent)
    assert not isinstance(pkt, str) and pkt.fixed == ""
    assert pkt.data == sent
    assert arrival_key(forwarded) == pkt.key
    other_id = bytes(IP(src=WEB_IP, dst=DB_IP, id=8) / TCP(sport=1234, dport=80, flags="S"))
    assert arrival_key(other_id) != pkt.key


def test_prepare_corrects_offloaded_checksums_and_low_ttl() -> None:
    good = IP(src=WEB_IP, dst=DB_IP, ttl=2) / TCP(sport=1234, dport=80, flags="S")
    wire = bytearray(bytes(good))
    wire[20 + 16 : 20 + 18] = b"\x12\x34"  # a checksum the NIC would have filled in
    pkt = prepare(bytes(wire))
    assert not isinstance(pkt, str)
    assert set(pkt.fixed.split(",")) == {"ttl", "checksum"}
    fixed = IP(pkt.data)
    assert fixed.ttl == 64
    assert fixed[TCP].chksum == IP(bytes(good))[TCP].chksum
    recomputed = IP(pkt.data)
    del recomputed.chksum
    assert IP(bytes(recomputed)).chksum == fixed.chksum  # the header checksum verifies


def test_prepare_refuses_what_cannot_be_compared() -> None:
    big = IP(src=WEB_IP, dst=DB_IP) / UDP(sport=1, dport=2) / (b"x" * 3000)
    first, second = fragment(big, fragsize=1400)[:2]
    assert "fragment" in prepare(bytes(first))
    assert "fragment" in prepare(bytes(second))
    assert "MTU" in prepare(bytes(IP(src=WEB_IP, dst=DB_IP, flags="DF") / UDP() / (b"x" * 2000)))
    truncated = bytes(IP(src=WEB_IP, dst=DB_IP) / UDP() / (b"x" * 100))[:60]
    assert "truncated" in prepare(truncated)


def test_strip_link_handles_vlan_and_non_ip() -> None:
    inner = bytes(IP(src=WEB_IP, dst=DB_IP) / UDP())
    tagged = b"\x02" * 12 + b"\x81\x00\x00\x05\x08\x00" + inner
    assert strip_link(tagged, 1) == inner
    assert strip_link(bytes(Ether() / ARP()), 1) is None
    assert strip_link(inner, 101) == inner


def test_capture_addresses_become_external_hosts() -> None:
    chosen, refused = external_candidates(
        small_cluster(), [WEB_IP, N2_IP, EXT, "224.0.0.251", "203.0.113.7", "203.0.113.8"], 2
    )
    assert chosen == [EXT, "203.0.113.7"]
    assert refused["224.0.0.251"] == "not a unicast host address"
    assert "--max-externals 2" in refused["203.0.113.8"]


def test_scan_finds_addresses_and_idle_flows(tmp_path: Path) -> None:
    """A reply 31 s after its request: npemu's UDP entry has expired, a back-to-back lab's has
    not, and the scan says so."""
    pkts = udp_exchange(WEB_IP, DB_IP, 40000, 53, 0.0, rtt=31.0)
    pkts += udp_exchange(EXT, WEB_IP, 40001, 53, 0.5)
    write_scapy(str(tmp_path / "gap.pcap"), sort_by_time(pkts))
    found = scan(str(tmp_path / "gap.pcap"))
    assert found.packets == 4 and found.protocols == {17}
    assert list(found.addresses) == [WEB_IP, DB_IP, EXT]
    assert found.idle_flows == 1 and 31.0 <= found.longest_gap < 31.1


def test_lab_replay_needs_root_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    code = main(["lab", "replay", TRAFFIC, "-f", THREE_TIER])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "root" in err and "CAP_NET_ADMIN" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["lab", "replay", "-f", THREE_TIER], "needs a CAPTURE"),
        (["lab", "verify", TRAFFIC, "-f", THREE_TIER], "takes no CAPTURE"),
        (["lab", "replay", "/nonexistent.pcap", "-f", THREE_TIER], "cannot open"),
        (["lab", "verify", "-f", THREE_TIER, "-o", "jsonl"], "jsonl is for lab replay"),
        (["lab", "replay", "-", "-f", THREE_TIER], "not -"),
    ],
)
def test_lab_replay_bad_input(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


# ---------------------------------------------------------------------------------------------
# Real kernel.


@pytest.mark.netns
def test_three_tier_capture_agrees_packet_for_packet(
    capsys: pytest.CaptureFixture[str], no_leftovers: None
) -> None:
    code = main(["lab", "replay", TRAFFIC, "-f", THREE_TIER, "-o", "json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["agree"] is True
    rows = doc["results"]
    assert [r["index"] for r in rows] == list(range(88))
    assert all(r["agree"] is True for r in rows)
    summary = doc["summary"]
    assert summary["injected"] == 88 and summary["not_injectable"] == 0
    assert summary["externals"] == ["203.0.113.10", "192.168.5.10"]
    # The agreement is not vacuous: the kernel dropped exactly npemu's drops, which are the
    # denied connection attempts and everything after them, and passed every reply that only
    # conntrack allows (no rule allows db's replies).
    kernel_drops = {r["index"] for r in rows if r["kernel"] == "drop"}
    assert kernel_drops == {r["index"] for r in rows if r["emulator"] == "drop"}
    assert summary["kernel"] == {"allow": 55, "drop": 33}
    syns = {r["index"]: r for r in rows if r["reason"].startswith("new")}
    assert {i for i, r in syns.items() if r["kernel"] == "drop"} >= {55, 66, 77}
    assert {i for i, r in syns.items() if r["kernel"] == "allow"} == {0, 11, 22, 33, 44}
    replies = [r for r in rows if r["src"] == "10.244.2.30" and r["dst"] == "10.244.1.20"]
    assert replies and all(r["kernel"] == "allow" for r in replies if r["index"] < 55)


@pytest.mark.netns
def test_a_wrong_kernel_ruleset_is_caught(no_leftovers: None) -> None:
    """Load the ruleset of the same cluster without its policies: the kernel then lets the
    denied connections through, and the comparison must say so."""
    cluster = load_cluster([THREE_TIER])
    open_ruleset = lower(Cluster(cluster.namespaces, cluster.pods, cluster.nodes, ()))
    rows: list[Row] = []
    summary = lab_replay(TRAFFIC, cluster, kernel_ruleset=open_ruleset, on_row=rows.append)
    assert not summary.ok and summary.disagree > 0
    wrong = {r.index for r in rows if r.agree is False}
    assert {55, 66, 77} <= wrong  # the denied SYNs
    assert all(r.kernel == "allow" and r.emulator == "drop" for r in rows if r.index in wrong)
    assert all(r.agree for r in rows if r.index < 55)  # the allowed flows are unaffected


def mixed_capture(path: Path) -> None:
    """Nodes and hostNetwork as sources and destinations, IPv6, UDP, ICMP (echo and a RELATED
    error), a denied port, and packets that cannot be injected."""
    pkts = []
    pkts += tcp_connection(N2_IP, WEB_IP, 40001, 80, start=0.0)  # node -> pod, other node
    pkts += tcp_syn_only(N2_IP, WEB_IP, 40002, 22, 0.1, retries=2)  # denied port
    pkts += udp_exchange(API_IP6, N2_IP6, 40003, 53, 0.2)  # pod -> node (IPv6), and back
    pkts += udp_exchange(WEB_IP, N2_IP, 40004, 53, 0.3)  # pod -> node (IPv4), and back
    pkts += icmp_echo(EXT, WEB_IP, 0.4)  # ICMP is not in the policy's ports
    pkts += tcp_connection(EXT, WEB_IP, 40005, 80, start=0.5)
    pkts += tcp_connection(DB_IP, WEB_IP, 40006, 80, start=0.6)
    pkts += icmp_echo(WEB_IP, DB_IP, 0.7)
    probe = udp_exchange(WEB_IP, DB_IP, 40007, 9999, 0.8, reply=False)
    pkts += probe + icmp_error(DB_IP, probe[0])  # port unreachable: RELATED
    odd = [
        Ether() / ARP(psrc=WEB_IP, pdst=DB_IP),
        Ether() / IP(src=WEB_IP, dst="224.0.0.251") / UDP(sport=5353, dport=5353),
        Ether() / IP(src=WEB_IP, dst=WEB_IP) / UDP(sport=1, dport=2),
        *(Ether() / f for f in fragment(IP(src=DB_IP, dst=WEB_IP) / UDP() / (b"x" * 2000))),
    ]  # the 2008-byte datagram is 2 fragments
    for k, p in enumerate(odd):
        p.time = 0.9 + k * 0.001
    # Byte-identical repeats (same IP ID), one allowed and one denied: an arrival must not be
    # credited to the wrong copy.
    again = [pkts[-2].copy(), icmp_echo(EXT, WEB_IP, 0.4)[0].copy()]
    for k, p in enumerate(again):
        p.time = 1.0 + k * 0.001
    write_scapy(str(path), sort_by_time(pkts + odd + again))


@pytest.mark.netns
def test_nodes_ipv6_icmp_and_the_not_injectable(tmp_path: Path, no_leftovers: None) -> None:
    cluster = small_cluster()
    only_http = NetworkPolicy(
        "a", "http-only", ingress=(PolicyRule(ports=(PolicyPort("TCP", 80),)),)
    )
    cluster = Cluster(cluster.namespaces, cluster.pods, cluster.nodes, (only_http,))
    capture = tmp_path / "mixed.pcap"
    mixed_capture(capture)
    rows: list[Row] = []
    summary = lab_replay(str(capture), cluster, backend="nft", on_row=rows.append)
    bad = [r.to_dict() for r in rows if r.agree is False]
    assert summary.ok and not bad, bad
    assert summary.externals == [EXT]
    injected = [r for r in rows if r.kernel != "n/a"]
    assert len(injected) == summary.injected == summary.agree
    by = {(r.src, r.dst, r.dport, r.kernel) for r in injected}
    assert (N2_IP, WEB_IP, 22, "drop") in by  # the denied port, sent by a node
    assert (N2_IP, WEB_IP, 80, "allow") in by
    assert (API_IP6, N2_IP6, 53, "allow") in by  # arrived at the node (raw IPv6 socket)
    assert (N2_IP6, API_IP6, 40003, "allow") in by  # and its reply, sent by the node
    assert (WEB_IP, N2_IP, 53, "allow") in by
    assert any(r.protocol == "ICMP" and r.src == EXT and r.kernel == "drop" for r in rows)
    assert any(r.protocol == "ICMP" and r.reason == "related" and r.kernel == "allow" for r in rows)
    skipped = [r.detail for r in rows if r.kernel == "n/a"]
    assert len(skipped) == 5 == sum(summary.not_injectable.values())
    assert any("not ip" in d for d in skipped)
    assert any("224.0.0.251 is not in the lab: not a unicast host address" in d for d in skipped)
    assert any("share a namespace" in d for d in skipped)
    assert sum("fragment" in d for d in skipped) == 2
    assert summary.stats.duplicate_waits == 2
    repeats = [r for r in rows if 1.0 <= r.ts < 1.01]
    assert [(r.protocol, r.kernel) for r in repeats] == [("UDP", "allow"), ("ICMP", "drop")]
    assert summary.warnings == []


@pytest.mark.netns
def test_jsonl_realtime_and_exit_status(
    capsys: pytest.CaptureFixture[str], no_leftovers: None
) -> None:
    code = main(["lab", "replay", TRAFFIC, "-f", THREE_TIER, "-o", "jsonl", "--realtime"])
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert code == 0 and len(lines) == 88
    assert all(r["agree"] for r in lines)
    assert "88 agree, 0 disagree, 0 not injectable" in captured.err
