"""Linux netfilter connection tracking, emulated (pure: no I/O, no clock; time is each packet's ts).

Theory of operation
-------------------
Every tracked packet is reduced to a *canonical key*, the same for both directions of a flow, and
looked up in one table. The first packet of a flow fixes the *original* direction; a packet
travelling the other way is a *reply*. What ``-m conntrack --ctstate`` sees for a packet is:

* INVALID     -- the protocol tracker refused it (bad TCP flags, a transition marked ``sIV``, an
                 unsolicited ICMP reply, an ICMP error quoting nothing we track, table full, ...).
                 Nothing is created or changed.
* NEW         -- original direction and no reply seen yet (the first packet, or a retransmission).
* ESTABLISHED -- any reply-direction packet, or an original-direction one once a reply was seen.
                 (So the TCP SYN-ACK itself is ESTABLISHED, exactly as in the kernel.)
* RELATED     -- an ICMP/ICMPv6 error whose quoted packet belongs to a tracked flow.
* UNTRACKED   -- ICMPv6 neighbour discovery and MLD, which the kernel never tracks.

Three modules: ``ct_tables`` holds the per-protocol state machines as data (the kernel's
``tcp_conntracks`` and ``sctp_conntracks``, ICMP types, timeouts), ``ct_kernel`` applies them in
one numba loop over a batch with the table in numpy arrays, and this module is the interface.
Special cases the kernel handles in code around its tables (re-opening from TIME_WAIT/CLOSE, the
ignored-SYN resync, simultaneous open, RST sequence checks, the RFC 5961 challenge ACK) are handled
the same way in ``ct_kernel``.

Only a packet that passes changes the table: ESTABLISHED and RELATED always pass, INVALID never,
NEW and UNTRACKED pass when the policy allows them (``allowed_if_new``), so a denied first packet
leaves nothing ("only a packet accepted all the way creates state").

What is modelled and what is not is listed in docs/conntrack.md; in short: no TCP window tracking
(every segment is taken as in-window, like ``nf_conntrack_tcp_be_liberal=1``, except the RST
sequence checks), no SCTP verification-tag checks beyond "INIT carries vtag 0", no
helpers/expectations, no NAT, no zones, and no GRE/DCCP/UDP-Lite trackers (they fall back to the
generic tracker).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from dataplane.ct_kernel import REASON_TEXT, CtTable
from dataplane.ct_tables import (
    DEFAULT_MAX_ENTRIES,
    ICMP_ERRORS,
    ICMP_REQUESTS,
    ICMPV6_UNTRACKED,
    PROFILES,
    SCTP_TRANSITIONS,
    TCP_TRANSITIONS,
    TCP_VALID_FLAGS,
    CtState,
    SctpChunk,
    SctpState,
    TcpEvent,
    TcpState,
    Timeouts,
    tcp_event,
)
from dataplane.packets import PROTO_SCTP, PROTO_TCP, PacketBatch, pair_to_ip


@dataclass(frozen=True)
class EntryView:
    """A snapshot of one entry, for tests and explanations (``conntrack -L`` in spirit)."""

    family: int
    proto: int
    src: str
    dst: str
    sport: int
    dport: int
    state: str  # TCP/SCTP state name, "" for other protocols
    tcp_state: TcpState | None
    sctp_state: SctpState | None
    expires: float
    timeout: float
    assured: bool
    seen_reply: bool

    @property
    def tuple(self) -> tuple[int, int, str, str, int, int]:
        return (self.family, self.proto, self.src, self.dst, self.sport, self.dport)


class CtStep(NamedTuple):
    """What ``Conntrack.step`` decided for one packet."""

    state: CtState
    reason: str
    is_reply: bool


def _outputs(n: int) -> tuple[np.ndarray, ...]:
    """The kernel's per-packet outputs: verdict, ctstate, reason code, is-reply, connection tag."""
    return (
        np.zeros(n, np.bool_),
        np.zeros(n, np.uint8),
        np.zeros(n, np.uint16),
        np.zeros(n, np.bool_),
        np.empty(n, np.int64),
    )


