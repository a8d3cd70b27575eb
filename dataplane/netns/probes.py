"""Real-socket probes between lab namespaces, many in flight, from one process.

Design: no helper processes. A socket is bound to the network namespace it was created in, so
this module enters a namespace with ``topology.entered`` (setns for the calling thread
only), creates the socket, and leaves again; afterwards the socket works from anywhere in the
process. That gives:

* servers (``ServerPool``): listening TCP and UDP sockets, one per (namespace, address, port),
  driven by one background thread with a selectors loop. TCP accepts, sends one byte and closes;
  UDP echoes. Binding the exact address (not the wildcard) makes a UDP reply leave from the
  address the probe was sent to even in a node namespace that owns several addresses.
* clients (``run_probes``): non-blocking sockets, bound to the source address of the
  destination's family, all driven by one selectors loop in the caller's thread, up to
  ``concurrency`` at a time. TCP is "connected" once the handshake completes and the server's
  byte arrives; UDP is "answered" once the echo arrives (the datagram is sent twice within the
  timeout, so one lost datagram is not a deny).

A SYN dropped in FORWARD shows as a timeout, not a reset; a REJECT shows as refused or unreachable.
This kernel has no SCTP sockets, so SCTP probes are reported as skipped.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import selectors
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from compiler.inventory import is_ip
from dataplane.netns.topology import Endpoint, LabError, Plan, entered

PROTOCOLS = ("TCP", "UDP", "SCTP")


@dataclass(frozen=True)
class Probe:
    """One connection attempt. source/destination: "ns/pod", "node/<name>" or an IP literal.

    family (4 or 6) picks the destination address of a dual-stack pod; by default the first
    address of the destination whose family the source also has.
    """

    source: str
    destination: str
    port: int
    protocol: str = "TCP"
    family: int | None = None


@dataclass(frozen=True)
class ProbeResult:
    probe: Probe
    ok: bool
    # connected | answered | timeout | refused | unreachable | no-reply | skipped | error
    status: str
    source_ip: str | None = None
    destination_ip: str | None = None
    elapsed: float = 0.0  # seconds
    detail: str = ""


@dataclass
class _Planned:
    index: int
    probe: Probe
    src: Endpoint
    dst: Endpoint
    src_ip: str
    dst_ip: str
    protocol: str


def _fam(ip: str) -> int:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def _fam_number(ip: str) -> int:
    return 6 if ":" in ip else 4


def resolve(plan: Plan, index: int, probe: Probe) -> _Planned | ProbeResult:
    """Pick namespaces and addresses for a probe, or say why it cannot run."""
    protocol = probe.protocol.upper()
    if protocol not in PROTOCOLS:
        return ProbeResult(probe, False, "error", detail=f"unknown protocol {probe.protocol!r}")
    if not 0 < probe.port < 65536:
        return ProbeResult(probe, False, "error", detail=f"port {probe.port} out of range")
    try:
        src = plan.resolve(probe.source)
        dst = plan.resolve(probe.destination)
    except LabError as e:
        return ProbeResult(probe, False, "error", detail=str(e))
    dst_candidates = list(dst.ips)
    if is_ip(probe.destination):
        dst_candidates = [ipaddress.ip_address(probe.destination).compressed]
    if probe.family is not None:
        dst_candidates = [ip for ip in dst_candidates if _fam_number(ip) == probe.family]
    src_families = {_fam(ip) for ip in src.ips}
    dst_ip = next((ip for ip in dst_candidates if _fam(ip) in src_families), None)
    if dst_ip is None:
        return ProbeResult(
            probe,
            False,
            "skipped",
            detail=f"{src.label} and {dst.label} share no address family",
        )
    src_ip = next(ip for ip in src.ips if _fam(ip) == _fam(dst_ip))
    if protocol == "SCTP":
        return ProbeResult(
            probe,
            False,
            "skipped",
            src_ip,
            dst_ip,
            detail="this kernel has no SCTP sockets (socket(IPPROTO_SCTP) fails)",
        )
    return _Planned(index, probe, src, dst, src_ip, dst_ip, protocol)


# ---------------------------------------------------------------------------------------------
# Servers.


class ServerPool:
    """Listening sockets in lab namespaces, served by one daemon thread until close()."""

    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()
        self._listeners: dict[tuple[str, str, int, str], socket.socket] = {}
        self._pending: list[socket.socket] = []
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._stop = False
        self._thread = threading.Thread(target=self._serve, name="npemu-lab-servers", daemon=True)
        self._thread.start()

    def ensure(self, ns: str, ip: str, port: int, protocol: str) -> None:
        """Listen on ip:port/protocol inside namespace ns (idempotent)."""
        key = (ns, ip, port, protocol)
        if key in self._listeners:
            return
        kind = socket.SOCK_STREAM if protocol == "TCP" else socket.SOCK_DGRAM
        with entered(ns):
            s = socket.socket(_fam(ip), kind)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((ip, port))
            if kind == socket.SOCK_STREAM:
                s.listen(4096)
            s.setblocking(False)
        except OSError as e:
            s.close()
            raise LabError(
                f"cannot listen on {ip} port {port}/{protocol} in {ns}: {e.strerror}"
            ) from e
        self._listeners[key] = s
        with self._lock:
            self._pending.append(s)
        os.write(self._wake_w, b"x")

    def _serve(self) -> None:
        while not self._stop:
            for key, _ in self._sel.select(timeout=1.0):
                if key.data == "wake":
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                    with self._lock:
                        new, self._pending = self._pending, []
                    for s in new:
                        self._sel.register(s, selectors.EVENT_READ, "listener")
                    continue
                s = key.fileobj
                assert isinstance(s, socket.socket)
                if s.type == socket.SOCK_STREAM:
                    self._accept_all(s)
                else:
                    self._echo_all(s)

    @staticmethod
    def _accept_all(s: socket.socket) -> None:
        while True:
            try:
                conn, _ = s.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            # One byte proves data flows both ways after the handshake; a fresh socket's send
            # buffer is empty, so this never blocks.
            with contextlib.suppress(OSError):
                conn.send(b"k")
            conn.close()

    @staticmethod
    def _echo_all(s: socket.socket) -> None:
        while True:
            try:
                data, addr = s.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # e.g. a queued ICMP error; keep draining
            with contextlib.suppress(OSError):
                s.sendto(data, addr)

    def close(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        self._thread.join(timeout=5)
        for s in self._listeners.values():
            s.close()
        with self._lock:
            for s in self._pending:
                s.close()
        self._listeners.clear()
        self._sel.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


# ---------------------------------------------------------------------------------------------
# Clients.


@dataclass
class _Flight:
    planned: _Planned
    sock: socket.socket
    started: float
    deadline: float
    phase: str  # "connect" | "read" (TCP) | "udp"
    resend_at: float = 0.0
    payload: bytes = b""


_UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EACCES, errno.EPERM}


def run_probes(
    planned: list[_Planned],
    *,
    tcp_timeout: float = 1.0,
    udp_timeout: float = 0.8,
    concurrency: int = 512,
) -> dict[int, ProbeResult]:
    """Run the probes with up to `concurrency` sockets in flight; results keyed by index."""
    results: dict[int, ProbeResult] = {}
    # Sorted by source namespace so consecutive starts share one setns.
    queue = sorted(planned, key=lambda p: p.src.netns, reverse=True)
    sel = selectors.DefaultSelector()
    flights: dict[int, _Flight] = {}

    def finish(f: _Flight, ok: bool, status: str, detail: str = "") -> None:
        p = f.planned
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(f.sock)
        f.sock.close()
        del flights[p.index]
        results[p.index] = ProbeResult(
            p.probe, ok, status, p.src_ip, p.dst_ip, time.monotonic() - f.started, detail
        )

    def fail_with(f: _Flight, code: int) -> None:
        if code == errno.ECONNREFUSED:
            finish(f, False, "refused", "connection refused (RST or ICMP port unreachable)")
        elif code in _UNREACHABLE:
            finish(f, False, "unreachable", os.strerror(code))
        else:
            finish(f, False, "error", os.strerror(code))

    try:
        while queue or flights:
            if queue and len(flights) < concurrency:
                _start_some(
                    queue,
                    concurrency - len(flights),
                    flights,
                    sel,
                    results,
                    tcp_timeout,
                    udp_timeout,
                )
            now = time.monotonic()
            next_wake = min(
                (min(f.deadline, f.resend_at or f.deadline) for f in flights.values()), default=now
            )
            for key, _ in sel.select(timeout=max(0.0, next_wake - now) if flights else 0):
                f = flights.get(key.data)
                if f is None:
                    continue
                if f.phase == "connect":
                    code = f.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if code:
                        fail_with(f, code)
                        continue
                    f.phase = "read"
                    sel.modify(f.sock, selectors.EVENT_READ, key.data)
                    continue
                try:
                    data = f.sock.recv(2048)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as e:
                    fail_with(f, e.errno or 0)
                    continue
                if f.phase == "read":
                    if data:
                        finish(f, True, "connected")
                    else:
                        finish(f, False, "no-reply", "connection closed before the server's byte")
                elif data == f.payload:
                    finish(f, True, "answered")
            now = time.monotonic()
            for f in list(flights.values()):
                if now >= f.deadline:
                    if f.phase == "read":
                        finish(f, False, "no-reply", "handshake completed but no data arrived")
                    else:
                        finish(f, False, "timeout", "no answer within the timeout")
                elif f.phase == "udp" and f.resend_at and now >= f.resend_at:
                    f.resend_at = 0.0
                    with contextlib.suppress(OSError):
                        f.sock.send(f.payload)
    finally:
        for f in list(flights.values()):
            f.sock.close()
        sel.close()
    return results


def _start_some(
    queue: list[_Planned],
    budget: int,
    flights: dict[int, _Flight],
    sel: selectors.BaseSelector,
    results: dict[int, ProbeResult],
    tcp_timeout: float,
    udp_timeout: float,
) -> None:
    current: str | None = None
    stack = contextlib.ExitStack()
    try:
        while queue and budget > 0:
            p = queue.pop()
            budget -= 1
            if p.src.netns != current:
                stack.close()
                stack = contextlib.ExitStack()
                stack.enter_context(entered(p.src.netns))
                current = p.src.netns
            kind = socket.SOCK_STREAM if p.protocol == "TCP" else socket.SOCK_DGRAM
            started = time.monotonic()
            try:
                s = socket.socket(_fam(p.dst_ip), kind)
            except OSError as e:
                results[p.index] = ProbeResult(
                    p.probe, False, "error", p.src_ip, p.dst_ip, detail=f"socket: {e.strerror}"
                )
                continue
            try:
                s.setblocking(False)
                s.bind((p.src_ip, 0))
                if kind == socket.SOCK_STREAM:
                    code = s.connect_ex((p.dst_ip, p.probe.port))
                    if code not in (0, errno.EINPROGRESS):
                        raise OSError(code, os.strerror(code))
                    f = _Flight(p, s, started, started + tcp_timeout, "connect")
                    sel.register(s, selectors.EVENT_WRITE, p.index)
                else:
                    # connect() on UDP makes ICMP port-unreachable surface as ECONNREFUSED.
                    s.connect((p.dst_ip, p.probe.port))
                    payload = f"npemu-{p.index}".encode()
                    s.send(payload)
                    f = _Flight(
                        p,
                        s,
                        started,
                        started + udp_timeout,
                        "udp",
                        resend_at=started + udp_timeout / 2,
                        payload=payload,
                    )
                    sel.register(s, selectors.EVENT_READ, p.index)
            except OSError as e:
                s.close()
                code = e.errno or 0
                status = "unreachable" if code in _UNREACHABLE else "error"
                results[p.index] = ProbeResult(
                    p.probe,
                    False,
                    status,
                    p.src_ip,
                    p.dst_ip,
                    detail=os.strerror(code) if code else str(e),
                )
                continue
            flights[p.index] = f
    finally:
        stack.close()


def probe_many(
    plan: Plan,
    servers: ServerPool,
    probes: Iterable[Probe],
    *,
    tcp_timeout: float = 1.0,
    udp_timeout: float = 0.8,
    concurrency: int = 512,
) -> list[ProbeResult]:
    """Start the servers the probes need, run them all, return results in input order."""
    probes = list(probes)
    out: list[ProbeResult | None] = [None] * len(probes)
    runnable: list[_Planned] = []
    for i, probe in enumerate(probes):
        r = resolve(plan, i, probe)
        if isinstance(r, ProbeResult):
            out[i] = r
        else:
            servers.ensure(r.dst.netns, r.dst_ip, r.probe.port, r.protocol)
            runnable.append(r)
    done = run_probes(
        runnable, tcp_timeout=tcp_timeout, udp_timeout=udp_timeout, concurrency=concurrency
    )
    for i, r in done.items():
        out[i] = r
    missing = [i for i, r in enumerate(out) if r is None]
    if missing:
        raise LabError(f"internal: no result for probes {missing[:5]}")
    return [r for r in out if r is not None]
