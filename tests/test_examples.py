"""The example scenarios in examples/ teach what their READMEs say.

Each test states a scenario's point as facts derived from the manifests (who may reach whom on
which port), then checks them with the Python API: probes for the policy facts, and a replay of
the scenario's capture compared packet by packet with what the facts imply. The capture is read
with Scapy, independently of npemu's reader, and the expected verdict of every packet follows
from the facts plus two conntrack rules (see ``expected_verdicts``). Finally, every capture is
exactly what the ``npemu generate`` command in its README makes.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
import yaml
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.utils import rdpcap

from compiler.inventory import Inventory
from compiler.lower import lower
from compiler.parse import load_cluster
from dataplane.capture import open_capture
from dataplane.probe import Prober, ProbeSpec
from dataplane.replay import Replayer, packet_rows, replay

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# allowed(src_ip, dst_ip, protocol, dst_port) -> may a NEW packet go from src to dst?
Intent = Callable[[str, str, str, int], bool]


# ------------------------------------------------------------------------------------ helpers


def load(folder: str, *names: str):
    paths = [str(EXAMPLES / folder / n) for n in names] or [str(EXAMPLES / folder)]
    cluster = load_cluster(paths)
    assert not cluster.warnings, cluster.warnings
    return cluster


def ip_of(cluster, key: str) -> str:
    """A pod's IP by namespace/name (every example pod has one IPv4 address)."""
    (pod,) = [p for p in cluster.pods if p.key == key]
    return pod.ips[0]


class Probe:
    def __init__(self, cluster) -> None:
        inventory = Inventory(cluster)
        self.prober = Prober(lower(cluster, inventory=inventory), inventory)
        self.inventory = inventory

    def verdict(self, src: str, dst: str, port: int, protocol: str = "TCP") -> str:
        spec = ProbeSpec(self.inventory.endpoint(src), self.inventory.endpoint(dst), port, protocol)
        return self.prober.run([spec])[0].verdict

    def allowed(self, src: str, dst: str, port: int, protocol: str = "TCP") -> bool:
        v = self.verdict(src, dst, port, protocol)
        assert v in ("allow", "deny"), v
        return v == "allow"

    def explain(self, src: str, dst: str, port: int) -> str:
        from dataplane.report import check_text

        spec = ProbeSpec(self.inventory.endpoint(src), self.inventory.endpoint(dst), port, "TCP")
        return check_text(self.prober.explain(spec))


def replay_rows(capture: Path, cluster) -> list[dict]:
    """npemu's per-packet decisions for a capture, in capture order."""
    rows: list[dict] = []
    reader = open_capture(str(capture))
    replay(
        (raw.parse() for raw in reader.chunks(64)),  # small chunks: state must carry across
        Replayer(lower(cluster)),
        on_chunk=lambda v: rows.extend(packet_rows(v)),
    )
    return rows


def expected_verdicts(capture: Path, allowed: Intent) -> list[bool]:
    """What each packet of the capture should get, from the scenario's intent and two conntrack
    rules (Linux, nf_conntrack_tcp_loose=1):

    - a connection whose first packet is allowed passes whole (its answers are ESTABLISHED);
    - when the first packet is denied, nothing passes until the other side sends a packet that
      can open a connection of its own in the reverse direction (TCP: an ACK without SYN, FIN or
      RST; UDP: any datagram; never an ICMP echo reply); if the intent allows that reverse
      direction, it and everything after it passes.
    """
    packets = rdpcap(str(capture))
    flows: dict[tuple, list[int]] = {}
    info = []
    for i, p in enumerate(packets):
        ip = p[IP]
        if TCP in p:
            proto, sport, dport, ident = "TCP", p[TCP].sport, p[TCP].dport, 0
        elif UDP in p:
            proto, sport, dport, ident = "UDP", p[UDP].sport, p[UDP].dport, 0
        else:
            proto, sport, dport, ident = "ICMP", 0, 0, p[ICMP].id
        ends = frozenset([(ip.src, sport), (ip.dst, dport)])
        flows.setdefault((proto, ends, ident), []).append(i)
        info.append((ip.src, ip.dst, sport, dport, p))
    verdict = [False] * len(packets)
    for (proto, _, _), idx in flows.items():
        client, server, cport, sport_, _ = info[idx[0]]
        if allowed(client, server, proto, sport_):
            for i in idx:
                verdict[i] = True
            continue
        for k, i in enumerate(idx):
            src, _, _, _, p = info[i]
            if src != server:
                continue
            if proto == "TCP":
                flags = str(p[TCP].flags)
                can_open = "A" in flags and not set("SFR") & set(flags)
            else:
                can_open = proto == "UDP"
            if can_open:
                if allowed(server, client, proto, cport):
                    for j in idx[k:]:
                        verdict[j] = True
                break
    return verdict


