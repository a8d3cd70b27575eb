"""The policy index's own parts: its hash table, and where it gives way to the walk."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from compiler.lower import lower
from compiler.tables import AddrMatch, Chain, Rule
from dataplane.engine import Engine
from dataplane.engine_kernel import peer_mask
from dataplane.policy_index import HASH_MUL, PEER_BUCKET, hash_table

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
    assert (listed.index.arrays[6][:, 0] != 0).sum() > 1000  # pairs in the table...
    assert (searched.index.arrays[6][:, 0] != 0).sum() == 0  # ...and none: all searched
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
