"""The binaries lock: pinned URLs and digests, per Kubernetes version.

The packaged lock (binaries.lock.yaml beside this file) holds only digests copied from
published checksum files. A project can add versions, or pin per-binary digests, with a
`binaries.lock.yaml` beside its cluster file, written by `vent-bake lock` (run online):
its versions take the place of the packaged ones of the same name.
"""

import datetime
import re
from collections.abc import Callable
from functools import cache
from importlib import resources
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import yaml

from vent_bake import fsutil
from vent_bake.errors import ConfigError, VentError

ARCHES = ("amd64", "arm64")
PROJECT_LOCK = "binaries.lock.yaml"
KUBERNETES_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy", "kubelet", "kubectl")
# libyaml's parser where PyYAML has it: the packaged lock parses ten times faster (every render reads it).
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
HEX = {"sha256": re.compile(r"[0-9a-f]{64}"), "sha512": re.compile(r"[0-9a-f]{128}")}


class LockError(VentError):
    """A checksum file could not be had, or contradicts a pinned digest."""


END_OF_LIFE = "end-of-life"
WARN_BEFORE_END = datetime.timedelta(days=60)


@cache
def _file() -> dict:
    return yaml.load(resources.files(__package__).joinpath("binaries.lock.yaml").read_text(), Loader=YAML_LOADER)


def packaged() -> dict:
    """Kubernetes version -> component name -> entry, as the packaged lock holds it."""
    return {k: v for k, v in _file().items() if k != END_OF_LIFE}


def end_of_life(version: str) -> datetime.date | None:
    """The last day a Kubernetes version's minor is supported, if the lock knows it."""
    m = re.match(r"v?(\d+)\.(\d+)\.", version)
    day = _file()[END_OF_LIFE].get(f"{m[1]}.{m[2]}") if m else None
    return datetime.date.fromisoformat(day) if day else None


def support_warning(version: str, today: datetime.date) -> str | None:
    """One line when a version is past its end of life, or within 60 days of it."""
    end = end_of_life(version)
    if end is None:
        return f"{version}: the binaries lock knows no end-of-life date for it; check kubernetes.io/releases"
    supported = ", ".join(v for v in sorted(packaged(), reverse=True) if (end_of_life(v) or today) > today + WARN_BEFORE_END)
    if end < today:
        return f"{version} reached its end of life on {end}: it gets no more fixes; move to a supported release ({supported})"
    if end <= today + WARN_BEFORE_END:
        return f"{version} reaches its end of life on {end}, in {(end - today).days} days; plan the move to a newer release ({supported})"
    return None


def merged(project: dict | None) -> dict:
    return {**packaged(), **(project or {})}


def newest(lock: dict) -> str:
    return max(lock, key=lambda v: tuple(int(p) for p in re.findall(r"\d+", v)))


def provides(name: str, entry: dict) -> set[str]:
    """The binaries a component installs: an archive's listed members, or the binary itself."""
    return set(entry["extract"]) if "extract" in entry else {name}


def pinned(entry: dict, arch: str) -> tuple[str, str]:
    """(algorithm, digest) of a component for an arch."""
    found = entry[arch]
    algorithm = "sha512" if "sha512" in found else "sha256"
    return algorithm, found[algorithm]


# --- `vent-bake lock`: pinning a version from the published checksum files ------------------------

def _algorithm(sums_url: str) -> str:
    return "sha512" if "sha512" in sums_url.lower() else "sha256"


def digest_in(text: str, filename: str, algorithm: str, where: str) -> str:
    """The digest for filename in a checksum file: a bare digest, or `<digest>  [*]<name>` lines."""
    bare = []
    for line in text.splitlines():
        parts = line.split()
        if not parts or not HEX[algorithm].fullmatch(parts[0].lower()):
            continue
        if len(parts) == 1:
            bare.append(parts[0].lower())
        elif PurePosixPath(parts[-1].lstrip("*")).name == filename:
            return parts[0].lower()
    if len(bare) == 1:
        return bare[0]
    raise LockError(f"{where}: no {algorithm} digest for {filename}")


