"""The policy index's own parts: its hash table, and where it gives way to the walk."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from compiler.lower import lower
from compiler.tables import AddrMatch, Chain, Rule
from dataplane.engine import Engine
from dataplane.engine_kernel import filter_mask, peer_mask
from dataplane.policy_index import BLOCK_BITS, HASH_MUL, PEER_BUCKET, hash_table

from .test_engine import _batch, _scan_cluster, assert_as_walked, scan_rows


@pytest.mark.parametrize("compiled", [True, False], ids=["jit", "python"])
def test_peer_table_finds_every_key_and_no_other(compiled: bool) -> None:
    """Keys crowded into a small table overflow their buckets; the reader still finds each
    key's mask, and 0 for keys never stored."""
    rng = np.random.default_rng(3)
    keys = np.unique(rng.integers(1, 2**40, size=3000, dtype=np.uint64))[:1500]
    masks = rng.integers(1, 2**63, size=len(keys), dtype=np.uint64)
    table, shift = hash_table(keys, np.stack([keys, masks], axis=1), 2, PEER_BUCKET)
    assert (table[:, 0] != 0).sum() == len(keys) and len(table) <= 4 * len(keys)
    with np.errstate(over="ignore"):
        home = ((keys * HASH_MUL) >> shift[0]) << np.uint64(2)
    where = {int(k): i for i, k in enumerate(table[:, 0])}
    overflowed = sum(not (h <= where[int(k)] < h + 4) for k, h in zip(keys, home, strict=True))
    assert overflowed > 10  # the reader's path past a full bucket is exercised
    read = peer_mask if compiled else peer_mask.py_func
    with np.errstate(over="ignore"):
        assert [int(read(table, shift, k)) for k in keys] == masks.tolist()
        absent = [k for k in rng.integers(1, 2**40, size=500, dtype=np.uint64) if k not in where]
        assert all(read(table, shift, k) == 0 for k in absent)


