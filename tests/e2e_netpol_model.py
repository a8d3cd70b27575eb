"""The upstream e2e network-policy model, as npemu objects, and a truth-table helper.

Mirrors the ideas of kubernetes/kubernetes test/e2e/network/netpol (model.go, reachability.go,
truthtable.go), re-expressed for npemu:

- three namespaces ``x``, ``y``, ``z`` labelled ``ns=<name>`` (the API server adds the immutable
  ``kubernetes.io/metadata.name=<name>``; npemu's ``Namespace.effective_labels`` does too);
- pods ``a``, ``b``, ``c`` in each, labelled ``pod=<name>``, with one container port per
  (port, protocol) of the scenario, named ``serve-<port>-<protocol in lower case>``
  (``serve-80-tcp``, ``serve-81-udp``, ...), as ``Container.PortName`` names them upstream;
- pod IPs assigned deterministically (IPv4, IPv6 or dual-stack) and spread over two nodes.

``Reachability`` is the truth table: start all-true or all-false, then ``expect`` one cell,
``expect_peer`` a block of cells (namespace and/or pod matchers, empty = any), or a whole
column (``expect_all_ingress``) or row (``expect_all_egress``). Grids print as upstream does:
``.`` connected, ``X`` blocked; in a comparison ``.`` agrees and ``X`` differs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from compiler.inventory import Endpoint, Inventory
from compiler.lower import lower
from compiler.model import (
    NAMESPACE_NAME_LABEL,
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
    labels_of,
)

NAMESPACES = ("x", "y", "z")
POD_NAMES = ("a", "b", "c")
NODES = ("node-1", "node-2")
FAMILIES = ("ipv4", "ipv6", "dual")
MAX_LISTED = 12  # differing cells listed one by one under the grids

# -- addresses ----------------------------------------------------------------------------------


def pod_ipv4(namespace: str, pod: str) -> str:
    """x/a = 10.244.1.10, x/b = 10.244.1.11, y/a = 10.244.2.10, ... (one /24 per namespace)."""
    return f"10.244.{NAMESPACES.index(namespace) + 1}.{POD_NAMES.index(pod) + 10}"


def pod_ipv6(namespace: str, pod: str) -> str:
    """x/a = fd00:10:244:1::a, x/b = fd00:10:244:1::b, ... (one /64 per namespace)."""
    return f"fd00:10:244:{NAMESPACES.index(namespace) + 1}::{POD_NAMES.index(pod) + 10:x}"


def pod_ips(namespace: str, pod: str, family: str = "ipv4") -> tuple[str, ...]:
    """status.podIPs: the primary (status.podIP) first; dual-stack is IPv4-primary."""
    if family == "ipv4":
        return (pod_ipv4(namespace, pod),)
    if family == "ipv6":
        return (pod_ipv6(namespace, pod),)
    if family == "dual":
        return (pod_ipv4(namespace, pod), pod_ipv6(namespace, pod))
    raise ValueError(f"unknown family {family!r}")


def pod_ip(namespace: str, pod: str, family: str = "ipv4") -> str:
    """status.podIP: what the upstream ipBlock scenarios build their CIDRs from."""
    return pod_ips(namespace, pod, family)[0]


def host_cidr(ip: str) -> str:
    """``IP/32`` or ``IP/128``, as the upstream ipBlock scenarios write a single pod."""
    return f"{ip}/{32 if ipaddress.ip_address(ip).version == 4 else 128}"


def node_ips(node: str, family: str = "ipv4") -> tuple[str, ...]:
    n = NODES.index(node) + 2
    v4, v6 = f"172.18.0.{n}", f"fc00:f853:ccd:e793::{n}"
    return {"ipv4": (v4,), "ipv6": (v6,), "dual": (v4, v6)}[family]


def node_of(namespace: str, pod: str) -> str:
    """Pods alternate between the two nodes in x/a, x/b, ..., z/c order."""
    k = NAMESPACES.index(namespace) * len(POD_NAMES) + POD_NAMES.index(pod)
    return NODES[k % len(NODES)]


def all_pod_keys() -> list[str]:
    return [f"{ns}/{p}" for ns in NAMESPACES for p in POD_NAMES]


# -- the cluster --------------------------------------------------------------------------------


def container_ports(ports: Iterable[int], protocols: Iterable[str]) -> tuple[ContainerPort, ...]:
    """One container per (port, protocol), its port named ``serve-<port>-<protocol>``."""
    return tuple(
        ContainerPort(port=port, protocol=proto, name=f"serve-{port}-{proto.lower()}")
        for port in ports
        for proto in protocols
    )


def build_cluster(
    policies: Iterable[NetworkPolicy] = (),
    *,
    protocols: Sequence[str] = ("TCP",),
    ports: Sequence[int] = (80, 81),
    family: str = "ipv4",
    namespace_labels: Mapping[str, Mapping[str, str]] | None = None,
    pod_labels: Mapping[str, Mapping[str, str]] | None = None,
    extra_pods: Iterable[Pod] = (),
    extra_namespaces: Iterable[Namespace] = (),
) -> Cluster:
    """The x/y/z x a/b/c model. ``namespace_labels`` / ``pod_labels`` (keyed ``x`` / ``x/a``)
    add labels on top of the model's, as the upstream AddNamespaceLabel / AddPodLabels steps do."""
    namespace_labels = namespace_labels or {}
    pod_labels = pod_labels or {}
    namespaces = [
        Namespace(name=ns, labels=labels_of({"ns": ns, **namespace_labels.get(ns, {})}))
        for ns in NAMESPACES
    ]
    namespaces.extend(extra_namespaces)
    cports = container_ports(ports, protocols)
    pods = [
        Pod(
            namespace=ns,
            name=p,
            labels=labels_of({"pod": p, **pod_labels.get(f"{ns}/{p}", {})}),
            node_name=node_of(ns, p),
            ips=pod_ips(ns, p, family),
            ports=cports,
        )
        for ns in NAMESPACES
        for p in POD_NAMES
    ]
    pods.extend(extra_pods)
    nodes = [Node(name=n, addresses=node_ips(n, family)) for n in NODES]
    return Cluster(
        namespaces=tuple(namespaces),
        pods=tuple(pods),
        nodes=tuple(nodes),
        policies=tuple(policies),
    )


