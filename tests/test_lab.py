"""`vent-bake lab`: three controllers and two workers boot from their revealed userdata under
real systemd and Debian's cloud-init in systemd-nspawn, with every program built from its Go
module at the lock's versions, and assemble themselves into a Kubernetes cluster that
`vent-bake smoke` judges. Then the faults: a controller stopped, a worker replaced. The tests
run in order on one lab; the last one takes it down.

The golden image and the builds are cached (under $VENT_LAB_DIR, default here
/var/tmp/vent-bake-test-lab, and $VENT_BUILD_CACHE), so only the first run on a machine
makes them.
"""

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from conftest import cli
from tools import need, need_built
from vent_bake import workspace
from vent_bake.lab import lab as steps
from vent_bake.lab import mirror, nodes, plan

CONTROLLERS = ["controller-0", "controller-1", "controller-2"]
WORKERS = ["worker-0", "worker-1"]
NODES = [*CONTROLLERS, *WORKERS]
RESERVED = {"controller-0": "198.18.0.10", "controller-1": "198.18.0.11", "controller-2": "198.18.0.12",
            "worker-0": "198.18.1.10", "worker-1": "198.18.1.11"}
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root: namespaces, mounts, systemd-nspawn")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    need("systemd-nspawn", "debootstrap", "nsenter", "skopeo", "/usr/bin/docker-registry", "/bin/busybox")
    need_built("kubelet", "etcd", "containerd", "coredns")
    saved = os.environ.get("VENT_LAB_DIR")
    os.environ["VENT_LAB_DIR"] = saved or "/var/tmp/vent-bake-test-lab"
    directory = tmp_path_factory.mktemp("lab")
    for command in (("lab", "init", directory, "--controllers", "3", "--workers", "2"), ("render", "-c", directory / "cluster.yaml")):
        result = cli(*command)
        assert result.exit_code == 0, result.output
    path = directory / "cluster.yaml"
    # A run killed midway leaves its lab up under the same name: start from a clean slate.
    assert cli("lab", "down", "-c", path).exit_code == 0
    try:
        result = cli("lab", "up", "-c", path, "--timeout", "600")
        assert result.exit_code == 0, result.output
        yield path
    finally:
        cli("lab", "down", "-c", path)
        if saved is None:
            del os.environ["VENT_LAB_DIR"]


def the_lab(cluster: Path) -> steps.Lab:
    return steps.Lab.load(workspace.Paths.resolve(cluster, None, None), print)


def run(cluster: Path, node: str, *command: str, timeout: float = 60) -> subprocess.CompletedProcess:
    lab = the_lab(cluster)
    (target,) = lab.pick((node,))
    return nodes.run_in(lab.dir(target), list(command), capture_output=True, text=True, timeout=timeout)


def boot_log(cluster: Path, node: str) -> str:
    lab = the_lab(cluster)
    (target,) = lab.pick((node,))
    return lab.dir(target).file(steps.BOOT_LOG).read_text()


