"""The policy index: a NEW packet's verdict from a few independent table lookups.

A walk of the Program follows one rule after another, and at 100k rules each step is a cache miss
that depends on the one before. For tables of the shape ``compiler.lower`` produces (see
``compiler/tables.py``) the walk's outcome can be read off precomputed tables instead:

- the entry chain's leading conntrack rules decide by ct state alone;
- a node exemption (``-m set A src -m set B dst -j ACCEPT``) matches when the source identity is
  in A and the destination identity in B: each identity lists the exemptions it can start or end;
- a dispatch rule (``-s POD_IP -j NPEMU-E-...``) names a single address, which is therefore an
  identity of its own: each identity's row names the per-pod chain records its dispatch rules
  lead to, so the packet's two identities lead straight to them;
- a per-pod chain RETURNs for its own address, else when one of its policy chains sets the
  allow mark, else it DROPs; a policy chain sets the mark when one of its rules matches, and its
  rules differ only in the peer identities they accept and in a few (family, protocol, port range,
  own-side set) *atoms*. So each policy chain gets the bitmask of atoms each peer identity may
  use, plus the mask every identity may use; the pod's own address decides the own-side sets
  once, when its record is built (a mask of the atoms the pod may use). The peer masks are
  listed in a *peer filter*: a row of bits per policy chain, one per identity, in cache-line
  blocks that start with a head word: the block's one mask when all its pairs share it (most
  do), else the number of masks listed before it, so a set bit's mask sits at that rank plus
  the set bits before it in its block. Most lookups find the bit clear and read one line.
  Chains the filter has no room for keep their masks in a hash table of four-slot buckets,
  compared without branching;
- whether the packet satisfies an atom depends only on its family, protocol and port class:
  each (family, protocol, port class) has a *port key*, and a table gives, per port key and
  policy chain, the atoms such a packet satisfies. An allowed peer is then one AND away.

Every lookup is independent of the rule count. The index is built only when the Program has that
shape, rule for rule (else it is off and says why); a packet that reaches a part it could not
summarise (a per-pod chain of another shape, or one that jumps to a policy chain with a peer
set searched by address) falls back to the cache and the walk. Either way the answer, verdict
and deciding rule, is the walk's. The listed pairs have a budget (``PAIR_BUDGET``): past it, the
widest peer sets are tested in the peer identity's membership list (``dataplane.classes``)
instead of listed pair by pair; the filter (``FILTER_BUDGET``) and the admit table
(``ADMIT_BUDGET``) have budgets too, past which chains keep their masks in the hash table and
the kernel visits the atoms one by one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .classes import Classes
from .program import (
    M_CT,
    M_MARK,
    M_PORT,
    M_PROTO,
    M_SET,
    T_ACCEPT,
    T_DROP,
    T_JUMP,
    T_MARK,
    T_RETURN,
    Program,
)

MAX_ATOMS = 64  # one uint64 mask per (policy chain, peer identity)
PEER_BUCKET = 4  # peer-table slots per hash (2 words each: one cache line)
PAIR_BUDGET = 1 << 22  # (policy chain, peer identity) pairs listed, in the filter or the table
HASH_MUL = np.uint64(0x9E3779B97F4A7C15)  # the tables' hash, here and in the kernel
FILTER_BUDGET = 1 << 25  # bytes of the peer filter (one bit per policy chain x identity)
FILTER_BLOCK = 8  # words per filter block (a cache line): the head word, then the row's bits
BLOCK_BITS = 64 * (FILTER_BLOCK - 1)
UNIFORM = 1 << 63  # a filter block's head: its pairs' one mask follows, not their rank
ADMIT_BUDGET = 1 << 26  # bytes of the admit table (a word per port key x policy chain)
PORT_PROTOCOLS = (6, 17, 132)  # TCP, UDP, SCTP: the protocols whose atoms may name ports


@dataclass
class PolicyIndex:
    """``reason`` says why the index is off (empty when it is on)."""

    reason: str
    arrays: tuple[np.ndarray, ...]

    @classmethod
    def off(cls, reason: str) -> PolicyIndex:
        """An index the kernel never consults, with arrays of the kernel's types."""
        return cls(reason, _off_arrays())

    @property
    def enabled(self) -> bool:
        return not self.reason

    @property
    def filter_rows(self) -> int:
        """Policy chains the peer filter has a row for."""
        return int(self.arrays[8].shape[0])

    @property
    def pairs(self) -> tuple[int, int]:
        """(policy chain, peer identity) pairs listed: (in the filter, in the peer table)."""
        bits = self.arrays[8].reshape(-1, FILTER_BLOCK)[:, 1:]  # each block less its head word
        filtered = int(np.unpackbits(np.ascontiguousarray(bits).view(np.uint8)).sum())
        return filtered, int((self.arrays[6][:, 0] != 0).sum())

    @property
    def admit_keys(self) -> int:
        """Port keys in the admit table (0: off, atoms are visited one by one)."""
        return int(self.arrays[12].shape[0])