# -- policy builders ----------------------------------------------------------------------------


def match_labels(**labels: str) -> LabelSelector:
    return LabelSelector(match_labels=labels_of(labels))


def match_expression(key: str, operator: str, *values: str) -> LabelSelector:
    return LabelSelector(match_expressions=(Requirement(key, operator, tuple(values)),))


def namespace_named(name: str) -> LabelSelector:
    """A namespaceSelector on the immutable ``kubernetes.io/metadata.name`` label."""
    return LabelSelector(match_labels=labels_of({NAMESPACE_NAME_LABEL: name}))


ALL = LabelSelector()


def peer(pods: LabelSelector | None = None, namespaces: LabelSelector | None = None) -> Peer:
    return Peer(pod_selector=pods, namespace_selector=namespaces)


def ip_block(cidr: str, *excepts: str) -> Peer:
    return Peer(ip_block=IPBlock(cidr=cidr, except_=tuple(excepts)))


def port(
    number: int | str | None = None, protocol: str = "TCP", end: int | None = None
) -> PolicyPort:
    return PolicyPort(protocol=protocol, port=number, end_port=end)


def rule(*peers: Peer, ports: Sequence[PolicyPort] = ()) -> PolicyRule:
    return PolicyRule(peers=tuple(peers), ports=tuple(ports))