@pytest.mark.parametrize("compiled", [True, False], ids=["jit", "python"])
@pytest.mark.parametrize("distinct", [3, 2**40], ids=["shared-masks", "own-masks"])
def test_peer_filter_finds_every_pair_and_no_other(compiled: bool, distinct: int) -> None:
    """Pairs scattered over rows of several blocks: the reader finds each pair's mask, from
    the block's head when all its pairs share one, else from its rank and the bits before it,
    and 0 for any other position. Only the mixed blocks' masks are listed."""
    from dataplane.policy_index import FILTER_BLOCK, UNIFORM, _peer_filter

    rng = np.random.default_rng(5)
    n_rows, row_blocks = 3, 4
    width = row_blocks * BLOCK_BITS
    positions = np.unique(rng.integers(0, n_rows * width, size=2000, dtype=np.uint64))
    masks = rng.integers(1, distinct + 1, size=len(positions), dtype=np.uint64)
    masks[positions // np.uint64(BLOCK_BITS) == 5] = 7  # one block shares a mask
    # a block whose one mask has the head's flag bit (atom 63) keeps it listed
    masks[positions // np.uint64(BLOCK_BITS) == 9] = np.uint64(UNIFORM)
    pfilter, pmask = _peer_filter(positions, masks, n_rows, row_blocks)
    heads = pfilter.reshape(-1, FILTER_BLOCK)[:, 0]
    uniform = heads >= np.uint64(UNIFORM)
    in_mixed = ~uniform[(positions // np.uint64(BLOCK_BITS)).astype(np.int64)]
    assert uniform.any() and in_mixed.any()  # both ways of reading are exercised
    assert pmask.tolist() == masks[in_mixed].tolist()
    read = filter_mask if compiled else filter_mask.py_func
    listed = dict(zip(positions.tolist(), masks.tolist(), strict=True))
    for pos in range(n_rows * width):
        row, ident = divmod(pos, width)
        assert int(read(pfilter, pmask, row, ident)) == listed.get(pos, 0), pos


def test_index_turns_off_for_tables_of_another_shape_and_engine_still_agrees() -> None:
    """An entry-chain rule the index cannot summarise turns it off, with the reason; the
    engine then answers from the cache and the walk, with the same verdicts."""
    rs = lower(_scan_cluster())
    entry = rs.chains[rs.entry]
    odd = Rule(matches=(AddrMatch("10.0.0.4/32", "src"), AddrMatch("10.0.0.6/32", "dst")),
               target="DROP")  # fmt: skip
    # after the conntrack rules, before the exemptions and dispatch
    rules = (*entry.rules[:2], odd, *entry.rules[2:])
    odd_rs = dataclasses.replace(
        rs, chains={**rs.chains, rs.entry: Chain(entry.name, rules, entry.comment, entry.owner)}
    )
    engine = Engine(odd_rs)
    assert not engine.index.enabled
    assert "entry chain rule 2" in engine.index.reason
    # 10.0.0.4 and 10.0.0.7 are app a0 pods, which pol2 lets reach 10.0.0.6 on 8002-8007
    rows = [("10.0.0.4", "10.0.0.6", 6, 8002, "NEW"), ("10.0.0.7", "10.0.0.6", 6, 8002, "NEW"),
            ("10.0.0.6", "10.0.0.4", 6, 8002, "NEW")]  # fmt: skip
    ok, _ = engine.evaluate_explained(_batch(rows))
    plain, _ = Engine(rs).evaluate_explained(_batch(rows))
    assert plain.tolist() == [True, True, False]
    assert ok.tolist() == [False, True, False]  # the new rule drops the first packet only
    assert engine.stats["indexed"] == engine.stats["policies_consulted"] == 0
    assert engine.stats["walks"] > 0


def test_wide_peer_sets_are_searched_and_agree_with_the_walker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With no room in the peer table, every peer set is searched in the peer identity's
    membership list instead: the index still decides every packet, as the walk would."""
    from dataplane import policy_index

    rs = lower(_scan_cluster())
    rows = scan_rows(11, 2000, ["192.168.7.9", "192.168.8.9"])
    listed = Engine(rs)
    monkeypatch.setattr(policy_index, "PAIR_BUDGET", 0)
    searched = Engine(rs)
    assert searched.index.enabled
    assert sum(listed.index.pairs) > 1000  # pairs listed...
    assert searched.index.pairs == (0, 0)  # ...and none: all searched
    ok, decider = searched.evaluate_explained(_batch(rows))
    assert searched.stats["indexed"] == len(rows)
    assert_as_walked(rs, searched, rows, ok, decider)


def test_budget_searches_the_widest_sets_first_and_drops_what_it_cannot_search(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dataplane import policy_index

    ids = np.arange
    summaries = {
        10: (0, [], [(0, ids(50), 3), (1, ids(5), 4)]),
        20: (0, [], [(0, ids(30), -1)]),  # an intersection of sets: cannot be searched
        30: (0, [], [(0, ids(8), -1)]),
    }
    monkeypatch.setattr(policy_index, "PAIR_BUDGET", 43)
    kept = dict(summaries)
    assert policy_index._within_budget(kept) == {(10, 0)} and kept == summaries  # 93 - 50
    monkeypatch.setattr(policy_index, "PAIR_BUDGET", 20)
    kept = dict(summaries)
    assert policy_index._within_budget(kept) == {(10, 0), (10, 1)}
    assert set(kept) == {10, 30}  # 38 pairs left after searching: the widest chain goes


def test_peer_filter_lists_each_pair_once_with_its_rank_narrowest_chains_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The filter has a bit per (policy chain, peer identity) pair, and each block starts with
    its pairs' one mask or, when they have several, the number of masks listed before it; the
    peer table keeps only the chains without a row. On a budget of one row, the row is the
    narrowest chain's, and the answers stay the walker's."""
    from dataplane import policy_index
    from dataplane.policy_index import FILTER_BLOCK, UNIFORM

    rs = lower(_scan_cluster())
    monkeypatch.setattr(policy_index, "FILTER_BUDGET", 0)
    unfiltered = Engine(rs)
    keys = unfiltered.index.arrays[6][:, 0]
    _, widths = np.unique(keys[keys != 0] >> np.uint64(32), return_counts=True)
    assert unfiltered.index.filter_rows == 0 and unfiltered.index.pairs == (0, widths.sum())
    monkeypatch.undo()

    full = Engine(rs)
    assert full.index.filter_rows == len(widths) > 1 and full.index.pairs == (widths.sum(), 0)
    blocks = full.index.arrays[8].reshape(-1, FILTER_BLOCK)
    per_block = np.unpackbits(blocks[:, 1:].copy().view(np.uint8), axis=1).sum(axis=1)
    uniform = blocks[:, 0] >= np.uint64(UNIFORM)  # a head holding its pairs' one mask
    assert uniform.any()  # a policy chain's peers share their mask
    listed = np.where(uniform, 0, per_block)
    ranks = np.r_[0, np.cumsum(listed)[:-1]]
    assert blocks[~uniform, 0].tolist() == ranks[~uniform].tolist()
    per_row = per_block.reshape(len(widths), -1).sum(axis=1)
    assert sorted(per_row.tolist()) == sorted(widths.tolist())
    assert len(full.index.arrays[9]) == max(listed.sum(), 1)  # a mask per pair not in a head

    row_bytes = full.index.arrays[8].nbytes // len(widths)
    monkeypatch.setattr(policy_index, "FILTER_BUDGET", row_bytes)
    one_row = Engine(rs)
    assert one_row.index.filter_rows == 1
    assert one_row.index.pairs == (widths.min(), widths.sum() - widths.min())
    rows = scan_rows(12, 2000, ["192.168.7.9", "192.168.8.9"])
    for engine in (full, one_row):
        ok, decider = engine.evaluate_explained(_batch(rows))
        assert engine.stats["indexed"] == len(rows)
        assert_as_walked(rs, engine, rows, ok, decider)


def _satisfies(atom: tuple[int, int, int, int, int], fam: int, proto: int, port: int) -> bool:
    """A rule's family, -p and --dport matches, as netfilter reads them."""
    a_fam, a_proto, lo, hi, _ = atom
    if a_fam not in (0, fam) or a_proto not in (-1, proto):
        return False
    return lo < 0 or (proto in (6, 17, 132) and lo <= port <= hi)


def test_admit_table_gives_the_atoms_each_packet_satisfies() -> None:
    """For every family, protocol and port, the admit table's word for each chain is the set of
    its atoms the packet satisfies."""
    from types import SimpleNamespace

    from dataplane.policy_index import _admit_table

    chains = [
        [(0, 6, 80, 80, -1), (0, 17, 53, 53, -1), (4, 132, 3000, 3999, -1)],
        [(0, -1, -1, -1, -1)],  # every protocol and port
        [(6, 6, -1, -1, -1), (0, 6, 8000, 8080, 7), (0, 6, 8080, 9000, -1)],
        [],
        [(4, -1, 80, 80, -1), (0, 17, 0, 65535, -1)],  # a port without a protocol
    ]
    cuts = np.zeros(65537, dtype=np.int64)
    for atoms in chains:
        for _, _, lo, hi, _ in atoms:
            if lo >= 0:
                cuts[lo] = cuts[hi + 1] = 1
    port_class = (np.cumsum(cuts[:65536]) - cuts[0]).astype(np.int32)
    port_row, port_key, admit = _admit_table(chains, SimpleNamespace(port_class=port_class))
    assert admit.shape[1] == len(chains) and len(admit) < 8 * (port_class.max() + 1)
    bounds = [p for atoms in chains for _, _, lo, hi, _ in atoms for p in (lo, hi) if p >= 0]
    ports = sorted({0, 65535} | {p + d for p in bounds for d in (-1, 0, 1)} - {-1, 65536})
    for fam in (4, 6):
        for proto in (6, 17, 132, 1, 58, 47):
            for port in ports:
                key = port_key[port_row[int(fam == 6), proto], port_class[port]]
                for c, atoms in enumerate(chains):
                    want = sum(
                        1 << b for b, a in enumerate(atoms) if _satisfies(a, fam, proto, port)
                    )
                    assert int(admit[key, c]) == want, (fam, proto, port, c)


def test_admit_table_is_off_past_its_budget_or_for_another_protocol(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from types import SimpleNamespace

    from dataplane import policy_index

    classes = SimpleNamespace(port_class=np.zeros(65536, dtype=np.int32))
    assert len(policy_index._admit_table([[(0, 6, -1, -1, -1)]], classes)[2]) == 2  # TCP, other
    assert len(policy_index._admit_table([[(0, 1, -1, -1, -1)]], classes)[2]) == 0  # ICMP atom
    monkeypatch.setattr(policy_index, "ADMIT_BUDGET", 8)
    assert len(policy_index._admit_table([[(0, 6, -1, -1, -1)]], classes)[2]) == 0
    # a port class per port and 200 distinct atoms: working the keys out alone would take
    # 8 x 65,536 x 200 bytes, past the default budget, so it is not tried
    monkeypatch.undo()
    every_port = SimpleNamespace(port_class=np.arange(65536, dtype=np.int32))
    atoms = [[(0, 6, p, p, -1) for p in range(i, i + 50)] for i in range(0, 200, 50)]
    assert len(policy_index._admit_table(atoms, every_port)[2]) == 0
    few_classes = SimpleNamespace(port_class=np.minimum(np.arange(65536), 51).astype(np.int32))
    assert len(policy_index._admit_table(atoms[:1], few_classes)[2]) > 0  # 8 x 52 x 50 bytes
