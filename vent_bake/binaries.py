"""What each node downloads: the lock's components for its role, as lines the boot script reads.

Each line: name, URL, digest algorithm, digest, and where it installs. An archive lists
`dest=member` pairs; a plain binary names its destination. The boot script verifies every
digest before it installs anything.
"""

from dataclasses import dataclass
from urllib.parse import urlsplit

from vent_bake import lock
from vent_bake.config import Cluster

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
    """Which component supplies which needed binaries. Archives that bring several needed
    binaries come first (they are downloaded anyway), then plain binaries, then whatever
    archive brings the most of the rest with the least besides."""
    entries = {n: e for n, e in components.items() if n != "images"}
    left, out = set(needed), {}
    for name, entry in entries.items():
        if "extract" in entry and len(lock.provides(name, entry) & left) >= 2:
            out[name] = lock.provides(name, entry) & left
            left -= out[name]
    for name, entry in entries.items():
        if "extract" not in entry and name in left:
            out[name] = {name}
            left.discard(name)
    while left:
        name = max((n for n in entries if "extract" in entries[n]),
                   key=lambda n: (len(lock.provides(n, entries[n]) & left), -len(lock.provides(n, entries[n]))), default=None)
        if name is None or not lock.provides(name, entries[name]) & left:
            raise lock.LockError(f"the binaries lock has nothing that installs {', '.join(sorted(left))}")
        out[name] = lock.provides(name, entries[name]) & left
        left -= out[name]
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
