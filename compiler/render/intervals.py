"""ipset ``hash:net`` semantics as plain address intervals, for renderers without ``nomatch``.

ipset decides a ``hash:net`` lookup by the most specific entry covering the address: the address
matches iff that entry is not ``nomatch``. nft sets have no ``nomatch``, and an interval set with
``auto-merge`` would silently swallow an except (DESIGN §7), so the nft renderer lists exactly the
matching address space instead: ``match_intervals`` computes it as sorted, disjoint, non-adjacent
integer intervals, and ``interval_text`` writes each as a prefix or an ``a-b`` range.

Theory of operation: prefixes are laminar (two prefixes are nested or disjoint), so sorting them
by (first address, prefix length) lists them in the pre-order of their containment tree. A stack
walk over that order gives each prefix the part of its range not covered by a more specific
prefix; that part belongs to the prefix, and it matches iff the prefix is a (non-nomatch) entry.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from compiler.render._common import IPNetwork

Interval = tuple[int, int]  # inclusive [first, last] as integers


def ipset_matches(
    entries: Iterable[IPNetwork], nomatch: Iterable[IPNetwork], addr: ipaddress._BaseAddress
) -> bool:
    """The reference: does ipset's ``hash:net`` lookup match ``addr``? (Longest prefix decides;
    a prefix present both ways counts as nomatch.) Linear; for tests and explanations."""
    best: tuple[int, bool] | None = None
    for net, ok in [*((n, True) for n in entries), *((n, False) for n in nomatch)]:
        if net.version == addr.version and addr in net:
            key = (net.prefixlen, ok)
            # Longer prefix wins; on a tie nomatch (False) wins.
            if best is None or key[0] > best[0] or (key[0] == best[0] and not ok):
                best = key
    return best is not None and best[1]


def match_intervals(entries: Iterable[IPNetwork], nomatch: Iterable[IPNetwork]) -> list[Interval]:
    """The addresses a ``hash:net`` set with these entries and nomatch entries matches, as sorted
    disjoint intervals with adjacent ones merged (all prefixes of one family)."""
    label: dict[IPNetwork, bool] = {n: True for n in entries}
    for n in nomatch:
        label[n] = False  # nomatch wins over the same prefix listed as an entry
    nets = sorted(label, key=lambda n: (int(n.network_address), n.prefixlen))

    out: list[Interval] = []

    def emit(lo: int, hi: int) -> None:
        if lo > hi:
            return
        if out and out[-1][1] + 1 >= lo:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))

    # Stack of open ancestors: [last address, matches?, next address not yet assigned].
    stack: list[list] = []

    def close(frame: list) -> None:
        if frame[1]:
            emit(frame[2], frame[0])

    for net in nets:
        lo, hi = int(net.network_address), int(net.broadcast_address)
        while stack and stack[-1][0] < lo:
            close(stack.pop())
        if stack:
            parent = stack[-1]
            if parent[1]:
                emit(parent[2], lo - 1)  # the parent's own part before this child
            parent[2] = hi + 1
        stack.append([hi, label[net], lo])
    while stack:
        close(stack.pop())
    return out


def interval_contains(intervals: list[Interval], value: int) -> bool:
    """Binary search in ``match_intervals`` output."""
    lo, hi = 0, len(intervals)
    while lo < hi:
        mid = (lo + hi) // 2
        if intervals[mid][1] < value:
            lo = mid + 1
        else:
            hi = mid
    return lo < len(intervals) and intervals[lo][0] <= value


def interval_text(first: int, last: int, family: int) -> str:
    """``10.0.0.0/8`` when the interval is one prefix, else ``10.0.0.0-10.0.2.255``."""
    cls = ipaddress.IPv4Address if family == 4 else ipaddress.IPv6Address
    size = last - first + 1
    if size & (size - 1) == 0 and first % size == 0:
        bits = 32 if family == 4 else 128
        return f"{cls(first)}/{bits - size.bit_length() + 1}"
    return f"{cls(first)}-{cls(last)}"
