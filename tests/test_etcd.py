"""A real three-member etcd cluster, started from the rendered controller files.

Each controller runs in a network namespace of its own, holding (as on the provider) a
primary address and its reserved address, with its traffic to the other controllers sourced
from the reserved address, as the network unit sets up: etcd checks a peer's certificate
against the connection's source address, which a single-address namespace would hide. The
namespaces are joined by a bridge in a hub namespace and reach nothing else.

etcd here is Debian's 3.4; the rendered flags need no 3.5-only flag, so none is dropped.
"""

import contextlib
import http.server
import json
import os
import shlex
import shutil
import signal
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec
from kubernetes import client, config as kube_config

from conftest import cli, node_root, revealed_kubeconfig
from tools import need
from vent_bake import pki
from vent_bake.pki import CertSpec

CONTROLLERS = {"controller-0": "198.18.0.10", "controller-1": "198.18.0.11", "controller-2": "198.18.0.12"}
PRIMARY = {"controller-0": "192.0.2.10", "controller-1": "192.0.2.11", "controller-2": "192.0.2.12"}
TAG = f"vb{os.getpid() % 100000}"


def sh(*cmd: str, check=True, timeout=30) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=timeout)


def netns(name: str, *cmd: str, **kw) -> subprocess.CompletedProcess:
    return sh("ip", "netns", "exec", name, *cmd, **kw)


@contextlib.contextmanager
def namespaces(tag: str, source_routing: bool = True):
    """A hub namespace with a bridge, and one namespace per controller on it, holding a primary
    address and its reserved one. With source_routing, traffic to the other controllers leaves
    from the reserved address, as the network unit arranges; without, from the primary."""
    need("ip", "etcd", "etcdctl")
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    hub = f"{tag}-hub"
    names = {host: f"{tag}-c{i}" for i, host in enumerate(CONTROLLERS)}
    try:
        sh("ip", "netns", "add", hub)
        netns(hub, "ip", "link", "add", "br0", "type", "bridge")
        netns(hub, "ip", "link", "set", "br0", "up")
        for i, (host, ns) in enumerate(names.items()):
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", f"{tag}h{i}", "netns", hub, "type", "veth", "peer", "name", "bond0", "netns", ns)
            netns(hub, "ip", "link", "set", f"{tag}h{i}", "master", "br0", "up")
            netns(ns, "ip", "link", "set", "lo", "up")
            netns(ns, "ip", "link", "set", "bond0", "up")
            netns(ns, "ip", "addr", "add", f"{PRIMARY[host]}/24", "dev", "bond0")
            netns(ns, "ip", "addr", "add", f"{CONTROLLERS[host]}/32", "dev", "bond0")
            source = ["src", CONTROLLERS[host]] if source_routing else []
            netns(ns, "ip", "route", "add", "198.18.0.0/24", "dev", "bond0", *source)
        yield names
    finally:
        for ns in [*names.values(), hub]:
            sh("ip", "netns", "delete", ns, check=False)


@pytest.fixture(scope="module")
def network():
    with namespaces(TAG) as names:
        yield names


@pytest.fixture(scope="module")
def controllers(rendered, published, tmp_path_factory):
    """Each controller's files as cloud-init writes them, and its etcd command line."""
    out = {}
    for host in CONTROLLERS:
        base = tmp_path_factory.mktemp(host)
        userdata = base / "userdata"
        userdata.write_text(cli("userdata", host, "-c", rendered / "cluster.yaml", "--reveal").stdout)
        root = node_root(userdata, base / "root", published)
        out[host] = (root, etcd_command(root, base / "data"))
    return out


def etcd_command(root: Path, data: Path) -> list[str]:
    """The rendered unit's ExecStart, with its Environment= default, paths moved under root."""
    unit = (root / "etc/systemd/system/etcd.service").read_text().replace("\\\n", " ")
    env = dict(line.removeprefix("Environment=").split("=", 1) for line in unit.splitlines() if line.startswith("Environment="))
    (exec_start,) = [line.removeprefix("ExecStart=") for line in unit.splitlines() if line.startswith("ExecStart=")]
    for name, value in env.items():
        exec_start = exec_start.replace("${" + name + "}", value)
    argv = shlex.split(exec_start)
    assert argv[0] == "/usr/local/bin/etcd"
    moved = ["etcd"]
    for arg in argv[1:]:
        flag, _, value = arg.partition("=")
        if flag == "--data-dir":
            value = str(data)
        elif value.startswith("/etc/etcd/"):
            value = str(root) + value
        moved.append(f"{flag}={value}" if value else flag)
    return moved


def etcdctl(ns: str, root: Path, endpoints: list[str], *args: str, cert: str | None = "apiserver-etcd-client", check=True):
    """etcdctl as the apiserver is configured to connect (its rendered etcd-client credentials)."""
    tls = [f"--cacert={root}/etc/etcd/ca.crt"]
    if cert:
        tls += [f"--cert={root}/var/lib/kubernetes/pki/{cert}.crt", f"--key={root}/var/lib/kubernetes/pki/{cert}.key"]
    return netns(ns, "etcdctl", f"--endpoints={','.join(endpoints)}", "--dial-timeout=3s", "--command-timeout=5s",
                 *tls, *args, check=check)