def _fill(
    words: np.ndarray, rows: np.ndarray, table: np.ndarray, shift: np.uint64, bucket: int
) -> None:
    """Insert rows (column 0 never 0; keys distinct) at their hash words by linear probing,
    every row at once: each round, the first row aiming at each free slot takes it and the rest
    move one slot on (numpy, so building needs no compiled kernel: start-up stays short)."""
    mask = np.uint64(table.shape[0] - 1)
    with np.errstate(over="ignore"):
        at = ((words * HASH_MUL) >> shift) * np.uint64(bucket)
    todo = np.arange(len(rows))
    while len(todo):
        free = table[at[todo], 0] == 0
        slots, first = np.unique(at[todo[free]], return_index=True)
        placed = todo[free][first]
        table[slots] = rows[placed]
        left = np.ones(len(todo), dtype=bool)
        left[np.flatnonzero(free)[first]] = False
        todo = todo[left]
        at[todo] = (at[todo] + np.uint64(1)) & mask


def hash_table(
    words: np.ndarray, rows: np.ndarray, width: int, bucket: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """An open-addressing table of ``rows`` (uint64; column 0 never 0), at most half full, rows
    padded to ``width`` words; and the hash's shift as a one-element array. The hash picks a
    bucket of ``bucket`` slots (a power of two), and a row takes the first free slot from the
    bucket's first on: a reader checks the whole bucket at once and looks further only when
    the bucket is full."""
    size = 2 * bucket
    while size < 2 * len(rows):
        size *= 2
    buckets = size // bucket
    shift = np.uint64(64 - buckets.bit_length() + 1)
    table = np.zeros((size, width), dtype=np.uint64)
    if len(rows):
        padded = np.zeros((len(rows), width), dtype=np.uint64)
        padded[:, : rows.shape[1]] = rows
        _fill(np.ascontiguousarray(words, dtype=np.uint64), padded, table, shift, bucket)
    return table, np.array([shift], dtype=np.uint64)


class _Shape(Exception):
    """The Program is not of the indexed shape (the message says where)."""


class _Reader:
    """Rule-level views of a Program."""

    def __init__(self, program: Program, classes: Classes) -> None:
        self.p = program
        n_chains = len(program.chain_names)
        counts = np.zeros(n_chains, dtype=np.int64)
        index = {name: i for i, name in enumerate(program.chain_names)}
        for name, _, _ in program.rules:
            counts[index[name]] += 1
        self.first = np.zeros(n_chains + 1, dtype=np.int64)
        np.cumsum(counts, out=self.first[1:])
        # every set's member identities (listed sets only)
        owners = np.repeat(
            np.arange(len(classes.mem_off) - 1, dtype=np.int64), np.diff(classes.mem_off)
        )
        order = np.argsort(classes.mem_key, kind="stable")
        self._members_owner = owners[order]
        self._members_at = np.searchsorted(
            classes.mem_key[order], np.arange(len(classes.listed) + 1, dtype=np.int32)
        )
        self.listed = classes.listed
        self.host: dict[int, tuple[int, int, int]] = {}
        for s, name in enumerate(program.set_names):
            if name.startswith("cidr:"):
                a, b = program.s_off[s], program.s_off[s + 1]
                if b - a == 1 and (
                    program.s_start_hi[a] == program.s_end_hi[a]
                    and program.s_start_lo[a] == program.s_end_lo[a]
                ):
                    self.host[s] = (
                        int(program.s_family[s]),
                        int(program.s_start_hi[a]),
                        int(program.s_start_lo[a]),
                    )

    def rules_of(self, chain: int) -> range:
        return range(int(self.first[chain]), int(self.first[chain + 1]))

    def matches(self, k: int) -> list[tuple[int, int, int, int, int]]:
        p = self.p
        return [
            (int(p.m_kind[j]), int(p.m_dir[j]), int(p.m_a[j]), int(p.m_b[j]), int(p.m_c[j]))
            for j in range(int(p.r_moff[k]), int(p.r_moff[k + 1]))
        ]

    def members(self, key: int) -> np.ndarray:
        return self._members_owner[self._members_at[key] : self._members_at[key + 1]]


def build_policy_index(program: Program, classes: Classes) -> PolicyIndex:
    """The index for ``program``, or a disabled one saying why the Program does not fit."""
    try:
        return _build(_Reader(program, classes), classes)
    except _Shape as e:
        return PolicyIndex.off(str(e))


def _off_arrays() -> tuple[np.ndarray, ...]:
    return (
        np.zeros(1, dtype=np.int64),  # on
        np.full(5, -1, dtype=np.int64),  # ct rule per ct state
        np.zeros(5, dtype=np.uint8),  # its verdict
        np.zeros((1, 8), dtype=np.int32),  # per identity: exemption lists, records
        np.zeros(1, dtype=np.int32),  # exemption rules
        np.zeros(1, dtype=np.uint64),  # records
        np.zeros((2, 2), dtype=np.uint64), np.ones(1, dtype=np.uint64),  # peer table
        np.zeros((0, 1), dtype=np.uint64), np.zeros(1, dtype=np.uint64),  # peer filter, masks
        np.zeros((2, 256), dtype=np.uint8), np.zeros((8, 1), dtype=np.int32),  # port keys
        np.zeros((0, 1), dtype=np.uint64),  # admit table
    )  # fmt: skip


# A per-pod chain's record (one per dispatch rule, in rule order, on as few cache lines as its
# size allows: one for a pod with one address and one policy chain) in ``records``:
#   DROP rule (-2: leave the packet to the walk), other side (0 src, 1 dst) | self addresses n
#   << 8 | policy chains m << 32, n x (family, hi, lo), m x (policy record offset | chain
#   number << 32 | SEARCHED, atoms any peer may use, atoms this pod may use: those whose
#   own-side set it is in). The chain number is the peer filter's row and the admit table's
#   column; chains are numbered narrowest first, so the filter's rows go to those it rules out
#   most often.
# A policy chain's record: atoms n, n x atom, then, when its offset in the pod records carries
# SEARCHED, peer sets n, n x (set, atoms its members may use): the peers searched for in the
# peer identity's membership list rather than listed in the peer table.
# atom = family | (protocol + 1) << 8 | (port low + 1) << 24 | port high << 48.
SEARCHED = 1 << 62
LEAVE = -2


def _build(r: _Reader, classes: Classes) -> PolicyIndex:
    p = r.p
    n_ident = len(classes.mem_off) - 1  # with the no-identity one
    ct_rule = np.full(5, -1, dtype=np.int64)
    ct_ok = np.zeros(5, dtype=np.uint8)
    ex_src: list[list[int]] = [[] for _ in range(n_ident)]
    ex_dst: list[list[int]] = [[] for _ in range(n_ident)]
    n_v4 = classes.identities[4]  # IPv4 identities come first

    def family_of(ident: int) -> int:
        return 4 if ident < n_v4 else 6

    dispatch: dict[tuple[int, int, int], list[int]] = {}  # (fam, hi, lo) -> [src rule, dst rule]
    stage = 0  # conntrack rules, then exemptions, then dispatch
    for k in r.rules_of(p.entry):
        ms = r.matches(k)
        target = int(p.r_target[k])
        kinds = [m[0] for m in ms]
        if kinds == [M_CT] and stage == 0 and target in (T_ACCEPT, T_DROP):
            if p.r_family[k]:
                raise _Shape(f"conntrack rule {k} is limited to one family")
            for c in range(5):
                if (ms[0][2] >> c) & 1 and ct_rule[c] < 0:
                    ct_rule[c], ct_ok[c] = k, target == T_ACCEPT
            continue
        if kinds == [M_SET, M_SET] and stage <= 1 and target == T_ACCEPT:
            stage = 1
            (_, d0, s0, _, _), (_, d1, s1, _, _) = ms
            if {d0, d1} != {0, 1} or not (r.listed[s0] and r.listed[s1]):
                raise _Shape(f"exemption rule {k} does not name listed source and destination sets")
            src_set, dst_set = (s0, s1) if d0 == 0 else (s1, s0)
            # an identity is of one family, so a rule of the other never matches it
            rule_family = int(p.r_family[k])
            for ident in r.members(src_set).tolist():
                if not rule_family or family_of(ident) == rule_family:
                    ex_src[ident].append(k)
            for ident in r.members(dst_set).tolist():
                if not rule_family or family_of(ident) == rule_family:
                    ex_dst[ident].append(k)
            continue
        if kinds == [M_SET] and target == T_JUMP and ms[0][2] in r.host:
            stage = 2
            fam, hi, lo = r.host[ms[0][2]]
            if p.r_family[k] not in (0, fam):
                continue  # never matches
            sides = dispatch.setdefault((fam, hi, lo), [-1, -1])
            side = ms[0][1]
            if sides[side] >= 0:
                raise _Shape(f"address named by two dispatch rules ({sides[side]}, {k})")
            sides[side] = k
            continue
        raise _Shape(f"entry chain rule {k} is not a conntrack, exemption or dispatch rule")

    # per-pod chains: what each one is, and which side its policy chains look at
    pods: dict[int, tuple[int, list[tuple[int, int, int]], list[int]] | None] = {}
    policy_side: dict[int, int] = {}
    for sides in dispatch.values():
        for side, k in enumerate(sides):
            ch = int(p.r_jump[k]) if k >= 0 else -1
            if ch >= 0 and ch not in pods:
                pods[ch] = _pod_chain(r, ch)
            shape = pods.get(ch)
            if shape is not None and shape[0] == 1 - side:
                for pc in shape[2]:
                    if policy_side.setdefault(pc, 1 - side) != 1 - side:
                        policy_side[pc] = -1
    marks = {shape[3] for shape in pods.values() if shape is not None}
    if len(marks) > 1:
        raise _Shape("per-pod chains use different marks")
    mark = marks.pop() if marks else 0

    # policy chain records first, then per-pod chain records
    records: list[int] = []
    peer_keys: list[np.ndarray] = []
    peer_bits: list[np.ndarray] = []
    # per summarised policy chain: (record offset | chain number << 32 | SEARCHED when it has
    # searched peer sets, atoms any peer may use, atoms without an own-side set,
    # [(atom bit, own-side set)])
    policy_entry: dict[int, tuple[int, int, int, list[tuple[int, int]]]] = {}
    summaries = {}
    for pc, side in policy_side.items():
        summary = _policy_chain(r, pc, side, mark) if side >= 0 else None
        if summary is not None:
            summaries[pc] = summary
    searched = _within_budget(summaries)
    width = {pc: sum(len(e[1]) for e in s[2]) for pc, s in summaries.items()}
    order = sorted(summaries, key=lambda pc: (width[pc], pc))  # chain numbers, narrowest first
    number = {pc: i for i, pc in enumerate(order)}
    row_blocks = (n_ident + BLOCK_BITS - 1) // BLOCK_BITS
    n_rows = min(len(summaries), FILTER_BUDGET // (8 * FILTER_BLOCK * row_blocks))
    filter_pos: list[np.ndarray] = []
    filter_bits: list[np.ndarray] = []
    for pc, (any_mask, atoms, peers) in summaries.items():
        at = len(records)
        records.append(len(atoms))
        for fam, proto, lo, hi, _own in atoms:
            records.append(fam | (proto + 1) << 8 | (lo + 1) << 24 | max(hi, 0) << 48)
        by_set: dict[int, int] = {}
        for j, (bit, idents, peer_set) in enumerate(peers):
            if (pc, j) in searched:
                by_set[peer_set] = by_set.get(peer_set, 0) | 1 << bit
            elif number[pc] < n_rows:
                filter_pos.append(number[pc] * row_blocks * BLOCK_BITS + idents.astype(np.int64))
                filter_bits.append(np.full(len(idents), 1 << bit, dtype=np.uint64))
            else:
                peer_keys.append(((at + 1) << 32) | idents.astype(np.int64))
                peer_bits.append(np.full(len(idents), 1 << bit, dtype=np.uint64))
        if by_set:
            records.append(len(by_set))
            for peer_set, bits in by_set.items():
                records.extend((peer_set, bits))
        free = sum(1 << bit for bit, atom in enumerate(atoms) if atom[4] < 0)
        owned = [(bit, atom[4]) for bit, atom in enumerate(atoms) if atom[4] >= 0]
        if at >= 1 << 32 or number[pc] >= 1 << 30:
            raise _Shape("the policy chains' records exceed the index's 32-bit offsets")
        policy_entry[pc] = (
            at | number[pc] << 32 | (SEARCHED if by_set else 0),
            any_mask,
            free,
            owned,
        )
    # each dispatch rule names one address (a host set), so the address is an identity of its
    # own: the kernel goes from the packet's identities straight to the records, and an atom's
    # own-side set is tested here, once per pod
    members: dict[int, set[int]] = {}
    # per identity, in one 32-byte row: [0, 4) its exemption lists as a source and as a
    # destination (offsets into the exemption rules), [4, 6) its records as a source and as a
    # destination (offset + 1, 0 for none), [6, 8) the exemption rule of a list of one, else -1
    ident_row = np.zeros((n_ident, 8), dtype=np.int32)
    idents = identities_of(classes, list(dispatch))
    # in rule order, so the kernel orders a packet's two records by their offsets alone
    placed = sorted(
        (k, ident, side)
        for ident, sides in zip(idents.tolist(), dispatch.values(), strict=True)
        for side, k in enumerate(sides)
        if k >= 0
    )
    for k, ident, side in placed:
        shape = pods[int(p.r_jump[k])]
        if shape is None or shape[0] != 1 - side or any(pc not in policy_entry for pc in shape[2]):
            ident_row[ident, 4 + side] = len(records) + 1
            records.extend((LEAVE & _MASK64, 0))
            continue
        other, selves, jumps, _, drop = shape
        if len(selves) >= 1 << 24 or len(jumps) >= 1 << 30:
            raise _Shape(f"per-pod chain of rule {k} has too many addresses or policy chains")
        size = 2 + 3 * len(selves) + 3 * len(jumps)
        if (len(records) % _LINE + size - 1) // _LINE > (size - 1) // _LINE:
            records.extend([0] * (-len(records) % _LINE))  # on as few cache lines as it can be
        ident_row[ident, 4 + side] = len(records) + 1
        records.extend((drop, other | len(selves) << 8 | len(jumps) << 32))
        for t in selves:
            records.extend(t)
        for pc in jumps:
            at, any_mask, free, owned = policy_entry[pc]
            for bit, own in owned:
                if own not in members:
                    members[own] = set(r.members(own).tolist())
                if ident in members[own]:
                    free |= 1 << bit
            records.extend((at, any_mask, free))

    keys, masks = _merged(peer_keys, peer_bits)
    peer_table = hash_table(keys, np.stack([keys, masks], axis=1), 2, PEER_BUCKET)

    src_off, src_rules = _flatten(ex_src)
    dst_off, dst_rules = _flatten(ex_dst)
    ident_row[:, 0], ident_row[:, 1] = src_off[:-1], src_off[1:]
    ident_row[:, 2], ident_row[:, 3] = dst_off[:-1] + len(src_rules), dst_off[1:] + len(src_rules)
    ex_rules = np.concatenate([src_rules, dst_rules]).astype(np.int32)
    # the usual case, one exemption as a source (the pod's node's) and one as a destination,
    # kept in the row itself
    for col, first in ((6, 0), (7, 2)):
        one = ident_row[:, first + 1] - ident_row[:, first] == 1
        ident_row[:, col] = -1
        ident_row[one, col] = ex_rules[ident_row[one, first]]
    arrays = (
        np.ones(1, dtype=np.int64),
        ct_rule,
        ct_ok,
        ident_row,
        ex_rules if len(ex_rules) else np.zeros(1, dtype=np.int32),
        _line_aligned(np.array(records or [0], dtype=np.uint64)),
        *peer_table,
        *_peer_filter(*_merged(filter_pos, filter_bits), n_rows, row_blocks),
        *_admit_table([summaries[pc][1] for pc in order], classes),
    )
    return PolicyIndex("", arrays)


_MASK64 = (1 << 64) - 1
_LINE = 8  # words in a cache line


def _line_aligned(a: np.ndarray) -> np.ndarray:
    """``a`` copied to memory that starts on a cache line (64 bytes), so records laid out not
    to cross a line boundary do not."""
    raw = np.zeros(a.nbytes + 64, dtype=np.uint8)
    skip = -raw.ctypes.data % 64
    out = raw[skip : skip + a.nbytes].view(a.dtype)
    out[:] = a
    return out


def identities_of(classes: Classes, addresses: list[tuple[int, int, int]]) -> np.ndarray:
    """The identity of each (family, hi, lo) address: the kernel's lookup, in numpy."""
    out = np.zeros(len(addresses), dtype=np.int64)
    for fam, (first, last) in ((4, (0, 1)), (6, (1, 2))):
        at = [i for i, t in enumerate(addresses) if t[0] == fam]
        if not at:
            continue
        a, b = int(classes.id_off[first]), int(classes.id_off[last])
        if fam == 4:
            starts = classes.id_start_lo[a:b]
            wanted = np.array([addresses[i][2] for i in at], dtype=np.uint64)
        else:  # 128-bit addresses as Python ints (few: IPv6 pods)
            pieces = zip(classes.id_start_hi[a:b], classes.id_start_lo[a:b], strict=True)
            starts = np.array([(int(h) << 64) | int(low) for h, low in pieces], dtype=object)
            wanted = np.array([(addresses[i][1] << 64) | addresses[i][2] for i in at], dtype=object)
        pos = np.searchsorted(starts, wanted, side="right")
        out[at] = classes.id_of[a + pos - 1]
    return out


def _merged(keys: list[np.ndarray], masks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Distinct keys, ascending, each with the OR of its masks (uint64 both)."""
    if not keys:
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.uint64)
    k = np.concatenate(keys).astype(np.uint64)
    m = np.concatenate(masks)
    order = np.argsort(k, kind="stable")
    k, m = k[order], m[order]
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    return k[starts], np.bitwise_or.reduceat(m, starts)


def _peer_filter(
    positions: np.ndarray, masks: np.ndarray, n_rows: int, row_blocks: int
) -> tuple[np.ndarray, np.ndarray]:
    """The peer filter: per policy chain, a row of ``row_blocks`` blocks of ``FILTER_BLOCK``
    words, each block a head word, then ``BLOCK_BITS`` bits, one per identity; and the masks
    of the pairs in blocks that need them, in position order. A block whose pairs all have one
    mask (most: a policy chain's peers usually share theirs) holds that mask in its head, with
    ``UNIFORM`` set; any other block's head is its rank, the number of masks listed before it,
    so a set bit's mask is at that rank plus the set bits before it in the block. Either way
    the kernel reads one cache line of the filter and, for a peer in a mixed block, one mask."""
    words = np.zeros(n_rows * row_blocks * FILTER_BLOCK, dtype=np.uint64)
    block = positions // np.uint64(BLOCK_BITS)
    at = (
        block * np.uint64(FILTER_BLOCK)
        + np.uint64(1)
        + (positions % np.uint64(BLOCK_BITS)) // np.uint64(64)
    )
    uniform = np.zeros(n_rows * row_blocks, dtype=bool)
    if len(at):
        starts = np.flatnonzero(np.r_[True, at[1:] != at[:-1]])
        bits = np.left_shift(np.uint64(1), positions & np.uint64(63))
        words[at[starts]] = np.bitwise_or.reduceat(bits, starts)
        first = np.flatnonzero(np.r_[True, block[1:] != block[:-1]])
        low = np.minimum.reduceat(masks, first)
        one = (low == np.maximum.reduceat(masks, first)) & (low < UNIFORM)
        shared = block[first[one]].astype(np.int64)  # the blocks whose pairs share one mask
        uniform[shared] = True
        words[shared * FILTER_BLOCK] = low[one] | np.uint64(UNIFORM)
    mixed = ~uniform[block.astype(np.int64)]
    ranked = np.flatnonzero(~uniform)
    starts_at = ranked.astype(np.uint64) * np.uint64(BLOCK_BITS)
    words[ranked * FILTER_BLOCK] = np.searchsorted(positions[mixed], starts_at)
    kept = masks[mixed]
    return (
        words.reshape(n_rows, row_blocks * FILTER_BLOCK),
        kept if len(kept) else np.zeros(1, dtype=np.uint64),
    )


def _flatten(lists: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    off = np.zeros(len(lists) + 1, dtype=np.int64)
    off[1:] = np.cumsum([len(x) for x in lists])
    return off, np.array([v for x in lists for v in x], dtype=np.int64)


def _pod_chain(r: _Reader, ch: int) -> tuple | None:
    """(other side, self addresses, policy chains, allow mark, DROP rule) of a per-pod chain
    [self -> RETURN]* clear (jump, allow-check)* DROP; None for any other chain."""
    p = r.p
    rules = list(r.rules_of(ch))
    selves: list[tuple[int, int, int]] = []
    other = -1
    i = 0
    while i < len(rules):
        k = rules[i]
        ms = r.matches(k)
        if not (p.r_target[k] == T_RETURN and len(ms) == 1 and ms[0][0] == M_SET):
            break
        if ms[0][2] not in r.host or other not in (-1, ms[0][1]):
            return None
        other = ms[0][1]
        fam, hi, lo = r.host[ms[0][2]]
        if p.r_family[k] in (0, fam):
            selves.append((fam, hi, lo))
        i += 1
    if other < 0 or i >= len(rules):
        return None
    clear = rules[i]
    if not (p.r_target[clear] == T_MARK and not r.matches(clear) and p.r_mark_value[clear] == 0):
        return None
    m = int(p.r_mark_mask[clear])
    jumps: list[int] = []
    i += 1
    while i + 1 < len(rules) and p.r_target[rules[i]] == T_JUMP:
        j, c = rules[i], rules[i + 1]
        if r.matches(j) or p.r_family[j]:
            return None
        if not (
            p.r_target[c] == T_RETURN
            and r.matches(c) == [(M_MARK, 0, m, m, 0)]
            and not p.r_family[c]
        ):
            return None
        jumps.append(int(p.r_jump[j]))
        i += 2
    if i != len(rules) - 1:
        return None
    drop = rules[i]
    if not (p.r_target[drop] == T_DROP and not r.matches(drop) and not p.r_family[drop]):
        return None
    return other, selves, jumps, m, drop


def _policy_chain(
    r: _Reader, pc: int, other: int, mark: int
) -> tuple[int, list[tuple[int, int, int, int, int]], list[tuple[int, np.ndarray, int]]] | None:
    """(atoms any peer may use, atoms, [(atom bit, peer identities, peer set)]) of a policy
    chain whose every rule sets ``mark``; the peer set is the one set a rule's peers come from,
    or -1 when they are the intersection of several. None leaves the chain to the walk."""
    p = r.p
    found: dict[tuple[int, int, int, int, int], int] = {}
    peers: list[tuple[int, np.ndarray, int]] = []
    any_mask = 0
    for k in r.rules_of(pc):
        if not (p.r_target[k] == T_MARK and p.r_mark_value[k] == mark and p.r_mark_mask[k] == mark):
            return None
        proto, lo, hi, own = -1, -1, -1, -1
        idents: np.ndarray | None = None
        peer_sets: list[int] = []
        for kind, d, a, b, c in r.matches(k):
            if kind == M_PROTO and proto in (-1, a):
                proto = a
            elif kind == M_PORT and lo < 0:
                lo, hi = b, c
            elif kind == M_SET and r.listed[a] and d == other:
                got = r.members(a)
                idents = got if idents is None else np.intersect1d(idents, got)
                peer_sets.append(a)
            elif kind == M_SET and r.listed[a] and own < 0:
                own = a
            else:
                return None
        bit = found.setdefault((int(p.r_family[k]), proto, lo, hi, own), len(found))
        if bit >= MAX_ATOMS:
            return None
        if idents is None:
            any_mask |= 1 << bit
        elif len(idents):
            peers.append((bit, idents, peer_sets[0] if len(peer_sets) == 1 else -1))
    return any_mask, list(found), peers


def _within_budget(
    summaries: dict[int, tuple[int, list, list[tuple[int, np.ndarray, int]]]],
) -> set[tuple[int, int]]:
    """Which (policy chain, peer entry) the kernel searches in the peer identity's membership
    list instead of the peer table, widest first, until the table's pairs fit ``PAIR_BUDGET``;
    chains still too wide after that (peers that are intersections of sets cannot be searched)
    are dropped from ``summaries``, and their pods left to the walk."""
    total = sum(len(e[1]) for s in summaries.values() for e in s[2])
    searched: set[tuple[int, int]] = set()
    if total <= PAIR_BUDGET:
        return searched
    wide = sorted(
        (
            (len(e[1]), pc, j)
            for pc, s in summaries.items()
            for j, e in enumerate(s[2])
            if e[2] >= 0
        ),
        reverse=True,
    )
    for n, pc, j in wide:
        if total <= PAIR_BUDGET:
            return searched
        searched.add((pc, j))
        total -= n
    listed = sorted(
        (
            (sum(len(e[1]) for j, e in enumerate(s[2]) if (pc, j) not in searched), pc)
            for pc, s in summaries.items()
        ),
        reverse=True,
    )
    for n, pc in listed:
        if total <= PAIR_BUDGET:
            break
        del summaries[pc]
        total -= n
    return searched


def _admit_table(
    chain_atoms: list[list[tuple[int, int, int, int, int]]], classes: Classes
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row[family is IPv6, protocol], key[row, port class], admit[key, chain]): a packet's
    family and protocol pick a row (IPv4 or IPv6 x TCP, UDP, SCTP or any other), the row and
    its port class its port key, and the key and a chain's number the atoms of that chain such
    a packet satisfies. Keys with the same answer for every atom are one. Off (no keys) when an
    atom names another protocol, or when the table, or working it out, would exceed
    ``ADMIT_BUDGET``."""
    off = _off_arrays()[10:]
    flat = [(c, bit, a[:4]) for c, atoms in enumerate(chain_atoms) for bit, a in enumerate(atoms)]
    if not flat or any(a[1] not in (-1, *PORT_PROTOCOLS) for _, _, a in flat):
        return off
    distinct = sorted({a for _, _, a in flat})
    gid = {a: i for i, a in enumerate(distinct)}
    fam, proto, lo, hi = (np.array(col, dtype=np.int64) for col in zip(*distinct, strict=True))
    n_pc = int(classes.port_class.max()) + 1
    if 8 * n_pc * len(distinct) > ADMIT_BUDGET:  # the satisfied matrix below, a byte each
        return off
    _, first_port = np.unique(classes.port_class, return_index=True)
    # satisfied[family slot, protocol slot, port class, atom]
    satisfied = np.zeros((2, 4, n_pc, len(distinct)), dtype=bool)
    for fs, f in enumerate((4, 6)):
        for ps, pr in enumerate((*PORT_PROTOCOLS, -2)):
            ok_port = (lo[None, :] < 0) | (
                (pr >= 0) & (lo[None, :] <= first_port[:, None]) & (first_port[:, None] <= hi)
            )
            satisfied[fs, ps] = ((fam == 0) | (fam == f)) & ((proto < 0) | (proto == pr)) & ok_port
    keys, key_of = np.unique(satisfied.reshape(8 * n_pc, -1), axis=0, return_inverse=True)
    if len(keys) * len(chain_atoms) * 8 > ADMIT_BUDGET:
        return off
    chain = np.array([c for c, _, _ in flat], dtype=np.int64)
    bits = np.left_shift(np.uint64(1), np.array([b for _, b, _ in flat], dtype=np.uint64))
    ids = np.array([gid[a] for _, _, a in flat], dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, chain[1:] != chain[:-1]])
    admit = np.zeros((len(keys), len(chain_atoms)), dtype=np.uint64)
    admit[:, chain[starts]] = np.bitwise_or.reduceat(keys[:, ids] * bits, starts, axis=1)
    port_row = np.full((2, 256), 3, dtype=np.uint8)
    port_row[:, list(PORT_PROTOCOLS)] = range(len(PORT_PROTOCOLS))
    port_row[1] += 4
    return port_row, key_of.reshape(8, n_pc).astype(np.int32), admit
