"""Build a cluster as Linux network namespaces: a star of node routers around one fabric router.

Theory of operation
-------------------
Every object that owns addresses gets a network namespace whose name starts with a per-run prefix
(``npemu-<6 hex>-``): one per node (a router), one per non-hostNetwork pod, one per external IP,
and one ``fab`` namespace, the fabric, that connects the nodes and the externals. hostNetwork pods
have no namespace of their own: they live in their node's namespace, which owns the node addresses
(and any extra hostNetwork pod IP) on its ``lo``.

A star is used instead of a full mesh: N nodes need N fabric links instead of N*(N-1)/2, every
cross-node packet still crosses exactly the two node routers whose FORWARD chains hold the policy,
and the fabric carries no rules.

Addressing on the point-to-point veths borrows Calico's trick: the veths carry no IPv4 address.
A router's gateway address sits on its ``lo`` (169.254.1.1 in every node, 169.254.0.1 in the
fabric) and the downstream side routes ``via`` it ``onlink``. For IPv6 the upstream end of every
link is fe80::1 and the downstream end fe80::2. Every neighbour entry is installed statically
(``NUD_PERMANENT``) from MACs chosen here, so no probe ever waits for ARP or NDP and the first SYN
is never the one lost in a resolution queue; ``proxy_arp`` with ``proxy_delay=0`` is still set on
pod-facing veths so hand-made traffic with other addresses keeps working.

Traps handled: ``IPRoute(netns=...)`` silently creates a missing namespace unless ``flags=0``,
and both it and ``pyroute2.netns.create`` fork a helper that can deadlock when the process has
threads, so namespaces are created by unshare in a throwaway thread and netlink sockets are
opened inside the namespace with setns and handed to ``IPRoute(fileno=...)``;
IPv6 addresses would sit in DAD ("tentative", unusable) for a second without ``IFA_F_NODAD``;
veth transmit checksum offload leaves partial checksums in captured packets, so it is switched off
with the ETHTOOL_STXCSUM ioctl (no ``ethtool`` binary needed); routes are added after links are up
(an onlink nexthop on a down device is refused); sockets keep their namespace alive, so cleanup
closes them before namespaces are removed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import ipaddress
import os
import re
import secrets
import socket
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from compiler.model import Cluster

NETNS_DIR = "/run/netns"
# Owner pid per run: lets cleanup_leftovers() spare the namespaces of a lab that is still running.
RUN_DIR = "/run/npemu"

NODE_GW4 = "169.254.1.1"  # on every node's lo; pods route via it
FABRIC_GW4 = "169.254.0.1"  # on the fabric's lo; nodes and externals route via it
UP6 = "fe80::1"  # upstream (router) end of every veth
DOWN6 = "fe80::2"  # downstream end of every veth
UNSCHEDULED_NODE = "npemu-unscheduled"  # synthetic node for pods without spec.nodeName

_IFA_F_NODAD = 0x02
_RTNH_F_ONLINK = 0x04
_NUD_PERMANENT = 0x80
_SCOPE_LINK = 253
_SIOCETHTOOL = 0x8946
_ETHTOOL_STXCSUM = 0x17


class LabError(RuntimeError):
    """A lab operation failed; the message is one line that says what and where."""


# ---------------------------------------------------------------------------------------------
# The plan: pure data, computed from a Cluster without touching the kernel.


@dataclass
class NodeSpec:
    name: str
    netns: str
    addresses: tuple[str, ...]  # node IPs plus extra hostNetwork pod IPs, all on lo
    fabric_ifname: str  # this node's link, fabric side
    fabric_mac: str
    uplink_mac: str
    pods: list[str] = field(default_factory=list)  # keys of pods with their own namespace
    host_pods: list[str] = field(default_factory=list)

    def source_ip(self, family: int) -> str | None:
        return next((a for a in self.addresses if _family(a) == family), None)


@dataclass
class PodSpec:
    key: str
    netns: str
    node: str
    ips: tuple[str, ...]
    node_ifname: str  # the veth end inside the node namespace
    node_mac: str
    pod_mac: str


@dataclass
class ExternalSpec:
    ip: str
    netns: str
    fabric_ifname: str
    fabric_mac: str
    ext_mac: str


@dataclass(frozen=True)
class Endpoint:
    """Where a probe starts or ends: a namespace and the addresses usable there."""

    label: str  # pod key, "node/<name>" or the external IP
    netns: str
    ips: tuple[str, ...]
    kind: str  # "pod", "host" (hostNetwork pod or node), "external"


@dataclass
class Plan:
    prefix: str
    fabric: str
    nodes: dict[str, NodeSpec]
    pods: dict[str, PodSpec]
    host_pods: dict[str, tuple[str, tuple[str, ...]]]  # key -> (node, its IPs)
    externals: dict[str, ExternalSpec]
    skipped: dict[str, str]  # pod key -> why it has no place in the lab
    owners: dict[str, str]  # IP -> namespace that owns it

    @property
    def namespaces(self) -> list[str]:
        """Every namespace of the run, routers first."""
        names = [self.fabric]
        names += [n.netns for n in self.nodes.values()]
        names += [p.netns for p in self.pods.values()]
        names += [e.netns for e in self.externals.values()]
        return names

    def resolve(self, endpoint: str) -> Endpoint:
        """A pod key ("ns/name"), "node/<name>", or an IP literal owned by something in the lab."""
        ip = _normalize_ip(endpoint)
        if ip is not None:
            for spec in self.pods.values():
                if ip in spec.ips:
                    return Endpoint(spec.key, spec.netns, spec.ips, "pod")
            if ip in self.externals:
                ext = self.externals[ip]
                return Endpoint(ip, ext.netns, (ip,), "external")
            for node in self.nodes.values():
                if ip in node.addresses:
                    # An IP source is used as given, so only that address.
                    return Endpoint(f"node/{node.name}", node.netns, (ip,), "host")
            raise LabError(f"{endpoint} is not an address of any pod, node or external in the lab")
        if endpoint in self.pods:
            spec = self.pods[endpoint]
            return Endpoint(spec.key, spec.netns, spec.ips, "pod")
        if endpoint in self.host_pods:
            node_name, ips = self.host_pods[endpoint]
            return Endpoint(endpoint, self.nodes[node_name].netns, ips, "host")
        if endpoint.startswith("node/") and endpoint[5:] in self.nodes:
            node = self.nodes[endpoint[5:]]
            return Endpoint(endpoint, node.netns, node.addresses, "host")
        if endpoint in self.skipped:
            raise LabError(f"pod {endpoint} is not in the lab: {self.skipped[endpoint]}")
        raise LabError(f"unknown endpoint {endpoint!r}: expected ns/pod, node/<name> or an IP")


def new_run_prefix(base: str = "npemu-") -> str:
    """``npemu-<6 hex>-``: unique per run, short enough to leave room in namespace names."""
    return f"{base}{secrets.token_hex(3)}-"


def plan(cluster: Cluster, externals: Iterable[str] = (), prefix: str | None = None) -> Plan:
    """Names, addresses and MACs for every namespace and link; raises LabError on conflicts."""
    prefix = prefix or new_run_prefix()
    owners: dict[str, str] = {}
    skipped: dict[str, str] = {}

    def own(ip: str, ns: str, what: str) -> None:
        if owners.get(ip, ns) != ns:
            raise LabError(f"address {ip} of {what} is already used by another lab endpoint")
        owners[ip] = ns

    # Nodes: the manifest's, plus any a pod names without a Node object, plus one for unscheduled pods.
    node_addrs: dict[str, list[str]] = {}
    for node in cluster.nodes:
        node_addrs.setdefault(node.name, [])
        for a in node.addresses:
            ip = _normalize_ip(a)
            if ip is not None and ip not in node_addrs[node.name]:
                node_addrs[node.name].append(ip)
    for pod in cluster.pods:
        node_addrs.setdefault(pod.node_name or UNSCHEDULED_NODE, [])

    nodes: dict[str, NodeSpec] = {}
    fabric_names: set[str] = set()
    for i, (name, addrs) in enumerate(node_addrs.items()):
        ifname = _ifname("n", name, fabric_names)
        nodes[name] = NodeSpec(
            name=name,
            netns=f"{prefix}n{i}",
            addresses=tuple(addrs),
            fabric_ifname=ifname,
            fabric_mac=_mac(prefix, "fabric", name),
            uplink_mac=_mac(prefix, "uplink", name),
        )

    pods: dict[str, PodSpec] = {}
    host_pods: dict[str, tuple[str, tuple[str, ...]]] = {}
    node_ifnames: dict[str, set[str]] = {n: set() for n in nodes}
    for pod in cluster.pods:
        node = nodes[pod.node_name or UNSCHEDULED_NODE]
        ips = tuple(ip for ip in (_normalize_ip(a) for a in pod.ips) if ip is not None)
        if pod.host_network:
            # A hostNetwork pod shares its node's namespace, so every node address is its own
            # too (status.podIPs often lists only one family); an extra IP goes on the node's lo.
            extra = tuple(ip for ip in ips if ip not in node.addresses)
            node.addresses += extra
            ips = ips + tuple(ip for ip in node.addresses if ip not in ips)
            node.host_pods.append(pod.key)
            host_pods[pod.key] = (node.name, ips)
            continue
        if not ips:
            skipped[pod.key] = "it has no pod IP (status.podIPs is empty)"
            continue
        if pod.key in pods:
            raise LabError(f"pod {pod.key} appears twice in the cluster")
        ns = f"{prefix}p{len(pods)}"
        pods[pod.key] = PodSpec(
            key=pod.key,
            netns=ns,
            node=node.name,
            ips=ips,
            node_ifname=_ifname("p", pod.key, node_ifnames[node.name]),
            node_mac=_mac(prefix, "podgw", pod.key),
            pod_mac=_mac(prefix, "pod", pod.key),
        )
        node.pods.append(pod.key)

    for node in nodes.values():
        for ip in node.addresses:
            own(ip, node.netns, f"node {node.name}")
    for spec in pods.values():
        for ip in spec.ips:
            own(ip, spec.netns, f"pod {spec.key}")

    ext_specs: dict[str, ExternalSpec] = {}
    for raw in externals:
        ip = _normalize_ip(raw)
        if ip is None:
            raise LabError(f"external endpoint {raw!r} is not an IP address")
        if ip in ext_specs:
            continue
        ns = f"{prefix}x{len(ext_specs)}"
        own(ip, ns, f"external {ip}")
        ext_specs[ip] = ExternalSpec(
            ip=ip,
            netns=ns,
            fabric_ifname=_ifname("x", ip, fabric_names),
            fabric_mac=_mac(prefix, "fabric-x", ip),
            ext_mac=_mac(prefix, "ext", ip),
        )

    return Plan(prefix, f"{prefix}fab", nodes, pods, host_pods, ext_specs, skipped, owners)


def _normalize_ip(text: str) -> str | None:
    try:
        return ipaddress.ip_address(text.strip()).compressed
    except ValueError:
        return None


def _family(ip: str) -> int:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def _ifname(kind: str, identity: str, taken: set[str]) -> str:
    """Interface names are ≤ 15 bytes and never raw object names: a letter plus 10 hex digits."""
    for salt in range(1000):
        digest = hashlib.sha256(f"{identity}\0{salt}".encode()).hexdigest()
        name = f"{kind}{digest[:10]}"
        if name not in taken:
            taken.add(name)
            return name
    raise LabError(f"cannot derive a unique interface name for {identity!r}")


def _mac(prefix: str, role: str, identity: str) -> str:
    """Locally administered unicast MAC, stable per run and role, so neighbours can be static."""
    digest = hashlib.sha256(f"{prefix}\0{role}\0{identity}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


# ---------------------------------------------------------------------------------------------
# Namespace plumbing.


_CLONE_NEWNET = 0x40000000
_MS_BIND = 4096
_MS_REC = 16384
_MS_SHARED = 1 << 20
_MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)

# Why not pyroute2's netns.create / IPRoute(netns=...) / pushns: the first two fork a helper
# process, and a fork taken while another thread holds a lock (our server thread, pytest's) can
# hang forever in the child, which was seen here; pushns saves /proc/self/ns/net, which is the
# *main* thread's namespace, and its setns creates a missing namespace by default. Everything
# below is per thread (/proc/thread-self) and never forks.


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise LabError(f"{what}: {os.strerror(err)}")


def _setns(fd: int, what: str) -> None:
    _check(_libc.setns(fd, _CLONE_NEWNET), f"setns to {what}")


@contextlib.contextmanager
def entered(name: str) -> Iterator[None]:
    """Run the block with this thread inside namespace `name` (setns is per thread).

    Sockets created inside stay bound to that namespace after we leave it.
    """
    try:
        target = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise LabError(f"network namespace {name} does not exist") from None
    saved = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target, name)
        try:
            yield
        finally:
            _setns(saved, "the original namespace")
    finally:
        os.close(saved)
        os.close(target)


def create_namespace(name: str) -> None:
    """`ip netns add` without forking: unshare in a throwaway thread and bind-mount its netns."""
    os.makedirs(NETNS_DIR, exist_ok=True)
    # iproute2 makes the run directory a shared mount so other mount namespaces see new entries.
    if _libc.mount(b"", NETNS_DIR.encode(), b"none", _MS_SHARED | _MS_REC, None) != 0:
        d = NETNS_DIR.encode()
        _check(_libc.mount(d, d, b"none", _MS_BIND | _MS_REC, None), f"bind-mount {NETNS_DIR}")
        _check(_libc.mount(b"", d, b"none", _MS_SHARED | _MS_REC, None), f"share {NETNS_DIR}")
    path = os.path.join(NETNS_DIR, name)
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
    errors: list[BaseException] = []

    def worker() -> None:
        # The thread dies in the new namespace; only the bind mount keeps it alive.
        try:
            _check(_libc.unshare(_CLONE_NEWNET), "unshare(CLONE_NEWNET)")
            _check(
                _libc.mount(b"/proc/thread-self/ns/net", path.encode(), b"none", _MS_BIND, None),
                f"bind-mount namespace {name}",
            )
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=worker, name="npemu-netns-create")
    t.start()
    t.join()
    if errors:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise errors[0]


def remove_namespace(name: str) -> None:
    path = os.path.join(NETNS_DIR, name)
    _libc.umount2(path.encode(), _MNT_DETACH)
    os.unlink(path)


def open_iproute(name: str) -> IPRoute:
    """An IPRoute whose netlink socket lives in namespace `name` (created there, no fork)."""
    # IPRoute() creates its socket synchronously in the calling thread (the sync API runs its
    # event loop with run_until_complete here), so it is born inside the namespace.
    with entered(name):
        ipr = IPRoute()
    return ipr


def write_sysctls(name: str, values: dict[str, str]) -> None:
    """Write /proc/sys entries inside a namespace: /proc/sys/net follows the thread's netns."""
    with entered(name):
        for key, value in values.items():
            path = "/proc/sys/" + key.replace(".", "/")
            try:
                with open(path, "w") as f:
                    f.write(value)
            except OSError as e:
                raise LabError(f"sysctl {key}={value} failed in {name}: {e.strerror}") from e