def assert_replay(capture: Path, cluster, allowed: Intent) -> list[dict]:
    rows = replay_rows(capture, cluster)
    want = expected_verdicts(capture, allowed)
    got = [r["verdict"] == "allow" for r in rows]
    assert len(got) == len(want)
    wrong = [
        (r["index"], r["src"], r["dst"], r["dport"], r["reason"])
        for r, w in zip(rows, want, strict=True)
        if (r["verdict"] == "allow") != w
    ]
    assert not wrong, wrong
    return rows


def count(rows: Iterable[dict], verdict: str = "allow") -> int:
    return sum(r["verdict"] == verdict for r in rows)


def in_net(ip: str, net: str) -> bool:
    return ipaddress.ip_address(ip) in ipaddress.ip_network(net)


# ------------------------------------------------------------------------- 2. default deny

DD = "default-deny"


def dd_intent(cluster, variant: str) -> Intent:
    team_a = {ip_of(cluster, "team-a/web"), ip_of(cluster, "team-a/api")}
    rules: dict[str, Callable[[str, str], bool]] = {
        "none": lambda s, d: True,
        "deny-ingress": lambda s, d: d not in team_a,
        "deny-egress": lambda s, d: s not in team_a,
        "deny-all": lambda s, d: s not in team_a and d not in team_a,
        "deny-all+allow-ingress": lambda s, d: s not in team_a,
        "deny-all+allow-all": lambda s, d: True,
        "isolate-namespace": lambda s, d: d not in team_a or s in team_a,
    }
    rule = rules[variant]
    return lambda s, d, proto, port: rule(s, d)


DD_VARIANTS = {
    "none": [],
    "deny-ingress": ["deny-ingress.yaml"],
    "deny-egress": ["deny-egress.yaml"],
    "deny-all": ["deny-all.yaml"],
    "deny-all+allow-ingress": ["deny-all.yaml", "allow-all-ingress.yaml"],
    "deny-all+allow-all": ["deny-all.yaml", "allow-all-ingress.yaml", "allow-all-egress.yaml"],
    "isolate-namespace": ["isolate-namespace.yaml"],
}
DD_PODS = ["team-a/web", "team-a/api", "team-b/client"]


@pytest.mark.parametrize("variant", list(DD_VARIANTS))
def test_default_deny_matrix(variant):
    cluster = load(DD, "cluster.yaml", *DD_VARIANTS[variant])
    probe = Probe(cluster)
    intent = dd_intent(cluster, variant)
    for a in DD_PODS:
        for b in DD_PODS:
            want = a == b or intent(ip_of(cluster, a), ip_of(cluster, b), "TCP", 80)
            assert probe.allowed(a, b, 80) == want, (variant, a, b)


