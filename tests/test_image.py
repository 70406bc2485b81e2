"""`vent-bake image build`, for real (root): a lab cluster's node images, built twice to the same
bytes; the worker's disk image booting under QEMU with its node's NoCloud seed to cloud-init
done; and the lab booting every node from its role's image, downloading and installing nothing.
"""

import functools
import hashlib
import io
import http.server
import json
import mmap
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pycdlib
import pytest

from conftest import cli
from tools import need, need_built
from vent_bake import workspace
from vent_bake.image import disk
from vent_bake.lab import lab as steps
from vent_bake.lab import nodes

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="building an image needs root (mmdebstrap, ownership)")
VERSION = "v1.36.0"
CONTROLLERS = ["controller-0", "controller-1", "controller-2"]


def build(cluster: Path, role: str) -> Path:
    result = cli("image", "build", "-c", cluster, "--role", role)
    assert result.exit_code == 0, result.output
    return cluster.parent / "images" / f"{role}-{VERSION}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    need("mmdebstrap", "mkfs.fat", "mcopy", "syslinux", "sfdisk", "mksquashfs", "unsquashfs")
    need_built("kubelet", "etcd", "containerd")
    directory = tmp_path_factory.mktemp("image")
    for command in (("lab", "init", directory, "--name", "bake", "--controllers", "3", "--workers", "1"),
                    ("render", "-c", directory / "cluster.yaml")):
        result = cli(*command)
        assert result.exit_code == 0, result.output
    return directory / "cluster.yaml"


@pytest.fixture(scope="module")
def images(cluster):
    return {role: build(cluster, role) for role in ("worker", "controller")}


