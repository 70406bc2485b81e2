"""Where a command works: the cluster file, its state directory and its artifacts directory,
opened under the state's lock, and the render command's steps:

    cluster.yaml -> Cluster -> state (PKI and secrets made once) -> render -> artifacts/

The state is saved before the artifacts: if writing the artifacts fails, the old artifacts
stay and their manifest no longer matches the inputs, so `launch` refuses them until a
render succeeds. When the inputs match artifacts/MANIFEST and the files their digests,
there is nothing to render, and the render's machinery (certs, templates: cryptography and
jinja2) is not even loaded.
"""

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from vent_bake import artifacts, config, fsutil, manifest
from vent_bake.config import Cluster
from vent_bake.errors import VentError
from vent_bake.state import ADMIN_KUBECONFIG, State, locked


@dataclass(frozen=True)
class Paths:
    cluster: Path
    out: Path
    state: Path

    @classmethod
    def resolve(cls, cluster: Path, out: Path | None, state: Path | None) -> "Paths":
        """The three paths, absolute. A state or artifacts directory that is a symlink is
        written through: its target is replaced, and the link stays as it was."""
        cluster = cluster.absolute()
        resolved = [Path(os.path.realpath(p or cluster.parent / default)) for p, default in ((out, "artifacts"), (state, ".vent"))]
        paths = cls(cluster, *resolved)
        if paths.out == paths.state or paths.out in paths.state.parents or paths.state in paths.out.parents:
            raise VentError(f"--out {paths.out} and --state {paths.state} must not contain each other")
        return paths


@dataclass
class Workspace:
    paths: Paths
    text: bytes  # the cluster file as read
    cluster: Cluster
    state: State


@contextlib.contextmanager
def opened(paths: Paths, *, write: bool, say: Callable[[str], None], replacing: Iterable[str] = ()) -> Iterator[Workspace]:
    """The cluster file, validated before anything is touched, and the state, loaded under its
    lock (held alone by a command that writes). A writer first clears what a killed run left
    beside the state and the artifacts."""
    text = config.read(paths.cluster)
    cluster = config.load(paths.cluster, text)
    with locked(paths.state, exclusive=write, say=say):
        if write:
            for target in (paths.state, paths.out):
                for leftover in fsutil.clear_leftovers(target):
                    say(f"note: removed {target.parent / leftover}, left by an interrupted run")
        state = State.load(paths.state, replacing)
        for note in state.notes:
            say(f"warning: {note}")
        yield Workspace(paths, text, cluster, state)


# --- the render command ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Result:
    cluster: Cluster
    issued: list[str]
    dropped: list[str]
    artifacts_changed: bool
    warnings: list[str]
    sizes: dict[str, int]  # bytes of each node's revealed userdata


def reissued_files(cluster: Cluster, names: Iterable[str]) -> list[str]:
    """The state files that `render --reissue NAME...` replaces; an error for an unknown name."""
    from vent_bake import certs

    known = certs.names(cluster)
    out = []
    for name in names:
        if name not in known:
            raise VentError(f"--reissue {name}: no such certificate or key (known: ca, etcd-ca, service-accounts, admin,"
                            " nodes/<host>, etcd/<host>-server, ...)")
        out += certs.files_of(name)
    return out


def bake(ws: Workspace, reissue: Iterable[str] = ()) -> Result:
    cluster, state, paths = ws.cluster, ws.state, ws.paths
    warnings = config.warnings(cluster)
    if cluster.image.controllers or cluster.image.workers:
        from vent_bake.image import build as image_build

        image_build.check(paths.cluster, cluster)  # an image baked from another lock is refused
    reissue = list(reissue)
    if not reissue:
        sizes = artifacts.unchanged_sizes(paths.out, manifest.inputs_digest(ws.text, state, cluster), cluster, state)
        if sizes is not None:
            state.save()  # only if loading changed it (an index written for the first time)
            return Result(cluster, [], [], False, warnings, sizes)
    return _render(ws, reissue, warnings)


def _render(ws: Workspace, reissue: Iterable[str], warnings: list[str]) -> Result:
    from vent_bake import certs, render

    cluster, state, paths = ws.cluster, ws.state, ws.paths
    issued, dropped = certs.ensure(cluster, render.addresses(cluster, state), state, replacing=reissue)
    if state.ensure_encryption_key():
        issued.append("encryption key")
    bundle = render.render(cluster, state)
    state.put(ADMIN_KUBECONFIG, artifacts.reveal(bundle.shared["admin.kubeconfig"].content, state, "admin.kubeconfig").encode())
    sizes = {host: artifacts.revealed_size(nf.userdata, state, host) for host, nf in bundle.nodes.items()}
    tree = bundle.tree()
    inputs = manifest.inputs_digest(ws.text, state, cluster)  # the state as saved: the next render's inputs
    tree[manifest.NAME] = manifest.serialise(inputs, tree)
    state.save()
    written = artifacts.write(paths.out, tree)
    artifacts.remember(state, inputs, sizes, written, tree[manifest.NAME])
    return Result(cluster, issued, dropped, True, warnings, sizes)
