"""Derived cases the upstream e2e suite lacks, on the same x/y/z x a/b/c model.

Each case states DESIGN.md §2's rule it exercises (the NetworkPolicy API reference and the
upstream e2e suite are that section's sources). Verdicts come from ``Prober`` (request and reply
through conntrack and the tables); every request is also walked through the reference walker,
which must agree for these single-packet cases. ICMP is checked with the walker alone (probes are
TCP, UDP and SCTP).

Pod placement (tests/e2e_netpol_model.py): node-1 runs x/a, x/c, y/b, z/a, z/c; node-2 runs x/b,
y/a, y/c, z/b. IPv4: x/a = 10.244.1.10 ... z/c = 10.244.3.12; node-1 = 172.18.0.2, node-2 =
172.18.0.3. IPv6: x/a = fd00:10:244:1::a ...; nodes fc00:f853:ccd:e793::2 / ::3.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from compiler.inventory import Inventory
from compiler.lower import lower
from compiler.model import (
    Cluster,
    ContainerPort,
    Namespace,
    Pod,
    default_policy_types,
    labels_of,
)
from dataplane.probe import Prober, ProbeSpec
from dataplane.walker import Packet, Walker

from .e2e_netpol_model import (
    ALL,
    build_cluster,
    ip_block,
    match_expression,
    match_labels,
    namespace_named,
    node_ips,
    peer,
    pod_ip,
    pod_ipv4,
    pod_ipv6,
    policy,
    port,
    rule,
)

EXTERNAL = "192.168.5.10"
EXTERNAL6 = "2001:db8::10"

# (from, to, port, protocol, "allow" | "deny"); endpoints are "ns/pod" or IP literals
Case = tuple[str, str, int, str, str]


def verdicts(cluster: Cluster, cases: Sequence[Case]) -> list[str]:
    """Readable mismatches between the expected verdicts and Prober (and the walker)."""
    inventory = Inventory(cluster)
    ruleset = lower(cluster, inventory=inventory)
    prober, walker = Prober(ruleset, inventory), Walker(ruleset)
    specs = [
        ProbeSpec(inventory.endpoint(s), inventory.endpoint(d), number, proto)
        for s, d, number, proto, _ in cases
    ]
    failures = []
    for (s, d, number, proto, want), result in zip(cases, prober.run(specs), strict=True):
        where = f"{s} -> {d} {number}/{proto}"
        if result.verdict != want:
            failures.append(
                f"{where}: expected {want}, Prober says {result.verdict} "
                f"(request {result.request_ct}/{'ok' if result.request_ok else 'dropped'}, "
                f"reply {result.reply_ct}/{'ok' if result.reply_ok else 'dropped'})"
            )
        addrs = result.spec.addresses()
        if addrs is None:
            continue
        trace = walker.walk(Packet.make(addrs[0], addrs[1], proto.lower(), number))
        walked = "allow" if trace.verdict == "ACCEPT" else "deny"
        if walked != want:
            decided = trace.final.rule.comment if trace.final else "fell through"
            failures.append(f"{where}: expected {want}, walker says {walked} ({decided})")
    return failures


def walk(cluster: Cluster, src: str, dst: str, proto: str, dport: int = 0) -> str:
    walker = Walker(lower(cluster))
    return (
        "allow" if walker.walk(Packet.make(src, dst, proto, dport)).verdict == "ACCEPT" else "deny"
    )


def assert_verdicts(cluster: Cluster, cases: Sequence[Case]) -> None:
    failures = verdicts(cluster, cases)
    assert not failures, "\n".join(failures)


def deny_all(ns: str = "x"):
    return policy(ns, "deny-all", ALL, ingress=[], egress=[])


# -- external endpoints --------------------------------------------------------------------------


def test_external_source_under_default_deny_ingress():
    """ipBlock matches non-pod IPs; nothing else does; unisolated pods accept anything."""
    cluster = build_cluster([policy("x", "deny-ingress", ALL, ingress=[])])
    assert_verdicts(
        cluster,
        [
            (EXTERNAL, "x/a", 80, "TCP", "deny"),
            (EXTERNAL, "y/a", 80, "TCP", "allow"),
            (EXTERNAL, EXTERNAL, 80, "TCP", "allow"),
        ],
    )


def test_external_source_allowed_by_ip_block():
    p = policy("x", "from-lan", match_labels(pod="a"), ingress=[rule(ip_block("192.168.5.0/24"))])
    assert_verdicts(
        build_cluster([p]),
        [
            (EXTERNAL, "x/a", 80, "TCP", "allow"),
            (EXTERNAL, "x/a", 80, "UDP", "allow"),
            ("192.168.6.10", "x/a", 80, "TCP", "deny"),
            ("y/a", "x/a", 80, "TCP", "deny"),  # a pod outside the block
        ],
    )


def test_external_destination_under_egress_rules():
    p = policy("x", "to-lan", match_labels(pod="a"), egress=[rule(ip_block("192.168.5.0/24"))])
    assert_verdicts(
        build_cluster([p]),
        [
            ("x/a", EXTERNAL, 443, "TCP", "allow"),
            ("x/a", "192.168.6.1", 443, "TCP", "deny"),
            ("x/a", "y/a", 80, "TCP", "deny"),
            ("x/b", EXTERNAL, 443, "TCP", "allow"),  # x/b is not selected
        ],
    )


def test_selectors_never_match_external_ips():
    """namespaceSelector {} (with or without podSelector {}) means every pod, not every IP."""
    for p in (
        policy("x", "all-ns", match_labels(pod="a"), ingress=[rule(peer(namespaces=ALL))]),
        policy(
            "x", "all-pods", match_labels(pod="a"), ingress=[rule(peer(pods=ALL, namespaces=ALL))]
        ),
    ):
        assert_verdicts(
            build_cluster([p]),
            [
                ("z/c", "x/a", 80, "TCP", "allow"),
                (EXTERNAL, "x/a", 80, "TCP", "deny"),
            ],
        )


# -- ipBlock with except -------------------------------------------------------------------------


def test_ip_block_except_ipv4():
    """cidr minus excepts: a pod IP inside an except does not match; an IP outside cidr neither."""
    p = policy(
        "x",
        "block",
        match_labels(pod="a"),
        ingress=[rule(ip_block("10.244.0.0/16", "10.244.2.0/24", f"{pod_ipv4('z', 'b')}/32"))],
    )
    assert_verdicts(
        build_cluster([p]),
        [
            ("x/b", "x/a", 80, "TCP", "allow"),
            ("y/a", "x/a", 80, "TCP", "deny"),
            ("y/c", "x/a", 80, "TCP", "deny"),
            ("z/a", "x/a", 80, "TCP", "allow"),
            ("z/b", "x/a", 80, "TCP", "deny"),  # pod IP inside the except
            ("z/c", "x/a", 80, "TCP", "allow"),
            ("10.244.9.9", "x/a", 80, "TCP", "allow"),  # a non-pod IP inside the block
            ("10.244.2.99", "x/a", 80, "TCP", "deny"),
            (EXTERNAL, "x/a", 80, "TCP", "deny"),
        ],
    )


def test_ip_block_except_ipv6():
    p = policy(
        "x",
        "block",
        match_labels(pod="a"),
        ingress=[
            rule(ip_block("fd00:10:244::/48", "fd00:10:244:2::/64", f"{pod_ipv6('z', 'b')}/128"))
        ],
    )
    assert_verdicts(
        build_cluster([p], family="ipv6"),
        [
            ("x/b", "x/a", 80, "TCP", "allow"),
            ("y/b", "x/a", 80, "TCP", "deny"),
            ("z/a", "x/a", 80, "TCP", "allow"),
            ("z/b", "x/a", 80, "TCP", "deny"),
            ("fd00:10:244:9::1", "x/a", 80, "TCP", "allow"),
            ("fd00:10:244:2::99", "x/a", 80, "TCP", "deny"),
            (EXTERNAL6, "x/a", 80, "TCP", "deny"),
        ],
    )


def test_ip_block_families_never_match_each_other():
    """Dual-stack pods: an IPv4 block allows their IPv4 traffic only, an IPv6 block the IPv6."""
    v4 = policy("x", "v4", match_labels(pod="a"), ingress=[rule(ip_block("10.244.2.0/24"))])
    v6 = policy("x", "v6", match_labels(pod="b"), ingress=[rule(ip_block("fd00:10:244:2::/64"))])
    cluster = build_cluster([v4, v6], family="dual")
    assert_verdicts(
        cluster,
        [
            ("y/a", "x/a", 80, "TCP", "allow"),  # pod endpoints probe over IPv4 first
            (pod_ipv6("y", "a"), pod_ipv6("x", "a"), 80, "TCP", "deny"),
            (pod_ipv4("y", "a"), pod_ipv4("x", "b"), 80, "TCP", "deny"),
            (pod_ipv6("y", "a"), pod_ipv6("x", "b"), 80, "TCP", "allow"),
        ],
    )
    # ::ffff:10.244.2.10 (IPv4-mapped) is an IPv6 address: the IPv4 block does not cover it.
    assert walk(cluster, "::ffff:10.244.2.10", pod_ipv6("x", "a"), "tcp", 80) == "deny"


# -- ports ---------------------------------------------------------------------------------------


def test_end_port_range_is_inclusive():
    p = policy(
        "x", "range", match_labels(pod="a"), ingress=[rule(ports=[port(8000, "TCP", end=8080)])]
    )
    assert_verdicts(
        build_cluster([p]),
        [
            ("y/a", "x/a", 7999, "TCP", "deny"),
            ("y/a", "x/a", 8000, "TCP", "allow"),
            ("y/a", "x/a", 8040, "TCP", "allow"),
            ("y/a", "x/a", 8080, "TCP", "allow"),
            ("y/a", "x/a", 8081, "TCP", "deny"),
            ("y/a", "x/a", 8000, "UDP", "deny"),
        ],
    )


def test_port_omitted_matches_every_port_of_that_protocol():
    p = policy("x", "udp-only", match_labels(pod="a"), ingress=[rule(ports=[port(None, "UDP")])])
    assert_verdicts(
        build_cluster([p]),
        [
            ("y/a", "x/a", 1, "UDP", "allow"),
            ("y/a", "x/a", 53, "UDP", "allow"),
            ("y/a", "x/a", 65535, "UDP", "allow"),
            ("y/a", "x/a", 53, "TCP", "deny"),
            ("y/a", "x/a", 53, "SCTP", "deny"),
        ],
    )


def _named_port_cluster(policies):
    """Namespace w: w/one serves "http" on 8080/TCP, w/two serves "http" on 9090/TCP."""
    extra = [
        Pod(
            "w",
            "one",
            labels_of({"app": "web"}),
            "node-1",
            ips=("10.244.4.10",),
            ports=(ContainerPort(8080, "TCP", "http"),),
        ),
        Pod(
            "w",
            "two",
            labels_of({"app": "web"}),
            "node-2",
            ips=("10.244.4.11",),
            ports=(ContainerPort(9090, "TCP", "http"), ContainerPort(5353, "UDP", "dns")),
        ),
    ]
    return build_cluster(
        policies, extra_pods=extra, extra_namespaces=[Namespace("w", labels_of({"ns": "w"}))]
    )


def test_egress_named_port_resolves_per_destination_pod():
    """Same name, different numbers: the destination pod's own container port decides."""
    p = policy("x", "egress-http", match_labels(pod="a"), egress=[rule(ports=[port("http")])])
    assert_verdicts(
        _named_port_cluster([p]),
        [
            ("x/a", "w/one", 8080, "TCP", "allow"),
            ("x/a", "w/one", 9090, "TCP", "deny"),
            ("x/a", "w/two", 9090, "TCP", "allow"),
            ("x/a", "w/two", 8080, "TCP", "deny"),
            ("x/a", "y/a", 8080, "TCP", "deny"),  # y/a has no port named http
            ("x/a", EXTERNAL, 8080, "TCP", "deny"),  # named ports never match non-pod IPs
            ("x/b", "w/two", 8080, "TCP", "allow"),  # x/b is not selected
        ],
    )


