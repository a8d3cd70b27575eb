"""Lowering: validated policies + inventory -> Ruleset (see compiler/tables.py for the layout).

Semantics follow DESIGN.md §2 (networking.k8s.io/v1):
- a pod is isolated for a direction iff a policy selecting it has that direction in policyTypes;
- pod-to-pod traffic needs the source's egress AND the destination's ingress to allow;
- peers OR, selectors within a peer AND; ipBlock = cidr minus excepts, any IP of the family;
- ports OR; no ports = every port and protocol; named ports resolve on the destination pod;
- a pod and its own node always talk; a pod always reaches itself.

Policy chains are shared by every pod a policy selects; named ports stay correct in a shared
chain because they match a set of "pods whose port NAME/PROTO is N" on the destination.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections import defaultdict
from dataclasses import dataclass, field

from .gc_pause import cyclic_gc_paused
from .inventory import Inventory
from .model import Cluster, IPBlock, LabelSelector, NetworkPolicy, Peer, Pod, PolicyPort, PolicyRule
from .tables import (
    ALLOW_MARK,
    ENTRY_CHAIN,
    AddrMatch,
    Chain,
    CtStateMatch,
    IPSet,
    MarkMatch,
    Match,
    PortMatch,
    ProtoMatch,
    Provenance,
    Rule,
    Ruleset,
    SetMatch,
)


def _digest(*parts: str) -> str:
    return hashlib.sha1("\0".join(parts).encode()).hexdigest()[:12].upper()


# Every allow-check rule carries the same match; matches are immutable, so one tuple serves all.
_IF_ALLOWED = (MarkMatch(ALLOW_MARK, ALLOW_MARK),)

# (port family constraint, matches) alternatives of one ports entry; see _port_alternatives.
_PortAlternatives = list[tuple[int | None, tuple[Match, ...]]]


@dataclass(frozen=True)
class _PolicyJump:
    """What every per-pod chain that jumps to one policy's chain repeats, computed once."""

    chain: str
    policy: str  # the policy's key
    jump_comment: str
    allow_comment: str


