"""Validated manifests -> the typed model (``compiler.model``), and the input edge's entry point.

``load_cluster`` reads ``-f`` paths (via ``compiler.manifests``) and calls ``build_cluster``,
which is pure: it validates every object (``compiler.validate``), applies the API server's
defaulting (policyTypes, protocol TCP, the kubectl namespace ``default``) and builds frozen model
objects. Any error anywhere means no Cluster: ``ManifestError`` carries all of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from compiler import validate as v
from compiler.errors import ManifestError
from compiler.manifests import RawObject, load_paths
from compiler.model import (
    Cluster,
    ContainerPort,
    IPBlock,
    LabelSelector,
    Namespace,
    NetworkPolicy,
    Node,
    Origin,
    Peer,
    Pod,
    PolicyPort,
    PolicyRule,
    Requirement,
    default_policy_types,
    labels_of,
)

__all__ = ["ManifestError", "build_cluster", "load_cluster"]

TERMINAL_PHASES = ("Succeeded", "Failed")  # such pods have released their IPs
NODE_IP_TYPES = ("InternalIP", "ExternalIP")
_MEMORY = Origin()


def load_cluster(
    paths: Sequence[str], stdin_text: str | None = None, *, strict_cidr: bool = False
) -> Cluster:
    """Read, validate and build everything named by ``-f`` arguments.

    Raises ManifestError with every load and validation error of every file.
    """
    objects, load_errors = load_paths(paths, stdin_text)
    try:
        cluster = build_cluster(objects, strict_cidr=strict_cidr)
    except ManifestError as err:
        raise ManifestError([*load_errors, *err.errors]) from None
    if load_errors:
        raise ManifestError(load_errors)
    return cluster


def build_cluster(
    objects: Iterable[RawObject | Mapping[str, Any]], *, strict_cidr: bool = False
) -> Cluster:
    """Build a Cluster from loaded objects (RawObject) or plain dicts (origin ``<memory>``).

    Other kinds (Service, Deployment, ...) are skipped with one warning per kind; namespaces
    that pods or policies use but no Namespace object defines are added as implicit, with a
    warning. Raises ManifestError listing every problem.
    """
    builder = _Builder(strict_cidr)
    for i, item in enumerate(objects):
        raw = item if isinstance(item, RawObject) else RawObject(item, Origin("<memory>", i))
        builder.add(raw)
    return builder.finish()


class _Builder:
    def __init__(self, strict_cidr: bool) -> None:
        self.strict_cidr = strict_cidr
        self.errors: list[str] = []
        self.skipped: dict[str, int] = {}
        self.seen: dict[tuple[str, str, str], RawObject] = {}
        self.namespaces: list[Namespace] = []
        self.pods: list[Pod] = []
        self.nodes: list[Node] = []
        self.policies: list[NetworkPolicy] = []

    def add(self, raw: RawObject) -> None:
        file, where = raw.origin.file, _where(raw)
        obj = raw.obj
        if not isinstance(obj, dict):
            self.errors.append(f"{file}: {where}: expected an object, got {v._json_type(obj)}")
            return
        kind, api_version = obj.get("kind"), obj.get("apiVersion")
        missing = [n for n, x in (("apiVersion", api_version), ("kind", kind)) if not x]
        if missing or not isinstance(kind, str) or not isinstance(api_version, str):
            detail = (
                " and ".join(f"{n} not set" for n in missing)
                or "kind and apiVersion must be strings"
            )
            self.errors.append(f"{file}: {where}: {detail}")
            return
        if kind not in v.SCHEMAS:
            self.skipped[kind] = self.skipped.get(kind, 0) + 1
            return
        label = v.object_label(obj, where)
        checked = v.validate_object(obj, strict_cidr=self.strict_cidr)
        if checked.errors:
            self.errors += [f"{file}: {label}: {e}" for e in checked.errors]
            return
        if self._duplicate(kind, checked.clean, raw, label):
            return
        self._build(kind, checked.clean, raw.origin)

    def _duplicate(self, kind: str, clean: dict[str, Any], raw: RawObject, label: str) -> bool:
        meta = clean.get("metadata", {})
        namespace = _namespace(meta) if kind in v.NAMESPACED else ""
        key = (kind, namespace, meta["name"])
        first = self.seen.setdefault(key, raw)
        if first is raw:
            return False
        self.errors.append(
            f"{raw.origin.file}: {label}: metadata.name: Duplicate value: "
            f'"{meta["name"]}": also defined at {_locate(first)} (this one at {_locate(raw)})'
        )
        return True

    def _build(self, kind: str, clean: dict[str, Any], origin: Origin) -> None:
        if kind == "NetworkPolicy":
            self.policies.append(policy_from(clean, origin))
        elif kind == "Pod":
            self.pods.append(pod_from(clean, origin))
        elif kind == "Node":
            self.nodes.append(node_from(clean, origin))
        else:
            self.namespaces.append(namespace_from(clean, origin))

    def finish(self) -> Cluster:
        if self.errors:
            raise ManifestError(self.errors)
        warnings = [
            f"skipped {n} {kind} object{'s' if n > 1 else ''}: npemu reads only "
            "NetworkPolicy, Namespace, Pod and Node"
            for kind, n in self.skipped.items()
        ]
        namespaces = list(self.namespaces)
        defined = {ns.name for ns in namespaces}
        for name in _used_namespaces(self.pods, self.policies):
            if name not in defined:
                defined.add(name)
                namespaces.append(Namespace(name, implicit=True))
                warnings.append(
                    f'namespace "{name}" is used but not defined; assuming it exists with '
                    "only the kubernetes.io/metadata.name label"
                )
        return Cluster(
            namespaces=tuple(namespaces),
            pods=tuple(self.pods),
            nodes=tuple(self.nodes),
            policies=tuple(self.policies),
            warnings=tuple(warnings),
        )


def _used_namespaces(pods: list[Pod], policies: list[NetworkPolicy]) -> list[str]:
    return list(dict.fromkeys([p.namespace for p in pods] + [p.namespace for p in policies]))


def _where(raw: RawObject) -> str:
    """Position of an object for messages that cannot name it."""
    if raw.line is not None:
        return f"line {raw.line}"
    text = f"document {raw.origin.document}"
    return text if raw.item is None else f"{text} item {raw.item}"


def _locate(raw: RawObject) -> str:
    if raw.line is not None:
        return f"{raw.origin.file}:{raw.line}"
    return str(raw.origin) if raw.item is None else f"{raw.origin} item {raw.item}"


def _namespace(meta: Mapping[str, Any]) -> str:
    return meta.get("namespace") or v.DEFAULT_NAMESPACE


# ---------------------------------------------------------------------------------------------
# Clean (validated) dicts -> model objects.


def selector_from(sel: Mapping[str, Any] | None) -> LabelSelector | None:
    if sel is None:
        return None
    return LabelSelector(
        match_labels=labels_of(sel.get("matchLabels")),
        match_expressions=tuple(
            Requirement(e.get("key", ""), e["operator"], tuple(e.get("values") or ()))
            for e in sel.get("matchExpressions") or ()
        ),
    )


def _peer_from(peer: Mapping[str, Any]) -> Peer:
    block = peer.get("ipBlock")
    ip_block = None
    if block is not None:
        ip_block = IPBlock(
            cidr=_canonical_cidr(block["cidr"]),
            except_=tuple(_canonical_cidr(c) for c in block.get("except") or ()),
        )
    return Peer(
        pod_selector=selector_from(peer.get("podSelector")),
        namespace_selector=selector_from(peer.get("namespaceSelector")),
        ip_block=ip_block,
    )


def _canonical_cidr(text: str) -> str:
    """The network the API's consumers see (host bits cleared, leading zeros dropped)."""
    parsed = v.parse_cidr_sloppy(text)
    assert parsed is not None  # validated
    return str(parsed.network)