def test_ingress_named_port_needs_name_and_protocol():
    tcp = policy("w", "ingress-http", ALL, ingress=[rule(ports=[port("http")])])
    assert_verdicts(
        _named_port_cluster([tcp]),
        [
            ("y/a", "w/one", 8080, "TCP", "allow"),
            ("y/a", "w/one", 9090, "TCP", "deny"),
            ("y/a", "w/two", 9090, "TCP", "allow"),
            ("y/a", "w/two", 8080, "TCP", "deny"),
        ],
    )
    # "dns" is UDP on w/two: a TCP named port of that name matches nothing, a UDP one matches.
    dns_tcp = policy("w", "dns-tcp", ALL, ingress=[rule(ports=[port("dns", "TCP")])])
    dns_udp = policy("w", "dns-udp", ALL, ingress=[rule(ports=[port("dns", "UDP")])])
    assert_verdicts(
        _named_port_cluster([dns_tcp]),
        [
            ("y/a", "w/two", 5353, "TCP", "deny"),
            ("y/a", "w/two", 5353, "UDP", "deny"),
        ],
    )
    assert_verdicts(
        _named_port_cluster([dns_udp]),
        [
            ("y/a", "w/two", 5353, "UDP", "allow"),
            ("y/a", "w/two", 5353, "TCP", "deny"),
            ("y/a", "w/one", 5353, "UDP", "deny"),
        ],
    )


