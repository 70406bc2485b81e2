"""The lab's mirror: what its service hands the nodes at /mirror/, from `lab-mirror/` beside
the cluster file.

Offline (`vent-bake lab init`), the lab serves what Debian's packages provide (etcd,
containerd, runc, the CNI plugins), packed the way the official releases are and pinned by
their own sha256 in a project lock beside the cluster file. Every other binary is a stand-in
that says why it is not exercised and exits non-zero: its unit is still written, enabled and
started with the rendered flags, and the lab's report names it.

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
from pathlib import Path

import requests
import yaml

from vent_bake import binaries, lock
from vent_bake.config import Cluster
from vent_bake.errors import VentError
from vent_bake.lab import plan

MIRROR_DIR = "lab-mirror"
STAND_IN = "stand-in:"

# component -> (Debian package, {binary: its path on this machine}); an archive when several
PACKAGED = {
    "etcd": ("etcd-server", {"etcd": "/usr/bin/etcd", "etcdctl": "/usr/bin/etcdctl"}),
    "containerd": ("containerd", {"containerd": "/usr/bin/containerd", "containerd-shim-runc-v2": "/usr/bin/containerd-shim-runc-v2",
                                  "ctr": "/usr/bin/ctr"}),
    "runc": ("runc", {"runc": "/usr/sbin/runc"}),
    "cni-plugins": ("containernetworking-plugins", {p: f"/usr/lib/cni/{p}" for p in ("bridge", "host-local", "loopback", "portmap", "bandwidth")}),
}
_KUBERNETES = "no Kubernetes binary can be had here: dl.k8s.io is out of reach and Debian 12 packages none"
STAND_INS = {
    **{b: _KUBERNETES for b in lock.KUBERNETES_BINARIES},
    "etcdutl": "etcdutl ships with etcd 3.5; Debian 12 has etcd 3.4",
    "crictl": "crictl is not packaged in Debian 12 and github.com is out of reach",
    "runsc": "gVisor is not packaged in Debian 12 and storage.googleapis.com is out of reach",
    "containerd-shim-runsc-v1": "gVisor is not packaged in Debian 12 and storage.googleapis.com is out of reach",
    "flanneld": "flannel is not packaged in Debian 12 and github.com is out of reach",
}


def _package_version(package: str) -> str:
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout:
        raise VentError(f"lab init: the Debian package {package} is not installed; install it (`make test` does)")
    return proc.stdout


def _architecture() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout.strip()


def _stand_in(binary: str, reason: str) -> bytes:
    return (f"#!/bin/sh\n# vent-bake lab stand-in for {binary}\n"
            f"echo \"vent-bake lab: {binary} is not exercised here: {reason}\" >&2\nexit 1\n").encode()


def _archive(members: dict[str, bytes]) -> bytes:
    """A tar.gz that is the same bytes for the same members: fixed order, owner and times."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name in sorted(members):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(members[name]), 0o755
            tar.addfile(info, io.BytesIO(members[name]))
    return gzip.compress(raw.getvalue(), compresslevel=1, mtime=0)  # served on one host: speed over size


def build(arch: str) -> tuple[dict, dict[str, bytes]]:
    """(the lock's components for the lab, mirror file name -> bytes)."""
    files: dict[str, bytes] = {}
    components: dict = {}

    def pin(name: str, data: bytes, entry: dict, source: str) -> None:
        files[name] = data
        entry[arch] = {"url": f"{plan.MIRROR_URL}{name}", "sha256": hashlib.sha256(data).hexdigest(), "source": source}
        components[entry.pop("component")] = entry

    for component, (package, binaries) in PACKAGED.items():
        version = _package_version(package)
        members = {b: Path(path).read_bytes() for b, path in binaries.items()}
        source = f"Debian package {package} {version}"
        if len(members) == 1:
            (binary, data), = members.items()
            pin(f"{binary}-{arch}", data, {"component": component, "version": version}, source)
        else:
            pin(f"{component}-lab-{arch}.tar.gz", _archive(members), {"component": component, "version": version,
                                                                      "extract": {b: b for b in sorted(members)}}, source)
    for binary, reason in STAND_INS.items():
        pin(f"{binary}-{arch}", _stand_in(binary, reason), {"component": binary, "version": "lab"}, f"{STAND_IN} {reason}")
    return components, files


def not_exercised(components: dict, arch: str) -> dict[str, str]:
    """Component -> why the lab cannot run it, from the lock in force."""
    return {name: entry[arch]["source"].removeprefix(STAND_IN).strip() for name, entry in components.items()
            if name != "images" and entry.get(arch, {}).get("source", "").startswith(STAND_IN)}


def init(directory: Path, text: str, official: bool) -> list[Path]:
    """Write the lab's cluster file (the example's text, pointed at the lab) and, unless the
    official binaries are wanted, its lab lock and mirror; return what was written."""
    target = directory / "cluster.yaml"
    text = text.replace("https://files.example.com/vent/artifacts/  # replace with where you publish it", plan.ARTIFACTS_URL)
    text = text.replace("https://metadata.platformequinix.com/metadata", plan.METADATA_URL)
    mirror = directory / MIRROR_DIR
    mirror.mkdir(parents=True, exist_ok=True)
    if official:
        target.write_text(text.replace("\npki:\n", f"\n# `vent-bake lab up` fills the lab's mirror from the official hosts.\nmirror: {plan.MIRROR_URL}\n\npki:\n", 1))
        return [target, mirror]
    arch = _architecture()
    version = lock.newest(lock.packaged())
    components, files = build(arch)
    components["images"] = lock.packaged()[version]["images"]
    text = text.replace("arch: amd64", f"arch: {arch}")
    for file_name, data in files.items():
        (mirror / file_name).write_bytes(data)
    header = ("# The lab's lock (`vent-bake lab init`): what this machine's Debian packages provide, and a\n"
              "# stand-in for each binary it cannot have, served by the lab at its mirror.\n")
    (directory / lock.PROJECT_LOCK).write_text(header + yaml.safe_dump({version: components}, sort_keys=False))
    target.write_text(text)
    return [target, directory / lock.PROJECT_LOCK, mirror]


def fill(cluster: Cluster, directory: Path, source: str | None, say) -> None:
    """Fetch into the lab's mirror, on the host, every binary the nodes will ask it for that it
    does not hold yet: a mirrored official URL (<host>/<path>) from that host, or from
    `source`, laid out the same way. Each is checked against the lock before it is kept (the
    nodes check it again). What is already there is left alone: the nodes judge it."""
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
        digest = hashlib.new(download.algorithm)
        partial = target.with_name(target.name + ".part")
        partial.parent.mkdir(parents=True, exist_ok=True)
        try:
            with session.get(origin, stream=True, timeout=(10, 300)) as response, open(partial, "wb") as out:
                response.raise_for_status()
                for chunk in response.iter_content(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
        except (requests.RequestException, OSError) as exc:
            partial.unlink(missing_ok=True)
            raise VentError(f"lab: cannot fetch {origin} ({exc.__class__.__name__}); the official binaries need internet"
                            " access, or use `vent-bake lab init` for a lab lock of this machine's packages") from None
        if digest.hexdigest() != download.digest:
            partial.unlink()
            raise VentError(f"lab: {origin} does not match the lock's {download.algorithm} for {download.name}; nothing was kept")
        partial.rename(target)
