"""The node image's root filesystem, as one reproducible tarball: Debian 12 from mmdebstrap,
the OS packages the boot script wants, cloud-init and the kernel, and every binary of the role
installed by the node's own boot script (its `install` step, which leaves a receipt per
component: a booting node that finds the binary as pinned fetches nothing and installs nothing).
"""

import io
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from vent_bake import binaries, templates
from vent_bake.binaries import Download
from vent_bake.config import Cluster
from vent_bake.errors import VentError

SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
EPOCH = 1767225600  # 2026-01-01T00:00:00Z: every file's time (SOURCE_DATE_EPOCH)
KERNEL = {"amd64": "linux-image-amd64", "arm64": "linux-image-arm64"}
BASE = ("systemd", "systemd-sysv", "dbus", "cloud-init", "locales", "ifupdown", "iproute2", "curl", "ca-certificates", "kmod",
        "procps", "net-tools", "python3-cffi-backend", "initramfs-tools",
        "live-boot")  # the initrd's boot=live fetch=<url>: the network boot's root filesystem
STAGED = "/var/lib/vent/image"  # the role's download list, while the image is made


def packages(arch: str) -> tuple[str, ...]:
    return tuple(sorted({*BASE, KERNEL[arch], *templates.render("configs/os-packages").split()}))


def _base(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _staging_tar(files: dict[str, tuple[bytes, int]]) -> bytes:
    """What goes into the image before its install step, as a tar mmdebstrap extracts."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for path in sorted(files):
            data, mode = files[path]
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode, info.mtime = len(data), mode, EPOCH
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def build(cluster: Cluster, role: str, out: Path, fetch: Callable[[Download, Path], None], say: Callable[[str], None]) -> dict:
    """Write the root filesystem tarball at `out`; return what went in (the role's downloads)."""
    downloads = binaries.downloads(cluster, role)
    with tempfile.TemporaryDirectory(prefix="vent-image-", dir=out.parent) as work:
        work = Path(work)
        files = {
            "/usr/local/lib/vent/boot": (templates.render("cloudinit/boot.sh").encode(), 0o755),
            "/usr/local/lib/vent/lib.sh": (templates.render("cloudinit/lib.sh").encode(), 0o644),
            f"{STAGED}/downloads.tsv": ("".join(d.line() + "\n" for d in downloads).encode(), 0o644),
            "/etc/cloud/cloud.cfg.d/90-vent-image.cfg": (templates.render("configs/image-cloud.cfg", metadata_base=_base(
                cluster.boot.metadata_url)).encode(), 0o644),
        }
        for download in downloads:
            target = work / "downloads" / download.name
            target.parent.mkdir(exist_ok=True)
            say(f"image: {download.name} from {download.url}")
            fetch(download, target)
            files[f"/var/lib/vent/downloads/{download.name}"] = (target.read_bytes(), 0o644)
        staging = work / "staging.tar"
        staging.write_bytes(_staging_tar(files))
        install = (f'chroot "$1" env VENT_ETC={STAGED} VENT_STATE=/var/lib/vent VENT_LOG=/dev/null VENT_CONSOLE=/dev/null'
                   " /usr/local/lib/vent/boot install")
        clean = ('rm -rf "$1/var/lib/vent/downloads" "$1/var/lib/vent/extract" "$1' + STAGED + '" "$1/usr/local/lib/vent"'
                 ' "$1/etc/hostname"; : > "$1/etc/machine-id"')
        locale = 'echo "en_US.UTF-8 UTF-8" > "$1/etc/locale.gen" && chroot "$1" locale-gen >/dev/null'
        say(f"image: Debian {SUITE} with {len(packages(cluster.arch))} packages (mmdebstrap; a few minutes)")
        proc = subprocess.run(
            ["mmdebstrap", "--quiet", "--variant=minbase", f"--architectures={cluster.arch}",
             f"--include={','.join(packages(cluster.arch))}", f"--customize-hook=tar-in {staging} /",
             f"--customize-hook={install}", f"--customize-hook={locale}", f"--customize-hook={clean}",
             "--format=tar", SUITE, str(out), DEBIAN_MIRROR],
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SOURCE_DATE_EPOCH": str(EPOCH), "LC_ALL": "C.UTF-8"},
            capture_output=True, text=True)
        if proc.returncode != 0:
            last = ((proc.stderr or proc.stdout).strip().splitlines() or ["no output"])[-1]
            raise VentError(f"image: mmdebstrap failed: {last}")
    return {d.name: {"algorithm": d.algorithm, "digest": d.digest, "url": d.url} for d in downloads}