def test_named_port_in_the_upstream_model_serves_per_protocol():
    """The model names every container port serve-<port>-<protocol>: serve-80-udp is UDP 80."""
    p = policy("x", "udp-80", ALL, ingress=[rule(ports=[port("serve-80-udp", "UDP")])])
    cluster = build_cluster([p], protocols=("TCP", "UDP"))
    assert_verdicts(
        cluster,
        [
            ("y/a", "x/a", 80, "UDP", "allow"),
            ("y/a", "x/a", 81, "UDP", "deny"),
            ("y/a", "x/a", 80, "TCP", "deny"),
        ],
    )


def test_empty_ports_allow_every_protocol_including_icmp():
    """ports omitted = all ports and all protocols; a ports list limits ICMP away."""
    no_ports = policy(
        "x", "from-y", match_labels(pod="a"), ingress=[rule(peer(namespaces=namespace_named("y")))]
    )
    tcp_only = policy(
        "x",
        "from-y-80",
        match_labels(pod="a"),
        ingress=[rule(peer(namespaces=namespace_named("y")), ports=[port(80)])],
    )
    xa, ya, za = pod_ipv4("x", "a"), pod_ipv4("y", "a"), pod_ipv4("z", "a")
    open_cluster, tcp_cluster = build_cluster([no_ports]), build_cluster([tcp_only])
    assert walk(open_cluster, ya, xa, "icmp") == "allow"
    assert walk(open_cluster, za, xa, "icmp") == "deny"
    assert walk(tcp_cluster, ya, xa, "icmp") == "deny"
    assert walk(tcp_cluster, ya, xa, "tcp", 80) == "allow"
    v6 = build_cluster([no_ports], family="ipv6")
    assert walk(v6, pod_ipv6("y", "a"), pod_ipv6("x", "a"), "icmpv6") == "allow"
    assert walk(v6, pod_ipv6("z", "a"), pod_ipv6("x", "a"), "icmpv6") == "deny"
    assert_verdicts(
        open_cluster,
        [
            ("y/a", "x/a", 80, "TCP", "allow"),
            ("y/a", "x/a", 53, "UDP", "allow"),
            ("y/a", "x/a", 9999, "SCTP", "allow"),
        ],
    )