class Conntrack:
    """The connection table plus the per-protocol trackers. See the module docstring."""

    def __init__(
        self,
        timeouts: Timeouts = PROFILES["default"],
        max_entries: int = DEFAULT_MAX_ENTRIES,
        loose: bool = True,
    ) -> None:
        self.timeouts = timeouts
        self.max_entries = max_entries
        self.loose = loose
        self._table = CtTable()

    def __len__(self) -> int:
        """Entries in the table, expired ones included until something removes them."""
        return len(self._table)

    def run(
        self, batch: PacketBatch, allowed_if_new: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Process a batch in order. Returns (verdict bool, ct_state uint8, reason code uint16);
        ``REASON_TEXT[code]`` is the reason.

        ``status == OK`` rows are tracked: ESTABLISHED/RELATED pass and commit; INVALID is
        dropped; NEW and UNTRACKED take ``allowed_if_new[i]`` and a NEW packet commits only if
        allowed. NOT_IP passes (UNTRACKED), MALFORMED is dropped (INVALID), FRAGMENT gets UNTRACKED
        and ``allowed_if_new[i]``.
        """
        n = len(batch)
        out = _outputs(n)
        self._table.track(
            batch, 0, n, allowed_if_new, out, self.timeouts, self.loose, self.max_entries
        )
        return out[0], out[1], out[2]

    def run_policy(
        self, batch: PacketBatch, policy: tuple
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``run``, with the policy's verdicts asked for only where they count: ``policy`` is
        ``Engine.policy(batch)``, and the engine classifies a packet (as NEW) only when it is NEW,
        UNTRACKED or a non-first fragment -- in a capture of long flows, a few in a hundred --
        writing the deciding rule into the policy's decider array. The first three results are
        the ones ``run(batch, engine.evaluate(batch, "NEW"))`` gives; the fourth is a tag per
        packet naming the connection it passed in (``connection_slots`` explains it)."""
        n = len(batch)
        out = _outputs(n)
        self._table.track(
            batch, 0, n, None, out, self.timeouts, self.loose, self.max_entries, policy
        )
        return out[0], out[1], out[2], out[4]

    @property
    def connection_slots(self) -> int:
        """An upper bound on the slot part of ``run_policy``'s tags: a tag is -1, or the
        connection's serial (from 1, never reused) << 32 | its slot (< this bound). Only a
        TCP, UDP, SCTP or ICMP echo packet that passed as part of its own connection (NEW,
        ESTABLISHED) is tagged; one tag's packets always share their flow key."""
        return self._table.capacity

    def step(self, batch: PacketBatch, i: int, allowed: bool = True) -> CtStep:
        """Packet ``i`` alone, exactly as ``run`` treats it with ``allowed_if_new[i] = allowed``
        (at time ``batch.ts[i]``)."""
        out = _outputs(1)
        self._table.track(
            batch,
            i,
            i + 1,
            np.array([allowed], np.bool_),
            out,
            self.timeouts,
            self.loose,
            self.max_entries,
        )
        return CtStep(CtState(int(out[1][0])), REASON_TEXT[int(out[2][0])], bool(out[3][0]))

    def entries(self, now: float | None = None) -> list[EntryView]:
        """Snapshot of the table, oldest first; with ``now``, expired entries are left out."""
        out = []
        for r in self._table.rows(now):
            fam, proto = r["family"], r["proto"]
            tcp_state = TcpState(r["tcp_state"]) if proto == PROTO_TCP else None
            sctp_state = SctpState(r["sctp_state"]) if proto == PROTO_SCTP else None
            state = tcp_state if tcp_state is not None else sctp_state
            out.append(
                EntryView(
                    fam,
                    proto,
                    pair_to_ip(fam, *r["src"]),
                    pair_to_ip(fam, *r["dst"]),
                    r["sport"],
                    r["dport"],
                    state.name if state is not None else "",
                    tcp_state,
                    sctp_state,
                    r["expires"],
                    r["timeout"],
                    r["assured"],
                    r["seen_reply"],
                )
            )
        return out

    def expire(self, now: float) -> int:
        """Drop every entry whose timeout has passed (the kernel's GC worker); returns how many."""
        return self._table.expire(now)


__all__ = [
    "ICMPV6_UNTRACKED",
    "ICMP_ERRORS",
    "ICMP_REQUESTS",
    "PROFILES",
    "REASON_TEXT",
    "SCTP_TRANSITIONS",
    "TCP_TRANSITIONS",
    "TCP_VALID_FLAGS",
    "Conntrack",
    "CtState",
    "CtStep",
    "EntryView",
    "SctpChunk",
    "SctpState",
    "TcpEvent",
    "TcpState",
    "Timeouts",
    "tcp_event",
]
