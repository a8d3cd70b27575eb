"""Probes: a request and its reply sent through conntrack and the tables (``matrix``, ``check``).

A probe is allowed iff both its request (TCP SYN, UDP datagram, SCTP INIT) and the reply (SYN-ACK,
answer, INIT-ACK) are accepted, each passing conntrack first and the tables after, with a fresh
connection-tracking table per probe. No rule allows a reply: conntrack does, as in the kernel.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from compiler.inventory import Endpoint, Inventory
from compiler.lower import isolation
from compiler.tables import Ruleset

from .conntrack import Conntrack, CtState
from .engine import Engine
from .packets import ACK, PROTO_NUMBERS, SYN, PacketBatch, ip_to_pair
from .walker import Packet, Step, Trace, Walker

_PORT_RE = re.compile(r"^(\d{1,5})(?:/(TCP|UDP|SCTP))?$", re.IGNORECASE)
CLIENT_PORT = 40000
SCTP_INIT, SCTP_INIT_ACK = 1, 2


def parse_port(text: str) -> tuple[int, str]:
    """``80/TCP``, ``53/udp``, ``80`` (TCP) -> (port, protocol). Raises ValueError."""
    m = _PORT_RE.match(text.strip())
    if not m or not 1 <= int(m.group(1)) <= 65535:
        raise ValueError(
            f"bad port {text!r}: use PORT or PORT/PROTOCOL with PORT 1-65535 and "
            "PROTOCOL TCP, UDP or SCTP (e.g. 80/TCP, 53/UDP)"
        )
    return int(m.group(1)), (m.group(2) or "TCP").upper()


@dataclass(frozen=True)
class ProbeSpec:
    src: Endpoint
    dst: Endpoint
    port: int
    protocol: str

    def addresses(self) -> tuple[str, str] | None:
        """(src ip, dst ip) of the first family both ends have, IPv4 first."""
        for fam in (4, 6):
            s, d = self.src.ip_for_family(fam), self.dst.ip_for_family(fam)
            if s and d:
                return s, d
        return None


@dataclass
class ProbeResult:
    spec: ProbeSpec
    verdict: str  # "allow", "deny" or "n/a" (no common IP family)
    request_ct: str = ""
    reply_ct: str = ""
    request_ok: bool = False
    reply_ok: bool = False
    explanation: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        return {
            "from": self.spec.src.label,
            "to": self.spec.dst.label,
            "port": self.spec.port,
            "protocol": self.spec.protocol,
            "verdict": self.verdict,
        }


def _probe_rows(specs: list[ProbeSpec]) -> tuple[PacketBatch, list[int]]:
    """Two rows per probe with a common family: request then reply. Returns the probes' indices."""
    cols: dict[str, list[int]] = {
        k: []
        for k in (
            "family",
            "src_hi",
            "src_lo",
            "dst_hi",
            "dst_lo",
            "proto",
            "sport",
            "dport",
            "tcp_flags",
            "sctp_chunk",
            "seq",
            "ack",
        )
    }
    used: list[int] = []
    for i, spec in enumerate(specs):
        addrs = spec.addresses()
        if addrs is None:
            continue
        used.append(i)
        (fam, sh, sl), (_, dh, dl) = ip_to_pair(addrs[0]), ip_to_pair(addrs[1])
        proto = PROTO_NUMBERS[spec.protocol]
        for is_reply in (False, True):
            a, b = ((dh, dl), (sh, sl)) if is_reply else ((sh, sl), (dh, dl))
            ports = (spec.port, CLIENT_PORT) if is_reply else (CLIENT_PORT, spec.port)
            cols["family"].append(fam)
            cols["src_hi"].append(a[0])
            cols["src_lo"].append(a[1])
            cols["dst_hi"].append(b[0])
            cols["dst_lo"].append(b[1])
            cols["proto"].append(proto)
            cols["sport"].append(ports[0])
            cols["dport"].append(ports[1])
            cols["tcp_flags"].append((SYN | ACK if is_reply else SYN) if proto == 6 else 0)
            cols["sctp_chunk"].append(
                (SCTP_INIT_ACK if is_reply else SCTP_INIT) if proto == 132 else 0
            )
            if proto == 132:
                # SCTP: an INIT carries verification tag 0 (RFC 9260 8.5.1); the INIT-ACK carries
                # the initiate tag the INIT announced.
                cols["seq"].append(1000 if is_reply else 0)
                cols["ack"].append(0)
            else:
                cols["seq"].append(2000 if is_reply else 1000)
                cols["ack"].append(1001 if is_reply else 0)
    n = len(cols["family"])
    batch = PacketBatch.from_columns(n=n, **cols) if n else PacketBatch.empty(0)
    batch.ts[:] = np.arange(n) * 0.001  # the reply follows its request by a millisecond
    return batch, used


