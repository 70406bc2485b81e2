"""The render command's steps, at the edge where files are read and written:

    cluster.yaml -> Cluster -> state (PKI and secrets made once) -> render -> artifacts/

The state is saved before the artifacts: if writing the artifacts fails, the old artifacts
stay and their markers no longer match, so `launch` refuses them until a render succeeds.
"""

from dataclasses import dataclass
from pathlib import Path

from vent_bake import certs, config, fsutil, render, secrets, userdata
from vent_bake.config import Cluster
from vent_bake.errors import VentError
from vent_bake.state import ADMIN_KUBECONFIG, State

# Top-level entries of the artifacts directory that vent-bake owns; anything else there (a
# README, .gitattributes) is the operator's and is kept.
ARTIFACT_ENTRIES = frozenset({"admin.kubeconfig", "pki", "nodes", "manifests"})


@dataclass(frozen=True)
class Paths:
    cluster: Path
    out: Path
    state: Path

    @classmethod
    def resolve(cls, cluster: Path, out: Path | None, state: Path | None) -> "Paths":
        cluster = cluster.absolute()
        paths = cls(cluster, (out or cluster.parent / "artifacts").absolute(), (state or cluster.parent / ".vent").absolute())
        if paths.out == paths.state or paths.out in paths.state.parents or paths.state in paths.out.parents:
            raise VentError(f"--out {paths.out} and --state {paths.state} must not contain each other")
        return paths


@dataclass(frozen=True)
class Result:
    cluster: Cluster
    bundle: render.Bundle
    issued: list[str]
    dropped: list[str]
    artifacts_changed: bool
    warnings: list[str]
    sizes: dict[str, int]  # bytes of each node's revealed userdata


def load(paths: Paths) -> tuple[Cluster, State]:
    return config.load(paths.cluster), State.load(paths.state)


def bake(paths: Paths) -> Result:
    cluster, state = load(paths)
    issued, dropped = certs.ensure(cluster, render.addresses(cluster, state), state)
    if state.ensure_encryption_key():
        issued.append("encryption key")
    bundle = render.render(cluster, state)
    state.put(ADMIN_KUBECONFIG, reveal(bundle.shared["admin.kubeconfig"].content, state, "admin.kubeconfig").encode())
    sizes = {host: len(reveal(nb.userdata, state, host).encode()) for host, nb in bundle.nodes.items()}
    state.save()
    changed = write_artifacts(paths.out, bundle.tree())
    return Result(cluster, bundle, issued, dropped, changed, config.warnings(cluster), sizes)


def reviewed_userdata(paths: Paths, node: str) -> str:
    try:
        return (paths.out / "nodes" / node / "userdata").read_text()
    except FileNotFoundError:
        raise VentError(f"{paths.out}: no userdata for node {node!r}; run `vent-bake render` first") from None


def revealed_userdata(paths: Paths, node: str) -> str:
    """The bootable userdata: the reviewed file with every marker checked and filled in."""
    return reveal(reviewed_userdata(paths, node), State.load(paths.state), f"{paths.out}/nodes/{node}/userdata")


def reveal(text: str, state: State, where: str) -> str:
    return secrets.reveal(text, state.secret, where)


def write_artifacts(out: Path, tree: dict[str, bytes]) -> bool:
    """Replace vent-bake's part of the artifacts directory; False when it already held exactly this."""
    try:
        current = fsutil.read_tree(out)
    except OSError as exc:
        raise VentError(f"{out}: cannot read the artifacts directory ({exc.strerror})") from None
    ours = {p: d for p, d in current.items() if p.split("/", 1)[0] in ARTIFACT_ENTRIES}
    if ours == tree:
        return False
    theirs = sorted({p.split("/", 1)[0] for p in current} - ARTIFACT_ENTRIES)
    try:
        fsutil.replace_tree(out, tree, carry_over=theirs)
    except OSError as exc:
        raise VentError(f"{out}: cannot write the artifacts ({exc}); the previous artifacts are unchanged") from None
    return True