# -- policyTypes ---------------------------------------------------------------------------------


def test_policy_types_default():
    assert default_policy_types(False) == ("Ingress",)
    assert set(default_policy_types(True)) == {"Ingress", "Egress"}


def test_egress_rules_without_policy_types_isolate_both_directions():
    """policyTypes omitted + egress rules => [Ingress, Egress]: ingress is isolated too, with
    no ingress rule, so nothing gets in."""
    p = policy(
        "x",
        "egress-to-y",
        match_labels(pod="a"),
        egress=[rule(peer(namespaces=namespace_named("y")))],
        policy_types=default_policy_types(True),
    )
    assert_verdicts(
        build_cluster([p]),
        [
            ("x/a", "y/b", 80, "TCP", "allow"),
            ("x/a", "z/b", 80, "TCP", "deny"),
            ("y/b", "x/a", 80, "TCP", "deny"),
            ("x/b", "x/a", 80, "TCP", "deny"),
        ],
    )


def test_policy_types_egress_only_ignores_ingress_rules():
    """policyTypes [Egress]: the pod is not isolated for ingress even though ingress rules exist."""
    p = policy(
        "x",
        "egress-only",
        match_labels(pod="a"),
        ingress=[rule(peer(pods=match_labels(pod="b")))],
        egress=[],
        policy_types=["Egress"],
    )
    assert_verdicts(
        build_cluster([p]),
        [
            ("y/a", "x/a", 80, "TCP", "allow"),
            ("x/c", "x/a", 80, "TCP", "allow"),
            ("x/a", "x/b", 80, "TCP", "deny"),
            ("x/a", EXTERNAL, 80, "TCP", "deny"),
        ],
    )


