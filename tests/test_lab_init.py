"""`vent-bake lab init` and the lab's plan, without booting anything: the lab's cluster file
renders as it is, its lock pins exactly the files its mirror serves (every binary built from
its module, packed as its release is) and the images the lab makes, the official binaries
fill the mirror only once verified, and a bundle the closed lab could not boot is refused
with the field to change."""

import copy
import hashlib
import ipaddress
import subprocess
import tarfile
from urllib.parse import urlsplit

import pytest
import yaml

from conftest import cli, render, write_cluster
from tools import need, need_built
from vent_bake import binaries, config, lock, workspace
from vent_bake.errors import VentError
from vent_bake.lab import build
from vent_bake.lab import lab as steps
from vent_bake.lab import mirror as lab_mirror
from vent_bake.lab import plan


@pytest.fixture(scope="module")
def lab_dir(tmp_path_factory):
    need_built("kube-apiserver", "kubelet", "etcd", "containerd", "runc", "bridge", "crictl", "runsc", "flanneld", "coredns",
               "metrics-server", "pause")
    need("/bin/busybox")
    directory = tmp_path_factory.mktemp("lab-init")
    result = cli("lab", "init", directory)
    assert result.exit_code == 0, result.output
    return directory


def test_the_lab_lock_pins_what_the_mirror_serves(lab_dir):
    cluster = config.load(lab_dir / "cluster.yaml")
    components = cluster.lock[cluster.versions.kubernetes]
    served = {p.name: p.read_bytes() for p in (lab_dir / lab_mirror.MIRROR_DIR).iterdir()}
    for role in ("controller", "worker"):
        for download in binaries.downloads(cluster, role):
            name = download.url.removeprefix(plan.MIRROR_URL)
            assert download.algorithm == "sha256" and hashlib.sha256(served[name]).hexdigest() == download.digest, name
    assert components["etcd"][cluster.arch]["source"] == "built from go.etcd.io/etcd/server/v3@v3.6.14"
    assert set(lab_mirror.sources(cluster).values()) <= {f"built from {b.module}@{b.version}" for b in build.BUILDS}
    # Packed as the release is: the members the official lock's entry names, made of what was built.
    official = lock.packaged()[cluster.versions.kubernetes]["kubernetes-server"]
    assert components["kubernetes-server"]["extract"] == official["extract"]
    name = components["kubernetes-server"][cluster.arch]["url"].removeprefix(plan.MIRROR_URL)
    with tarfile.open(lab_dir / lab_mirror.MIRROR_DIR / name) as tar:
        assert sorted(tar.getnames()) == sorted(official["extract"].values())
        kubelet = tar.extractfile("kubernetes/server/bin/kubelet").read()
    assert kubelet == build.built("kubelet").read_bytes()
    # The images: the lab's own, pinned by digest, under the names the official lock gives them.
    images = components["images"]
    assert images["pause"].startswith("registry.k8s.io/pause:3.10.2@sha256:")
    assert images["coredns"].startswith("registry.k8s.io/coredns/coredns:v1.14.2@sha256:")
    assert images["coredns"] != lock.packaged()[cluster.versions.kubernetes]["images"]["coredns"]


def test_lab_init_is_reproducible_and_refuses_to_overwrite(lab_dir, tmp_path):
    again = tmp_path / "again"
    assert cli("lab", "init", again).exit_code == 0
    assert (again / lock.PROJECT_LOCK).read_text() == (lab_dir / lock.PROJECT_LOCK).read_text()
    result = cli("lab", "init", again)
    assert result.exit_code == 1 and "already exists; pass --force" in result.stderr


def test_the_lab_cluster_renders_and_fits_the_closed_lab(lab_dir):
    render(lab_dir / "cluster.yaml")
    lab = steps.Lab.load(workspace.Paths.resolve(lab_dir / "cluster.yaml", None, None), print)
    steps.check_bundle(lab)
    assert [n.name for n in lab.nodes] == ["controller-0", "controller-1", "controller-2", "worker-0", "worker-1"]
    cluster = config.load(lab_dir / "cluster.yaml")
    assert cluster.registry_mirrors == {"registry.k8s.io": plan.REGISTRY_URL}
    assert not (cluster.host.can_lower_oom_score or cluster.host.conntrack_sysctls or cluster.host.gvisor_cgroups or cluster.host.own_disk)


def test_a_bundle_that_reaches_outside_is_refused(tmp_path):
    cluster = write_cluster(tmp_path)
    render(cluster)
    lab = steps.Lab.load(workspace.Paths.resolve(cluster, None, None), print)
    with pytest.raises(VentError, match=r"boot.artifacts_url: is https://files.example.com/vent/artifacts/; the lab serves it at"
                                        r" http://169.254.169.254/artifacts/ \(`vent-bake lab init` writes a cluster file for the lab\)"):
        steps.check_bundle(lab)
    text = cluster.read_text().replace("https://files.example.com/vent/artifacts/", plan.ARTIFACTS_URL)
    cluster.write_text(text.replace("https://metadata.platformequinix.com/metadata", plan.METADATA_URL))
    lab = steps.Lab.load(workspace.Paths.resolve(cluster, None, None), print)
    with pytest.raises(VentError, match=r"kubernetes-server comes from https://dl.k8s.io/.*which the closed lab cannot reach"):
        steps.check_bundle(lab)


