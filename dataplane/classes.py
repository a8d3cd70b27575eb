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

from .program import M_PORT, Program, split128

_SPACE = {4: 1 << 32, 6: 1 << 128}


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
    for fam in (4, 6):
        cut_list, local, fam_pairs = _family_classes(program, fam, rng, n_sets)
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
        identities=identities,
    )


def _family_classes(
    program: Program, family: int, rng: np.random.Generator, n_sets: int
) -> tuple[list[int], np.ndarray, np.ndarray]:
    """(first address of each elementary piece, identity per piece, membership rows)."""
    space = _SPACE[family]
    sets = program.set_intervals(family)
    runs = _run_intervals(program, family)
    cuts = {0}
    for _, s_starts, s_ends in sets:
        cuts.update(s_starts.tolist())
        cuts.update(e + 1 for e in s_ends.tolist() if e + 1 < space)
    ordered = sorted(cuts)
    index = {c: i for i, c in enumerate(ordered)}
    n_pieces = len(ordered)

    def piece_range(start: int, end: int) -> tuple[int, int]:
        return index[start], (index[end + 1] if end + 1 < space else n_pieces)

    # every (set or run piece) as a range of elementary pieces, with its key and candidates
    a_idx: list[int] = []
    b_idx: list[int] = []
    keys: list[int] = []
    c0: list[int] = []
    c1: list[int] = []
    for s, s_starts, s_ends in sets:
        for start, end in zip(s_starts.tolist(), s_ends.tolist(), strict=True):
            a, b = piece_range(start, end)
            a_idx.append(a)
            b_idx.append(b)
            keys.append(s)
            c0.append(-1)
            c1.append(-1)
    n_set_rows = len(keys)
    for u, start, end, lo, hi in runs:
        a, b = piece_range(start, end)
        a_idx.append(a)
        b_idx.append(b)
        keys.append(n_sets + u)
        c0.append(lo)
        c1.append(hi)
    A = np.array(a_idx, dtype=np.int64)
    B = np.array(b_idx, dtype=np.int64)

    # identities: the pieces' set signatures (sets only: run keys are sets already)
    owner = np.array(keys[:n_set_rows], dtype=np.int64)
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
    lengths = B - A
    total = int(lengths.sum())
    row = np.repeat(np.arange(len(A)), lengths)
    piece = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths) + A[row]
    K = np.array(keys, dtype=np.int64)
    width = n_sets + len(program.run_dir) + 1
    combined = identity[piece] * width + K[row]
    _, first = np.unique(combined, return_index=True)  # sorted by (identity, key)
    picked = row[first]
    table = np.stack(
        [
            identity[piece[first]],
            K[picked],
            np.array(c0, dtype=np.int64)[picked],
            np.array(c1, dtype=np.int64)[picked],
        ],
        axis=1,
    )
    return ordered, identity, table


def _run_intervals(program: Program, family: int) -> list[tuple[int, int, int, int, int]]:
    """(run, start, end, first candidate, end of candidates) for every piece of every run."""
    out = []
    slot = 0 if family == 4 else 1
    for u in range(len(program.run_dir)):
        a, b = int(program.run_off[2 * u + slot]), int(program.run_off[2 * u + slot + 1])
        for i in range(a, b):
            start = (int(program.ri_start_hi[i]) << 64) | int(program.ri_start_lo[i])
            end = (int(program.ri_end_hi[i]) << 64) | int(program.ri_end_lo[i])
            out.append((u, start, end, int(program.ri_coff[i]), int(program.ri_coff[i + 1])))
    return out


def _port_classes(program: Program) -> np.ndarray:
    """Port -> class: pieces of 0..65535 cut at every port match's bounds."""
    ports = program.m_kind == M_PORT
    cuts = np.zeros(65537, dtype=np.int64)
    cuts[program.m_b[ports]] = 1
    cuts[program.m_c[ports] + 1] = 1
    cuts[0] = 0
    return np.cumsum(cuts[:65536])
