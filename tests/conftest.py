"""Shared fixtures (an example cluster rendered once, fresh copies for tests that change it) and
the helpers the test modules share: the CLI in-process, and a node's files as its first boot
leaves them."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from tools import need, serve
from vent_bake import example, fsutil, secrets
from vent_bake.cli import main
from vent_bake.state import State

SHARED = Path(__file__).resolve().parents[2] / "shared"
SYSTEM_PYTHON = "/usr/bin/python3"  # the interpreter Debian's cloud-init is installed for


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


# --- a node's files, as its first boot leaves them -------------------------------------------------

def revealed_userdata(rendered: Path, node: str) -> str:
    result = cli("userdata", node, "-c", rendered / "cluster.yaml", "--reveal")
    assert result.exit_code == 0, result.stderr
    return result.stdout


def write_files(userdata: Path, root: Path) -> Path:
    """Run cloud-init's own write_files module on a userdata, every path moved under root."""
    need(SYSTEM_PYTHON, "cloud-init")
    code = (
        "import sys, yaml\n"
        "from cloudinit.config.cc_write_files import write_files\n"
        "cfg = yaml.safe_load(open(sys.argv[1]))\n"
        "write_files('write_files', [dict(f, path=sys.argv[2] + f['path']) for f in cfg['write_files']], 'root:root')\n"
    )
    subprocess.run([SYSTEM_PYTHON, "-c", code, str(userdata), str(root)], check=True)
    return root


def node_root(userdata: Path, root: Path, published: str) -> Path:
    """The node's files as its first boot leaves them for the boot script: cloud-init's
    write_files for what the userdata carries, then the node's own fetch script, run as its
    runcmd says, for the rest, from the artifacts published at `published`. The fetch script
    hands over to the boot script; here a stub stands in for it."""
    write_files(userdata, root)
    _, url, pin = yaml.safe_load(userdata.read_text())["runcmd"][0]
    work = root.parent / f"{root.name}-fetch"
    proc = run_fetch(root / "usr/local/lib/vent", work, root, f"{published}/{url[url.index('nodes/'):]}", pin)
    assert proc.returncode == 0 and (work / "state/handed-over").exists(), proc.stderr
    return root


def run_fetch(scripts: Path, work: Path, root: Path, base: str, pin: str, attempts: int = 1) -> subprocess.CompletedProcess:
    """The node's own fetch script (from `scripts`, lib.sh beside it), run as its runcmd runs it,
    installing under root. A stub stands in for the boot script it hands over to: it leaves
    work/state/handed-over. The log is work/fetch.log."""
    bin_dir = work / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in ("fetch", "lib.sh"):
        shutil.copy(scripts / name, bin_dir / name)
    (bin_dir / "fetch").chmod(0o755)
    (bin_dir / "boot").write_text('#!/bin/sh\ntouch "$VENT_STATE/handed-over"\n')
    (bin_dir / "boot").chmod(0o755)
    env = dict(os.environ, VENT_ROOT=str(root), VENT_STATE=str(work / "state"), VENT_LOG=str(work / "fetch.log"),
               VENT_CONSOLE="/dev/null", VENT_ATTEMPTS=str(attempts), VENT_BACKOFF="0")
    return subprocess.run([bin_dir / "fetch", base, pin], env=env, capture_output=True, text=True, timeout=120)


def revealed_kubeconfig(rendered: Path, rel: str, tmp_path: Path) -> Path:
    """The kubeconfig as its user gets it. A node's kubeconfig names files on the node: the
    node's files are revealed under tmp_path, and the names pointed there."""
    state = State.load(rendered / ".vent")
    text = (rendered / "artifacts" / rel).read_text()
    if not rel.startswith("nodes/"):
        assert len(secrets.markers(text)) == 1, "the client key is the kubeconfig's only secret"
        path = tmp_path / "kubeconfig"
        path.write_text(secrets.reveal(text, state.secret, rel))
        return path
    assert not secrets.markers(text), "a node's kubeconfig holds no secret: it names the key file"
    node_root = rendered / "artifacts" / "/".join(rel.split("/")[:3])
    for name, data in fsutil.read_tree(node_root).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(secrets.reveal(data.decode(), state.secret, name))
    doc = yaml.safe_load(text)
    for section in ("cluster", "user"):
        entry = doc[f"{section}s"][0][section]
        for key in ("certificate-authority", "client-certificate", "client-key"):
            if key in entry:
                assert (tmp_path / entry[key].lstrip("/")).is_file(), f"{entry[key]} is not among the node's files"
                entry[key] = str(tmp_path / entry[key].lstrip("/"))
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(doc))
    return path
