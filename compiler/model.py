"""Typed, validated Kubernetes objects: what the compiler reasons about.

Objects are frozen; label maps are stored as sorted tuples of pairs so that every object is
hashable and comparable. Build them through ``compiler.parse`` (which validates) or directly
in tests and benchmarks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

Labels = tuple[tuple[str, str], ...]

PROTOCOLS = ("TCP", "UDP", "SCTP")
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def labels_of(mapping: Mapping[str, str] | Iterable[tuple[str, str]] | None) -> Labels:
    """Canonical label tuple from a dict or pairs."""
    if mapping is None:
        return ()
    items = mapping.items() if isinstance(mapping, Mapping) else mapping
    return tuple(sorted((str(k), str(v)) for k, v in items))


@dataclass(frozen=True)
class Origin:
    """Where an object came from: file and 0-based document index in it."""

    file: str = "<memory>"
    document: int = 0

    def __str__(self) -> str:
        return f"{self.file}#{self.document}" if self.document else self.file


@dataclass(frozen=True)
class Requirement:
    """One matchExpressions entry. operator is In, NotIn, Exists or DoesNotExist."""

    key: str
    operator: str
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class LabelSelector:
    """metav1.LabelSelector. The empty selector matches everything."""

    match_labels: Labels = ()
    match_expressions: tuple[Requirement, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    def __str__(self) -> str:
        parts = [f"{k}={v}" for k, v in self.match_labels]
        for r in self.match_expressions:
            if r.operator in ("Exists", "DoesNotExist"):
                parts.append(("" if r.operator == "Exists" else "!") + r.key)
            else:
                op = "in" if r.operator == "In" else "notin"
                parts.append(f"{r.key} {op} ({','.join(r.values)})")
        return ",".join(parts) if parts else "{}"


@dataclass(frozen=True)
class IPBlock:
    cidr: str
    except_: tuple[str, ...] = ()


@dataclass(frozen=True)
class Peer:
    """NetworkPolicyPeer: either selectors (AND-ed) or an ipBlock, never both."""

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None


@dataclass(frozen=True)
class PolicyPort:
    """NetworkPolicyPort. port None = every port of the protocol; str = a named port."""

    protocol: str = "TCP"
    port: int | str | None = None
    end_port: int | None = None


@dataclass(frozen=True)
class PolicyRule:
    """One ingress or egress rule. Empty peers = every peer; empty ports = every port and protocol."""

    peers: tuple[Peer, ...] = ()
    ports: tuple[PolicyPort, ...] = ()


@dataclass(frozen=True)
class NetworkPolicy:
    namespace: str
    name: str
    pod_selector: LabelSelector = LabelSelector()
    ingress: tuple[PolicyRule, ...] = ()
    egress: tuple[PolicyRule, ...] = ()
    # Already defaulted: [Ingress] plus Egress iff egress rules exist, when the manifest omits it.
    policy_types: tuple[str, ...] = ("Ingress",)
    origin: Origin = field(default=Origin(), compare=False)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def isolates_ingress(self) -> bool:
        return "Ingress" in self.policy_types

    @property
    def isolates_egress(self) -> bool:
        return "Egress" in self.policy_types


def default_policy_types(has_egress_rules: bool) -> tuple[str, ...]:
    """The API server's defaulting of spec.policyTypes when it is omitted."""
    return ("Ingress", "Egress") if has_egress_rules else ("Ingress",)


@dataclass(frozen=True)
class Namespace:
    name: str
    labels: Labels = ()
    implicit: bool = False
    origin: Origin = field(default=Origin(), compare=False)

    @property
    def effective_labels(self) -> dict[str, str]:
        """Labels as the API server stores them: the immutable name label is always present."""
        d = dict(self.labels)
        d[NAMESPACE_NAME_LABEL] = self.name
        return d


@dataclass(frozen=True)
class ContainerPort:
    port: int
    protocol: str = "TCP"
    name: str | None = None


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    labels: Labels = ()
    node_name: str | None = None
    host_network: bool = False
    ips: tuple[str, ...] = ()
    ports: tuple[ContainerPort, ...] = ()
    phase: str = "Running"
    origin: Origin = field(default=Origin(), compare=False)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def label_dict(self) -> dict[str, str]:
        return dict(self.labels)


@dataclass(frozen=True)
class Node:
    name: str
    labels: Labels = ()
    addresses: tuple[str, ...] = ()  # InternalIP and ExternalIP, in manifest order
    origin: Origin = field(default=Origin(), compare=False)


@dataclass(frozen=True)
class Cluster:
    """Everything the manifests described, validated. Order is manifest order."""

    namespaces: tuple[Namespace, ...] = ()
    pods: tuple[Pod, ...] = ()
    nodes: tuple[Node, ...] = ()
    policies: tuple[NetworkPolicy, ...] = ()
    warnings: tuple[str, ...] = ()
