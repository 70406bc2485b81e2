"""The state directory survives crashes, races and damage: it is replaced whole or not at all,
one command writes it at a time, and a damaged or foreign file stops every command with one
line naming it (the corpus in tests/damaged/), rather than being used or silently replaced."""

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from conftest import cli, render, write_cluster
from vent_bake import fsutil, manifest, pki
from vent_bake.cli import main
from vent_bake.state import INDEX, State

DAMAGED = sorted((Path(__file__).parent / "damaged").glob("*.yaml"))


def tree(path: Path) -> dict[str, bytes]:
    return fsutil.read_tree(path)


# --- the corpus of damaged states and artifacts ----------------------------------------------------

def _apply(root: Path, change: dict) -> None:
    for path, text in change.get("write", {}).items():
        (root / path).write_text(text)
    for path, size in change.get("truncate", {}).items():
        os.truncate(root / path, size)
    for src, dst in change.get("copy", {}).items():
        shutil.copyfile(root / src, root / dst)
    for path in change.get("delete", []):
        (root / path).unlink()
    for path, mode in change.get("chmod", {}).items():
        os.chmod(root / path, int(mode, 8))


@pytest.mark.parametrize("case", DAMAGED, ids=[p.stem for p in DAMAGED])
def test_damaged(case, fresh):
    spec = yaml.safe_load(case.read_text())
    _apply(fresh, spec["change"])
    state, artifacts = tree(fresh / ".vent"), tree(fresh / "artifacts")
    result = cli(*spec["command"], "-c", fresh / "cluster.yaml")
    assert result.exit_code == spec["exit"], result.output
    for line in spec.get("stderr", []):
        assert line.format(root=fresh) in result.stderr.splitlines(), result.stderr
    for line in spec.get("stdout", []):
        assert line.format(root=fresh) in result.stdout.splitlines(), result.stdout
    if spec["exit"] != 0:
        assert tree(fresh / ".vent") == state and tree(fresh / "artifacts") == artifacts, "a refusal must write nothing"
        assert len(result.stderr.splitlines()) == len(spec.get("stderr", []))


def test_the_damaged_corpus_is_large_enough():
    assert len(DAMAGED) >= 12


def test_a_damaged_addresses_file_is_named(fresh):
    state = State.load(fresh / ".vent")
    state.put("addresses.yaml", b"worker-9: 198.18.9.9\n")  # as `vent-bake reserve` writes it
    state.save()
    assert render(fresh / "cluster.yaml")
    for junk in (b"worker-9: 198.18.", b"\x00\xff junk", b"- 198.18.9.9\n"):
        (fresh / ".vent/addresses.yaml").write_bytes(junk)
        result = cli("render", "-c", fresh / "cluster.yaml")
        assert result.exit_code == 1
        assert result.stderr == (f"error: {fresh}/.vent/addresses.yaml: changed since vent-bake wrote it (not a map of node names"
                                 " to IPv4 addresses); restore it from a backup, or run `vent-bake reserve` again\n")


def test_reissue_replaces_a_damaged_leaf_and_says_so(fresh):
    (fresh / ".vent/pki/admin.key").write_text("junk\n")
    result = cli("render", "-c", fresh / "cluster.yaml", "--reissue", "admin")
    assert result.exit_code == 0, result.output
    assert "issued: admin\n" in result.stdout
    assert pki.audit(tree(fresh / ".vent"), ["pki/admin.key", "pki/admin.crt"]) == {}
    assert cli("verify", "-c", fresh / "cluster.yaml").exit_code == 0


def test_reissue_of_a_ca_replaces_everything_it_signed(fresh):
    before = tree(fresh / ".vent")
    result = cli("render", "-c", fresh / "cluster.yaml", "--reissue", "etcd-ca")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("issued: etcd-ca, apiserver-etcd-client, etcd/controller-0-server,")
    after = tree(fresh / ".vent")
    assert after["pki/ca.key"] == before["pki/ca.key"] and after["pki/etcd-ca.key"] != before["pki/etcd-ca.key"]


