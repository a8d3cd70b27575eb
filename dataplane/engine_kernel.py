"""The engine's numba kernel: classify a batch against a flattened Program.

``classify`` first asks the policy index (``dataplane.policy_index``), when it is on, which
decides a packet from a few table lookups. The packets it leaves (all of them when it is off) are
keyed by (family, source identity, destination identity, protocol, port class, ct state), the
coarsest key the tables can tell apart (see ``dataplane.classes``), in a bounded open-addressing
cache from that key to (verdict, deciding rule). A miss walks the Program exactly as netfilter
would, but with runs indexed by address, so the cost of a miss follows the rules that can match
the packet, not the rule count.

The walk is written out inside the one function on purpose: every call that passes arrays (even
one numba inlines) costs an atomic reference-count increment and decrement per array, which at a
few dozen arrays per rule dominated the whole walk. Binary searches are therefore spelled out at
each use.

Under ``NUMBA_DISABLE_JIT=1`` the same function runs as plain Python (slowly), which the tests
use to check the compiled kernel against its own source.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .policy_index import (
    BLOCK_BITS,
    FILTER_BLOCK,
    HASH_MUL,
    LEAVE,
    PEER_BUCKET,
    SEARCHED,
    UNIFORM,
)
from .popcount import popcount
from .program import (
    C_ARG,
    C_HEADER,
    C_INFO,
    C_MARK_MASK,
    C_MATCH,
    C_RULE,
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
)

MAX_DEPTH = 64  # iptables allows far less nesting than this
_C1 = HASH_MUL
_C2 = np.uint64(0xFF51AFD7ED558CCD)
_S24 = np.uint64(24)
_S32 = np.uint64(32)
_S33 = np.uint64(33)
_S40 = np.uint64(40)
_S8 = np.uint64(8)
_S48 = np.uint64(48)
_ONE = np.uint64(1)
_M32 = np.uint64(0xFFFFFFFF)
_M24 = np.uint64(0xFFFFFF)
_S58 = np.uint64(58)
_ZERO = np.uint64(0)
_TWO = np.uint64(2)
_FOUR = np.uint64(4)
_UNIFORM = np.uint64(UNIFORM)  # a filter block's head holds its one mask
_SEARCHED = np.uint64(SEARCHED)  # a policy chain's offset flag: it has searched peer sets
_RECORD = np.uint64(0xFFFFFFFF)  # a policy chain's record offset, in the low 32 bits...
_CHAIN = np.uint64((1 << 30) - 1)  # ...and its number in the 30 above
assert PEER_BUCKET == 4  # peer_mask reads four slots
# a set bit's position from its value: the de Bruijn sequence's top six bits after multiplying
_DE_BRUIJN = np.uint64(0x03F79D71B4CB0A89)
_BIT_AT = np.zeros(64, dtype=np.int8)
_BIT_AT[[((1 << i) * 0x03F79D71B4CB0A89 & (1 << 64) - 1) >> 58 for i in range(64)]] = range(64)


@njit(cache=True, nogil=True, inline="always")
def _lower_bound(mem_key, first, last, key):
    """The first row in [first, last) whose key is >= key (branch-free halving)."""
    n = last - first
    if n <= 0:
        return first
    base = first
    while n > 1:
        half = n >> 1
        base = base + half if mem_key[base + half - 1] < key else base
        n -= half
    return base + (1 if mem_key[base] < key else 0)


@njit(cache=True, nogil=True, inline="always")
def _last_le(start_hi, start_lo, first, last, qhi, qlo):
    """The last index in [first, last) whose start is <= q, or first - 1."""
    lo = first
    hi = last
    while lo < hi:
        mid = (lo + hi) >> 1
        h = start_hi[mid]
        if h < qhi or (h == qhi and start_lo[mid] <= qlo):
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@njit(cache=True, nogil=True, inline="always")
def _le(ahi, alo, bhi, blo):
    return ahi < bhi or (ahi == bhi and alo <= blo)


@njit(cache=True, nogil=True, inline="always")
def _identities(classes, fam, shi, slo, dhi, dlo):
    """(source identity, destination identity) of a packet's addresses (``dataplane.classes``);
    the no-identity one for a packet that is not IP."""
    (
        id_off,
        id_start_hi,
        id_start_lo,
        id_of,
        mem_off,
        _mem_key,
        _mem_val,
        _port_class,
        _listed,
        v4_start,
        v4_l1,
        v4_l2,
    ) = classes
    no_identity = mem_off.shape[0] - 2
    sid = no_identity
    did = no_identity
    if fam == 4:
        for side in range(2):
            q = np.int64(slo if side == 0 else dlo)
            e = v4_l1[q >> 16]
            i = (((q & 0xFFFF) - ((e >> 5) & 0xFFFF)) >> (e & 31)) + 1
            i = min(max(i, 0), (e >> 44) + 1)
            at = ((e >> 21) & 0x7FFFFF) + i
            # the last piece starting at or before q within the bucket; branch-free halving,
            # since the comparisons are unpredictable
            base = np.int64(v4_l2[at])
            n = np.int64(v4_l2[at + 1]) - base + 1
            while n > 1:
                half = n >> 1
                m = base + half
                start = np.int64(v4_start[m])
                base = m if start <= q else base
                n -= half
            if side == 0:
                sid = id_of[base]
            else:
                did = id_of[base]
    elif fam == 6:
        a = id_off[1]
        b = id_off[2]
        for side in range(2):
            qhi = shi if side == 0 else dhi
            qlo = slo if side == 0 else dlo
            base = a  # piece a starts at address 0
            n = b - a
            while n > 1:
                half = n >> 1
                m = base + half
                h = id_start_hi[m]
                le = (h < qhi) | ((h == qhi) & (id_start_lo[m] <= qlo))
                base = m if le else base
                n -= half
            if side == 0:
                sid = id_of[base]
            else:
                did = id_of[base]
    return sid, did


@njit(cache=True, nogil=True, inline="always")
def peer_mask(table, shift, w):
    """The mask stored under key ``w`` in a ``policy_index.hash_table`` of four-slot buckets,
    or 0. The bucket's slots are compared without a branch; the next bucket is read only when
    this one is full without the key."""
    mask = np.uint64(table.shape[0] - 1)
    s = ((w * _C1) >> shift[0]) << _TWO
    found = _ZERO
    while True:
        k0 = table[s, 0]
        k1 = table[s + 1, 0]
        k2 = table[s + 2, 0]
        k3 = table[s + 3, 0]
        found |= (
            (table[s, 1] * np.uint64(k0 == w))
            | (table[s + 1, 1] * np.uint64(k1 == w))
            | (table[s + 2, 1] * np.uint64(k2 == w))
            | (table[s + 3, 1] * np.uint64(k3 == w))
        )
        if (k3 == 0) | (k0 == w) | (k1 == w) | (k2 == w) | (k3 == w):
            return found
        s = (s + _FOUR) & mask


@njit(cache=True, nogil=True, inline="always")
def filter_mask(pfilter, pmask, row, ident):
    """The mask listed for ``ident`` in row ``row`` of a ``policy_index`` peer filter, or 0:
    its bit, and when set, the block's one mask, or the mask at the block's rank plus the set
    bits before it."""
    o = np.int64(ident)
    base = (o // BLOCK_BITS) * FILTER_BLOCK
    within = o % BLOCK_BITS
    word = pfilter[row, base + 1 + (within >> 6)]
    b = np.uint64(within & 63)
    if (word >> b) & _ONE == 0:
        return _ZERO
    head = pfilter[row, base]
    if head & _UNIFORM != 0:
        return head ^ _UNIFORM
    r = head + popcount(word & ((_ONE << b) - _ONE))
    for j in range(within >> 6):
        r += popcount(pfilter[row, base + 1 + j])
    return pmask[np.int64(r)]


@njit(cache=True, nogil=True, inline="always")
def _decide(prog, entry, n_sets, classes, index, cache_keys, cache_vals, counters, stack, fam,
            sid, did, shi, slo, dhi, dlo, pr, dp, c):  # fmt: skip
    """(accepted, deciding rule or -1) for one packet. ``cache_vals[i] == 0`` marks an empty
    slot; a value is 2 * (rule + 2) + accepted. ``counters`` = [hits, walks, cache fill, rules
    inspected by walks, decided by the policy index, policy chains the index consulted];
    ``stack`` is scratch for the walk's jumps. ``sid`` and ``did`` are the addresses'
    identities (``_identities``). ``index`` is ``dataplane.policy_index``'s arrays: when it is
    on, it decides first, and the cache and the walk see only the packets it leaves to them.

    Inlined into both callers, so the batch loop pays no call and the conntrack kernel's rare
    NEW packets pay one call (``policy_verdict``) instead of a pass over every packet."""
    (
        chain_off,
        op_code,
        run_dir,
        ri_code,
        code,
        s_family,
        s_off,
        s_start_hi,
        s_start_lo,
        s_end_hi,
        s_end_lo,
        run_off,
        ri_start_hi,
        ri_start_lo,
        ri_end_hi,
        ri_end_lo,
        ri_coff,
    ) = prog
    (
        _id_off,
        _id_start_hi,
        _id_start_lo,
        _id_of,
        mem_off,
        mem_key,
        mem_val,
        port_class,
        listed,
        _v4_start,
        _v4_l1,
        _v4_l2,
    ) = classes
    cap = cache_vals.shape[0]
    mask = np.uint64(cap - 1) if cap > 0 else np.uint64(0)

    # -- the policy index (dataplane.policy_index) --------------------------------------
    if index[0][0] == 1:
        (_on, ct_rule, ct_ok, ident_row, ex_rule, rec, ptab, pshift, pfilter, pmask, port_row,
         port_key, admit) = index  # fmt: skip
        k = ct_rule[c]
        if k >= 0:
            counters[4] += 1
            return ct_ok[c] == 1, k
        # exemptions, in rule order (the lists hold only rules of the identity's family)
        a, b = ident_row[sid, 0], ident_row[sid, 1]
        e, f = ident_row[did, 2], ident_row[did, 3]
        if b - a == 1 and f - e == 1:  # one each, in the rows
            if ident_row[sid, 6] == ident_row[did, 7]:
                counters[4] += 1
                return True, np.int64(ident_row[sid, 6])
        elif b > a and f > e:
            for t in range(a, b):
                k = np.int64(ex_rule[t])
                for u in range(e, f):
                    if ex_rule[u] == k:
                        counters[4] += 1
                        return True, k
        # the per-pod chain records of the two addresses' dispatch rules, in rule order
        r0 = np.int64(ident_row[sid, 4])
        r1 = np.int64(ident_row[did, 5])
        if r0 == 0 or (r1 != 0 and r1 < r0):  # records are laid out in rule order
            r0, r1 = r1, r0
        undecided = False
        kk = -1  # the packet's port key for the admit table, once needed
        for step in range(2):
            at = (r0 if step == 0 else r1) - 1
            if at < 0:
                continue
            drop = np.int64(rec[at])
            if drop == LEAVE:
                undecided = True
                break
            shape = rec[at + 1]
            if shape & _ONE == 1:
                ohi, olo, oid = dhi, dlo, did
            else:
                ohi, olo, oid = shi, slo, sid
            allowed = False
            at += 2
            for _ in range(np.int64((shape >> _S8) & _M24)):
                if rec[at] == fam and rec[at + 1] == ohi and rec[at + 2] == olo:
                    allowed = True
                at += 3
            for t in range(np.int64(shape >> _S32)):
                if allowed:
                    break
                counters[5] += 1
                qw = rec[at + 3 * t]
                q = np.int64(qw & _RECORD)
                m = rec[at + 3 * t + 1]
                cno = np.int64((qw >> _S32) & _CHAIN)
                if cno < pfilter.shape[0]:
                    m |= filter_mask(pfilter, pmask, cno, oid)
                else:
                    w = (np.uint64(q + 1) << _S32) | np.uint64(oid)
                    m |= peer_mask(ptab, pshift, w)
                if qw & _SEARCHED != 0:  # peer sets too wide to list, in oid's memberships
                    s_at = q + 1 + np.int64(rec[q])
                    first = mem_off[oid]
                    last = mem_off[oid + 1]
                    for j in range(np.int64(rec[s_at])):
                        key = np.int64(rec[s_at + 1 + 2 * j])
                        lo = _lower_bound(mem_key, first, last, key)
                        if lo < last and mem_key[lo] == key:
                            m |= rec[s_at + 2 + 2 * j]
                # only the atoms this peer and this pod may use (their bits): usually none
                m &= rec[at + 3 * t + 2]
                if admit.shape[0] > 0:  # the atoms this packet satisfies, in one word
                    if m != 0:
                        if kk < 0:
                            kk = port_key[port_row[1 if fam == 6 else 0, pr], port_class[dp]]
                        allowed = m & admit[kk, cno] != 0
                    continue
                while m != 0 and not allowed:
                    low = m & (~m + _ONE)
                    m ^= low
                    atom = rec[q + 1 + np.int64(_BIT_AT[np.int64((low * _DE_BRUIJN) >> _S58)])]
                    f = atom & 0xFF
                    want = np.int64((atom >> _S8) & 0xFFFF) - 1
                    plo = np.int64((atom >> _S24) & 0x1FFFF) - 1
                    allowed = (
                        (f == 0 or f == fam)
                        and (want < 0 or want == pr)
                        and (
                            plo < 0
                            or (
                                (pr == 6 or pr == 17 or pr == 132)
                                and plo <= dp <= np.int64(atom >> _S48)
                            )
                        )
                    )
            if not allowed:
                counters[4] += 1
                return False, drop
        if not undecided:
            counters[4] += 1
            return True, np.int64(-1)
    slot = np.uint64(0)
    home = np.uint64(0)
    w0 = (np.uint64(sid) << _S32) | np.uint64(did)
    w1 = (
        (np.uint64(fam) << _S40)
        | (np.uint64(pr) << _S32)
        | (np.uint64(c) << _S24)
        | np.uint64(port_class[dp])
    )
    if cap > 0:
        x = w0 ^ (w1 * _C1)
        x ^= x >> _S33
        x *= _C2
        x ^= x >> _S33
        home = x & mask
        slot = home
        while True:
            v = cache_vals[slot]
            if v == 0 or (cache_keys[slot, 0] == w0 and cache_keys[slot, 1] == w1):
                break
            slot = (slot + _ONE) & mask
        v = cache_vals[slot]
        if v != 0:
            counters[0] += 1
            return (v & 1) == 1, (v >> 1) - 2

    # -- the walk ----------------------------------------------------------------------
    counters[1] += 1
    mark = np.uint64(0)
    depth = 0
    chain = entry
    op = np.int64(chain_off[chain])
    op_end = np.int64(chain_off[chain + 1])
    cand = -1  # position in ri_code while visiting a run's candidates
    cand_end = -1
    verdict = True
    decided = -1
    inspected = 0
    while True:
        skip = 0  # a run's candidate skips its key match, which it is known to pass
        if cand >= 0:
            if cand >= cand_end:
                cand = -1
                op += 1
                continue
            k = np.int64(ri_code[cand])
            cand += 1
            skip = C_MATCH
        else:
            if op >= op_end:  # fell off the chain: an implicit RETURN
                if depth == 0:
                    break
                depth -= 1
                chain = stack[depth, 0]
                op = stack[depth, 1]
                cand = stack[depth, 2]
                cand_end = stack[depth, 3]
                op_end = np.int64(chain_off[chain + 1])
                continue
            k = np.int64(op_code[op])
            if k < 0:  # a run
                u = -1 - k
                key = n_sets + u
                if listed[key]:
                    ident = sid if run_dir[u] == 0 else did
                    first = mem_off[ident]
                    last = mem_off[ident + 1]
                    lo = _lower_bound(mem_key, first, last, key)
                    if lo < last and mem_key[lo] == key:
                        val = mem_val[lo]
                        cand = val >> 32
                        cand_end = val & 0xFFFFFFFF
                        continue
                elif fam == 4 or fam == 6:  # a wide run: find its piece by address
                    qhi = shi if run_dir[u] == 0 else dhi
                    qlo = slo if run_dir[u] == 0 else dlo
                    sl = 2 * u + (1 if fam == 6 else 0)
                    i = _last_le(ri_start_hi, ri_start_lo, run_off[sl], run_off[sl + 1], qhi, qlo)
                    if i >= run_off[sl] and _le(qhi, qlo, ri_end_hi[i], ri_end_lo[i]):
                        cand = ri_coff[i]
                        cand_end = ri_coff[i + 1]
                        continue
                op += 1
                continue
            op += 1

        # does the rule at code[k] match?
        inspected += 1
        info = np.int64(code[k + C_INFO])
        rf = info & 15
        matched = rf == 0 or rf == fam
        j = k + C_HEADER + skip
        j_end = k + C_HEADER + C_MATCH * (info >> 8)
        while matched and j < j_end:
            kind = code[j] & 15
            if kind == M_SET:
                key = np.int64(code[j + 1])
                side = code[j] >> 4
                if listed[key]:
                    ident = sid if side == 0 else did
                    first = mem_off[ident]
                    last = mem_off[ident + 1]
                    lo = _lower_bound(mem_key, first, last, key)
                    matched = lo < last and mem_key[lo] == key
                elif s_family[key] != fam:
                    matched = False
                else:  # a wide set: search its intervals by address
                    qhi = shi if side == 0 else dhi
                    qlo = slo if side == 0 else dlo
                    i = _last_le(s_start_hi, s_start_lo, s_off[key], s_off[key + 1], qhi, qlo)
                    matched = i >= s_off[key] and _le(qhi, qlo, s_end_hi[i], s_end_lo[i])
            elif kind == M_PROTO:
                matched = pr == code[j + 1]
            elif kind == M_PORT:
                matched = (pr == 6 or pr == 17 or pr == 132) and code[j + 1] <= dp <= code[j + 2]
            elif kind == M_CT:
                matched = (code[j + 1] >> c) & 1 == 1
            elif kind == M_MARK:
                matched = (mark & (np.uint64(code[j + 1]) & _M32)) == (
                    np.uint64(code[j + 2]) & _M32
                )
            j += C_MATCH
        if not matched:
            continue

        target = (info >> 4) & 15
        if target in (T_ACCEPT, T_DROP):
            verdict = target == T_ACCEPT
            decided = code[k + C_RULE]
            break
        if target == T_MARK:
            mark = (mark & ~(np.uint64(code[k + C_MARK_MASK]) & _M32)) ^ (
                np.uint64(code[k + C_ARG]) & _M32
            )
        elif target == T_JUMP:
            stack[depth, 0] = chain
            stack[depth, 1] = op
            stack[depth, 2] = cand
            stack[depth, 3] = cand_end
            depth += 1
            chain = code[k + C_ARG]
            op = np.int64(chain_off[chain])
            op_end = np.int64(chain_off[chain + 1])
            cand = -1
            cand_end = -1
        elif target == T_RETURN:  # leave the chain as if it had ended: the pop above
            op = op_end
            cand = -1

    counters[3] += inspected
    if cap > 0:
        if counters[2] * 2 >= cap:  # keep probe sequences short: start over, never fill up
            cache_vals[:] = 0
            counters[2] = 0
            slot = home  # the key's own slot, empty now
        cache_keys[slot, 0] = w0
        cache_keys[slot, 1] = w1
        cache_vals[slot] = 2 * (decided + 2) + (1 if verdict else 0)
        counters[2] += 1
    return verdict, decided


@njit(cache=True, nogil=True, _nrt=False)
def classify(
    prog,
    entry,
    n_sets,
    classes,
    index,
    cache_keys,
    cache_vals,
    counters,
    stack,
    family,
    src_hi,
    src_lo,
    dst_hi,
    dst_lo,
    proto,
    dport,
    ct,
    out_ok,
    out_rule,
):
    """Fill out_ok / out_rule for every packet (see ``_decide``). Without NRT: with it, the
    arrays unpacked from the tuples cost an atomic increment and decrement per packet (7x
    slower); so ``stack`` (MAX_DEPTH x 4 int64 scratch) comes from the caller."""
    for p in range(family.shape[0]):
        sid, did = _identities(classes, family[p], src_hi[p], src_lo[p], dst_hi[p], dst_lo[p])
        ok, rule = _decide(
            prog, entry, n_sets, classes, index, cache_keys, cache_vals, counters, stack, family[p],
            sid, did, src_hi[p], src_lo[p], dst_hi[p], dst_lo[p], proto[p], dport[p], ct[p],
        )  # fmt: skip
        out_ok[p] = ok
        out_rule[p] = rule


@njit(cache=True, nogil=True, _nrt=False)
def policy_verdict(policy, i, ct):
    """The verdict for packet ``i`` of the batch ``policy`` was made for (``Engine.policy``),
    in ctstate ``ct``; the deciding rule goes to the policy's ``decider[i]``. Without NRT, as
    the conntrack kernel that calls it."""
    (
        prog, entry, n_sets, classes, index, cache_keys, cache_vals, counters, stack, family,
        src_hi, src_lo, dst_hi, dst_lo, proto, dport, decider,
    ) = policy  # fmt: skip
    sid, did = _identities(classes, family[i], src_hi[i], src_lo[i], dst_hi[i], dst_lo[i])
    ok, rule = _decide(
        prog, entry, n_sets, classes, index, cache_keys, cache_vals, counters, stack, family[i],
        sid, did, src_hi[i], src_lo[i], dst_hi[i], dst_lo[i], proto[i], dport[i], ct,
    )  # fmt: skip
    decider[i] = rule
    return ok
