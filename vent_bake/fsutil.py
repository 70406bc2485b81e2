"""Writing a whole directory tree at once: build it beside the old one, then swap.

A failure at any point before the swap leaves the old tree exactly as it was.
"""

import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path


def _walk(root: Path, visit: Callable[[str, os.DirEntry], None]) -> None:
    """Call visit(path relative to root, '/'-separated; its entry) for every regular file below
    root. A callback, not a generator: a chain of nested generators costs more per file than
    the system calls do."""

    def walk(directory: str, prefix: str) -> None:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    walk(entry.path, f"{prefix}{entry.name}/")
                elif entry.is_file(follow_symlinks=False):
                    visit(prefix + entry.name, entry)

    if os.path.isdir(root):
        walk(os.fspath(root), "")


def read_tree(root: Path) -> dict[str, bytes]:
    """Every regular file below root, by its relative path."""
    out: dict[str, bytes] = {}

    def read(rel: str, entry: os.DirEntry) -> None:
        with open(entry.path, "rb") as fh:
            out[rel] = fh.read()

    _walk(root, read)
    return out


def stat_tree(root: Path) -> dict[str, list[int]]:
    """Every regular file below root with its [size, mtime_ns]: what changed, without reading."""
    out: dict[str, list[int]] = {}

    def stat(rel: str, entry: os.DirEntry) -> None:
        st = entry.stat(follow_symlinks=False)
        out[rel] = [st.st_size, st.st_mtime_ns]

    _walk(root, stat)
    return out


def write_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace one file atomically: a temp file beside it, then a rename."""
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.rename(tmp, path)


def replace_tree(
    target: Path,
    files: Mapping[str, bytes],
    *,
    dir_mode: int = 0o755,
    file_mode: Callable[[str], int] = lambda _: 0o644,
    carry_over: Iterable[str] = (),
) -> None:
    """Make `target` hold exactly `files`, plus the entries named in carry_over from the old tree.

    Paths are plain strings and os calls here: a thousand-node tree is tens of thousands of
    files, and pathlib's objects cost more than the system calls.
    """
    parent = os.fspath(target.parent)
    os.makedirs(parent, exist_ok=True)
    staging = f"{parent}/.{target.name}.new-{os.getpid()}"
    old = f"{parent}/.{target.name}.old-{os.getpid()}"
    umask = os.umask(0)
    os.umask(umask)
    dirs: set[str] = set()
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
        for rel, data in files.items():
            fd = os.open(f"{staging}/{rel}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, file_mode(rel))
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
        for entry in carry_over:
            src, dst = target / entry, f"{staging}/{entry}"
            if src.is_dir() and not src.is_symlink():
                shutil.copytree(src, dst, symlinks=True)
            else:
                shutil.copy2(src, dst, follow_symlinks=False)
        if target.exists():
            os.rename(target, old)
            os.rename(staging, target)
            shutil.rmtree(old)
        else:
            os.rename(staging, target)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging)
