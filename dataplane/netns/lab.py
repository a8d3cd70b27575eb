"""The lab facade: build a cluster as namespaces, load rules into the nodes, probe, tear down.

    with Lab(cluster, externals=["192.168.5.10"]) as lab:
        lab.apply_iptables(ipset_text, iptables_text, ip6tables_text)
        results = lab.probe_many([Probe("a/web", "b/db", 5432)])

Rules go into every node namespace (or one, with ``node=``) and filter its FORWARD path: pod to
pod on one node crosses that node's FORWARD once; across nodes it crosses both, each with its own
conntrack. Teardown runs on normal exit, on any exception including KeyboardInterrupt, on
SIGTERM (turned into SystemExit while the lab is open), and from an atexit hook as a last resort.
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
from collections.abc import Iterable
from types import FrameType, TracebackType
from typing import Any

from compiler.model import Cluster
from dataplane.netns import apply as _apply
from dataplane.netns.probes import Probe, ProbeResult, ServerPool, probe_many
from dataplane.netns.topology import (
    LabError,
    Plan,
    build,
    cleanup_leftovers,
    forget_owner,
    new_run_prefix,
    plan,
    record_owner,
    remove_namespaces,
)

__all__ = [
    "Lab",
    "LabError",
    "LabPermissionError",
    "Probe",
    "ProbeResult",
    "cleanup_leftovers",
]


class LabPermissionError(LabError):
    """Raised before anything is created when the process may not create namespaces."""


class Lab:
    """A cluster as network namespaces, alive between __enter__ and __exit__ (or up()/close())."""

    def __init__(
        self,
        cluster: Cluster,
        externals: Iterable[str] = (),
        *,
        prefix: str | None = None,
        tcp_timeout: float = 1.0,
        udp_timeout: float = 0.8,
        concurrency: int = 512,
    ) -> None:
        self.cluster = cluster
        self.prefix = prefix or new_run_prefix()
        self.plan: Plan = plan(cluster, externals, self.prefix)
        self.tcp_timeout = tcp_timeout
        self.udp_timeout = udp_timeout
        self.concurrency = concurrency
        self._created: list[str] = []
        self._servers: ServerPool | None = None
        self._old_sigterm: Any = None
        self._closed = True

    # -- life cycle

    @staticmethod
    def require_root() -> None:
        """Raise LabPermissionError (one line) unless running as root."""
        if os.geteuid() != 0:
            raise LabPermissionError(
                "the namespace lab needs root (CAP_NET_ADMIN) to create network namespaces; "
                "run it with sudo"
            )

    def up(self) -> Lab:
        """Create everything; on any failure remove what was created and re-raise."""
        self.require_root()
        self._closed = False
        atexit.register(self.close)
        self._trap_sigterm()
        try:
            record_owner(self.prefix)
            build(self.plan, self._created)
            self._servers = ServerPool()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop servers, close sockets, remove this run's namespaces. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        errors: list[str] = []
        try:
            if self._servers is not None:
                # Sockets pin their namespace: close them before removing namespaces.
                self._servers.close()
                self._servers = None
        finally:
            errors = remove_namespaces(reversed(self._created))
            self._created.clear()
            forget_owner(self.prefix)
            self._restore_sigterm()
        if errors:
            raise LabError("could not remove namespaces: " + "; ".join(errors))

    def __enter__(self) -> Lab:
        return self.up()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _trap_sigterm(self) -> None:
        # Only the main thread may set handlers, and a handler someone else installed is kept.
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return

        def on_term(signum: int, frame: FrameType | None) -> None:
            raise SystemExit(128 + signum)

        self._old_sigterm = signal.signal(signal.SIGTERM, on_term)

    def _restore_sigterm(self) -> None:
        if self._old_sigterm is not None:
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None

    # -- rules

    def node_namespaces(self, node: str | None = None) -> list[str]:
        if node is None:
            return [n.netns for n in self.plan.nodes.values()]
        if node not in self.plan.nodes:
            raise LabError(f"unknown node {node!r}; lab nodes: {', '.join(self.plan.nodes)}")
        return [self.plan.nodes[node].netns]

    def apply_iptables(
        self,
        ipset_text: str = "",
        iptables_text: str = "",
        ip6tables_text: str = "",
        node: str | None = None,
    ) -> None:
        """ipset restore + iptables-restore/ip6tables-restore --noflush in every (or one) node."""
        self._require_up()
        for ns in self.node_namespaces(node):
            _apply.apply_iptables(ns, ipset_text, iptables_text, ip6tables_text)

    def apply_nft(self, script: str, node: str | None = None) -> None:
        """nft -f - in every (or one) node namespace."""
        self._require_up()
        for ns in self.node_namespaces(node):
            _apply.apply_nft(ns, script)

    def reset_rules(self, node: str | None = None, conntrack: bool = True) -> None:
        """Remove all rules and sets (and, by default, all conntrack state) from the nodes."""
        self._require_up()
        for ns in self.node_namespaces(node):
            _apply.reset_rules(ns)
            if conntrack:
                _apply.flush_conntrack(ns)

    def flush_conntrack(self, node: str | None = None) -> None:
        self._require_up()
        for ns in self.node_namespaces(node):
            _apply.flush_conntrack(ns)

    def conntrack_entries(self, node: str) -> str:
        self._require_up()
        return _apply.list_conntrack(self.node_namespaces(node)[0])

    # -- probes

    def probe_many(self, probes: Iterable[Probe]) -> list[ProbeResult]:
        """Run all probes concurrently; results in input order."""
        self._require_up()
        assert self._servers is not None
        return probe_many(
            self.plan,
            self._servers,
            probes,
            tcp_timeout=self.tcp_timeout,
            udp_timeout=self.udp_timeout,
            concurrency=self.concurrency,
        )

    def probe(self, source: str, destination: str, port: int, protocol: str = "TCP") -> ProbeResult:
        return self.probe_many([Probe(source, destination, port, protocol)])[0]

    # -- introspection

    @property
    def namespaces(self) -> list[str]:
        """The namespaces this run created (empty once closed)."""
        return list(self._created)

    def netns_of(self, endpoint: str) -> str:
        """Namespace of a pod key, "node/<name>" or an IP of the lab."""
        return self.plan.resolve(endpoint).netns

    def describe(self) -> dict[str, Any]:
        """JSON-ready map of the lab: for each pod, node and external, its namespace and how to
        enter it by hand."""

        def enter(ns: str) -> str:
            return f"ip netns exec {ns} bash"

        p = self.plan
        pods: dict[str, Any] = {}
        for key, spec in p.pods.items():
            pods[key] = {
                "netns": spec.netns,
                "node": spec.node,
                "ips": list(spec.ips),
                "enter": enter(spec.netns),
            }
        for key, (node_name, ips) in p.host_pods.items():
            ns = p.nodes[node_name].netns
            pods[key] = {
                "netns": ns,
                "node": node_name,
                "ips": list(ips),
                "hostNetwork": True,
                "enter": enter(ns),
            }
        return {
            "prefix": self.prefix,
            "fabric": {"netns": p.fabric, "enter": enter(p.fabric)},
            "nodes": {
                name: {"netns": n.netns, "addresses": list(n.addresses), "enter": enter(n.netns)}
                for name, n in p.nodes.items()
            },
            "pods": pods,
            "externals": {
                ip: {"netns": e.netns, "enter": enter(e.netns)} for ip, e in p.externals.items()
            },
            "skipped": dict(p.skipped),
        }

    def _require_up(self) -> None:
        if self._closed:
            raise LabError("the lab is not running (use `with Lab(...) as lab:` or lab.up())")