@dataclass
class _Builder:
    inv: Inventory
    sets: dict[str, IPSet] = field(default_factory=dict)
    chains: dict[str, Chain] = field(default_factory=dict)
    _selector_sets: dict[tuple, dict[int, str]] = field(default_factory=dict)
    _named_port_sets: dict[tuple[str, str], dict[tuple[int, int], str]] = field(
        default_factory=dict
    )
    # Memos: peers, ports and policies recur across rules and pods, and resolving them again
    # (selector scans, ipaddress parsing, frozen-dataclass construction) was most of the cost.
    # Keyed by the objects' fields as plain tuples: equal-but-distinct dataclass keys would go
    # through the dataclasses' slow generated __eq__ on every hit.
    _namespaces_of: dict[tuple, tuple[str, ...]] = field(default_factory=dict)
    _ipblock_sets: dict[tuple, tuple[int, str]] = field(default_factory=dict)
    _port_alts: dict[tuple, _PortAlternatives] = field(default_factory=dict)
    _jumps: dict[tuple[str, str], _PolicyJump] = field(default_factory=dict)

    def family(self, ip: str) -> int:
        return self.inv.address(ip)[0]

    def split_families(self, ips: list[str] | tuple[str, ...]) -> dict[int, list[str]]:
        """Canonical addresses by family (4 and 6 always present), in input order."""
        out: dict[int, list[str]] = {4: [], 6: []}
        address = self.inv.address
        for ip in ips:
            fam, text = address(ip)
            out[fam].append(text)
        return out

    # -- sets ----------------------------------------------------------------------------------

    def _add_set(
        self,
        prefix: str,
        identity: str,
        kind: str,
        family: int,
        entries: list[str],
        nomatch: tuple[str, ...] = (),
        comment: str = "",
    ) -> str:
        name = f"NPEMU-{prefix}{_digest(identity)}-{family}"
        if name not in self.sets:
            self.sets[name] = IPSet(
                name=name,
                kind=kind,
                family=family,
                entries=tuple(dict.fromkeys(entries)),
                nomatch=nomatch,
                comment=comment,
            )
        return name

    def selector_peer_sets(self, policy: NetworkPolicy, peer: Peer) -> dict[int, str]:
        """hash:ip sets (per family) of the pods a selector peer matches, shared by identical peers."""
        if peer.namespace_selector is None:
            namespaces: tuple[str, ...] = (policy.namespace,)
        else:
            namespaces = self._namespaces(peer.namespace_selector)
        pod_selector = peer.pod_selector or LabelSelector()
        cache_key = (namespaces, pod_selector)
        if cache_key not in self._selector_sets:
            pods = self.inv.select_pods(namespaces, pod_selector)
            ips = [ip for pod in pods for ip in self.inv.pod_ips(pod)]
            identity = repr(cache_key)
            comment = f"pods {pod_selector} in namespaces {','.join(namespaces) or '(none)'}"
            self._selector_sets[cache_key] = {
                fam: self._add_set("P", identity, "hash:ip", fam, members, comment=comment)
                for fam, members in self.split_families(ips).items()
            }
        return self._selector_sets[cache_key]

    def _namespaces(self, selector: LabelSelector) -> tuple[str, ...]:
        key = (selector.match_labels, selector.match_expressions)
        namespaces = self._namespaces_of.get(key)
        if namespaces is None:
            namespaces = self._namespaces_of[key] = tuple(self.inv.select_namespaces(selector))
        return namespaces

    def ipblock_set(self, block: IPBlock) -> tuple[int, str]:
        key = (block.cidr, block.except_)
        found = self._ipblock_sets.get(key)
        if found is None:
            found = self._ipblock_sets[key] = self._new_ipblock_set(block)
        return found

    def _new_ipblock_set(self, block: IPBlock) -> tuple[int, str]:
        net = ipaddress.ip_network(block.cidr, strict=False)
        excepts = tuple(str(ipaddress.ip_network(e, strict=False)) for e in block.except_)
        comment = f"ipBlock {net}" + (f" except {','.join(excepts)}" if excepts else "")
        name = self._add_set(
            "B",
            repr((str(net), excepts)),
            "hash:net",
            net.version,
            [str(net)],
            nomatch=tuple(dict.fromkeys(excepts)),
            comment=comment,
        )
        return net.version, name

    def named_port_sets(self, name: str, protocol: str) -> dict[tuple[int, int], str]:
        """(port number, family) -> hash:ip set of the pods whose container port NAME/PROTOCOL is
        that number. Only pods own named ports: hostNetwork pods and non-pod IPs never match."""
        key = (name, protocol)
        if key not in self._named_port_sets:
            by_number: dict[int, list[str]] = defaultdict(list)
            for pod in self.inv.pods:
                if pod.host_network:
                    continue
                number = self.inv.named_port(pod, name, protocol)
                if number is not None:
                    by_number[number].extend(pod.ips)
            out: dict[tuple[int, int], str] = {}
            for number, ips in sorted(by_number.items()):
                for fam, members in self.split_families(ips).items():
                    if members:
                        out[(number, fam)] = self._add_set(
                            "N",
                            repr((name, protocol, number)),
                            "hash:ip",
                            fam,
                            members,
                            comment=f"pods with port {name}/{protocol} = {number}",
                        )
            self._named_port_sets[key] = out
        return self._named_port_sets[key]

    # -- policy chains -------------------------------------------------------------------------

    def policy_jump(self, policy: NetworkPolicy, direction: str) -> _PolicyJump:
        """The policy's chain for that direction (built on first use) and the texts of the
        rules that jump to it."""
        key = policy.key
        jump = self._jumps.get((key, direction))
        if jump is None:
            jump = self._jumps[(key, direction)] = _PolicyJump(
                chain=self.policy_chain(policy, direction),
                policy=key,
                jump_comment=f"{direction} policy {key}",
                allow_comment=f"allowed by {key}",
            )
        return jump

    def policy_chain(self, policy: NetworkPolicy, direction: str) -> str:
        letter = "I" if direction == "ingress" else "E"
        name = f"NPEMU-P{letter}-{_digest(policy.key, direction)}"
        if name in self.chains:
            return name
        rules: list[Rule] = []
        policy_rules = policy.ingress if direction == "ingress" else policy.egress
        peer_dir = "src" if direction == "ingress" else "dst"
        for ri, prule in enumerate(policy_rules):
            rules.extend(self._rule_lines(policy, direction, ri, prule, peer_dir))
        self.chains[name] = Chain(
            name=name,
            rules=tuple(rules),
            owner=policy.key,
            comment=f"{direction} rules of {policy.key}",
        )
        return name

    def _peer_alternatives(
        self, policy: NetworkPolicy, prule: PolicyRule, peer_dir: str
    ) -> list[tuple[int | None, int | None, tuple[Match, ...]]]:
        """(peer index, family, matches) for each peer and family."""
        if not prule.peers:
            return [(None, None, ())]
        out: list[tuple[int | None, int | None, tuple[Match, ...]]] = []
        for pi, peer in enumerate(prule.peers):
            if peer.ip_block is not None:
                fam, name = self.ipblock_set(peer.ip_block)
                out.append((pi, fam, (SetMatch(name, peer_dir),)))
            else:
                for fam, name in self.selector_peer_sets(policy, peer).items():
                    out.append((pi, fam, (SetMatch(name, peer_dir),)))
        return out

    def _port_alternatives(self, port: PolicyPort | None) -> _PortAlternatives:
        """(family constraint, matches) for one ports entry."""
        if port is None:
            return [(None, ())]
        key = (port.protocol, port.port, port.end_port)
        found = self._port_alts.get(key)
        if found is None:
            found = self._port_alts[key] = self._new_port_alternatives(port)
        return found

    def _new_port_alternatives(self, port: PolicyPort) -> _PortAlternatives:
        proto = ProtoMatch(port.protocol.lower())
        if port.port is None:
            return [(None, (proto,))]
        if isinstance(port.port, int):
            hi = port.end_port if port.end_port is not None else port.port
            return [(None, (proto, PortMatch(port.port, hi)))]
        # Named port: the destination must be a pod whose container port of that name and
        # protocol is the packet's destination port.
        return [
            (fam, (SetMatch(set_name, "dst"), proto, PortMatch(number, number)))
            for (number, fam), set_name in self.named_port_sets(port.port, port.protocol).items()
        ]

    def _rule_lines(
        self, policy: NetworkPolicy, direction: str, ri: int, prule: PolicyRule, peer_dir: str
    ) -> list[Rule]:
        lines: list[Rule] = []
        ports: list[tuple[int | None, PolicyPort | None]] = (
            list(enumerate(prule.ports)) if prule.ports else [(None, None)]
        )
        peers = self._peer_alternatives(policy, prule, peer_dir)
        for pi, peer_fam, peer_matches in peers:
            for ki, port in ports:
                for port_fam, port_matches in self._port_alternatives(port):
                    if peer_fam and port_fam and peer_fam != port_fam:
                        continue
                    prov = Provenance(
                        kind="policy-rule",
                        policy=policy.key,
                        direction=direction,
                        rule=ri,
                        peer=pi,
                        port=ki,
                    )
                    lines.append(
                        Rule(
                            matches=peer_matches + port_matches,
                            target="MARK",
                            mark=(ALLOW_MARK, ALLOW_MARK),
                            family=peer_fam or port_fam,
                            comment=prov.describe(),
                            provenance=prov,
                        )
                    )
        return lines

    # -- per-pod chains ------------------------------------------------------------------------

    def pod_chain(self, pod: Pod, direction: str, policies: list[NetworkPolicy]) -> str:
        letter = "I" if direction == "ingress" else "E"
        pod_key = pod.key
        name = f"NPEMU-{letter}-{_digest(pod_key)}"
        self_dir = "src" if direction == "ingress" else "dst"
        rules: list[Rule] = []
        for ip in self.inv.pod_ips(pod):
            rules.append(
                Rule(
                    matches=(AddrMatch(ip, self_dir),),
                    target="RETURN",
                    family=self.family(ip),
                    comment=f"self traffic of {pod_key}",
                    provenance=Provenance(kind="self", pod=pod_key),
                )
            )
        rules.append(
            Rule(
                target="MARK",
                mark=(0, ALLOW_MARK),
                comment="clear allow mark",
                provenance=Provenance(kind="clear-mark", pod=pod_key),
            )
        )
        jumps = [self.policy_jump(policy, direction) for policy in policies]
        for jump in jumps:
            rules.append(
                Rule(
                    target="JUMP",
                    jump=jump.chain,
                    comment=jump.jump_comment,
                    provenance=Provenance(
                        kind="policy-jump", policy=jump.policy, direction=direction, pod=pod_key
                    ),
                )
            )
            rules.append(
                Rule(
                    matches=_IF_ALLOWED,
                    target="RETURN",
                    comment=jump.allow_comment,
                    provenance=Provenance(
                        kind="allow-check", policy=jump.policy, direction=direction, pod=pod_key
                    ),
                )
            )
        deny = Provenance(kind="default-deny", direction=direction, pod=pod_key)
        rules.append(Rule(target="DROP", comment=deny.describe(), provenance=deny))
        self.chains[name] = Chain(
            name=name,
            rules=tuple(rules),
            owner=pod_key,
            comment=f"{direction} of {pod_key} (isolated by {', '.join(j.policy for j in jumps)})",
        )
        return name


