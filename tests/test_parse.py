"""compiler.parse: manifests to model, defaulting, warnings, and the load_cluster entry point."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compiler.errors import ManifestError
from compiler.model import (
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
)
from compiler.parse import build_cluster, load_cluster

# What `kubectl get pods,namespaces,nodes,networkpolicies -A -o yaml` prints, trimmed.
KUBECTL_LIST = """\
apiVersion: v1
items:
- apiVersion: v1
  kind: Pod
  metadata:
    creationTimestamp: "2024-05-01T10:00:00Z"
    generateName: web-7d4b9c-
    labels:
      app: web
      pod-template-hash: 7d4b9c
    name: web-7d4b9c-abcde
    namespace: prod
    ownerReferences:
    - apiVersion: apps/v1
      blockOwnerDeletion: true
      controller: true
      kind: ReplicaSet
      name: web-7d4b9c
      uid: 0b6c7a2e-1111-2222-3333-444455556666
    resourceVersion: "123456"
    uid: 7f1e9a3c-aaaa-bbbb-cccc-ddddeeeeffff
    managedFields:
    - apiVersion: v1
      fieldsType: FieldsV1
      fieldsV1:
        f:metadata:
          f:labels:
            .: {}
            f:app: {}
      manager: kube-controller-manager
      operation: Update
      time: "2024-05-01T10:00:00Z"
  spec:
    containers:
    - image: nginx:1.25
      imagePullPolicy: IfNotPresent
      name: nginx
      ports:
      - containerPort: 8080
        name: http
        protocol: TCP
      - containerPort: 9090
        name: metrics
        protocol: TCP
      resources:
        limits: {cpu: 500m, memory: 128Mi}
      terminationMessagePath: /dev/termination-log
      volumeMounts:
      - mountPath: /var/run/secrets/kubernetes.io/serviceaccount
        name: kube-api-access-x
        readOnly: true
    initContainers:
    - name: proxy
      image: envoy
      restartPolicy: Always
      ports:
      - containerPort: 15001
        name: envoy
    - name: setup
      image: busybox
      ports:
      - containerPort: 1234
    dnsPolicy: ClusterFirst
    nodeName: node-1
    restartPolicy: Always
    schedulerName: default-scheduler
    serviceAccountName: default
    tolerations:
    - effect: NoExecute
      key: node.kubernetes.io/not-ready
      operator: Exists
      tolerationSeconds: 300
    volumes:
    - name: kube-api-access-x
      projected:
        sources:
        - serviceAccountToken: {expirationSeconds: 3607, path: token}
  status:
    conditions:
    - lastProbeTime: null
      lastTransitionTime: "2024-05-01T10:00:01Z"
      status: "True"
      type: Ready
    containerStatuses:
    - name: nginx
      ready: true
      restartCount: 0
      state:
        running: {startedAt: "2024-05-01T10:00:01Z"}
    hostIP: 192.168.1.10
    hostIPs:
    - ip: 192.168.1.10
    phase: Running
    podIP: 10.244.1.5
    podIPs:
    - ip: 10.244.1.5
    - ip: fd00:10:244:1::5
    qosClass: Burstable
    startTime: "2024-05-01T10:00:00Z"
- apiVersion: v1
  kind: Namespace
  metadata:
    creationTimestamp: "2024-05-01T09:00:00Z"
    labels:
      kubernetes.io/metadata.name: prod
      team: payments
    name: prod
    resourceVersion: "42"
    uid: 11111111-2222-3333-4444-555555555555
  spec:
    finalizers:
    - kubernetes
  status:
    phase: Active
