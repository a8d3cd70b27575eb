"""Equivalence classes of packet fields: address identities and port classes.

Two addresses that belong to exactly the same address sets of a Program are indistinguishable to
every rule, so they share an *identity* (Cilium's word); two destination ports inside the same
piece between port-match bounds share a *port class*. A packet's verdict is therefore a function
of (family, source identity, destination identity, protocol, port class, ct state), which is what
the engine caches on.

Identities are found without listing memberships first: each set draws two random 64-bit
numbers and adds them over the elementary address pieces it covers (a difference array); pieces
with the same two sums belong to the same sets (a 2**-128 collision chance per pair). Then each
identity gets its *membership list*: the sets that contain it and, for every run of the Program
that can match it, the run's candidate rules. The kernel tests "address in set" and looks runs up
with a short binary search in that one contiguous list, instead of searching each set's
intervals: a walk touches a few cache lines whatever the rule count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .program import M_PORT, Program, expand_ranges, split128

_SPACE = {4: 1 << 32, 6: 1 << 128}
WIDE_PIECES = 256  # pieces a key may span beyond 4 per interval before it stays unlisted


@dataclass
class Classes:
    id_off: np.ndarray  # int64 [3]: family 4 pieces [0, 1), family 6 pieces [1, 2)
    id_start_hi: np.ndarray  # uint64: first address of each elementary piece
    id_start_lo: np.ndarray
    id_of: np.ndarray  # int64: identity of each piece (global over both families)
    no_identity: int  # the identity of non-IP packets: member of nothing
    mem_off: np.ndarray  # int64 [identities + 2] into mem rows
    # membership rows sorted by key per identity: the key is a set index, or sets + a run index,
    # and then the value c0 << 32 | c1 says [c0, c1) is that run's range in Program.ri_cand. The
    # keys are int32 and apart from the values, so a binary search touches few cache lines.
    mem_key: np.ndarray  # int32
    mem_val: np.ndarray  # int64
    port_class: np.ndarray  # int32 [65536]
    listed: np.ndarray  # uint8 per membership key: 1 = in the lists, 0 = search by address
    identities: dict[int, int]  # family -> number of identities
    # IPv4 pieces again, as uint32 starts with a two-level radix index (``radix_index``)
    v4_start: np.ndarray  # uint32
    v4_l1: np.ndarray  # int64 [65536]
    v4_l2: np.ndarray  # int32

    def arrays(self) -> tuple[np.ndarray, ...]:
        """The arrays in the order the kernel unpacks them."""
        return (
            self.id_off,
            self.id_start_hi,
            self.id_start_lo,
            self.id_of.astype(np.int32),
            self.mem_off.astype(np.int32),
            self.mem_key,
            self.mem_val,
            self.port_class,
            self.listed,
            self.v4_start,
            self.v4_l1,
            self.v4_l2,
        )


def build_classes(program: Program, seed: int = 0x6E70656D75) -> Classes:
    rng = np.random.default_rng(seed)
    n_sets = len(program.s_family)
    starts: list[list[int]] = []
    ids: list[np.ndarray] = []
    pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    id_off = [0]
    identities: dict[int, int] = {}
    base = 0
    wide = np.zeros(width_of(program), dtype=bool)
    for fam in (4, 6):
        cut_list, local, fam_pairs, fam_wide = _family_classes(program, fam, rng, n_sets)
        wide |= fam_wide
        starts.append(cut_list)
        ids.append(local + base)
        pairs.append((fam_pairs[0] + base, fam_pairs[1], fam_pairs[2]))
        id_off.append(id_off[-1] + len(cut_list))
        identities[fam] = int(local.max()) + 1
        base += identities[fam]
    no_identity = base
    hi, lo = split128([v for chunk in starts for v in chunk])
    owner = np.concatenate([t[0] for t in pairs])  # rows: sorted, unique per family
    mem_off = np.zeros(no_identity + 2, dtype=np.int64)
    mem_off[1:] = np.cumsum(np.bincount(owner, minlength=no_identity + 1))
    del owner
    v4_start = np.asarray(starts[0], dtype=np.uint32)
    v4_l1, v4_l2 = radix_index(v4_start)
    return Classes(
        id_off=np.array(id_off, dtype=np.int64),
        id_start_hi=hi,
        id_start_lo=lo,
        id_of=np.concatenate(ids).astype(np.int64),
        no_identity=no_identity,
        mem_off=mem_off,
        mem_key=np.concatenate([t[1] for t in pairs]).astype(np.int32),
        mem_val=np.concatenate([t[2] for t in pairs]),
        port_class=_port_classes(program).astype(np.int32),
        listed=(~wide).astype(np.uint8),
        identities=identities,
        v4_start=v4_start,
        v4_l1=v4_l1,
        v4_l2=v4_l2,
    )


RADIX_FILL = 1  # pieces a radix bucket may start, where the /16's budget of buckets allows


def radix_index(starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A two-level index over sorted IPv4 piece starts (``starts[0] == 0``).

    The top 16 bits of an address pick ``l1[top] = buckets << 44 | offset << 21 | base << 5 |
    shift``; of the low 16 bits, ``i = clamp(((low - base) >> shift) + 1, 0, buckets + 1)``
    picks a bucket whose piece is among ``l2[offset + i] .. l2[offset + i + 1]``. ``base`` is the first piece start in
    the /16 and the buckets cover its pieces' span only (pod addresses crowd into a corner of
    their /16), as coarse as holds at most RADIX_FILL piece starts each within a budget of 16
    buckets per piece: a lookup is two reads and a search over a few pieces however many there
    are, where a binary search over thousands of pieces misses the cache step after step."""
    starts = starts.astype(np.int64)
    top = starts >> 16
    count = np.bincount(top, minlength=1 << 16)
    bounds = np.searchsorted(top, np.arange((1 << 16) + 1))
    shift = np.full(1 << 16, 16, dtype=np.int64)
    base = np.zeros(1 << 16, dtype=np.int64)
    buckets = np.zeros(1 << 16, dtype=np.int64)
    for t in np.flatnonzero(count):
        low = starts[bounds[t] : bounds[t + 1]] & 0xFFFF
        first, span = int(low[0]), int(low[-1] - low[0])
        s = 16
        while s > 0 and (span >> (s - 1)) < 16 * count[t]:
            if np.bincount((low - first) >> s).max() <= RADIX_FILL:
                break
            s -= 1
        shift[t], base[t], buckets[t] = s, first, (span >> s) + 1
    entries = buckets + 3
    offset = np.cumsum(entries) - entries
    l1 = (buckets << 44) | (offset << 21) | (base << 5) | shift
    owner = np.repeat(np.arange(1 << 16, dtype=np.int64), entries)
    i = np.arange(int(entries.sum()), dtype=np.int64) - offset[owner]
    low_edge = base[owner] + ((i - 1) << shift[owner])
    low_edge = np.where(i == 0, 0, np.where(i > buckets[owner], 0xFFFF, low_edge))
    # the last piece starting at or before each bucket's first address
    l2 = np.searchsorted(starts, (owner << 16) + low_edge, side="right") - 1
    return l1, l2.astype(np.int32)


