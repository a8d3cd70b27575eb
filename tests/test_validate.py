"""compiler.validate against the API server's rules.

The NetworkPolicy cases mirror kubernetes/kubernetes pkg/apis/networking/validation/
validation_test.go (TestValidateNetworkPolicy): every rejecting case sits next to an accepting
one that differs only in the rule under test.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from compiler.validate import (
    dns1123_label,
    label_value,
    object_label,
    parse_cidr_sloppy,
    parse_ip_sloppy,
    port_name,
    qualified_name,
    validate_object,
)

LABEL_KEY_REGEX_MSG = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
    "with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for "
    "validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
)
LABEL_VALUE_REGEX_MSG = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or "
    "'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?"
    "[A-Za-z0-9])?')"
)
CIDR_MSG = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"


def netpol(spec: dict[str, Any] | None = None, **meta: Any) -> dict[str, Any]:
    """validation_test.go's makeValidNetworkPolicy, as a manifest."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "foo", "namespace": "bar", **meta},
        "spec": {"podSelector": {"matchLabels": {"a": "b"}}, **(spec or {})},
    }


def errors(obj: dict[str, Any], **kw: Any) -> list[str]:
    return validate_object(obj, **kw).errors


IPV4_BLOCK = {"cidr": "192.168.0.0/16", "except": ["192.168.3.0/24", "192.168.4.0/24"]}
IPV6_BLOCK = {"cidr": "fd00:192:168::/48", "except": ["fd00:192:168:3::/64", "fd00:192:168:4::/64"]}
NS_SEL = {"matchLabels": {"c": "d"}}
ALL_PORTS = [
    {"port": 80},
    {"protocol": "TCP"},
    {"protocol": "TCP", "port": 443},
    {"protocol": "UDP", "port": "dns"},
    {"protocol": "SCTP", "port": 7777},
]

SUCCESS = {
    "empty ingress rule": {"ingress": [{}]},
    "empty ports entry": {"ingress": [{"ports": [{}]}]},
    "ingress ports": {"ingress": [{"ports": ALL_PORTS}]},
    "from podSelector": {"ingress": [{"from": [{"podSelector": {"matchLabels": {"c": "d"}}}]}]},
    "from namespaceSelector": {"ingress": [{"from": [{"namespaceSelector": NS_SEL}]}]},
    "pod and namespace selector": {
        "ingress": [
            {"from": [{"podSelector": {"matchLabels": {"e": "f"}}, "namespaceSelector": NS_SEL}]}
        ]
    },
    "egress nsSelector, ingress ipBlock": {
        "egress": [{"to": [{"namespaceSelector": NS_SEL}]}],
        "ingress": [{"from": [{"ipBlock": IPV4_BLOCK}]}],
    },
    "egress ipBlock, policyTypes Egress": {
        "egress": [{"to": [{"ipBlock": IPV4_BLOCK}]}],
        "policyTypes": ["Egress"],
    },
    "egress ipBlock, both policyTypes": {
        "egress": [{"to": [{"ipBlock": IPV4_BLOCK}]}],
        "policyTypes": ["Ingress", "Egress"],
    },
    "egress ports": {"egress": [{"ports": ALL_PORTS}]},
    "ipv6 ipBlock": {"ingress": [{"from": [{"ipBlock": IPV6_BLOCK}]}]},
    "ipv6 egress": {"egress": [{"to": [{"ipBlock": IPV6_BLOCK}]}], "policyTypes": ["Egress"]},
    "endPort range": {
        "egress": [
            {"ports": [{"port": 32000, "endPort": 32768}, {"protocol": "UDP", "port": "dns"}]}
        ]
    },
    "endPort equal to port": {
        "ingress": [{"ports": [{"protocol": "TCP", "port": 32768, "endPort": 32768}]}]
    },
    "endPort 65535": {"ingress": [{"ports": [{"port": 1, "endPort": 65535}]}]},
    "no podSelector at all": {"podSelector": None},
    "empty podSelector": {"podSelector": {}},
    "matchExpressions": {
        "podSelector": {
            "matchExpressions": [
                {"key": "app", "operator": "In", "values": ["a", "b"]},
                {"key": "example.com/tier", "operator": "NotIn", "values": [""]},
                {"key": "x", "operator": "Exists"},
                {"key": "y", "operator": "DoesNotExist", "values": []},
            ]
        }
    },
    "duplicate policyTypes (upstream does not reject them)": {
        "policyTypes": ["Ingress", "Ingress"]
    },
    "empty policyTypes (defaulted)": {"policyTypes": []},
    "host bits set (legacy CIDR, StrictIPCIDRValidation off)": {
        "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.1/8", "except": ["10.1.0.5/16"]}}]}]
    },
    "leading zeros (legacy CIDR)": {"ingress": [{"from": [{"ipBlock": {"cidr": "010.0.0.0/08"}}]}]},
    "0.0.0.0/0 with except": {
        "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}]}]
    },
    "null entries are Go's 'not set'": {"ingress": None, "egress": [{"to": None, "ports": None}]},
}


