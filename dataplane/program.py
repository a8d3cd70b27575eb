"""A Ruleset flattened into numpy arrays that the engine's numba kernel walks.

Rules keep their order and their first-match semantics; chains become offset ranges into one
array of operations. Two things make a walk cheap whatever the rule count:

- every address match (a set or a CIDR) becomes an interned set of sorted disjoint 128-bit
  intervals (ipset's longest-prefix ``nomatch`` semantics resolved at compile time), so a
  membership test is a binary search;
- a *run* of consecutive rules that each begin with an address match in the same direction (the
  dispatch chain's ``-s POD_IP -j ...`` rules, the node exemptions, a policy chain's peers) is
  indexed by that address: the address space is cut into elementary intervals, each listing the
  rules of the run whose key covers it, in rule order. A packet then looks only at the rules that
  can match it, and first-match order is kept because the candidates are visited in order.

An address is two uint64 words (``hi``, ``lo``); IPv4 addresses have ``hi == 0`` and live in a
family of their own, as in ``PacketBatch``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import numpy as np

from compiler.render.intervals import match_intervals
from compiler.tables import (
    IP_PROTOCOLS,
    AddrMatch,
    CtStateMatch,
    IPSet,
    MarkMatch,
    PortMatch,
    ProtoMatch,
    Rule,
    Ruleset,
    SetMatch,
)

CT_CODES = {"NEW": 0, "ESTABLISHED": 1, "RELATED": 2, "INVALID": 3, "UNTRACKED": 4}

# operation kinds
OP_RULE, OP_RUN = 0, 1
# rule targets
T_ACCEPT, T_DROP, T_RETURN, T_JUMP, T_MARK = 1, 2, 3, 4, 5
TARGETS = {"ACCEPT": T_ACCEPT, "DROP": T_DROP, "RETURN": T_RETURN, "JUMP": T_JUMP, "MARK": T_MARK}
# match kinds
M_SET, M_PROTO, M_PORT, M_CT, M_MARK = 1, 2, 3, 4, 5
DIRS = {"src": 0, "dst": 1}

# One rule's code, int32 words: a header (rule index; family | target << 4 | matches << 8; jump
# chain or mark value; mark mask), then 3 words per match (kind | dir << 4, a, b). Marks are
# 32-bit patterns stored as int32. A rule's key match (see runs) comes first, so that a run's
# candidate, already known to match its key, can skip it. Small words keep a rule in one or two
# cache lines: at 100k rules the walk's cost is cache misses far more than instructions.
C_RULE, C_INFO, C_ARG, C_MARK_MASK = range(4)
C_HEADER, C_MATCH = 4, 3

MIN_RUN = 4  # shorter sequences are cheaper to test rule by rule
_MASK64 = (1 << 64) - 1

Interval = tuple[int, int]


@dataclass
class RunIndex:
    """One family of one run: pieces [start, end] as (hi, lo) uint64 words, how many candidates
    each has, and the candidates (rule indices) piece after piece."""

    start_hi: np.ndarray
    start_lo: np.ndarray
    end_hi: np.ndarray
    end_lo: np.ndarray
    counts: np.ndarray
    cand: np.ndarray


def ipset_intervals(ipset: IPSet, parsed: dict[str, int] | None = None) -> list[Interval]:
    """The exact membership of an ipset as sorted disjoint [start, end] integer intervals.
    ``parsed`` memoises address texts across sets (a pod's address is in many sets)."""
    if ipset.kind == "hash:ip":
        memo = {} if parsed is None else parsed
        values = set()
        for e in ipset.entries:
            v = memo.get(e)
            if v is None:
                v = memo[e] = int(ipaddress.ip_address(e.split("/")[0]))
            values.add(v)
        return [(v, v) for v in sorted(values)]
    return match_intervals(
        [ipaddress.ip_network(e, strict=False) for e in ipset.entries],
        [ipaddress.ip_network(e, strict=False) for e in ipset.nomatch],
    )


def split128(values: list[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Python ints (< 2**128) as (hi, lo) uint64 arrays."""
    hi = np.fromiter((v >> 64 for v in values), dtype=np.uint64, count=len(values))
    lo = np.fromiter((v & _MASK64 for v in values), dtype=np.uint64, count=len(values))
    return hi, lo


def expand_ranges(first: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """first[i] .. first[i] + lengths[i] - 1 for every i, concatenated (int64)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(np.asarray(first, dtype=np.int64) - offsets, lengths) + np.arange(
        int(lengths.sum())
    )


@dataclass
class Program:
    """The flat form. Rule ``k`` is ``rules[k]``, numbered in chain order then rule order."""

    entry: int
    chain_names: list[str]
    rules: list[tuple[str, int, Rule]]
    chain_off: np.ndarray  # int64 [chains + 1] into op_*
    op_kind: np.ndarray  # uint8 OP_RULE / OP_RUN
    op_arg: np.ndarray  # int64 rule index / run index
    r_family: np.ndarray  # uint8 0 = any
    r_target: np.ndarray  # uint8 T_*
    r_jump: np.ndarray  # int64 chain index
    r_mark_value: np.ndarray  # uint64
    r_mark_mask: np.ndarray  # uint64
    r_moff: np.ndarray  # int64 [rules + 1] into m_*
    m_kind: np.ndarray  # uint8 M_*
    m_dir: np.ndarray  # uint8 0 src / 1 dst
    m_a: np.ndarray  # int64 set index / protocol / ct-state bit mask / mark mask
    m_b: np.ndarray  # int64 port low / mark value
    m_c: np.ndarray  # int64 port high
    set_names: list[str]  # interned address sets: ipset names and "cidr:<prefix>"
    s_family: np.ndarray  # uint8
    s_off: np.ndarray  # int64 [sets + 1] into s_* intervals
    s_start_hi: np.ndarray
    s_start_lo: np.ndarray
    s_end_hi: np.ndarray
    s_end_lo: np.ndarray
    run_dir: np.ndarray  # uint8 per run
    run_off: np.ndarray  # int64 [2 * runs + 1]: run u family 4 -> [2u, 2u+1), family 6 -> next
    ri_start_hi: np.ndarray  # the runs' elementary intervals (only those with candidates)
    ri_start_lo: np.ndarray
    ri_end_hi: np.ndarray
    ri_end_lo: np.ndarray
    ri_coff: np.ndarray  # int32 (int64 if huge) [intervals + 1] into ri_cand
    ri_cand: np.ndarray  # int32 rule indices, in rule order within each interval
    # the rules again, each one contiguous (one or two cache lines for a random visit) and the
    # operations / candidates pointing into it
    code: np.ndarray  # int32
    code_off: np.ndarray  # int64 [rules]: where rule k's code starts

    def arrays(self) -> tuple[np.ndarray, ...]:
        """What the kernel walks, in the order it unpacks them: chain_off, op_code (a rule's
        code offset, or ``-1 - run``), run_dir, ri_code (candidates as code offsets), code, then
        the sets' and runs' address intervals, searched for keys too wide to list per identity
        (``dataplane.classes``)."""
        rule_ops = self.op_kind == OP_RULE
        op_code = -1 - self.op_arg
        op_code[rule_ops] = self.code_off[self.op_arg[rule_ops]]
        return (
            self.chain_off.astype(np.int32),
            op_code.astype(np.int32),
            self.run_dir,
            self.code_off[self.ri_cand].astype(np.int32),
            self.code,
            self.s_family,
            self.s_off,
            self.s_start_hi,
            self.s_start_lo,
            self.s_end_hi,
            self.s_end_lo,
            self.run_off,
            self.ri_start_hi,
            self.ri_start_lo,
            self.ri_end_hi,
            self.ri_end_lo,
            self.ri_coff,
        )


class _Builder:
    def __init__(self, ruleset: Ruleset) -> None:
        self.ruleset = ruleset
        self.set_index: dict[str, int] = {}
        self.set_family: list[int] = []
        self.set_ivs: list[list[Interval]] = []
        self.runs: list[tuple[int, dict[int, RunIndex]]] = []
        self._arrays: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._cidr: dict[str, int] = {}
        self._parsed: dict[str, int] = {}

    def set_arrays(self, s: int) -> tuple[np.ndarray, np.ndarray]:
        """Set ``s``'s interval starts and ends: int64 for IPv4, Python ints (object) for IPv6."""
        got = self._arrays.get(s)
        if got is None:
            dtype = np.int64 if self.set_family[s] == 4 else object
            ivs = self.set_ivs[s]
            got = self._arrays[s] = (
                np.array([a for a, _ in ivs], dtype=dtype),
                np.array([e for _, e in ivs], dtype=dtype),
            )
        return got

    def intern_set(self, key: str, family: int, intervals: list[Interval]) -> int:
        idx = self.set_index.get(key)
        if idx is None:
            idx = self.set_index[key] = len(self.set_ivs)
            self.set_family.append(family)
            self.set_ivs.append(intervals)
        return idx

    def address_set(self, m: SetMatch | AddrMatch) -> int:
        if isinstance(m, SetMatch):
            idx = self.set_index.get(m.set)
            if idx is None:
                ipset = self.ruleset.sets[m.set]
                idx = self.intern_set(m.set, ipset.family, ipset_intervals(ipset, self._parsed))
            return idx
        # the same literal recurs in every rule naming a pod (dispatch, self): parse it once
        idx = self._cidr.get(m.cidr)
        if idx is None:
            net = ipaddress.ip_network(m.cidr, strict=False)
            idx = self._cidr[m.cidr] = self.intern_set(
                f"cidr:{net}", net.version, [(int(net.network_address), int(net.broadcast_address))]
            )
        return idx


def _key_match(rule: Rule) -> SetMatch | AddrMatch | None:
    for m in rule.matches:
        if isinstance(m, (SetMatch, AddrMatch)):
            return m
    return None


def _word32(value: int) -> int:
    """A 32-bit mark pattern as the int32 word that holds it."""
    if not 0 <= value < 1 << 32:
        raise ValueError(f"mark {value:#x} does not fit in 32 bits")
    return value - (1 << 32) if value >= 1 << 31 else value


def compile_program(ruleset: Ruleset) -> Program:
    """Flatten ``ruleset``; pure: the same Ruleset gives the same arrays."""
    b = _Builder(ruleset)
    chain_names = list(ruleset.chains)
    chain_index = {name: i for i, name in enumerate(chain_names)}
    rules = [
        (name, i, rule)
        for name, chain in ruleset.chains.items()
        for i, rule in enumerate(chain.rules)
    ]

    n_rules = len(rules)
    r_family = np.zeros(n_rules, dtype=np.uint8)
    r_target = np.zeros(n_rules, dtype=np.uint8)
    r_jump = np.full(n_rules, -1, dtype=np.int64)
    r_mark_value = np.zeros(n_rules, dtype=np.uint64)
    r_mark_mask = np.zeros(n_rules, dtype=np.uint64)
    # matches as flat int lists (one entry per match row): far lighter than a tuple per row
    m_kind: list[int] = []
    m_dir: list[int] = []
    m_a: list[int] = []
    m_b: list[int] = []
    m_c: list[int] = []
    n_match = np.zeros(n_rules, dtype=np.int64)
    key_pos = np.zeros(n_rules, dtype=np.int64)  # which match of the rule is its key
    keys: list[tuple[int, int] | None] = []  # per rule: (direction, set index) of its key match
    family_of = {None: 0, 4: 4, 6: 6}
    for k, (_, _, rule) in enumerate(rules):
        r_family[k] = family_of[rule.family]
        r_target[k] = TARGETS[rule.target]
        if rule.target == "JUMP":
            if rule.jump not in chain_index:
                raise ValueError(f"rule jumps to unknown chain {rule.jump!r}")
            r_jump[k] = chain_index[rule.jump]
        if rule.mark is not None:
            r_mark_value[k], r_mark_mask[k] = rule.mark
        key = None
        for i, m in enumerate(rule.matches):
            if isinstance(m, (SetMatch, AddrMatch)):
                s = b.address_set(m)
                row = (M_SET, DIRS[m.dir], s, 0, 0)
                if key is None:
                    key = (row[1], s)
                    key_pos[k] = i
            elif isinstance(m, ProtoMatch):
                row = (M_PROTO, 0, IP_PROTOCOLS[m.protocol], 0, 0)
            elif isinstance(m, PortMatch):
                row = (M_PORT, 0, 0, m.lo, m.hi)
            elif isinstance(m, CtStateMatch):
                row = (M_CT, 0, sum(1 << CT_CODES[s] for s in set(m.states)), 0, 0)
            elif isinstance(m, MarkMatch):
                row = (M_MARK, 0, m.mask, m.value, 0)
            else:
                raise TypeError(f"unknown match {m!r}")
            m_kind.append(row[0])
            m_dir.append(row[1])
            m_a.append(row[2])
            m_b.append(row[3])
            m_c.append(row[4])
        n_match[k] = len(rule.matches)
        keys.append(key)
    r_moff = np.zeros(n_rules + 1, dtype=np.int64)
    np.cumsum(n_match, out=r_moff[1:])
    m = np.stack(
        [np.array(col, dtype=np.int64) for col in (m_kind, m_dir, m_a, m_b, m_c)], axis=1
    ).reshape(-1, 5)
    del m_kind, m_dir, m_a, m_b, m_c

    op_kind: list[int] = []
    op_arg: list[int] = []
    chain_off = [0]
    k = 0
    for name in chain_names:
        n = len(ruleset.chains[name].rules)
        _plan_chain(b, keys, range(k, k + n), op_kind, op_arg)
        k += n
        chain_off.append(len(op_kind))

    s_off = np.zeros(len(b.set_ivs) + 1, dtype=np.int64)
    s_off[1:] = np.cumsum([len(ivs) for ivs in b.set_ivs])
    flat = [iv for ivs in b.set_ivs for iv in ivs]
    s_start_hi, s_start_lo = split128([s for s, _ in flat])
    s_end_hi, s_end_lo = split128([e for _, e in flat])

    run_dir = np.array([d for d, _ in b.runs], dtype=np.uint8)
    run_off = [0]
    parts: list[RunIndex] = []
    for _, by_family in b.runs:
        for fam in (4, 6):
            idx = by_family.get(fam)
            if idx is not None:
                parts.append(idx)
            run_off.append(run_off[-1] + (len(idx.counts) if idx is not None else 0))

    # the runs' pieces copied into preallocated arrays, each run's own arrays dropped as soon as
    # they are copied: a concatenate would hold every piece twice at the peak
    n_pieces = run_off[-1]
    n_cand = sum(len(x.cand) for x in parts)
    ri_start_hi, ri_start_lo, ri_end_hi, ri_end_lo = (
        np.zeros(n_pieces, dtype=np.uint64) for _ in range(4)
    )
    ri_coff = np.zeros(n_pieces + 1, dtype=np.int32 if n_cand < 1 << 31 else np.int64)
    ri_cand = np.zeros(n_cand, dtype=np.int32)
    at = cat = 0
    for x in parts:
        n = len(x.counts)
        ri_start_hi[at : at + n], ri_start_lo[at : at + n] = x.start_hi, x.start_lo
        ri_end_hi[at : at + n], ri_end_lo[at : at + n] = x.end_hi, x.end_lo
        ri_coff[at + 1 : at + n + 1] = cat + np.cumsum(x.counts)
        ri_cand[cat : cat + len(x.cand)] = x.cand
        at, cat = at + n, cat + len(x.cand)
    parts.clear()
    b.runs = [(d, {}) for d, _ in b.runs]

    code_off = C_HEADER * np.arange(n_rules, dtype=np.int64) + C_MATCH * r_moff[:-1]
    code = np.zeros(C_HEADER * n_rules + C_MATCH * len(m), dtype=np.int32)
    marks = r_target == T_MARK
    arg = r_jump.copy()
    arg[marks] = [_word32(int(v)) for v in r_mark_value[marks]]
    mask_words = np.zeros(n_rules, dtype=np.int64)
    mask_words[marks] = [_word32(int(v)) for v in r_mark_mask[marks]]
    info = r_family.astype(np.int64) | (r_target.astype(np.int64) << 4) | (n_match << 8)
    for col, values in enumerate((np.arange(n_rules), info, arg, mask_words)):
        code[code_off + col] = values
    # match rows in code order: the key match moved to the front, the others keep their order
    owner = np.repeat(np.arange(n_rules), n_match)
    pos = np.arange(len(m)) - r_moff[owner]
    has_key = np.array([key is not None for key in keys], dtype=bool)[owner]
    kp = key_pos[owner]
    slot = np.where(has_key & (pos == kp), 0, pos + (has_key & (pos < kp)))
    first = code_off[owner] + C_HEADER + C_MATCH * slot
    marks_m = m[:, 0] == M_MARK
    word_a = m[:, 2].copy()
    word_b = np.where(m[:, 0] == M_PORT, m[:, 3], 0)
    word_a[m[:, 0] == M_PORT] = m[m[:, 0] == M_PORT, 3]
    word_b[m[:, 0] == M_PORT] = m[m[:, 0] == M_PORT, 4]
    word_a[marks_m] = [_word32(int(v)) for v in m[marks_m, 2]]
    word_b[marks_m] = [_word32(int(v)) for v in m[marks_m, 3]]
    code[first] = m[:, 0] | (m[:, 1] << 4)
    code[first + 1] = word_a
    code[first + 2] = word_b

    return Program(
        entry=chain_index[ruleset.entry],
        chain_names=chain_names,
        rules=rules,
        chain_off=np.array(chain_off, dtype=np.int64),
        op_kind=np.array(op_kind, dtype=np.uint8),
        op_arg=np.array(op_arg, dtype=np.int64),
        r_family=r_family,
        r_target=r_target,
        r_jump=r_jump,
        r_mark_value=r_mark_value,
        r_mark_mask=r_mark_mask,
        r_moff=r_moff,
        m_kind=m[:, 0].astype(np.uint8),
        m_dir=m[:, 1].astype(np.uint8),
        m_a=m[:, 2].copy(),
        m_b=m[:, 3].copy(),
        m_c=m[:, 4].copy(),
        set_names=list(b.set_index),
        s_family=np.array(b.set_family, dtype=np.uint8),
        s_off=s_off,
        s_start_hi=s_start_hi,
        s_start_lo=s_start_lo,
        s_end_hi=s_end_hi,
        s_end_lo=s_end_lo,
        run_dir=run_dir,
        run_off=np.array(run_off, dtype=np.int64),
        ri_start_hi=ri_start_hi,
        ri_start_lo=ri_start_lo,
        ri_end_hi=ri_end_hi,
        ri_end_lo=ri_end_lo,
        ri_coff=ri_coff,
        ri_cand=ri_cand,
        code=code,
        code_off=code_off,
    )


def _plan_chain(
    b: _Builder,
    keys: list[tuple[int, int] | None],
    ks: range,
    op_kind: list[int],
    op_arg: list[int],
) -> None:
    """Append a chain's operations: maximal same-direction keyed sequences become runs."""
    seq: list[int] = []
    seq_dir = -1

    def flush() -> None:
        _emit_sequence(b, keys, seq, op_kind, op_arg)
        seq.clear()

    for k in ks:
        key = keys[k]
        if key is None or key[0] != seq_dir:
            flush()
            seq_dir = key[0] if key is not None else -1
        if key is None:
            op_kind.append(OP_RULE)
            op_arg.append(k)
        else:
            seq.append(k)
    flush()


def _emit_sequence(
    b: _Builder,
    keys: list[tuple[int, int] | None],
    seq: list[int],
    op_kind: list[int],
    op_arg: list[int],
) -> None:
    if len(seq) < MIN_RUN:
        for k in seq:
            op_kind.append(OP_RULE)
            op_arg.append(k)
        return
    run = _index_run(b, keys, seq)
    if run is None:  # candidate lists would blow up (wide keys over many narrow ones): halve
        half = len(seq) // 2
        _emit_sequence(b, keys, seq[:half], op_kind, op_arg)
        _emit_sequence(b, keys, seq[half:], op_kind, op_arg)
        return
    op_kind.append(OP_RUN)
    op_arg.append(len(b.runs))
    b.runs.append(run)


def _index_run(
    b: _Builder, keys: list[tuple[int, int] | None], seq: list[int]
) -> tuple[int, dict[int, RunIndex]] | None:
    """Cut the address space by the keys of ``seq``; each piece lists the rules covering it."""
    direction = keys[seq[0]][0]  # type: ignore[index]
    by_family: dict[int, RunIndex] = {}
    for fam in (4, 6):
        ks = [k for k in seq if b.set_family[keys[k][1]] == fam]  # type: ignore[index]
        if not ks:
            continue
        arrays = [b.set_arrays(keys[k][1]) for k in ks]  # type: ignore[index]
        starts = np.concatenate([st for st, _ in arrays])
        ends = np.concatenate([en for _, en in arrays])
        rule = np.repeat(np.array(ks, dtype=np.int64), [len(st) for st, _ in arrays])
        cuts = np.unique(np.concatenate([starts, ends + 1]))
        first = np.searchsorted(cuts, starts)
        lengths = np.searchsorted(cuts, ends + 1) - first
        if int(lengths.sum()) > 4 * len(starts) + 4096:
            return None  # wide keys over many narrow ones: the lists would explode
        piece = expand_ranges(first, lengths)
        rule = np.repeat(rule, lengths)
        order = np.lexsort((rule, piece))
        piece, rule = piece[order], rule[order]
        fresh = np.ones(len(piece), dtype=bool)  # a rule once per piece
        fresh[1:] = (piece[1:] != piece[:-1]) | (rule[1:] != rule[:-1])
        piece, rule = piece[fresh], rule[fresh]
        pieces, counts = np.unique(piece, return_counts=True)
        first_addr, last_addr = cuts[pieces], cuts[pieces + 1] - 1
        if fam == 4:
            zero = np.zeros(len(pieces), dtype=np.uint64)
            words = (zero, first_addr.astype(np.uint64), zero, last_addr.astype(np.uint64))
        else:
            words = (*split128(first_addr.tolist()), *split128(last_addr.tolist()))
        by_family[fam] = RunIndex(*words, counts, rule)
    return direction, by_family
