"""What each node downloads: the lock's components for its role, as lines the boot script reads.

Each line: name, URL, digest algorithm, digest, and where it installs. An archive lists
`dest=member` pairs; a plain binary names its destination. The boot script verifies every
digest before it installs anything.
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from vent_bake import lock
from vent_bake.config import Cluster
from vent_bake.errors import VentError

BIN = "/usr/local/bin"
CNI_BIN = "/opt/cni/bin"
CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap", "bandwidth")
SBIN = {"runc"}  # installed in /usr/local/sbin

WORKER = ("kubelet", "kube-proxy", "containerd", "containerd-shim-runc-v2", "ctr", "runc", *CNI_PLUGINS,
          "crictl", "runsc", "containerd-shim-runsc-v1", "flanneld")
CONTROLLER = (*WORKER, "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "etcd", "etcdctl", "etcdutl")


@dataclass(frozen=True)
class Download:
    name: str
    url: str
    algorithm: str
    digest: str
    installs: str  # "dest=member,..." for an archive, "dest" for a plain binary

    def line(self) -> str:
        return "\t".join((self.name, self.url, self.algorithm, self.digest, self.installs))


class FetchError(VentError):
    """A download could not be had (`mismatch` False) or was not the pinned one; nothing was kept."""

    def __init__(self, message: str, mismatch: bool):
        super().__init__(message)
        self.mismatch = mismatch


def fetch_pinned(session, url: str, download: Download, target: Path) -> None:
    """Stream `url` (with a requests session) into `target`, kept only if it has the download's
    pinned digest: the host side's counterpart of the boot script's download step."""
    import requests

    digest = hashlib.new(download.algorithm)
    partial = target.with_name(target.name + ".part")
    partial.parent.mkdir(parents=True, exist_ok=True)
    try:
        with session.get(url, stream=True, timeout=(10, 300)) as response, open(partial, "wb") as out:
            response.raise_for_status()
            for chunk in response.iter_content(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except (requests.RequestException, OSError) as exc:
        partial.unlink(missing_ok=True)
        raise FetchError(f"cannot fetch {url} ({exc.__class__.__name__})", mismatch=False) from None
    if digest.hexdigest() != download.digest:
        partial.unlink()
        raise FetchError(f"{url} does not match the lock's {download.algorithm} for {download.name}", mismatch=True)
    partial.rename(target)


def mirrored(url: str, mirror: str | None) -> str:
    """With a mirror, https://host/path becomes <mirror>/host/path: one tree serves every origin."""
    if not mirror:
        return url
    parts = urlsplit(url)
    return f"{mirror.rstrip('/')}/{parts.netloc}{parts.path}"


def destination(binary: str) -> str:
    if binary in CNI_PLUGINS:
        return f"{CNI_BIN}/{binary}"
    return f"/usr/local/sbin/{binary}" if binary in SBIN else f"{BIN}/{binary}"


def choose(components: dict, needed: set[str]) -> dict[str, set[str]]:
    """Which component supplies which needed binaries: again and again, the one that brings
    the most of those still needed, and of equals a plain binary, then the archive with the
    fewest members (a node tarball before the server tarball)."""
    entries = {n: e for n, e in components.items() if n != "images"}
    left, out = set(needed), {}
    while left:
        def score(name: str) -> tuple:
            members = lock.provides(name, entries[name])
            return len(members & left), "extract" not in entries[name], -len(members)
        best = max(entries, key=score, default=None)
        if best is None or not lock.provides(best, entries[best]) & left:
            raise lock.LockError(f"the binaries lock has nothing that installs {', '.join(sorted(left))}")
        out[best] = lock.provides(best, entries[best]) & left
        left -= out[best]
    return out


def downloads(cluster: Cluster, role: str) -> list[Download]:
    components = cluster.lock[cluster.versions.kubernetes]
    chosen = choose(components, set(CONTROLLER if role == "controller" else WORKER))
    out = []
    for name, entry in components.items():  # the lock's order: the same inputs, the same lines
        if name not in chosen:
            continue
        algorithm, digest = lock.pinned(entry, cluster.arch)
        if "extract" in entry:
            members = entry["extract"]
            installs = ",".join(f"{destination(b)}={members[b].format(arch=cluster.arch)}" for b in members if b in chosen[name])
        else:
            installs = destination(name)
        out.append(Download(name, mirrored(entry[cluster.arch]["url"], cluster.mirror), algorithm, digest, installs))
    return out