@pytest.mark.parametrize("spec", SUCCESS.values(), ids=SUCCESS.keys())
def test_valid_networkpolicies(spec: dict[str, Any]) -> None:
    assert errors(netpol(spec)) == []


def _from(peer: dict[str, Any]) -> dict[str, Any]:
    return {"ingress": [{"from": [peer]}]}


def _ports(*ports: dict[str, Any]) -> dict[str, Any]:
    return {"egress": [{"to": [{"namespaceSelector": NS_SEL}], "ports": list(ports)}]}


FAILURE = {
    "namespaceSelector and ipBlock": (
        _from({"namespaceSelector": NS_SEL, "ipBlock": IPV4_BLOCK}),
        ["spec.ingress[0].from[0]: Forbidden: may not specify both ipBlock and another peer"],
    ),
    "podSelector and ipBlock": (
        {"egress": [{"to": [{"podSelector": NS_SEL, "ipBlock": IPV4_BLOCK}]}]},
        ["spec.egress[0].to[0]: Forbidden: may not specify both ipBlock and another peer"],
    ),
    "missing from and to type": (
        {"ingress": [{"from": [{}]}], "egress": [{"to": [{}]}]},
        [
            "spec.ingress[0].from[0]: Required value: must specify a peer",
            "spec.egress[0].to[0]: Required value: must specify a peer",
        ],
    ),
    "invalid spec.podSelector": (
        {"podSelector": {"matchLabels": {"NoUppercaseOrSpecialCharsLike=Equals": "b"}}},
        [
            'spec.podSelector.matchLabels: Invalid value: "NoUppercaseOrSpecialCharsLike=Equals": '
            + LABEL_KEY_REGEX_MSG
        ],
    ),
    "invalid matchLabels value": (
        {"podSelector": {"matchLabels": {"a": "b c"}}},
        ['spec.podSelector.matchLabels: Invalid value: "b c": ' + LABEL_VALUE_REGEX_MSG],
    ),
    "invalid ingress.ports.protocol": (
        {"ingress": [{"ports": [{"protocol": "ICMP", "port": 80}]}]},
        [
            'spec.ingress[0].ports[0].protocol: Unsupported value: "ICMP": '
            'supported values: "TCP", "UDP", "SCTP"'
        ],
    ),
    "lower-case protocol": (
        {"ingress": [{"ports": [{"protocol": "tcp"}]}]},
        [
            'spec.ingress[0].ports[0].protocol: Unsupported value: "tcp": '
            'supported values: "TCP", "UDP", "SCTP"'
        ],
    ),
    "invalid ingress.ports.port (int)": (
        {"ingress": [{"ports": [{"protocol": "TCP", "port": 123456789}]}]},
        [
            "spec.ingress[0].ports[0].port: Invalid value: 123456789: "
            "must be between 1 and 65535, inclusive"
        ],
    ),
    "port 0": (
        {"ingress": [{"ports": [{"port": 0}]}]},
        ["spec.ingress[0].ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive"],
    ),
    "invalid ingress.ports.port (str)": (
        {"ingress": [{"ports": [{"protocol": "TCP", "port": "!@#$"}]}]},
        [
            'spec.ingress[0].ports[0].port: Invalid value: "!@#$": must contain only '
            "alpha-numeric characters (a-z, 0-9), and hyphens (-)",
            'spec.ingress[0].ports[0].port: Invalid value: "!@#$": must contain at least one '
            "letter (a-z)",
        ],
    ),
    "quoted number is a (bad) port name": (
        {"ingress": [{"ports": [{"port": "80"}]}]},
        [
            'spec.ingress[0].ports[0].port: Invalid value: "80": must contain at least one '
            "letter (a-z)"
        ],
    ),
    "port name too long": (
        {"ingress": [{"ports": [{"port": "abcdefghijklmnop"}]}]},
        [
            'spec.ingress[0].ports[0].port: Invalid value: "abcdefghijklmnop": '
            "must be no more than 15 characters"
        ],
    ),
    "invalid ingress.from.podSelector": (
        _from({"podSelector": {"matchLabels": {"NoUppercaseOrSpecialCharsLike=Equals": "b"}}}),
        [
            "spec.ingress[0].from[0].podSelector.matchLabels: Invalid value: "
            '"NoUppercaseOrSpecialCharsLike=Equals": ' + LABEL_KEY_REGEX_MSG
        ],
    ),
    "invalid ingress.from.namespaceSelector": (
        _from(
            {"namespaceSelector": {"matchLabels": {"NoUppercaseOrSpecialCharsLike=Equals": "b"}}}
        ),
        [
            "spec.ingress[0].from[0].namespaceSelector.matchLabels: Invalid value: "
            '"NoUppercaseOrSpecialCharsLike=Equals": ' + LABEL_KEY_REGEX_MSG
        ],
    ),
    "missing cidr field": (
        _from({"ipBlock": {"except": ["192.168.3.0/24"]}}),
        ["spec.ingress[0].from[0].ipBlock.cidr: Required value"],
    ),
    "empty cidr": (
        _from({"ipBlock": {"cidr": ""}}),
        ["spec.ingress[0].from[0].ipBlock.cidr: Required value"],
    ),
    "invalid cidr format": (
        _from({"ipBlock": {"cidr": "192.168.5.6"}}),
        [f'spec.ingress[0].from[0].ipBlock.cidr: Invalid value: "192.168.5.6": {CIDR_MSG}'],
    ),
    "invalid ipv6 cidr format": (
        _from({"ipBlock": {"cidr": "fd00:192:168::"}}),
        [f'spec.ingress[0].from[0].ipBlock.cidr: Invalid value: "fd00:192:168::": {CIDR_MSG}'],
    ),
    "prefix too long": (
        _from({"ipBlock": {"cidr": "10.0.0.0/33"}}),
        [f'spec.ingress[0].from[0].ipBlock.cidr: Invalid value: "10.0.0.0/33": {CIDR_MSG}'],
    ),
    "except field is an empty string": (
        _from({"ipBlock": {**IPV4_BLOCK, "except": [""]}}),
        [f'spec.ingress[0].from[0].ipBlock.except[0]: Invalid value: "": {CIDR_MSG}'],
    ),
    "except field is a space": (
        _from({"ipBlock": {**IPV4_BLOCK, "except": [" "]}}),
        [f'spec.ingress[0].from[0].ipBlock.except[0]: Invalid value: " ": {CIDR_MSG}'],
    ),
    "except field is an invalid ip": (
        _from({"ipBlock": {**IPV4_BLOCK, "except": ["300.300.300.300"]}}),
        [
            f'spec.ingress[0].from[0].ipBlock.except[0]: Invalid value: "300.300.300.300": {CIDR_MSG}'
        ],
    ),
    "except IP is outside of CIDR range": (
        _from({"ipBlock": {"cidr": "192.168.8.0/24", "except": ["192.168.9.1/32"]}}),
        [
            'spec.ingress[0].from[0].ipBlock.except[0]: Invalid value: "192.168.9.1/32": '
            "must be a strict subset of `cidr`"
        ],
    ),
    "except IP is not strictly within CIDR range": (
        _from({"ipBlock": {"cidr": "192.168.0.0/24", "except": ["192.168.0.0/24"]}}),
        [
            'spec.ingress[0].from[0].ipBlock.except[0]: Invalid value: "192.168.0.0/24": '
            "must be a strict subset of `cidr`"
        ],
    ),
    "except IPv6 is outside of CIDR range": (
        _from({"ipBlock": {"cidr": "fd00:192:168:1::/64", "except": ["fd00:192:168:2::/64"]}}),
        [
            'spec.ingress[0].from[0].ipBlock.except[0]: Invalid value: "fd00:192:168:2::/64": '
            "must be a strict subset of `cidr`"
        ],
    ),
    "except of the other family": (
        _from({"ipBlock": {"cidr": "10.0.0.0/8", "except": ["fd00::/64"]}}),
        [
            'spec.ingress[0].from[0].ipBlock.except[0]: Invalid value: "fd00::/64": '
            "must be a strict subset of `cidr`"
        ],
    ),
    "invalid policyTypes": (
        {"egress": [{"to": [{"ipBlock": IPV4_BLOCK}]}], "policyTypes": ["foo", "bar"]},
        [
            'spec.policyTypes[0]: Unsupported value: "foo": supported values: "Ingress", "Egress"',
            'spec.policyTypes[1]: Unsupported value: "bar": supported values: "Ingress", "Egress"',
        ],
    ),
    "too many policyTypes": (
        {"egress": [{"to": [{"ipBlock": IPV4_BLOCK}]}], "policyTypes": ["foo", "bar", "baz"]},
        [
            'spec.policyTypes: Invalid value: []networking.PolicyType{"foo", "bar", "baz"}: '
            "may not specify more than two policyTypes"
        ],
    ),
    "multiple ports defined, one port range is invalid": (
        _ports(
            {"protocol": "UDP", "port": 35000, "endPort": 32768}, {"port": 32000, "endPort": 32768}
        ),
        [
            "spec.egress[0].ports[0].endPort: Invalid value: 32768: "
            "must be greater than or equal to `port`"
        ],
    ),
    "endPort defined with named/string port": (
        _ports(
            {"protocol": "UDP", "port": "dns", "endPort": 32768}, {"port": 32000, "endPort": 32768}
        ),
        [
            "spec.egress[0].ports[0].endPort: Invalid value: 32768: "
            "may not be specified when `port` is non-numeric"
        ],
    ),
    "endPort defined without port defined": (
        _ports({"protocol": "TCP", "endPort": 32768}),
        [
            "spec.egress[0].ports[0].endPort: Invalid value: 32768: "
            "may not be specified when `port` is not specified"
        ],
    ),
    "port is greater than endPort": (
        _ports({"protocol": "SCTP", "port": 35000, "endPort": 32768}),
        [
            "spec.egress[0].ports[0].endPort: Invalid value: 32768: "
            "must be greater than or equal to `port`"
        ],
    ),
    "invalid endport range defined": (
        _ports({"protocol": "TCP", "port": 30000, "endPort": 65537}),
        [
            "spec.egress[0].ports[0].endPort: Invalid value: 65537: "
            "must be between 1 and 65535, inclusive"
        ],
    ),
    "In without values": (
        {"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
        [
            "spec.podSelector.matchExpressions[0].values: Required value: "
            "must be specified when `operator` is 'In' or 'NotIn'"
        ],
    ),
    "NotIn with empty values": (
        {"podSelector": {"matchExpressions": [{"key": "a", "operator": "NotIn", "values": []}]}},
        [
            "spec.podSelector.matchExpressions[0].values: Required value: "
            "must be specified when `operator` is 'In' or 'NotIn'"
        ],
    ),
    "Exists with values": (
        {
            "podSelector": {
                "matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]
            }
        },
        [
            "spec.podSelector.matchExpressions[0].values: Forbidden: "
            "may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
        ],
    ),
    "unknown operator": (
        {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Equals"}]}},
        [
            'spec.podSelector.matchExpressions[0].operator: Invalid value: "Equals": '
            "not a valid selector operator"
        ],
    ),
    "invalid In value": (
        {"podSelector": {"matchExpressions": [{"key": "a", "operator": "In", "values": ["-x"]}]}},
        [
            'spec.podSelector.matchExpressions[0].values[0]: Invalid value: "-x": '
            + LABEL_VALUE_REGEX_MSG
        ],
    ),
    "invalid expression key prefix": (
        {"podSelector": {"matchExpressions": [{"key": "Bad_Prefix/a", "operator": "Exists"}]}},
        [
            'spec.podSelector.matchExpressions[0].key: Invalid value: "Bad_Prefix/a": prefix part '
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
            "'-' or '.', and must start and end with an alphanumeric character (e.g. "
            "'example.com', regex used for validation is "
            "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
        ],
    ),
    "host bits set, strict CIDR validation": (
        _from({"ipBlock": {"cidr": "10.0.0.1/8"}}),
        [
            'spec.ingress[0].from[0].ipBlock.cidr: Invalid value: "10.0.0.1/8": '
            "must not have bits set beyond the prefix length"
        ],
    ),
}
STRICT = {"host bits set, strict CIDR validation"}


@pytest.mark.parametrize(("spec", "expected"), FAILURE.values(), ids=FAILURE.keys())
def test_invalid_networkpolicies(spec: dict[str, Any], expected: list[str], request: Any) -> None:
    strict = request.node.callspec.id in STRICT
    assert errors(netpol(spec), strict_cidr=strict) == expected


def test_strict_cidr_rules() -> None:
    def cidr_errors(cidr: str) -> list[str]:
        return errors(netpol(_from({"ipBlock": {"cidr": cidr}})), strict_cidr=True)

    assert cidr_errors("10.0.0.0/8") == []
    assert cidr_errors("010.0.0.0/8") == [
        'spec.ingress[0].from[0].ipBlock.cidr: Invalid value: "010.0.0.0/8": '
        "must not have leading 0s in IP or prefix length"
    ]
    assert cidr_errors("::ffff:10.0.0.0/104") == [
        'spec.ingress[0].from[0].ipBlock.cidr: Invalid value: "::ffff:10.0.0.0/104": '
        "must not have an IPv4-mapped IPv6 address"
    ]


def test_all_errors_are_reported_together() -> None:
    spec = {
        "ingress": [{"from": [{}], "ports": [{"port": 0}]}],
        "egress": [{"to": [{"ipBlock": {"cidr": "x"}}]}],
        "policyTypes": ["Sideways"],
    }
    assert errors(netpol(spec)) == [
        "spec.ingress[0].ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive",
        "spec.ingress[0].from[0]: Required value: must specify a peer",
        f'spec.egress[0].to[0].ipBlock.cidr: Invalid value: "x": {CIDR_MSG}',
        'spec.policyTypes[0]: Unsupported value: "Sideways": supported values: "Ingress", "Egress"',
    ]


# --- shape: kubectl's strict decoding ------------------------------------------------------


def test_unknown_fields_anywhere_in_a_networkpolicy() -> None:
    obj = netpol({"ingress": [{"form": [], "from": [{"podSelector": {}, "ipblock": {}}]}]})
    obj["metadata"]["lables"] = {}
    obj["extra"] = 1
    assert errors(obj) == [
        'unknown field "metadata.lables"',
        'unknown field "spec.ingress[0].form"',
        'unknown field "spec.ingress[0].from[0].ipblock"',
        'unknown field "extra"',
    ]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            {"ingress": "all"},
            'spec.ingress: Invalid value: "all": must be of type array, not string',
        ),
        (
            {"ingress": [{"from": {"podSelector": {}}}]},
            'spec.ingress[0].from: Invalid value: "object": must be of type array, not object',
        ),
        (
            {"ingress": [{"ports": [{"port": 80.5}]}]},
            "spec.ingress[0].ports[0].port: Invalid value: 80.5: must be of type integer or string, not number",
        ),
        (
            {"ingress": [{"ports": [{"port": True}]}]},
            "spec.ingress[0].ports[0].port: Invalid value: true: must be of type integer or string, not boolean",
        ),
        (
            {"ingress": [{"ports": [{"endPort": "80"}]}]},
            'spec.ingress[0].ports[0].endPort: Invalid value: "80": must be of type integer, not string',
        ),
        (
            {"ingress": [{"ports": [{"port": 2**40}]}]},
            "spec.ingress[0].ports[0].port: Invalid value: 1099511627776: must fit in a 32-bit signed integer",
        ),
        (
            {"podSelector": {"matchLabels": {"app": True}}},
            "spec.podSelector.matchLabels[app]: Invalid value: true: must be of type string, not boolean",
        ),
        (
            {"podSelector": "app=web"},
            'spec.podSelector: Invalid value: "app=web": must be of type object, not string',
        ),
        (
            {"policyTypes": "Ingress"},
            'spec.policyTypes: Invalid value: "Ingress": must be of type array, not string',
        ),
    ],
)
def test_wrong_types_are_errors_not_tracebacks(spec: dict[str, Any], expected: str) -> None:
    assert errors(netpol(spec)) == [expected]


