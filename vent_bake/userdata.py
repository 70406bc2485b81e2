"""One `#cloud-config` per node: write every file of the node, then run the boot script.

Each file becomes one write_files entry, in the form that keeps the userdata small and the
review readable:
- a file that is a secret as a whole (a key) is `encoding: b64` with the secret's marker, which
  reveals to the base64 of the key: the marker stays visible and nothing secret is compressed;
- a file with a secret inside (the encryption config) is plain text, marker in place;
- any other file is `gz+b64` (gzip with a fixed mtime, so the bytes never change) when that is
  smaller, and plain text otherwise.
The artifacts tree holds every one of these files as plain text beside the userdata.
"""

import base64
import gzip

from vent_bake import secrets, templates
from vent_bake.bundle import NodeBundle

BUDGET = {"controller": 16 * 1024, "worker": 8 * 1024}  # bytes of revealed userdata


# Files this small rarely shrink under gzip+base64; not trying saves most of the work.
SMALLEST_WORTH_PACKING = 512


def _entry(ctx, path: str, content: str, mode: int) -> str:
    """One write_files entry, rendered once for every node that has the same file."""
    key = (path, mode, content)
    if key not in ctx.entries:
        ctx.entries[key] = templates.render("cloudinit/write-file.yaml", **_form(ctx, path, content, mode))
    return ctx.entries[key]


def _form(ctx, path: str, content: str, mode: int) -> dict:
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


def render(ctx, nb: NodeBundle) -> str:
    entries = [_entry(ctx, path, f.content, f.mode) for path, f in sorted(nb.files.items())]
    return templates.render("cloudinit/userdata.yaml", entries=entries, **ctx.node_values(nb.node))
