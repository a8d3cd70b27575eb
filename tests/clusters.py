"""Random clusters, policies and packets for property tests (hypothesis strategies)."""

from __future__ import annotations

import ipaddress

from hypothesis import strategies as st

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
    Requirement,
    default_policy_types,
    labels_of,
)

NAMESPACES = ("x", "y", "z")
KEYS = ("app", "tier", "env")
VALUES = ("a", "b", "c")
PORT_NAMES = ("http", "dns", "metrics")
NODE_NAMES = ("n1", "n2")
NODE_IPS = {"n1": ("10.1.0.1", "fd01::1"), "n2": ("10.1.0.2", "fd01::2")}

labels = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=2)


@st.composite
def selectors(draw: st.DrawFn) -> LabelSelector:
    exprs = draw(
        st.lists(
            st.builds(
                lambda k, op, vals: Requirement(
                    k, op, tuple(vals) if op in ("In", "NotIn") else ()
                ),
                st.sampled_from(KEYS),
                st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist"]),
                st.lists(st.sampled_from(VALUES), min_size=1, max_size=2, unique=True),
            ),
            max_size=1,
        )
    )
    return LabelSelector(
        labels_of(
            draw(st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=1))
        ),
        tuple(exprs),
    )


@st.composite
def ip_blocks(draw: st.DrawFn) -> IPBlock:
    if draw(st.booleans()):
        base = draw(st.sampled_from(["10.0.0.0/8", "10.2.0.0/16", "0.0.0.0/0", "10.2.3.0/24"]))
        net = ipaddress.ip_network(base)
        candidates = [
            s
            for s in ("10.2.0.0/16", "10.2.3.0/24", "10.2.3.4/32", "10.1.0.0/24", "10.2.0.0/20")
            if ipaddress.ip_network(s).subnet_of(net) and ipaddress.ip_network(s) != net
        ]
    else:
        base = draw(st.sampled_from(["fd00::/16", "fd00:2::/32", "::/0"]))
        net = ipaddress.ip_network(base)
        candidates = [
            s
            for s in ("fd00:2::/32", "fd00:2::/64", "fd01::/16", "fd00:2::4/128")
            if ipaddress.ip_network(s).subnet_of(net) and ipaddress.ip_network(s) != net
        ]
    excepts = (
        draw(st.lists(st.sampled_from(candidates), unique=True, max_size=2)) if candidates else []
    )
    return IPBlock(base, tuple(excepts))


peers = st.one_of(
    st.builds(
        lambda p, n: Peer(pod_selector=p, namespace_selector=n),
        st.one_of(st.none(), selectors()),
        st.one_of(st.none(), selectors()),
    ).filter(lambda p: p.pod_selector is not None or p.namespace_selector is not None),
    st.builds(lambda b: Peer(ip_block=b), ip_blocks()),
)


@st.composite
def policy_ports(draw: st.DrawFn) -> PolicyPort:
    proto = draw(st.sampled_from(["TCP", "UDP", "SCTP"]))
    kind = draw(st.sampled_from(["none", "number", "range", "named"]))
    if kind == "none":
        return PolicyPort(proto)
    if kind == "named":
        return PolicyPort(proto, draw(st.sampled_from(PORT_NAMES)))
    port = draw(st.sampled_from([53, 80, 81, 443, 8080]))
    end = draw(st.sampled_from([port, port + 1, port + 100])) if kind == "range" else None
    return PolicyPort(proto, port, end)


rules = st.builds(
    lambda ps, pts: PolicyRule(tuple(ps), tuple(pts)),
    st.lists(peers, max_size=3),
    st.lists(policy_ports(), max_size=2),
)


@st.composite
def policies(draw: st.DrawFn, index: int) -> NetworkPolicy:
    ingress = tuple(draw(st.lists(rules, max_size=2)))
    egress = tuple(draw(st.lists(rules, max_size=2)))
    types = draw(st.sampled_from([None, ("Ingress",), ("Egress",), ("Ingress", "Egress")]))
    return NetworkPolicy(
        draw(st.sampled_from(NAMESPACES)),
        f"p{index}",
        draw(selectors()),
        ingress,
        egress,
        types or default_policy_types(bool(egress)),
    )


@st.composite
def clusters(draw: st.DrawFn) -> Cluster:
    n_pods = draw(st.integers(1, 8))
    pods = []
    for i in range(n_pods):
        node = draw(st.sampled_from(NODE_NAMES))
        host = draw(st.integers(0, 9)) == 0
        if host:
            ips = NODE_IPS[node][:1]
        else:
            fam = draw(st.sampled_from(["4", "6", "46"]))
            ips = tuple(
                ([f"10.2.{i // 4}.{i + 1}"] if "4" in fam else [])
                + ([f"fd00:2::{i + 1}"] if "6" in fam else [])
            )
        ports = tuple(
            ContainerPort(
                draw(st.sampled_from([53, 80, 81, 8080])),
                draw(st.sampled_from(["TCP", "UDP", "SCTP"])),
                name,
            )
            for name in draw(st.lists(st.sampled_from(PORT_NAMES), unique=True, max_size=2))
        )
        pods.append(
            Pod(
                draw(st.sampled_from(NAMESPACES)),
                f"pod{i}",
                labels_of(draw(labels)),
                node,
                host,
                ips,
                ports,
            )
        )
    namespaces = tuple(Namespace(n, labels_of(draw(labels))) for n in NAMESPACES)
    nodes = tuple(Node(n, addresses=NODE_IPS[n]) for n in NODE_NAMES)
    pols = tuple(draw(policies(i)) for i in range(draw(st.integers(0, 4))))
    return Cluster(namespaces, tuple(pods), nodes, pols)


def interesting_addresses(cluster: Cluster) -> list[str]:
    """Pod and node IPs plus addresses at the edges of the sets the strategies draw."""
    out = [ip for p in cluster.pods for ip in p.ips] + [
        ip for n in cluster.nodes for ip in n.addresses
    ]
    out += [
        "10.2.3.4",
        "10.2.3.5",
        "10.2.0.1",
        "10.3.0.1",
        "192.0.2.1",
        "10.1.0.9",
        "fd00:2::4",
        "fd00:2::1:1",
        "fd00:3::1",
        "2001:db8::1",
        "fd01::9",
    ]
    return sorted(set(out))
