"""A raw disk image any VM or machine boots (BIOS): an MBR with syslinux's boot code, a FAT boot
partition with the kernel, initrd and syslinux, and an ext4 root partition. Made with no mount
and no loop device (mkfs.ext4 -d, mtools, sfdisk on a file), every identifier fixed, so the
same root filesystem gives the same bytes.
"""

import os
import shutil
import subprocess
from pathlib import Path

from vent_bake import templates
from vent_bake.errors import VentError
from vent_bake.image.rootfs import EPOCH

SECTOR = 512
ALIGN = 2048  # the first partition's start, in sectors (1 MiB)
BOOT_MIB = 160
DISK_ID = "56454e54"  # "VENT": the MBR's disk identifier, so the root's PARTUUID is known
ROOT_UUID = "56454e54-0000-4000-8000-000000000002"
MBR_CODE = Path("/usr/lib/syslinux/mbr/mbr.bin")
TOOLS = ("mkfs.ext4", "debugfs", "mkfs.fat", "mcopy", "syslinux", "sfdisk")


def _run(*command: str, env: dict | None = None) -> None:
    proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise VentError(f"image: `{' '.join(command[:3])} ...` failed: {(proc.stderr or proc.stdout).strip()[-300:]}")


def kernel(root: Path) -> tuple[Path, Path]:
    """The root filesystem's kernel and initrd."""
    found = sorted((root / "boot").glob("vmlinuz-*")), sorted((root / "boot").glob("initrd.img-*"))
    if not all(found):
        raise VentError(f"image: no kernel or initrd in {root / 'boot'}")
    return found[0][-1], found[1][-1]


def _root_partition(root: Path, out: Path) -> None:
    used = sum(p.lstat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    size_mib = int(used * 1.3 / 2**20) + 256  # room for the node's own files and logs
    fixed = {"E2FSPROGS_FAKE_TIME": str(EPOCH)}
    _run("mkfs.ext4", "-q", "-F", "-L", "vent-root", "-U", ROOT_UUID, "-E", f"hash_seed={ROOT_UUID},root_owner=0:0",
         "-d", str(root), str(out), f"{size_mib}M", env=fixed)
    # mkfs.ext4 -d (e2fsprogs 1.47.0, Debian 12) copies each file's ctime and atime: when it was
    # extracted and read here. debugfs sets them to the epoch (1.47.1 would clamp them itself).
    script = out.with_suffix(".debugfs")
    script.write_text("".join(f'sif "{path}" {field} @{EPOCH}\n' for path in _paths(root) for field in ("ctime", "atime")))
    proc = subprocess.run(["debugfs", "-w", "-f", str(script), str(out)], capture_output=True, text=True, env={**os.environ, **fixed})
    script.unlink()
    complaints = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("debugfs ")]
    if proc.returncode != 0 or complaints:
        raise VentError(f"image: debugfs could not fix the root filesystem's times: {(complaints or [proc.stderr.strip()])[0][-300:]}")


def _paths(root: Path) -> list[str]:
    """Every path in the tree, as the root filesystem will hold it, for a debugfs script."""
    out = ["/"]
    for directory, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            path = f"/{Path(directory, name).relative_to(root)}"
            if '"' in path or "\n" in path:  # debugfs takes the rest as it is (systemd's \x2d escapes too)
                raise VentError(f"image: {path}: a name debugfs cannot be given; nothing was built")
            out.append(path)
    return out


def _boot_partition(root: Path, out: Path, cmdline: str) -> None:
    vmlinuz, initrd = kernel(root)
    stage = out.with_suffix(".d")
    stage.mkdir()
    (stage / "syslinux.cfg").write_text(templates.render("configs/syslinux.cfg", cmdline=cmdline))
    shutil.copyfile(vmlinuz, stage / "vmlinuz")
    shutil.copyfile(initrd, stage / "initrd.img")
    for f in stage.iterdir():
        os.utime(f, (EPOCH, EPOCH))
    env = {"SOURCE_DATE_EPOCH": str(EPOCH)}
    _run("mkfs.fat", "--invariant", "-i", DISK_ID, "-n", "VENTBOOT", "-C", str(out), str(BOOT_MIB * 1024), env=env)
    _run("mcopy", "-m", "-i", str(out), *(str(stage / n) for n in ("syslinux.cfg", "vmlinuz", "initrd.img")), "::/", env=env)
    _run("syslinux", "--install", str(out), env=env)
    shutil.rmtree(stage)


def build(root: Path, out: Path, cmdline: str) -> None:
    """root: the extracted root filesystem (on tmpfs, whose directory order is its creation order,
    so that mkfs.ext4 -d lays it out the same way every time)."""
    missing = [t for t in TOOLS if not shutil.which(t)]
    if missing or not MBR_CODE.is_file():
        raise VentError(f"image: {', '.join(missing) or MBR_CODE} not found; install the Debian packages e2fsprogs, dosfstools,"
                        " mtools, syslinux, syslinux-common and fdisk")
    boot, rootfs = out.with_name("boot.part"), out.with_name("root.part")
    _boot_partition(root, boot, f"root=PARTUUID={DISK_ID}-02 {cmdline}")
    _root_partition(root, rootfs)
    boot_sectors, root_sectors = boot.stat().st_size // SECTOR, rootfs.stat().st_size // SECTOR
    root_start = ALIGN + boot_sectors
    total = (root_start + root_sectors + ALIGN) * SECTOR
    with open(out, "wb") as disk:
        disk.truncate(total)
    layout = (f"label: dos\nlabel-id: 0x{DISK_ID}\nunit: sectors\n\n"
              f"start={ALIGN}, size={boot_sectors}, type=c, bootable\nstart={root_start}, size={root_sectors}, type=83\n")
    proc = subprocess.run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(out)], input=layout, capture_output=True, text=True)
    if proc.returncode != 0:
        raise VentError(f"image: sfdisk failed: {proc.stderr.strip()}")
    with open(out, "r+b") as disk:
        disk.write(MBR_CODE.read_bytes()[:440])
        for part, start in ((boot, ALIGN), (rootfs, root_start)):
            _copy_sparse(part, disk, start * SECTOR)
            part.unlink()


def _copy_sparse(part: Path, disk, offset: int, chunk: int = 1 << 20) -> None:
    """Copy a partition into the disk, leaving its empty stretches as holes."""
    with open(part, "rb") as data:
        while block := data.read(chunk):
            if block.count(0) != len(block):
                disk.seek(offset)
                disk.write(block)
            offset += len(block)