- apiVersion: v1
  kind: Node
  metadata:
    annotations:
      node.alpha.kubernetes.io/ttl: "0"
    labels:
      kubernetes.io/hostname: node-1
      kubernetes.io/os: linux
    name: node-1
    resourceVersion: "999"
    uid: 99999999-2222-3333-4444-555555555555
  spec:
    podCIDR: 10.244.1.0/24
    podCIDRs:
    - 10.244.1.0/24
    providerID: kind://docker/kind/node-1
  status:
    addresses:
    - address: 192.168.1.10
      type: InternalIP
    - address: fc00:f853:ccd:e793::3
      type: InternalIP
    - address: node-1
      type: Hostname
    allocatable: {cpu: "8", memory: 16Gi, pods: "110"}
    conditions:
    - type: Ready
      status: "True"
      reason: KubeletReady
    nodeInfo:
      kubeletVersion: v1.30.0
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata:
    annotations:
      kubectl.kubernetes.io/last-applied-configuration: |
        {"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy"}
    creationTimestamp: "2024-05-01T11:00:00Z"
    generation: 1
    name: allow-web
    namespace: prod
    resourceVersion: "777"
    uid: 88888888-2222-3333-4444-555555555555
  spec:
    podSelector:
      matchLabels:
        app: web
    ingress:
    - from:
      - namespaceSelector:
          matchLabels:
            team: payments
        podSelector:
          matchExpressions:
          - key: role
            operator: In
            values: [frontend, gateway]
      - ipBlock:
          cidr: 10.0.0.0/8
          except:
          - 10.1.0.0/16
      ports:
      - port: http
      - port: 8000
        endPort: 8100
        protocol: TCP
      - port: 53
        protocol: UDP
    egress:
    - to:
      - podSelector: {}
    policyTypes:
    - Ingress
    - Egress
  status: {}
kind: List
metadata:
  resourceVersion: ""
