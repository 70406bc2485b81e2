"""Shared fixtures: an example cluster rendered once, and fresh copies for tests that change it."""

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from tools import serve
from vent_bake import example
from vent_bake.cli import main
from vent_bake.state import State

SHARED = Path(__file__).resolve().parents[2] / "shared"


def cli(*args: str):
    """Run vent-bake in-process; returns click's Result (exit_code, stdout, stderr)."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def render(cluster_file: Path):
    result = cli("render", "-c", cluster_file)
    assert result.exit_code == 0, result.output
    return result


def write_cluster(directory: Path, controllers=3, workers=2, **replace) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    text = example.cluster_yaml("vent", controllers, workers)
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    path = directory / "cluster.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="session")
def rendered(tmp_path_factory) -> Path:
    """3 controllers and 2 workers, rendered once; tests must not change it."""
    cluster = write_cluster(tmp_path_factory.mktemp("example"))
    render(cluster)
    return cluster.parent


@pytest.fixture
def fresh(rendered, tmp_path) -> Path:
    """A private copy of the rendered example, state included."""
    target = tmp_path / "cluster"
    shutil.copytree(rendered, target, symlinks=True)
    return target


@pytest.fixture(scope="session")
def state(rendered) -> State:
    return State.load(rendered / ".vent")


@pytest.fixture
def mirror(tmp_path):
    """An HTTP server serving tmp_path/www: (that directory, its base URL)."""
    www = tmp_path / "www"
    www.mkdir()
    for url in serve(www):
        yield www, url


@pytest.fixture(scope="session")
def published(rendered) -> str:
    """The rendered example's artifacts/, published over HTTP as an operator would: its URL."""
    yield from serve(rendered / "artifacts")