def disable_tx_checksum(name: str, ifnames: Iterable[str]) -> None:
    """ETHTOOL_STXCSUM off: veth would otherwise hand captures packets with partial checksums."""
    with entered(name), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for ifname in ifnames:
            value = ctypes.create_string_buffer(struct.pack("II", _ETHTOOL_STXCSUM, 0), 8)
            ifreq = struct.pack("16sP", ifname.encode(), ctypes.addressof(value))
            try:
                fcntl.ioctl(s.fileno(), _SIOCETHTOOL, ifreq)
            except OSError as e:
                raise LabError(f"disabling tx checksum on {ifname} in {name}: {e.strerror}") from e


def list_namespaces() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def remove_namespaces(names: Iterable[str]) -> list[str]:
    """Remove the namespaces (their veths go with them); return errors instead of stopping."""
    errors = []
    for name in names:
        if not os.path.exists(os.path.join(NETNS_DIR, name)):
            continue
        try:
            remove_namespace(name)
        except OSError as e:
            errors.append(f"{name}: {e}")
    return errors


def cleanup_leftovers(prefix: str = "npemu-") -> list[str]:
    """Remove namespaces of earlier runs (``<prefix><6 hex>-...``) whose owner process is gone.

    Only names of the lab's own shape are touched, and a run whose owner pid (recorded in
    /run/npemu) is still alive is left alone, so a concurrent lab is never torn down.
    """
    pattern = re.compile(re.escape(prefix) + r"([0-9a-f]{6})-")
    removed, runs = [], set()
    for name in list_namespaces():
        m = pattern.match(name)
        if m is None or _run_alive(m.group(1)):
            continue
        if not remove_namespaces([name]):
            removed.append(name)
            runs.add(m.group(1))
    for run_id in runs:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(RUN_DIR, f"{run_id}.pid"))
    return removed


