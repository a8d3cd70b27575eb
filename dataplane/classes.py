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
    # int64 rows (key, c0, c1), sorted by key per identity: key is a set index, or sets + a run
    # index, and then [c0, c1) is that run's candidate range in Program.ri_cand
    mem: np.ndarray
    port_class: np.ndarray  # int64 [65536]
    listed: np.ndarray  # uint8 per membership key: 1 = in the lists, 0 = search by address
    identities: dict[int, int]  # family -> number of identities

    def arrays(self) -> tuple[np.ndarray, ...]:
        """The arrays in the order the kernel unpacks them."""
        return (
            self.id_off,
            self.id_start_hi,
            self.id_start_lo,
            self.id_of,
            self.mem_off,
            self.mem,
            self.port_class,
            self.listed,
        )


def build_classes(program: Program, seed: int = 0x6E70656D75) -> Classes:
    rng = np.random.default_rng(seed)
    n_sets = len(program.s_family)
    starts: list[list[int]] = []
    ids: list[np.ndarray] = []
    pairs: list[np.ndarray] = []
    id_off = [0]
    identities: dict[int, int] = {}
    base = 0
    wide = np.zeros(width_of(program), dtype=bool)
    for fam in (4, 6):
        cut_list, local, fam_pairs, fam_wide = _family_classes(program, fam, rng, n_sets)
        wide |= fam_wide
        starts.append(cut_list)
        ids.append(local + base)
        fam_pairs[:, 0] += base
        pairs.append(fam_pairs)
        id_off.append(id_off[-1] + len(cut_list))
        identities[fam] = int(local.max()) + 1
        base += identities[fam]
    no_identity = base
    hi, lo = split128([v for chunk in starts for v in chunk])
    table = np.concatenate(pairs)  # rows: identity, key, c0, c1; sorted, unique per family
    mem_off = np.zeros(no_identity + 2, dtype=np.int64)
    mem_off[1:] = np.cumsum(np.bincount(table[:, 0], minlength=no_identity + 1))
    return Classes(
        id_off=np.array(id_off, dtype=np.int64),
        id_start_hi=hi,
        id_start_lo=lo,
        id_of=np.concatenate(ids).astype(np.int64),
        no_identity=no_identity,
        mem_off=mem_off,
        mem=np.ascontiguousarray(table[:, 1:]),
        port_class=_port_classes(program),
        listed=(~wide).astype(np.uint8),
        identities=identities,
    )


def _family_classes(
    program: Program, family: int, rng: np.random.Generator, n_sets: int
) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
    """(first address of each elementary piece, identity per piece, membership rows, which
    membership keys are too wide to list)."""
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

    # every (set interval or run piece) as a range of elementary pieces, with key and candidates
    sa, sb = pieceexpand_ranges(set_starts, set_ends)
    ra, rb = pieceexpand_ranges(run_starts, run_ends)
    A = np.concatenate([sa, ra])
    B = np.concatenate([sb, rb])
    n_set_rows = len(sa)
    K = np.concatenate([set_keys, run_keys]).astype(np.int64)
    c0 = np.concatenate([np.full(n_set_rows, -1, dtype=np.int64), program.ri_coff[rrows]])
    c1 = np.concatenate([np.full(n_set_rows, -1, dtype=np.int64), program.ri_coff[rrows + 1]])
    # A key whose intervals span many pieces (a wide CIDR over thousands of pods) would add a row
    # to every identity it covers; such keys stay unlisted and the kernel searches their
    # intervals by address instead.
    span = np.bincount(K, weights=B - A, minlength=width_of(program))
    count = np.bincount(K, minlength=width_of(program))
    wide = span > 4 * count + WIDE_PIECES
    keep = ~wide[K]

    # identities: the pieces' set signatures (sets only: run keys are sets already)
    owner = K[:n_set_rows]
    r = rng.integers(0, 2**64, size=(max(n_sets, 1), 2), dtype=np.uint64)[owner]
    sig = []
    with np.errstate(over="ignore"):
        for col in (0, 1):
            h = np.zeros(n_pieces + 1, dtype=np.uint64)
            np.add.at(h, A[:n_set_rows], r[:, col])
            np.subtract.at(h, B[:n_set_rows], r[:, col])
            sig.append(np.cumsum(h[:-1], dtype=np.uint64))
    _, identity = np.unique(np.stack(sig, axis=1), axis=0, return_inverse=True)
    identity = identity.ravel().astype(np.int64)

    # membership rows: each range expanded to its pieces, then to identities, deduplicated
    lengths = np.where(keep, B - A, 0)
    row = np.repeat(np.arange(len(A)), lengths)
    piece = expand_ranges(A, lengths)
    width = width_of(program)
    combined = identity[piece] * width + K[row]
    _, first = np.unique(combined, return_index=True)  # sorted by (identity, key)
    picked = row[first]
    table = np.stack(
        [
            identity[piece[first]],
            K[picked],
            c0[picked],
            c1[picked],
        ],
        axis=1,
    )
    return ordered.tolist(), identity, table, wide


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