def test_server_set_fields_are_ignored() -> None:
    obj = netpol()
    obj["metadata"].update(
        uid="x",
        resourceVersion="1",
        generation=2,
        creationTimestamp="2024-01-01T00:00:00Z",
        annotations={"kubectl.kubernetes.io/last-applied-configuration": "{}"},
        managedFields=[{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
        ownerReferences=[],
        finalizers=["x"],
        selfLink="/x",
        deletionTimestamp=None,
    )
    obj["status"] = {"conditions": []}
    assert errors(obj) == []


def test_api_version_must_match_kind() -> None:
    obj = netpol()
    obj["apiVersion"] = "extensions/v1beta1"
    assert errors(obj) == ['no matches for kind "NetworkPolicy" in version "extensions/v1beta1"']


# --- metadata -------------------------------------------------------------------------------


def test_metadata_rules() -> None:
    assert errors(netpol(name="a.b")) == []  # subdomain
    assert errors(netpol(name="")) == [
        "metadata.name: Required value: name or generateName is required"
    ]
    assert errors(netpol(name="Foo")) == [
        'metadata.name: Invalid value: "Foo": a lowercase RFC 1123 subdomain must consist of '
        "lower case alphanumeric characters, '-' or '.', and must start and end with an "
        "alphanumeric character (e.g. 'example.com', regex used for validation is "
        "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
    ]
    assert errors(netpol(namespace="a.b")) == [
        'metadata.namespace: Invalid value: "a.b": must not contain dots'
    ]
    assert errors(netpol(labels={"app": "x", "example.com/tier": ""})) == []
    assert errors(netpol(labels={"a/b/c": "x"}))[0].startswith(
        'metadata.labels: Invalid value: "a/b/c": a valid label key must consist of'
    )


def test_namespace_name_is_a_dns_label() -> None:
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a.b"}}
    assert errors(ns) == ['metadata.name: Invalid value: "a.b": must not contain dots']
    ns["metadata"]["name"] = "x" * 64
    assert errors(ns) == [
        f'metadata.name: Invalid value: "{"x" * 64}": must be no more than 63 characters'
    ]
    ns["metadata"]["name"] = "ok"
    ns["spec"] = {"finalizers": ["kubernetes"]}
    ns["status"] = {"phase": "Active"}
    assert errors(ns) == []


# --- Pods and Nodes: only what npemu reads ----------------------------------------------------


def pod(**changes: Any) -> dict[str, Any]:
    obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "prod", "labels": {"app": "web"}},
        "spec": {
            "nodeName": "node-1",
            "containers": [
                {
                    "name": "c",
                    "image": "nginx",
                    "resources": {"limits": {"cpu": "1"}},
                    "ports": [{"containerPort": 80, "name": "http", "protocol": "TCP"}],
                }
            ],
            "tolerations": [{"operator": "Exists"}],
        },
        "status": {
            "phase": "Running",
            "podIP": "10.0.0.1",
            "podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}],
            "conditions": [],
        },
    }
    for path, value in changes.items():
        target = obj
        *parents, last = path.split("__")
        for p in parents:
            target = target[int(p)] if isinstance(target, list) else target[p]
        target[last] = value
    return copy.deepcopy(obj)


