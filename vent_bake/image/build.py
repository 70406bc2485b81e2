"""`vent-bake image build`: the steps in order, and the image's manifest.

    images/<role>-<kubernetes version>/   beside the cluster file (not in artifacts/)
      disk.raw               a raw disk image (BIOS: MBR, syslinux, ext4 root)
      vmlinuz, initrd.img    the kernel and initrd, for network boot
      filesystem.squashfs    the root filesystem, for network boot (and the lab)
      boot.ipxe              the iPXE script, with the URLs where the image is published:
                             <boot.artifacts_url>images/<role>-<version>/
      manifest.json          the sha256 of each of the above, and what went in: the lock's
                             digests of the role's binaries, every Debian package's version

The image is written beside where it goes and swapped in whole; an interrupted build leaves
the previous one as it was.
"""

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from vent_bake import binaries, config, fsutil
from vent_bake.binaries import Download
from vent_bake.config import Cluster
from vent_bake.errors import VentError
from vent_bake.image import disk, netboot, rootfs

IMAGES = "images"
MANIFEST = "manifest.json"
OUTPUTS = ("disk.raw", "vmlinuz", "initrd.img", "filesystem.squashfs", "boot.ipxe")
ROLES = {"controller": "controllers", "worker": "workers"}
TOOLS = ("mmdebstrap", "tar", *disk.TOOLS, "mksquashfs")
DISK_CMDLINE = "rw console=tty0 console=ttyS0,115200n8"
# Equinix Metal's x86 machines have their serial console on the second port.
IPXE_CMDLINE = "console=tty0 console=ttyS1,115200n8"


def name(cluster: Cluster, role: str) -> str:
    return f"{role}-{cluster.versions.kubernetes}"


def directory(cluster_file: Path, image: str) -> Path:
    """Where an image is made and kept: images/<image>/ beside the cluster file."""
    return cluster_file.parent.absolute() / IMAGES / image


def published(cluster: Cluster, directory: str) -> str:
    """Where the operator publishes an image directory: under boot.artifacts_url."""
    return f"{cluster.boot.artifacts_base}{IMAGES}/{directory}/"


def _fetcher(cluster_file: Path, source: str | None) -> Callable[[Download, Path], None]:
    """Fetch a download into a file, kept only if it has its pinned digest: from `source` (a
    mirror laid out <host>/<path>), from a lab's own mirror directory, or from its URL."""
    import requests

    from vent_bake.lab import mirror, plan  # a lab cluster's binaries: its mirror directory beside the cluster file

    session = requests.Session()

    def fetch(download: Download, target: Path) -> None:
        local = cluster_file.parent / mirror.MIRROR_DIR / download.url.removeprefix(plan.MIRROR_URL)
        if source is None and download.url.startswith(plan.MIRROR_URL) and local.is_file():
            shutil.copyfile(local, target)
            if fsutil.file_digest(target, download.algorithm) != download.digest:
                raise VentError(f"image: {local} does not match the lock's {download.algorithm} for {download.name}; nothing was built")
            return
        url = binaries.mirrored(download.url, source) if source else download.url
        try:
            binaries.fetch_pinned(session, url, download, target)
        except binaries.FetchError as exc:
            raise VentError(f"image: {exc}; " + ("nothing was built" if exc.mismatch else "pass --from a mirror")) from None

    return fetch


def _packages(root: Path) -> dict[str, str]:
    """Every installed Debian package and its version, from dpkg's status."""
    out, name = {}, None
    for line in (root / "var/lib/dpkg/status").read_text().splitlines():
        if line.startswith("Package: "):
            name = line.split(": ", 1)[1]
        elif line.startswith("Version: ") and name:
            out[name] = line.split(": ", 1)[1]
    return dict(sorted(out.items()))


