"""The fast engine must give the walker's verdict for every packet (property test)."""

from __future__ import annotations

import ipaddress

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compiler.lower import lower
from compiler.model import Cluster, IPBlock, LabelSelector, NetworkPolicy, Peer, PolicyRule
from compiler.tables import IPSet
from dataplane.engine import CT_CODES, Engine, ipset_intervals
from dataplane.packets import PacketBatch, ip_to_pair
from dataplane.walker import Packet, SetLookup, Walker

from .clusters import clusters, interesting_addresses

PROTOS = [6, 17, 132, 1, 58, 47]
PORTS = [0, 52, 53, 54, 80, 81, 82, 180, 443, 8080, 8081]
STATES = list(CT_CODES)


def _batch(rows: list[tuple[str, str, int, int, str]]) -> PacketBatch:
    cols: dict[str, list[int]] = {
        k: [] for k in ("family", "src_hi", "src_lo", "dst_hi", "dst_lo", "proto", "dport")
    }
    for s, d, proto, port, _ in rows:
        fam, shi, slo = ip_to_pair(s)
        _, dhi, dlo = ip_to_pair(d)
        for k, v in zip(cols, (fam, shi, slo, dhi, dlo, proto, port), strict=True):
            cols[k].append(v)
    return PacketBatch.from_columns(n=len(rows), **cols)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(cluster=clusters(), data=st.data())
def test_engine_agrees_with_walker(cluster: Cluster, data: st.DataObject) -> None:
    rs = lower(cluster)
    walker, engine = Walker(rs), Engine(rs)
    addresses = interesting_addresses(cluster)
    v4 = [a for a in addresses if ipaddress.ip_address(a).version == 4]
    v6 = [a for a in addresses if ipaddress.ip_address(a).version == 6]
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    rows = []
    for _ in range(400):  # 30 examples x 400 = 12,000 packets per run
        pool = v4 if rng.random() < 0.6 else v6
        rows.append(
            (
                pool[rng.integers(len(pool))],
                pool[rng.integers(len(pool))],
                PROTOS[rng.integers(len(PROTOS))],
                PORTS[rng.integers(len(PORTS))],
                STATES[rng.integers(len(STATES))] if rng.random() < 0.3 else "NEW",
            )
        )
    batch = _batch(rows)
    ct = np.array([CT_CODES[r[4]] for r in rows], dtype=np.uint8)
    fast, decider = engine.evaluate_explained(batch, ct)
    traces = [walker.walk(Packet.make(s, d, p, port, state)) for s, d, p, port, state in rows]
    slow = np.array([t.verdict == "ACCEPT" for t in traces])
    mismatch = np.flatnonzero(fast != slow)
    assert not len(mismatch), [rows[i] for i in mismatch[:5]]
    # the deciding rule is the walker's too (None: fell through to FORWARD's policy)
    engine_final = [engine.rules[k][:2] if k >= 0 else None for k in decider]
    walker_final = [(t.final.chain, t.final.index) if t.final else None for t in traces]
    assert engine_final == walker_final


def test_engine_on_empty_batch() -> None:
    engine = Engine(lower(Cluster()))
    assert engine.evaluate(PacketBatch.empty(0)).shape == (0,)


def test_established_and_invalid_are_decided_before_policy() -> None:
    pol = NetworkPolicy("x", "deny-all", LabelSelector(), policy_types=("Ingress", "Egress"))
    from compiler.model import Pod

    cluster = Cluster(
        pods=(Pod("x", "a", ips=("10.0.0.1",)), Pod("x", "b", ips=("10.0.0.2",))), policies=(pol,)
    )
    engine = Engine(lower(cluster))
    batch = _batch([("10.0.0.1", "10.0.0.2", 6, 80, "")] * 4)
    ct = np.array(
        [CT_CODES[s] for s in ("NEW", "ESTABLISHED", "RELATED", "INVALID")], dtype=np.uint8
    )
    assert engine.evaluate(batch, ct).tolist() == [False, True, True, False]


def test_ipset_intervals_follow_longest_prefix_nomatch() -> None:
    s = IPSet("S", "hash:net", 4, entries=("10.0.0.0/8", "10.1.2.0/24"), nomatch=("10.1.0.0/16",))
    intervals = ipset_intervals(s)
    lookup = SetLookup(s)
    for addr in (
        "10.0.0.1",
        "10.1.0.1",
        "10.1.2.3",
        "10.1.3.0",
        "10.255.255.255",
        "11.0.0.0",
        "9.255.255.255",
    ):
        value = int(ipaddress.ip_address(addr))
        in_intervals = any(a <= value <= b for a, b in intervals)
        assert in_intervals == lookup.contains(4, value), addr
    assert lookup.contains(4, int(ipaddress.ip_address("10.1.2.3")))
    assert not lookup.contains(4, int(ipaddress.ip_address("10.1.3.3")))


def test_ipblock_except_of_one_peer_does_not_block_another_peer() -> None:
    from compiler.model import Pod

    rule = PolicyRule(
        peers=(
            Peer(ip_block=IPBlock("192.168.5.0/24", ("192.168.5.0/28",))),
            Peer(ip_block=IPBlock("192.168.5.10/32")),
        )
    )
    pol = NetworkPolicy("x", "p", LabelSelector(), ingress=(rule,))
    rs = lower(Cluster(pods=(Pod("x", "a", ips=("10.0.0.1",)),), policies=(pol,)))
    walker, engine = Walker(rs), Engine(rs)
    cases = {"192.168.5.10": True, "192.168.5.3": False, "192.168.5.77": True, "192.168.6.1": False}
    batch = _batch([(src, "10.0.0.1", 6, 80, "NEW") for src in cases])
    assert engine.evaluate(batch).tolist() == list(cases.values())
    assert [
        walker.walk(Packet.make(s, "10.0.0.1", "tcp", 80)).verdict == "ACCEPT" for s in cases
    ] == list(cases.values())