def test_pod_accepts_everything_it_does_not_read() -> None:
    assert errors(pod()) == []


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"spec__nodeName": "Node_1"},
            'spec.nodeName: Invalid value: "Node_1": a lowercase RFC 1123 subdomain',
        ),
        (
            {"spec__hostNetwork": "yes"},
            'spec.hostNetwork: Invalid value: "yes": must be of type boolean, not string',
        ),
        (
            {"status__phase": "Done"},
            'status.phase: Unsupported value: "Done": supported values: "Pending", "Running", "Succeeded", "Failed", "Unknown"',
        ),
        (
            {"status__podIP": "10.0.0.256"},
            'status.podIP: Invalid value: "10.0.0.256": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)',
        ),
        (
            {"status__podIPs": [{"ip": "x"}]},
            'status.podIPs[0]: Invalid value: "x": must be a valid IP address',
        ),
        (
            {"status__podIPs": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}]},
            'status.podIPs: Invalid value: []core.PodIP{core.PodIP{IP:"10.0.0.1"}, core.PodIP{IP:"10.0.0.2"}}: may specify no more than one IP for each IP family',
        ),
        (
            {"status__podIPs": [{"ip": "10.0.0.1", "family": "v4"}]},
            'unknown field "status.podIPs[0].family"',
        ),
        (
            {
                "spec__containers__0__ports": [
                    {"containerPort": 80, "name": "http"},
                    {"containerPort": 81, "name": "http"},
                ]
            },
            'spec.containers[0].ports[1].name: Duplicate value: "http"',
        ),
        (
            {"spec__containers__0__ports": [{"name": "http"}]},
            "spec.containers[0].ports[0].containerPort: Required value",
        ),
        (
            {"spec__containers__0__ports": [{"containerPort": 65536}]},
            "spec.containers[0].ports[0].containerPort: Invalid value: 65536: must be between 1 and 65535, inclusive",
        ),
        (
            {"spec__containers__0__ports": [{"containerPort": 53, "protocol": "ICMP"}]},
            'spec.containers[0].ports[0].protocol: Unsupported value: "ICMP": supported values: "SCTP", "TCP", "UDP"',
        ),
        (
            {"spec__containers__0__ports": [{"containerPort": 53, "name": "Http"}]},
            'spec.containers[0].ports[0].name: Invalid value: "Http": must contain only alpha-numeric characters',
        ),
        (
            {"spec__containers__0__ports": [{"containerPort": 53, "nmae": "x"}]},
            'unknown field "spec.containers[0].ports[0].nmae"',
        ),
        (
            {"metadata__labels": {"version": 2}},
            "metadata.labels[version]: Invalid value: 2: must be of type string, not integer",
        ),
        ({"speck": {}}, 'unknown field "speck"'),
    ],
)
def test_pod_rules(changes: dict[str, Any], expected: str) -> None:
    errs = errors(pod(**changes))
    assert len(errs) == 1
    assert errs[0].startswith(expected)


