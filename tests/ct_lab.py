"""A three-namespace lab for cross-checking dataplane/conntrack.py against the kernel.

    [a] veth ---- veth [r] veth ---- veth [b]
   10.77.1.2  10.77.1.1   10.77.2.1  10.77.2.2
   fd77:1::2  fd77:1::1   fd77:2::1  fd77:2::2

``r`` routes between ``a`` and ``b`` and is the only place with conntrack rules: FORWARD holds one
counter-only rule per ctstate (so each forwarded packet bumps exactly one counter), which is how we
read the kernel's ctstate for every packet. Packets are crafted with Scapy and written as Ethernet
frames on ``a``'s or ``b``'s veth through an AF_PACKET socket opened inside that namespace, so both
directions of a flow cross ``r``'s PREROUTING conntrack hook. ``a`` and ``b`` drop all input, so their
own stacks never answer (a RST from ``b`` would otherwise disturb the flow under test). Neighbours are
static (no ARP/ND traffic crosses the counters). Every namespace has a per-run prefix and is removed
in ``close()``.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pyroute2 import netns

from dataplane.conntrack import CtState
from dataplane.packets import ip_to_pair

STATES = ("INVALID", "NEW", "ESTABLISHED", "RELATED", "UNTRACKED")
A4, R4A, R4B, B4 = "10.77.1.2", "10.77.1.1", "10.77.2.1", "10.77.2.2"
A6, R6A, R6B, B6 = "fd77:1::2", "fd77:1::1", "fd77:2::1", "fd77:2::2"


def _run(args: Sequence[str], input: str | None = None) -> str:
    done = subprocess.run(list(args), capture_output=True, text=True, input=input, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


@dataclass
class KEntry:
    """One line of ``conntrack -L -o extended``."""

    proto: str
    timeout: int
    state: str  # TCP/SCTP state, "" otherwise
    unreplied: bool
    assured: bool
    src: str
    dst: str
    sport: int
    dport: int


_LINE = re.compile(r"^\S+\s+\d+\s+(\S+)\s+\d+\s+(\d+)\s+(.*)$")


def parse_conntrack(text: str) -> list[KEntry]:
    out = []
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if not m:
            continue
        proto, timeout, rest = m.group(1), int(m.group(2)), m.group(3)
        first = rest.split()[0]
        state = "" if "=" in first else first
        kv: dict[str, str] = {}
        for tok in rest.split():
            if "=" in tok:
                k, v = tok.split("=", 1)
                kv.setdefault(k, v)  # the first (original) tuple
        out.append(
            KEntry(
                proto,
                timeout,
                state,
                "[UNREPLIED]" in rest,
                "[ASSURED]" in rest,
                kv.get("src", ""),
                kv.get("dst", ""),
                int(kv.get("sport", kv.get("id", "0"))),
                int(kv.get("dport", "0")),
            )
        )
    return out


class Lab:
    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.ns = {side: f"npemu-ct-{tag}-{side}" for side in ("a", "r", "b")}
        self.ifname = {"a": "veth0", "b": "veth0", "ra": "va", "rb": "vb"}
        self.mac: dict[str, str] = {}
        self._socks: dict[str, socket.socket] = {}
        self._made: list[str] = []

    # -- setup / teardown ------------------------------------------------------------------------

    def up(self) -> Lab:
        for name in self.ns.values():
            _run(["ip", "netns", "add", name])
            self._made.append(name)
        a, r, b = self.ns["a"], self.ns["r"], self.ns["b"]
        _run(
            [
                "ip",
                "-n",
                r,
                "link",
                "add",
                "va",
                "type",
                "veth",
                "peer",
                "name",
                "veth0",
                "netns",
                a,
            ]
        )
        _run(
            [
                "ip",
                "-n",
                r,
                "link",
                "add",
                "vb",
                "type",
                "veth",
                "peer",
                "name",
                "veth0",
                "netns",
                b,
            ]
        )
        plan = [
            (a, "veth0", A4, A6),
            (r, "va", R4A, R6A),
            (r, "vb", R4B, R6B),
            (b, "veth0", B4, B6),
        ]
        for ns, dev, v4, v6 in plan:
            _run(["ip", "-n", ns, "addr", "add", f"{v4}/24", "dev", dev])
            _run(["ip", "-n", ns, "addr", "add", f"{v6}/64", "dev", dev, "nodad"])
            _run(["ip", "-n", ns, "link", "set", dev, "up"])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            self.mac[f"{ns}/{dev}"] = _run(
                ["ip", "netns", "exec", ns, "cat", f"/sys/class/net/{dev}/address"]
            ).strip()
        for ns, gw4, gw6 in ((a, R4A, R6A), (b, R4B, R6B)):
            _run(["ip", "-n", ns, "route", "add", "default", "via", gw4])
            _run(["ip", "-n", ns, "-6", "route", "add", "default", "via", gw6])
        # static neighbours everywhere: no ARP/ND needed
        neigh = [
            (a, "veth0", R4A, R6A, f"{r}/va"),
            (r, "va", A4, A6, f"{a}/veth0"),
            (r, "vb", B4, B6, f"{b}/veth0"),
            (b, "veth0", R4B, R6B, f"{r}/vb"),
        ]
        for ns, dev, v4, v6, peer in neigh:
            for ip in (v4, v6):
                _run(
                    [
                        "ip",
                        "-n",
                        ns,
                        "neigh",
                        "replace",
                        ip,
                        "lladdr",
                        self.mac[peer],
                        "dev",
                        dev,
                        "nud",
                        "permanent",
                    ]
                )
        for key in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"):
            _run(["ip", "netns", "exec", r, "sysctl", "-qw", key])
        for ns in (a, b):
            for tool in ("iptables", "ip6tables"):
                _run(["ip", "netns", "exec", ns, tool, "-P", "INPUT", "DROP"])
        rules = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
        rules += "".join(f"-A FORWARD -m conntrack --ctstate {s}\n" for s in STATES)
        rules += "COMMIT\n"
        for tool in ("iptables-restore", "ip6tables-restore"):
            _run(["ip", "netns", "exec", r, tool], input=rules)
        for side in ("a", "b"):
            netns.pushns(self.ns[side])
            try:
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
                s.bind(("veth0", 0))
            finally:
                netns.popns()
            self._socks[side] = s
        return self

    def close(self) -> None:
        for s in self._socks.values():
            s.close()
        self._socks.clear()
        for name in reversed(self._made):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self._made.clear()

    # -- kernel knobs and readings -----------------------------------------------------------------

    def sysctl(self, key: str, value: str) -> None:
        _run(["ip", "netns", "exec", self.ns["r"], "sysctl", "-qw", f"{key}={value}"])

    def counters(self) -> dict[str, int]:
        total = dict.fromkeys(STATES, 0)
        for tool in ("iptables", "ip6tables"):
            text = _run(
                ["ip", "netns", "exec", self.ns["r"], tool, "-L", "FORWARD", "-v", "-x", "-n"]
            )
            for line in text.splitlines():
                parts = line.split()
                if parts and parts[0].isdigit() and "ctstate" in parts:
                    total[parts[parts.index("ctstate") + 1]] += int(parts[0])
        return total

    def conntrack(self) -> list[KEntry]:
        text = _run(["ip", "netns", "exec", self.ns["r"], "conntrack", "-L", "-o", "extended"])
        return parse_conntrack(text)

    def flush(self) -> None:
        subprocess.run(
            ["ip", "netns", "exec", self.ns["r"], "conntrack", "-F"], capture_output=True
        )

    # -- traffic ---------------------------------------------------------------------------------------

    def send(self, side: str, pkt: Any) -> CtState:
        """Send an IP packet (Scapy) from ``side`` ("a" or "b") and return the ctstate ``r`` gave it."""
        from scapy.layers.l2 import Ether

        dev = "va" if side == "a" else "vb"
        frame = (
            Ether(src=self.mac[f"{self.ns[side]}/veth0"], dst=self.mac[f"{self.ns['r']}/{dev}"])
            / pkt
        )
        before = self.counters()
        self._socks[side].send(bytes(frame))
        deadline = time.monotonic() + 2.0
        while True:
            after = self.counters()
            moved = [s for s in STATES if after[s] != before[s]]
            if moved:
                assert len(moved) == 1 and after[moved[0]] - before[moved[0]] == 1, (before, after)
                return CtState[moved[0]]
            if time.monotonic() > deadline:
                raise AssertionError(f"packet never reached r's FORWARD chain: {pkt!r}")
            time.sleep(0.01)


# ------------------------------------------------------------------------------------------------
# Scapy packet -> PacketBatch columns (just what conntrack reads)


def columns(pkt: Any, ts: float) -> dict[str, Any]:
    from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror, UDPerror
    from scapy.layers.inet6 import IPerror6, IPv6, _ICMPv6
    from scapy.layers.sctp import SCTP

    # re-dissect so that quoted packets inside ICMP errors become IPerror/IPerror6 layers
    pkt = IP(bytes(pkt)) if IP in pkt else IPv6(bytes(pkt))
    col: dict[str, Any] = {"ts": ts, "status": 0}
    ip = pkt[IP] if IP in pkt else pkt[IPv6]
    fam, col["src_hi"], col["src_lo"] = ip_to_pair(ip.src)
    _, col["dst_hi"], col["dst_lo"] = ip_to_pair(ip.dst)
    col["family"] = fam
    col["proto"] = ip.proto if fam == 4 else ip.nh
    if TCP in pkt and not isinstance(pkt[TCP], TCPerror):
        t = pkt[TCP]
        col.update(
            sport=t.sport,
            dport=t.dport,
            tcp_flags=int(t.flags),
            seq=t.seq,
            ack=t.ack,
            window=t.window,
        )
        col["payload_len"] = len(bytes(t.payload))
    elif UDP in pkt and not isinstance(pkt[UDP], UDPerror):
        col.update(
            sport=pkt[UDP].sport, dport=pkt[UDP].dport, payload_len=len(bytes(pkt[UDP].payload))
        )
    elif SCTP in pkt:
        s = pkt[SCTP]
        col.update(sport=s.sport, dport=s.dport, seq=s.tag, sctp_chunk=bytes(s.payload)[0])
    elif fam == 4 and ICMP in pkt:
        ic = pkt[ICMP]
        col.update(icmp_type=ic.type, icmp_code=ic.code, icmp_id=getattr(ic, "id", 0) or 0)
        if IPerror in pkt:
            _inner(col, pkt[IPerror], pkt[IPerror].proto)
    elif fam == 6:
        ic = pkt[IPv6].payload
        while not isinstance(ic, _ICMPv6) and ic.payload:
            ic = ic.payload
        col.update(icmp_type=ic.type, icmp_code=ic.code, icmp_id=getattr(ic, "id", 0) or 0)
        col["proto"] = 58
        if IPerror6 in pkt:
            _inner(col, pkt[IPerror6], pkt[IPerror6].nh)
    return col


def _inner(col: dict[str, Any], inner: Any, proto: int) -> None:
    _, col["inner_src_hi"], col["inner_src_lo"] = ip_to_pair(inner.src)
    _, col["inner_dst_hi"], col["inner_dst_lo"] = ip_to_pair(inner.dst)
    col["inner_proto"] = proto
    l4 = inner.payload
    if proto in (6, 17, 132):
        col["inner_sport"], col["inner_dport"] = l4.sport, l4.dport
    elif proto in (1, 58):
        col["inner_sport"], col["inner_dport"] = getattr(l4, "id", 0), l4.type
