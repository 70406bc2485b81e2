"""The render command's steps, at the edge where files are read and written:

    cluster.yaml -> Cluster -> state (PKI and secrets made once) -> render -> artifacts/

The state is saved before the artifacts: if writing the artifacts fails, the old artifacts
stay and their manifest no longer matches the inputs, so `launch` refuses them until a
render succeeds. When the inputs match artifacts/MANIFEST and the files their digests,
there is nothing to render.
"""

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from vent_bake import certs, config, fsutil, manifest, render, secrets
from vent_bake.config import Cluster
from vent_bake.errors import VentError
from vent_bake.state import ADMIN_KUBECONFIG, ARTIFACTS_CACHE, State

# Top-level entries of the artifacts directory that vent-bake owns; anything else there (a
# README, .gitattributes) is the operator's and is kept.
ARTIFACT_ENTRIES = frozenset({"admin.kubeconfig", "pki", "nodes", manifest.NAME})


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
    issued: list[str]
    dropped: list[str]
    artifacts_changed: bool
    warnings: list[str]
    sizes: dict[str, int]  # bytes of each node's revealed userdata


def load(paths: Paths) -> tuple[bytes, Cluster, State]:
    text = config.read(paths.cluster)
    return text, config.load(paths.cluster, text), State.load(paths.state)


def bake(paths: Paths) -> Result:
    text, cluster, state = load(paths)
    warnings = config.warnings(cluster)
    sizes = unchanged_sizes(paths.out, manifest.inputs_digest(text, state, cluster), cluster, state)
    if sizes is not None:
        return Result(cluster, [], [], False, warnings, sizes)

    issued, dropped = certs.ensure(cluster, render.addresses(cluster, state), state)
    if state.ensure_encryption_key():
        issued.append("encryption key")
    bundle = render.render(cluster, state)
    state.put(ADMIN_KUBECONFIG, reveal(bundle.shared["admin.kubeconfig"].content, state, "admin.kubeconfig").encode())
    sizes = {host: _revealed_size(nb.userdata, state, host) for host, nb in bundle.nodes.items()}
    tree = bundle.tree()
    inputs = manifest.inputs_digest(text, state, cluster)  # the state as saved: the next render's inputs
    tree[manifest.NAME] = manifest.render(inputs, tree)
    state.save()
    write_artifacts(paths.out, tree)
    remember(paths.out, inputs, sizes, state)
    return Result(cluster, issued, dropped, True, warnings, sizes)


def unchanged_sizes(out: Path, inputs: str, cluster: Cluster, state: State) -> dict[str, int] | None:
    """Each node's userdata size, if the artifacts are exactly what these inputs render; else None.

    Like git's index: when every file has the size and mtime it had when last known good,
    nothing was touched; otherwise every file is checked against its digest in the manifest.
    """
    cached = json.loads(state.get(ARTIFACTS_CACHE) or "null")
    if cached and cached["inputs"] == inputs and cached["files"] == _stats(out) and not _racy(out, cached, state):
        return cached["sizes"]
    if manifest.inputs_of(out / manifest.NAME) != inputs:
        return None  # something to render: no need to read the old tree
    found = examine(read_artifacts(out), inputs)
    if not found.intact:
        return None
    sizes = {n.name: _revealed_size(found.tree[f"nodes/{n.name}/userdata"].decode(), state, n.name) for n in cluster.nodes}
    remember(out, inputs, sizes, state)
    return sizes


def _racy(out: Path, cached: dict, state: State) -> bool:
    """Whether a file written in the same clock tick as the cache was edited since: a file whose
    mtime is not older than the cache's cannot be trusted by its stat alone (git calls it
    "racily clean"), so its content is checked against the manifest."""
    since = os.stat(state.root / ARTIFACTS_CACHE).st_mtime_ns
    suspects = [p for p, (_, mtime) in cached["files"].items() if mtime >= since]
    if not suspects:
        return False
    listed = manifest.parse((out / manifest.NAME).read_bytes())
    digests = listed[1] if listed else {}
    return any(p != manifest.NAME and digests.get(p) != hashlib.sha256((out / p).read_bytes()).hexdigest() for p in suspects)