def _run_alive(run_id: str) -> bool:
    try:
        with open(os.path.join(RUN_DIR, f"{run_id}.pid")) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    return True


def run_id_of(prefix: str) -> str:
    return prefix.rstrip("-").rsplit("-", 1)[-1]


def record_owner(prefix: str) -> None:
    os.makedirs(RUN_DIR, exist_ok=True)
    with open(os.path.join(RUN_DIR, f"{run_id_of(prefix)}.pid"), "w") as f:
        f.write(f"{os.getpid()}\n")


def forget_owner(prefix: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(os.path.join(RUN_DIR, f"{run_id_of(prefix)}.pid"))


# ---------------------------------------------------------------------------------------------
# Building.

_COMMON_SYSCTLS = {
    # Static addresses are usable at once instead of after a second of duplicate detection.
    "net.ipv6.conf.all.accept_dad": "0",
    "net.ipv6.conf.default.accept_dad": "0",
    "net.ipv6.conf.default.accept_ra": "0",
    # Routes are asymmetric-proof already, but a distro default of strict rp_filter must not leak in.
    "net.ipv4.conf.all.rp_filter": "0",
    "net.ipv4.conf.default.rp_filter": "0",
}
_ROUTER_SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    "net.ipv6.conf.all.forwarding": "1",
}