def test_policy_without_egress_rules_does_not_isolate_egress():
    p = policy(
        "x",
        "ingress-only",
        match_labels(pod="a"),
        ingress=[],
        policy_types=default_policy_types(False),
    )
    assert_verdicts(
        build_cluster([p]),
        [
            ("x/a", "y/a", 80, "TCP", "allow"),
            ("y/a", "x/a", 80, "TCP", "deny"),
        ],
    )


# -- address families ----------------------------------------------------------------------------


def test_ipv6_only_cluster():
    p = policy("x", "from-y", ALL, ingress=[rule(peer(namespaces=namespace_named("y")))])
    cluster = build_cluster([p], family="ipv6")
    assert Inventory(cluster).endpoint("x/a").ips == (pod_ipv6("x", "a"),)
    assert_verdicts(
        cluster,
        [
            ("y/a", "x/a", 80, "TCP", "allow"),
            ("z/a", "x/a", 80, "TCP", "deny"),
            ("y/c", "x/b", 80, "UDP", "allow"),
            (EXTERNAL6, "x/a", 80, "TCP", "deny"),
            (EXTERNAL6, "y/a", 80, "TCP", "allow"),
        ],
    )


def test_dual_stack_selectors_cover_both_families():
    p = policy("x", "from-y", ALL, ingress=[rule(peer(namespaces=namespace_named("y")))])
    cluster = build_cluster([p], family="dual")
    assert_verdicts(
        cluster,
        [
            ("y/a", "x/a", 80, "TCP", "allow"),
            (pod_ipv4("y", "a"), pod_ipv4("x", "a"), 80, "TCP", "allow"),
            (pod_ipv6("y", "a"), pod_ipv6("x", "a"), 80, "TCP", "allow"),
            (pod_ipv4("z", "a"), pod_ipv4("x", "a"), 80, "TCP", "deny"),
            (pod_ipv6("z", "a"), pod_ipv6("x", "a"), 80, "TCP", "deny"),
        ],
    )


# -- nodes, self, hostNetwork --------------------------------------------------------------------