def _family_classes(
    program: Program, family: int, rng: np.random.Generator, n_sets: int
) -> tuple[list[int], np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    """(first address of each elementary piece, identity per piece, membership rows as
    (identity, key, value) sorted by identity then key, which membership keys are too wide to
    list)."""
    space = _SPACE[family]
    dtype = np.int64 if family == 4 else object  # IPv6 addresses stay Python ints
    set_ids = np.flatnonzero(program.s_family == family)
    lens = program.s_off[set_ids + 1] - program.s_off[set_ids]
    rows = expand_ranges(program.s_off[set_ids], lens)
    set_starts = _join(program.s_start_hi[rows], program.s_start_lo[rows], dtype)
    set_ends = _join(program.s_end_hi[rows], program.s_end_lo[rows], dtype)
    set_keys = np.repeat(set_ids, lens)
    slot = 0 if family == 4 else 1
    run_lo = program.run_off[slot:-1:2]
    run_lens = program.run_off[slot + 1 :: 2] - run_lo
    rrows = expand_ranges(run_lo, run_lens)
    run_starts = _join(program.ri_start_hi[rrows], program.ri_start_lo[rrows], dtype)
    run_ends = _join(program.ri_end_hi[rrows], program.ri_end_lo[rrows], dtype)
    run_keys = n_sets + np.repeat(np.arange(len(run_lens)), run_lens)

    ends_next = set_ends + 1
    ordered = np.unique(
        np.concatenate([np.array([0], dtype=dtype), set_starts, ends_next[ends_next < space]])
    )
    n_pieces = len(ordered)

    def pieceexpand_ranges(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        nxt = ends + 1
        inside = nxt < space
        b = np.full(len(ends), n_pieces, dtype=np.int64)
        b[inside] = np.searchsorted(ordered, nxt[inside])
        return np.searchsorted(ordered, starts).astype(np.int64), b

    # every (set interval or run piece) as a range of elementary pieces, with its key; int32
    # and freed early, since there are millions of them for tens of thousands of pods
    sa, sb = pieceexpand_ranges(set_starts, set_ends)
    del set_starts, set_ends
    ra, rb = pieceexpand_ranges(run_starts, run_ends)
    del run_starts, run_ends
    A = np.concatenate([sa, ra]).astype(np.int32)
    B = np.concatenate([sb, rb]).astype(np.int32)
    del sa, sb, ra, rb
    n_set_rows = len(set_keys)
    K = np.concatenate([set_keys, run_keys]).astype(np.int32)
    del run_keys
    # A key whose intervals span many pieces (a wide CIDR over thousands of pods) would add a row
    # to every identity it covers; such keys stay unlisted and the kernel searches their
    # intervals by address instead.
    width = width_of(program)
    lengths = (B - A).astype(np.int64)
    span = np.bincount(K, weights=lengths, minlength=width)
    count = np.bincount(K, minlength=width)
    wide = span > 4 * count + WIDE_PIECES
    lengths[wide[K]] = 0
    del span, count

    # identities: the pieces' set signatures (sets only: run keys are sets already)
    r = rng.integers(0, 2**64, size=(max(n_sets, 1), 2), dtype=np.uint64)[set_keys]
    sig = np.zeros((n_pieces, 2), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for col in (0, 1):
            h = np.zeros(n_pieces + 1, dtype=np.uint64)
            np.add.at(h, A[:n_set_rows], r[:, col])
            np.subtract.at(h, B[:n_set_rows], r[:, col])
            np.cumsum(h[:-1], dtype=np.uint64, out=sig[:, col])
    del r, h, B
    _, identity = np.unique(sig, axis=0, return_inverse=True)
    identity = identity.ravel().astype(np.int64)
    del sig

    # membership rows: each range expanded to its pieces, then to identities, deduplicated
    row = np.repeat(np.arange(len(A), dtype=np.int32), lengths)
    piece = expand_ranges(A, lengths)
    del A, lengths
    combined = identity[piece] * width + K[row]
    del piece
    keys, first = np.unique(combined, return_index=True)  # sorted by (identity, key)
    del combined
    picked = row[first].astype(np.int64)
    del row, first
    # a run row's value: its piece's candidate range [c0, c1) in Program.ri_cand
    run_row = np.maximum(picked - n_set_rows, 0)
    value = np.full(len(picked), -1, dtype=np.int64)
    if len(rrows):
        coff = program.ri_coff.astype(np.int64)
        at = rrows[run_row]
        value = np.where(picked >= n_set_rows, (coff[at] << 32) | coff[at + 1], value)
    return ordered.tolist(), identity, (keys // width, keys % width, value), wide


def _join(hi: np.ndarray, lo: np.ndarray, dtype: type) -> np.ndarray:
    if dtype is np.int64:  # IPv4: the high word is 0
        return lo.astype(np.int64)
    return np.array([(int(h) << 64) | int(x) for h, x in zip(hi, lo, strict=True)], dtype=object)


def width_of(program: Program) -> int:
    """Membership keys: sets first, then runs."""
    return len(program.s_family) + len(program.run_dir) + 1


def _port_classes(program: Program) -> np.ndarray:
    """Port -> class: pieces of 0..65535 cut at every port match's bounds."""
    ports = program.m_kind == M_PORT
    cuts = np.zeros(65537, dtype=np.int64)
    cuts[program.m_b[ports]] = 1
    cuts[program.m_c[ports] + 1] = 1
    cuts[0] = 0
    return np.cumsum(cuts[:65536])