def test_reissue_of_an_unknown_name(fresh):
    result = cli("render", "-c", fresh / "cluster.yaml", "--reissue", "nodes/worker-9")
    assert result.exit_code == 1 and result.stderr.startswith("error: --reissue nodes/worker-9: no such certificate or key")


def test_a_state_from_before_the_index_is_checked_once_and_indexed(fresh):
    (fresh / ".vent" / INDEX).unlink()
    result = render(fresh / "cluster.yaml")
    assert "issued" not in result.stdout
    assert (fresh / ".vent" / INDEX).exists()
    (fresh / ".vent" / INDEX).unlink()
    (fresh / ".vent/pki/kube-proxy.key").write_bytes((fresh / ".vent/pki/flannel.key").read_bytes())
    result = cli("render", "-c", fresh / "cluster.yaml")
    assert result.exit_code == 1
    assert result.stderr == (f"error: {fresh}/.vent/pki/kube-proxy.crt: it and pki/kube-proxy.key are not a pair; restore it"
                             " from a backup, or replace it and what depends on it with `vent-bake render --reissue kube-proxy`\n")


# --- symlinks, modes ---------------------------------------------------------------------------------

@pytest.mark.parametrize("entry", [".vent", "artifacts"])
def test_a_symlinked_directory_is_written_through(fresh, tmp_path, entry):
    target = tmp_path / f"elsewhere-{entry}"
    shutil.move(fresh / entry, target)
    (fresh / entry).symlink_to(target)
    (fresh / "cluster.yaml").write_text((fresh / "cluster.yaml").read_text().replace("172.31.0.0/16", "172.30.0.0/16"))
    render(fresh / "cluster.yaml")
    assert (fresh / entry).is_symlink() and os.readlink(fresh / entry) == str(target)
    assert cli("verify", "-c", fresh / "cluster.yaml").exit_code == 0
    assert "172.30.0.0/16" in (fresh / "artifacts/nodes/controller-0/files/etc/systemd/system/kube-apiserver.service").read_text()


def test_open_modes_are_mended_and_said(fresh):
    os.chmod(fresh / ".vent", 0o755)
    os.chmod(fresh / ".vent/pki/ca.key", 0o644)
    result = cli("render", "-c", fresh / "cluster.yaml")
    assert result.exit_code == 0
    assert f"warning: {fresh}/.vent: was mode 0755, others could read secrets; set to 0700" in result.stderr.splitlines()
    assert f"warning: {fresh}/.vent/pki/ca.key: was mode 0644, others could read secrets; set to 0600" in result.stderr.splitlines()
    assert (os.stat(fresh / ".vent").st_mode & 0o777, os.stat(fresh / ".vent/pki/ca.key").st_mode & 0o777) == (0o700, 0o600)


def test_every_copy_of_the_state_is_ignored_by_git(rendered):
    assert (rendered / ".vent/.gitignore").read_text() == "*\n"


# --- one writer at a time -------------------------------------------------------------------------------

def _integral(root: Path) -> None:
    """A whole state: the index verifies, and every key matches its certificate, which chains."""
    state = State.load(root)
    pem = [n for n in state.files if n.startswith("pki/")]
    assert pki.audit(state.files, pem) == {}