def test_default_deny_variants_differ_as_documented():
    """The facts the README's matrices show, spelled out."""
    p = {v: Probe(load(DD, "cluster.yaml", *files)) for v, files in DD_VARIANTS.items()}
    # deny ingress: team-b cannot get in, team-a can still get out
    assert not p["deny-ingress"].allowed("team-b/client", "team-a/web", 80)
    assert p["deny-ingress"].allowed("team-a/web", "team-b/client", 80)
    # deny egress: the mirror image
    assert p["deny-egress"].allowed("team-b/client", "team-a/web", 80)
    assert not p["deny-egress"].allowed("team-a/web", "team-b/client", 80)
    # allow-all-ingress next to deny-all: ingress open, but web's egress still closes web -> api
    assert p["deny-all+allow-ingress"].allowed("team-b/client", "team-a/api", 80)
    assert not p["deny-all+allow-ingress"].allowed("team-a/web", "team-a/api", 80)
    assert "no egress rule allows (team-a/web)" in p["deny-all+allow-ingress"].explain(
        "team-a/web", "team-a/api", 80
    )
    # ingress: [{}] has no ports: every port and protocol
    assert p["deny-all+allow-all"].allowed("team-a/web", "team-a/api", 5353, "UDP")
    # namespace isolation by the automatic kubernetes.io/metadata.name label
    assert p["isolate-namespace"].allowed("team-a/web", "team-a/api", 80)
    assert not p["isolate-namespace"].allowed("team-b/client", "team-a/api", 80)


@pytest.mark.parametrize("variant", list(DD_VARIANTS))
def test_default_deny_replay(variant):
    cluster = load(DD, "cluster.yaml", *DD_VARIANTS[variant])
    rows = assert_replay(EXAMPLES / DD / "traffic.pcap", cluster, dd_intent(cluster, variant))
    # 6 ordered pairs x 11 packets. deny-all: every pair involves team-a -> nothing passes.
    # deny-ingress: team-a -> team-b passes whole (2 x 11); web <-> api is dropped whole (the
    # answers are refused by the other team-a pod's ingress); client -> team-a loses its first 4
    # packets (SYN, SYN-ACK, ACK, request), then team-a's answers pick the connection up (2 x 7).
    expected_allowed = {"none": 66, "deny-all": 0, "deny-ingress": 22 + 14}
    if variant in expected_allowed:
        assert len(rows) == 66
        assert count(rows) == expected_allowed[variant]


# -------------------------------------------------------------------------------- 3. one dash


@pytest.fixture(scope="module")
def one_dash():
    return {v: load("one-dash", "cluster.yaml", f"{v}.yaml") for v in ("and", "or")}


CLIENTS = ["frontend/client", "frontend/batch", "shop/client", "tools/client"]
ADMITTED = {"and": {"frontend/client"}, "or": {"frontend/client", "frontend/batch", "shop/client"}}


@pytest.mark.parametrize("variant", ["and", "or"])
def test_one_dash_who_gets_in(one_dash, variant):
    probe = Probe(one_dash[variant])
    admitted = {c for c in CLIENTS if probe.allowed(c, "shop/db", 5432)}
    assert admitted == ADMITTED[variant]
    # only 5432 is opened, for anyone
    assert not probe.allowed("frontend/client", "shop/db", 5433)


def test_one_dash_or_names_the_matching_peer(one_dash):
    probe = Probe(one_dash["or"])
    assert "ingress[0] from[0] ports[0]" in probe.explain("frontend/batch", "shop/db", 5432)
    assert "ingress[0] from[1] ports[0]" in probe.explain("shop/client", "shop/db", 5432)


@pytest.mark.parametrize("variant", ["and", "or"])
def test_one_dash_replay(one_dash, variant):
    cluster = one_dash[variant]
    db = ip_of(cluster, "shop/db")
    admitted = {ip_of(cluster, c) for c in ADMITTED[variant]}

    def intent(s, d, proto, port):
        return d != db or (s in admitted and proto == "TCP" and port == 5432)

    rows = assert_replay(EXAMPLES / "one-dash" / "traffic.pcap", cluster, intent)
    # 4 connections x 11 packets; an admitted one passes whole, a refused one loses 4 (db's
    # egress is open, so its recorded answers pick the connection up): AND 11 + 3 x 7, OR 3 x 11 + 7
    assert count(rows) == {"and": 32, "or": 40}[variant]
    # the same capture, the difference is exactly frontend/batch and shop/client
    first_drop = {
        r["src"] for r in rows if r["verdict"] == "drop" and r["ct"] == "new" and r["dst"] == db
    }
    refused = {ip_of(cluster, c) for c in CLIENTS} - admitted
    assert first_drop == refused


