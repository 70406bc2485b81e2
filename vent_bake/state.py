"""The state directory: every key, secret and certificate, made once and kept.

Certificate signatures are randomized, so a certificate is issued once and then kept like a
key; re-rendering reads them back and changes nothing. The directory is mode 0700 and every
file 0600. It is rewritten as a whole, atomically (fsutil.replace_tree), only when something
changed, and it carries an index (`index.sha256`, in `sha256sum -c` form) of every file
vent-bake wrote: a file missing, changed or added behind vent-bake's back stops every command
with one line naming it, rather than being used, or silently replaced.

Every command holds the state's lock while it works (`locked`): one that writes holds it
alone, and a second one waits, saying who holds it.
"""

import base64
import contextlib
import fcntl
import hashlib
import ipaddress
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import yaml

from vent_bake import fsutil
from vent_bake.errors import StateError

ENCRYPTION_KEY = "secrets/encryption.key"
ADDRESSES = "addresses.yaml"  # reserved addresses, written by `vent-bake reserve`
ADMIN_KUBECONFIG = "admin.kubeconfig"  # the operator's credential, revealed
ARTIFACTS_CACHE = "artifacts.cache"  # the artifacts' stat stamp when last known good (artifacts.py)
INDEX = "index.sha256"  # sha256 of every file below but the derived ones
DERIVED = frozenset({ADMIN_KUBECONFIG, ARTIFACTS_CACHE})  # made by a render, not an input to it
NOT_STATE = frozenset({INDEX, fsutil.IGNORE_ALL})


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class State:
    def __init__(self, root: Path, files: dict[str, bytes] | None = None):
        self.root = root
        self.files = dict(files or {})
        self.changed: set[str] = set()
        self.notes: list[str] = []  # what loading found and mended (modes), for the operator

    @classmethod
    def load(cls, root: Path, replacing: Iterable[str] = ()) -> "State":
        """The state as vent-bake left it; StateError naming the first file that is not.

        `replacing`: files the caller is about to replace on the operator's explicit word
        (`render --reissue`): they are not checked, and are left out."""
        if root.exists() and not root.is_dir():
            raise StateError(f"{root}: the state path is not a directory; pass --state DIR")
        try:
            files = fsutil.read_tree(root)
        except OSError as exc:
            raise StateError(f"{root}: cannot read the state directory ({exc.strerror})") from None
        state = cls(root)
        state.notes = _mend_modes(root)
        index_text = files.pop(INDEX, None)
        files.pop(fsutil.IGNORE_ALL, None)
        files = {n: d for n, d in files.items() if not fsutil.is_temp(n)}  # a killed write's; a writer clears them
        skip = set(replacing)
        inputs = {n: d for n, d in files.items() if n not in DERIVED}
        if index_text is None:
            if inputs:  # written by a vent-bake that kept no index: check what it holds, once
                _audit(root, inputs, inputs.keys() - skip)
                state.changed.add(INDEX)
        else:
            _check_index(root, _parse_index(root, index_text), inputs, skip)
        state.files = {n: d for n, d in files.items() if n not in skip}
        state.changed |= skip & files.keys()
        return state

    @property
    def exists(self) -> bool:
        """Does the state hold anything yet (a first render makes it)?"""
        return any(n not in DERIVED for n in self.files)

    def get(self, name: str) -> bytes | None:
        return self.files.get(name)

    def secret(self, name: str) -> bytes:
        """A secret the render refers to; its absence means the PKI step did not run."""
        try:
            return self.files[name]
        except KeyError:
            raise StateError(f"{self.root}/{name}: missing; run `vent-bake render` first") from None

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
        return _addresses(self.root / ADDRESSES, data) if data else {}

    def write_now(self, name: str, data: bytes) -> None:
        """Write one derived file of an existing state directory at once (whole, or not at all),
        without rewriting the rest."""
        assert name in DERIVED, name
        try:
            fsutil.write_file(self.root / name, data)
        except OSError as exc:
            raise StateError(f"{self.root}: cannot write {name} ({exc.strerror})") from None
        self.files[name] = data

    def save(self) -> None:
        if not self.changed:
            return
        inputs = {n: d for n, d in self.files.items() if n not in DERIVED}
        index = "".join(f"{_digest(inputs[n])}  {n}\n" for n in sorted(inputs)).encode()
        try:
            fsutil.replace_tree(self.root, {**self.files, INDEX: index}, dir_mode=0o700, file_mode=lambda _: 0o600, secret=True)
        except OSError as exc:
            raise StateError(f"{self.root}: cannot write the state directory ({exc}); it is unchanged") from None
        self.changed.clear()


# --- checks on loading --------------------------------------------------------------------------