def test_concurrent_renders_never_leave_a_mismatched_pair(tmp_path):
    cluster = write_cluster(tmp_path, controllers=1, workers=1)
    procs = [subprocess.Popen([sys.executable, "-m", "vent_bake", "render", "-c", str(cluster)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(5)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 5, outputs
    assert sum("issued: ca," in out for out, _ in outputs) == 1
    _integral(tmp_path / ".vent")
    assert cli("verify", "-c", cluster).exit_code == 0


def test_a_second_writer_waits_and_says_for_whom(rendered, tmp_path):
    cluster = tmp_path / "cluster.yaml"
    shutil.copy(rendered / "cluster.yaml", cluster)
    fd = os.open(tmp_path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "vent_bake", "render", "-c", str(cluster)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while not (tmp_path / ".vent").exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            if (tmp_path / ".vent").exists():
                break
        assert not (tmp_path / ".vent").exists(), "render wrote while another held the lock"
    finally:
        os.close(fd)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert err.startswith(f"waiting for {tmp_path / '.vent'}: process {os.getpid()} (")


# --- crashes: killed at every write and rename ------------------------------------------------

POINTS = ("write", "rename", "replace")


def _killed_at(cluster: Path, n: int) -> bool:
    """Run `render` in a forked child that kills itself just before its n-th write or rename;
    True if it was killed, False if the render finished first."""
    pid = os.fork()
    if pid == 0:  # the child: count, and die at the n-th
        count = [0]

        def counted(real):
            def call(*args, **kw):
                count[0] += 1
                if count[0] == n:
                    os.kill(os.getpid(), signal.SIGKILL)
                return real(*args, **kw)
            return call

        for name in POINTS:
            setattr(os, name, counted(getattr(os, name)))
        fsutil._exchange = counted(fsutil._exchange)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        try:
            main(["render", "-c", str(cluster)], standalone_mode=False)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status)


def _restore(target: Path, snapshot: Path) -> None:
    shutil.rmtree(target, ignore_errors=True)
    if snapshot.exists():
        shutil.copytree(snapshot, target, symlinks=True)


def _whole_artifacts(out: Path) -> None:
    """The artifacts as some render wrote them: every file its MANIFEST lists, as listed."""
    if not out.exists():
        return
    files = tree(out)
    listed = manifest.parse(files.pop(manifest.NAME))
    assert listed is not None and manifest.altered(listed[1], files) == []


@pytest.mark.parametrize("first", [True, False], ids=["first render", "adding a worker"])
def test_a_render_killed_at_any_point_leaves_the_old_state_or_the_new(tmp_path, first):
    # A hundred and more renders: on tmpfs where there is one, which spares the disk's flushes.
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        tmp_path = Path(tempfile.mkdtemp(dir=shm, prefix="vent-crash-"))
        request_cleanup = tmp_path
    else:
        request_cleanup = None
    try:
        _crash_points(tmp_path, first)
    finally:
        if request_cleanup:
            shutil.rmtree(request_cleanup, ignore_errors=True)


def _crash_points(tmp_path: Path, first: bool) -> None:
    cluster = write_cluster(tmp_path / "c", controllers=1, workers=1)
    root, out = cluster.parent / ".vent", cluster.parent / "artifacts"
    if not first:
        render(cluster)
        write_cluster(cluster.parent, controllers=1, workers=2)
    state = tree(root)
    snapshots = tmp_path / "snapshot"
    for target in (root, out):
        if target.exists():
            shutil.copytree(target, snapshots / target.name, symlinks=True)
    n, killed = 0, 0
    while True:
        n += 1
        _restore(root, snapshots / root.name)
        _restore(out, snapshots / out.name)
        if not _killed_at(cluster, n):
            break
        killed += 1
        _whole_artifacts(out)
        if not root.exists():
            assert first, f"killed at point {n}: the state is gone"
            continue
        _integral(root)
        if state:
            after = tree(root)
            assert (after["pki/ca.key"], after["pki/ca.crt"]) == (state["pki/ca.key"], state["pki/ca.crt"]), f"point {n}: the CA changed"
        if n % 20 == 0:  # the next command clears what the killed one left, and works
            assert cli("render", "-c", cluster).exit_code == 0
            assert not [p.name for p in cluster.parent.iterdir() if p.name.startswith((".vent.", ".artifacts."))]
            assert cli("verify", "-c", cluster).exit_code == 0
    assert killed > 50, "the render should have been killed at many points"
