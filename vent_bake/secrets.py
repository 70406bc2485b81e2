"""Secret markers: how a reviewed file names a secret without holding it.

A marker names the secret (its path in the state directory), the encoding it stands for and
the secret's sha256, e.g. `vent-secret:pki/admin.key:b64:sha256:3f1a...`. It is a single
YAML-safe token, so it can sit wherever the secret's value would. `reveal` puts the real
values back and refuses any marker whose digest no longer matches the state: what was
reviewed is what boots.
"""

import base64
import hashlib
import re
from collections.abc import Callable

from vent_bake.errors import VentError

MARKER = re.compile(r"vent-secret:(?P<name>[A-Za-z0-9._/-]+):(?P<enc>raw|b64):sha256:(?P<digest>[0-9a-f]{64})")


class StaleMarker(VentError):
    """A reviewed file refers to a secret that the state no longer holds as reviewed."""


def fingerprint(value: bytes) -> str:
    return hashlib.sha256(value).hexdigest()


def marker(name: str, value: bytes, enc: str = "raw") -> str:
    """The marker for `value`: `raw` stands for the value itself, `b64` for its base64."""
    return f"vent-secret:{name}:{enc}:sha256:{fingerprint(value)}"


def encode(value: bytes, enc: str) -> str:
    return base64.b64encode(value).decode() if enc == "b64" else value.decode()


def reveal(text: str, lookup: Callable[[str], bytes], where: str = "") -> str:
    """Replace every marker in text by its secret, checking each fingerprint."""

    def sub(m: re.Match) -> str:
        value = lookup(m["name"])
        if fingerprint(value) != m["digest"]:
            raise StaleMarker(
                f"{where}: the marker for {m['name']} does not match the state's secret;"
                " re-render and review the change (`vent-bake render`)"
            )
        return encode(value, m["enc"])

    return MARKER.sub(sub, text)


def markers(text: str) -> list[re.Match]:
    return list(MARKER.finditer(text))