def test_the_image_says_what_went_in_and_holds_no_secret(cluster, images):
    manifest = json.loads((images["worker"] / "manifest.json").read_text())
    assert set(manifest["outputs"]) == {"disk.raw", "vmlinuz", "initrd.img", "filesystem.squashfs", "boot.ipxe"}
    for name, digest in manifest["outputs"].items():
        assert hashlib.sha256((images["worker"] / name).read_bytes()).hexdigest() == digest, name
    lock = (cluster.parent / "binaries.lock.yaml").read_text()
    assert manifest["downloads"]["kubernetes-node"]["digest"] in lock and "kubernetes-server" not in manifest["downloads"]
    assert manifest["packages"]["cloud-init"] and manifest["packages"]["haproxy"] and manifest["source_date_epoch"]
    ipxe = (images["worker"] / "boot.ipxe").read_text()
    assert ipxe.startswith("#!ipxe\n") and f"http://169.254.169.254/artifacts/images/worker-{VERSION}/vmlinuz boot=live fetch=" in ipxe
    assert "console=ttyS1,115200n8" in ipxe
    # Nothing secret: no key of the state, nor the encryption key, anywhere in the root
    # filesystem, read where it is stored uncompressed (the disk image's ext4).
    state = cluster.parent / ".vent"
    secrets = [p.read_bytes()[40:100] for p in (state / "pki").rglob("*.key")] + [(state / "secrets/encryption.key").read_bytes().strip()]
    assert len(secrets) > 10 and all(len(s) >= 40 for s in secrets)
    with open(images["worker"] / "disk.raw", "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as disk_image:
        assert disk_image.find(b"kubelet") != -1  # the search reads the files' bytes
        assert not [s for s in secrets if disk_image.find(s) != -1]


def test_the_build_is_reproducible(cluster, images, tmp_path):
    """The same inputs, built again elsewhere: the same bytes, output by output."""
    again = tmp_path / "again"
    again.mkdir()
    for name in ("cluster.yaml", "binaries.lock.yaml"):
        (again / name).write_text((cluster.parent / name).read_text())
    (again / "lab-mirror").symlink_to(cluster.parent / "lab-mirror")
    first = json.loads((images["worker"] / "manifest.json").read_text())
    second = json.loads((build(again / "cluster.yaml", "worker") / "manifest.json").read_text())
    assert second == first


def test_the_disk_image_holds_no_time_of_the_build(tmp_path):
    """The same tree, written out again a second later and read at another time: the same
    disk, byte for byte (ext4 would otherwise keep each file's ctime and atime from here)."""
    need("mkfs.ext4", "debugfs", "mkfs.fat", "mcopy", "syslinux", "sfdisk")
    made = []
    for n, atime in ((0, 1_800_000_000), (1, 1_900_000_000)):
        root = tmp_path / f"root{n}"
        for path, data in (("boot/vmlinuz-6.1.0-9-amd64", b"kernel"), ("boot/initrd.img-6.1.0-9-amd64", b"initrd"),
                           ("etc/hostname", b""), ("usr/bin/tool", b"#!/bin/sh\n"), ("var/lib/dir with space/x", b"x"),
                           ("lib/systemd/system/system-systemd\\x2dcryptsetup.slice", b"")):
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_bytes(data)
        for path in (root, *root.rglob("*")):  # as a tarball's extraction leaves them: mtimes as archived
            os.utime(path, (atime, 1_700_000_000))
        disk.build(root, tmp_path / f"disk{n}.raw", "rw")
        made.append(hashlib.sha256((tmp_path / f"disk{n}.raw").read_bytes()).hexdigest())
        time.sleep(1.1)  # the second tree's ctimes are a second later
    assert made[0] == made[1]


def _seed_files(seed: Path) -> dict[str, str]:
    """The seed's files by their Rock Ridge names, as cloud-init's NoCloud reads them."""
    # The primary volume descriptor is sector 16; its volume identifier, bytes 40-71.
    assert seed.read_bytes()[16 * 2048 + 40:16 * 2048 + 72].decode().strip() == "cidata"
    iso = pycdlib.PyCdlib()
    iso.open(str(seed))
    found = {}
    for child in iso.list_children(rr_path="/"):
        if child.is_file():
            out = io.BytesIO()
            name = child.rock_ridge.name().decode()
            iso.get_file_from_iso_fp(out, rr_path=f"/{name}")
            found[name] = out.getvalue().decode()
    iso.close()
    return found


def test_a_seed_holds_the_node_as_cloud_init_reads_it(cluster, tmp_path):
    result = cli("seed", "worker-0", "-c", cluster)
    assert result.exit_code == 0, result.output
    seed = cluster.parent / "seeds/worker-0.iso"  # it holds secrets: where git ignores it
    assert seed.stat().st_mode & 0o777 == 0o600 and (cluster.parent / "seeds/.gitignore").read_text() == "*\n"
    found = _seed_files(seed)
    revealed = cli("userdata", "worker-0", "-c", cluster, "--reveal").stdout
    assert set(found) == {"user-data", "meta-data"}  # the network: cloud-init's fallback
    assert found["user-data"] == revealed and "local-hostname: worker-0" in found["meta-data"]

    network = tmp_path / "network.yaml"
    network.write_text("version: 2\nethernets:\n  eno1:\n    addresses: [192.0.2.10/24]\n")
    assert cli("seed", "worker-0", "-c", cluster, "--output", seed, "--network-config", network).exit_code == 0
    assert _seed_files(seed)["network-config"] == network.read_text()

    network.write_text("ethernets: {}\n")
    refused = cli("seed", "worker-0", "-c", cluster, "--output", tmp_path / "other.iso", "--network-config", network)
    assert refused.exit_code != 0 and "version: 1` or `version: 2" in refused.output
    assert not (tmp_path / "other.iso").exists()


RELAY = """import socket, sys, threading
upstream = socket.create_connection(("127.0.0.1", int(sys.argv[1])))


def up():
    while data := sys.stdin.buffer.read1(65536):
        upstream.sendall(data)
    upstream.shutdown(socket.SHUT_WR)


threading.Thread(target=up, daemon=True).start()
while data := upstream.recv(65536):
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
"""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_the_disk_image_boots_under_qemu_to_cloud_init_done(cluster, images, tmp_path):
    """Software emulation, the worker's disk image and its seed: cloud-init runs the node's
    userdata, which fetches the node's files from the artifacts (the lab's address, forwarded
    to a server here) and hands over to the boot script; it downloads and installs nothing."""
    (qemu,) = need("qemu-system-x86_64")
    seed = tmp_path / "seed.iso"
    assert cli("seed", "worker-0", "-c", cluster, "--output", seed).exit_code == 0
    site = tmp_path / "site"
    site.mkdir()
    (site / "artifacts").symlink_to(cluster.parent / "artifacts")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    console = tmp_path / "console.log"
    # QEMU's guestfwd to a tcp: chardev is one connection for the VM's life; a command per
    # connection (this relay) carries each of the node's requests to the server.
    relay = tmp_path / "relay.py"
    relay.write_text(RELAY)
    netdev = (f"user,id=n0,net=169.254.169.0/24,host=169.254.169.2,dns=169.254.169.3,"
              f"guestfwd=tcp:169.254.169.254:80-cmd:{sys.executable} {relay} {server.server_address[1]}")
    vm = subprocess.Popen([qemu, "-accel", "tcg", "-m", "2048", "-smp", "2", "-display", "none", "-monitor", "none",
                           "-serial", f"file:{console}", "-no-reboot",
                           "-drive", f"file={images['worker'] / 'disk.raw'},format=raw,if=virtio,snapshot=on",
                           "-drive", f"file={seed},format=raw,if=virtio,readonly=on",
                           "-netdev", netdev, "-device", "virtio-net-pci,netdev=n0"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 1500
        while "Cloud-init v." not in (text := console.read_text(errors="replace") if console.exists() else "") or \
                " finished at " not in text:
            assert vm.poll() is None, f"QEMU stopped: {vm.stderr.read().decode()[-500:]}\n{text[-3000:]}"
            assert time.monotonic() < deadline, f"cloud-init did not finish:\n{text[-3000:]}"
            time.sleep(5)
    finally:
        vm.kill()
        vm.wait()
        server.shutdown()
    assert "Datasource DataSourceNoCloud" in text
    assert "vent-fetch: fetch:" in text and "files verified and installed" in text
    assert "every OS package already installed" in text
    assert "download: kubernetes-node already installed from its pinned sha256" in text
    assert not re.search(r"vent-boot: download: \S+ verified", text), "a baked node downloads no binary"


def test_the_lab_boots_every_node_from_its_image(cluster, images):
    """Every node from its role's image: zero downloads, zero package installs, and the
    controllers form their etcd quorum as before."""
    need("systemd-nspawn")
    saved = os.environ.get("VENT_LAB_DIR")
    os.environ["VENT_LAB_DIR"] = saved or "/var/tmp/vent-bake-test-lab"
    text = cluster.read_text()
    cluster.write_text(text.replace("\nboot:\n", f"\nimage:\n  controllers: controller-{VERSION}\n  workers: worker-{VERSION}\n\nboot:\n"))
    try:
        assert cli("render", "-c", cluster).exit_code == 0
        assert cli("lab", "down", "-c", cluster).exit_code == 0
        result = cli("lab", "up", "-c", cluster, "--timeout", "600")
        assert result.exit_code == 0, result.output
        lab = steps.Lab.load(workspace.Paths.resolve(cluster, None, None), print)
        for node in lab.nodes:
            log = lab.dir(node).file(steps.BOOT_LOG).read_text()
            assert "every OS package already installed; nothing to install" in log, node.name
            assert not re.search(r"download: \S+ verified", log), f"{node.name} downloaded a binary"
            listed = (cluster.parent / f"artifacts/nodes/{node.name}/files/etc/vent/downloads.tsv").read_text().splitlines()
            assert log.count("already installed from its pinned") == len(listed), node.name

        def quorum() -> bool:
            (controller,) = lab.pick(("controller-0",))
            endpoints = ",".join(f"https://{n.reserved}:2379" for n in lab.nodes if n.role == "controller")
            health = nodes.run_in(lab.dir(controller), [
                "etcdctl", f"--endpoints={endpoints}", "--cacert=/etc/etcd/ca.crt", "--cert=/var/lib/kubernetes/pki/apiserver-etcd-client.crt",
                "--key=/var/lib/kubernetes/pki/apiserver-etcd-client.key", "endpoint", "health"], capture_output=True, text=True, timeout=60)
            return (health.stdout + health.stderr).count("is healthy") == 3

        deadline = time.monotonic() + 300
        while not quorum():
            assert time.monotonic() < deadline, "no etcd quorum from the baked controllers"
            time.sleep(3)
    finally:
        cli("lab", "down", "-c", cluster)
        if saved is None:
            del os.environ["VENT_LAB_DIR"]