# ----------------------------------------------------------------------- 4. ipBlock / except

IB = "ipblock-except"


def test_ipblock_except_on_6379():
    cluster = load(IB)
    probe = Probe(cluster)
    redis = "default/redis-0"
    assert not probe.allowed("172.17.1.5", redis, 6379)  # in the except
    assert probe.allowed("172.17.2.5", redis, 6379)  # in the cidr, outside the except
    for ip in ("172.17.1.0", "172.17.1.255"):  # the except's edges
        assert not probe.allowed(ip, redis, 6379), ip
    for ip in ("172.17.0.255", "172.17.2.0", "172.17.255.255"):
        assert probe.allowed(ip, redis, 6379), ip
    for ip in ("172.16.255.255", "172.18.0.0"):  # outside the cidr
        assert not probe.allowed(ip, redis, 6379), ip
    assert not probe.allowed("172.17.2.5", redis, 6380)
    assert not probe.allowed("172.17.2.5", redis, 6379, "UDP")
    # the two selector peers
    assert probe.allowed("payments/worker", redis, 6379)
    assert probe.allowed("default/frontend", redis, 6379)


def test_ipblock_egress_to_cidr_on_5978():
    probe = Probe(load(IB))
    redis = "default/redis-0"
    assert probe.allowed(redis, "10.0.0.7", 5978)
    assert probe.allowed(redis, "10.0.0.255", 5978)
    assert not probe.allowed(redis, "10.0.1.7", 5978)
    assert not probe.allowed(redis, "10.0.0.7", 5979)
    assert not probe.allowed(redis, "default/frontend", 5978)  # egress isolates pods too


def test_ipblock_replay():
    cluster = load(IB)
    redis = ip_of(cluster, "default/redis-0")
    peers = {ip_of(cluster, "payments/worker"), ip_of(cluster, "default/frontend")}

    def intent(s, d, proto, port):
        ok = True
        if d == redis:
            src_ok = (in_net(s, "172.17.0.0/16") and not in_net(s, "172.17.1.0/24")) or s in peers
            ok = src_ok and proto == "TCP" and port == 6379
        if s == redis:
            ok = ok and in_net(d, "10.0.0.0/24") and proto == "TCP" and port == 5978
        return ok

    rows = assert_replay(EXAMPLES / IB / "traffic.pcap", cluster, intent)
    # 6 connections: 172.17.2.5, worker, frontend -> redis and redis -> 10.0.0.7 pass whole;
    # 172.17.1.5 -> redis and redis -> 10.0.1.7 are dropped whole (redis is isolated both ways)
    assert (count(rows), count(rows, "drop")) == (4 * 11, 2 * 11)


# ---------------------------------------------------------------------- 5. matchExpressions

ME = "match-expressions"


def test_match_expressions_facts():
    probe = Probe(load(ME))
    api, canary = "prod/api", "prod/api-canary"
    # namespaceSelector env In [prod, staging] AND podSelector app=web
    for web in ("prod/web", "staging/web"):
        assert probe.allowed(web, api, 80)
    assert not probe.allowed("dev/web", api, 80)
    assert not probe.allowed("monitoring/prometheus-0", api, 80)
    # the named port http: 80 on api, 8080 on the canary
    assert probe.allowed("prod/web", canary, 8080)
    assert not probe.allowed("prod/web", canary, 80)
    assert not probe.allowed("prod/web", api, 8080)
    # endPort: 7000-7099 inclusive
    for port, want in ((6999, False), (7000, True), (7099, True), (7100, False)):
        assert probe.allowed("staging/web", api, port) == want, port
    # the monitoring rule: 9000/TCP, both api pods, nothing else
    assert probe.allowed("monitoring/prometheus-0", api, 9000)
    assert probe.allowed("monitoring/prometheus-0", canary, 9000)
    assert not probe.allowed("monitoring/prometheus-0", api, 9000, "UDP")
    assert not probe.allowed("prod/web", api, 9000)
    # the deciding rule is named
    assert "ingress[1] from[0] ports[1]" in probe.explain("staging/web", api, 7099)
    assert "ingress[1] from[0] ports[0]" in probe.explain("prod/web", canary, 8080)