def in_lab(cluster: Path, *command: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """A command where the lab's nodes are reachable: the lab's own namespace (the provider's)."""
    return subprocess.run(["ip", "netns", "exec", the_lab(cluster).name, *command], capture_output=True, text=True, timeout=timeout)


def kubectl(cluster: Path, *args: str) -> subprocess.CompletedProcess:
    (binary,) = need_built("kubectl")
    return in_lab(cluster, binary, f"--kubeconfig={cluster.parent / '.vent/admin.kubeconfig'}", *args)


def smoke(cluster: Path, *extra: str) -> list[dict]:
    (binary,) = need_built("kubectl")
    proc = in_lab(cluster, str(Path(os.sys.executable)), "-m", "vent_bake", "smoke", "-c", str(cluster), "--kubectl", binary,
                  "--outside", plan.OUTSIDE_URL, "--timeout", "300", "--json", *extra, timeout=1800)
    results = json.loads(proc.stdout)
    assert proc.returncode == (1 if any(r["status"] == "FAILED" for r in results) else 0), proc.stderr
    return results


def eventually(check, seconds: float = 300):
    """Poll check() until it returns a true value: units start at their own pace after boot."""
    deadline = time.monotonic() + seconds
    while not (result := check()):
        assert time.monotonic() < deadline, f"{check.__name__} did not hold within {seconds} s"
        time.sleep(3)
    return result


def ready_nodes(cluster: Path) -> set[str]:
    listed = kubectl(cluster, "get", "nodes", "-o", "json")
    if listed.returncode != 0:
        return set()
    return {n["metadata"]["name"] for n in json.loads(listed.stdout)["items"]
            if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"])}


def etcdctl(cluster: Path, node: str, *args: str, cert: str = "apiserver-etcd-client") -> subprocess.CompletedProcess:
    endpoints = ",".join(f"https://{RESERVED[c]}:2379" for c in CONTROLLERS)
    auth = ["--cacert=/etc/etcd/ca.crt", f"--cert=/var/lib/kubernetes/pki/{cert}.crt", f"--key=/var/lib/kubernetes/pki/{cert}.key"] if cert else [
        "--cacert=/etc/etcd/ca.crt"]
    return run(cluster, node, "etcdctl", f"--endpoints={endpoints}", "--command-timeout=5s", *auth, *args)


def etcd_healthy(cluster: Path, node: str) -> bool:
    health = etcdctl(cluster, node, "endpoint", "health")
    return (health.stdout + health.stderr).count("is healthy") == 3  # etcd 3.6 says it on stdout


# --- the nodes assemble themselves ------------------------------------------------------------------

def test_every_node_boots_to_cloud_init_done(cluster):
    rows, _ = steps.status(the_lab(cluster))
    assert [(r["node"], r["state"], r["cloud-init"]) for r in rows] == [(n, "running", "done") for n in NODES]
    for node in NODES:
        assert "vent-network: network ready" in boot_log(cluster, node)


def test_every_file_and_binary_is_verified_before_it_is_installed(cluster):
    for node in NODES:
        log = boot_log(cluster, node)
        assert log.index("files verified and installed") < log.index("vent-boot: prep:")
        listed = (cluster.parent / f"artifacts/nodes/{node}/files/etc/vent/downloads.tsv").read_text().splitlines()
        assert len(listed) >= 8
        for name in (line.split("\t")[0] for line in listed):
            assert log.index(f"download: {name} verified") < log.index(f"install: {name} ("), (node, name)


def test_every_program_runs_built_from_its_module(cluster):
    _, sources = steps.status(the_lab(cluster))
    assert sources and all(source.startswith("built from ") for source in sources.values()), sources
    assert sources["kubernetes-server"] == "built from k8s.io/kubernetes@v1.36.0"
    units = {"worker-0": ["containerd", "kubelet", "kube-proxy", "flanneld", "api-balancer", "vent-network"],
             "controller-1": ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "containerd", "kubelet",
                              "kube-proxy", "flanneld", "api-balancer", "vent-network"]}
    for node, names in units.items():
        for unit in names:
            rendered = (cluster.parent / f"artifacts/nodes/{node}/files/etc/systemd/system/{unit}.service").read_text()
            assert run(cluster, node, "cat", f"/etc/systemd/system/{unit}.service").stdout == rendered
            eventually(lambda: run(cluster, node, "systemctl", "is-active", unit).stdout.strip() == "active")
    assert run(cluster, "worker-0", "kubelet", "--version").stdout.strip() == "Kubernetes v1.36.0"
    assert "3.6.14" in run(cluster, "controller-0", "etcd", "--version").stdout
    assert "v2.2.7" in run(cluster, "worker-1", "containerd", "--version").stdout


def test_fake0_holds_the_private_address_and_the_reserved_address_is_the_source(cluster):
    lab = the_lab(cluster)
    for node in lab.nodes:
        addresses = run(cluster, node.name, "ip", "-4", "-o", "addr", "show").stdout
        assert re.search(rf"fake0\s+inet {re.escape(node.private)}/31", addresses), addresses
        assert not re.search(rf"bond0\s+inet {re.escape(node.private)}/", addresses), "the private address must leave bond0"
        assert f"bond0    inet {node.reserved}/32" in addresses
        assert f"10.0.0.0/8 via {node.private_gateway} dev fake0" in run(cluster, node.name, "ip", "route").stdout
        assert f"src {node.reserved}" in run(cluster, node.name, "ip", "route", "show", "default").stdout


def test_the_lab_is_closed(cluster):
    """Nothing routes out: the provider's namespace has no default route and no interface but
    its bridge and the nodes' ports; the host's own forwarding is untouched."""
    lab = the_lab(cluster)
    assert subprocess.run(["ip", "-n", lab.name, "route", "show", "default"], capture_output=True, text=True).stdout == ""
    links = json.loads(subprocess.run(["ip", "-n", lab.name, "-j", "link", "show"], capture_output=True, text=True).stdout)
    assert {link["ifname"] for link in links} == {"lo", "lab0", *(n.port for n in lab.nodes)}
    unreachable = subprocess.run(["ip", "-n", lab.name, "route", "get", "192.0.2.1"], capture_output=True, text=True)
    assert unreachable.returncode != 0 and "unreachable" in unreachable.stderr


def test_the_controllers_form_a_tls_etcd_quorum_from_the_rendered_certificates(cluster):
    eventually(lambda: etcd_healthy(cluster, "controller-0"))
    assert etcdctl(cluster, "controller-1", "put", "/vent/lab", "quorum").returncode == 0
    assert etcdctl(cluster, "controller-2", "get", "/vent/lab", "--print-value-only").stdout.strip() == "quorum"
    # No client certificate, or one from the cluster CA: refused.
    assert etcdctl(cluster, "controller-0", "get", "/vent/lab", cert="").returncode != 0
    assert etcdctl(cluster, "controller-0", "get", "/vent/lab", cert="kube-scheduler").returncode != 0


# --- the cluster they form ----------------------------------------------------------------------------

def test_smoke_passes(cluster):
    eventually(lambda: ready_nodes(cluster) == set(NODES))
    results = {r["name"]: r for r in smoke(cluster)}
    assert [name for name, r in results.items() if r["status"] != "ok"] == ["gvisor"], results
    # gVisor's shim cannot start a sandbox here, and the check says precisely why.
    assert results["gvisor"]["status"] == "not here"
    assert "containerd-shim-runsc-v1 refused the sandbox as expected (failed to set OOM Score on shim" in results["gvisor"]["detail"]
    assert "k8s:enc:secretbox:v1:" in results["encryption"]["detail"]
    namespaces = kubectl(cluster, "get", "namespaces", "-o", "name").stdout
    assert "vent-smoke-" not in namespaces, "smoke leaves nothing behind"


def test_the_api_answers_through_every_balancer_with_a_controller_stopped(cluster):
    lab = the_lab(cluster)
    (stopped,) = lab.pick(("controller-2",))
    nodes.stop(lab.dir(stopped))
    try:
        running = [n for n in NODES if n != "controller-2"]
        for node in running:
            readyz = eventually(lambda node=node: run(cluster, node, "curl", "-fsS", "--cacert", "/var/lib/kubernetes/pki/ca.crt",
                                                      "--cert", "/var/lib/kubelet/kubelet.crt", "--key", "/var/lib/kubelet/kubelet.key",
                                                      "https://127.0.0.1:7443/readyz").stdout.strip() == "ok", 120)
            assert readyz, node
        results = {r["name"]: r for r in smoke(cluster, "--except", "controller-2")}
        assert [name for name, r in results.items() if r["status"] != "ok"] == ["gvisor"], results
        assert "2 kube-apiservers" in results["apiservers"]["detail"] and "4 nodes Ready" in results["nodes"]["detail"]
    finally:
        # It comes back as a spot replacement does: a new machine with the same userdata, which
        # rejoins etcd by itself.
        result = cli("lab", "up", "controller-2", "-c", cluster, "--timeout", "600")
        assert result.exit_code == 0, result.output
    eventually(lambda: etcd_healthy(cluster, "controller-0"))
    log = boot_log(cluster, "controller-2")
    assert "(controller-2) lost its data: removing it to add it back" in log and "added controller-2 as a learner" in log
    assert etcdctl(cluster, "controller-2", "get", "/vent/lab", "--print-value-only").stdout.strip() == "quorum"


def test_a_replaced_worker_comes_back_ready_under_its_name(cluster):
    assert cli("lab", "down", "worker-1", "-c", cluster).exit_code == 0
    result = cli("lab", "up", "worker-1", "-c", cluster, "--timeout", "600")
    assert result.exit_code == 0, result.output
    eventually(lambda: ready_nodes(cluster) == set(NODES))
    results = {r["name"]: r for r in smoke(cluster)}
    assert [name for name, r in results.items() if r["status"] != "ok"] == ["gvisor"], results


# --- what the lab refuses ---------------------------------------------------------------------------------

def test_a_tampered_binary_is_never_installed(cluster):
    download = next(line.split("\t") for line in (cluster.parent / "artifacts/nodes/worker-0/files/etc/vent/downloads.tsv")
                    .read_text().splitlines() if line.startswith("kubernetes-node\t"))
    served = cluster.parent / mirror.MIRROR_DIR / download[1].removeprefix(plan.MIRROR_URL)
    genuine = served.read_bytes()
    served.write_bytes(genuine[:-100] + b"\0" * 100)
    try:
        assert cli("lab", "down", "worker-0", "-c", cluster).exit_code == 0
        result = cli("lab", "up", "worker-0", "-c", cluster, "--timeout", "600")
    finally:
        served.write_bytes(genuine)
    assert result.exit_code == 0, result.output
    assert "worker-0: cloud-init done; the boot failed: download: kubernetes-node could not be verified; nothing was installed" in result.output
    log = boot_log(cluster, "worker-0")
    assert f"download: kubernetes-node from {download[1]}" in log and "does not match its pinned digest" in log
    for binary in ("/usr/local/bin/kubelet", "/usr/local/bin/containerd", "/usr/local/sbin/runc"):
        assert run(cluster, "worker-0", "test", "-e", binary).returncode == 1, f"{binary} was installed"
    rows, _ = steps.status(the_lab(cluster))
    assert [r["boot log"] for r in rows if r["node"] == "worker-0"] == [
        "FAILED: download: kubernetes-node could not be verified; nothing was installed"]


def test_a_second_lab_of_the_same_name_is_refused(cluster, tmp_path):
    other = tmp_path / "other"
    assert cli("lab", "init", other).exit_code == 0 and cli("render", "-c", other / "cluster.yaml").exit_code == 0
    result = cli("lab", "up", "-c", other / "cluster.yaml")
    assert result.exit_code == 1
    assert f"is up for another cluster's artifacts ({cluster.parent / 'artifacts'})" in result.stderr
    assert [r["state"] for r in steps.status(the_lab(cluster))[0]] == ["running"] * 5


def test_down_leaves_nothing_behind(cluster):
    lab = the_lab(cluster)
    # A node an earlier run left up that this cluster file does not name: down stops it too.
    stray = nodes.NodeDir(lab.work, plan.stray(lab.name, "gone-7"))
    stray.base.mkdir(parents=True)
    sleeper = subprocess.Popen(["sleep", "600"], start_new_session=True)
    stray.pid_file.write_text(str(sleeper.pid))
    result = cli("lab", "down", "-c", cluster)
    assert result.exit_code == 0 and "gone-7: stopped and discarded (no longer in the cluster file)" in result.output
    assert sleeper.wait(timeout=30) is not None
    assert not [ns for ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
                if ns.startswith(lab.name)]
    assert str(lab.work) not in Path("/proc/self/mountinfo").read_text()
    assert not lab.work.exists()
    for tree in nodes.hierarchies():
        assert not (tree / "vent-lab").exists(), tree
    leftovers = subprocess.run(["pgrep", "-f", f"systemd-nspawn.*{lab.name}|vent_bake.lab.service {lab.work}|docker-registry serve {lab.work}"],
                               capture_output=True, text=True).stdout
    assert leftovers == ""
    assert not list(Path("/run/systemd/nspawn/propagate").glob(f"{lab.name}-*"))
