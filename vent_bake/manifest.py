"""artifacts/MANIFEST: what the artifacts were rendered from, and the digest of every file.

The first line fingerprints the inputs (the cluster file, the binaries lock in force, the
state, and vent-bake's own code and templates); then one `<sha256>  <path>` line per file. A render whose inputs match
the manifest has nothing to do once the files still match their digests; `launch` and
`verify` use the same two checks to refuse stale or altered artifacts.
"""

import hashlib
import json
from functools import cache
from pathlib import Path

from vent_bake import templates
from vent_bake.state import DERIVED, State

NAME = "MANIFEST"
HEADER = "vent-bake artifacts; inputs sha256:"


@cache
def code_digest() -> str:
    """vent-bake's own sources, lock and templates: a new version may render differently."""
    h = hashlib.sha256()
    package = Path(__file__).parent
    for path in sorted(package.glob("*.py")) + [package / "binaries.lock.yaml"]:
        h.update(f"vent_bake/{path.name}\0".encode() + path.read_bytes() + b"\0")
    for name, text in sorted(templates.sources().items()):
        h.update(f"{name}\0".encode() + text.encode() + b"\0")
    return h.hexdigest()


def inputs_digest(cluster_text: bytes, state: State, cluster) -> str:
    h = hashlib.sha256(code_digest().encode() + b"\0" + hashlib.sha256(cluster_text).digest())
    # the lock entry in force, from the packaged lock or the project's
    h.update(json.dumps(cluster.lock[cluster.versions.kubernetes], sort_keys=True).encode())
    for name in sorted(state.files):
        if name not in DERIVED:
            h.update(f"{name}\0".encode() + hashlib.sha256(state.files[name]).digest())
    return h.hexdigest()


def serialise(inputs: str, tree: dict[str, bytes]) -> bytes:
    lines = [f"{HEADER}{inputs}"] + [f"{hashlib.sha256(tree[p]).hexdigest()}  {p}" for p in sorted(tree)]
    return ("\n".join(lines) + "\n").encode()


def inputs_of(path: Path) -> str | None:
    """The inputs digest on a manifest's first line, without reading the rest."""
    try:
        with open(path, "rb") as fh:
            first = fh.readline().decode(errors="replace").rstrip("\n")
    except OSError:
        return None
    return first.removeprefix(HEADER) if first.startswith(HEADER) else None


def parse(text: bytes) -> tuple[str, dict[str, str]] | None:
    """(inputs digest, path -> sha256), or None for a missing or foreign manifest."""
    lines = text.decode(errors="replace").splitlines()
    if not lines or not lines[0].startswith(HEADER):
        return None
    files = {}
    for line in lines[1:]:
        digest, _, path = line.partition("  ")
        files[path] = digest
    return lines[0].removeprefix(HEADER), files


def altered(files: dict[str, str], tree: dict[str, bytes]) -> list[str]:
    """Paths whose content on disk is not what the manifest lists (missing, changed, or extra)."""
    out = [p for p, d in files.items() if p not in tree or hashlib.sha256(tree[p]).hexdigest() != d]
    return sorted(out + [p for p in tree if p not in files])