"""


def test_realistic_kubectl_list_loads_unchanged(tmp_path: Path) -> None:
    f = tmp_path / "cluster.yaml"
    f.write_text(KUBECTL_LIST)
    cluster = load_cluster([str(f)])
    assert cluster.warnings == ()

    (pod,) = cluster.pods
    assert pod == Pod(
        namespace="prod",
        name="web-7d4b9c-abcde",
        labels=(("app", "web"), ("pod-template-hash", "7d4b9c")),
        node_name="node-1",
        ips=("10.244.1.5", "fd00:10:244:1::5"),
        ports=(
            ContainerPort(8080, "TCP", "http"),
            ContainerPort(9090, "TCP", "metrics"),
            ContainerPort(15001, "TCP", "envoy"),  # sidecar; the plain init container is not
        ),
        phase="Running",
    )
    assert pod.origin == Origin(str(f), 0)

    assert cluster.namespaces == (
        Namespace("prod", (("kubernetes.io/metadata.name", "prod"), ("team", "payments"))),
    )
    assert cluster.nodes == (
        Node(
            "node-1",
            (("kubernetes.io/hostname", "node-1"), ("kubernetes.io/os", "linux")),
            ("192.168.1.10", "fc00:f853:ccd:e793::3"),
        ),
    )
    (policy,) = cluster.policies
    assert policy == NetworkPolicy(
        namespace="prod",
        name="allow-web",
        pod_selector=LabelSelector(match_labels=(("app", "web"),)),
        ingress=(
            PolicyRule(
                peers=(
                    Peer(
                        pod_selector=LabelSelector(
                            match_expressions=(Requirement("role", "In", ("frontend", "gateway")),)
                        ),
                        namespace_selector=LabelSelector(match_labels=(("team", "payments"),)),
                    ),
                    Peer(ip_block=IPBlock("10.0.0.0/8", ("10.1.0.0/16",))),
                ),
                ports=(
                    PolicyPort("TCP", "http"),
                    PolicyPort("TCP", 8000, 8100),
                    PolicyPort("UDP", 53),
                ),
            ),
        ),
        egress=(PolicyRule(peers=(Peer(pod_selector=LabelSelector()),)),),
        policy_types=("Ingress", "Egress"),
    )


def np(
    spec: dict[str, Any] | None = None, name: str = "p", namespace: str | None = "prod"
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta,
        "spec": spec or {},
    }


@pytest.mark.parametrize(
    ("spec", "types"),
    [
        ({}, ("Ingress",)),
        ({"egress": []}, ("Ingress",)),
        ({"egress": [{}]}, ("Ingress", "Egress")),
        ({"ingress": [{}], "egress": [{"to": [{"podSelector": {}}]}]}, ("Ingress", "Egress")),
        ({"policyTypes": ["Egress"]}, ("Egress",)),
        ({"policyTypes": []}, ("Ingress",)),
        ({"policyTypes": ["Ingress", "Ingress"]}, ("Ingress",)),
    ],
)
def test_policy_types_defaulting(spec: dict[str, Any], types: tuple[str, ...]) -> None:
    assert build_cluster([np(spec)]).policies[0].policy_types == types


def test_defaults_protocol_namespace_and_empty_selectors() -> None:
    policy = build_cluster(
        [
            np(
                {"ingress": [{"ports": [{"port": 80}, {}], "from": [{"namespaceSelector": {}}]}]},
                namespace=None,
            )
        ]
    ).policies[0]
    assert policy.namespace == "default"
    assert policy.pod_selector == LabelSelector()
    assert policy.ingress[0].ports == (PolicyPort("TCP", 80), PolicyPort("TCP"))
    assert policy.ingress[0].peers == (Peer(namespace_selector=LabelSelector()),)


def test_cidrs_are_canonicalised() -> None:
    spec = {"egress": [{"to": [{"ipBlock": {"cidr": "010.0.0.1/8", "except": ["10.1.2.3/16"]}}]}]}
    block = build_cluster([np(spec)]).policies[0].egress[0].peers[0].ip_block
    assert block == IPBlock("10.0.0.0/8", ("10.1.0.0/16",))


def pod(name: str = "a", namespace: str = "prod", **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {},
        "status": status,
    }


@pytest.mark.parametrize(
    ("status", "ips"),
    [
        ({"phase": "Running", "podIP": "10.0.0.1"}, ("10.0.0.1",)),
        (
            {
                "phase": "Running",
                "podIP": "10.0.0.1",
                "podIPs": [{"ip": "10.0.0.1"}, {"ip": "FD00::0001"}],
            },
            ("10.0.0.1", "fd00::1"),
        ),
        (
            {"phase": "Running", "podIPs": [{"ip": "fd00::1"}, {"ip": "10.0.0.1"}]},
            ("fd00::1", "10.0.0.1"),
        ),
        ({"phase": "Succeeded", "podIP": "10.0.0.1"}, ()),
        ({"phase": "Failed", "podIPs": [{"ip": "10.0.0.1"}]}, ()),
        ({"phase": "Pending"}, ()),
        ({}, ()),
    ],
)
def test_pod_ips(status: dict[str, Any], ips: tuple[str, ...]) -> None:
    assert build_cluster([pod(**status)]).pods[0].ips == ips


def test_host_network_pods_keep_their_ips() -> None:
    obj = pod(phase="Running", podIP="192.168.1.10")
    obj["spec"] = {"hostNetwork": True, "nodeName": "node-1"}
    p = build_cluster([obj]).pods[0]
    assert p.host_network and p.ips == ("192.168.1.10",) and p.node_name == "node-1"


def test_other_kinds_are_skipped_with_one_warning_per_kind() -> None:
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}}
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}}
    cluster = build_cluster(
        [svc, dep, svc, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod"}}]
    )
    assert cluster.warnings == (
        "skipped 2 Service objects: npemu reads only NetworkPolicy, Namespace, Pod and Node",
        "skipped 1 Deployment object: npemu reads only NetworkPolicy, Namespace, Pod and Node",
    )


def test_implicit_namespaces() -> None:
    cluster = build_cluster(
        [
            pod(namespace="shop"),
            np(namespace="prod"),
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod"}},
        ]
    )
    assert cluster.namespaces == (Namespace("prod"), Namespace("shop", implicit=True))
    assert cluster.namespaces[1].implicit
    assert cluster.warnings == (
        'namespace "shop" is used but not defined; assuming it exists with only the kubernetes.io/metadata.name label',
    )


def test_duplicates_name_both_origins(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(json.dumps(pod("web")))
    (tmp_path / "b.yaml").write_text("---\n" + json.dumps(pod("web")) + "\n")
    with pytest.raises(ManifestError) as info:
        load_cluster([str(tmp_path)])
    assert info.value.errors == (
        f'{tmp_path / "b.yaml"}: Pod prod/web: metadata.name: Duplicate value: "web": '
        f"also defined at {tmp_path / 'a.yaml'}:1 (this one at {tmp_path / 'b.yaml'}:2)",
    )


def test_same_name_in_different_namespaces_or_kinds_is_fine() -> None:
    cluster = build_cluster([pod("x", "a"), pod("x", "b"), np(name="x", namespace="a")])
    assert len(cluster.pods) == 2 and len(cluster.policies) == 1


def test_all_errors_in_all_files_with_exact_format(tmp_path: Path) -> None:
    (tmp_path / "1-np.yaml").write_text(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: db, namespace: prod}\n"
        "spec:\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/16, except: [10.0.0.0/8]}\n"
        "    - {}\n    form: []\n"
    )
    (tmp_path / "2-bad.yaml").write_text("kind: Pod\nmetadata: [\n")
    (tmp_path / "3-pod.yaml").write_text("apiVersion: v1\nkind: Pod\nmetadata: {namespace: prod}\n")
    with pytest.raises(ManifestError) as info:
        load_cluster([str(tmp_path)])
    np_file, bad_file, pod_file = (
        str(tmp_path / n) for n in ("1-np.yaml", "2-bad.yaml", "3-pod.yaml")
    )
    assert info.value.errors == (
        f"{bad_file}:3:1: did not find expected node content (while parsing a flow node at line 3, column 1)",
        f'{np_file}: NetworkPolicy prod/db: unknown field "spec.ingress[0].form"',
        f'{np_file}: NetworkPolicy prod/db: spec.ingress[0].from[0].ipBlock.except[0]: Invalid value: "10.0.0.0/8": must be a strict subset of `cidr`',
        f"{np_file}: NetworkPolicy prod/db: spec.ingress[0].from[1]: Required value: must specify a peer",
        f"{pod_file}: Pod prod/<unnamed line 1>: metadata.name: Required value: name or generateName is required",
    )
    assert str(info.value) == "\n".join(info.value.errors)


def test_missing_kind_and_non_object_documents() -> None:
    with pytest.raises(ManifestError) as info:
        build_cluster([{"metadata": {}}, ["a"], {"kind": "Pod"}])
    assert info.value.errors == (
        "<memory>: document 0: apiVersion not set and kind not set",
        "<memory>: document 1: expected an object, got array",
        "<memory>: document 2: apiVersion not set",
    )


def test_multi_document_json_and_stdin(tmp_path: Path) -> None:
    (tmp_path / "ns.json").write_text(
        json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod"}})
    )
    multi = "---\n".join(
        json.dumps(pod(n, phase="Running", podIP=f"10.0.0.{i}")) + "\n"
        for i, n in enumerate(["a", "b"], 1)
    )
    cluster = load_cluster([str(tmp_path / "ns.json"), "-"], stdin_text=multi)
    assert [p.name for p in cluster.pods] == ["a", "b"]
    assert [p.origin for p in cluster.pods] == [Origin("<stdin>", 0), Origin("<stdin>", 1)]
    assert cluster.namespaces[0].origin == Origin(str(tmp_path / "ns.json"), 0)


def test_strict_cidr_option() -> None:
    spec = {"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.1/8"}}]}]}
    assert build_cluster([np(spec)]).policies
    with pytest.raises(ManifestError):
        build_cluster([np(spec)], strict_cidr=True)


def test_node_addresses_keep_only_ip_types() -> None:
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "n"},
        "status": {
            "addresses": [
                {"type": "Hostname", "address": "n"},
                {"type": "ExternalIP", "address": "203.0.113.5"},
                {"type": "InternalIP", "address": "10.1.1.1"},
            ]
        },
    }
    assert build_cluster([node]).nodes[0].addresses == ("203.0.113.5", "10.1.1.1")


# --- never a traceback ----------------------------------------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["cidr", "port", "from", "to", "podSelector", "matchLabels", "x"]),
            inner,
            max_size=3,
        )
    ),
    max_leaves=8,
)


def _replace_somewhere(obj: Any, path: list[int], value: Any) -> Any:
    """Replace the node reached by following ``path`` (indices mod children) with ``value``."""
    if not path or not isinstance(obj, dict | list) or not obj:
        return value
    keys = list(obj) if isinstance(obj, dict) else list(range(len(obj)))
    key = keys[path[0] % len(keys)]
    copy = dict(obj) if isinstance(obj, dict) else list(obj)
    copy[key] = _replace_somewhere(obj[key], path[1:], value)
    return copy


@given(path=st.lists(st.integers(min_value=0, max_value=20), max_size=8), value=_json_values)
@settings(max_examples=300, deadline=None)
def test_any_malformed_shape_is_an_error_message_not_a_traceback(
    path: list[int], value: Any
) -> None:
    import yaml

    objects = yaml.safe_load(KUBECTL_LIST)["items"]
    objects = _replace_somewhere(objects, path, value)
    try:
        build_cluster(objects if isinstance(objects, list) else [objects])
    except ManifestError as err:
        assert err.errors and all(isinstance(e, str) for e in err.errors)
