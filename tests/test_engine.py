"""The fast engine must give the walker's verdict for every packet (property test)."""

from __future__ import annotations

import ipaddress
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compiler.lower import lower
from compiler.model import Cluster, IPBlock, LabelSelector, NetworkPolicy, Peer, PolicyRule
from compiler.tables import IPSet, Ruleset
from dataplane import policy_index
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
    walker, engine = Walker(rs), Engine(rs, policy_index=False)
    indexed = Engine(rs)
    assert indexed.index.enabled, indexed.index.reason
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
    # the second pass is answered from the class cache; a cache-less engine walks every packet
    again, decider_again = engine.evaluate_explained(batch, ct)
    assert engine.stats["hits"] >= len(rows)
    uncached, decider_uncached = Engine(rs, cache_size=0, policy_index=False).evaluate_explained(
        batch, ct
    )
    assert (again == fast).all() and (uncached == fast).all()
    assert (decider_again == decider).all() and (decider_uncached == decider).all()
    # the policy index gives the walk's answers, deciding rule included, and decides most
    # packets itself (the others fall back to the cache and the walk)
    by_index, decider_by_index = indexed.evaluate_explained(batch, ct)
    assert (by_index == fast).all() and (decider_by_index == decider).all()
    assert indexed.stats["indexed"] + indexed.stats["hits"] + indexed.stats["walks"] == len(rows)
    # and with every peer set searched in the membership lists instead of the peer table
    with mock.patch.object(policy_index, "PAIR_BUDGET", 0):
        searching = Engine(rs)
    by_search, decider_by_search = searching.evaluate_explained(batch, ct)
    assert (by_search == fast).all() and (decider_by_search == decider).all()
    # and with neither the peer filter nor the admit table: every probe made, every atom visited
    with (
        mock.patch.object(policy_index, "FILTER_BUDGET", 0),
        mock.patch.object(policy_index, "ADMIT_BUDGET", 0),
    ):
        one_by_one = Engine(rs)
    assert not one_by_one.index.filter_rows and not one_by_one.index.admit_keys
    by_atom, decider_by_atom = one_by_one.evaluate_explained(batch, ct)
    assert (by_atom == fast).all() and (decider_by_atom == decider).all()
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


def _scan_cluster() -> Cluster:
    from compiler.model import Node, Pod, PolicyPort

    pods = tuple(
        Pod("ns", f"p{i}", labels=(("app", f"a{i % 3}"),), ips=(f"10.0.{i // 200}.{i % 200 + 1}",),
            node_name=f"n{i % 4}")
        for i in range(600)
    )  # fmt: skip
    nodes = tuple(Node(f"n{i}", addresses=(f"172.20.0.{i + 1}",)) for i in range(4))
    policies = tuple(
        NetworkPolicy(
            "ns",
            f"pol{j}",
            LabelSelector((("app", f"a{j % 3}"),)),
            ingress=(
                PolicyRule(
                    peers=(Peer(pod_selector=LabelSelector((("app", f"a{(j + 1) % 3}"),))),
                           Peer(ip_block=IPBlock("192.168.0.0/16", ("192.168.7.0/24",)))),
                    ports=(PolicyPort("TCP", 8000 + j, 8000 + j + 5),),
                ),
            ),
        )
        for j in range(12)
    )  # fmt: skip
    return Cluster(pods=pods, nodes=nodes, policies=policies)


def scan_rows(seed: int, n: int, extra: list[str]) -> list[tuple[str, str, int, int, str]]:
    """``n`` NEW TCP packets between random pods of ``_scan_cluster`` and ``extra`` addresses,
    to ports around its policies' ranges (8000-8016)."""
    rng = np.random.default_rng(seed)
    addrs = [f"10.0.{i // 200}.{i % 200 + 1}" for i in range(600)] + extra
    return [
        (addrs[rng.integers(len(addrs))], addrs[rng.integers(len(addrs))], 6,
         int(rng.integers(7995, 8020)), "NEW")
        for _ in range(n)
    ]  # fmt: skip