def policy(
    namespace: str,
    name: str,
    pod_selector: LabelSelector = ALL,
    *,
    ingress: Sequence[PolicyRule] | None = None,
    egress: Sequence[PolicyRule] | None = None,
    policy_types: Sequence[str] | None = None,
) -> NetworkPolicy:
    """A NetworkPolicy built as the upstream SetSpecIngressRules / SetSpecEgressRules do:
    passing ``ingress`` (even empty) adds ``Ingress`` to policyTypes, passing ``egress`` adds
    ``Egress``. ``policy_types`` overrides that (the spec's explicit list)."""
    types: list[str] = []
    if ingress is not None:
        types.append("Ingress")
    if egress is not None:
        types.append("Egress")
    return NetworkPolicy(
        namespace=namespace,
        name=name,
        pod_selector=pod_selector,
        ingress=tuple(ingress or ()),
        egress=tuple(egress or ()),
        policy_types=tuple(policy_types if policy_types is not None else types),
    )


# -- truth tables -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cells:
    """Upstream's Peer matcher: empty namespace / pod match every pod."""

    namespace: str = ""
    pod: str = ""

    def matches(self, key: str) -> bool:
        ns, name = key.split("/", 1)
        return (not self.namespace or self.namespace == ns) and (not self.pod or self.pod == name)


@dataclass
class Reachability:
    """Expected connectivity: ``table[(src, dst)]`` is True when src reaches dst."""

    default: bool = True
    pods: list[str] = field(default_factory=all_pod_keys)
    table: dict[tuple[str, str], bool] = field(init=False)

    def __post_init__(self) -> None:
        self.table = {(s, d): self.default for s in self.pods for d in self.pods}

    def expect(self, src: str, dst: str, connected: bool) -> Reachability:
        if (src, dst) not in self.table:
            raise KeyError(f"{src} -> {dst} is not a cell of this table")
        self.table[(src, dst)] = connected
        return self

    def expect_peer(self, src: Cells, dst: Cells, connected: bool) -> Reachability:
        for s in self.pods:
            for d in self.pods:
                if src.matches(s) and dst.matches(d):
                    self.table[(s, d)] = connected
        return self

    def expect_all_ingress(self, pod: str, connected: bool) -> Reachability:
        """Everything into ``pod`` (its column)."""
        for s in self.pods:
            self.expect(s, pod, connected)
        return self

    def expect_all_egress(self, pod: str, connected: bool) -> Reachability:
        """Everything out of ``pod`` (its row)."""
        for d in self.pods:
            self.expect(pod, d, connected)
        return self

    def allow_loopback(self) -> Reachability:
        """A pod always reaches itself (DESIGN.md §2 "self"). Upstream ignores the diagonal
        (network_policy.go ``ignoreLoopback = true``); npemu defines it, so we assert it."""
        for p in self.pods:
            self.table[(p, p)] = True
        return self

    def copy(self) -> Reachability:
        other = Reachability(self.default, list(self.pods))
        other.table = dict(self.table)
        return other


def grid(pods: Sequence[str], cell) -> str:
    """Rows are sources, columns destinations; ``cell(src, dst)`` gives one character."""
    width = max(len(p) for p in pods)
    lines = [" " * width + " " + " ".join(d.rjust(width) for d in pods)]
    for s in pods:
        lines.append(s.ljust(width) + " " + " ".join(cell(s, d).rjust(width) for d in pods))
    return "\n".join(lines)


def diff_report(
    title: str,
    expected: Mapping[tuple[str, str], bool],
    observed: Mapping[tuple[str, str], bool],
    pods: Sequence[str],
) -> str:
    """Expected, observed and comparison grids plus the differing cells, or "" if equal."""
    wrong = [(s, d) for s in pods for d in pods if expected[(s, d)] != observed.get((s, d))]
    if not wrong:
        return ""

    def mark(table: Mapping[tuple[str, str], bool]):
        return lambda s, d: "?" if (s, d) not in table else ("." if table[(s, d)] else "X")

    parts = [
        f"== {title}: {len(wrong)} of {len(pods) ** 2} cells differ "
        "(. = connected, X = blocked; rows from, columns to)",
        "expected:\n" + grid(pods, mark(expected)),
        "observed:\n" + grid(pods, mark(observed)),
        "comparison (X = differs):\n" + grid(pods, lambda s, d: "X" if (s, d) in wrong else "."),
        "differences:\n"
        + "\n".join(
            f"  {s} -> {d}: expected {'allow' if expected[(s, d)] else 'deny'}, "
            f"observed {'allow' if observed.get((s, d)) else 'deny'}"
            for s, d in wrong[:MAX_LISTED]
        )
        + (f"\n  ... and {len(wrong) - MAX_LISTED} more" if len(wrong) > MAX_LISTED else ""),
    ]
    return "\n\n".join(parts)