def isolation(
    inv: Inventory, policies: tuple[NetworkPolicy, ...]
) -> tuple[dict[str, list[NetworkPolicy]], dict[str, list[NetworkPolicy]]]:
    """pod key -> the policies isolating it, for ingress and for egress (policy order)."""
    ingress: dict[str, list[NetworkPolicy]] = defaultdict(list)
    egress: dict[str, list[NetworkPolicy]] = defaultdict(list)
    for policy in policies:
        for pod in inv.policy_targets(policy.namespace, policy.pod_selector):
            if policy.isolates_ingress:
                ingress[pod.key].append(policy)
            if policy.isolates_egress:
                egress[pod.key].append(policy)
    return ingress, egress


def lower(cluster: Cluster, node: str | None = None, inventory: Inventory | None = None) -> Ruleset:
    """Compile a cluster into a Ruleset. With ``node``, only that node's pods get chains."""
    # a third of the run time went to full collections over the growing heap of rules
    with cyclic_gc_paused():
        return _lower(cluster, node, inventory)


def _lower(cluster: Cluster, node: str | None, inventory: Inventory | None) -> Ruleset:
    inv = inventory or Inventory(cluster)
    b = _Builder(inv)
    ingress_of, egress_of = isolation(inv, cluster.policies)

    def in_scope(pod: Pod) -> bool:
        return node is None or pod.node_name == node

    dispatch: list[Rule] = [
        Rule(
            matches=(CtStateMatch(("INVALID",)),),
            target="DROP",
            comment="conntrack INVALID",
            provenance=Provenance(kind="conntrack"),
        ),
        Rule(
            matches=(CtStateMatch(("RELATED", "ESTABLISHED")),),
            target="ACCEPT",
            comment="conntrack ESTABLISHED,RELATED",
            provenance=Provenance(kind="conntrack"),
        ),
    ]
    for node_name in inv.node_names():
        if node is not None and node_name != node:
            continue
        pod_ips = [
            ip
            for p in inv.pods_by_node.get(node_name, ())
            if not p.host_network
            for ip in inv.pod_ips(p)
        ]
        host_ips = list(inv.node_host_ips(node_name))
        pods_by_fam, host_by_fam = b.split_families(pod_ips), b.split_families(host_ips)
        for fam in (4, 6):
            if not pods_by_fam[fam] or not host_by_fam[fam]:
                continue
            pods_set = b._add_set(
                "NP",
                f"node-pods {node_name}",
                "hash:ip",
                fam,
                pods_by_fam[fam],
                comment=f"pods on node {node_name}",
            )
            host_set = b._add_set(
                "NH",
                f"node-host {node_name}",
                "hash:ip",
                fam,
                host_by_fam[fam],
                comment=f"addresses of node {node_name}",
            )
            prov = Provenance(kind="node-exemption", node=node_name)
            for src, dst in ((pods_set, host_set), (host_set, pods_set)):
                dispatch.append(
                    Rule(
                        matches=(SetMatch(src, "src"), SetMatch(dst, "dst")),
                        target="ACCEPT",
                        family=fam,
                        comment=prov.describe(),
                        provenance=prov,
                    )
                )
    for direction, isolated, addr_dir in (
        ("egress", egress_of, "src"),
        ("ingress", ingress_of, "dst"),
    ):
        for pod in inv.pods:
            if pod.host_network or not in_scope(pod) or pod.key not in isolated:
                continue
            ips = inv.pod_ips(pod)
            if not ips:
                continue
            chain = b.pod_chain(pod, direction, isolated[pod.key])
            for ip in ips:
                dispatch.append(
                    Rule(
                        matches=(AddrMatch(ip, addr_dir),),
                        target="JUMP",
                        jump=chain,
                        family=b.family(ip),
                        comment=f"{direction} of {pod.key}",
                        provenance=Provenance(
                            kind="dispatch",
                            direction=direction,
                            pod=pod.key,
                        ),
                    )
                )
    chains = {
        ENTRY_CHAIN: Chain(
            name=ENTRY_CHAIN,
            rules=tuple(dispatch),
            comment="npemu dispatch (jumped to from FORWARD)",
        )
    }
    chains.update(b.chains)
    return Ruleset(chains=chains, sets=b.sets, node=node)
