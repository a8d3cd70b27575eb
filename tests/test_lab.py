"""The namespace lab against the real kernel: topology, rules in FORWARD, conntrack, cleanup.

Addresses are private test ranges and live only inside the namespaces the lab creates.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from compiler.model import Cluster, Node, Pod
from dataplane.netns import topology
from dataplane.netns.lab import Lab, LabError, LabPermissionError
from dataplane.netns.probes import Probe, ProbeResult

WEB, API, DB, AGENT = "a/web", "a/api", "b/db", "kube-system/agent"
EXT = "192.168.5.10"
WEB_IP, API_IP, API_IP6, DB_IP = "10.240.1.10", "10.240.1.11", "fd00:240:1::11", "10.240.2.10"
N1_IP, N2_IP, N2_IP6 = "172.30.0.1", "172.30.0.2", "fd00:30::2"


def small_cluster() -> Cluster:
    """2 nodes; web and api (dual-stack) on n1, db and a hostNetwork agent on n2."""
    return Cluster(
        nodes=(
            Node("n1", addresses=(N1_IP,)),
            Node("n2", addresses=(N2_IP, N2_IP6)),
        ),
        pods=(
            Pod("a", "web", node_name="n1", ips=(WEB_IP,)),
            Pod("a", "api", node_name="n1", ips=(API_IP, API_IP6)),
            Pod("b", "db", node_name="n2", ips=(DB_IP,)),
            Pod("kube-system", "agent", node_name="n2", host_network=True, ips=(N2_IP,)),
        ),
    )


V4_ENDPOINTS = [WEB, API, DB, AGENT, EXT]


def v4_probes(port: int = 80) -> list[Probe]:
    return [
        Probe(s, d, port, proto, family=4)
        for s in V4_ENDPOINTS
        for d in V4_ENDPOINTS
        if s != d
        for proto in ("TCP", "UDP")
    ]


def v6_probes(port: int = 80) -> list[Probe]:
    return [
        Probe(s, d, port, proto, family=6)
        for s, d in ((API, AGENT), (AGENT, API))
        for proto in ("TCP", "UDP")
    ]


def failures(results: list[ProbeResult]) -> set[tuple[str, str, str, int]]:
    return {
        (r.probe.source, r.probe.destination, r.probe.protocol, r.probe.family or 4)
        for r in results
        if not r.ok
    }


def run_prefix_namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in out.stdout.splitlines() if line.startswith(prefix)]


@pytest.fixture(scope="module")
def lab():
    with Lab(small_cluster(), externals=[EXT]) as the_lab:
        yield the_lab
    assert run_prefix_namespaces(the_lab.prefix) == []


@pytest.fixture
def clean_lab(lab: Lab) -> Lab:
    lab.reset_rules()
    return lab


# ---------------------------------------------------------------------------------------------
# Pure planning (no root needed).


def test_plan_names_are_short_and_prefixed() -> None:
    p = topology.plan(small_cluster(), [EXT])
    assert p.prefix.startswith("npemu-") and len(p.prefix) == len("npemu-abcdef-")
    assert all(ns.startswith(p.prefix) for ns in p.namespaces)
    assert len(p.namespaces) == 1 + 2 + 3 + 1  # fabric, nodes, non-host pods, external
    names = [s.node_ifname for s in p.pods.values()] + [n.fabric_ifname for n in p.nodes.values()]
    assert all(len(n) <= 15 for n in names) and len(set(names)) == len(names)
    assert p.resolve(AGENT).netns == p.nodes["n2"].netns  # hostNetwork shares the node
    assert p.resolve(N2_IP6).netns == p.nodes["n2"].netns
    with pytest.raises(LabError, match="unknown endpoint"):
        p.resolve("nope/nope")


def test_plan_rejects_address_conflicts() -> None:
    with pytest.raises(LabError, match="already used"):
        topology.plan(small_cluster(), [WEB_IP])


def test_non_root_gets_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    the_lab = Lab(small_cluster(), externals=[EXT])
    with pytest.raises(LabPermissionError) as info:
        the_lab.up()
    message = str(info.value)
    assert "\n" not in message and "root" in message and "CAP_NET_ADMIN" in message
    assert run_prefix_namespaces(the_lab.prefix) == []


# ---------------------------------------------------------------------------------------------
# Real kernel.


@pytest.mark.netns
def test_no_rules_every_probe_succeeds(clean_lab: Lab) -> None:
    results = clean_lab.probe_many(v4_probes() + v6_probes())
    assert failures(results) == set()
    assert {r.status for r in results} == {"connected", "answered"}
    by_pair = {(r.probe.source, r.probe.destination, r.probe.family): r for r in results}
    # Sources use the pod IP (or node IP) of the destination's family.
    assert by_pair[(API, AGENT, 6)].source_ip == API_IP6
    assert by_pair[(API, AGENT, 6)].destination_ip == N2_IP6
    assert by_pair[(AGENT, WEB, 4)].source_ip == N2_IP
    assert by_pair[(EXT, DB, 4)].source_ip == EXT


@pytest.mark.netns
def test_iptables_rules_fail_exactly_the_expected_probes(clean_lab: Lab) -> None:
    ipset_text = f"create npemu-test-web hash:ip family inet\nadd npemu-test-web {WEB_IP}\n"
    iptables_text = (
        "*filter\n:FORWARD ACCEPT [0:0]\n"
        f"-A FORWARD -d {DB_IP}/32 -p tcp --dport 80 -j DROP\n"
        "-A FORWARD -m set --match-set npemu-test-web src -p udp --dport 80 -j DROP\n"
        "COMMIT\n"
    )
    ip6tables_text = f"*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -d {API_IP6}/128 -p tcp --dport 80 -j DROP\nCOMMIT\n"
    clean_lab.apply_iptables(ipset_text, iptables_text, ip6tables_text)
    results = clean_lab.probe_many(v4_probes() + v6_probes())
    # db:80/TCP is dropped in FORWARD, which the agent (in db's own node namespace) never
    # crosses; web's UDP leaves through n1's FORWARD whatever the destination.
    expected = {(s, DB, "TCP", 4) for s in (WEB, API, EXT)}
    expected |= {(WEB, d, "UDP", 4) for d in (API, DB, AGENT, EXT)}
    expected |= {(AGENT, API, "TCP", 6)}
    assert failures(results) == expected
    assert {r.status for r in results if not r.ok} == {"timeout"}  # DROP, not reject


@pytest.mark.netns
def test_nft_ruleset_fails_exactly_the_expected_probes(clean_lab: Lab) -> None:
    script = f"""
