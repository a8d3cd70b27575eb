"""Seeded synthetic workloads: clusters + policies, and pcap captures written without Scapy.

Clusters follow the knobs of k8s-netpol-scale's kube-burner workload (pods per namespace,
namespaces, policies per namespace; per policy: local pods, single ports, port ranges, pod
selectors, peer namespaces, peer pods, CIDRs), drawn from weighted *profiles* so a cluster mixes
small and large policies the way real clusters do.

Label scheme (why: one matchLabels pair selects a group of a chosen size, so a profile's
"how many pods" knob is exact and the inventory's label index stays selective):

    pod    p<j>        1 pod          (j = index of the pod in its namespace)
    app    a<j // 4>   4 pods
    svc    s<j // 16>  16 pods
    tier   t<j // 64>  64 pods
    team   (namespace label) n // 4: a namespaceSelector picks 4 namespaces

Captures are built as numpy structured arrays (pcap record header + Ethernet + IPv4 + TCP, with
real IP and TCP checksums) and scattered into one byte buffer per block of packets, so a
1M-packet capture is written in seconds; Scapy is far too slow for that (~3 k packets/s).
"""

from __future__ import annotations

import ipaddress
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compiler.model import (
    Cluster,
    ContainerPort,
    IPBlock,
    LabelSelector,
    Namespace,
    NetworkPolicy,
    Node,
    Peer,
    Pod,
    PolicyPort,
    PolicyRule,
    default_policy_types,
)
from dataplane.aligned_file import AlignedFile

POD_BASE = int(ipaddress.IPv4Address("10.0.0.0"))
NODE_BASE = int(ipaddress.IPv4Address("172.16.0.0"))
EXTERNAL_BASE = int(ipaddress.IPv4Address("192.168.0.0"))  # ipBlock peers live here
GROUPS = {1: "pod", 4: "app", 16: "svc", 64: "tier"}
COMMON_PORTS = (
    80,
    443,
    8080,
    8443,
    9090,
    5432,
    3306,
    6379,
    27017,
    5672,
    9200,
    2379,
    53,
    25,
    110,
    143,
    993,
    995,
    1433,
    1521,
)


@dataclass(frozen=True)
class PolicyProfile:
    """One kind of policy, as k8s-netpol-scale parametrises them.

    local_pods: pods the policy selects (1, 4, 16, 64, or 0 = the whole namespace).
    pod_selectors: selector peers per rule; each selects ``peer_pods`` pods, in the policy's
    namespace (``peer_namespaces == 0``), a team of 4 namespaces (4) or every namespace (-1).
    cidrs: ipBlock peers per rule (every other one with an ``except``).
    single_ports / port_ranges: ports entries per rule (ranges are 100 ports wide).
    """

    name: str
    weight: float
    local_pods: int
    rules: int = 1
    pod_selectors: int = 1
    peer_pods: int = 4
    peer_namespaces: int = 0
    cidrs: int = 0
    single_ports: int = 1
    port_ranges: int = 0
    named_port: bool = False
    egress: bool = False


DEFAULT_PROFILES: tuple[PolicyProfile, ...] = (
    PolicyProfile("small", 0.5, local_pods=4, pod_selectors=1, peer_pods=4, single_ports=1),
    PolicyProfile(
        "medium",
        0.3,
        local_pods=16,
        rules=2,
        pod_selectors=2,
        peer_pods=16,
        peer_namespaces=4,
        cidrs=1,
        single_ports=3,
        port_ranges=1,
        egress=True,
    ),
    PolicyProfile(
        "large",
        0.1,
        local_pods=64,
        rules=2,
        pod_selectors=3,
        peer_pods=64,
        peer_namespaces=4,
        cidrs=2,
        single_ports=5,
        port_ranges=2,
        named_port=True,
    ),
    PolicyProfile(
        "namespace-wide",
        0.05,
        local_pods=0,
        pod_selectors=1,
        peer_pods=0,
        peer_namespaces=-1,
        single_ports=2,
    ),
    PolicyProfile("deny-all", 0.05, local_pods=0, rules=0, pod_selectors=0, single_ports=0),
)