def _extract(tar: Path) -> Path:
    """The root filesystem extracted where directory order is creation order (tmpfs)."""
    shm = Path("/dev/shm")
    root = Path(tempfile.mkdtemp(prefix="vent-image-root-", dir=shm if shm.is_dir() else None))
    try:
        proc = subprocess.run(["tar", "--numeric-owner", "-xpf", str(tar), "-C", str(root)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise VentError(f"image: extracting the root filesystem failed: {proc.stderr.strip()[-300:]}")
    except BaseException:  # an interrupt too: gigabytes in memory
        shutil.rmtree(root, ignore_errors=True)
        raise
    return root


def _check_host() -> None:
    """Everything the build needs, before minutes of mmdebstrap."""
    if os.geteuid() != 0:
        raise VentError("image: needs root (the root filesystem's files are owned by root, and its install step runs in a chroot)")
    missing = [t for t in TOOLS if not shutil.which(t)]
    if missing:
        raise VentError(f"image: {', '.join(missing)} not found; install the Debian packages mmdebstrap, e2fsprogs, dosfstools,"
                        " mtools, syslinux, fdisk and squashfs-tools")


def build(cluster_file: Path, role: str, source: str | None, say: Callable[[str], None]) -> Path:
    cluster = config.load(cluster_file)
    _check_host()
    out = directory(cluster_file, name(cluster, role))
    out.parent.mkdir(parents=True, exist_ok=True)
    fsutil.clear_leftovers(out)
    staging_path, old = fsutil.staging_paths(out)
    staging = Path(staging_path)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        tar = staging / "rootfs.tar"
        downloads = rootfs.build(cluster, role, tar, _fetcher(cluster_file, source), say)
        root = _extract(tar)
        try:
            say(f"image: {role}: disk image, kernel, initrd and squashfs")
            disk.build(root, staging / "disk.raw", DISK_CMDLINE)
            netboot.build(root, staging)
            packages = _packages(root)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        tar.unlink()
        (staging / "boot.ipxe").write_text(netboot.ipxe(role, cluster.versions.kubernetes, published(cluster, out.name), IPXE_CMDLINE))
        outputs = {n: fsutil.file_digest(staging / n) for n in OUTPUTS}
        manifest = {"role": role, "kubernetes": cluster.versions.kubernetes, "arch": cluster.arch,
                    "source_date_epoch": rootfs.EPOCH, "outputs": outputs, "downloads": downloads, "packages": packages}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        fsutil.swap_in(staging_path, str(out), old)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


# --- an image as the cluster file names it ---------------------------------------------------------

def manifest(cluster_file: Path, image: str) -> dict:
    path = directory(cluster_file, image) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise VentError(f"{path}: no image there; run `vent-bake image build`") from None
    except (OSError, ValueError) as exc:
        raise VentError(f"{path}: not an image manifest ({exc})") from None


def check(cluster_file: Path, cluster: Cluster) -> dict[str, Path]:
    """Each imaged role's image directory; an error naming the first binary whose pin the image
    was not baked with (an image of another lock)."""
    found = {}
    for role, field in ROLES.items():
        image = getattr(cluster.image, field)
        if image is None:
            continue
        baked = manifest(cluster_file, image)
        want = {d.name: {"algorithm": d.algorithm, "digest": d.digest, "url": d.url} for d in binaries.downloads(cluster, role)}
        for component in sorted(want.keys() | baked.get("downloads", {}).keys()):
            mine, theirs = want.get(component), baked.get("downloads", {}).get(component)
            if mine is None or theirs is None or mine["digest"] != theirs["digest"]:
                pinned = f"{mine['algorithm']} {mine['digest'][:16]}..." if mine else "nothing"
                had = f"{theirs['algorithm']} {theirs['digest'][:16]}..." if theirs else "nothing"
                raise VentError(f"{cluster_file}: image.{field}: {image} was baked from another lock: {component} is {had}"
                                f" there, the cluster's lock pins {pinned}; run `vent-bake image build --role {role}` again")
        found[role] = directory(cluster_file, image)
    return found