def refresh(version: str, base: dict, fetch: Callable[[str], str]) -> tuple[dict, list[str]]:
    """A lock entry for Kubernetes `version`: its binaries pinned one by one from dl.k8s.io's
    .sha256 files, the other components of `base` (the newest known version) checked against
    their published checksum files. Returns (entry, notes)."""
    entry: dict = {}
    notes: list[str] = []
    for binary in KUBERNETES_BINARIES:
        component = {"version": version}
        for arch in ARCHES:
            url = f"https://dl.k8s.io/{version}/bin/linux/{arch}/{binary}"
            sums = f"{url}.sha256"
            component[arch] = {"url": url, "sha256": digest_in(fetch(sums), binary, "sha256", sums), "sums": sums}
        entry[binary] = component
    for name, component in base.items():
        if name == "images" or name.startswith("kubernetes-") or name in KUBERNETES_BINARIES:
            continue
        component = {k: (dict(v) if isinstance(v, dict) else v) for k, v in component.items()}
        for arch in ARCHES:
            found = component[arch]
            if "sums" not in found:
                notes.append(f"{name} ({arch}): no published checksum file; its pin is carried over unchecked")
                continue
            algorithm, digest = pinned(component, arch)
            fetched = digest_in(fetch(found["sums"]), PurePosixPath(urlsplit(found["url"]).path).name, _algorithm(found["sums"]), found["sums"])
            if _algorithm(found["sums"]) == algorithm and fetched != digest:
                raise LockError(
                    f"{found['sums']} says {fetched} for {found['url']}, but the lock pins {digest}:"
                    " the file was replaced or the checksum file is not genuine; nothing was written"
                )
            found[_algorithm(found["sums"])] = fetched
            found["source"] = found["sums"]
        entry[name] = component
    entry["images"] = dict(base["images"])
    return entry, notes


def serialise(project: dict) -> str:
    header = (
        "# Project binaries lock, written by `vent-bake lock` from the published checksum files.\n"
        "# Its versions take the place of vent-bake's packaged ones of the same name. Review it like code.\n"
    )
    return header + yaml.safe_dump(project, sort_keys=False, width=200)


# --- the `lock` command: the project's lock beside the cluster file ---------------------------------

TIMEOUT = (10, 60)


def read_project(path: Path) -> dict | None:
    """The project's lock beside the cluster file, if there is one."""
    try:
        data = yaml.load(path.read_text(), Loader=YAML_LOADER)
    except FileNotFoundError:
        return None
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(str(path), "", f"cannot read the project's binaries lock ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError(str(path), "", "must map Kubernetes versions to components; `vent-bake lock` writes it")
    return data


def _fetcher(source: str | None):
    import requests  # the one command that reads the internet; nothing else pays for it

    from vent_bake.binaries import mirrored

    session = requests.Session()

    def fetch(url: str) -> str:
        where = mirrored(url, source)
        try:
            resp = session.get(where, timeout=TIMEOUT)
        except requests.RequestException as exc:
            raise LockError(f"{where}: cannot fetch the checksum file ({exc.__class__.__name__})") from None
        if resp.status_code != 200:
            raise LockError(f"{where}: {resp.status_code} {resp.reason}; nothing was written")
        return resp.text

    return fetch


def _wanted_version(cluster_file: Path) -> str:
    """The cluster file's Kubernetes version, read without validating it: the version may be
    one that no lock knows yet."""
    from vent_bake import config

    try:
        data = yaml.safe_load(config.read(cluster_file)) or {}
        return str(data["versions"]["kubernetes"])
    except (yaml.YAMLError, TypeError, KeyError):
        raise ConfigError(str(cluster_file), "versions.kubernetes", "not set; pass --kubernetes VERSION") from None


def pin(cluster_file: Path, version: str | None, source: str | None) -> tuple[tuple[str, Path], list[str]]:
    version = version or _wanted_version(cluster_file)
    path = cluster_file.parent / PROJECT_LOCK
    project = read_project(path) or {}
    known = merged(project)
    base = known[version] if version in known else known[newest(known)]
    entry, notes = refresh(version, base, _fetcher(source))
    project[version] = entry
    fsutil.write_file(path, serialise(project).encode(), 0o644)
    return (version, path), notes