@dataclass(frozen=True)
class ClusterSpec:
    pods: int = 1000
    namespaces: int = 10
    policies: int = 100
    nodes: int = 10
    seed: int = 1
    profiles: tuple[PolicyProfile, ...] = DEFAULT_PROFILES


def pod_ip(g: int) -> str:
    """Address of the g-th pod of the cluster (10.0.1.0 onwards: room for 16M pods)."""
    return str(ipaddress.IPv4Address(POD_BASE + 256 + g))


def _group_selector(size: int, j: int) -> LabelSelector:
    """The selector of the size-``size`` group holding pod index ``j`` (0 = everything)."""
    if size <= 0:
        return LabelSelector()
    key = GROUPS[size]
    return LabelSelector(match_labels=((key, f"{key[0]}{j // size}"),))


def _pick_profile(rng: random.Random, profiles: tuple[PolicyProfile, ...]) -> PolicyProfile:
    return rng.choices(profiles, weights=[p.weight for p in profiles])[0]


def _ports(rng: random.Random, prof: PolicyProfile) -> tuple[PolicyPort, ...]:
    out: list[PolicyPort] = [
        PolicyPort("TCP", p) for p in rng.sample(COMMON_PORTS, prof.single_ports)
    ]
    for _ in range(prof.port_ranges):
        lo = rng.randrange(30000, 32000, 100)
        out.append(PolicyPort("TCP", lo, lo + 99))
    if prof.named_port:
        out.append(PolicyPort("TCP", "metrics"))
    return tuple(out)


