"""Kernel versus emulator: the same probes through real netfilter and through npemu.

The compiled ruleset (ipset + iptables-restore, or nft) is loaded into every node namespace of a
lab, each (from, to, port) cell is probed with real sockets, and the result is set beside
``npemu matrix``'s verdict for the same cell and address family.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from compiler.inventory import Endpoint, Inventory
from compiler.lower import lower
from compiler.model import Cluster
from compiler.render.ipset import render_ipset
from compiler.render.iptables import render_iptables
from compiler.render.nft import render_nft
from compiler.tables import Ruleset

from ..probe import Prober, ProbeSpec
from .lab import Lab
from .probes import Probe

BACKENDS = ("iptables", "nft")


@dataclass(frozen=True)
class VerifyRow:
    src: str
    dst: str
    port: int
    protocol: str
    emulator: str  # allow / deny / n/a
    kernel: str  # allow / deny / skipped (with detail)
    detail: str = ""

    @property
    def agree(self) -> bool:
        return self.kernel == "skipped" or self.emulator == self.kernel

    def to_dict(self) -> dict[str, Any]:
        return {
            "from": self.src,
            "to": self.dst,
            "port": self.port,
            "protocol": self.protocol,
            "emulator": self.emulator,
            "kernel": self.kernel,
            "agree": self.agree,
            "detail": self.detail,
        }


def load_ruleset(lab: Lab, ruleset: Ruleset, backend: str = "iptables") -> None:
    """Replace whatever npemu loaded before with ``ruleset`` on every node, and forget the
    connections the old rules let through."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    lab.reset_rules(conntrack=True)
    if backend == "nft":
        lab.apply_nft(render_nft(ruleset))
    else:
        lab.apply_iptables(
            render_ipset(ruleset),
            render_iptables(ruleset, family=4),
            render_iptables(ruleset, family=6),
        )


def compare(
    lab: Lab, cluster: Cluster, specs: Sequence[ProbeSpec], inventory: Inventory | None = None
) -> list[VerifyRow]:
    """Probe every spec in the lab (rules already loaded) and in the emulator."""
    inventory = inventory or Inventory(cluster)
    emulated = Prober(lower(cluster, inventory=inventory), inventory).run(list(specs))
    probes: list[Probe] = []
    for spec in specs:
        addrs = spec.addresses()
        family = 6 if addrs and ":" in addrs[0] else 4
        probes.append(Probe(spec.src.label, spec.dst.label, spec.port, spec.protocol, family))
    kernel = lab.probe_many(probes)
    rows = []
    for spec, emu, k in zip(specs, emulated, kernel, strict=True):
        if emu.verdict == "n/a" or k.status == "skipped":
            verdict = "skipped"
        else:
            verdict = "allow" if k.ok else "deny"
        rows.append(
            VerifyRow(
                spec.src.label,
                spec.dst.label,
                spec.port,
                spec.protocol,
                emu.verdict,
                verdict,
                k.status if verdict != "skipped" else (k.detail or "no common IP family"),
            )
        )
    return rows


def matrix_specs(
    endpoints: Sequence[Endpoint], ports: Sequence[tuple[int, str]]
) -> list[ProbeSpec]:
    return [
        ProbeSpec(s, d, port, proto) for port, proto in ports for s in endpoints for d in endpoints
    ]


def verify(
    cluster: Cluster,
    ports: Sequence[tuple[int, str]],
    externals: Sequence[str] = (),
    backend: str = "iptables",
) -> list[VerifyRow]:
    """Build a lab, load the compiled rules, probe every cell, compare, tear the lab down."""
    inventory = Inventory(cluster)
    endpoints = inventory.pod_endpoints() + [inventory.endpoint(ip) for ip in externals]
    with Lab(cluster, externals=externals) as lab:
        load_ruleset(lab, lower(cluster, inventory=inventory), backend)
        return compare(lab, cluster, matrix_specs(endpoints, ports), inventory)