def _stats(out: Path) -> dict[str, list[int]]:
    return {p: st for p, st in fsutil.stat_tree(out).items() if p.split("/", 1)[0] in ARTIFACT_ENTRIES}


def remember(out: Path, inputs: str, sizes: dict[str, int], state: State) -> None:
    record = {"inputs": inputs, "sizes": sizes, "files": _stats(out)}
    state.write_now(ARTIFACTS_CACHE, json.dumps(record, separators=(",", ":")).encode())


def _revealed_size(reviewed: str, state: State, node: str) -> int:
    return len(reveal(reviewed, state, f"nodes/{node}/userdata").encode())


def reveal(text: str, state: State, where: str) -> str:
    return secrets.reveal(text, state.secret, where)


def read_artifacts(out: Path) -> dict[str, bytes]:
    """vent-bake's part of the artifacts directory."""
    try:
        return {p: d for p, d in fsutil.read_tree(out).items() if p.split("/", 1)[0] in ARTIFACT_ENTRIES}
    except OSError as exc:
        raise VentError(f"{out}: cannot read the artifacts directory ({exc.strerror})") from None


@dataclass(frozen=True)
class Examination:
    """The artifacts measured against their MANIFEST and the current inputs."""

    listed: dict[str, str] | None  # path -> sha256 as MANIFEST lists them; None: no manifest
    stale: bool  # rendered from other inputs
    altered: list[str]  # missing, changed or unlisted since the render
    tree: dict[str, bytes]  # the artifacts, MANIFEST left out

    @property
    def intact(self) -> bool:
        return self.listed is not None and not self.stale and not self.altered


def examine(tree: dict[str, bytes], inputs: str) -> Examination:
    """Compare an artifacts tree (as read_artifacts reads it) with its MANIFEST and the inputs."""
    tree = dict(tree)
    listed = manifest.parse(tree.pop(manifest.NAME, b""))
    if listed is None:
        return Examination(None, False, [], tree)
    return Examination(listed[1], listed[0] != inputs, manifest.altered(listed[1], tree), tree)


def reviewed(paths: Paths, text: bytes, cluster: Cluster, state: State) -> dict[str, bytes]:
    """The artifacts tree, if it is exactly what these inputs render; else an error naming the
    command to run. What boots must be what was reviewed."""
    found = examine(read_artifacts(paths.out), manifest.inputs_digest(text, state, cluster))
    if found.listed is None:
        raise VentError(f"{paths.out}: no rendered artifacts: run `vent-bake render` and review them")
    if found.stale:
        raise VentError(f"{paths.out}: the artifacts are stale against the cluster file and state: run `vent-bake render` and review the change")
    if found.altered:
        raise VentError(f"{paths.out}/{found.altered[0]}: changed since it was rendered and reviewed: run `vent-bake render`")
    return found.tree


def revealed_all(tree: dict[str, bytes], cluster: Cluster, state: State) -> dict[str, str]:
    """Every node's bootable userdata, from a reviewed tree."""
    return {n.name: reveal(tree[f"nodes/{n.name}/userdata"].decode(), state, f"nodes/{n.name}/userdata") for n in cluster.nodes}


def write_artifacts(out: Path, tree: dict[str, bytes]) -> None:
    """Replace vent-bake's part of the artifacts directory, keeping the operator's own files."""
    try:
        theirs = sorted(e for e in os.listdir(out) if e not in ARTIFACT_ENTRIES) if out.is_dir() else []
        fsutil.replace_tree(out, tree, carry_over=theirs)
    except OSError as exc:
        raise VentError(f"{out}: cannot write the artifacts ({exc}); the previous artifacts are unchanged") from None


def reviewed_userdata(paths: Paths, node: str) -> str:
    try:
        return (paths.out / "nodes" / node / "userdata").read_text()
    except FileNotFoundError:
        raise VentError(f"{paths.out}: no userdata for node {node!r}; run `vent-bake render` first") from None


def revealed_userdata(paths: Paths, node: str) -> str:
    """The bootable userdata: the reviewed file with every marker checked and filled in."""
    return reveal(reviewed_userdata(paths, node), State.load(paths.state), f"{paths.out}/nodes/{node}/userdata")