def url(host: str) -> str:
    return f"https://{CONTROLLERS[host]}:2379"


@contextlib.contextmanager
def etcd_cluster(network: dict, controllers: dict, logs: Path, wait: float = 60):
    """The three members, each in its namespace; yields (processes, healthy?)."""
    procs = {}
    try:
        for host, (root, argv) in controllers.items():
            with open(logs / f"{host}.log", "w") as log:
                procs[host] = subprocess.Popen(["ip", "netns", "exec", network[host], *argv], stdout=log, stderr=subprocess.STDOUT)
        root0 = controllers["controller-0"][0]
        deadline = time.monotonic() + wait
        healthy = False
        while time.monotonic() < deadline:
            health = etcdctl(network["controller-0"], root0, [url(h) for h in CONTROLLERS], "endpoint", "health", check=False)
            if health.returncode == 0:
                healthy = True
                break
            time.sleep(0.5)
        yield procs, healthy
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="module")
def cluster(network, controllers, tmp_path_factory):
    logs = tmp_path_factory.mktemp("etcd-logs")
    with etcd_cluster(network, controllers, logs) as (procs, healthy):
        if not healthy:
            pytest.fail(f"etcd never became healthy: {[(logs / f'{h}.log').read_text()[-1500:] for h in CONTROLLERS]}")
        yield procs


def test_quorum_from_the_rendered_files(network, controllers, cluster):
    root = controllers["controller-0"][0]
    ns0, ns2 = network["controller-0"], network["controller-2"]
    members = json.loads(etcdctl(ns0, root, [url("controller-0")], "member", "list", "-w", "json").stdout)["members"]
    assert sorted(m["name"] for m in members) == sorted(CONTROLLERS)
    assert sorted(m["peerURLs"][0] for m in members) == sorted(f"https://{a}:2380" for a in CONTROLLERS.values())

    etcdctl(ns0, root, [url("controller-0")], "put", "/vent/probe", "from-controller-0")
    got = etcdctl(ns2, controllers["controller-2"][0], [url("controller-2")], "get", "/vent/probe", "--print-value-only")
    assert got.stdout.strip() == "from-controller-0"

    # A client with no certificate, and one with a cluster-CA certificate, are both refused.
    anonymous = etcdctl(ns0, root, [url("controller-1")], "get", "/vent/probe", cert=None, check=False)
    assert anonymous.returncode != 0
    proxy = netns(ns0, "etcdctl", f"--endpoints={url('controller-1')}", "--dial-timeout=3s", "--command-timeout=5s",
                  f"--cacert={root}/etc/etcd/ca.crt", f"--cert={root}/var/lib/kube-proxy/kube-proxy.crt",
                  f"--key={root}/var/lib/kube-proxy/kube-proxy.key", "get", "/vent/probe", check=False)
    assert proxy.returncode != 0

    # Kill the leader: the other two keep quorum and serve reads and writes.
    status = json.loads(etcdctl(ns0, root, [url(h) for h in CONTROLLERS], "endpoint", "status", "-w", "json").stdout)
    leader_id = status[0]["Status"]["leader"]
    leader = next(m["name"] for m in members if m["ID"] == leader_id)
    cluster[leader].kill()
    cluster[leader].wait(timeout=10)
    rest = [h for h in CONTROLLERS if h != leader]
    ns, root = network[rest[0]], controllers[rest[0]][0]
    deadline = time.monotonic() + 30
    while etcdctl(ns, root, [url(h) for h in rest], "put", "/vent/after", "leader-gone", check=False).returncode != 0:
        assert time.monotonic() < deadline, "the two remaining members did not take writes"
        time.sleep(0.5)
    got = etcdctl(network[rest[1]], controllers[rest[1]][0], [url(rest[1])], "get", "/vent/after", "--print-value-only")
    assert got.stdout.strip() == "leader-gone"
    assert etcdctl(ns, root, [url(rest[0])], "get", "/vent/probe", "--print-value-only").stdout.strip() == "from-controller-0"


