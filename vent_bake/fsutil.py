"""Writing a whole directory tree at once: build it beside the old one, then swap.

A failure at any point before the swap leaves the old tree exactly as it was.
"""

import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path


def read_tree(root: Path) -> dict[str, bytes]:
    """Every regular file below root, by its path relative to root ('/'-separated)."""
    out: dict[str, bytes] = {}

    def walk(directory: str, prefix: str) -> None:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    walk(entry.path, f"{prefix}{entry.name}/")
                elif entry.is_file(follow_symlinks=False):
                    with open(entry.path, "rb") as fh:
                        out[prefix + entry.name] = fh.read()

    if os.path.isdir(root):
        walk(os.fspath(root), "")
    return out


def replace_tree(
    target: Path,
    files: Mapping[str, bytes],
    *,
    dir_mode: int = 0o755,
    file_mode: Callable[[str], int] = lambda _: 0o644,
    carry_over: Iterable[str] = (),
) -> None:
    """Make `target` hold exactly `files`, plus the entries named in carry_over from the old tree."""
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = parent / f".{target.name}.new-{os.getpid()}"
    old = parent / f".{target.name}.old-{os.getpid()}"
    try:
        dirs = {Path("."), *(Path(rel).parent for rel in files)}
        for d in sorted({p for d in dirs for p in (d, *d.parents)}, key=lambda p: len(p.parts)):
            (staging / d).mkdir()
            os.chmod(staging / d, dir_mode)  # mkdir's mode is filtered by the umask
        for rel, data in files.items():
            fd = os.open(staging / rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL, file_mode(rel))
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        for entry in carry_over:
            src, dst = target / entry, staging / entry
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
        if staging.exists():
            shutil.rmtree(staging)
