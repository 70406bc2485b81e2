"""The state directory: every key, secret and certificate, made once and kept.

Certificate signatures are randomized, so a certificate is issued once and then kept like a
key; re-rendering reads them back and changes nothing. The directory is mode 0700 and every
file 0600, and it is rewritten as a whole (see fsutil.replace_tree) only when something changed.
"""

import base64
import os
from pathlib import Path

import yaml

from vent_bake import fsutil
from vent_bake.errors import StateError

ENCRYPTION_KEY = "secrets/encryption.key"
ADDRESSES = "addresses.yaml"  # reserved addresses, written by `vent-bake reserve`
ADMIN_KUBECONFIG = "admin.kubeconfig"  # the operator's credential, revealed
ARTIFACTS_CACHE = "artifacts.cache"  # the artifacts' sizes and mtimes when last known good (bake.py)
DERIVED = frozenset({ADMIN_KUBECONFIG, ARTIFACTS_CACHE})  # made by a render, not an input to it


class State:
    def __init__(self, root: Path, files: dict[str, bytes] | None = None):
        self.root = root
        self.files = dict(files or {})
        self.changed: set[str] = set()

    @classmethod
    def load(cls, root: Path) -> "State":
        if root.exists() and not root.is_dir():
            raise StateError(f"{root}: the state path is not a directory; pass --state DIR")
        try:
            return cls(root, fsutil.read_tree(root))
        except OSError as exc:
            raise StateError(f"{root}: cannot read the state directory ({exc.strerror})") from None

    def get(self, name: str) -> bytes | None:
        return self.files.get(name)

    def secret(self, name: str) -> bytes:
        """A secret the render refers to; its absence means the PKI step did not run."""
        try:
            return self.files[name]
        except KeyError:
            raise StateError(f"{self.root}: {name} is missing; run `vent-bake render` to make it") from None

    def put(self, name: str, data: bytes) -> None:
        if self.files.get(name) != data:
            self.files[name] = data
            self.changed.add(name)

    def drop(self, name: str) -> None:
        if self.files.pop(name, None) is not None:
            self.changed.add(name)

    def ensure_encryption_key(self) -> bool:
        """The key that encrypts Secrets at rest: 32 random bytes, made once."""
        if self.get(ENCRYPTION_KEY):
            return False
        self.put(ENCRYPTION_KEY, base64.b64encode(os.urandom(32)))
        return True

    def reserved_addresses(self) -> dict[str, str]:
        data = self.get(ADDRESSES)
        return (yaml.safe_load(data) or {}) if data else {}

    def write_now(self, name: str, data: bytes) -> None:
        """Write one file of an existing state directory at once, without rewriting the rest."""
        try:
            fsutil.write_file(self.root / name, data)
        except OSError as exc:
            raise StateError(f"{self.root}: cannot write {name} ({exc.strerror})") from None
        self.files[name] = data

    def save(self) -> None:
        if not self.changed:
            return
        try:
            fsutil.replace_tree(self.root, self.files, dir_mode=0o700, file_mode=lambda _: 0o600)
        except OSError as exc:
            raise StateError(f"{self.root}: cannot write the state directory ({exc})") from None
        self.changed.clear()