def test_match_expressions_replay():
    cluster = load(ME)
    ip = {k: ip_of(cluster, k) for k in (p.key for p in cluster.pods)}
    http = {ip["prod/api"]: 80, ip["prod/api-canary"]: 8080}
    webs = {ip["prod/web"], ip["staging/web"]}

    def intent(s, d, proto, port):
        if d not in http or proto != "TCP":
            return d not in http
        if s == ip["monitoring/prometheus-0"]:
            return port == 9000
        return s in webs and (port == http[d] or 7000 <= port <= 7099)

    rows = assert_replay(EXAMPLES / ME / "traffic.pcap", cluster, intent)
    # 11 connections: 6 allowed pass whole, 5 refused lose 4 packets each (api's egress is open)
    assert count(rows, "drop") == 5 * 4
    assert count(rows) == 6 * 11 + 5 * 7


# ---------------------------------------------------------------------- 6. node exemption

NE = "node-exemption"
NODE_1, NODE_2 = "10.0.0.11", "10.0.0.12"


def test_node_exemption_probe_from_own_node_only():
    probe = Probe(load(NE))
    assert probe.allowed(NODE_1, "store/checkout", 8080)  # checkout runs on node-1
    assert not probe.allowed(NODE_2, "store/checkout", 8080)
    assert probe.allowed(NODE_2, "store/cart", 8080)  # cart runs on node-2
    assert not probe.allowed(NODE_1, "store/cart", 8080)
    # both ways, any port: a pod reaches its own node, not the other one
    assert probe.allowed("store/checkout", NODE_1, 10250)
    assert not probe.allowed("store/checkout", NODE_2, 10250)
    assert not probe.allowed("store/checkout", "store/cart", 8080)
    assert "node exemption (node-1)" in probe.explain(NODE_1, "store/checkout", 8080)


def test_node_exemption_is_not_a_policy_effect():
    """Without the deny-all policy, every node reaches every pod: the policy is what blocks the
    other node, and the exemption what keeps the own node."""
    probe = Probe(load(NE, "cluster.yaml"))
    assert probe.allowed(NODE_2, "store/checkout", 8080)
    assert probe.allowed(NODE_1, "store/cart", 8080)


def test_node_exemption_replay():
    cluster = load(NE)
    node_of = {ip_of(cluster, "store/checkout"): NODE_1, ip_of(cluster, "store/cart"): NODE_2}

    def intent(s, d, proto, port):
        if node_of.get(s) == d or node_of.get(d) == s:
            return True
        return s not in node_of and d not in node_of  # store pods are isolated both ways

    rows = assert_replay(EXAMPLES / NE / "traffic.pcap", cluster, intent)
    # 5 connections: the two own-node probes pass whole, the rest is dropped whole
    assert (count(rows), count(rows, "drop")) == (2 * 11, 3 * 11)


# ------------------------------------------------------------------------ 7. busybox ping

BB = "busybox-ping"
PING = EXAMPLES / BB / "ping.pcap"
BB_SETS = {
    "none": ["pods.yaml"],
    "deny-all": ["pods.yaml", "deny-all.yaml"],
    "unlabelled": ["pods.yaml", "deny-all.yaml", "allow-ping.yaml"],
    "labelled": ["pods-labelled.yaml", "deny-all.yaml", "allow-ping.yaml"],
}


def test_busybox_capture_is_two_pings():
    pkts = rdpcap(str(PING))
    types = [(p[IP].src, p[IP].dst, p[ICMP].type) for p in pkts]
    b1, b2 = "10.244.1.21", "10.244.1.22"
    assert types == [(b1, b2, 8), (b2, b1, 0), (b2, b1, 8), (b1, b2, 0)]
    assert pkts[0][ICMP].id == pkts[1][ICMP].id != pkts[2][ICMP].id == pkts[3][ICMP].id


