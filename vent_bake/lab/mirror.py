"""The lab's mirror and lock: what its service hands the nodes at /mirror/ (from `lab-mirror/`
beside the cluster file), and the lock that pins it.

Offline (`vent-bake lab init`), every binary of the default lock is built from its Go module
at the lock's version (build.py), packed the way its release is (the same archive members, so
the nodes install it exactly as they would the official one) and pinned by sha256 in a project
lock beside the cluster file, its source saying which module it was built from; the container
images are made from the same programs (images.py) and pinned by digest.

Online (`vent-bake lab init --official`), the cluster keeps the official lock and names the
lab's service as its `mirror`; `lab up` fills the mirror from the official hosts on the host
side, each file checked against the lock before it is kept. Either way the boot script treats
what it gets like the official binaries: download, verify, install.
"""

import gzip
import hashlib
import io
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import yaml

from vent_bake import binaries, config, example, fsutil, lock
from vent_bake.config import Cluster
from vent_bake.errors import VentError
from vent_bake.lab import build, images, plan

MIRROR_DIR = "lab-mirror"


def _architecture() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout.strip()


def _cgroup_v1() -> bool:
    """Does this machine mount cgroup v1 (the lab's nodes then run on it)?"""
    return subprocess.run(["stat", "-fc", "%T", "/sys/fs/cgroup"], capture_output=True, text=True).stdout.strip() != "cgroup2fs"


def _archive(members: dict[str, Path]) -> bytes:
    """A tar.gz that is the same bytes for the same members: fixed order, owner and times."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name in sorted(members):
            data = members[name].read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), compresslevel=1, mtime=0)  # served on one host: speed over size


def _packed(name: str, entry: dict, arch: str, built: dict[str, tuple[Path, str]]) -> tuple[str, bytes, str]:
    """(file name, bytes, source) of a lock component, made of what was built."""
    if "extract" in entry:
        members = {member.format(arch=arch): built[binary][0] for binary, member in entry["extract"].items()}
        sources = sorted({built[binary][1] for binary in entry["extract"]})
        return f"{name}-{entry['version']}-{arch}.tar.gz", _archive(members), "; ".join(sources)
    path, source = built[name]
    return f"{name}-{entry['version']}-{arch}", path.read_bytes(), source


def lab_lock(arch: str, say: Callable[[str], None]) -> tuple[dict, dict[str, bytes]]:
    """(the lab's lock entry for the default version, mirror file name -> bytes)."""
    version = lock.newest(lock.packaged())
    official = lock.packaged()[version]
    built = build.all_binaries(say)
    components, files = {}, {}
    for name, entry in official.items():
        if name == "images":
            continue
        file_name, data, source = _packed(name, entry, arch, built)
        files[file_name] = data
        components[name] = {k: v for k, v in entry.items() if k in ("version", "extract")}
        components[name][arch] = {"url": f"{plan.MIRROR_URL}{file_name}", "sha256": hashlib.sha256(data).hexdigest(), "source": source}
    made = images.made(arch, say)
    components["images"] = {name: images.reference(image, digest) for name, (image, _, digest) in made.items()}
    return {version: components}, files


def init(directory: Path, controllers: int, workers: int, name: str, official: bool, say: Callable[[str], None]) -> list[Path]:
    """Write the lab's cluster file and, unless the official binaries are wanted, its lab lock
    and mirror; return what was written."""
    arch = _architecture()
    settings = dict(artifacts_url=plan.ARTIFACTS_URL, metadata_url=plan.METADATA_URL, registry=plan.REGISTRY_URL,
                    mirror=plan.MIRROR_URL if official else None, cgroup_v1=_cgroup_v1())
    text = example.cluster_yaml(name, controllers, workers, arch, lab=settings)
    config.parse(text, "--name")  # the lab's cluster file must itself be valid (a bad --name fails here)
    mirror = directory / MIRROR_DIR
    mirror.mkdir(parents=True, exist_ok=True)
    written = [directory / "cluster.yaml", mirror]
    if not official:
        entry, files = lab_lock(arch, say)
        for file_name, data in files.items():
            (mirror / file_name).write_bytes(data)
        header = ("# The lab's lock (`vent-bake lab init`): every binary built from its Go module at the default\n"
                  "# lock's versions, packed as its release is, and the container images made of them.\n")
        fsutil.write_file(directory / lock.PROJECT_LOCK, (header + yaml.safe_dump(entry, sort_keys=False)).encode(), 0o644)
        written.insert(1, directory / lock.PROJECT_LOCK)
    fsutil.write_file(directory / "cluster.yaml", text.encode(), 0o644)
    return written


def fill(cluster: Cluster, directory: Path, source: str | None, say: Callable[[str], None]) -> None:
    """Fetch into the lab's mirror, on the host, every binary the nodes will ask it for that it
    does not hold yet: a mirrored official URL (<host>/<path>) from that host, or from
    `source`, laid out the same way. Each is checked against the lock before it is kept (the
    nodes check it again). What is already there is left alone: the nodes judge it."""
    import requests

    session = requests.Session()
    for download in {d.url: d for role in ("controller", "worker") for d in binaries.downloads(cluster, role)}.values():
        relative = download.url.removeprefix(plan.MIRROR_URL)
        target = directory / relative
        if target.exists():
            continue
        if "/" not in relative:
            raise VentError(f"lab: {target} is missing; `vent-bake lab init --force` writes the lab's mirror again")
        origin = binaries.mirrored(f"https://{relative}", source)
        say(f"mirror: fetching {download.name} from {origin}")
        try:
            binaries.fetch_pinned(session, origin, download, target)
        except binaries.FetchError as exc:
            raise VentError(f"lab: {exc}; " + ("nothing was kept" if exc.mismatch else "the official binaries need internet"
                            " access, or use `vent-bake lab init` for a lab lock of what this machine builds")) from None


def sources(cluster: Cluster) -> dict[str, str]:
    """Component -> where the binary the lab serves comes from, by the lock in force."""
    components = cluster.lock[cluster.versions.kubernetes]
    used = {d.name for role in ("controller", "worker") for d in binaries.downloads(cluster, role)}
    return {name: components[name][cluster.arch].get("source", components[name][cluster.arch]["url"]) for name in sorted(used)}
