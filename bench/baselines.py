"""Baselines for ratios only: what a careful Python programmer would write without numpy.

1. ``handwritten_replay``: mmap + ``struct.Struct.unpack_from`` over the pcap records, a dict
   conntrack (canonical 5-tuple -> entry; SYN or a loose mid-stream ACK opens, a reply makes it
   ESTABLISHED, FIN/RST shorten the timeout, UDP 30/120 s), and a first-match rule loop over the
   Ruleset's chains for NEW packets (``RuleLoop``: matches pre-digested into tuples, sets as
   Python sets; no caching of verdicts, since iptables does not cache either).
2. ``scapy_replay``: ``scapy.utils.PcapReader`` decoding every packet, then the same conntrack
   and rule loop. Scapy decodes ~3 k packets/s, so it is run on a prefix and extrapolated.

Neither is a faithful conntrack (no TCP state machine, no ICMP): they decide the synthetic
workloads of ``bench.synth`` (TCP handshakes, data, closes, unanswered SYNs) the way npemu does,
which the benches assert, and that is all a yardstick needs.
"""

from __future__ import annotations

import ipaddress
import mmap
import struct
import time
from dataclasses import dataclass
from typing import Any

from compiler.tables import (
    IP_PROTOCOLS,
    AddrMatch,
    CtStateMatch,
    MarkMatch,
    PortMatch,
    ProtoMatch,
    Ruleset,
    SetMatch,
)
from dataplane.walker import SetLookup

# match codes of the digested rules
_SET, _ADDR, _PROTO, _PORT, _CT, _MARK = range(6)
_ACCEPT, _DROP, _RETURN, _JUMP, _MARKT = range(5)
_TARGETS = {"ACCEPT": _ACCEPT, "DROP": _DROP, "RETURN": _RETURN, "JUMP": _JUMP, "MARK": _MARKT}
_PORT_PROTOS = frozenset((6, 17, 132))


class RuleLoop:
    """netfilter's first-match walk over a Ruleset, per packet, as tight as plain Python gets."""

    def __init__(self, ruleset: Ruleset) -> None:
        self.entry = ruleset.entry
        lookups = {name: SetLookup(s) for name, s in ruleset.sets.items()}
        self.chains: dict[str, list[tuple]] = {}
        for name, chain in ruleset.chains.items():
            rules = []
            for r in chain.rules:
                checks: list[tuple] = []
                for m in r.matches:
                    if isinstance(m, SetMatch):
                        lk = lookups[m.set]
                        # hash:ip as a bare set: the common case, and the fastest membership test
                        member = lk.members if lk.kind == "hash:ip" else None
                        checks.append((_SET, m.dir == "src", lk.family, member, lk))
                    elif isinstance(m, AddrMatch):
                        net = ipaddress.ip_network(m.cidr, strict=False)
                        checks.append(
                            (
                                _ADDR,
                                m.dir == "src",
                                net.version,
                                int(net.network_address),
                                int(net.broadcast_address),
                            )
                        )
                    elif isinstance(m, ProtoMatch):
                        checks.append((_PROTO, IP_PROTOCOLS[m.protocol]))
                    elif isinstance(m, PortMatch):
                        checks.append((_PORT, m.lo, m.hi))
                    elif isinstance(m, CtStateMatch):
                        checks.append((_CT, frozenset(m.states)))
                    elif isinstance(m, MarkMatch):
                        checks.append((_MARK, m.mask, m.value))
                    else:
                        raise TypeError(f"unknown match {m!r}")
                mark = r.mark or (0, 0)
                rules.append(
                    (r.family, tuple(checks), _TARGETS[r.target], r.jump, mark[0], mark[1])
                )
            self.chains[name] = rules

    def accepts(
        self, fam: int, src: int, dst: int, proto: int, dport: int, ct: str = "NEW"
    ) -> bool:
        """ACCEPT (True) or DROP (False) for one packet."""
        mark = 0
        stack: list[tuple[list, int]] = []
        rules, pos = self.chains[self.entry], 0
        while True:
            if pos >= len(rules):
                if not stack:
                    return True
                rules, pos = stack.pop()
                continue
            family, checks, target, jump, mvalue, mmask = rules[pos]
            pos += 1
            if family is not None and family != fam:
                continue
            ok = True
            for c in checks:
                code = c[0]
                if code == _SET:
                    addr = src if c[1] else dst
                    if c[3] is not None:
                        ok = fam == c[2] and addr in c[3]
                    else:
                        ok = c[4].contains(fam, addr)
                elif code == _ADDR:
                    addr = src if c[1] else dst
                    ok = fam == c[2] and c[3] <= addr <= c[4]
                elif code == _PROTO:
                    ok = proto == c[1]
                elif code == _PORT:
                    ok = proto in _PORT_PROTOS and c[1] <= dport <= c[2]
                elif code == _CT:
                    ok = ct in c[1]
                else:
                    ok = (mark & c[1]) == c[2]
                if not ok:
                    break
            if not ok:
                continue
            if target == _ACCEPT:
                return True
            if target == _DROP:
                return False
            if target == _RETURN:
                if not stack:
                    return True
                rules, pos = stack.pop()
            elif target == _JUMP:
                stack.append((rules, pos))
                rules, pos = self.chains[jump], 0
            else:
                mark = (mark & ~mmask) ^ mvalue


# -- dict conntrack ---------------------------------------------------------------------------

_FIN, _SYN, _RST, _ACK = 0x01, 0x02, 0x04, 0x10