def _canonical_ip(text: str) -> str:
    parsed = v.parse_ip_sloppy(text)
    assert parsed is not None  # validated
    return str(parsed[0])


def _port_from(port: Mapping[str, Any]) -> PolicyPort:
    return PolicyPort(
        protocol=port.get("protocol", "TCP"),
        port=port.get("port"),
        end_port=port.get("endPort"),
    )


def _rule_from(rule: Mapping[str, Any], peers_key: str) -> PolicyRule:
    return PolicyRule(
        peers=tuple(_peer_from(p or {}) for p in rule.get(peers_key) or ()),
        ports=tuple(_port_from(p or {}) for p in rule.get("ports") or ()),
    )


def policy_from(obj: Mapping[str, Any], origin: Origin = _MEMORY) -> NetworkPolicy:
    meta, spec = obj["metadata"], obj.get("spec") or {}
    egress = spec.get("egress") or []
    types = tuple(dict.fromkeys(spec.get("policyTypes") or ()))  # upstream allows duplicates
    return NetworkPolicy(
        namespace=_namespace(meta),
        name=meta["name"],
        pod_selector=selector_from(spec.get("podSelector") or {}) or LabelSelector(),
        ingress=tuple(_rule_from(r or {}, "from") for r in spec.get("ingress") or ()),
        egress=tuple(_rule_from(r or {}, "to") for r in egress),
        policy_types=types or default_policy_types(bool(egress)),
        origin=origin,
    )


def _container_ports(spec: Mapping[str, Any]) -> tuple[ContainerPort, ...]:
    # Sidecars (init containers with restartPolicy Always) run alongside and serve ports too.
    containers = list(spec.get("containers") or ())
    containers += [
        c for c in spec.get("initContainers") or () if (c or {}).get("restartPolicy") == "Always"
    ]
    return tuple(
        ContainerPort(
            port=p["containerPort"], protocol=p.get("protocol", "TCP"), name=p.get("name") or None
        )
        for c in containers
        for p in (c or {}).get("ports") or ()
    )


def _pod_ips(status: Mapping[str, Any]) -> tuple[str, ...]:
    if status.get("phase") in TERMINAL_PHASES:
        return ()
    listed = [e.get("ip") for e in status.get("podIPs") or () if e and e.get("ip")]
    if not listed and status.get("podIP"):
        listed = [status["podIP"]]
    return tuple(_canonical_ip(ip) for ip in listed)


def pod_from(obj: Mapping[str, Any], origin: Origin = _MEMORY) -> Pod:
    meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    return Pod(
        namespace=_namespace(meta),
        name=meta["name"],
        labels=labels_of(meta.get("labels")),
        node_name=spec.get("nodeName") or None,
        host_network=bool(spec.get("hostNetwork", False)),
        ips=_pod_ips(status),
        ports=_container_ports(spec),
        phase=status.get("phase") or "Running",
        origin=origin,
    )


def node_from(obj: Mapping[str, Any], origin: Origin = _MEMORY) -> Node:
    meta, status = obj["metadata"], obj.get("status") or {}
    addresses = [
        _canonical_ip(a["address"])
        for a in status.get("addresses") or ()
        if a and a.get("type") in NODE_IP_TYPES and a.get("address")
    ]
    return Node(
        name=meta["name"],
        labels=labels_of(meta.get("labels")),
        addresses=tuple(dict.fromkeys(addresses)),
        origin=origin,
    )


def namespace_from(obj: Mapping[str, Any], origin: Origin = _MEMORY) -> Namespace:
    meta = obj["metadata"]
    return Namespace(name=meta["name"], labels=labels_of(meta.get("labels")), origin=origin)
