"""Shared test configuration: the `netns` marker skips only where namespaces cannot be made."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import uuid

import pytest


@functools.cache
def netns_unavailable_reason() -> str | None:
    """None when this process can create a network namespace, else why not."""
    if os.geteuid() != 0:
        return "needs root (CAP_NET_ADMIN) to create network namespaces"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    name = f"npemu-probe-{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = None
    for item in items:
        if item.get_closest_marker("netns") is None:
            continue
        if reason is None:
            reason = netns_unavailable_reason() or ""
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))