def _mend_modes(root: Path) -> list[str]:
    """The directory 0700 and every file 0600, put right where they are not, and said so."""
    if not root.is_dir():
        return []
    notes = []
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        want = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
        if stat.S_IMODE(st.st_mode) != want and not stat.S_ISLNK(st.st_mode):
            os.chmod(path, want)
            notes.append(f"{path}: was mode {stat.S_IMODE(st.st_mode):04o}, others could read secrets; set to {want:04o}")
    return notes


def _parse_index(root: Path, text: bytes) -> dict[str, str]:
    out = {}
    for line in text.decode(errors="replace").splitlines():
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64:
            raise StateError(f"{root / INDEX}: damaged; restore the state directory from a backup")
        out[name] = digest
    return out


def _check_index(root: Path, index: dict[str, str], files: dict[str, bytes], skip: set[str]) -> None:
    for name, digest in sorted(index.items()):
        if name in skip:
            continue
        if name not in files:
            raise StateError(f"{root / name}: missing from the state; restore it from a backup{_remedy(name)}")
        if _digest(files[name]) != digest:
            problem = _problems(files, [name]).get(name, "its content is not what vent-bake wrote")
            raise StateError(f"{root / name}: changed since vent-bake wrote it ({problem}); restore it from a backup{_remedy(name)}")
    for name in sorted(files.keys() - index.keys() - skip):
        raise StateError(f"{root / name}: not a file vent-bake wrote here; move it out of the state directory")


def _audit(root: Path, files: dict[str, bytes], names: Iterable[str]) -> None:
    for name, problem in sorted(_problems(files, names).items()):
        raise StateError(f"{root / name}: {problem}; restore it from a backup{_remedy(name)}")


def _remedy(name: str) -> str:
    """How to replace a damaged file on purpose, where that is possible."""
    cert = certificate_name(name)
    if cert:
        return f", or replace it and what depends on it with `vent-bake render --reissue {cert}`"
    if name == ENCRYPTION_KEY:
        return " (Secrets stored in etcd are encrypted with it: a new key cannot read them)"
    if name == ADDRESSES:
        return ", or run `vent-bake reserve` again"
    return ""


def certificate_name(state_path: str) -> str | None:
    """The certificate (or key) a state file belongs to: pki/nodes/w-0.key -> nodes/w-0."""
    if state_path.startswith("pki/") and state_path.endswith((".key", ".crt")):
        return state_path[len("pki/"):-len(".key")]
    return None


def _problems(files: dict[str, bytes], names: Iterable[str]) -> dict[str, str]:
    """What is wrong with each named file of the state, judged by what it is. (cryptography is
    loaded here, not with the module: a state that matches its index needs no judging.)"""
    from vent_bake import pki

    out = {}
    for name in names:
        data = files[name]
        if name == ENCRYPTION_KEY:
            try:
                ok = len(base64.b64decode(data, validate=True)) == 32
            except ValueError:
                ok = False
            if not ok:
                out[name] = "not 32 bytes of base64"
        elif name == ADDRESSES and _parse_addresses(data) is None:
            out[name] = NOT_ADDRESSES
    out |= pki.audit(files, [n for n in names if n.startswith("pki/")])
    return out


NOT_ADDRESSES = "not a map of node names to IPv4 addresses"


def _parse_addresses(data: bytes) -> dict[str, str] | None:
    try:
        found = yaml.safe_load(data)
        if isinstance(found, dict) and all(isinstance(k, str) and ipaddress.IPv4Address(v) for k, v in found.items()):
            return found
    except (yaml.YAMLError, ValueError, TypeError):
        pass
    return None


def _addresses(path: Path, data: bytes) -> dict[str, str]:
    found = _parse_addresses(data)
    if found is None:
        raise StateError(f"{path}: {NOT_ADDRESSES}; run `vent-bake reserve` again")
    return found


# --- the lock -------------------------------------------------------------------------------------

@contextlib.contextmanager
def locked(root: Path, exclusive: bool, say: Callable[[str], None]) -> Iterator[None]:
    """Hold the state's lock: alone to write it, shared to read it. The lock is on the
    directory that holds the state (the state itself is replaced as a whole)."""
    parent = root.parent
    parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for {root}: {_holder(fd)} holds its lock")
            fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)  # releases the lock


def _holder(fd: int) -> str:
    """Who holds the lock on fd's inode, from /proc/locks, as an operator can look it up."""
    st = os.fstat(fd)
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        fields = line.split()
        if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == inode and fields[4].isdigit():
            pid = fields[4]
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                command = ""
            return f"process {pid}" + (f" ({command[:80]})" if command else "")
    return "another vent-bake"