@pytest.mark.parametrize("variant", list(BB_SETS))
def test_busybox_ping_replay(variant):
    cluster = load(BB, "cluster.yaml", *BB_SETS[variant])
    b1, b2 = ip_of(cluster, "default/busybox-1"), ip_of(cluster, "default/busybox-2")

    def intent(s, d, proto, port):
        if variant == "none":
            return True
        return variant == "labelled" and (s, d) == (b1, b2)

    rows = assert_replay(PING, cluster, intent)
    assert count(rows) == {"none": 4, "deny-all": 0, "unlabelled": 0, "labelled": 2}[variant]


def test_busybox_echo_reply_passes_only_as_established():
    cluster = load(BB, "cluster.yaml", *BB_SETS["labelled"])
    rows = replay_rows(PING, cluster)
    # busybox-1 -> busybox-2: request NEW and allowed, reply ESTABLISHED and allowed
    assert [(r["verdict"], r["ct"]) for r in rows[:2]] == [
        ("allow", "new"),
        ("allow", "established"),
    ]
    # busybox-2 -> busybox-1 as a request of its own: NEW, refused by busybox-2's egress; so its
    # reply answers nothing and is INVALID
    assert (rows[2]["verdict"], rows[2]["ct"]) == ("drop", "new")
    assert "no egress rule allows (default/busybox-2)" in rows[2]["reason"]
    assert (rows[3]["verdict"], rows[3]["ct"]) == ("drop", "invalid")


def test_busybox_ports_entry_blocks_icmp(tmp_path):
    """The same policies with a `ports` entry no longer allow ping: ports mean TCP/UDP/SCTP."""
    docs = list(yaml.safe_load_all((EXAMPLES / BB / "allow-ping.yaml").read_text()))
    for doc in docs:
        for rule in doc["spec"].get("ingress", []) + doc["spec"].get("egress", []):
            rule["ports"] = [{"protocol": "TCP", "port": 80}]
    with_ports = tmp_path / "allow-ping-80.yaml"
    with_ports.write_text(yaml.safe_dump_all(docs))
    files = ["cluster.yaml", "pods-labelled.yaml", "deny-all.yaml"]
    cluster = load_cluster([*(str(EXAMPLES / BB / f) for f in files), str(with_ports)])
    assert count(replay_rows(PING, cluster)) == 0
    assert Probe(cluster).allowed("default/busybox-1", "default/busybox-2", 80)


# ----------------------------------------------------------------------- captures and files


def _generate_commands(readme: Path) -> list[list[str]]:
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", readme.read_text(), re.S):
        text = block.replace("\\\n", " ")
        commands += [shlex.split(line) for line in text.splitlines() if "npemu generate" in line]
    return commands


CAPTURES = sorted(EXAMPLES.glob("*/*.pcap"))


@pytest.mark.parametrize("capture", CAPTURES, ids=[c.parent.name for c in CAPTURES])
def test_capture_is_what_the_readme_command_makes(capture, tmp_path, monkeypatch):
    from dataplane.cli import main

    rel = capture.relative_to(EXAMPLES.parent).as_posix()
    (argv,) = [a for a in _generate_commands(capture.parent / "README.md") if rel in a]
    assert argv[:2] == ["npemu", "generate"]
    out = tmp_path / "made.pcap"
    argv = [str(out) if a == rel else a for a in argv]
    monkeypatch.chdir(EXAMPLES.parent)
    assert main(argv[1:]) == 0
    assert out.read_bytes() == capture.read_bytes()


def test_every_example_ships_and_has_a_capture():
    """Each folder has a README and a capture, and holds only files the wheel's package-data
    patterns (*.yaml, *.pcap, *.md) carry."""
    folders = [p for p in EXAMPLES.iterdir() if p.is_dir() and not p.name.startswith("_")]
    assert {p.name for p in folders} >= {
        "three-tier",
        DD,
        "one-dash",
        IB,
        ME,
        NE,
        BB,
    }
    for folder in folders:
        names = [p.name for p in folder.iterdir() if p.name != "__pycache__"]
        assert "README.md" in names, folder.name
        assert any(n.endswith(".pcap") for n in names), folder.name
        assert all(n.endswith((".yaml", ".pcap", ".md")) for n in names), (folder.name, names)
