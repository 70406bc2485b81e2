"""The root filesystems lab nodes boot from. The golden one: a Debian 12 minbase with systemd,
cloud-init and the OS packages the boot script would otherwise install (the lab is closed,
so nodes cannot reach Debian's mirrors). Built once with debootstrap, kept by the hash of
what went into it; each node boots an overlay of it.
"""

import hashlib
import shutil
import subprocess
from pathlib import Path

from vent_bake import fsutil, templates
from vent_bake.errors import VentError

SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
BASE = ("systemd", "systemd-sysv", "dbus", "cloud-init", "locales", "ifupdown", "iproute2", "curl", "ca-certificates",
        "kmod", "procps", "libseccomp2",
        "net-tools",  # cloud-init's ifupdown config adds static routes with `route`
        "python3-cffi-backend")  # debootstrap fails to configure cloud-init's dependencies without it
# cloud-init's NoCloud seed is the lab's datasource, as the metadata service is Packet's.
CLOUD_CFG = "datasource_list: [NoCloud]\n"
# What a container needs to be a machine (files/ beside this module): path in the image -> file.
FILES = Path(__file__).parent / "files"
INIT = "/usr/local/sbin/vent-lab-init"
LAB_FILES = {INIT: "init", "/etc/systemd/system.conf.d/vent-lab-accounting.conf": "accounting.conf"}


def packages() -> tuple[str, ...]:
    """BASE plus the OS packages the boot script installs when they are missing."""
    return tuple(sorted(set(BASE) | set(templates.render("configs/os-packages").split())))


def golden(cache: Path, say) -> Path:
    """The golden root filesystem, built now if the cache has none for these packages."""
    wanted = packages()
    key = hashlib.sha256(f"{SUITE}\0{DEBIAN_MIRROR}\0{' '.join(wanted)}".encode()).hexdigest()[:16]
    root = cache / f"golden-{SUITE}-{key}"
    if root.is_dir():
        return root
    if not shutil.which("debootstrap"):
        raise VentError("lab: debootstrap is not installed; install the Debian package debootstrap")
    building = cache / f".building-{key}"
    shutil.rmtree(building, ignore_errors=True)
    building.parent.mkdir(parents=True, exist_ok=True)
    say(f"building the golden image ({SUITE}, {len(wanted)} packages) in {root}; this takes a minute or two")
    proc = subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(wanted)}", SUITE, str(building), DEBIAN_MIRROR],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        shutil.rmtree(building, ignore_errors=True)
        raise VentError(f"lab: debootstrap failed: {(proc.stdout + proc.stderr).strip().splitlines()[-1]}")
    # cloud-init's locale module fails without the locale; every node gets its own identity.
    (building / "etc/locale.gen").write_text("en_US.UTF-8 UTF-8\n")
    subprocess.run(["chroot", str(building), "locale-gen"], check=True, capture_output=True)
    (building / "etc/machine-id").write_text("")
    (building / "etc/hostname").unlink(missing_ok=True)
    building.rename(root)
    return root


def baked(squashfs: Path, cache: Path, say) -> Path:
    """A node image's root filesystem (vent-bake image build), unpacked once: the lower layer of
    the nodes of its role, in place of the golden image."""
    if not shutil.which("unsquashfs"):
        raise VentError("lab: unsquashfs not found; install the Debian package squashfs-tools")
    try:
        key = fsutil.file_digest(squashfs)[:16]
    except OSError as exc:
        raise VentError(f"{squashfs}: cannot read the node image ({exc.strerror}); run `vent-bake image build`") from None
    root = cache / f"baked-{key}"
    if root.is_dir():
        return root
    building = cache / f".unpacking-{key}"
    shutil.rmtree(building, ignore_errors=True)
    cache.mkdir(parents=True, exist_ok=True)
    say(f"unpacking the node image {squashfs} into {root}")
    proc = subprocess.run(["unsquashfs", "-no-progress", "-d", str(building), str(squashfs)], capture_output=True, text=True)
    if proc.returncode != 0:
        shutil.rmtree(building, ignore_errors=True)
        raise VentError(f"lab: unsquashfs {squashfs} failed: {proc.stderr.strip()[-200:]}")
    building.rename(root)
    return root


def machine_files() -> dict[str, tuple[bytes, int]]:
    """What the lab adds to every node's disk, whatever it boots from: the container's init and
    systemd's accounting (files/), and cloud-init's datasource, the node's NoCloud seed."""
    out = {path: ((FILES / name).read_bytes(), 0o755 if path == INIT else 0o644) for path, name in LAB_FILES.items()}
    return out | {"/etc/cloud/cloud.cfg.d/95-vent-lab.cfg": (CLOUD_CFG.encode(), 0o644)}