def test_a_bundle_that_pulls_images_from_outside_is_refused(lab_dir, tmp_path):
    copy_dir = tmp_path / "copy"
    copy_dir.mkdir()
    (copy_dir / lock.PROJECT_LOCK).write_text((lab_dir / lock.PROJECT_LOCK).read_text())
    text = (lab_dir / "cluster.yaml").read_text()
    (copy_dir / "cluster.yaml").write_text(text.replace(f"  registry.k8s.io: {plan.REGISTRY_URL}\n", "  quay.io: https://quay.example/\n"))
    render(copy_dir / "cluster.yaml")
    lab = steps.Lab.load(workspace.Paths.resolve(copy_dir / "cluster.yaml", None, None), print)
    with pytest.raises(VentError, match=r"registry_mirrors: registry.k8s.io must be pulled through the lab's registry"):
        steps.check_bundle(lab)


def test_layout_is_packets_and_stays_apart_from_the_nodes_addresses(tmp_path):
    cluster = config.load(write_cluster(tmp_path, controllers=3, workers=2))
    nodes = plan.layout(cluster, {n.name: n.address for n in cluster.nodes})
    for node in nodes:
        public = ipaddress.ip_interface(f"{node.public}/31")
        assert ipaddress.ip_address(node.public_gateway) in public.network and node.public_gateway != node.public
        assert ipaddress.ip_address(node.private) in ipaddress.ip_network("10.0.0.0/8")
    assert len({n.port for n in nodes}) == len({n.public for n in nodes}) == 5
    doc = plan.metadata(nodes[0], cluster, assigned=False)
    assert [a["address"] for a in doc["network"]["addresses"]] == [nodes[0].public, nodes[0].private]
    assigned = plan.metadata(nodes[0], cluster, assigned=True)["network"]["addresses"][-1]
    assert (assigned["address"], assigned["cidr"], assigned["public"]) == (nodes[0].reserved, 32, True)
    with pytest.raises(VentError, match="is inside the lab's own 100.64.0.0/24"):
        plan.layout(cluster, {n.name: "100.64.0.9" for n in cluster.nodes})


def test_the_network_config_is_one_cloud_init_reads(tmp_path):
    """cloud-init's own renderer turns the seed's network config into Packet's bond0: the public
    /31 with the default route, the private /31 as an alias with the route to 10/8."""
    need("/usr/bin/python3", "cloud-init")
    cluster = config.load(write_cluster(tmp_path))
    node = plan.layout(cluster, {n.name: n.address for n in cluster.nodes})[0]
    (tmp_path / "network.yaml").write_text(yaml.safe_dump(plan.network_config(node)))
    code = ("import sys, yaml\n"
            "from cloudinit.net import network_state, eni\n"
            "state = network_state.parse_net_config_data(yaml.safe_load(open(sys.argv[1])))\n"
            "print(eni.Renderer()._render_interfaces(state))\n")
    out = subprocess.run(["/usr/bin/python3", "-c", code, str(tmp_path / "network.yaml")], capture_output=True, text=True, check=True).stdout
    assert f"iface bond0 inet static\n    address {node.public}/31\n    gateway {node.public_gateway}" in out
    assert f"iface bond0 inet static\n    address {node.private}/31\n    post-up route add -net 10.0.0.0/8 gw {node.private_gateway}" in out


def test_the_official_binaries_fill_the_mirror_only_once_verified(tmp_path, mirror):
    """`lab init --official` keeps the official lock; `lab up` fills the lab's mirror from the
    official hosts (here a local server laid out as them, with a lock pinning what it serves)."""
    www, origin = mirror
    directory = tmp_path / "lab"
    assert cli("lab", "init", "--official", directory).exit_code == 0
    version = lock.newest(lock.packaged())
    project = copy.deepcopy({version: lock.packaged()[version]})
    for name, entry in project[version].items():
        for arch in lock.ARCHES if name != "images" else ():
            data, url = f"{name}-{arch}".encode(), urlsplit(entry[arch]["url"])
            entry[arch] = {"url": url.geturl(), "sha256": hashlib.sha256(data).hexdigest()}
            (www / url.netloc / url.path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
            (www / url.netloc / url.path.lstrip("/")).write_bytes(data)
    (directory / lock.PROJECT_LOCK).write_text(yaml.safe_dump(project))
    cluster = config.load(directory / "cluster.yaml")
    served = directory / lab_mirror.MIRROR_DIR
    said = []
    lab_mirror.fill(cluster, served, origin, said.append)
    downloads = {d.url: d for role in ("controller", "worker") for d in binaries.downloads(cluster, role)}.values()
    assert sorted(said) == sorted(f"mirror: fetching {d.name} from {origin}/{d.url.removeprefix(plan.MIRROR_URL)}" for d in downloads)
    assert any("kubernetes-server from" in line and "/dl.k8s.io/" in line for line in said)
    for d in downloads:
        assert hashlib.sha256((served / d.url.removeprefix(plan.MIRROR_URL)).read_bytes()).hexdigest() == d.digest
    said.clear()
    lab_mirror.fill(cluster, served, origin, said.append)
    assert said == [], "what the mirror holds is not fetched again"
    node = next(d for d in downloads if d.name == "kubernetes-node")
    (served / node.url.removeprefix(plan.MIRROR_URL)).unlink()
    (www / node.url.removeprefix(plan.MIRROR_URL)).write_bytes(b"tampered")
    with pytest.raises(VentError, match=rf"dl.k8s.io/{version}/kubernetes-node-linux-amd64.tar.gz does not match the lock's sha256 for"
                                        r" kubernetes-node; nothing was kept"):
        lab_mirror.fill(cluster, served, origin, said.append)
    assert not list(served.rglob("kubernetes-node*"))
