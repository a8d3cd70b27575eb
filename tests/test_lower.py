"""Lowering: the shape of the tables and the semantics rows that live in the IR itself."""

from __future__ import annotations

import gc

import pytest

import compiler.inventory as inventory_module
from compiler.inventory import Inventory
from compiler.lower import isolation, lower
from compiler.model import (
    Cluster,
    ContainerPort,
    IPBlock,
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
from compiler.tables import ENTRY_CHAIN, MAX_CHAIN_NAME, MAX_SET_NAME, CtStateMatch
from dataplane.walker import Packet, Walker


def sel(**labels: str) -> LabelSelector:
    return LabelSelector(labels_of(labels))


def small_cluster(*policies: NetworkPolicy) -> Cluster:
    pods = (
        Pod(
            "prod",
            "web",
            labels_of({"app": "web"}),
            "n1",
            ips=("10.0.1.1", "fd00::1:1"),
            ports=(ContainerPort(8080, "TCP", "http"),),
        ),
        Pod(
            "prod",
            "db",
            labels_of({"app": "db"}),
            "n2",
            ips=("10.0.2.1",),
            ports=(ContainerPort(5432, "TCP", "pg"),),
        ),
        Pod(
            "dev",
            "web",
            labels_of({"app": "web"}),
            "n2",
            ips=("10.0.2.2",),
            ports=(ContainerPort(9090, "TCP", "http"),),
        ),
        Pod(
            "kube-system",
            "agent",
            labels_of({"app": "agent"}),
            "n1",
            host_network=True,
            ips=("192.168.0.1",),
        ),
    )
    nodes = (
        Node("n1", addresses=("192.168.0.1", "fd00:ff::1")),
        Node("n2", addresses=("192.168.0.2",)),
    )
    return Cluster(
        (Namespace("prod", labels_of({"env": "prod"})), Namespace("dev")), pods, nodes, policies
    )


def verdict(rs, src: str, dst: str, port: int = 80, proto: str = "tcp") -> str:
    return Walker(rs).walk(Packet.make(src, dst, proto, port)).verdict


DENY_ALL_PROD = NetworkPolicy(
    "prod", "deny-all", LabelSelector(), policy_types=("Ingress", "Egress")
)


def test_dispatch_starts_with_conntrack_and_names_fit_kernel_limits() -> None:
    rs = lower(small_cluster(DENY_ALL_PROD))
    entry = rs.chains[ENTRY_CHAIN].rules
    assert entry[0].matches == (CtStateMatch(("INVALID",)),) and entry[0].target == "DROP"
    assert entry[1].target == "ACCEPT" and set(entry[1].matches[0].states) == {
        "ESTABLISHED",
        "RELATED",
    }
    assert all(len(name) <= MAX_CHAIN_NAME for name in rs.chains)
    assert all(len(name) <= MAX_SET_NAME for name in rs.sets)
    # every per-pod chain ends in DROP; policy chains only MARK
    for name, chain in rs.chains.items():
        if name.startswith(("NPEMU-I-", "NPEMU-E-")):
            assert chain.rules[-1].target == "DROP"
        if name.startswith(("NPEMU-PI-", "NPEMU-PE-")):
            assert all(r.target == "MARK" for r in chain.rules)


def test_default_deny_isolates_only_selected_non_host_pods() -> None:
    cluster = small_cluster(DENY_ALL_PROD)
    ingress, egress = isolation(Inventory(cluster), cluster.policies)
    assert set(ingress) == set(egress) == {"prod/web", "prod/db"}
    rs = lower(cluster)
    assert verdict(rs, "10.0.2.2", "10.0.1.1") == "DROP"  # dev/web -> prod/web
    assert verdict(rs, "10.0.2.2", "10.0.2.1") == "DROP"  # node n2's dev pod -> prod/db
    assert verdict(rs, "10.0.1.1", "10.0.1.1") == "ACCEPT"  # self
    assert verdict(rs, "fd00::1:1", "fd00::1:1") == "ACCEPT"  # self, IPv6


def test_node_exemption_is_per_node_and_both_ways() -> None:
    rs = lower(small_cluster(DENY_ALL_PROD))
    assert verdict(rs, "192.168.0.1", "10.0.1.1") == "ACCEPT"  # n1 -> its pod
    assert verdict(rs, "10.0.1.1", "192.168.0.1") == "ACCEPT"  # pod -> its node
    assert verdict(rs, "fd00:ff::1", "fd00::1:1") == "ACCEPT"  # IPv6 node address
    assert verdict(rs, "192.168.0.2", "10.0.1.1") == "DROP"  # another node
    assert verdict(rs, "192.168.0.1", "10.0.2.1") == "DROP"  # n1 -> pod on n2


def test_named_port_resolves_per_destination_pod() -> None:
    egress = PolicyRule(
        peers=(Peer(namespace_selector=LabelSelector(), pod_selector=sel(app="web")),),
        ports=(PolicyPort("TCP", "http"),),
    )
    pol = NetworkPolicy("prod", "db-out", sel(app="db"), egress=(egress,), policy_types=("Egress",))
    rs = lower(small_cluster(pol))
    assert verdict(rs, "10.0.2.1", "10.0.1.1", 8080) == "ACCEPT"  # prod/web's http
    assert verdict(rs, "10.0.2.1", "10.0.1.1", 9090) == "DROP"
    assert verdict(rs, "10.0.2.1", "10.0.2.2", 9090) == "ACCEPT"  # dev/web's http
    assert verdict(rs, "10.0.2.1", "10.0.2.2", 8080) == "DROP"


def test_named_port_never_matches_a_non_pod_destination() -> None:
    egress = PolicyRule(
        peers=(Peer(ip_block=IPBlock("0.0.0.0/0")),), ports=(PolicyPort("TCP", "http"),)
    )
    pol = NetworkPolicy("prod", "db-out", sel(app="db"), egress=(egress,), policy_types=("Egress",))
    rs = lower(small_cluster(pol))
    assert verdict(rs, "10.0.2.1", "10.0.1.1", 8080) == "ACCEPT"
    assert verdict(rs, "10.0.2.1", "203.0.113.9", 8080) == "DROP"


def test_node_scope_limits_dispatch_to_that_nodes_pods() -> None:
    rs = lower(small_cluster(DENY_ALL_PROD), node="n1")
    owners = {c.owner for name, c in rs.chains.items() if name.startswith(("NPEMU-I-", "NPEMU-E-"))}
    assert owners == {"prod/web"}
    comments = [r.comment for r in rs.chains[ENTRY_CHAIN].rules]
    assert any("n1" in c for c in comments) and not any("(n2)" in c for c in comments)


def test_every_policy_rule_carries_provenance() -> None:
    rule = PolicyRule(
        peers=(
            Peer(pod_selector=sel(app="web")),
            Peer(ip_block=IPBlock("10.9.0.0/16", ("10.9.1.0/24",))),
        ),
        ports=(PolicyPort("TCP", 5432), PolicyPort("UDP", 53, 60)),
    )
    pol = NetworkPolicy("prod", "db-in", sel(app="db"), ingress=(rule,))
    rs = lower(small_cluster(pol))
    lines = [r for c in rs.chains.values() if c.name.startswith("NPEMU-PI-") for r in c.rules]
    assert {(r.provenance.peer, r.provenance.port) for r in lines} == {
        (0, 0),
        (0, 1),
        (1, 0),
        (1, 1),
    }
    assert all(r.provenance.policy == "prod/db-in" and r.provenance.rule == 0 for r in lines)
    assert "prod/db-in ingress[0] from[1] ports[1]" in {r.comment for r in lines}


def test_identical_selector_peers_share_one_set() -> None:
    rule = PolicyRule(peers=(Peer(pod_selector=sel(app="web")),))
    p1 = NetworkPolicy("prod", "a", sel(app="db"), ingress=(rule,))
    p2 = NetworkPolicy("prod", "b", sel(app="db"), ingress=(rule,))
    rs = lower(small_cluster(p1, p2))
    pod_sets = [s for s in rs.sets if s.startswith("NPEMU-P")]
    assert len(pod_sets) == 2  # one per family, shared by both policies


def test_selector_resolution_uses_the_label_index(monkeypatch) -> None:
    calls = 0
    real = inventory_module.selector_matches

    def counting(selector, labels):
        nonlocal calls
        calls += 1
        return real(selector, labels)

    monkeypatch.setattr(inventory_module, "selector_matches", counting)
    pods = tuple(
        Pod(
            f"ns{i % 50}",
            f"p{i}",
            labels_of({"app": f"a{i % 100}"}),
            ips=(f"10.{i // 250}.{i % 250}.1",),
        )
        for i in range(5000)
    )
    policies = tuple(
        NetworkPolicy(
            f"ns{j % 50}",
            f"pol{j}",
            sel(app=f"a{j % 100}"),
            ingress=(PolicyRule(peers=(Peer(pod_selector=sel(app=f"a{(j + 1) % 100}")),)),),
        )
        for j in range(500)
    )
    lower(Cluster(pods=pods, policies=policies))
    # a pods x policies scan would be 2.5 million checks; the index narrows to the label hits
    assert calls < 50_000


def test_lower_pauses_the_collector_and_restores_it() -> None:
    cluster = Cluster(pods=(Pod("ns", "a", ips=("10.0.0.1",)),))
    assert gc.isenabled()
    lower(cluster)
    assert gc.isenabled()
    gc.disable()
    try:
        lower(cluster)
        assert not gc.isenabled()  # a caller's choice is left alone
    finally:
        gc.enable()
    with pytest.raises(ValueError):
        lower(Cluster(pods=(Pod("ns", "a", ips=("not-an-ip",)),)))
    assert gc.isenabled()


def test_inventory_address_is_family_and_canonical_text() -> None:
    inv = Inventory(Cluster())
    assert inv.address("10.0.0.1") == (4, "10.0.0.1")
    assert inv.address("2001:DB8:0::1") == (6, "2001:db8::1")
    assert inv.address("2001:DB8:0::1") is inv.address("2001:DB8:0::1")  # memoised
