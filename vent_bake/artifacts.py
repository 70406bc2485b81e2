"""The artifacts directory on disk: reading it, writing it atomically, measuring it against its
MANIFEST, and revealing a node's userdata from it, checked.

What boots must be what was reviewed: `reviewed` refuses a tree that is stale against the
inputs or altered since the render, and `revealed` refuses any secret a node's role may not
hold, whatever its userdata says.
"""

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from vent_bake import fsutil, manifest, secrets
from vent_bake.config import Cluster
from vent_bake.errors import VentError
from vent_bake.state import ARTIFACTS_CACHE, State

# Top-level entries of the artifacts directory that vent-bake owns; anything else there (a
# README, .gitattributes) is the operator's and is kept.
ENTRIES = frozenset({"admin.kubeconfig", "pki", "nodes", manifest.NAME})


def read(out: Path) -> dict[str, bytes]:
    """vent-bake's part of the artifacts directory: its files. Anything else there (a symlink,
    a special file, an empty directory) was not rendered, and is refused."""
    strays: list[str] = []
    try:
        tree = {p: d for p, d in fsutil.read_tree(out, strays).items() if p.split("/", 1)[0] in ENTRIES}
    except OSError as exc:
        raise VentError(f"{out}: cannot read the artifacts directory ({exc.strerror})") from None
    stray = next((s for s in strays if s.split("/", 1)[0] in ENTRIES), None)
    if stray:
        raise VentError(f"{out}/{stray}: not a file vent-bake rendered (a symlink, a special file or an empty directory):"
                        " run `vent-bake render`")
    return tree


def write(out: Path, tree: dict[str, bytes]) -> dict[str, tuple[int, int, int, int]]:
    """Replace vent-bake's part of the artifacts directory, keeping the operator's own files.
    Returns the stat records of what was written, for `remember`."""
    try:
        theirs = sorted(e for e in os.listdir(out) if e not in ENTRIES) if out.is_dir() else []
        return fsutil.replace_tree(out, tree, carry_over=theirs)
    except OSError as exc:
        raise VentError(f"{out}: cannot write the artifacts ({exc}); the previous artifacts are unchanged") from None


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
    """Compare an artifacts tree (as `read` reads it) with its MANIFEST and the inputs."""
    tree = dict(tree)
    listed = manifest.parse(tree.pop(manifest.NAME, b""))
    if listed is None:
        return Examination(None, False, [], tree)
    return Examination(listed[1], listed[0] != inputs, manifest.altered(listed[1], tree), tree)


def reviewed(out: Path, inputs: str) -> dict[str, bytes]:
    """The artifacts tree, if it is exactly what these inputs render; else an error naming the
    command to run."""
    found = examine(read(out), inputs)
    if found.listed is None:
        raise VentError(f"{out}: no rendered artifacts: run `vent-bake render` and review them")
    if found.stale:
        raise VentError(f"{out}: the artifacts are stale against the cluster file and state: run `vent-bake render` and review the change")
    if found.altered:
        raise VentError(f"{out}/{found.altered[0]}: changed since it was rendered and reviewed: run `vent-bake render`")
    return found.tree


def reveal(text: str, state: State, where: str) -> str:
    return secrets.reveal(text, state.secret, where)


def revealed(tree: dict[str, bytes], cluster: Cluster, state: State, host: str) -> str:
    """A node's bootable userdata from a reviewed tree: every marker checked against the state
    and filled in, and none naming a secret the node's role may not hold."""
    from vent_bake import credentials  # the render's machinery: not for a render with nothing to do

    where = f"nodes/{host}/userdata"
    try:
        text = tree[where].decode()
    except KeyError:
        raise VentError(f"{where}: no userdata for node {host!r}; run `vent-bake render` first") from None
    allowed = credentials.secrets(cluster, cluster.node(host))
    for m in secrets.markers(text):
        if m["name"] not in allowed:
            raise VentError(f"{where}: carries {m['name']}, which a {cluster.role(cluster.node(host))} must not hold;"
                            " nothing was revealed. Render again and review who changed the artifacts")
    return reveal(text, state, where)


def revealed_size(reviewed_text: str, state: State, host: str) -> int:
    return len(reveal(reviewed_text, state, f"nodes/{host}/userdata").encode())


