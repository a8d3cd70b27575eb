"""Shared, session-scoped workloads for the quick benches (small on purpose: the whole bench/
directory runs inside ``python -m pytest`` in well under a minute)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from bench.synth import CaptureInfo, FlowSet, cluster_for_rules, expected_counts, workload

QUICK_RULES = 1_000
QUICK_FLOWS = 500
QUICK_PACKETS = 20_000


@dataclass
class Workload:
    cluster: Any
    ruleset: Any
    flows: FlowSet
    capture: CaptureInfo
    expected: tuple[int, int]  # (allowed, dropped) the replay must report

    @property
    def path(self) -> str:
        return self.capture.path


@cache
def ruleset_of(rules: int) -> tuple[Any, Any]:
    """(cluster, ruleset) of about ``rules`` rules, built once per session."""
    _spec, cluster, rs = cluster_for_rules(rules)
    return cluster, rs


@pytest.fixture(scope="session")
def quick_workload(tmp_path_factory: pytest.TempPathFactory) -> Workload:
    cluster, rs = ruleset_of(QUICK_RULES)
    path = Path(tmp_path_factory.mktemp("bench")) / "quick.pcap"
    flows, info = workload(cluster, rs, QUICK_FLOWS, QUICK_PACKETS, path)
    return Workload(cluster, rs, flows, info, expected_counts(flows, info.packets))