table inet npemu_test {{
    chain forward {{
        type filter hook forward priority filter; policy accept;
        ip daddr {DB_IP} tcp dport 80 drop
        ip saddr {WEB_IP} udp dport 80 drop
        ip6 daddr {API_IP6} tcp dport 80 drop
    }}
}}
"""
    clean_lab.apply_nft(script)
    results = clean_lab.probe_many(v4_probes() + v6_probes())
    expected = {(s, DB, "TCP", 4) for s in (WEB, API, EXT)}
    expected |= {(WEB, d, "UDP", 4) for d in (API, DB, AGENT, EXT)}
    expected |= {(AGENT, API, "TCP", 6)}
    assert failures(results) == expected


@pytest.mark.netns
def test_conntrack_lets_replies_back_to_an_isolated_pod(clean_lab: Lab) -> None:
    stateful = (
        "*filter\n:FORWARD ACCEPT [0:0]\n"
        "-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n"
        f"-A FORWARD -d {WEB_IP}/32 -j DROP\n"
        "COMMIT\n"
    )
    clean_lab.apply_iptables(iptables_text=stateful)
    probes = [
        Probe(WEB, DB, 80, "TCP"),
        Probe(WEB, DB, 80, "UDP"),
        Probe(WEB, API, 80, "TCP"),
        Probe(WEB, EXT, 80, "TCP"),
        Probe(DB, WEB, 80, "TCP"),
        Probe(EXT, WEB, 80, "UDP"),
    ]
    ok = [r.ok for r in clean_lab.probe_many(probes)]
    assert ok == [True, True, True, True, False, False]
    # Both nodes tracked the cross-node flow.
    assert WEB_IP in clean_lab.conntrack_entries("n1")
    assert WEB_IP in clean_lab.conntrack_entries("n2")

    # Control: without the ESTABLISHED accept the same replies are dropped.
    clean_lab.reset_rules()
    clean_lab.apply_iptables(
        iptables_text=f"*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -d {WEB_IP}/32 -j DROP\nCOMMIT\n"
    )
    assert not clean_lab.probe(WEB, DB, 80).ok


@pytest.mark.netns
def test_bad_ruleset_raises_with_tool_stderr(clean_lab: Lab) -> None:
    with pytest.raises(LabError, match="iptables-restore"):
        clean_lab.apply_iptables(iptables_text="*filter\n-A NOSUCHCHAIN -j DROP\nCOMMIT\n")
    with pytest.raises(LabError, match="nft"):
        clean_lab.apply_nft("table inet x { chain y { nonsense } }")


@pytest.mark.netns
def test_sctp_is_skipped_and_unknown_endpoints_are_errors(clean_lab: Lab) -> None:
    sctp, unknown, no_v6 = clean_lab.probe_many(
        [Probe(WEB, DB, 80, "SCTP"), Probe(WEB, "x/y", 80), Probe(WEB, API, 80, family=6)]
    )
    assert (sctp.status, sctp.ok) == ("skipped", False) and "SCTP" in sctp.detail
    assert unknown.status == "error"
    assert no_v6.status == "skipped"


@pytest.mark.netns
def test_describe_tells_how_to_enter(lab: Lab) -> None:
    info = lab.describe()
    assert info["pods"][WEB]["enter"] == f"ip netns exec {lab.netns_of(WEB)} bash"
    assert info["pods"][AGENT]["netns"] == info["nodes"]["n2"]["netns"]
    assert set(info["externals"]) == {EXT}
    # The lab really is enterable by hand.
    out = subprocess.run(
        ["ip", "netns", "exec", lab.netns_of(API), "ip", "-6", "addr", "show", "dev", "eth0"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert API_IP6 in out.stdout


@pytest.mark.netns
@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_cleanup_after_an_exception_inside_with(error: type[BaseException]) -> None:
    the_lab = Lab(small_cluster(), externals=[EXT])
    with pytest.raises(error), the_lab:
        assert len(run_prefix_namespaces(the_lab.prefix)) == 7
        the_lab.probe(WEB, DB, 80)  # servers hold sockets in the namespaces
        raise error()
    assert run_prefix_namespaces(the_lab.prefix) == []
    assert the_lab.namespaces == []


@pytest.mark.netns
def test_cleanup_leftovers_spares_live_runs() -> None:
    dead, live = "npemutest-0a0b0c-", "npemutest-1a1b1c-"
    for prefix in (dead, live):
        topology.create_namespace(prefix + "n0")
    topology.record_owner(live)
    with open(os.path.join(topology.RUN_DIR, "1a1b1c.pid"), "w") as f:
        f.write(f"{os.getppid()}\n")  # some other live process owns this run
    try:
        removed = topology.cleanup_leftovers(prefix="npemutest-")
        assert removed == [dead + "n0"]
        assert run_prefix_namespaces("npemutest-") == [live + "n0"]
    finally:
        topology.forget_owner(live)
        topology.remove_namespaces([dead + "n0", live + "n0"])
    assert run_prefix_namespaces("npemutest-") == []