def test_a_replaced_controller_rejoins_by_itself(network, controllers, cluster, tmp_path):
    """The member killed above comes back as a new device would: same files, empty data dir.
    The rendered etcd-join removes its stale member, adds it back as a learner, and, once
    etcd runs, promotes it; it then serves what was written while it was gone."""
    (host,) = [h for h, proc in cluster.items() if proc.poll() is not None]
    root, argv = controllers[host]
    data = Path(next(a.split("=", 1)[1] for a in argv if a.startswith("--data-dir=")))
    shutil.rmtree(data)
    join_env, log = tmp_path / "etcd-join.env", tmp_path / "boot.log"
    env = {"PATH": os.environ["PATH"], "VENT_ETC": f"{root}/etc/vent", "VENT_ETCD_DIR": f"{root}/etc/etcd",
           "VENT_ETCD_DATA": str(data), "VENT_ETCD_JOIN_ENV": str(join_env), "VENT_LOG": str(log)}
    script = root / "usr/local/lib/vent/etcd-join"

    def join(step: str) -> None:
        subprocess.run(["ip", "netns", "exec", network[host], str(script), step], env=env, check=True, timeout=120,
                       capture_output=True)

    join("prepare")
    assert join_env.read_text() == "VENT_ETCD_CLUSTER_STATE=existing\n"
    assert f"({host}) lost its data: removing it to add it back" in log.read_text()
    assert f"added {host} as a learner" in log.read_text()
    # Run again before etcd ever started (the device rebooted first): the member it added is
    # told apart from one that lost its data, and not added twice.
    join("prepare")
    assert "was added but never started: joining the running cluster" in log.read_text()
    assert log.read_text().count(f"added {host} as a learner") == 1
    rejoined = [a.replace("--initial-cluster-state=new", "--initial-cluster-state=existing") for a in argv]
    with open(tmp_path / "etcd.log", "w") as out:
        cluster[host] = subprocess.Popen(["ip", "netns", "exec", network[host], *rejoined], stdout=out, stderr=subprocess.STDOUT)
    join("promote")
    assert f"{host} is a voting member" in log.read_text() or f"promoted {host}" in log.read_text()

    members = json.loads(etcdctl(network[host], root, [url(host)], "member", "list", "-w", "json").stdout)["members"]
    assert sorted(m["name"] for m in members) == sorted(CONTROLLERS) and not any(m.get("isLearner") for m in members)
    got = etcdctl(network[host], root, [url(host)], "get", "/vent/after", "--print-value-only", "--consistency=s")
    assert got.stdout.strip() == "leader-gone"


def test_peers_speaking_from_the_wrong_address_are_refused(rendered, published, tmp_path_factory, cluster):
    """The control for the test above: with peer traffic leaving from the primary address,
    which no certificate names, etcd refuses its peers and never forms a cluster. A test
    whose namespaces held one address each could not tell these two cases apart."""
    base = tmp_path_factory.mktemp("unrouted")
    controllers = {}
    for host in CONTROLLERS:
        userdata = base / f"{host}.userdata"
        userdata.write_text(cli("userdata", host, "-c", rendered / "cluster.yaml", "--reveal").stdout)
        root = node_root(userdata, base / host / "root", published)
        controllers[host] = (root, etcd_command(root, base / host / "data"))
    with namespaces(f"{TAG}x", source_routing=False) as network:
        with etcd_cluster(network, controllers, base, wait=10) as (_, healthy):
            assert not healthy
    logs = "".join((base / f"{h}.log").read_text() for h in CONTROLLERS)
    assert 'rejected connection from "192.0.2.10:' in logs and 'tls: \\"192.0.2.10\\" does not match any of DNSNames' in logs, logs[-3000:]


# --- mutual TLS against the rendered apiserver certificate ---------------------------------------

class _Version(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"major": "1", "minor": "32", "gitVersion": "v1.32.8", "gitCommit": "test", "gitTreeState": "clean",
                           "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.23", "compiler": "gc",
                           "platform": "linux/amd64"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def apiserver(rendered, controllers):
    """A TLS server on 127.0.0.1 with the rendered apiserver certificate, asking for client
    certificates of the cluster CA, as kube-apiserver's --client-ca-file does."""
    root = controllers["controller-0"][0]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(root / "var/lib/kubernetes/pki/kube-apiserver.crt", root / "var/lib/kubernetes/pki/kube-apiserver.key")
    context.load_verify_locations(root / "var/lib/kubernetes/pki/ca.crt")
    context.verify_mode = ssl.CERT_REQUIRED
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Version)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("rel", ["admin.kubeconfig", "nodes/worker-1/files/var/lib/kubelet/kubeconfig"])
def test_mutual_tls_with_the_rendered_kubeconfigs(rendered, apiserver, rel, tmp_path):
    conf = client.Configuration()
    kube_config.load_kube_config(config_file=str(revealed_kubeconfig(rendered, rel, tmp_path)), client_configuration=conf)
    conf.host = apiserver  # the same certificate answers on 127.0.0.1, which it names
    version = client.VersionApi(client.ApiClient(conf)).get_code()
    assert version.git_version == "v1.32.8"


def test_a_certificate_from_another_ca_is_refused(apiserver, controllers, tmp_path):
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_ca = pki.issue(CertSpec("other", "another CA", issuer=None), other_key, 30)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = pki.issue(CertSpec("admin", "admin", "system:masters", client=True), key, 30, other_ca, other_key)
    (tmp_path / "c.crt").write_bytes(pki.cert_pem(cert))
    (tmp_path / "c.key").write_bytes(pki.key_pem(key))
    ca = controllers["controller-0"][0] / "var/lib/kubernetes/pki/ca.crt"
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{apiserver}/version", cert=(tmp_path / "c.crt", tmp_path / "c.key"), verify=ca, timeout=5)
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{apiserver}/version", verify=ca, timeout=5)
