"""Files and whole directory trees written so that a reader, or the next run after a crash,
finds the old content or the new, whole, and never a mix.

A tree is built beside the old one (`.<name>.new-<pid>`), then the two are exchanged in one
system call (renameat2 RENAME_EXCHANGE) and the old one is removed. A run killed before the
exchange leaves a staging tree, and one killed after it the old tree, under that name: the
next run removes them (`clear_leftovers`) before it writes. A tree that holds secrets carries
a `.gitignore` from its first write, so that no copy of it is ever committed by accident.
"""

import array
import ctypes
import errno
import hashlib
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

_LIBC = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
IGNORE_ALL = ".gitignore"  # in a tree of secrets: "*", so git never picks up any copy of it


def _walk(root: Path, visit: Callable[[str, os.DirEntry], None], dirs: bool = False, strays: list[str] | None = None) -> None:
    """Call visit(path relative to root, '/'-separated; its entry) for every regular file below
    root, and with `dirs` for every directory too (its path ending in "/"). `strays` collects
    what a tree of files should not hold: symlinks, special files and empty directories. A
    callback, not a generator: a chain of nested generators costs more per file than the
    system calls do."""

    def walk(directory: str, prefix: str) -> None:
        empty = True
        with os.scandir(directory) as entries:
            for entry in entries:
                empty = False
                if entry.is_dir(follow_symlinks=False):
                    if dirs:
                        visit(f"{prefix}{entry.name}/", entry)
                    walk(entry.path, f"{prefix}{entry.name}/")
                elif entry.is_file(follow_symlinks=False):
                    visit(prefix + entry.name, entry)
                elif strays is not None:
                    strays.append(prefix + entry.name)
        if empty and prefix and strays is not None:
            strays.append(prefix)

    if os.path.isdir(root):
        walk(os.fspath(root), "")


def read_tree(root: Path, strays: list[str] | None = None) -> dict[str, bytes]:
    """Every regular file below root, by its relative path; what else is there goes to
    `strays`, if given (see _walk)."""
    out: dict[str, bytes] = {}

    def read(rel: str, entry: os.DirEntry) -> None:
        with open(entry.path, "rb") as fh:
            out[rel] = fh.read()

    _walk(root, read, strays=strays)
    return out


def _record(st: os.stat_result) -> tuple[int, int, int, int]:
    """What a stamp keeps of one file or directory: its type, size, mtime and ctime. A
    directory's mtime moves whenever an entry is added to it, removed or renamed, and any
    ctime whenever anything about it changes, even an mtime set back by hand."""
    return st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns


MISSING = (0, 0, 0, 0)


def stat_tree(root: Path) -> dict[str, tuple[int, int, int, int]]:
    """Every regular file and directory below root (a directory's path ends in "/"), with its
    stat record: what changed, without reading anything."""
    out: dict[str, tuple[int, int, int, int]] = {}

    def record(rel: str, entry: os.DirEntry) -> None:
        out[rel] = _record(entry.stat(follow_symlinks=False))

    _walk(root, record, dirs=True)
    return out


def stamp(records: Iterable[tuple[int, int, int, int]]) -> str:
    """One digest of many stat records, in order."""
    flat = array.array("q")
    for r in records:
        flat.extend(r)
    return hashlib.sha256(flat.tobytes()).hexdigest()