class _Builder:
    """Creates the planned namespaces; records each one as soon as it exists so cleanup sees it."""

    def __init__(self, the_plan: Plan, created: list[str]) -> None:
        self.plan = the_plan
        self.created = created
        self.ipr: dict[str, IPRoute] = {}
        self.veths: dict[str, list[str]] = {}

    def run(self) -> None:
        p = self.plan
        try:
            for name in p.namespaces:
                if os.path.exists(os.path.join(NETNS_DIR, name)):
                    raise LabError(f"network namespace {name} already exists")
                create_namespace(name)
                self.created.append(name)
                sysctls = dict(_COMMON_SYSCTLS)
                if name == p.fabric or any(n.netns == name for n in p.nodes.values()):
                    sysctls.update(_ROUTER_SYSCTLS)
                write_sysctls(name, sysctls)
                self.ipr[name] = open_iproute(name)
                self._up(name, "lo")
            self._addr(p.fabric, "lo", FABRIC_GW4, scope=_SCOPE_LINK)
            for node in p.nodes.values():
                self._build_node(node)
            for spec in p.pods.values():
                self._build_pod(spec)
            for ext in p.externals.values():
                self._build_external(ext)
            for name, ifnames in self.veths.items():
                disable_tx_checksum(name, ifnames)
        finally:
            for ipr in self.ipr.values():
                ipr.close()

    # -- steps

    def _build_node(self, node: NodeSpec) -> None:
        p, fab = self.plan, self.plan.fabric
        self._addr(node.netns, "lo", NODE_GW4, scope=_SCOPE_LINK)
        for ip in node.addresses:
            self._addr(node.netns, "lo", ip)
        self._veth(fab, node.fabric_ifname, node.fabric_mac, node.netns, "uplink", node.uplink_mac)
        self._addr(fab, node.fabric_ifname, UP6, prefixlen=64)
        self._addr(node.netns, "uplink", DOWN6, prefixlen=64)
        # Node: everything that is not its own goes to the fabric.
        self._neigh(node.netns, "uplink", FABRIC_GW4, node.fabric_mac)
        self._neigh(node.netns, "uplink", UP6, node.fabric_mac)
        self._route(node.netns, "uplink", f"{FABRIC_GW4}/32", scope=_SCOPE_LINK)
        src4, src6 = node.source_ip(socket.AF_INET), node.source_ip(socket.AF_INET6)
        self._route(node.netns, "uplink", "0.0.0.0/0", gateway=FABRIC_GW4, prefsrc=src4)
        self._route(node.netns, "uplink", "::/0", gateway=UP6, prefsrc=src6)
        # Fabric: this node's addresses and its pods' addresses are behind this link.
        self._neigh(fab, node.fabric_ifname, NODE_GW4, node.uplink_mac)
        self._neigh(fab, node.fabric_ifname, DOWN6, node.uplink_mac)
        behind = list(node.addresses)
        for key in node.pods:
            behind += p.pods[key].ips
        for ip in behind:
            gw = NODE_GW4 if _family(ip) == socket.AF_INET else DOWN6
            self._route(fab, node.fabric_ifname, _host(ip), gateway=gw)

    def _build_pod(self, spec: PodSpec) -> None:
        node = self.plan.nodes[spec.node]
        self._veth(node.netns, spec.node_ifname, spec.node_mac, spec.netns, "eth0", spec.pod_mac)
        write_sysctls(
            node.netns,
            {
                f"net.ipv4.conf.{spec.node_ifname}.proxy_arp": "1",
                f"net.ipv4.neigh.{spec.node_ifname}.proxy_delay": "0",
            },
        )
        self._addr(node.netns, spec.node_ifname, UP6, prefixlen=64)
        self._addr(spec.netns, "eth0", DOWN6, prefixlen=64)
        for ip in spec.ips:
            self._addr(spec.netns, "eth0", ip)
            fam = _family(ip)
            self._neigh(node.netns, spec.node_ifname, ip, spec.pod_mac)
            self._route(
                node.netns,
                spec.node_ifname,
                _host(ip),
                scope=_SCOPE_LINK,
                prefsrc=node.source_ip(fam),
            )
        families = {_family(ip) for ip in spec.ips}
        if socket.AF_INET in families:
            self._neigh(spec.netns, "eth0", NODE_GW4, spec.node_mac)
            self._route(spec.netns, "eth0", f"{NODE_GW4}/32", scope=_SCOPE_LINK)
            self._route(spec.netns, "eth0", "0.0.0.0/0", gateway=NODE_GW4)
        if socket.AF_INET6 in families:
            self._neigh(spec.netns, "eth0", UP6, spec.node_mac)
            self._route(spec.netns, "eth0", "::/0", gateway=UP6)

    def _build_external(self, ext: ExternalSpec) -> None:
        fab = self.plan.fabric
        self._veth(fab, ext.fabric_ifname, ext.fabric_mac, ext.netns, "eth0", ext.ext_mac)
        self._addr(fab, ext.fabric_ifname, UP6, prefixlen=64)
        self._addr(ext.netns, "eth0", DOWN6, prefixlen=64)
        self._addr(ext.netns, "eth0", ext.ip)
        self._neigh(fab, ext.fabric_ifname, ext.ip, ext.ext_mac)
        self._route(fab, ext.fabric_ifname, _host(ext.ip), scope=_SCOPE_LINK)
        if _family(ext.ip) == socket.AF_INET:
            self._neigh(ext.netns, "eth0", FABRIC_GW4, ext.fabric_mac)
            self._route(ext.netns, "eth0", f"{FABRIC_GW4}/32", scope=_SCOPE_LINK)
            self._route(ext.netns, "eth0", "0.0.0.0/0", gateway=FABRIC_GW4)
        else:
            self._neigh(ext.netns, "eth0", UP6, ext.fabric_mac)
            self._route(ext.netns, "eth0", "::/0", gateway=UP6)

    # -- netlink helpers: every failure names the namespace and the operation

    def _index(self, ns: str, ifname: str) -> int:
        found = self.ipr[ns].link_lookup(ifname=ifname)
        if not found:
            raise LabError(f"interface {ifname} missing in {ns}")
        return found[0]

    def _nl(self, ns: str, what: str, fn: Callable[..., object], *args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except NetlinkError as e:
            if e.code == errno.EEXIST:
                return
            raise LabError(f"{what} in {ns}: {os.strerror(e.code)}") from e

    def _up(self, ns: str, ifname: str) -> None:
        idx = self._index(ns, ifname)
        self._nl(ns, f"set {ifname} up", self.ipr[ns].link, "set", index=idx, state="up")

    def _veth(self, ns_a: str, name_a: str, mac_a: str, ns_b: str, name_b: str, mac_b: str) -> None:
        # Created inside ns_a with the peer born directly in ns_b: the root namespace never
        # holds either end.
        peer = {"ifname": name_b, "address": mac_b, "net_ns_fd": ns_b}
        self._nl(
            ns_a,
            f"veth {name_a}<->{ns_b}/{name_b}",
            self.ipr[ns_a].link,
            "add",
            ifname=name_a,
            kind="veth",
            address=mac_a,
            peer=peer,
        )
        self.veths.setdefault(ns_a, []).append(name_a)
        self.veths.setdefault(ns_b, []).append(name_b)
        self._up(ns_a, name_a)
        self._up(ns_b, name_b)

    def _addr(
        self, ns: str, ifname: str, ip: str, prefixlen: int | None = None, scope: int = 0
    ) -> None:
        fam = _family(ip)
        plen = prefixlen if prefixlen is not None else (32 if fam == socket.AF_INET else 128)
        kwargs = {"index": self._index(ns, ifname), "address": ip, "prefixlen": plen}
        if fam == socket.AF_INET6:
            kwargs["flags"] = _IFA_F_NODAD
        if scope:
            kwargs["scope"] = scope
        self._nl(ns, f"address {ip}/{plen} on {ifname}", self.ipr[ns].addr, "add", **kwargs)

    def _route(
        self,
        ns: str,
        ifname: str,
        dst: str,
        gateway: str | None = None,
        scope: int | None = None,
        prefsrc: str | None = None,
    ) -> None:
        kwargs: dict[str, object] = {"dst": dst, "oif": self._index(ns, ifname)}
        if ":" in dst:
            kwargs["family"] = socket.AF_INET6
        if gateway:
            kwargs["gateway"] = gateway
            if ":" not in gateway:
                kwargs["flags"] = _RTNH_F_ONLINK
        if scope is not None:
            kwargs["scope"] = scope
        if prefsrc:
            kwargs["prefsrc"] = prefsrc
        self._nl(ns, f"route {dst} dev {ifname}", self.ipr[ns].route, "add", **kwargs)

    def _neigh(self, ns: str, ifname: str, ip: str, mac: str) -> None:
        self._nl(
            ns,
            f"neighbour {ip} on {ifname}",
            self.ipr[ns].neigh,
            "add",
            dst=ip,
            lladdr=mac,
            ifindex=self._index(ns, ifname),
            state=_NUD_PERMANENT,
            family=_family(ip),
        )


def _host(ip: str) -> str:
    return f"{ip}/32" if _family(ip) == socket.AF_INET else f"{ip}/128"


def build(the_plan: Plan, created: list[str]) -> None:
    """Create every namespace and link of the plan. `created` is filled as namespaces appear,
    so the caller can remove exactly those if this raises (or is interrupted) half way."""
    _Builder(the_plan, created).run()
