"""Indexes over a Cluster: pods by namespace, label and IP; nodes; named ports.

Selector resolution goes through the label index (candidates from the most selective
matchLabels pair or In expression, then an exact check), so resolving every policy of a large
cluster never scans all pods per policy.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .model import Cluster, LabelSelector, Namespace, Node, Pod
from .selectors import selector_matches


@dataclass(frozen=True)
class Endpoint:
    """A probe endpoint: a pod (by key) or a bare IP address."""

    label: str  # "ns/pod" or the IP literal
    ips: tuple[str, ...]
    pod: Pod | None = None

    def ip_for_family(self, family: int) -> str | None:
        for ip in self.ips:
            if ipaddress.ip_address(ip).version == family:
                return ip
        return None


class Inventory:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.namespaces: dict[str, Namespace] = {ns.name: ns for ns in cluster.namespaces}
        for name in sorted(
            {p.namespace for p in cluster.pods} | {p.namespace for p in cluster.policies}
        ):
            self.namespaces.setdefault(name, Namespace(name=name, implicit=True))
        self._ns_labels = {name: ns.effective_labels for name, ns in self.namespaces.items()}
        self.nodes: dict[str, Node] = {n.name: n for n in cluster.nodes}
        self.pods: tuple[Pod, ...] = cluster.pods
        self.pod_by_key: dict[str, Pod] = {p.key: p for p in cluster.pods}
        self._pods_by_ns: dict[str, list[int]] = defaultdict(list)
        self._by_label: dict[str, dict[tuple[str, str], list[int]]] = defaultdict(
            lambda: defaultdict(list)
        )
        self._by_key: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        self._label_dicts: list[dict[str, str]] = []
        for i, pod in enumerate(cluster.pods):
            labels = dict(pod.labels)
            self._label_dicts.append(labels)
            self._pods_by_ns[pod.namespace].append(i)
            for kv in pod.labels:
                self._by_label[pod.namespace][kv].append(i)
                self._by_key[pod.namespace][kv[0]].append(i)
        self.pods_by_node: dict[str, list[Pod]] = defaultdict(list)
        for pod in cluster.pods:
            if pod.node_name:
                self.pods_by_node[pod.node_name].append(pod)
        # address literal -> (family, canonical text); see address()
        self._addresses: dict[str, tuple[int, str]] = {}
        self.pod_by_ip: dict[str, Pod] = {}
        for pod in cluster.pods:
            if not pod.host_network:
                for ip in pod.ips:
                    self.pod_by_ip.setdefault(self.address(ip)[1], pod)

    # -- selection -----------------------------------------------------------------------------

    def select_namespaces(self, selector: LabelSelector) -> list[str]:
        return [n for n, labels in self._ns_labels.items() if selector_matches(selector, labels)]

    def select_pods(self, namespaces: Iterable[str], selector: LabelSelector) -> list[Pod]:
        """Pods in those namespaces whose labels match, in manifest order."""
        out: list[int] = []
        for ns in namespaces:
            out.extend(
                i
                for i in self._candidates(ns, selector)
                if selector_matches(selector, self._label_dicts[i])
            )
        return [self.pods[i] for i in sorted(set(out))]

    def _candidates(self, ns: str, selector: LabelSelector) -> Sequence[int]:
        # Narrow with the smallest index hit; the exact check follows in select_pods.
        options: list[Sequence[int]] = [
            self._by_label[ns].get(kv, ()) for kv in selector.match_labels
        ]
        for req in selector.match_expressions:
            if req.operator == "In":
                merged: list[int] = []
                for v in req.values:
                    merged.extend(self._by_label[ns].get((req.key, v), ()))
                options.append(merged)
            elif req.operator == "Exists":
                options.append(self._by_key[ns].get(req.key, ()))
        if not options:
            return self._pods_by_ns.get(ns, [])
        return min(options, key=len)

    def policy_targets(self, policy_namespace: str, selector: LabelSelector) -> list[Pod]:
        """Pods a policy's spec.podSelector applies to: never hostNetwork pods."""
        return [p for p in self.select_pods([policy_namespace], selector) if not p.host_network]

    # -- addresses -----------------------------------------------------------------------------

    def address(self, ip: str) -> tuple[int, str]:
        """(family, canonical text) of an address literal. Memoised: lowering reads every pod
        address once per set and rule it lands in, and ipaddress parsing would dominate."""
        known = self._addresses.get(ip)
        if known is None:
            addr = ipaddress.ip_address(ip)
            known = self._addresses[ip] = (addr.version, str(addr))
        return known

    def pod_ips(self, pod: Pod) -> tuple[str, ...]:
        """The addresses a pod's traffic carries; a hostNetwork pod without its own carries its
        node's."""
        if pod.ips:
            return pod.ips
        if pod.host_network and pod.node_name in self.nodes:
            return self.nodes[pod.node_name].addresses
        return ()

    def node_host_ips(self, node_name: str) -> tuple[str, ...]:
        """The node's own addresses plus those of hostNetwork pods on it."""
        ips: list[str] = []
        node = self.nodes.get(node_name)
        if node:
            ips.extend(node.addresses)
        for pod in self.pods_by_node.get(node_name, ()):
            if pod.host_network:
                ips.extend(self.pod_ips(pod))
        return tuple(dict.fromkeys(ips))

    def node_names(self) -> list[str]:
        """Nodes defined by manifests plus nodes that pods name but no manifest defines."""
        return list(dict.fromkeys([*self.nodes, *self.pods_by_node]))

    def named_port(self, pod: Pod, name: str, protocol: str) -> int | None:
        for cp in pod.ports:
            if cp.name == name and cp.protocol == protocol:
                return cp.port
        return None

    # -- endpoints -----------------------------------------------------------------------------

    def endpoint(self, text: str) -> Endpoint:
        """Resolve ``namespace/pod`` or an IP literal. Raises KeyError/ValueError with a message."""
        if "/" in text and not is_ip(text):
            pod = self.pod_by_key.get(text)
            if pod is None:
                raise KeyError(
                    f"unknown pod {text!r} (endpoints are namespace/pod or an IP address)"
                )
            ips = self.pod_ips(pod)
            if not ips:
                raise ValueError(f"pod {text} has no IP address (status.podIP(s) is empty)")
            return Endpoint(label=text, ips=ips, pod=pod)
        if not is_ip(text):
            raise ValueError(f"{text!r} is neither namespace/pod nor an IP address")
        ip = _norm(text)
        # the address itself (its family matters), attributed to the pod that owns it if any
        return Endpoint(label=ip, ips=(ip,), pod=self.pod_by_ip.get(ip))

    def pod_endpoints(self) -> list[Endpoint]:
        """Every pod that has an address, in manifest order."""
        return [Endpoint(p.key, self.pod_ips(p), p) for p in self.pods if self.pod_ips(p)]


def is_ip(text: str) -> bool:
    """True for an IPv4 or IPv6 address literal."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _norm(ip: str) -> str:
    return str(ipaddress.ip_address(ip))
