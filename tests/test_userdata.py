"""Each node's userdata, checked by the tools that consume it: cloud-init's schema validator,
cloud-init's own write_files module staged under a temp root, systemd-analyze verify,
kubernetes-validate, bash -n and shellcheck."""

import base64
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from conftest import cli, node_root, render, revealed_userdata, write_cluster
from tools import need, need_built
from vent_bake import fsutil, secrets
from vent_bake.bundle import USERDATA_BUDGET as BUDGET
from vent_bake.state import State

NODES = ["controller-0", "controller-1", "controller-2", "worker-0", "worker-1"]
SCHEMA = Path("/usr/lib/python3/dist-packages/cloudinit/config/schemas/schema-cloud-config-v1.json")


@pytest.fixture(scope="module")
def userdata_files(rendered, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("userdata")
    files = {}
    for node in NODES:
        files[node] = out / node
        files[node].write_text(revealed_userdata(rendered, node))
    return files


@pytest.mark.parametrize("node", NODES)
def test_cloud_init_schema_accepts_it(userdata_files, node):
    need("cloud-init")
    proc = subprocess.run(["cloud-init", "schema", "--config-file", str(userdata_files[node])], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("node", NODES)
def test_no_unknown_top_level_key(userdata_files, node):
    """`cloud-init schema` lets unknown top-level keys pass; the schema's own modules decide."""
    need(str(SCHEMA))
    schema = json.loads(SCHEMA.read_text())
    known = {key for d in schema["$defs"].values() for key in d.get("properties", {})}
    doc = yaml.safe_load(userdata_files[node].read_text())
    assert set(doc) <= known, set(doc) - known
    assert userdata_files[node].read_text().startswith("#cloud-config\n")


@pytest.mark.parametrize("node", ["controller-0", "worker-1"])
def test_write_files_and_fetch_write_every_file_as_reviewed(rendered, published, userdata_files, node, tmp_path):
    """cloud-init's own write_files module, pointed at a staging root, and then the node's
    fetch script write exactly the files of the reviewed tree, revealed, with their modes."""
    root = node_root(userdata_files[node], tmp_path / "root", published)
    state = State.load(rendered / ".vent")
    reviewed = fsutil.read_tree(rendered / "artifacts" / "nodes" / node / "files")
    written = fsutil.read_tree(root)
    assert written.keys() == reviewed.keys()
    doc = yaml.safe_load(userdata_files[node].read_text())
    fetched = (rendered / "artifacts" / "nodes" / node / "fetch.list").read_text().splitlines()
    modes = {f["path"]: int(f.get("permissions", "0644"), 8) for f in doc["write_files"]}
    modes |= {path: int(mode, 8) for _, mode, path in (line.split(" ") for line in fetched)}
    assert len(modes) == len(doc["write_files"]) + len(fetched), "a file is both carried and fetched"
    for rel, data in reviewed.items():
        assert written[rel] == secrets.reveal(data.decode(), state.secret).encode(), rel
        st = os.stat(root / rel)
        assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (modes["/" + rel], 0, 0), rel
    assert modes["/var/lib/kubelet/kubelet.key"] == 0o600 and modes["/usr/local/lib/vent/boot"] == 0o755


def test_revealed_differs_from_reviewed_only_at_the_markers(rendered, state):
    reviewed = (rendered / "artifacts/nodes/controller-0/userdata").read_text()
    found = secrets.markers(reviewed)
    assert len(found) > 10
    pattern, last = "", 0
    for m in found:
        pattern += re.escape(reviewed[last:m.start()]) + "([A-Za-z0-9+/=]+)"
        last = m.end()
    match = re.fullmatch(pattern + re.escape(reviewed[last:]), revealed_userdata(rendered, "controller-0"))
    assert match, "the revealed userdata must equal the reviewed one outside the markers"
    for m, value in zip(found, match.groups()):
        secret = state.secret(m["name"])
        assert (base64.b64decode(value) if m["enc"] == "b64" else value.encode()) == secret, m["name"]


def test_compressed_entries_encode_exactly_the_reviewed_files(rendered):
    """Each gz+b64 entry is gzip with a fixed mtime of the plain file beside the userdata."""
    for node in NODES:
        doc = yaml.safe_load((rendered / "artifacts/nodes" / node / "userdata").read_text())
        tree = rendered / "artifacts/nodes" / node / "files"
        packed = [f for f in doc["write_files"] if f.get("encoding") == "gz+b64"]
        assert packed
        for f in packed:
            raw = base64.b64decode(f["content"])
            assert raw[4:8] == b"\0\0\0\0", "gzip mtime must be fixed"
            assert gzip.decompress(raw) == (tree / f["path"].lstrip("/")).read_bytes()
            assert not secrets.markers(gzip.decompress(raw).decode()), "a file with a secret must never be compressed"


def test_least_privilege(rendered):
    def secret_names(node):
        return {m["name"] for m in secrets.markers((rendered / "artifacts/nodes" / node / "userdata").read_text())}

    assert secret_names("worker-0") == {"pki/nodes/worker-0.key", "pki/kube-proxy.key", "pki/flannel.key"}
    controller = secret_names("controller-1")
    assert {"pki/ca.key", "pki/service-accounts.key", "secrets/encryption.key", "pki/etcd/controller-1-server.key",
            "pki/etcd/controller-1-peer.key", "pki/apiserver-etcd-client.key"} <= controller
    assert "pki/etcd/controller-0-server.key" not in controller and "pki/admin.key" not in controller
    assert "pki/admin.key" in secret_names("controller-0")  # the add-on applier's credential
    worker_tree = fsutil.read_tree(rendered / "artifacts/nodes/worker-0")
    assert not any(p.endswith(("etcd/ca.crt", "encryption-config.yaml")) or "/etcd/" in p for p in worker_tree)


def test_render_prints_each_revealed_size_within_budget(rendered):
    out = cli("render", "-c", rendered / "cluster.yaml").stdout
    for node in NODES:
        size = len(revealed_userdata(rendered, node).encode())
        assert size <= BUDGET["worker" if node.startswith("worker") else "controller"], (node, size)
        line = out.split(f"  {node:<24}")[1].splitlines()[0]
        assert f"userdata {size / 1024:6.1f} KiB" in line and "OVER" not in line


def test_long_names_stay_within_budget(tmp_path):
    """The longest node name a kubelet certificate allows, a long cluster name, five controllers."""
    long = "n" * 49
    cluster = write_cluster(tmp_path, controllers=5, workers=1, **{"name: vent": f"name: {long}", "worker-0": f"{long}-ww"})
    render(cluster)
    for node, role in ((f"{long}-ww", "worker"), ("controller-0", "controller")):
        size = len(revealed_userdata(tmp_path, node).encode())
        assert size <= BUDGET[role], (node, size)


def _tamper(root: Path, path: str, change, *, relist: bool) -> None:
    """Change an artifact; with relist, also its line in MANIFEST (which is not signed)."""
    target = root / "artifacts" / path
    before = target.read_bytes()
    target.write_bytes(change(before))
    if relist:
        listing = root / "artifacts/MANIFEST"
        old, new = hashlib.sha256(before).hexdigest(), hashlib.sha256(target.read_bytes()).hexdigest()
        listing.write_text(listing.read_text().replace(f"{old}  {path}\n", f"{new}  {path}\n"))


def test_reveal_refuses_a_userdata_changed_since_it_was_rendered(fresh):
    _tamper(fresh, "nodes/worker-0/userdata", lambda b: b.replace(b"hostname: worker-0", b"hostname: worker-9"), relist=False)
    result = cli("userdata", "worker-0", "-c", fresh / "cluster.yaml", "--reveal")
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == (f"error: {fresh / 'artifacts/nodes/worker-0/userdata'}: changed since it was rendered and"
                             " reviewed: run `vent-bake render`\n")


def test_stale_marker_refuses_to_reveal(fresh):
    marker = secrets.markers((fresh / "artifacts/nodes/worker-0/userdata").read_text())[0]
    _tamper(fresh, "nodes/worker-0/userdata", lambda b: b.replace(marker["digest"].encode(), b"0" * 64), relist=True)
    result = cli("userdata", "worker-0", "-c", fresh / "cluster.yaml", "--reveal")
    assert (result.exit_code, result.stdout) == (1, "")
    assert f"the marker for {marker['name']} does not match the state's secret" in result.stderr


def test_reveal_refuses_a_secret_the_role_may_not_hold(fresh):
    """A CA key's marker is public (it stands in every controller's userdata): one added to a
    worker's userdata, MANIFEST edited to match, still reveals nothing."""
    ca_key = next(m[0] for m in secrets.markers((fresh / "artifacts/nodes/controller-0/userdata").read_text()) if m["name"] == "pki/ca.key")
    entry = f"  - path: /tmp/ca.key\n    encoding: b64\n    content: {ca_key.replace(':raw:', ':b64:')}\n".encode()
    _tamper(fresh, "nodes/worker-0/userdata", lambda b: b.replace(b"write_files:\n", b"write_files:\n" + entry), relist=True)
    result = cli("userdata", "worker-0", "-c", fresh / "cluster.yaml", "--reveal")
    assert (result.exit_code, result.stdout) == (1, "")
    assert "nodes/worker-0/userdata: carries pki/ca.key, which a worker must not hold; nothing was revealed" in result.stderr
    assert "BEGIN" not in result.output


# --- units ------------------------------------------------------------------------------------

STUBS = ["usr/local/bin/" + b for b in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet",
                                        "kube-proxy", "containerd", "flanneld")] + ["usr/sbin/haproxy", "usr/sbin/modprobe", "usr/bin/kill"]


def staging_root(userdata: Path, tmp_path: Path, published: str) -> Path:
    """The node's files as its first boot writes them, the OS's own units, and a stub for each
    binary the units run."""
    root = node_root(userdata, tmp_path / "root", published)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    for link, target in (("lib", "usr/lib"), ("bin", "usr/bin"), ("sbin", "usr/sbin")):
        os.symlink(target, root / link)
    for stub in STUBS:
        (root / stub).parent.mkdir(parents=True, exist_ok=True)
        (root / stub).write_text("#!/bin/sh\nexit 0\n")
        (root / stub).chmod(0o755)
    return root


@pytest.mark.parametrize("node", ["controller-0", "worker-0"])
def test_systemd_analyze_verify_every_unit(userdata_files, published, node, tmp_path):
    need("systemd-analyze")
    root = staging_root(userdata_files[node], tmp_path, published)
    units = sorted((root / "etc/systemd/system").glob("*.service"))
    assert len(units) == (11 if node == "controller-0" else 6)
    for unit in units:
        proc = subprocess.run(["systemd-analyze", "verify", f"--root={root}", f"/etc/systemd/system/{unit.name}"],
                              capture_output=True, text=True)
        assert proc.returncode == 0 and proc.stdout + proc.stderr == "", f"{unit.name}: {proc.stdout}{proc.stderr}"


def test_systemd_analyze_would_catch_a_mistake(userdata_files, published, tmp_path):
    """The check above is only worth something if a bad unit makes output."""
    need("systemd-analyze")
    root = staging_root(userdata_files["worker-0"], tmp_path, published)
    unit = root / "etc/systemd/system/kubelet.service"
    unit.write_text(unit.read_text().replace("Restart=on-failure", "Restrat=on-failure"))
    proc = subprocess.run(["systemd-analyze", "verify", f"--root={root}", "/etc/systemd/system/kubelet.service"],
                          capture_output=True, text=True)
    assert "Restrat" in proc.stdout + proc.stderr


def test_units_enabled_by_the_boot_script_exist(rendered):
    for node in NODES:
        tree = rendered / "artifacts/nodes" / node / "files"
        for unit in (tree / "etc/vent/units").read_text().split():
            assert (tree / "etc/systemd/system" / unit).is_file(), f"{node}: {unit}"


# --- manifests and scripts --------------------------------------------------------------------

def test_manifests_validate_strictly(rendered):
    (validate,) = need("kubernetes-validate")
    addons = sorted((rendered / "artifacts/nodes/controller-0/files/etc/vent/addons").glob("*.yaml"))
    assert [p.name for p in addons] == ["apiserver-to-kubelet.yaml", "coredns.yaml", "flannel.yaml", "metrics-server.yaml",
                                        "runtimeclass-gvisor.yaml"]
    proc = subprocess.run([validate, "--strict", "-k", "1.36.0", *map(str, addons)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    documents = sum(len([d for d in yaml.safe_load_all(p.read_text()) if d]) for p in addons)
    assert proc.stdout.count("passed") == documents


SCRIPTS = sorted((Path(__file__).parents[1] / "cloudinit").glob("*.sh"))


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_scripts_pass_bash_n_and_shellcheck(script):
    need("shellcheck")
    subprocess.run(["bash", "-n", str(script)], check=True)
    proc = subprocess.run(["shellcheck", "--severity=style", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


# --- component configs, read by the programs that consume them ------------------------------------

@pytest.mark.parametrize("node", ["controller-0", "worker-0"])
def test_firewall_loads_in_nftables(rendered, node):
    """`nft -c` parses and checks the whole ruleset, in a namespace of its own."""
    need("nft", "ip")
    if os.geteuid() != 0:
        pytest.skip("nft needs root")
    ns = f"vbfw{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        path = rendered / "artifacts/nodes" / node / "files/etc/vent/firewall.nft"
        proc = subprocess.run(["ip", "netns", "exec", ns, "nft", "-c", "-f", str(path)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=False)
    if node.startswith("controller"):
        assert "tcp dport { 2379, 2380 } ip saddr @controllers accept" in path.read_text()


def test_containerd_reads_its_config(rendered):
    """containerd 2.2, built from its module, reads the version 3 config as meant: runc with
    systemd cgroups, a runsc handler with its options file, the pinned sandbox image, the CNI
    directories, registry hosts from certs.d."""
    (containerd,) = need_built("containerd")
    path = rendered / "artifacts/nodes/worker-0/files/etc/containerd/config.toml"
    proc = subprocess.run([containerd, "--config", str(path), "config", "dump"], capture_output=True, text=True, check=True)
    assert "level=warning" not in proc.stderr and "deprecat" not in proc.stderr.lower(), proc.stderr
    dump = tomllib.loads(proc.stdout)
    images, runtime = dump["plugins"]["io.containerd.cri.v1.images"], dump["plugins"]["io.containerd.cri.v1.runtime"]
    runtimes = runtime["containerd"]["runtimes"]
    assert runtimes["runc"]["options"]["SystemdCgroup"] is True and runtimes["runc"]["options"]["BinaryName"] == "/usr/local/sbin/runc"
    assert runtimes["runsc"]["runtime_type"] == "io.containerd.runsc.v1"
    assert runtimes["runsc"]["options"] == {"TypeUrl": "io.containerd.runsc.v1.options", "ConfigPath": "/etc/containerd/runsc.toml"}
    assert images["pinned_images"]["sandbox"].startswith("registry.k8s.io/pause:3.10.2@sha256:")
    assert images["registry"]["config_path"] == "/etc/containerd/certs.d"
    assert runtime["cni"]["bin_dirs"] == ["/opt/cni/bin"] and runtime["cni"]["conf_dir"] == "/etc/cni/net.d"
    assert runtime["restrict_oom_score_adj"] is False  # a machine of its own may lower OOM scores
    runsc = tomllib.loads((rendered / "artifacts/nodes/worker-0/files/etc/containerd/runsc.toml").read_text())
    assert runsc == {"runsc_config": {"systemd-cgroup": "true"}}  # kubelet and runc use systemd's cgroups


def test_registry_mirrors_become_containerd_hosts(tmp_path):
    cluster = write_cluster(tmp_path, controllers=1, workers=1, **{
        "\nboot:\n": "\nregistry_mirrors:\n  registry.k8s.io: https://registry.example.com/k8s/\n\nboot:\n"})
    render(cluster)
    hosts = tomllib.loads((tmp_path / "artifacts/nodes/worker-0/files/etc/containerd/certs.d/registry.k8s.io/hosts.toml").read_text())
    assert hosts == {"server": "https://registry.k8s.io",
                     "host": {"https://registry.example.com/k8s": {"capabilities": ["pull", "resolve"]}}}


def test_haproxy_reads_the_balancer_config(rendered):
    need("haproxy")
    path = rendered / "artifacts/nodes/worker-1/files/etc/haproxy/api-balancer.cfg"
    proc = subprocess.run(["haproxy", "-c", "-f", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = path.read_text()
    assert "bind 127.0.0.1:7443" in text and text.count("server controller-") == 3