# --- a warm render reads nothing it need not --------------------------------------------------

def unchanged_sizes(out: Path, inputs: str, cluster: Cluster, state: State) -> dict[str, int] | None:
    """Each node's userdata size, if the artifacts are exactly what these inputs render; else None.

    Like git's index: when every file and directory has the stat it had when last known good,
    nothing was touched (nor added: a directory's mtime would have moved); otherwise every file
    is checked against its digest in the manifest.
    """
    cached = _cache(state, cluster)
    if cached and cached["inputs"] == inputs:
        paths = cached["paths"].split("\n")
        now, recent = fsutil.restamp(out, paths, os.stat(state.root / ARTIFACTS_CACHE).st_mtime_ns)
        if now == cached["stamp"] and not _changed(out, cached, paths, recent):
            if recent:  # checked by content once; written again, the cache vouches for them next time
                _keep(cached, state)
            return cached["sizes"]
    if manifest.inputs_of(out / manifest.NAME) != inputs:
        return None  # something to render: no need to read the old tree
    records = _records(out)  # before reading: a file edited after it was read must not stamp as read
    try:
        tree = read(out)
    except VentError:
        return None  # something there is not rendered: render it away
    found = examine(tree, inputs)
    if not found.intact:
        return None
    sizes = {n.name: revealed_size(found.tree[f"nodes/{n.name}/userdata"].decode(), state, n.name) for n in cluster.nodes}
    remember(state, inputs, sizes, records, tree[manifest.NAME])
    return sizes


def _cache(state: State, cluster: Cluster) -> dict | None:
    """The cache as last written, or None if it is absent or damaged (it is only a shortcut)."""
    try:
        cached = json.loads(state.get(ARTIFACTS_CACHE) or "null")
    except (ValueError, RecursionError):
        return None
    if not isinstance(cached, dict) or not all(isinstance(cached.get(k), str) for k in ("inputs", "paths", "stamp", "manifest")):
        return None
    sizes = cached.get("sizes")
    if not isinstance(sizes, dict) or sizes.keys() != {n.name for n in cluster.nodes} \
            or not all(type(v) is int for v in sizes.values()):
        return None
    return cached


def _changed(out: Path, cached: dict, paths: list[str], recent: list[str]) -> bool:
    """Whether any of the recent paths, whose stat cannot vouch for them, was changed: a file's
    content is checked against the manifest (the manifest against the digest the cache keeps
    of it), a directory's entries against the paths."""
    if not recent:
        return False
    try:
        listing = (out / manifest.NAME).read_bytes()
        if manifest.NAME in recent and hashlib.sha256(listing).hexdigest() != cached["manifest"]:
            return True
        listed = manifest.parse(listing)
        digests = listed[1] if listed else {}
        files = [p for p in recent if not p.endswith("/") and p != manifest.NAME]
        if any(digests.get(p) != hashlib.sha256((out / p).read_bytes()).hexdigest() for p in files):
            return True
        entries: dict[str, set[str]] = {}
        for p in paths:
            parent, _, name = p.rstrip("/").rpartition("/")
            entries.setdefault(f"{parent}/", set()).add(name)
        return any(set(os.listdir(out / p)) != entries.get(p, set()) for p in recent if p.endswith("/"))
    except OSError:
        return True


def _records(out: Path) -> dict[str, tuple[int, int, int, int]]:
    return {p: r for p, r in fsutil.stat_tree(out).items() if p.split("/", 1)[0] in ENTRIES}


def remember(state: State, inputs: str, sizes: dict[str, int], records: dict[str, tuple[int, int, int, int]], listing: bytes) -> None:
    """Keep in the cache the artifacts' stamp, from their stat records (as `write` returns them),
    and the digest of their MANIFEST (`listing`), which cannot list its own."""
    _keep({"inputs": inputs, "sizes": sizes, "paths": "\n".join(records), "stamp": fsutil.stamp(records.values()),
           "manifest": hashlib.sha256(listing).hexdigest()}, state)


def _keep(record: dict, state: State) -> None:
    state.write_now(ARTIFACTS_CACHE, json.dumps(record, separators=(",", ":")).encode())