def test_node_addresses() -> None:
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "node-1", "labels": {"kubernetes.io/hostname": "node-1"}},
        "spec": {"podCIDR": "10.0.0.0/24", "taints": []},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": "192.168.1.10"},
                {"type": "Hostname", "address": "node-1"},
            ],
            "capacity": {"cpu": "4"},
        },
    }
    assert errors(node) == []
    node["status"]["addresses"][0]["address"] = "node-1"
    assert errors(node) == [
        'status.addresses[0].address: Invalid value: "node-1": must be a valid IP address, '
        "(e.g. 10.9.8.7 or 2001:db8::ffff)"
    ]


# --- syntax helpers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("http", True),
        ("h2c", True),
        ("a-b", True),
        ("80", False),
        ("a--b", False),
        ("-a", False),
        ("", False),
        ("HTTP", False),
        ("abcdefghijklmno", True),
        ("abcdefghijklmnop", False),
    ],
)
def test_port_names(name: str, ok: bool) -> None:
    assert (port_name(name) == []) is ok


@pytest.mark.parametrize(
    ("key", "ok"),
    [
        ("app", True),
        ("example.com/app", True),
        ("App.Name_1", True),
        ("/app", False),
        ("a/b/c", False),
        ("_a", False),
        ("a" * 63, True),
        ("a" * 64, False),
        ("", False),
        ("é", False),
    ],
)
def test_qualified_names(key: str, ok: bool) -> None:
    assert (qualified_name(key) == []) is ok