# -- observation --------------------------------------------------------------------------------


def observe(
    cluster: Cluster,
    probes: Sequence[tuple[int, str]],
    endpoints: Sequence[str] | None = None,
) -> dict[tuple[int, str], dict[tuple[str, str], bool]]:
    """``Prober.matrix`` over the endpoints (default: every pod), per (port, protocol)."""
    from dataplane.probe import Prober  # imported late: keeps this module importable alone

    inventory = Inventory(cluster)
    ruleset = lower(cluster, inventory=inventory)
    eps = _endpoints(inventory, endpoints)
    results = Prober(ruleset, inventory).matrix(eps, list(probes))
    out: dict[tuple[int, str], dict[tuple[str, str], bool]] = {tuple(p): {} for p in probes}
    for r in results:
        out[(r.spec.port, r.spec.protocol)][(r.spec.src.label, r.spec.dst.label)] = (
            r.verdict == "allow"
        )
    return out


def observe_requests(
    cluster: Cluster,
    probes: Sequence[tuple[int, str]],
    endpoints: Sequence[str] | None = None,
) -> dict[tuple[int, str], dict[tuple[str, str], bool]]:
    """The request direction alone, through the reference walker (a NEW packet): for the
    scenarios here this equals the full request-and-reply verdict, so it is a second witness."""
    from dataplane.walker import Packet, Walker

    inventory = Inventory(cluster)
    walker = Walker(lower(cluster, inventory=inventory))
    eps = _endpoints(inventory, endpoints)
    out: dict[tuple[int, str], dict[tuple[str, str], bool]] = {}
    for number, proto in probes:
        cells = out.setdefault((number, proto), {})
        for s in eps:
            for d in eps:
                addrs = _common_family(s, d)
                if addrs is None:
                    continue
                pkt = Packet.make(addrs[0], addrs[1], proto.lower(), number)
                cells[(s.label, d.label)] = walker.walk(pkt).verdict == "ACCEPT"
    return out


def _endpoints(inventory: Inventory, labels: Sequence[str] | None) -> list[Endpoint]:
    if labels is None:
        return inventory.pod_endpoints()
    return [inventory.endpoint(text) for text in labels]


def _common_family(src: Endpoint, dst: Endpoint) -> tuple[str, str] | None:
    for fam in (4, 6):
        s, d = src.ip_for_family(fam), dst.ip_for_family(fam)
        if s and d:
            return s, d
    return None


def check(
    title: str,
    cluster: Cluster,
    expectations: Sequence[tuple[int, str, Reachability]],
    *,
    loopback: bool = True,
) -> list[str]:
    """Compare each (port, protocol) truth table with ``Prober.matrix`` over all pods, and with
    the walker's request verdicts. Returns readable failure reports (empty when all agree)."""
    probes = [(number, proto) for number, proto, _ in expectations]
    observed = observe(cluster, probes)
    requests = observe_requests(cluster, probes)
    failures = []
    for number, proto, reach in expectations:
        expected = (reach.copy().allow_loopback() if loopback else reach).table
        label = f"{title} [{number}/{proto}]"
        report = diff_report(
            label + " Prober.matrix", expected, observed[(number, proto)], reach.pods
        )
        if report:
            failures.append(report)
        report = diff_report(
            label + " walker (request only)", expected, requests[(number, proto)], reach.pods
        )
        if report:
            failures.append(report)
    return failures
