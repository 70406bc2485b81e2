"""`vent-bake lock`: pin a Kubernetes version into the project's binaries lock, from the
published checksum files. The one command of vent-bake that reads the internet."""

from pathlib import Path

import requests
import yaml

from vent_bake import config, fsutil, lock
from vent_bake.binaries import mirrored
from vent_bake.errors import ConfigError

TIMEOUT = (10, 60)


def _fetcher(source: str | None):
    session = requests.Session()

    def fetch(url: str) -> str:
        where = mirrored(url, source)
        try:
            resp = session.get(where, timeout=TIMEOUT)
        except requests.RequestException as exc:
            raise lock.LockError(f"{where}: cannot fetch the checksum file ({exc.__class__.__name__})") from None
        if resp.status_code != 200:
            raise lock.LockError(f"{where}: {resp.status_code} {resp.reason}; nothing was written")
        return resp.text

    return fetch


def _wanted_version(cluster_file: Path) -> str:
    """The cluster file's Kubernetes version, read without validating it: the version may be
    one that no lock knows yet."""
    try:
        data = yaml.safe_load(config.read(cluster_file)) or {}
        return str(data["versions"]["kubernetes"])
    except (yaml.YAMLError, TypeError, KeyError):
        raise ConfigError(str(cluster_file), "versions.kubernetes", "not set; pass --kubernetes VERSION") from None


def pin(cluster_file: Path, version: str | None, source: str | None) -> tuple[tuple[str, Path], list[str]]:
    version = version or _wanted_version(cluster_file)
    path = cluster_file.parent / lock.PROJECT_LOCK
    project = config.read_project_lock(path) or {}
    known = lock.merged(project)
    base = known[version] if version in known else known[lock.newest(known)]
    entry, notes = lock.refresh(version, base, _fetcher(source))
    project[version] = entry
    fsutil.write_file(path, lock.render(project).encode(), 0o644)
    return (version, path), notes
