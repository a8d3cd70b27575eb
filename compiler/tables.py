"""The intermediate representation: iptables-shaped match tables.

A ``Ruleset`` is a set of named ``Chain``s (ordered lists of ``Rule``s, first match wins, as in
netfilter) plus named ``IPSet``s (ipset ``hash:ip`` / ``hash:net`` with ``nomatch`` entries).
Renderers turn it into ``ipset restore`` + ``iptables-restore`` text or an ``nft`` script; the
dataplane's walker evaluates it rule by rule and its engine compiles it into lookup tables.

Layout that ``compiler.lower`` produces (the chain ``ENTRY_CHAIN`` is jumped to from FORWARD):

    NPEMU-FORWARD       ctstate INVALID -> DROP; ESTABLISHED,RELATED -> ACCEPT;
                        node exemption (a node's pods <-> that node's IPs) -> ACCEPT;
                        -s <pod ip> -> NPEMU-E-<pod>   for each egress-isolated pod IP;
                        -d <pod ip> -> NPEMU-I-<pod>   for each ingress-isolated pod IP;
                        falls through (RETURN): the packet is allowed.
    NPEMU-E-/NPEMU-I-   per-pod: self -> RETURN; clear the allow mark; jump to each selecting
                        policy's chain, RETURN as soon as the allow mark is set; else DROP.
    NPEMU-PE-/NPEMU-PI- per-policy: one rule per (policy rule, peer group, port); a match sets
                        the allow mark. Shared by every pod the policy selects.

A verdict of RETURN from a per-pod chain means "this direction allows"; the packet must pass both
directions' chains to fall through ``NPEMU-FORWARD`` and be accepted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

ENTRY_CHAIN = "NPEMU-FORWARD"
# One bit of the packet mark says "some policy rule of the current direction allowed"; it is
# cleared before each direction is evaluated. Clear of kube-proxy's masquerade/drop bits (0x4000,
# 0x8000).
ALLOW_MARK = 0x00100000

Direction = Literal["src", "dst"]
Target = Literal["ACCEPT", "DROP", "RETURN", "JUMP", "MARK"]

MAX_CHAIN_NAME = 28  # iptables' limit
MAX_SET_NAME = 31  # ipset's limit

IP_PROTOCOLS = {"tcp": 6, "udp": 17, "sctp": 132, "icmp": 1, "icmpv6": 58}


@dataclass(frozen=True)
class IPSet:
    """An ipset. ``hash:ip`` holds addresses; ``hash:net`` holds prefixes, and a ``nomatch``
    prefix excludes what it covers from its less specific entries (longest prefix decides)."""

    name: str
    kind: Literal["hash:ip", "hash:net"]
    family: Literal[4, 6]
    entries: tuple[str, ...] = ()
    nomatch: tuple[str, ...] = ()
    comment: str = ""


@dataclass(frozen=True)
class SetMatch:
    """``-m set --match-set NAME src|dst``."""

    set: str
    dir: Direction


@dataclass(frozen=True)
class AddrMatch:
    """``-s ADDR`` / ``-d ADDR`` with a single address or prefix."""

    cidr: str
    dir: Direction


@dataclass(frozen=True)
class ProtoMatch:
    """``-p PROTO`` (lower-case iptables names: tcp, udp, sctp, icmp, icmpv6)."""

    protocol: str


@dataclass(frozen=True)
class PortMatch:
    """``--dport LO[:HI]``, inclusive; needs a ProtoMatch of tcp, udp or sctp in the same rule."""

    lo: int
    hi: int


@dataclass(frozen=True)
class CtStateMatch:
    """``-m conntrack --ctstate S1,S2`` with NEW, ESTABLISHED, RELATED, INVALID, UNTRACKED."""

    states: tuple[str, ...]


@dataclass(frozen=True)
class MarkMatch:
    """``-m mark --mark VALUE/MASK``."""

    value: int
    mask: int


Match = SetMatch | AddrMatch | ProtoMatch | PortMatch | CtStateMatch | MarkMatch


@dataclass(frozen=True)
class Provenance:
    """Why a rule exists. ``kind`` is one of: policy-rule, self, node-exemption, conntrack,
    dispatch, policy-jump, allow-check, clear-mark, default-deny."""

    kind: str
    policy: str | None = None  # "namespace/name"
    direction: Literal["ingress", "egress"] | None = None
    rule: int | None = None  # index in spec.ingress / spec.egress
    peer: int | None = None  # index in from / to (None: all peers)
    port: int | None = None  # index in ports (None: all ports)
    pod: str | None = None  # "namespace/name" for per-pod rules
    node: str | None = None

    def describe(self) -> str:
        """Human text, e.g. ``prod/allow-api ingress[0] from[1] ports[0]``."""
        if self.kind == "policy-rule":
            peer_word = "from" if self.direction == "ingress" else "to"
            text = f"{self.policy} {self.direction}[{self.rule}]"
            text += f" {peer_word}[{self.peer}]" if self.peer is not None else f" {peer_word}[*]"
            text += f" ports[{self.port}]" if self.port is not None else " ports[*]"
            return text
        if self.kind == "node-exemption":
            return f"node exemption ({self.node})"
        if self.kind == "self":
            return f"self traffic ({self.pod})"
        if self.kind == "default-deny":
            return f"no {self.direction} rule allows ({self.pod})"
        if self.kind == "policy-jump":
            return f"{self.direction} policy {self.policy}"
        return self.kind + (f" ({self.pod})" if self.pod else "")


@dataclass(frozen=True)
class Rule:
    matches: tuple[Match, ...] = ()
    target: Target = "ACCEPT"
    jump: str | None = None  # chain name when target == "JUMP"
    mark: tuple[int, int] | None = None  # (value, mask) for target == "MARK" (--set-xmark)
    family: Literal[4, 6] | None = None  # None: both iptables and ip6tables
    comment: str = ""
    provenance: Provenance | None = None

    @property
    def terminal(self) -> bool:
        return self.target in ("ACCEPT", "DROP", "RETURN")


@dataclass(frozen=True)
class Chain:
    name: str
    rules: tuple[Rule, ...] = ()
    comment: str = ""
    owner: str | None = None  # pod key for per-pod chains, policy key for per-policy chains


@dataclass(frozen=True)
class Ruleset:
    chains: dict[str, Chain] = field(default_factory=dict)
    sets: dict[str, IPSet] = field(default_factory=dict)
    entry: str = ENTRY_CHAIN
    node: str | None = None  # set when compiled for one node's pods only

    def rule_count(self) -> int:
        return sum(len(c.rules) for c in self.chains.values())

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of the IR (stable: used by ``npemu compile -o json``)."""

        def rule_dict(r: Rule) -> dict[str, Any]:
            d: dict[str, Any] = {
                "matches": [{"type": type(m).__name__, **asdict(m)} for m in r.matches],
                "target": r.target,
            }
            if r.jump:
                d["jump"] = r.jump
            if r.mark:
                d["mark"] = list(r.mark)
            if r.family:
                d["family"] = r.family
            if r.comment:
                d["comment"] = r.comment
            if r.provenance:
                d["provenance"] = {k: v for k, v in asdict(r.provenance).items() if v is not None}
            return d

        return {
            "entry": self.entry,
            "node": self.node,
            "sets": [
                {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(s).items()}
                for s in self.sets.values()
            ],
            "chains": [
                {
                    "name": c.name,
                    "owner": c.owner,
                    "comment": c.comment,
                    "rules": [rule_dict(r) for r in c.rules],
                }
                for c in self.chains.values()
            ],
        }
