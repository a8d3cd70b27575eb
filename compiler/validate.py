"""The API server's validation, for the objects and fields npemu reads. Pure: no I/O.

Two passes over one object, both collecting every problem rather than stopping at the first:

1. *Shape* (``_walk``): what decoding with kubectl's strict field validation rejects - unknown
   fields and values of the wrong JSON type. It also returns a cleaned copy of the object in
   which YAML nulls are dropped (Go decodes them as "not set") and wrongly typed values are
   replaced by ``BAD``, so that the second pass never meets a surprising type.
2. *Rules*: the checks of kubernetes/kubernetes ``pkg/apis/networking/validation`` (NetworkPolicy),
   ``pkg/apis/core/validation`` (object metadata, Pod container ports and IPs),
   ``staging/src/k8s.io/apimachinery/pkg/apis/meta/v1/validation`` (label selectors) and
   ``staging/src/k8s.io/apimachinery/pkg/util/validation`` (names, label values, ports, IPs),
   with the same field paths, error types and detail texts, so messages read like the API
   server's: ``spec.ingress[0].ports[0].port: Invalid value: 0: must be between 1 and 65535,
   inclusive``.

Pods, Nodes and Namespaces are only checked where npemu reads them; every other field of those
kinds (images, volumes, conditions, ...) is accepted unexamined, as it comes from real clusters.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from compiler.model import PROTOCOLS

NETWORKING_V1 = "networking.k8s.io/v1"
CORE_V1 = "v1"
API_VERSIONS = {
    "NetworkPolicy": NETWORKING_V1,
    "Namespace": CORE_V1,
    "Pod": CORE_V1,
    "Node": CORE_V1,
}
NAMESPACED = {"NetworkPolicy", "Pod"}
DEFAULT_NAMESPACE = "default"  # what kubectl fills in when metadata.namespace is absent
POD_PHASES = ("Pending", "Running", "Succeeded", "Failed", "Unknown")
POLICY_TYPES = ("Ingress", "Egress")
SELECTOR_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


class _Bad:
    """Stands in for a value whose JSON type was wrong (already reported)."""

    def __repr__(self) -> str:
        return "BAD"


BAD: Any = _Bad()


# ---------------------------------------------------------------------------------------------
# Error texts, in the form of k8s.io/apimachinery/pkg/util/validation/field.Error.


def go_value(value: Any) -> str:
    """A bad value as field.Error prints it: strings quoted (%q), numbers and bools bare."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return '"object"'
    if isinstance(value, list):
        return '"array"'
    return json.dumps(str(value), ensure_ascii=False)


def invalid(path: str, value: Any, detail: str) -> str:
    return f"{path}: Invalid value: {go_value(value)}: {detail}"


def required(path: str, detail: str = "") -> str:
    return f"{path}: Required value" + (f": {detail}" if detail else "")


def forbidden(path: str, detail: str) -> str:
    return f"{path}: Forbidden: {detail}"


def duplicate(path: str, value: Any) -> str:
    return f"{path}: Duplicate value: {go_value(value)}"


def not_supported(path: str, value: Any, supported: Sequence[str]) -> str:
    quoted = ", ".join(json.dumps(s) for s in supported)
    return f"{path}: Unsupported value: {go_value(value)}: supported values: {quoted}"


def unknown_field(path: str) -> str:
    return f'unknown field "{path}"'


