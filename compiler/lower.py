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


def _family(ip: str) -> int:
    return ipaddress.ip_address(ip).version


def _split_families(ips: list[str] | tuple[str, ...]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {4: [], 6: []}
    for ip in ips:
        out[_family(ip)].append(str(ipaddress.ip_address(ip)))
    return out


@dataclass
class _Builder:
    inv: Inventory
    sets: dict[str, IPSet] = field(default_factory=dict)
    chains: dict[str, Chain] = field(default_factory=dict)
    _selector_sets: dict[tuple, dict[int, str]] = field(default_factory=dict)
    _named_port_sets: dict[tuple[str, str], dict[tuple[int, int], str]] = field(
        default_factory=dict
    )

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
            namespaces = tuple(self.inv.select_namespaces(peer.namespace_selector))
        pod_selector = peer.pod_selector or LabelSelector()
        cache_key = (namespaces, pod_selector)
        if cache_key not in self._selector_sets:
            pods = self.inv.select_pods(namespaces, pod_selector)
            ips = [ip for pod in pods for ip in self.inv.pod_ips(pod)]
            identity = repr(cache_key)
            comment = f"pods {pod_selector} in namespaces {','.join(namespaces) or '(none)'}"
            self._selector_sets[cache_key] = {
                fam: self._add_set("P", identity, "hash:ip", fam, members, comment=comment)
                for fam, members in _split_families(ips).items()
            }
        return self._selector_sets[cache_key]

    def ipblock_set(self, block: IPBlock) -> tuple[int, str]:
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
                for fam, members in _split_families(ips).items():
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

    def _port_alternatives(
        self, port: PolicyPort | None
    ) -> list[tuple[int | None, tuple[Match, ...]]]:
        """(family constraint, matches) for one ports entry."""
        if port is None:
            return [(None, ())]
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
        name = f"NPEMU-{letter}-{_digest(pod.key)}"
        self_dir = "src" if direction == "ingress" else "dst"
        rules: list[Rule] = []
        for ip in self.inv.pod_ips(pod):
            rules.append(
                Rule(
                    matches=(AddrMatch(ip, self_dir),),
                    target="RETURN",
                    family=_family(ip),
                    comment=f"self traffic of {pod.key}",
                    provenance=Provenance(kind="self", pod=pod.key),
                )
            )
        rules.append(
            Rule(
                target="MARK",
                mark=(0, ALLOW_MARK),
                comment="clear allow mark",
                provenance=Provenance(kind="clear-mark", pod=pod.key),
            )
        )
        for policy in policies:
            rules.append(
                Rule(
                    target="JUMP",
                    jump=self.policy_chain(policy, direction),
                    comment=f"{direction} policy {policy.key}",
                    provenance=Provenance(
                        kind="policy-jump", policy=policy.key, direction=direction, pod=pod.key
                    ),
                )
            )
            rules.append(
                Rule(
                    matches=(MarkMatch(ALLOW_MARK, ALLOW_MARK),),
                    target="RETURN",
                    comment=f"allowed by {policy.key}",
                    provenance=Provenance(
                        kind="allow-check", policy=policy.key, direction=direction, pod=pod.key
                    ),
                )
            )
        deny = Provenance(kind="default-deny", direction=direction, pod=pod.key)
        rules.append(Rule(target="DROP", comment=deny.describe(), provenance=deny))
        self.chains[name] = Chain(
            name=name,
            rules=tuple(rules),
            owner=pod.key,
            comment=f"{direction} of {pod.key} (isolated by {', '.join(p.key for p in policies)})",
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
        pods_by_fam, host_by_fam = _split_families(pod_ips), _split_families(host_ips)
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
                        family=_family(ip),
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
