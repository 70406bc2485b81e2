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

# Component -> where its binaries go. Controllers take kube-proxy and kubectl from the server
# tarball; workers take kube-proxy from the smaller node tarball.
WORKER = ("kubernetes-node", "kubelet", "containerd", "runc", "cni-plugins", "crictl", "runsc", "containerd-shim-runsc-v1", "flanneld")
CONTROLLER = ("kubernetes-server", "etcd", *(c for c in WORKER if c != "kubernetes-node"))
PLAIN = {"runc": "/usr/local/sbin/runc"}  # a plain binary installs at BIN/<name> unless named here


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


def _dest(component: str, binary: str) -> str:
    return f"{CNI_BIN}/{binary}" if component == "cni-plugins" else f"{BIN}/{binary}"


def downloads(cluster: Cluster, role: str) -> list[Download]:
    components = lock.components(cluster.versions.kubernetes)
    out = []
    for name in CONTROLLER if role == "controller" else WORKER:
        entry = components[name]
        pinned = entry[cluster.arch]
        algorithm = "sha512" if "sha512" in pinned else "sha256"
        if "extract" in entry:
            installs = ",".join(f"{_dest(name, b)}={m.format(arch=cluster.arch)}" for b, m in entry["extract"].items())
        else:
            installs = PLAIN.get(name, f"{BIN}/{name}")
        out.append(Download(name, mirrored(pinned["url"], cluster.mirror), algorithm, pinned[algorithm], installs))
    return out
