"""The upstream e2e network-policy suite as table-level tests.

Source: kubernetes/kubernetes test/e2e/network/netpol/network_policy.go (the ``f.It`` scenarios of
the "NetworkPolicy between server and client" contexts for TCP, UDP and SCTP), with the model of
model.go, the policy builders of policies.go (``SetSpecIngressRules`` adds ``Ingress`` to
policyTypes, ``SetSpecEgressRules`` adds ``Egress``) and the truth tables of reachability.go.
Each scenario is re-encoded here: its policies as npemu model objects and its expected truth table
per probed (port, protocol), asserted against ``Prober.matrix`` over all 9 pods (and against the
walker's request verdicts as a second witness). Every scenario runs on IPv4, IPv6 and dual-stack
(IPv4-primary) pod addresses, as the upstream suite runs on all three cluster kinds.

Differences from upstream, on purpose:
- Loopback: upstream ignores the diagonal (``ignoreLoopback = true``); npemu defines "a pod can
  always reach itself" (DESIGN.md §2), so every table here expects the diagonal allowed.
- Scenarios that change state part-way (policy created, updated or deleted; namespace or pod
  label added) are snapshots: one new Cluster per step, each step checked with the probes the
  upstream test makes at that point.
- Ports/protocols: the model has the scenario's ports and protocols only, as upstream's
  ``initializeResources(protocols, ports)`` does (named ports exist only for those containers).

Skipped: none of network_policy.go. All of its 48 scenarios (42 TCP, 3 UDP, 3 SCTP) are static
snapshots of pods, namespaces and policies. Out of scope: network_legacy.go (the old
"NetworkPolicyLegacy" suite, since removed upstream): it probes through Services (ClusterIP DNAT),
creates client pods after the policy and waits on them, which npemu does not model (no Services,
no kube-proxy); its policy semantics are all covered by the scenarios below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from compiler.model import NAMESPACE_NAME_LABEL, NetworkPolicy

from .e2e_netpol_model import (
    ALL,
    FAMILIES,
    Cells,
    Reachability,
    build_cluster,
    check,
    host_cidr,
    ip_block,
    match_expression,
    match_labels,
    namespace_named,
    peer,
    pod_ip,
    policy,
    port,
    rule,
)

X, Y, Z = "x", "y", "z"


@dataclass
class Step:
    """One snapshot: the policies in force, extra labels, and the (port, protocol, table)
    checks the upstream test makes at that point."""

    name: str
    policies: list[NetworkPolicy]
    checks: list[tuple[int, str, Reachability]]
    namespace_labels: dict[str, dict[str, str]] = field(default_factory=dict)
    pod_labels: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass
class Scenario:
    context: str  # "TCP", "UDP" or "SCTP": which upstream Context the It belongs to
    title: str  # the upstream f.It title
    protocols: tuple[str, ...]
    ports: tuple[int, ...]
    steps: Callable[[str], list[Step]]  # family -> steps

    @property
    def id(self) -> str:
        return f"{self.context}: {self.title}"


SCENARIOS: list[Scenario] = []


def scenario(context: str, title: str, protocols=("TCP",), ports=(80,)):
    def register(fn: Callable[[str], list[Step]]):
        SCENARIOS.append(Scenario(context, title, tuple(protocols), tuple(ports), fn))
        return fn

    return register


def R(default: bool = True) -> Reachability:
    return Reachability(default)


def ns_in(*names: str):
    return match_expression(NAMESPACE_NAME_LABEL, "In", *names)


def ns_not_in(*names: str):
    return match_expression(NAMESPACE_NAME_LABEL, "NotIn", *names)


def deny_ingress(name: str = "deny-ingress", ns: str = X) -> NetworkPolicy:
    return policy(ns, name, ALL, ingress=[])


# ================================================================================================
# Context "NetworkPolicy between server and client" (TCP)
# ================================================================================================


@scenario("TCP", "should support a 'default-deny-ingress' policy")
def _default_deny_ingress(family: str) -> list[Step]:
    r = R().expect_peer(Cells(), Cells(X), False)
    return [Step("deny-ingress", [deny_ingress()], [(80, "TCP", r)])]


@scenario("TCP", "should support a 'default-deny-all' policy")
def _default_deny_all(family: str) -> list[Step]:
    p = policy(X, "deny-all", ALL, ingress=[], egress=[])
    r = R().expect_peer(Cells(), Cells(X), False).expect_peer(Cells(X), Cells(), False)
    return [Step("deny-all", [p], [(80, "TCP", r)])]


@scenario(
    "TCP",
    "should enforce policy to allow traffic from pods within server namespace based on PodSelector",
)
def _allow_within_namespace_by_pod_selector(family: str) -> list[Step]:
    p = policy(
        X, "x-a-allows-x-b", match_labels(pod="a"), ingress=[rule(peer(pods=match_labels(pod="b")))]
    )
    r = R().expect_all_ingress("x/a", False).expect("x/b", "x/a", True)
    return [Step("policy", [p], [(80, "TCP", r)])]


@scenario("TCP", "should enforce policy to allow ingress traffic for a target")
def _allow_ingress_for_target(family: str) -> list[Step]:
    allow = policy(
        X, "allow-all-to-a", match_labels(pod="a"), ingress=[rule(peer(pods=ALL, namespaces=ALL))]
    )
    r = (
        R()
        .expect_all_ingress("x/a", True)
        .expect_all_ingress("x/b", False)
        .expect_all_ingress("x/c", False)
    )
    return [
        Step("deny-all then allow-all-to-a", [deny_ingress("deny-all"), allow], [(80, "TCP", r)])
    ]


@scenario("TCP", "should enforce policy to allow ingress traffic from pods in all namespaces")
def _allow_from_all_namespaces(family: str) -> list[Step]:
    p = policy(
        X, "allow-from-another-ns", match_labels(pod="a"), ingress=[rule(peer(namespaces=ALL))]
    )
    return [Step("policy", [p], [(80, "TCP", R())])]


@scenario(
    "TCP",
    "should enforce policy to allow traffic only from a different namespace, based on "
    "NamespaceSelector",
)
def _allow_from_other_namespace(family: str) -> list[Step]:
    p = policy(
        X,
        "allow-client-a-via-ns-selector",
        match_labels(pod="a"),
        ingress=[rule(peer(namespaces=namespace_named(Y)))],
    )
    r = R().expect_peer(Cells(X), Cells(X, "a"), False).expect_peer(Cells(Z), Cells(X, "a"), False)
    return [Step("policy", [p], [(80, "TCP", r)])]


@scenario("TCP", "should enforce policy based on PodSelector with MatchExpressions")
def _pod_selector_match_expressions(family: str) -> list[Step]:
    p = policy(
        X,
        "x-a-allows-x-b",
        match_labels(pod="a"),
        ingress=[rule(peer(pods=match_expression("pod", "In", "b")))],
    )
    r = R().expect_all_ingress("x/a", False).expect("x/b", "x/a", True)
    return [Step("policy", [p], [(80, "TCP", r)])]


@scenario("TCP", "should enforce policy based on NamespaceSelector with MatchExpressions")
def _namespace_selector_match_expressions(family: str) -> list[Step]:
    p = policy(
        X,
        "allow-ns-y-match-selector",
        match_labels(pod="a"),
        ingress=[rule(peer(namespaces=ns_in(Y)))],
    )
    r = R().expect_peer(Cells(X), Cells(X, "a"), False).expect_peer(Cells(Z), Cells(X, "a"), False)
    return [Step("policy", [p], [(80, "TCP", r)])]


@scenario("TCP", "should enforce policy based on PodSelector or NamespaceSelector")
def _pod_selector_or_namespace_selector(family: str) -> list[Step]:
    p = policy(
        X,
        "allow-ns-y-match-selector",
        match_labels(pod="a"),
        ingress=[rule(peer(namespaces=ns_not_in(X)), peer(pods=match_labels(pod="b")))],
    )
    r = R().expect("x/a", "x/a", False).expect("x/c", "x/a", False)
    return [Step("policy", [p], [(80, "TCP", r)])]


@scenario("TCP", "should enforce policy based on PodSelector and NamespaceSelector")
def _pod_selector_and_namespace_selector(family: str) -> list[Step]:
    p = policy(
        X,
        "allow-ns-y-podselector-and-nsselector",
        match_labels(pod="a"),
        ingress=[rule(peer(pods=match_labels(pod="b"), namespaces=ns_not_in(X)))],
    )
    r = R().expect_all_ingress("x/a", False).expect("y/b", "x/a", True).expect("z/b", "x/a", True)
    return [Step("policy", [p], [(80, "TCP", r)])]


@scenario("TCP", "should enforce policy based on Multiple PodSelectors and NamespaceSelectors")
def _multiple_pod_and_namespace_selectors(family: str) -> list[Step]:
    p = policy(
        X,
        "allow-ns-y-z-pod-b-c",
        match_labels(pod="a"),
        ingress=[rule(peer(pods=match_expression("pod", "In", "b", "c"), namespaces=ns_not_in(X)))],
    )
    r = (
        R()
        .expect_peer(Cells(X), Cells(X, "a"), False)
        .expect("y/a", "x/a", False)
        .expect("z/a", "x/a", False)
    )
    return [Step("policy", [p], [(80, "TCP", r)])]


@scenario("TCP", "should enforce policy based on any PodSelectors")
def _any_pod_selectors(family: str) -> list[Step]:
    p = policy(
        X,
        "allow-ns-x-pod-b-c",
        match_labels(pod="a"),
        ingress=[rule(peer(pods=match_labels(pod="b")), peer(pods=match_labels(pod="c")))],
    )
    r = R().expect_all_ingress("x/a", False).expect("x/b", "x/a", True).expect("x/c", "x/a", True)
    return [Step("policy", [p], [(80, "TCP", r)])]


def _pod_a_from_y_a(protocol: str) -> list[Step]:
    p = policy(
        X,
        "allow-ns-y-pod-a-via-namespace-pod-selector",
        match_labels(pod="a"),
        ingress=[rule(peer(pods=match_labels(pod="a"), namespaces=namespace_named(Y)))],
    )
    r = R().expect_all_ingress("x/a", False).expect("y/a", "x/a", True)
    return [Step("policy", [p], [(80, protocol, r)])]


@scenario(
    "TCP",
    "should enforce policy to allow traffic only from a pod in a different namespace based on "
    "PodSelector and NamespaceSelector",
)
def _pod_in_other_namespace_tcp(family: str) -> list[Step]:
    return _pod_a_from_y_a("TCP")


def _ports_81_from_y(protocol: str, name: str) -> list[Step]:
    p = policy(
        X,
        name,
        match_labels(pod="a"),
        ingress=[rule(peer(namespaces=namespace_named(Y)), ports=[port(81, protocol)])],
    )
    r = (
        R()
        .expect_peer(Cells(X), Cells(X, "a"), False)
        .expect_peer(Cells(Y), Cells(X, "a"), True)
        .expect_peer(Cells(Z), Cells(X, "a"), False)
    )
    return [Step("policy", [p], [(81, protocol, r)])]


@scenario("TCP", "should enforce policy based on Ports", ports=(81,))
def _ports_tcp(family: str) -> list[Step]:
    return _ports_81_from_y("TCP", "allow-client-a-via-ns-selector")


@scenario(
    "TCP", "should enforce multiple, stacked policies with overlapping podSelectors", ports=(80, 81)
)
def _stacked_policies(family: str) -> list[Step]:
    def from_y_on(number: int, name: str) -> NetworkPolicy:
        return policy(
            X,
            name,
            match_labels(pod="a"),
            ingress=[rule(peer(namespaces=namespace_named(Y)), ports=[port(number, "TCP")])],
        )

    allow = (
        R()
        .expect_peer(Cells(X), Cells(X, "a"), False)
        .expect_peer(Cells(Y), Cells(X, "a"), True)
        .expect_peer(Cells(Z), Cells(X, "a"), False)
    )
    deny = R().expect_all_ingress("x/a", False)
    p81 = from_y_on(81, "allow-client-a-via-ns-selector")
    p80 = from_y_on(80, "allow-client-a-via-ns-selector-80")
    return [
        Step("port 81 policy only", [p81], [(81, "TCP", allow), (80, "TCP", deny)]),
        Step("port 80 policy added", [p81, p80], [(80, "TCP", allow)]),
    ]


@scenario("TCP", "should support allow-all policy", ports=(80, 81))
def _allow_all(family: str) -> list[Step]:
    p = policy(X, "allow-all", match_labels(), ingress=[rule()])
    return [Step("policy", [p], [(80, "TCP", R()), (81, "TCP", R())])]


@scenario("TCP", "should allow ingress access on one named port", ports=(80, 81))
def _ingress_named_port(family: str) -> list[Step]:
    # The port has no protocol: it defaults to TCP.
    p = policy(X, "allow-all", match_labels(), ingress=[rule(ports=[port("serve-81-tcp")])])
    r80 = R().expect_peer(Cells(), Cells(X), False)
    return [Step("policy", [p], [(81, "TCP", R()), (80, "TCP", r80)])]


@scenario("TCP", "should allow ingress access from namespace on one named port", ports=(80, 81))
def _ingress_named_port_from_namespace(family: str) -> list[Step]:
    p = policy(
        X,
        "allow-client-a-via-ns-selector-80",
        match_labels(pod="a"),
        ingress=[rule(peer(namespaces=namespace_named(Y)), ports=[port("serve-80-tcp", "TCP")])],
    )
    r80 = (
        R().expect_peer(Cells(X), Cells(X, "a"), False).expect_peer(Cells(Z), Cells(X, "a"), False)
    )
    r81 = R().expect_all_ingress("x/a", False)
    return [Step("policy", [p], [(80, "TCP", r80), (81, "TCP", r81)])]


@scenario("TCP", "should allow egress access on one named port", ports=(80, 81))
def _egress_named_port(family: str) -> list[Step]:
    p = policy(X, "allow-egress", match_labels(), egress=[rule(ports=[port("serve-80-tcp")])])
    r81 = R().expect_peer(Cells(X), Cells(), False)
    return [Step("policy", [p], [(80, "TCP", R()), (81, "TCP", r81)])]


@scenario("TCP", "should enforce updated policy", ports=(81,))
def _updated_policy(family: str) -> list[Step]:
    allow = policy(X, "allow-all-mutate-to-deny-all", match_labels(), ingress=[rule()])
    # policy.Spec.Ingress = []: policyTypes stays [Ingress], so the pods become isolated.
    deny = policy(X, "allow-all-mutate-to-deny-all", match_labels(), ingress=[])
    return [
        Step("allow all", [allow], [(81, "TCP", R())]),
        Step(
            "updated to deny all", [deny], [(81, "TCP", R().expect_peer(Cells(), Cells(X), False))]
        ),
    ]


@scenario("TCP", "should allow ingress access from updated namespace")
def _updated_namespace(family: str) -> list[Step]:
    p = policy(
        X,
        "allow-client-a-via-ns-selector",
        match_labels(pod="a"),
        ingress=[rule(peer(namespaces=match_labels(ns2="updated")))],
    )
    before = R().expect_all_ingress("x/a", False)
    after = R().expect_all_ingress("x/a", False).expect_peer(Cells(Y), Cells(), True)
    return [
        Step("before the label", [p], [(80, "TCP", before)]),
        Step(
            "namespace y labelled ns2=updated",
            [p],
            [(80, "TCP", after)],
            namespace_labels={Y: {"ns2": "updated"}},
        ),
    ]


@scenario("TCP", "should allow ingress access from updated pod")
def _updated_pod(family: str) -> list[Step]:
    p = policy(
        X,
        "allow-client-a-via-pod-selector",
        match_labels(pod="a"),
        ingress=[rule(peer(pods=match_labels(pod="b", pod2="updated")))],
    )
    before = R().expect_all_ingress("x/a", False)
    after = R().expect_all_ingress("x/a", False).expect("x/b", "x/a", True)
    return [
        Step("before the label", [p], [(80, "TCP", before)]),
        Step(
            "x/b labelled pod2=updated",
            [p],
            [(80, "TCP", after)],
            pod_labels={"x/b": {"pod2": "updated"}},
        ),
    ]


@scenario("TCP", "should deny ingress from pods on other namespaces")
def _deny_other_namespaces(family: str) -> list[Step]:
    p = policy(X, "deny-empty-policy", ALL, ingress=[rule(peer(pods=match_labels()))])
    r = R().expect_peer(Cells(Y), Cells(X), False).expect_peer(Cells(Z), Cells(X), False)
    return [Step("policy", [p], [(80, "TCP", r)])]


@scenario("TCP", "should deny ingress access to updated pod")
def _deny_updated_pod(family: str) -> list[Step]:
    p = policy(X, "deny-ingress-via-label-selector", match_labels(target="isolated"), ingress=[])
    return [
        Step("no pod selected", [p], [(80, "TCP", R())]),
        Step(
            "x/a labelled target=isolated",
            [p],
            [(80, "TCP", R().expect_all_ingress("x/a", False))],
            pod_labels={"x/a": {"target": "isolated"}},
        ),
    ]


@scenario("TCP", "should deny egress from pods based on PodSelector")
def _deny_egress_by_pod_selector(family: str) -> list[Step]:
    p = policy(X, "deny-egress-pod-a", match_labels(pod="a"), egress=[])
    return [Step("policy", [p], [(80, "TCP", R().expect_all_egress("x/a", False))])]


@scenario("TCP", "should deny egress from all pods in a namespace")
def _deny_egress_namespace(family: str) -> list[Step]:
    p = policy(X, "deny-egress-ns-x", ALL, egress=[])
    return [Step("policy", [p], [(80, "TCP", R().expect_peer(Cells(X), Cells(), False))])]


@scenario("TCP", "should work with Ingress, Egress specified together", ports=(80, 81))
def _ingress_and_egress_together(family: str) -> list[Step]:
    p = policy(
        X,
        "allow-client-a-via-pod-selector",
        match_labels(pod="a"),
        ingress=[rule(peer(pods=match_labels(pod="b")))],
        egress=[rule(ports=[port(80)])],
        policy_types=["Egress", "Ingress"],
    )
    r80 = R().expect_all_ingress("x/a", False).expect("x/b", "x/a", True)
    r81 = (
        R()
        .expect_all_ingress("x/a", False)
        .expect_all_egress("x/a", False)
        .expect("x/b", "x/a", True)
    )
    return [Step("policy", [p], [(80, "TCP", r80), (81, "TCP", r81)])]


@scenario(
    "TCP",
    "should support denying of egress traffic on the client side (even if the server explicitly "
    "allows this traffic)",
)
def _deny_egress_on_client_side(family: str) -> list[Step]:
    egress = policy(
        X,
        "allow-to-ns-y-pod-a",
        match_labels(pod="a"),
        egress=[rule(peer(pods=match_labels(pod="a"), namespaces=namespace_named(Y)))],
    )
    from_x_a = rule(peer(pods=match_labels(pod="a"), namespaces=namespace_named(X)))
    ingress_a = policy(
        Y, "allow-from-xa-on-ya-match-selector", match_labels(pod="a"), ingress=[from_x_a]
    )
    ingress_b = policy(
        Y, "allow-from-xa-on-yb-match-selector", match_labels(pod="b"), ingress=[from_x_a]
    )
    r = (
        R()
        .expect_peer(Cells(X, "a"), Cells(), False)
        .expect_peer(Cells(), Cells(Y, "a"), False)
        .expect_peer(Cells(X, "a"), Cells(Y, "a"), True)
        .expect_peer(Cells(), Cells(Y, "b"), False)
    )
    return [Step("policies", [egress, ingress_a, ingress_b], [(80, "TCP", r)])]


@scenario(
    "TCP",
    "should enforce egress policy allowing traffic to a server in a different namespace based on "
    "PodSelector and NamespaceSelector",
)
def _egress_to_other_namespace(family: str) -> list[Step]:
    p = policy(
        X,
        "allow-to-ns-y-pod-a",
        match_labels(pod="a"),
        egress=[rule(peer(pods=match_labels(pod="a"), namespaces=namespace_named(Y)))],
    )
    r = R().expect_all_egress("x/a", False).expect("x/a", "y/a", True)
    return [Step("policy", [p], [(80, "TCP", r)])]


@scenario(
    "TCP",
    "should enforce ingress policy allowing any port traffic to a server on a specific protocol",
    protocols=("TCP", "UDP"),
)
def _any_port_on_protocol(family: str) -> list[Step]:
    p = policy(
        X,
        "allow-ingress-by-proto",
        match_labels(pod="a"),
        ingress=[rule(ports=[port(None, "TCP")])],
    )
    udp = R().expect_peer(Cells(), Cells(X, "a"), False)
    return [Step("policy", [p], [(80, "TCP", R()), (80, "UDP", udp)])]


@scenario(
    "TCP",
    "should enforce multiple ingress policies with ingress allow-all policy taking precedence",
    ports=(81,),
)
def _ingress_allow_all_precedence(family: str) -> list[Step]:
    only80 = policy(X, "allow-ingress-port-80", match_labels(), ingress=[rule(ports=[port(80)])])
    allow_all = policy(X, "allow-ingress", match_labels(), ingress=[rule()])
    return [
        Step("port 80 only", [only80], [(81, "TCP", R().expect_peer(Cells(), Cells(X), False))]),
        Step("allow-all added", [only80, allow_all], [(81, "TCP", R())]),
    ]


@scenario(
    "TCP",
    "should enforce multiple egress policies with egress allow-all policy taking precedence",
    ports=(81,),
)
def _egress_allow_all_precedence(family: str) -> list[Step]:
    only80 = policy(X, "allow-egress-port-80", match_labels(), egress=[rule(ports=[port(80)])])
    allow_all = policy(X, "allow-egress", match_labels(), egress=[rule()])
    return [
        Step("port 80 only", [only80], [(81, "TCP", R().expect_peer(Cells(X), Cells(), False))]),
        Step("allow-all added", [only80, allow_all], [(81, "TCP", R())]),
    ]


@scenario("TCP", "should stop enforcing policies after they are deleted")
def _stop_after_delete(family: str) -> list[Step]:
    p = policy(X, "deny-all", ALL, ingress=[], egress=[])
    r = R().expect_peer(Cells(X), Cells(), False).expect_peer(Cells(), Cells(X), False)
    return [
        Step("deny-all", [p], [(80, "TCP", r)]),
        Step("policies deleted", [], [(80, "TCP", R())]),
    ]


@scenario("TCP", "should allow egress access to server in CIDR block")
def _egress_cidr(family: str) -> list[Step]:
    p = policy(
        X,
        "allow-client-a-via-cidr-egress-rule",
        match_labels(pod="a"),
        egress=[rule(ip_block(host_cidr(pod_ip(Y, "b", family))))],
    )
    r = R().expect_all_egress("x/a", False).expect("x/a", "y/b", True)
    return [Step("policy", [p], [(80, "TCP", r)])]


def _cidr_except_policy(family: str) -> NetworkPolicy:
    # CIDR = x/a's IP with a /4 mask (host bits set, as upstream writes it) except x/b's IP.
    cidr = f"{pod_ip(X, 'a', family)}/4"
    return policy(
        X,
        "allow-client-a-via-cidr-egress-rule",
        match_labels(pod="a"),
        egress=[rule(ip_block(cidr, host_cidr(pod_ip(X, "b", family))))],
    )


@scenario("TCP", "should enforce except clause while egress access to server in CIDR block")
def _egress_cidr_except(family: str) -> list[Step]:
    r = R().expect("x/a", "x/b", False)
    return [Step("policy", [_cidr_except_policy(family)], [(80, "TCP", r)])]


@scenario("TCP", "should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed")
def _cidr_and_except_overlap(family: str) -> list[Step]:
    # Step 2 replaces the policy (same name): only x/b's IP remains allowed.
    replaced = policy(
        X,
        "allow-client-a-via-cidr-egress-rule",
        match_labels(pod="a"),
        egress=[rule(ip_block(host_cidr(pod_ip(X, "b", family))))],
    )
    return [
        Step(
            "except x/b",
            [_cidr_except_policy(family)],
            [(80, "TCP", R().expect("x/a", "x/b", False))],
        ),
        Step(
            "updated to x/b only",
            [replaced],
            [(80, "TCP", R().expect_all_egress("x/a", False).expect("x/a", "x/b", True))],
        ),
    ]


@scenario(
    "TCP",
    "should enforce policies to check ingress and egress policies can be controlled independently "
    "based on PodSelector",
)
def _ingress_egress_independent(family: str) -> list[Step]:
    allow_egress = policy(X, "allow-egress-for-target", match_labels(pod="a"), egress=[rule()])
    deny_ingress_a = policy(X, "deny-ingress-via-label-selector", match_labels(pod="a"), ingress=[])
    return [
        Step("allow egress", [allow_egress], [(80, "TCP", R())]),
        Step(
            "deny ingress added",
            [allow_egress, deny_ingress_a],
            [(80, "TCP", R().expect_all_ingress("x/a", False))],
        ),
    ]


@scenario(
    "TCP",
    "should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP', even if the plugin doesn't "
    "support SCTP",
    ports=(81,),
)
def _sctp_is_not_tcp(family: str) -> list[Step]:
    sctp = policy(
        X,
        "allow-only-sctp-ingress-on-port-81",
        match_labels(pod="a"),
        ingress=[rule(ports=[port(81, "SCTP")])],
    )
    r = R().expect_peer(Cells(), Cells(X), False)
    return [Step("policies", [deny_ingress(), sctp], [(81, "TCP", r)])]


@scenario(
    "TCP",
    "should properly isolate pods that are selected by a policy allowing SCTP, even if the plugin "
    "doesn't support SCTP",
    ports=(81,),
)
def _sctp_policy_isolates(family: str) -> list[Step]:
    p = policy(
        X,
        "allow-only-sctp-ingress-on-port-80",
        match_labels(pod="a"),
        ingress=[rule(ports=[port(80, "SCTP")])],
    )
    return [Step("policy", [p], [(81, "TCP", R().expect_all_ingress("x/a", False))])]


@scenario("TCP", "should not allow access by TCP when a policy specifies only UDP", ports=(81,))
def _udp_policy_blocks_tcp(family: str) -> list[Step]:
    p = policy(
        X,
        "allow-only-udp-ingress-on-port-81",
        match_labels(pod="a"),
        ingress=[rule(ports=[port(81, "UDP")])],
    )
    return [Step("policy", [p], [(81, "TCP", R().expect_all_ingress("x/a", False))])]


@scenario(
    "TCP",
    "should enforce policy to allow traffic based on NamespaceSelector with MatchLabels using "
    "default ns label",
)
def _default_ns_label_match_labels(family: str) -> list[Step]:
    p = policy(
        X,
        "allow-client-a-via-ns-selector-for-immutable-ns-label",
        match_labels(pod="a"),
        ingress=[rule(peer(namespaces=namespace_named(Y)))],
    )
    r = R().expect_peer(Cells(X), Cells(X, "a"), False).expect_peer(Cells(Z), Cells(X, "a"), False)
    return [Step("policy", [p], [(80, "TCP", r)])]


@scenario(
    "TCP",
    "should enforce policy based on NamespaceSelector with MatchExpressions using default ns label",
)
def _default_ns_label_match_expressions(family: str) -> list[Step]:
    p = policy(
        X,
        "allow-ns-y-match-selector-for-immutable-ns-label",
        match_labels(pod="a"),
        egress=[rule(peer(namespaces=ns_not_in(Y)))],
    )
    r = R().expect_peer(Cells(X, "a"), Cells(Y), False)
    return [Step("policy", [p], [(80, "TCP", r)])]


# ================================================================================================
# Context "NetworkPolicy between server and client using UDP"
# ================================================================================================


@scenario("UDP", "should support a 'default-deny-ingress' policy", protocols=("UDP",))
def _udp_default_deny_ingress(family: str) -> list[Step]:
    r = R().expect_peer(Cells(), Cells(X), False)
    return [Step("deny-all", [deny_ingress("deny-all")], [(80, "UDP", r)])]


@scenario("UDP", "should enforce policy based on Ports", protocols=("UDP",), ports=(81,))
def _udp_ports(family: str) -> list[Step]:
    return _ports_81_from_y("UDP", "allow-ingress-on-port-81-ns-x")


@scenario(
    "UDP",
    "should enforce policy to allow traffic only from a pod in a different namespace based on "
    "PodSelector and NamespaceSelector",
    protocols=("UDP",),
)
def _udp_pod_in_other_namespace(family: str) -> list[Step]:
    return _pod_a_from_y_a("UDP")


# ================================================================================================
# Context "NetworkPolicy between server and client using SCTP"
# ================================================================================================


@scenario("SCTP", "should support a 'default-deny-ingress' policy", protocols=("SCTP",))
def _sctp_default_deny_ingress(family: str) -> list[Step]:
    r = R().expect_peer(Cells(), Cells(X), False)
    return [Step("deny-all", [deny_ingress("deny-all")], [(80, "SCTP", r)])]


@scenario("SCTP", "should enforce policy based on Ports", protocols=("SCTP",), ports=(81,))
def _sctp_ports(family: str) -> list[Step]:
    return _ports_81_from_y("SCTP", "allow-ingress-on-port-81-ns-x")


@scenario(
    "SCTP",
    "should enforce policy to allow traffic only from a pod in a different namespace based on "
    "PodSelector and NamespaceSelector",
    protocols=("SCTP",),
)
def _sctp_pod_in_other_namespace(family: str) -> list[Step]:
    return _pod_a_from_y_a("SCTP")


# ================================================================================================


def test_every_upstream_scenario_is_registered_once():
    ids = [s.id for s in SCENARIOS]
    assert len(ids) == len(set(ids))
    assert len(ids) == 48
    assert {s.context for s in SCENARIOS} == {"TCP", "UDP", "SCTP"}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("sc", SCENARIOS, ids=[s.id for s in SCENARIOS])
def test_upstream_scenario(sc: Scenario, family: str) -> None:
    failures: list[str] = []
    for step in sc.steps(family):
        cluster = build_cluster(
            step.policies,
            protocols=sc.protocols,
            ports=sc.ports,
            family=family,
            namespace_labels=step.namespace_labels,
            pod_labels=step.pod_labels,
        )
        failures += check(f"{sc.id} ({family}) / step {step.name!r}", cluster, step.checks)
    assert not failures, "\n\n".join(failures)