def _host_network_pod(ns: str, name: str, node: str, **labels: str) -> Pod:
    return Pod(ns, name, labels_of(labels), node, host_network=True)


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_node_exemption(family):
    """A pod and its own node always talk (both ways); another node is an ordinary IP."""
    own, other = node_ips("node-1", family)[0], node_ips("node-2", family)[0]  # x/a is on node-1
    extra = [
        _host_network_pod("kube-system", "agent-1", "node-1"),
        _host_network_pod("kube-system", "agent-2", "node-2"),
    ]
    cluster = build_cluster([deny_all("x")], family=family, extra_pods=extra)
    assert_verdicts(
        cluster,
        [
            (own, "x/a", 80, "TCP", "allow"),
            (other, "x/a", 80, "TCP", "deny"),
            ("kube-system/agent-1", "x/a", 80, "TCP", "allow"),
            ("kube-system/agent-2", "x/a", 80, "TCP", "deny"),
            ("x/a", own, 10250, "TCP", "allow"),
            ("x/a", other, 10250, "TCP", "deny"),
            ("x/a", "kube-system/agent-1", 53, "UDP", "allow"),
            ("x/a", "kube-system/agent-2", 53, "UDP", "deny"),
            (other, "x/b", 80, "TCP", "allow"),  # x/b runs on node-2
        ],
    )


@pytest.mark.parametrize("protocol", ["TCP", "UDP", "SCTP"])
def test_self_traffic_under_default_deny(protocol):
    cluster = build_cluster([deny_all("x")])
    assert_verdicts(
        cluster,
        [
            ("x/a", "x/a", 80, protocol, "allow"),
            ("x/b", "x/b", 8080, protocol, "allow"),
            ("x/a", "x/c", 80, protocol, "deny"),
        ],
    )


def test_host_network_pods_are_never_selected():
    """A deny-all in x with podSelector {} (and one naming its labels) leaves x/hn open."""
    hn = _host_network_pod("x", "hn", "node-2", pod="a")
    policies = [deny_all("x"), policy("x", "deny-a", match_labels(pod="a"), ingress=[], egress=[])]
    cluster = build_cluster(policies, extra_pods=[hn])
    assert_verdicts(
        cluster,
        [
            ("y/b", "x/hn", 80, "TCP", "allow"),  # y/b runs on node-1: no exemption involved
            ("x/hn", "y/b", 80, "TCP", "allow"),
            ("x/hn", "x/c", 80, "TCP", "deny"),  # x/c (node-1) is isolated
            ("x/hn", "x/b", 80, "TCP", "allow"),  # x/b shares node-2 with x/hn: node exemption
            ("x/a", "x/hn", 80, "TCP", "deny"),  # x/a (node-1) is egress-isolated
        ],
    )


def test_host_network_pod_as_peer_carries_its_node_ip():
    hn = _host_network_pod("kube-system", "monitor", "node-2", role="monitor")
    p = policy(
        "z",
        "from-monitor",
        match_labels(pod="c"),
        ingress=[rule(peer(pods=match_labels(role="monitor"), namespaces=ALL))],
    )
    cluster = build_cluster([p], extra_pods=[hn])
    assert_verdicts(
        cluster,
        [
            ("kube-system/monitor", "z/c", 80, "TCP", "allow"),  # z/c is on node-1
            (node_ips("node-2")[0], "z/c", 80, "TCP", "allow"),  # the same address
            ("y/a", "z/c", 80, "TCP", "deny"),
        ],
    )


# -- selectors -----------------------------------------------------------------------------------


def test_empty_namespace_selector_means_all_namespaces():
    unlabelled = Pod("w", "one", labels_of({"pod": "b"}), "node-2", ips=("10.244.4.10",))
    p = policy(
        "x",
        "b-anywhere",
        match_labels(pod="a"),
        ingress=[rule(peer(pods=match_labels(pod="b"), namespaces=ALL))],
    )
    # namespace w exists only implicitly (no Namespace object, no labels but its name label)
    cluster = build_cluster([p], extra_pods=[unlabelled])
    assert_verdicts(
        cluster,
        [
            ("x/b", "x/a", 80, "TCP", "allow"),
            ("y/b", "x/a", 80, "TCP", "allow"),
            ("z/b", "x/a", 80, "TCP", "allow"),
            ("w/one", "x/a", 80, "TCP", "allow"),
            ("y/a", "x/a", 80, "TCP", "deny"),
            ("x/c", "x/a", 80, "TCP", "deny"),
        ],
    )