def child(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def index(path: str, i: int) -> str:
    return f"{path}[{i}]"


# ---------------------------------------------------------------------------------------------
# Syntax rules of k8s.io/apimachinery/pkg/util/validation (messages are the upstream texts).

_DNS1123_LABEL = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = _DNS1123_LABEL + "(\\." + _DNS1123_LABEL + ")*"
_LABEL_KEY_NAME = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_VALUE = "(" + _LABEL_KEY_NAME + ")?"
_RX = {fmt: re.compile(f"(?:{fmt})\\Z") for fmt in (_DNS1123_LABEL, _DNS1123_SUBDOMAIN)}
_RX_LABEL_NAME = re.compile(f"(?:{_LABEL_KEY_NAME})\\Z")
_RX_LABEL_VALUE = re.compile(f"(?:{_LABEL_VALUE})\\Z")
_RX_PORT_NAME_CHARS = re.compile(r"[-a-z0-9]+\Z")


def _max_len(n: int) -> str:
    return f"must be no more than {n} characters"


def _regex_error(msg: str, fmt: str, *examples: str) -> str:
    shown = " or ".join(f"'{e}', " for e in examples)
    return f"{msg} (e.g. {shown}regex used for validation is '{fmt}')"


def _ascii_match(rx: re.Pattern[str], value: str) -> bool:
    # Go's regexp classes are ASCII-only; Python's would also accept e.g. non-ASCII digits.
    return value.isascii() and rx.match(value) is not None


def dns1123_label(value: str) -> list[str]:
    errs = [_max_len(63)] if len(value) > 63 else []
    if not _ascii_match(_RX[_DNS1123_LABEL], value):
        if _ascii_match(_RX[_DNS1123_SUBDOMAIN], value):
            errs.append("must not contain dots")
        else:
            errs.append(
                _regex_error(
                    "a lowercase RFC 1123 label must consist of lower case alphanumeric "
                    "characters or '-', and must start and end with an alphanumeric character",
                    _DNS1123_LABEL,
                    "my-name",
                    "123-abc",
                )
            )
    return errs


def dns1123_subdomain(value: str) -> list[str]:
    errs = [_max_len(253)] if len(value) > 253 else []
    if not _ascii_match(_RX[_DNS1123_SUBDOMAIN], value):
        errs.append(
            _regex_error(
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                "characters, '-' or '.', and must start and end with an alphanumeric character",
                _DNS1123_SUBDOMAIN,
                "example.com",
            )
        )
    return errs


_LABEL_KEY_MSG = (
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
    "alphanumeric character"
)


def qualified_name(value: str) -> list[str]:
    """IsQualifiedName / IsLabelKey: ``[prefix/]name``, prefix a DNS subdomain."""
    parts = value.split("/")
    errs: list[str] = []
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            errs.append("prefix part must be non-empty")
        else:
            errs += ["prefix part " + m for m in dns1123_subdomain(prefix)]
    else:
        return [
            "a valid label key "
            + _regex_error(_LABEL_KEY_MSG, _LABEL_KEY_NAME, "MyName", "my.name", "123-abc")
            + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
        ]
    if not name:
        errs.append("name part must be non-empty")
    elif len(name) > 63:
        errs.append("name part " + _max_len(63))
    if not _ascii_match(_RX_LABEL_NAME, name):
        errs.append(
            "name part "
            + _regex_error(_LABEL_KEY_MSG, _LABEL_KEY_NAME, "MyName", "my.name", "123-abc")
        )
    return errs


def label_value(value: str) -> list[str]:
    errs = [_max_len(63)] if len(value) > 63 else []
    if not _ascii_match(_RX_LABEL_VALUE, value):
        errs.append(
            _regex_error(
                "a valid label must be an empty string or consist of alphanumeric characters, "
                "'-', '_' or '.', and must start and end with an alphanumeric character",
                _LABEL_VALUE,
                "MyValue",
                "my_value",
                "12345",
            )
        )
    return errs


def port_number(port: int) -> list[str]:
    return [] if 1 <= port <= 65535 else ["must be between 1 and 65535, inclusive"]


def port_name(name: str) -> list[str]:
    """IsValidPortName: an IANA_SVC_NAME (RFC 6335), lower case only."""
    errs = [_max_len(15)] if len(name) > 15 else []
    if not _ascii_match(_RX_PORT_NAME_CHARS, name):
        errs.append("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
    if not re.search("[a-z]", name):
        errs.append("must contain at least one letter (a-z)")
    if "--" in name:
        errs.append("must not contain consecutive hyphens")
    if name and (name[0] == "-" or name[-1] == "-"):
        errs.append("must not begin or end with a hyphen")
    return errs


# ---------------------------------------------------------------------------------------------
# IPs and CIDRs as k8s.io/utils/net's ParseIPSloppy/ParseCIDRSloppy read them (the Go 1.16
# parser: IPv4 octets may have leading zeros, read as decimal) and as the "legacy field"
# validation of k8s.io/apimachinery/pkg/util/validation/ip.go judges them.

_SLOPPY_V4 = re.compile(r"([0-9]+)\.([0-9]+)\.([0-9]+)\.([0-9]+)\Z")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _sloppy_v4(text: str) -> tuple[str, bool] | None:
    """Canonical dotted quad and whether any octet had a leading zero."""
    m = _SLOPPY_V4.match(text)
    if not m or not text.isascii():
        return None
    octets = m.groups()
    if any(int(o) > 255 for o in octets):
        return None
    return ".".join(str(int(o)) for o in octets), any(len(o) > 1 and o[0] == "0" for o in octets)


def parse_ip_sloppy(text: str) -> tuple[IPAddress, bool] | None:
    """(address, had_leading_zeros) as ParseIPSloppy accepts it, else None."""
    if ":" not in text:
        v4 = _sloppy_v4(text)
        return (ipaddress.IPv4Address(v4[0]), v4[1]) if v4 else None
    if "%" in text or not text.isascii():  # zones are never valid here
        return None
    leading_zero = False
    head, _, tail = text.rpartition(":")
    if "." in tail:  # an embedded IPv4 tail, e.g. ::ffff:1.2.3.4
        v4 = _sloppy_v4(tail)
        if not v4:
            return None
        text, leading_zero = f"{head}:{v4[0]}", v4[1]
    try:
        return ipaddress.IPv6Address(text), leading_zero
    except ValueError:
        return None


@dataclass(frozen=True)
class ParsedCIDR:
    network: IPNetwork  # masked, as ParseCIDRSloppy's IPNet
    prefixlen: int
    leading_zeros: bool
    v4_mapped: bool
    host_bits: bool

    def v4_view(self) -> IPNetwork:
        """How Go's IPNet.Contains sees it: an IPv4-mapped IPv6 net acts as IPv4."""
        net = self.network
        if self.v4_mapped and isinstance(net, ipaddress.IPv6Network):
            v4 = net.network_address.ipv4_mapped
            assert v4 is not None
            return ipaddress.IPv4Network(f"{v4}/{max(0, self.prefixlen - 96)}", strict=False)
        return net


def parse_cidr_sloppy(text: str) -> ParsedCIDR | None:
    addr_text, slash, bits = text.rpartition("/")
    if not slash or not bits.isdigit() or not bits.isascii():
        return None
    parsed = parse_ip_sloppy(addr_text)
    if parsed is None:
        return None
    addr, leading_zero = parsed
    prefixlen = int(bits)
    if prefixlen > addr.max_prefixlen:
        return None
    net = ipaddress.ip_network(f"{addr}/{prefixlen}", strict=False)
    mapped = isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None
    return ParsedCIDR(
        network=net,
        prefixlen=prefixlen,
        leading_zeros=leading_zero or (len(bits) > 1 and bits[0] == "0"),
        v4_mapped=mapped,
        host_bits=net.network_address != addr,
    )


_CIDR_EXAMPLE = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"
_IP_EXAMPLE = "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"


def cidr_errors(path: str, text: str, strict: bool) -> list[str]:
    """IsValidCIDRForLegacyField. ``strict`` is the StrictIPCIDRValidation feature gate."""
    parsed = parse_cidr_sloppy(text)
    if parsed is None:
        return [invalid(path, text, _CIDR_EXAMPLE)]
    if not strict:
        return []
    if parsed.leading_zeros:
        return [invalid(path, text, "must not have leading 0s in IP or prefix length")]
    if parsed.v4_mapped:
        return [invalid(path, text, "must not have an IPv4-mapped IPv6 address")]
    if parsed.host_bits:
        return [invalid(path, text, "must not have bits set beyond the prefix length")]
    return []


def ip_errors(path: str, text: str, strict: bool) -> list[str]:
    """IsValidIPForLegacyField."""
    parsed = parse_ip_sloppy(text)
    if parsed is None:
        return [invalid(path, text, _IP_EXAMPLE)]
    addr, leading_zero = parsed
    errs = []
    if strict and leading_zero:
        errs.append(invalid(path, text, "must not have leading 0s"))
    if strict and isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        errs.append(invalid(path, text, "must not be an IPv4-mapped IPv6 address"))
    return errs


# ---------------------------------------------------------------------------------------------
# Pass 1: shape. A schema is a small tree of these; _walk checks and cleans a value against it.


@dataclass(frozen=True)
class Obj:
    fields: Mapping[str, Any]
    open: bool = False  # open objects accept (and keep, unexamined) fields not listed


@dataclass(frozen=True)
class Arr:
    item: Any


STR, INT32, BOOL, INT_OR_STR, ANY, STR_MAP = "string", "int32", "bool", "intOrString", "any", "map"

_TYPE_NAMES = {STR: "string", INT32: "integer", BOOL: "boolean", INT_OR_STR: "integer or string"}


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _wrong_type(path: str, value: Any, expected: str) -> str:
    return invalid(path, value, f"must be of type {expected}, not {_json_type(value)}")


def _scalar(schema: str, value: Any, path: str, errs: list[str]) -> Any:
    ok = {
        STR: isinstance(value, str),
        BOOL: isinstance(value, bool),
        INT32: isinstance(value, int) and not isinstance(value, bool),
        INT_OR_STR: isinstance(value, str)
        or (isinstance(value, int) and not isinstance(value, bool)),
    }[schema]
    if not ok:
        errs.append(_wrong_type(path, value, _TYPE_NAMES[schema]))
        return BAD
    if isinstance(value, int) and not isinstance(value, str) and not -(2**31) <= value < 2**31:
        errs.append(invalid(path, value, "must fit in a 32-bit signed integer"))
        return BAD
    return value


def _zero(schema: Any) -> Any:
    if isinstance(schema, Obj) or schema == STR_MAP:
        return {}
    if isinstance(schema, Arr):
        return []
    return {STR: "", INT32: 0, BOOL: False}.get(schema)


def _walk(schema: Any, value: Any, path: str, errs: list[str]) -> Any:
    """Check ``value`` against ``schema``; return the cleaned value (or BAD)."""
    if value is None or schema == ANY:
        return value
    if isinstance(schema, Obj):
        if not isinstance(value, dict):
            errs.append(_wrong_type(path, value, "object"))
            return BAD
        out = {}
        for key, item in value.items():
            sub = schema.fields.get(key) if isinstance(key, str) else None
            if sub is not None:
                cleaned = _walk(sub, item, child(path, key), errs)
                if cleaned is not None:
                    out[key] = cleaned
            elif schema.open:
                out[key] = item
            else:
                errs.append(unknown_field(child(path, str(key))))
        return out
    if isinstance(schema, Arr):
        if not isinstance(value, list):
            errs.append(_wrong_type(path, value, "array"))
            return BAD
        # Go decodes a null list entry as the element type's zero value.
        return [
            _walk(schema.item, _zero(schema.item) if v is None else v, index(path, i), errs)
            for i, v in enumerate(value)
        ]
    if schema == STR_MAP:
        if not isinstance(value, dict):
            errs.append(_wrong_type(path, value, "object"))
            return BAD
        out = {}
        for key, item in value.items():
            key_path = f"{path}[{key}]"
            if not isinstance(key, str):
                errs.append(_wrong_type(key_path, key, "string"))
            elif item is not None and not isinstance(item, str):
                errs.append(_wrong_type(key_path, item, "string"))
            else:
                out[key] = "" if item is None else item
        return out
    return _scalar(schema, value, path, errs)


_META = Obj(
    {
        "name": STR,
        "generateName": STR,
        "namespace": STR,
        "labels": STR_MAP,
        # Server-set or irrelevant to npemu: accepted, not examined.
        **dict.fromkeys(
            (
                "annotations",
                "selfLink",
                "uid",
                "resourceVersion",
                "generation",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "ownerReferences",
                "finalizers",
                "managedFields",
            ),
            ANY,
        ),
    }
)
_SELECTOR = Obj(
    {
        "matchLabels": STR_MAP,
        "matchExpressions": Arr(Obj({"key": STR, "operator": STR, "values": Arr(STR)})),
    }
)
_PEER = Obj(
    {
        "podSelector": _SELECTOR,
        "namespaceSelector": _SELECTOR,
        "ipBlock": Obj({"cidr": STR, "except": Arr(STR)}),
    }
)
_NP_PORT = Obj({"protocol": STR, "port": INT_OR_STR, "endPort": INT32})


def _top(spec: Any, status: Any) -> Obj:
    return Obj({"apiVersion": STR, "kind": STR, "metadata": _META, "spec": spec, "status": status})


_CONTAINER = Obj(
    {
        "name": STR,
        "restartPolicy": STR,
        "ports": Arr(
            Obj(
                {
                    "name": STR,
                    "containerPort": INT32,
                    "protocol": STR,
                    "hostPort": INT32,
                    "hostIP": STR,
                }
            )
        ),
    },
    open=True,
)

SCHEMAS: dict[str, Obj] = {
    "NetworkPolicy": _top(
        Obj(
            {
                "podSelector": _SELECTOR,
                "ingress": Arr(Obj({"ports": Arr(_NP_PORT), "from": Arr(_PEER)})),
                "egress": Arr(Obj({"ports": Arr(_NP_PORT), "to": Arr(_PEER)})),
                "policyTypes": Arr(STR),
            }
        ),
        ANY,  # status is server-set
    ),
    "Pod": _top(
        Obj(
            {
                "nodeName": STR,
                "hostNetwork": BOOL,
                "containers": Arr(_CONTAINER),
                "initContainers": Arr(_CONTAINER),
            },
            open=True,
        ),
        Obj({"phase": STR, "podIP": STR, "podIPs": Arr(Obj({"ip": STR}))}, open=True),
    ),
    "Node": _top(
        Obj({}, open=True),
        Obj({"addresses": Arr(Obj({"type": STR, "address": STR}))}, open=True),
    ),
    "Namespace": _top(ANY, ANY),
}


# ---------------------------------------------------------------------------------------------
# Pass 2: rules.


def _d(value: Any) -> dict[str, Any]:
    """A cleaned sub-object, or {} when absent or already reported as BAD."""
    return value if isinstance(value, dict) else {}


def _l(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _present(value: Any) -> bool:
    return value is not None


def validate_labels(labels: Mapping[str, str], path: str) -> list[str]:
    """ValidateLabels: keys and values are reported at the map's path, as upstream."""
    errs = []
    for key, value in labels.items():
        errs += [invalid(path, key, m) for m in qualified_name(key)]
        errs += [invalid(path, value, m) for m in label_value(value)]
    return errs


def validate_selector(sel: Mapping[str, Any], path: str) -> list[str]:
    """ValidateLabelSelector with AllowInvalidLabelValueInSelector=false (creation)."""
    errs = validate_labels(_d(sel.get("matchLabels")), child(path, "matchLabels"))
    for i, expr in enumerate(_l(sel.get("matchExpressions"))):
        errs += _validate_requirement(_d(expr), index(child(path, "matchExpressions"), i))
    return errs


def _validate_requirement(req: Mapping[str, Any], path: str) -> list[str]:
    errs = []
    operator, values = req.get("operator", ""), _l(req.get("values"))
    if operator in ("In", "NotIn"):
        if not values:
            errs.append(
                required(
                    child(path, "values"), "must be specified when `operator` is 'In' or 'NotIn'"
                )
            )
    elif operator in ("Exists", "DoesNotExist"):
        if values:
            errs.append(
                forbidden(
                    child(path, "values"),
                    "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                )
            )
    elif operator is not BAD:
        errs.append(invalid(child(path, "operator"), operator, "not a valid selector operator"))
    key = req.get("key", "")
    if isinstance(key, str):
        errs += [invalid(child(path, "key"), key, m) for m in qualified_name(key)]
    for i, value in enumerate(values):
        if isinstance(value, str):
            errs += [invalid(index(child(path, "values"), i), value, m) for m in label_value(value)]
    return errs


def validate_metadata(kind: str, meta: Mapping[str, Any]) -> list[str]:
    """ValidateObjectMeta plus the per-kind name rule."""
    errs = []
    name = meta.get("name", "")
    if name == "":
        detail = "name or generateName is required"
        if meta.get("generateName"):
            detail = "npemu needs a concrete name; generateName is not supported"
        errs.append(required("metadata.name", detail))
    elif isinstance(name, str):
        rule = dns1123_label if kind == "Namespace" else dns1123_subdomain
        errs += [invalid("metadata.name", name, m) for m in rule(name)]
    namespace = meta.get("namespace", "")
    if kind in NAMESPACED and isinstance(namespace, str) and namespace:
        errs += [invalid("metadata.namespace", namespace, m) for m in dns1123_label(namespace)]
    errs += validate_labels(_d(meta.get("labels")), "metadata.labels")
    return errs


def validate_np_port(port: Mapping[str, Any], path: str) -> list[str]:
    """ValidateNetworkPolicyPort."""
    errs = []
    protocol = port.get("protocol")
    if isinstance(protocol, str) and protocol not in PROTOCOLS:
        errs.append(not_supported(child(path, "protocol"), protocol, ("TCP", "UDP", "SCTP")))
    number, end = port.get("port"), port.get("endPort")
    end_path = child(path, "endPort")
    if isinstance(number, int):
        errs += [invalid(child(path, "port"), number, m) for m in port_number(number)]
        if isinstance(end, int):
            if end < number:
                errs.append(invalid(end_path, end, "must be greater than or equal to `port`"))
            errs += [invalid(end_path, end, m) for m in port_number(end)]
    elif isinstance(number, str):
        if isinstance(end, int):
            errs.append(invalid(end_path, end, "may not be specified when `port` is non-numeric"))
        errs += [invalid(child(path, "port"), number, m) for m in port_name(number)]
    elif number is None and isinstance(end, int):
        errs.append(invalid(end_path, end, "may not be specified when `port` is not specified"))
    return errs


def validate_peer(peer: Mapping[str, Any], path: str, strict_cidr: bool) -> list[str]:
    """ValidateNetworkPolicyPeer: exactly one kind of peer; ipBlock never combined."""
    errs = []
    for name in ("podSelector", "namespaceSelector"):
        if isinstance(peer.get(name), dict):
            errs += validate_selector(peer[name], child(path, name))
    if isinstance(peer.get("ipBlock"), dict):
        errs += validate_ip_block(peer["ipBlock"], child(path, "ipBlock"), strict_cidr)
    count = sum(_present(peer.get(n)) for n in ("podSelector", "namespaceSelector", "ipBlock"))
    if count == 0:
        errs.append(required(path, "must specify a peer"))
    elif count > 1 and _present(peer.get("ipBlock")):
        errs.append(forbidden(path, "may not specify both ipBlock and another peer"))
    return errs


def validate_ip_block(block: Mapping[str, Any], path: str, strict_cidr: bool) -> list[str]:
    """ValidateIPBlock: a CIDR, and excepts that are strict subsets of it."""
    cidr = block.get("cidr", "")
    if cidr == "":
        return [required(child(path, "cidr"))]
    if not isinstance(cidr, str):
        return []
    errs = cidr_errors(child(path, "cidr"), cidr, strict_cidr)
    outer = parse_cidr_sloppy(cidr)
    if outer is None:
        return errs
    for i, text in enumerate(_l(block.get("except"))):
        if not isinstance(text, str):
            continue
        except_path = index(child(path, "except"), i)
        errs += cidr_errors(except_path, text, strict_cidr)
        inner = parse_cidr_sloppy(text)
        if inner is not None and not _strict_subset(outer, inner):
            errs.append(invalid(except_path, text, "must be a strict subset of `cidr`"))
    return errs


def _strict_subset(outer: ParsedCIDR, inner: ParsedCIDR) -> bool:
    """Upstream's test: outer contains inner's first address and has a shorter mask."""
    outer_net, inner_addr = outer.v4_view(), inner.v4_view().network_address
    return inner_addr in outer_net and outer.prefixlen < inner.prefixlen


def validate_np_spec(spec: Mapping[str, Any], strict_cidr: bool) -> list[str]:
    """ValidateNetworkPolicySpec."""
    errs = validate_selector(_d(spec.get("podSelector")), "spec.podSelector")
    for direction, peers_key in (("ingress", "from"), ("egress", "to")):
        for i, rule in enumerate(_l(spec.get(direction))):
            rule_path = index(child("spec", direction), i)
            rule = _d(rule)
            for j, port in enumerate(_l(rule.get("ports"))):
                errs += validate_np_port(_d(port), index(child(rule_path, "ports"), j))
            for j, peer in enumerate(_l(rule.get(peers_key))):
                errs += validate_peer(_d(peer), index(child(rule_path, peers_key), j), strict_cidr)
    errs += _validate_policy_types(_l(spec.get("policyTypes")))
    return errs


def _validate_policy_types(types: list[Any]) -> list[str]:
    # Upstream rejects more than two entries but, perhaps surprisingly, not duplicates.
    if len(types) > len(POLICY_TYPES):
        shown = ", ".join(json.dumps(str(t)) for t in types)
        return [
            f"spec.policyTypes: Invalid value: []networking.PolicyType{{{shown}}}: "
            "may not specify more than two policyTypes"
        ]
    return [
        not_supported(index("spec.policyTypes", i), t, POLICY_TYPES)
        for i, t in enumerate(types)
        if isinstance(t, str) and t not in POLICY_TYPES
    ]


def _validate_container_ports(container: Mapping[str, Any], path: str) -> list[str]:
    """validateContainerPorts (protocol may be omitted: the API defaults it to TCP)."""
    errs: list[str] = []
    names: set[str] = set()
    for i, port in enumerate(_l(container.get("ports"))):
        port, port_path = _d(port), index(child(path, "ports"), i)
        name = port.get("name")
        if isinstance(name, str) and name:
            msgs = port_name(name)
            errs += [invalid(child(port_path, "name"), name, m) for m in msgs]
            if not msgs and name in names:
                errs.append(duplicate(child(port_path, "name"), name))
            names.add(name)
        number = port.get("containerPort", 0)
        if number == 0:
            errs.append(required(child(port_path, "containerPort")))
        elif isinstance(number, int):
            errs += [
                invalid(child(port_path, "containerPort"), number, m) for m in port_number(number)
            ]
        protocol = port.get("protocol")
        if isinstance(protocol, str) and protocol not in PROTOCOLS:
            # a sets.String listing: sorted
            errs.append(not_supported(child(port_path, "protocol"), protocol, sorted(PROTOCOLS)))
    return errs


def validate_pod(spec: Mapping[str, Any], status: Mapping[str, Any]) -> list[str]:
    errs = []
    node_name = spec.get("nodeName")
    if isinstance(node_name, str) and node_name:
        errs += [invalid("spec.nodeName", node_name, m) for m in dns1123_subdomain(node_name)]
    for group in ("containers", "initContainers"):
        for i, container in enumerate(_l(spec.get(group))):
            errs += _validate_container_ports(_d(container), index(child("spec", group), i))
    phase = status.get("phase")
    if isinstance(phase, str) and phase not in POD_PHASES:
        errs.append(not_supported("status.phase", phase, POD_PHASES))
    if isinstance(status.get("podIP"), str) and status["podIP"]:
        errs += ip_errors("status.podIP", status["podIP"], strict=False)
    errs += _validate_pod_ips(_l(status.get("podIPs")))
    return errs


def _validate_pod_ips(entries: list[Any]) -> list[str]:
    """validatePodIPs: valid addresses, at most one per family."""
    ips = [_d(e).get("ip") for e in entries]
    errs = []
    for i, ip in enumerate(ips):
        if isinstance(ip, str):
            errs += ip_errors(index("status.podIPs", i), ip, strict=False)
    parsed = [parse_ip_sloppy(ip) if isinstance(ip, str) else None for ip in ips]
    if len(ips) > 1 and all(parsed):
        families = [p[0].version for p in parsed if p]
        if len(ips) > 2 or families[0] == families[1]:
            shown = ", ".join(f"core.PodIP{{IP:{json.dumps(ip)}}}" for ip in ips)
            errs.append(
                f"status.podIPs: Invalid value: []core.PodIP{{{shown}}}: "
                "may specify no more than one IP for each IP family"
            )
    return errs


def validate_node(status: Mapping[str, Any]) -> list[str]:
    errs = []
    for i, address in enumerate(_l(status.get("addresses"))):
        address = _d(address)
        if address.get("type") in ("InternalIP", "ExternalIP") and isinstance(
            address.get("address"), str
        ):
            path = child(index("status.addresses", i), "address")
            errs += ip_errors(path, address["address"], strict=False)
    return errs


# ---------------------------------------------------------------------------------------------
# Entry point.


@dataclass
class Checked:
    """Result of validating one object: messages (``path: detail``) and the cleaned object."""

    errors: list[str] = field(default_factory=list)
    clean: dict[str, Any] = field(default_factory=dict)


_RULES: dict[str, Callable[[dict[str, Any], bool], list[str]]] = {
    "NetworkPolicy": lambda o, strict: validate_np_spec(_d(o.get("spec")), strict),
    "Pod": lambda o, _: validate_pod(_d(o.get("spec")), _d(o.get("status"))),
    "Node": lambda o, _: validate_node(_d(o.get("status"))),
    "Namespace": lambda o, _: [],
}


def validate_object(obj: Mapping[str, Any], *, strict_cidr: bool = False) -> Checked:
    """Validate one NetworkPolicy, Pod, Node or Namespace (``obj["kind"]`` says which).

    ``strict_cidr`` turns on the StrictIPCIDRValidation feature gate (alpha and off by default
    in the Kubernetes release this follows): CIDRs with host bits set, leading zeros or
    IPv4-mapped addresses are then rejected instead of accepted.
    """
    kind = obj.get("kind")
    if kind not in SCHEMAS:
        return Checked([f"kind: Unsupported value: {go_value(kind)}"], {})
    errors: list[str] = []
    api_version = obj.get("apiVersion")
    if api_version != API_VERSIONS[kind]:
        errors.append(f'no matches for kind "{kind}" in version "{api_version}"')
    clean = _walk(SCHEMAS[kind], obj, "", errors)
    clean = _d(clean)
    errors += validate_metadata(kind, _d(clean.get("metadata")))
    errors += _RULES[kind](clean, strict_cidr)
    return Checked(errors, clean)


def object_label(obj: Any, fallback: str = "object") -> str:
    """``Kind ns/name`` (``Kind name`` for cluster-scoped kinds) as errors name objects."""
    if not isinstance(obj, dict):
        return fallback
    kind = obj.get("kind") if isinstance(obj.get("kind"), str) else "object"
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        name = f"<unnamed {fallback}>"
    if kind in NAMESPACED:
        namespace = meta.get("namespace")
        if not isinstance(namespace, str) or not namespace:
            namespace = DEFAULT_NAMESPACE
        return f"{kind} {namespace}/{name}"
    return f"{kind} {name}"
