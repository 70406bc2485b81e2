"""One `#cloud-config` per node: write what the node cannot fetch, then fetch the rest and boot.

The budgets (16 KiB, 8 KiB for a worker) hold a node's keys and little else, so the userdata
carries only the files marked `carried` (its secrets, and what it needs before it can fetch).
Every other file goes on the node's fetch list, `nodes/<host>/fetch.list` ("sha256 mode path"
per line), published with the artifacts; the userdata pins the list's sha256, and the fetch
script checks every file against the list before it installs any.

Each carried file becomes one write_files entry, in the form that keeps the userdata small and
the review readable:
- a file that is a secret as a whole (a key) is `encoding: b64` with the secret's marker, which
  reveals to the base64 of the key: the marker stays visible and nothing secret is compressed;
- a file with a secret inside (the encryption config) is plain text, marker in place;
- any other file is `gz+b64` (gzip with a fixed mtime, so the bytes never change) when that is
  smaller, and plain text otherwise.
The artifacts tree holds every file, carried or fetched, as plain text beside the userdata.
"""

import base64
import gzip
import hashlib

from vent_bake import components, secrets, templates
from vent_bake.bundle import File
from vent_bake.config import Node
from vent_bake.context import Context
from vent_bake.errors import VentError

FETCH = f"{components.LIB}/fetch"

# Files this small rarely shrink under gzip+base64; not trying saves most of the work.
SMALLEST_WORTH_PACKING = 512


def _listed(path: str, f: File) -> str:
    if secrets.markers(f.content):
        raise VentError(f"{path} holds a secret but is not carried by the userdata: secrets never go on a fetch list")
    return f"{hashlib.sha256(f.content.encode()).hexdigest()} 0{f.mode:o} {path}\n"


def _entry(path: str, f: File) -> str:
    return templates.render("cloudinit/write-file.yaml", **_form(path, f.content, f.mode))


def _form(path: str, content: str, mode: int) -> dict:
    entry = {"path": path, "permissions": f"0{mode:o}", "encoding": None, "block": False}
    if secrets.MARKER.fullmatch(content):
        return entry | {"encoding": "b64", "content": content.replace(":raw:", ":b64:", 1)}
    if len(content) >= SMALLEST_WORTH_PACKING and not secrets.markers(content):
        packed = base64.b64encode(gzip.compress(content.encode(), compresslevel=9, mtime=0)).decode()
        if len(packed) < len(content):
            return entry | {"encoding": "gz+b64", "content": packed}
    # A literal block keeps the text readable; it can hold any text that ends in exactly one
    # newline and does not start with a space. Anything else is quoted.
    block = content.endswith("\n") and not content.endswith("\n\n") and not content[:1].isspace()
    return entry | {"block": block, "content": content}


def render(ctx: Context, node: Node, files: dict[str, File]) -> tuple[str, str]:
    """(the node's userdata, its fetch list). Most files are the same on every node of a role,
    so each line and entry is made once per render."""
    fetch_list = "".join(ctx.memo(("listed", path, f), lambda: _listed(path, f)) for path, f in sorted(files.items()) if not f.carried)
    entries = [ctx.memo(("entry", path, f), lambda: _entry(path, f)) for path, f in sorted(files.items()) if f.carried]
    userdata = templates.render(
        "cloudinit/userdata.yaml",
        entries=entries,
        fetch=FETCH,
        base_url=f"{ctx.cluster.boot.artifacts_base}nodes/{node.name}/",
        list_sha256=hashlib.sha256(fetch_list.encode()).hexdigest(),
        **ctx.node_values(node),
    )
    return userdata, fetch_list