class Prober:
    def __init__(
        self,
        ruleset: Ruleset,
        inventory: Inventory,
        conntrack_options: dict[str, Any] | None = None,
    ) -> None:
        self.ruleset = ruleset
        self.inventory = inventory
        self.engine = Engine(ruleset)
        self._walker: Walker | None = None
        self.conntrack_options = conntrack_options or {}
        self._ingress_of, self._egress_of = isolation(inventory, inventory.cluster.policies)
        self._pod_chains = {
            (c.owner, "ingress" if name.startswith("NPEMU-I-") else "egress"): name
            for name, c in ruleset.chains.items()
            if name.startswith(("NPEMU-I-", "NPEMU-E-"))
        }

    @property
    def walker(self) -> Walker:
        if self._walker is None:
            self._walker = Walker(self.ruleset)
        return self._walker

    def run(self, specs: list[ProbeSpec]) -> list[ProbeResult]:
        """Decide every probe: policy verdicts for all packets in one engine batch, then each
        probe's two packets through a fresh conntrack."""
        results = [ProbeResult(spec, "n/a") for spec in specs]
        batch, used = _probe_rows(specs)
        if not used:
            return results
        allowed_if_new = self.engine.evaluate(batch, "NEW")
        for k, i in enumerate(used):
            pair = batch.take(slice(2 * k, 2 * k + 2))
            ct = Conntrack(**self.conntrack_options)
            verdicts, states, _ = ct.run(pair, allowed_if_new[2 * k : 2 * k + 2])
            r = results[i]
            r.request_ok, r.reply_ok = bool(verdicts[0]), bool(verdicts[1])
            r.request_ct = CtState(int(states[0])).name.lower()
            r.reply_ct = CtState(int(states[1])).name.lower()
            r.verdict = "allow" if r.request_ok and r.reply_ok else "deny"
        return results

    def matrix(self, endpoints: list[Endpoint], ports: list[tuple[int, str]]) -> list[ProbeResult]:
        specs = [
            ProbeSpec(s, d, port, proto)
            for port, proto in ports
            for s in endpoints
            for d in endpoints
        ]
        return self.run(specs)

    # -- explanation ---------------------------------------------------------------------------

    def explain(self, spec: ProbeSpec) -> ProbeResult:
        result = self.run([spec])[0]
        addrs = spec.addresses()
        if addrs is None:
            result.explanation = {
                "error": f"{spec.src.label} and {spec.dst.label} share no IP family"
            }
            return result
        src_ip, dst_ip = addrs
        request = Packet.make(src_ip, dst_ip, spec.protocol.lower(), spec.port, "NEW")
        reply_state = "ESTABLISHED" if result.request_ok else "NEW"
        if spec.protocol == "TCP" and not result.request_ok:
            reply_state = "INVALID"  # an unsolicited SYN-ACK
        reply = Packet.make(dst_ip, src_ip, spec.protocol.lower(), CLIENT_PORT, reply_state)
        trace = self.walker.walk(request)
        result.explanation = {
            "packets": [
                {
                    "packet": "request",
                    "ct": result.request_ct,
                    "verdict": "accept" if result.request_ok else "drop",
                    "decided_by": self._decider(trace),
                },
                {
                    "packet": "reply",
                    "ct": result.reply_ct,
                    "verdict": "accept" if result.reply_ok else "drop",
                    "decided_by": self._decider(self.walker.walk(reply)),
                },
            ],
            "egress": self._direction("egress", spec.src, request, trace),
            "ingress": self._direction("ingress", spec.dst, request, trace),
        }
        return result

    @staticmethod
    def _decider(trace: Trace) -> dict[str, Any]:
        if trace.final is None:
            last = trace.steps[-1] if trace.steps else None
            return {
                "chain": "FORWARD",
                "rule": None,
                "reason": "fell through the npemu chains (allowed)"
                if last is None
                else f"allowed after {last.chain} rule {last.index}: {last.rule.comment}",
            }
        return {
            "chain": trace.final.chain,
            "rule": trace.final.index,
            "reason": trace.final.rule.comment,
        }

    def _direction(
        self, direction: str, endpoint: Endpoint, request: Packet, trace: Trace
    ) -> dict[str, Any]:
        """One direction on its own: isolation, the policies, and the rule that decided."""
        pod = endpoint.pod
        out: dict[str, Any] = {"endpoint": endpoint.label}
        if pod is None or pod.host_network:
            out.update(
                isolated=False,
                verdict="allow",
                reason="not a pod: policies do not apply"
                if pod is None
                else "hostNetwork pod: policies never select it",
            )
            return out
        policies = (self._egress_of if direction == "egress" else self._ingress_of).get(pod.key, [])
        out.update(isolated=bool(policies), policies=[p.key for p in policies])
        exempt = next((s for s in trace.steps if _kind(s) == "node-exemption"), None)
        if exempt:
            out.update(
                verdict="allow", reason=exempt.rule.comment, chain=exempt.chain, rule=exempt.index
            )
            return out
        chain = self._pod_chains.get((pod.key, direction))
        if not policies or chain is None:
            out.update(
                verdict="allow",
                reason=f"not isolated for {direction}: no policy selecting it "
                f"has {direction.title()} in policyTypes",
            )
            return out
        steps = self.walker.walk(request, start=chain).steps
        decided = next(
            (
                s
                for s in steps
                if _kind(s) in ("self", "default-deny") or (_kind(s) == "policy-rule")
            ),
            None,
        )
        if decided is None:  # pragma: no cover - per-pod chains always end in DROP
            out.update(verdict="allow", reason="fell through")
            return out
        out.update(
            verdict="deny" if _kind(decided) == "default-deny" else "allow",
            reason=decided.rule.comment,
            chain=decided.chain,
            rule=decided.index,
        )
        return out


def _kind(step: Step) -> str | None:
    return step.rule.provenance.kind if step.rule.provenance else None
