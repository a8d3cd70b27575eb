"""The upstream e2e scenarios (TCP and UDP) on a real kernel: the rendered iptables and nft
rulesets, loaded into the node namespaces of a lab, give the expected truth tables, cell for
cell the same as the emulator's."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from compiler.inventory import Inventory
from compiler.lower import lower
from dataplane.netns.lab import Lab
from dataplane.netns.verify import BACKENDS, compare, load_ruleset, matrix_specs

from .conftest import netns_unavailable_reason
from .e2e_netpol_model import build_cluster, diff_report
from .test_e2e_netpol import SCENARIOS, Scenario

pytestmark = pytest.mark.netns

KERNEL_SCENARIOS = [s for s in SCENARIOS if s.context in ("TCP", "UDP")]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    if netns_unavailable_reason():
        pytest.skip(netns_unavailable_reason() or "")
    # one topology for every scenario: only policies and labels change between them
    with Lab(build_cluster(protocols=("TCP", "UDP"), ports=(80, 81), family="ipv4")) as built:
        yield built


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sc", KERNEL_SCENARIOS, ids=[s.id for s in KERNEL_SCENARIOS])
def test_kernel_matches_expected_and_emulator(lab: Lab, sc: Scenario, backend: str) -> None:
    failures: list[str] = []
    for step in sc.steps("ipv4"):
        cluster = build_cluster(
            step.policies,
            protocols=sc.protocols,
            ports=sc.ports,
            family="ipv4",
            namespace_labels=step.namespace_labels,
            pod_labels=step.pod_labels,
        )
        inventory = Inventory(cluster)
        load_ruleset(lab, lower(cluster, inventory=inventory), backend)
        specs = matrix_specs(
            inventory.pod_endpoints(), [(port, proto) for port, proto, _ in step.checks]
        )
        rows = compare(lab, cluster, specs, inventory)
        for port, proto, reach in step.checks:
            expected = reach.copy().allow_loopback().table
            kernel = {
                (r.src, r.dst): r.kernel == "allow"
                for r in rows
                if (r.port, r.protocol) == (port, proto)
            }
            emulator = {
                (r.src, r.dst): r.emulator == "allow"
                for r in rows
                if (r.port, r.protocol) == (port, proto)
            }
            title = f"{sc.id} / {step.name} [{port}/{proto}] via {backend}"
            failures += filter(
                None,
                [
                    diff_report(title + " kernel", expected, kernel, reach.pods),
                    diff_report(title + " emulator", expected, emulator, reach.pods),
                ],
            )
    assert not failures, "\n\n".join(failures)