class DictConntrack:
    """5-tuple -> [orig src, orig sport, seen_reply, expires]. Enough TCP/UDP for the benches."""

    def __init__(self) -> None:
        self.table: dict[tuple, list] = {}

    def decide(
        self,
        rules: RuleLoop,
        now: float,
        fam: int,
        src: int,
        dst: int,
        proto: int,
        sport: int,
        dport: int,
        flags: int,
    ) -> bool:
        a, b = (src, sport), (dst, dport)
        key = (fam, proto, a, b) if a <= b else (fam, proto, b, a)
        e = self.table.get(key)
        if e is not None and e[3] <= now:
            e = None
        if e is None:
            if proto == 6:
                if flags & (_SYN | _ACK | _FIN | _RST) == _SYN:
                    timeout = 120.0
                elif flags & (_SYN | _FIN | _RST) == 0 and flags & _ACK:
                    timeout = 432000.0  # loose pick-up of a mid-stream connection
                else:
                    return False  # INVALID: SYN/ACK, FIN or RST cannot open
            else:
                timeout = 30.0
            if not rules.accepts(fam, src, dst, proto, dport, "NEW"):
                return False
            self.table[key] = [src, sport, False, now + timeout]
            return True
        if e[0] != src or e[1] != sport:
            e[2] = True  # a reply: ESTABLISHED from now on
        # still NEW (a retransmitted opener): the rules decide again, as in the kernel
        if not e[2] and not rules.accepts(fam, src, dst, proto, dport, "NEW"):
            return False
        if proto == 6:
            e[3] = now + (10.0 if flags & _RST else 120.0 if flags & _FIN else 432000.0)
        else:
            e[3] = now + (120.0 if e[2] else 30.0)
        return True


@dataclass
class BaselineResult:
    name: str
    packets: int
    allowed: int
    dropped: int
    seconds: float
    extrapolated_from: int | None = None  # packets actually processed, when extrapolated

    @property
    def pps(self) -> float:
        # extrapolated results carry the total packet count and the extrapolated time
        return self.packets / self.seconds if self.seconds else float("inf")


_REC = struct.Struct("<IIII")
_ETH_TYPE = struct.Struct("!H")
_IP4 = struct.Struct("!BBHHHBBHII")
_PORTS = struct.Struct("!HH")
_TCP_FLAGS = 13


def handwritten_replay(
    path: str, ruleset: Ruleset, max_packets: int | None = None, rules: RuleLoop | None = None
) -> BaselineResult:
    """Baseline 1: struct parsing + dict conntrack + first-match rule loop (start-up excluded:
    pass a prebuilt ``rules`` to leave the rule digestion out of the timing)."""
    rules = rules or RuleLoop(ruleset)
    ct = DictConntrack()
    allowed = dropped = 0
    rec_unpack, ip_unpack, ports_unpack = _REC.unpack_from, _IP4.unpack_from, _PORTS.unpack_from
    t0 = time.perf_counter()
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        size = len(mm)
        pos = 24
        n = 0
        while pos + 16 <= size and (max_packets is None or n < max_packets):
            sec, usec, caplen, _orig = rec_unpack(mm, pos)
            p = pos + 16
            pos = p + caplen
            n += 1
            if caplen < 34 or mm[p + 12] != 8 or mm[p + 13] != 0:
                allowed += 1  # not IPv4: passes, as in npemu (the workloads have none)
                continue
            vihl, _tos, _tot, _id, _frag, _ttl, proto, _sum, src, dst = ip_unpack(mm, p + 14)
            t = p + 14 + (vihl & 15) * 4
            sport, dport = ports_unpack(mm, t) if proto in (6, 17) else (0, 0)
            flags = mm[t + _TCP_FLAGS] if proto == 6 else 0
            if ct.decide(rules, sec + usec * 1e-6, 4, src, dst, proto, sport, dport, flags):
                allowed += 1
            else:
                dropped += 1
    return BaselineResult("handwritten", n, allowed, dropped, time.perf_counter() - t0)


def scapy_replay(
    path: str,
    ruleset: Ruleset,
    max_packets: int,
    total_packets: int | None = None,
    rules: RuleLoop | None = None,
) -> BaselineResult:
    """Baseline 2: Scapy's PcapReader decodes each packet; same conntrack and rule loop. Runs
    ``max_packets`` and, given ``total_packets``, reports the time extrapolated to all."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.utils import PcapReader

    rules = rules or RuleLoop(ruleset)
    ct = DictConntrack()
    allowed = dropped = n = 0
    t0 = time.perf_counter()
    with PcapReader(path) as reader:
        for pkt in reader:
            if n >= max_packets:
                break
            n += 1
            if IP not in pkt:
                allowed += 1
                continue
            ip: Any = pkt[IP]
            src, dst = int(ipaddress.IPv4Address(ip.src)), int(ipaddress.IPv4Address(ip.dst))
            sport = dport = flags = 0
            if TCP in pkt:
                sport, dport, flags = pkt[TCP].sport, pkt[TCP].dport, int(pkt[TCP].flags)
            elif UDP in pkt:
                sport, dport = pkt[UDP].sport, pkt[UDP].dport
            if ct.decide(rules, float(pkt.time), 4, src, dst, ip.proto, sport, dport, flags):
                allowed += 1
            else:
                dropped += 1
    dt = time.perf_counter() - t0
    if total_packets is not None and total_packets > n:
        return BaselineResult(
            "scapy (extrapolated)",
            total_packets,
            allowed,
            dropped,
            dt * total_packets / max(n, 1),
            extrapolated_from=n,
        )
    return BaselineResult("scapy", n, allowed, dropped, dt)