def assert_as_walked(
    rs: Ruleset, engine: Engine, rows: list, ok: np.ndarray, decider: np.ndarray
) -> None:
    """The engine's verdicts and deciding rules for ``rows`` are the walker's, and the rows
    are neither all allowed nor all dropped."""
    walker = Walker(rs)
    traces = [walker.walk(Packet.make(s, d, p, port)) for s, d, p, port, _ in rows]
    assert ok.tolist() == [t.verdict == "ACCEPT" for t in traces]
    assert [engine.rules[k][:2] if k >= 0 else None for k in decider] == [
        (t.final.chain, t.final.index) if t.final else None for t in traces
    ]
    assert 0 < ok.sum() < len(rows)


@pytest.mark.parametrize("wide", [False, True], ids=["listed", "searched-by-address"])
def test_engine_indexes_dispatch_runs_and_survives_cache_turnover(
    wide: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs are built for the long address-keyed sequences, and a tiny cache that is reset many
    times over still gives the walker's verdicts — with sets and runs in the identities'
    membership lists, and with all of them searched by address (the path for wide CIDRs)."""
    from dataplane import classes
    from dataplane.program import OP_RUN

    if wide:
        monkeypatch.setattr(classes, "WIDE_PIECES", -(10**9))
    rs = lower(_scan_cluster())
    engine = Engine(rs, cache_size=8, policy_index=False)
    assert bool(engine.classes.listed[:-1].any()) != wide
    assert (engine.program.op_kind == OP_RUN).sum() >= 2  # the egress and ingress dispatch
    rows = scan_rows(7, 3000, ["192.168.7.9", "192.168.8.9", "172.20.0.1", "172.20.0.3", "8.8.8.8"])
    fast, decider = engine.evaluate_explained(_batch(rows))
    assert_as_walked(rs, engine, rows, fast, decider)
    indexed = Engine(rs, cache_size=8)
    by_index, decider_by_index = indexed.evaluate_explained(_batch(rows))
    assert (by_index == fast).all() and (decider_by_index == decider).all()
    if not wide:  # searched-by-address sets are outside what the index summarises
        assert indexed.stats["indexed"] == len(rows)
        # every pod is isolated by four policies: most packets consult several of them
        assert indexed.stats["policies_consulted"] > 2 * len(rows)


def test_identities_merge_addresses_no_rule_tells_apart() -> None:
    """Addresses outside every set share one identity; port classes cut at the port bounds."""
    engine = Engine(lower(_scan_cluster()), policy_index=False)
    c = engine.classes
    assert c.port_class[8000] != c.port_class[7999]
    # policy j allows 8000+j..8005+j: bounds at 8000..8017 leave 0-7999, 17 single ports, 8017+
    assert len(np.unique(c.port_class)) == 19
    assert c.port_class[0] == c.port_class[7999] and c.port_class[8017] == c.port_class[65535]
    rows = [("8.8.8.8", "10.0.0.1", 6, 8000, "NEW"), ("9.9.9.9", "10.0.0.1", 6, 8000, "NEW")]
    engine.evaluate(_batch(rows))
    assert engine.stats["hits"] == 1 and engine.stats["walks"] == 1


def test_kernel_gives_the_same_answers_unjitted() -> None:
    """The numba kernel and the same code run as plain Python (NUMBA_DISABLE_JIT) agree."""
    import os
    import subprocess
    import sys

    script = (
        "import numpy as np, tests.test_engine as t;"
        "from compiler.lower import lower; from dataplane.engine import Engine;"
        "rng = np.random.default_rng(3);"
        "addrs = [f'10.0.0.{i}' for i in range(1, 60)] + ['192.168.7.1', '192.168.1.1'];"
        "rows = [(addrs[rng.integers(len(addrs))], addrs[rng.integers(len(addrs))], 6,"
        " int(rng.integers(7999, 8012)), 'NEW') for _ in range(400)]\n"
        "rs = lower(t._scan_cluster())\n"
        "for on in (True, False):\n"
        " e = Engine(rs, cache_size=64, policy_index=on)\n"
        " ok, rule = e.evaluate_explained(t._batch(rows))\n"
        " print(''.join('1' if v else '0' for v in ok), rule.tolist(), e.stats['indexed'] > 0)"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    outs = [
        subprocess.run(
            [sys.executable, "-c", script],
            cwd=root,
            env={**os.environ, "NUMBA_DISABLE_JIT": flag},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for flag in ("0", "1")
    ]
    assert outs[0] == outs[1]
    indexed, walked = outs[0].splitlines()
    assert indexed.endswith("True") and walked.endswith("False")  # both paths were taken
    assert indexed.rsplit(" ", 1)[0] == walked.rsplit(" ", 1)[0]
    assert "1" in indexed.split()[0] and "0" in indexed.split()[0]


def _radix_lookup(l1: np.ndarray, l2: np.ndarray, starts: np.ndarray, q: np.ndarray) -> np.ndarray:
    """The kernel's IPv4 piece lookup, vectorised: bucket, then the last start <= q in it."""
    e = l1[q >> 16]
    i = (((q & 0xFFFF) - ((e >> 5) & 0xFFFF)) >> (e & 31)) + 1
    at = ((e >> 21) & 0x7FFFFF) + np.minimum(np.maximum(i, 0), (e >> 44) + 1)
    lo, hi = l2[at].astype(np.int64), l2[at + 1].astype(np.int64)
    found = lo.copy()
    for k in range(int((hi - lo).max()) + 1):
        step = np.minimum(lo + k, hi)
        found = np.where(starts[step] <= q, step, found)
    return found


@pytest.mark.parametrize("layout", ["dense", "sparse", "mixed", "edges"])
def test_radix_index_finds_the_piece_binary_search_finds(layout: str) -> None:
    from dataplane.classes import radix_index

    rng = np.random.default_rng(11)
    parts = {
        "dense": [167772416 + np.arange(3000)],  # 10.0.1.0 onwards, one address per piece
        "sparse": [rng.integers(0, 2**32, 500)],
        "mixed": [167772416 + np.arange(0, 4000, 3), rng.integers(0, 2**32, 200), [2**32 - 1]],
        "edges": [[1, 65535, 65536, 65537, 2**32 - 65536, 2**32 - 1]],
    }[layout]
    starts = np.unique(np.concatenate([[0], *parts]).astype(np.int64))
    l1, l2 = radix_index(starts.astype(np.uint32))
    q = np.unique(
        np.concatenate([starts, starts - 1, starts + 1, rng.integers(0, 2**32, 20000), [2**32 - 1]])
    )
    q = q[(q >= 0) & (q < 2**32)]
    expected = np.searchsorted(starts, q, side="right") - 1
    assert (_radix_lookup(l1, l2, starts, q) == expected).all()


def test_marks_with_the_high_bit_set_agree_with_the_walker() -> None:
    """Mark values and masks are stored as 32-bit patterns in the rule code."""
    from compiler.tables import Chain, MarkMatch, ProtoMatch, Rule, Ruleset

    high = 0x80000001
    entry = Chain(
        "NPEMU-FORWARD",
        (
            Rule((ProtoMatch("tcp"),), "MARK", mark=(high, 0xFFFFFFFF)),
            Rule((MarkMatch(high, 0xFFFFFFFF),), "DROP"),
            Rule((ProtoMatch("udp"),), "MARK", mark=(0x40000000, 0xC0000000)),
            Rule((MarkMatch(0x40000000, 0xC0000000),), "ACCEPT"),
            Rule((), "DROP"),
        ),
    )
    rs = Ruleset(chains={"NPEMU-FORWARD": entry})
    rows = [("10.0.0.1", "10.0.0.2", p, 80, "NEW") for p in (6, 17, 1)]
    fast, decider = Engine(rs).evaluate_explained(_batch(rows))
    walker = Walker(rs)
    traces = [walker.walk(Packet.make(s, d, p, port)) for s, d, p, port, _ in rows]
    assert fast.tolist() == [t.verdict == "ACCEPT" for t in traces] == [False, True, False]
    assert decider.tolist() == [1, 3, 4]
