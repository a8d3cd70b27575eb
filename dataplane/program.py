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

# one rule's code: a header, then 5 words per match (kind, dir, a, b, c)
C_RULE, C_FAMILY, C_TARGET, C_JUMP, C_MARK_VALUE, C_MARK_MASK, C_NMATCH = range(7)
C_HEADER, C_MATCH = 7, 5

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


def ipset_intervals(ipset: IPSet) -> list[Interval]:
    """The exact membership of an ipset as sorted disjoint [start, end] integer intervals."""
    if ipset.kind == "hash:ip":
        values = sorted({int(ipaddress.ip_address(e.split("/")[0])) for e in ipset.entries})
        return [(v, v) for v in values]
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
    ri_coff: np.ndarray  # int64 [intervals + 1] into ri_cand
    ri_cand: np.ndarray  # int64 rule indices, in rule order within each interval
    # the rules again, each one contiguous (one or two cache lines for a random visit) and the
    # operations / candidates pointing into it
    code: np.ndarray  # int64
    code_off: np.ndarray  # int64 [rules]: where rule k's code starts

    def arrays(self) -> tuple[np.ndarray, ...]:
        """What the kernel walks, in the order it unpacks them: chain_off, op_kind, op_code
        (code offset or run index), run_dir, ri_code (candidates as code offsets), code, then
        the sets' and runs' address intervals, searched for keys too wide to list per identity
        (``dataplane.classes``)."""
        rule_ops = self.op_kind == OP_RULE
        op_code = self.op_arg.copy()
        op_code[rule_ops] = self.code_off[self.op_arg[rule_ops]]
        return (
            self.chain_off,
            self.op_kind,
            op_code,
            self.run_dir,
            self.code_off[self.ri_cand] if len(self.ri_cand) else self.ri_cand,
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
            ipset = self.ruleset.sets[m.set]
            if m.set not in self.set_index:
                return self.intern_set(m.set, ipset.family, ipset_intervals(ipset))
            return self.set_index[m.set]
        net = ipaddress.ip_network(m.cidr, strict=False)
        key = f"cidr:{net}"
        if key not in self.set_index:
            return self.intern_set(
                key, net.version, [(int(net.network_address), int(net.broadcast_address))]
            )
        return self.set_index[key]


def _key_match(rule: Rule) -> SetMatch | AddrMatch | None:
    for m in rule.matches:
        if isinstance(m, (SetMatch, AddrMatch)):
            return m
    return None


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

    r_family = np.zeros(len(rules), dtype=np.uint8)
    r_target = np.zeros(len(rules), dtype=np.uint8)
    r_jump = np.full(len(rules), -1, dtype=np.int64)
    r_mark_value = np.zeros(len(rules), dtype=np.uint64)
    r_mark_mask = np.zeros(len(rules), dtype=np.uint64)
    r_moff = np.zeros(len(rules) + 1, dtype=np.int64)
    m_rows: list[tuple[int, int, int, int, int]] = []
    keys: list[tuple[int, int] | None] = []  # per rule: (direction, set index) of its key match
    for k, (_, _, rule) in enumerate(rules):
        r_family[k] = rule.family or 0
        r_target[k] = TARGETS[rule.target]
        if rule.target == "JUMP":
            if rule.jump not in chain_index:
                raise ValueError(f"rule jumps to unknown chain {rule.jump!r}")
            r_jump[k] = chain_index[rule.jump]
        if rule.mark is not None:
            r_mark_value[k], r_mark_mask[k] = rule.mark
        key = None
        for m in rule.matches:
            if isinstance(m, (SetMatch, AddrMatch)):
                s = b.address_set(m)
                m_rows.append((M_SET, DIRS[m.dir], s, 0, 0))
                if key is None:
                    key = (DIRS[m.dir], s)
            elif isinstance(m, ProtoMatch):
                m_rows.append((M_PROTO, 0, IP_PROTOCOLS[m.protocol], 0, 0))
            elif isinstance(m, PortMatch):
                m_rows.append((M_PORT, 0, 0, m.lo, m.hi))
            elif isinstance(m, CtStateMatch):
                bits = sum(1 << CT_CODES[s] for s in set(m.states))
                m_rows.append((M_CT, 0, bits, 0, 0))
            elif isinstance(m, MarkMatch):
                m_rows.append((M_MARK, 0, m.mask, m.value, 0))
            else:
                raise TypeError(f"unknown match {m!r}")
        keys.append(key)
        r_moff[k + 1] = len(m_rows)
    m = np.array(m_rows, dtype=np.int64).reshape(-1, 5)

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

    def joined(name: str, dtype: type) -> np.ndarray:
        return np.concatenate([getattr(x, name) for x in parts]) if parts else np.zeros(0, dtype)

    ri_start_hi, ri_start_lo = joined("start_hi", np.uint64), joined("start_lo", np.uint64)
    ri_end_hi, ri_end_lo = joined("end_hi", np.uint64), joined("end_lo", np.uint64)
    counts = [x.counts for x in parts]
    cands = [x.cand for x in parts]
    ri_coff = np.zeros(len(ri_start_lo) + 1, dtype=np.int64)
    if counts:
        ri_coff[1:] = np.cumsum(np.concatenate(counts))
    ri_cand = np.concatenate(cands) if cands else np.zeros(0, dtype=np.int64)

    n_match = np.diff(r_moff)
    code_off = C_HEADER * np.arange(len(rules), dtype=np.int64) + C_MATCH * r_moff[:-1]
    code = np.zeros(C_HEADER * len(rules) + C_MATCH * len(m), dtype=np.int64)
    header = np.stack(
        [
            np.arange(len(rules), dtype=np.int64),
            r_family.astype(np.int64),
            r_target.astype(np.int64),
            r_jump,
            r_mark_value.astype(np.int64),
            r_mark_mask.astype(np.int64),
            n_match,
        ],
        axis=1,
    )
    code[code_off[:, None] + np.arange(C_HEADER)] = header
    owner = np.repeat(np.arange(len(rules)), n_match)
    first = code_off[owner] + C_HEADER + C_MATCH * (np.arange(len(m)) - r_moff[owner])
    code[first[:, None] + np.arange(C_MATCH)] = m

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
        ri_cand=ri_cand.astype(np.int64),
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