def test_label_values_and_dns_labels() -> None:
    assert label_value("") == []
    assert label_value("a.b-c_d") == []
    assert label_value("a b") != []
    assert dns1123_label("a-1") == []
    assert dns1123_label("a.b") == ["must not contain dots"]


def test_sloppy_ip_and_cidr_parsing() -> None:
    assert str(parse_ip_sloppy("010.001.0.1")[0]) == "10.1.0.1"  # type: ignore[index]
    assert parse_ip_sloppy("fe80::1%eth0") is None
    assert parse_ip_sloppy("1.2.3.256") is None
    parsed = parse_cidr_sloppy("10.1.2.3/8")
    assert parsed is not None and str(parsed.network) == "10.0.0.0/8" and parsed.host_bits
    assert parse_cidr_sloppy("10.0.0.0/+8") is None
    assert parse_cidr_sloppy("10.0.0.0") is None


def test_object_label() -> None:
    assert object_label(netpol()) == "NetworkPolicy bar/foo"
    assert object_label({"kind": "Pod", "metadata": {"name": "p"}}) == "Pod default/p"
    assert object_label({"kind": "Node", "metadata": {"name": "n"}}) == "Node n"
    assert object_label({"kind": "Pod", "metadata": {}}, "line 4") == "Pod default/<unnamed line 4>"
