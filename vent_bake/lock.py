"""The binaries lock (binaries.lock.yaml beside this file): pinned URLs and digests."""

from functools import cache
from importlib import resources

import yaml

ARCHES = ("amd64", "arm64")


@cache
def load() -> dict:
    """Kubernetes version -> component name -> entry, as the lock file holds it."""
    return yaml.safe_load(resources.files(__package__).joinpath("binaries.lock.yaml").read_text())


def kubernetes_versions() -> list[str]:
    return sorted(load())


def components(kubernetes_version: str) -> dict:
    return load()[kubernetes_version]