def _peers(
    rng: random.Random, prof: PolicyProfile, ns_index: int, n_ns: int, pods_in_ns: int
) -> tuple[Peer, ...]:
    peers: list[Peer] = []
    for _ in range(prof.pod_selectors):
        sel = _group_selector(prof.peer_pods, rng.randrange(max(pods_in_ns, 1)))
        if prof.peer_namespaces == 0:
            peers.append(Peer(pod_selector=sel))
        elif prof.peer_namespaces < 0:
            peers.append(Peer(pod_selector=sel, namespace_selector=LabelSelector()))
        else:
            team = rng.randrange(max(n_ns // 4, 1))
            peers.append(
                Peer(
                    pod_selector=sel,
                    namespace_selector=LabelSelector(match_labels=(("team", f"t{team}"),)),
                )
            )
    for k in range(prof.cidrs):
        net = ipaddress.IPv4Network((EXTERNAL_BASE + rng.randrange(256) * 256, 24))
        excepts = (str(next(net.subnets(new_prefix=28))),) if k % 2 else ()
        peers.append(Peer(ip_block=IPBlock(str(net), excepts)))
    return tuple(peers)


def make_cluster(spec: ClusterSpec) -> Cluster:
    """A seeded cluster: ``spec.pods`` pods spread over namespaces and nodes, ``spec.policies``
    policies drawn from the weighted profiles (policies per namespace as even as possible)."""
    rng = random.Random(spec.seed)
    n_ns = max(spec.namespaces, 1)
    nodes = tuple(
        Node(f"node-{k}", addresses=(str(ipaddress.IPv4Address(NODE_BASE + 1 + k)),))
        for k in range(max(spec.nodes, 1))
    )
    namespaces = tuple(Namespace(f"ns-{n}", labels=(("team", f"t{n // 4}"),)) for n in range(n_ns))
    per_ns = [spec.pods // n_ns + (1 if n < spec.pods % n_ns else 0) for n in range(n_ns)]
    pods: list[Pod] = []
    metrics = (ContainerPort(9100, "TCP", "metrics"),)
    g = 0
    for n in range(n_ns):
        for j in range(per_ns[n]):
            labels = (
                ("app", f"a{j // 4}"),
                ("pod", f"p{j}"),
                ("svc", f"s{j // 16}"),
                ("tier", f"t{j // 64}"),
            )
            pods.append(
                Pod(
                    f"ns-{n}",
                    f"pod-{j}",
                    labels=labels,
                    node_name=f"node-{g % len(nodes)}",
                    ips=(pod_ip(g),),
                    ports=metrics,
                )
            )
            g += 1
    policies: list[NetworkPolicy] = []
    for k in range(spec.policies):
        n = k % n_ns
        prof = _pick_profile(rng, spec.profiles)
        sel = _group_selector(prof.local_pods, rng.randrange(max(per_ns[n], 1)))
        rules = tuple(
            PolicyRule(peers=_peers(rng, prof, n, n_ns, per_ns[n]), ports=_ports(rng, prof))
            for _ in range(prof.rules)
        )
        egress: tuple[PolicyRule, ...] = ()
        if prof.egress:
            # the usual egress shape: the peers of the ingress rule plus DNS anywhere
            dns = PolicyRule(ports=(PolicyPort("UDP", 53), PolicyPort("TCP", 53)))
            egress = (PolicyRule(peers=_peers(rng, prof, n, n_ns, per_ns[n])), dns)
        policies.append(
            NetworkPolicy(
                f"ns-{n}",
                f"{prof.name}-{k}",
                sel,
                ingress=rules,
                egress=egress,
                policy_types=default_policy_types(bool(egress)),
            )
        )
    return Cluster(namespaces=namespaces, pods=tuple(pods), nodes=nodes, policies=tuple(policies))


def cluster_for_rules(
    target_rules: int, seed: int = 1, tolerance: float = 0.25
) -> tuple[ClusterSpec, Cluster, Any]:
    """A cluster whose lowered ruleset has about ``target_rules`` rules: (spec, cluster, ruleset).

    Shape: 10 pods per policy, 100 pods per namespace and per node. The rule count grows about
    linearly with the policy count (dispatch rules of the isolated pods, per-pod chains,
    per-policy chains), so a few secant steps on the policy count land within ``tolerance``.
    The real count is always measured and reported, never assumed."""
    from compiler.lower import lower

    def build(policies: int) -> tuple[ClusterSpec, Cluster, Any]:
        pods = max(policies * 10, 20)
        spec = ClusterSpec(
            pods=pods,
            namespaces=max(pods // 100, 1),
            policies=policies,
            nodes=max(pods // 100, 1),
            seed=seed,
        )
        cluster = make_cluster(spec)
        return spec, cluster, lower(cluster)

    policies = max(target_rules // 130, 1)  # about 130 rules per policy with the default profiles
    best = build(policies)
    for _ in range(4):
        count = best[2].rule_count()
        if abs(count - target_rules) <= tolerance * target_rules:
            break
        nxt = max(round(policies * target_rules / max(count, 1)), 1)
        if nxt == policies:
            break
        policies = nxt
        cand = build(policies)
        if abs(cand[2].rule_count() - target_rules) < abs(count - target_rules):
            best = cand
    return best


# ---------------------------------------------------------------------------------------------
# Flows


@dataclass
class FlowSet:
    """N TCP flows: client/server IPv4 addresses (as integers), ports, and whether the flow
    completes (handshake, data, close) or is a SYN that is never answered (retransmitted)."""

    src: np.ndarray  # uint32
    dst: np.ndarray  # uint32
    sport: np.ndarray  # uint16
    dport: np.ndarray  # uint16
    complete: np.ndarray  # bool

    def __len__(self) -> int:
        return len(self.src)


def random_flows(
    cluster: Cluster,
    n_flows: int,
    seed: int = 2,
    external_fraction: float = 0.05,
    ports: tuple[int, ...] = COMMON_PORTS[:8],
) -> FlowSet:
    """Flows between random pods (plus a few from external ipBlock space) to a few common ports.
    All complete; ``classify_flows`` marks the ones the policy denies as unanswered SYNs."""
    rng = np.random.default_rng(seed)
    ips = np.array([int(ipaddress.IPv4Address(p.ips[0])) for p in cluster.pods], dtype=np.uint32)
    src = ips[rng.integers(0, len(ips), n_flows)]
    ext = rng.random(n_flows) < external_fraction
    src[ext] = EXTERNAL_BASE + rng.integers(0, 1 << 16, int(ext.sum()))
    dst = ips[rng.integers(0, len(ips), n_flows)]
    dport = np.array(ports, dtype=np.uint16)[rng.integers(0, len(ports), n_flows)]
    # distinct source ports per (src, dst) are not needed for correctness, only for realism
    sport = (32768 + (np.arange(n_flows) * 7919) % 28000).astype(np.uint16)
    return FlowSet(src.astype(np.uint32), dst, sport, dport, np.ones(n_flows, dtype=bool))


def classify_flows(flows: FlowSet, allowed: np.ndarray) -> FlowSet:
    """Denied flows become unanswered SYNs, as a capture taken in front of the filter shows a
    client whose connection attempts time out."""
    return FlowSet(flows.src, flows.dst, flows.sport, flows.dport, np.asarray(allowed, dtype=bool))


def flows_batch(flows: FlowSet) -> Any:  # a PacketBatch; dataplane imported lazily
    """The first packet (SYN) of every flow as a PacketBatch, for classification."""
    from dataplane.packets import SYN, PacketBatch

    n = len(flows)
    return PacketBatch.from_columns(
        n=n,
        family=4,
        src_lo=flows.src.astype(np.uint64),
        dst_lo=flows.dst.astype(np.uint64),
        proto=6,
        sport=flows.sport,
        dport=flows.dport,
        tcp_flags=SYN,
        ts=0.0,
    )


# ---------------------------------------------------------------------------------------------
# Capture writer (numpy templates)

# pcap record header (little-endian) + Ethernet + IPv4 + TCP (network order): 70 bytes.
_REC = np.dtype(
    [
        ("ts_sec", "<u4"),
        ("ts_usec", "<u4"),
        ("caplen", "<u4"),
        ("origlen", "<u4"),
        ("eth_dst", "u1", 6),
        ("eth_src", "u1", 6),
        ("eth_type", ">u2"),
        ("ver_ihl", "u1"),
        ("tos", "u1"),
        ("tot_len", ">u2"),
        ("ip_id", ">u2"),
        ("frag", ">u2"),
        ("ttl", "u1"),
        ("proto", "u1"),
        ("ip_csum", ">u2"),
        ("src", ">u4"),
        ("dst", ">u4"),
        ("sport", ">u2"),
        ("dport", ">u2"),
        ("seq", ">u4"),
        ("ack", ">u4"),
        ("doff", "u1"),
        ("flags", "u1"),
        ("win", ">u2"),
        ("tcp_csum", ">u2"),
        ("urg", ">u2"),
    ]
)
_HDR = _REC.itemsize  # 70
_FRAME_HDR = _HDR - 16  # 54: Ethernet + IPv4 + TCP
assert _HDR == 70

F_FIN, F_SYN, F_RST, F_PSH, F_ACK = 0x01, 0x02, 0x04, 0x08, 0x10


@dataclass
class CaptureInfo:
    path: str
    packets: int
    flows: int
    bytes: int
    seconds: float  # capture duration (last - first timestamp)


def _fold(total: np.ndarray) -> np.ndarray:
    """Ones'-complement fold of 32-bit (or wider) sums to the 16-bit checksum."""
    total = total.astype(np.uint64)
    for _ in range(3):
        total = (total & 0xFFFF) + (total >> 16)
    return (~total.astype(np.uint16)) & 0xFFFF


def _words(raw: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Sum of the big-endian 16-bit words of raw[:, lo:hi]."""
    w = raw[:, lo:hi].astype(np.uint32)
    return (w[:, 0::2] << 8).sum(axis=1, dtype=np.uint64) + w[:, 1::2].sum(axis=1, dtype=np.uint64)


def _mac(ip: np.ndarray) -> np.ndarray:
    """02:00:<ipv4 bytes>, as flows.mac_for does for Scapy traffic."""
    out = np.zeros((len(ip), 6), dtype=np.uint8)
    out[:, 0] = 2
    for k in range(4):
        out[:, 2 + k] = (ip >> (24 - 8 * k)) & 0xFF
    return out


def _records(
    src, dst, sport, dport, seq, ack, flags, payload, ts_ns, ip_id, snaplen
) -> tuple[np.ndarray, np.ndarray]:
    """(headers as (n, 70) uint8, caplen) for one block of packets."""
    n = len(src)
    rec = np.zeros(n, dtype=_REC)
    frame_len = _FRAME_HDR + payload.astype(np.int64)
    caplen = np.minimum(frame_len, snaplen) if snaplen else frame_len
    rec["ts_sec"] = ts_ns // 1_000_000_000
    rec["ts_usec"] = (ts_ns % 1_000_000_000) // 1000
    rec["caplen"] = caplen
    rec["origlen"] = frame_len
    rec["eth_dst"] = _mac(dst)
    rec["eth_src"] = _mac(src)
    rec["eth_type"] = 0x0800
    rec["ver_ihl"] = 0x45
    rec["tot_len"] = 40 + payload
    rec["ip_id"] = ip_id
    rec["frag"] = 0x4000  # DF
    rec["ttl"] = 64
    rec["proto"] = 6
    rec["src"], rec["dst"] = src, dst
    rec["sport"], rec["dport"] = sport, dport
    rec["seq"], rec["ack"] = seq, ack
    rec["doff"] = 5 << 4
    rec["flags"] = flags
    rec["win"] = 64240
    raw = rec.view(np.uint8).reshape(n, _HDR)
    rec["ip_csum"] = _fold(_words(raw, 30, 50))
    # TCP checksum: pseudo header + header; the payload is zeros, which add nothing
    pseudo = (
        (src >> 16).astype(np.uint64)
        + (src & 0xFFFF)
        + (dst >> 16)
        + (dst & 0xFFFF)
        + 6
        + 20
        + payload
    )
    rec["tcp_csum"] = _fold(pseudo + _words(raw, 50, 70))
    return raw, caplen


def _write_records(
    f, fields: dict[str, np.ndarray], order: np.ndarray, snaplen: int, block: int = 1 << 16
) -> int:
    """Write the packets ``order`` (indices into ``fields``) as pcap records. Returns bytes."""
    written = 0
    for start in range(0, len(order), block):
        sel = order[start : start + block]
        cols = {k: v[sel] for k, v in fields.items()}
        raw, caplen = _records(snaplen=snaplen, **cols)
        sizes = 16 + caplen
        ends = np.cumsum(sizes)
        starts = ends - sizes
        out = np.zeros(int(ends[-1]), dtype=np.uint8)  # payload bytes stay zero
        width = np.minimum(sizes, _HDR)
        # scatter the headers: all full 70-byte headers at once, short (snaplen < 54) ones not
        full = width == _HDR
        idx = starts[full, None] + np.arange(_HDR)
        out[idx] = raw[full]
        for i in np.flatnonzero(~full):
            out[starts[i] : starts[i] + width[i]] = raw[i, : width[i]]
        f.write(out.data)
        written += len(out)
    return written


def _pcap_header(snaplen: int) -> bytes:
    import struct

    return struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen or 262144, 1)


def write_flow_capture(
    path: str | os.PathLike[str],
    flows: FlowSet,
    packets: int,
    *,
    seed: int = 3,
    start: float = 1_700_000_000.0,
    duration: float = 60.0,
    snaplen: int = 0,
    gap_ms: float = 5.0,
    mtu_payload: bool = False,
) -> CaptureInfo:
    """Write ``packets`` packets of the given TCP flows as an Ethernet pcap, in time order.

    A complete flow is SYN, SYN/ACK, ACK, then data (client request / server response
    alternating, with consistent seq/ack numbers), then FIN/ACK, FIN/ACK, ACK: at least 6
    packets, and heavy-tailed (Pareto) beyond that. An incomplete flow is a SYN sent 3 times
    (t, t+1 s, t+3 s: the kernel's back-off). Flow starts are uniform over ``duration``;
    packets of a flow are spaced by exponential gaps of mean ``gap_ms``. ``snaplen`` > 0
    truncates the stored frames (lengths on the wire are kept), as ``tcpdump -s`` does.
    ``mtu_payload`` makes every data segment a full 1448-byte one (bulk transfer: the most bytes
    per packet, for memory-versus-capture-size runs).
    """
    rng = np.random.default_rng(seed)
    n = len(flows)
    complete = flows.complete
    counts = np.where(complete, 6, 3).astype(np.int64)
    extra = packets - int(counts.sum())
    n_c = int(complete.sum())
    if extra < 0:
        raise ValueError(f"{packets} packets cannot hold {n} flows (need {int(counts.sum())})")
    if extra and n_c:
        # heavy-tailed extra data packets per complete flow, summing to exactly ``extra``
        w = rng.pareto(1.5, n_c) + 1e-9
        share = np.floor(w / w.sum() * extra).astype(np.int64)
        share[np.argsort(-w)[: extra - int(share.sum())]] += 1
        counts[complete] += share
    elif extra:
        raise ValueError("extra packets need at least one complete flow")
    total = int(counts.sum())
    flow = np.repeat(np.arange(n), counts)
    first = np.cumsum(counts) - counts
    pos = np.arange(total) - first[flow]  # position of the packet within its flow
    k = counts[flow]
    comp = complete[flow]

    # direction (True = client -> server) and flags, by position
    from_client = np.ones(total, dtype=bool)
    flags = np.full(total, F_ACK, dtype=np.uint8)
    data = comp & (pos >= 3) & (pos < k - 3)
    from_client[comp & (pos == 1)] = False
    from_client[data] = ((pos[data] - 3) % 2) == 0
    from_client[comp & (pos == k - 2)] = False
    flags[~comp | (pos == 0)] = F_SYN
    flags[comp & (pos == 1)] = F_SYN | F_ACK
    flags[data] = F_PSH | F_ACK
    flags[comp & ((pos == k - 3) | (pos == k - 2))] = F_FIN | F_ACK
    payload = np.zeros(total, dtype=np.int64)
    nd = int(data.sum())
    if mtu_payload:
        payload[data] = 1448
    else:
        payload[data] = np.where(
            from_client[data], rng.integers(64, 512, nd), rng.integers(200, 1400, nd)
        )

    # sequence numbers: ISN + 1 + bytes this side sent before (SYN and FIN count one each)
    isn_c = rng.integers(0, 1 << 32, n, dtype=np.uint64)
    isn_s = rng.integers(0, 1 << 32, n, dtype=np.uint64)
    consumed = payload + ((flags & (F_SYN | F_FIN)) != 0)
    c_sent = np.where(from_client, consumed, 0)
    s_sent = np.where(from_client, 0, consumed)
    c_before = np.cumsum(c_sent) - c_sent - (np.cumsum(c_sent) - c_sent)[first][flow]
    s_before = np.cumsum(s_sent) - s_sent - (np.cumsum(s_sent) - s_sent)[first][flow]
    c_seq = (isn_c[flow] + c_before.astype(np.uint64)) & 0xFFFFFFFF
    s_seq = (isn_s[flow] + s_before.astype(np.uint64)) & 0xFFFFFFFF
    seq = np.where(from_client, c_seq, s_seq)
    ack = np.where(from_client, s_seq, c_seq)
    ack[(flags & F_ACK) == 0] = 0
    ack[~comp] = 0
    seq[~comp] = isn_c[flow][~comp]

    # timestamps: flow start + cumulative exponential gaps; SYN retries at +1 s and +3 s
    t0 = rng.uniform(0.0, duration, n)
    gaps = rng.exponential(gap_ms / 1000.0, total)
    gaps[pos == 0] = 0.0
    cum = np.cumsum(gaps)
    rel = cum - cum[first][flow]
    rel[~comp] = np.array([0.0, 1.0, 3.0])[np.minimum(pos[~comp], 2)]
    ts_ns = np.round((start + t0[flow] + rel) * 1e6).astype(np.int64) * 1000

    src = np.where(from_client, flows.src[flow], flows.dst[flow]).astype(np.uint32)
    dst = np.where(from_client, flows.dst[flow], flows.src[flow]).astype(np.uint32)
    sport = np.where(from_client, flows.sport[flow], flows.dport[flow]).astype(np.uint16)
    dport = np.where(from_client, flows.dport[flow], flows.sport[flow]).astype(np.uint16)
    order = np.argsort(ts_ns, kind="stable")
    fields = {
        "src": src,
        "dst": dst,
        "sport": sport,
        "dport": dport,
        "seq": seq.astype(np.uint32),
        "ack": ack.astype(np.uint32),
        "flags": flags,
        "payload": payload.astype(np.uint32),
        "ts_ns": ts_ns,
        "ip_id": (np.arange(total) & 0xFFFF).astype(np.uint16),
    }
    with AlignedFile(path) as f:
        f.write(_pcap_header(snaplen))
        size = 24 + _write_records(f, fields, order, snaplen)
    return CaptureInfo(os.fspath(path), total, n, size, float((ts_ns.max() - ts_ns.min()) / 1e9))


def write_syn_scan(
    path: str | os.PathLike[str],
    flows: FlowSet,
    *,
    start: float = 1_700_000_000.0,
    rate: float = 100_000.0,
) -> CaptureInfo:
    """Every packet a new flow: one SYN per flow at ``rate`` SYNs per second."""
    n = len(flows)
    ts_ns = (np.round((start + np.arange(n) / rate) * 1e6)).astype(np.int64) * 1000
    fields = {
        "src": flows.src.astype(np.uint32),
        "dst": flows.dst.astype(np.uint32),
        "sport": flows.sport,
        "dport": flows.dport,
        "seq": np.random.default_rng(5).integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32),
        "ack": np.zeros(n, np.uint32),
        "flags": np.full(n, F_SYN, np.uint8),
        "payload": np.zeros(n, np.uint32),
        "ts_ns": ts_ns,
        "ip_id": (np.arange(n) & 0xFFFF).astype(np.uint16),
    }
    with AlignedFile(path) as f:
        f.write(_pcap_header(0))
        size = 24 + _write_records(f, fields, np.arange(n), 0)
    return CaptureInfo(os.fspath(path), n, n, size, n / rate)


def scan_flows(cluster: Cluster, n: int, seed: int = 4) -> FlowSet:
    """Distinct SYNs: random pod pairs, random common ports, a unique source port per packet
    within 28k (so every SYN is a new flow even for a repeated address pair)."""
    flows = random_flows(cluster, n, seed=seed, external_fraction=0.0, ports=COMMON_PORTS)
    sport = (1024 + np.arange(n) % 64000).astype(np.uint16)
    return FlowSet(flows.src, flows.dst, sport, flows.dport, np.zeros(n, dtype=bool))


def workload(
    cluster: Cluster,
    ruleset: Any,
    n_flows: int,
    packets: int,
    path: str | Path,
    *,
    seed: int = 2,
    snaplen: int = 0,
    mtu_payload: bool = False,
) -> tuple[FlowSet, CaptureInfo]:
    """Flows between the cluster's pods, denied ones turned into unanswered SYNs by the engine's
    verdict on their first packet, written as a ``packets``-packet capture."""
    from dataplane.engine import Engine

    flows = random_flows(cluster, n_flows, seed=seed)
    allowed = Engine(ruleset).evaluate(flows_batch(flows), "NEW")
    flows = classify_flows(flows, allowed)
    return flows, write_flow_capture(
        path, flows, packets, seed=seed + 1, snaplen=snaplen, mtu_payload=mtu_payload
    )


def expected_counts(flows: FlowSet, capture_packets: int) -> tuple[int, int]:
    """(allowed, dropped) the replay must report for a ``workload`` capture: every packet of a
    complete (allowed) flow passes, every retried SYN of a denied one is dropped."""
    dropped = 3 * int((~flows.complete).sum())
    return capture_packets - dropped, dropped


def describe(spec: ClusterSpec) -> str:
    return (
        f"{spec.pods} pods / {spec.namespaces} ns / {spec.policies} policies / {spec.nodes} nodes"
    )


def log_space(lo: int, hi: int, per_decade: int = 1) -> list[int]:
    """1, 10, 100 ... style sizes between lo and hi inclusive (hi always included)."""
    out = []
    k = math.log10(lo)
    while 10**k < hi * 0.999:
        out.append(round(10**k))
        k += 1 / per_decade
    out.append(hi)
    return sorted(set(out))