def test_pod_and_namespace_selector_in_one_peer_is_and():
    p = policy(
        "x",
        "and",
        match_labels(pod="a"),
        ingress=[rule(peer(pods=match_labels(pod="b"), namespaces=match_labels(ns="y")))],
    )
    assert_verdicts(
        build_cluster([p]),
        [
            ("y/b", "x/a", 80, "TCP", "allow"),
            ("y/a", "x/a", 80, "TCP", "deny"),
            ("x/b", "x/a", 80, "TCP", "deny"),
            ("z/b", "x/a", 80, "TCP", "deny"),
        ],
    )


def test_pod_selector_and_namespace_selector_as_two_peers_is_or():
    p = policy(
        "x",
        "or",
        match_labels(pod="a"),
        ingress=[rule(peer(pods=match_labels(pod="b")), peer(namespaces=match_labels(ns="y")))],
    )
    assert_verdicts(
        build_cluster([p]),
        [
            ("x/b", "x/a", 80, "TCP", "allow"),  # podSelector alone: the policy's namespace
            ("y/a", "x/a", 80, "TCP", "allow"),
            ("y/b", "x/a", 80, "TCP", "allow"),
            ("y/c", "x/a", 80, "TCP", "allow"),
            ("z/b", "x/a", 80, "TCP", "deny"),
            ("x/c", "x/a", 80, "TCP", "deny"),
        ],
    )


@pytest.mark.parametrize(
    "selector",
    [
        match_expression("tier", "NotIn", "db"),
        match_expression("tier", "DoesNotExist"),
    ],
    ids=["NotIn", "DoesNotExist"],
)
def test_match_expressions_match_pods_lacking_the_key(selector):
    """x/a has no tier label, x/b is tier=db."""
    p = policy("x", "no-db", match_labels(pod="c"), ingress=[rule(peer(pods=selector))])
    cluster = build_cluster([p], pod_labels={"x/b": {"tier": "db"}})
    assert_verdicts(
        cluster,
        [
            ("x/a", "x/c", 80, "TCP", "allow"),
            ("x/b", "x/c", 80, "TCP", "deny"),
            ("y/a", "x/c", 80, "TCP", "deny"),  # podSelector alone: namespace x only
        ],
    )


def test_match_expressions_on_namespaces_and_targets():
    ns_policy = policy(
        "x",
        "not-team",
        match_labels(pod="a"),
        ingress=[rule(peer(namespaces=match_expression("team", "DoesNotExist")))],
    )
    # The target selector too: NotIn selects pods without the key (x/a, x/c), not x/b.
    isolate = policy("z", "isolate-non-db", match_expression("tier", "NotIn", "db"), ingress=[])
    cluster = build_cluster(
        [ns_policy, isolate],
        namespace_labels={"y": {"team": "blue"}},
        pod_labels={"z/b": {"tier": "db"}},
    )
    assert_verdicts(
        cluster,
        [
            ("x/b", "x/a", 80, "TCP", "allow"),
            ("z/b", "x/a", 80, "TCP", "allow"),
            ("y/b", "x/a", 80, "TCP", "deny"),
            ("y/a", "z/a", 80, "TCP", "deny"),
            ("y/a", "z/c", 80, "TCP", "deny"),
            ("y/a", "z/b", 80, "TCP", "allow"),
        ],
    )


def test_ingress_rule_with_no_peers_and_no_ports_allows_everything():
    allow = policy("x", "allow-all", ALL, ingress=[rule()])
    allow_out = policy("x", "allow-all-out", ALL, egress=[rule()])
    cluster = build_cluster([deny_all("x"), allow, allow_out])
    assert_verdicts(
        cluster,
        [
            ("y/a", "x/a", 80, "TCP", "allow"),
            (EXTERNAL, "x/a", 12345, "UDP", "allow"),
            ("z/c", "x/b", 7, "SCTP", "allow"),
            ("x/a", EXTERNAL, 443, "TCP", "allow"),
        ],
    )
    assert walk(cluster, EXTERNAL, pod_ip("x", "a"), "icmp") == "allow"