def restamp(root: Path, paths: Iterable[str], since: int) -> tuple[str, list[str]]:
    """The stamp of these paths below root as they are now, and those of them changed at or
    after `since` (a ctime in nanoseconds): a stamp taken in the same clock tick cannot vouch
    for them (git calls them "racily clean"). A stat per path and no directory listed: with
    every directory's mtime in the stamp, nothing can have been added unseen."""
    base, lstat = os.fspath(root), os.lstat
    flat, recent = array.array("q"), []
    for rel in paths:  # tens of thousands: every call saved here shows
        try:
            st = lstat(f"{base}/{rel.rstrip('/')}")
        except OSError:
            flat.extend(MISSING)
            continue
        flat.extend((st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        if st.st_ctime_ns >= since:
            recent.append(rel)
    return hashlib.sha256(flat.tobytes()).hexdigest(), recent


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """A file's digest, read in chunks (images and binaries run to gigabytes)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def _write_all(fd: int, data: bytes) -> None:
    """os.write may write less than asked (a full disk, a file size limit): go on or raise."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_file(path: Path, data: bytes, mode: int = 0o600, durable: bool = True) -> None:
    """Replace one file atomically: all of it into a temp file beside it, flushed to disk, then
    a rename. Interrupted, the old file stays as it was."""
    tmp = f"{path.parent}/.{path.name}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        try:
            _write_all(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _exchange(a: str, b: str) -> bool:
    """Swap two paths in one step; False where the filesystem cannot."""
    if _LIBC.renameat2(_AT_FDCWD, a.encode(), _AT_FDCWD, b.encode(), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), a)


def _syncfs(path: str) -> None:
    """Flush the filesystem holding path: one call, where fsync-ing every file would cost one
    disk flush each."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _LIBC.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)


def staging_paths(target: Path) -> tuple[str, str]:
    """Where a new tree for target is made, and where its old one goes: names clear_leftovers knows."""
    parent = os.fspath(target.parent)
    return f"{parent}/.{target.name}.new-{os.getpid()}", f"{parent}/.{target.name}.old-{os.getpid()}"


def swap_in(staging: str, target: str, old: str) -> None:
    """Put the tree at staging in target's place in one step (the old tree is then at staging,
    for the caller to remove). Where the filesystem cannot exchange: two renames, and
    clear_leftovers puts the old tree back if a run dies between them."""
    if not os.path.exists(target):
        os.rename(staging, target)
    elif not _exchange(staging, target):
        os.rename(target, old)
        os.rename(staging, target)
        shutil.rmtree(old)


def is_temp(name: str) -> bool:
    """A file write_file was writing when its run was killed."""
    return name.startswith(".") and ".tmp-" in name


def clear_leftovers(target: Path) -> list[str]:
    """Remove what a killed run left beside target (its staging or old trees) and in it (files
    half written); if target itself is gone because a run died between the two renames of the
    fallback swap, put its old tree back first. Call it holding the lock on target. Returns the
    paths removed, relative to target's parent."""
    parent = target.parent
    if not parent.is_dir():
        return []
    found = sorted(p for p in parent.iterdir()
                   if p.name.startswith((f".{target.name}.new-", f".{target.name}.old-", f".{target.name}.tmp-")))
    if target.is_dir():
        found += sorted(p for p in target.iterdir() if is_temp(p.name) and p.is_file())
    olds = [p for p in found if p.name.startswith(f".{target.name}.old-")]
    if not target.exists() and olds:
        os.rename(olds[-1], target)
        found.remove(olds[-1])
    for path in found:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return [str(p.relative_to(parent)) for p in found]


def replace_tree(
    target: Path,
    files: Mapping[str, bytes],
    *,
    dir_mode: int = 0o755,
    file_mode: Callable[[str], int] = lambda _: 0o644,
    carry_over: Iterable[str] = (),
    secret: bool = False,
) -> dict[str, tuple[int, int, int, int]]:
    """Make `target` hold exactly `files`, plus the entries named in carry_over from the old tree.
    Returns the stat records (as stat_tree makes them) of the files and directories written
    for `files`, taken as they were written: no walk of the new tree afterwards.

    A `secret` tree carries IGNORE_ALL from its first write and is flushed to disk before the
    swap (the keys of a cluster must survive a power cut); any other tree can be rendered again.
    Paths are plain strings and os calls here: a thousand-node tree is tens of thousands of
    files, and pathlib's objects cost more than the system calls.
    """
    parent = os.fspath(target.parent)
    os.makedirs(parent, exist_ok=True)
    staging, old = staging_paths(target)
    umask = os.umask(0)
    os.umask(umask)
    dirs: set[str] = set()
    written: dict[str, tuple[int, int, int, int]] = {}
    for rel in files:
        d = rel.rpartition("/")[0]
        while d and d not in dirs:
            dirs.add(d)
            d = d.rpartition("/")[0]
    try:
        for d in ["", *sorted(dirs)]:  # a parent sorts before its children
            path = f"{staging}/{d}" if d else staging
            os.mkdir(path, dir_mode)
            if dir_mode & umask:
                os.chmod(path, dir_mode)  # mkdir's mode is filtered by the umask
            if secret and not d:
                _put(f"{staging}/{IGNORE_ALL}", b"*\n", 0o600)
        for rel, data in files.items():
            written[rel] = _put(f"{staging}/{rel}", data, file_mode(rel))
        for d in sorted(dirs):  # complete now: every entry is in
            written[f"{d}/"] = _record(os.lstat(f"{staging}/{d}"))
        for entry in carry_over:
            src, dst = target / entry, f"{staging}/{entry}"
            if src.is_dir() and not src.is_symlink():
                shutil.copytree(src, dst, symlinks=True)
            else:
                shutil.copy2(src, dst, follow_symlinks=False)
        if secret:
            _syncfs(staging)
        swap_in(staging, os.fspath(target), old)
        return written
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging)  # the unfinished tree, or the old one after the exchange


def _put(path: str, data: bytes, mode: int) -> tuple[int, int, int, int]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        _write_all(fd, data)
        return _record(os.fstat(fd))
    finally:
        os.close(fd)
