"""The boot script's download-and-verify step, run for real against a local HTTP mirror: a file
whose digest matches is installed; a tampered one never is, and nothing else is either."""

import hashlib
import io
import subprocess
import tarfile
from pathlib import Path

BOOT = Path(__file__).parents[1] / "cloudinit" / "boot.sh"
GOOD = b"#!/bin/sh\necho genuine\n"
EVIL = b"#!/bin/sh\necho tampered\n"


def tarball(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def run_boot(tmp_path: Path, lines: list[str], *steps: str) -> subprocess.CompletedProcess:
    etc, root = tmp_path / "etc", tmp_path / "root"
    etc.mkdir(exist_ok=True)
    (etc / "downloads.tsv").write_text("".join(line + "\n" for line in lines))
    env = {
        "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
        "VENT_ETC": str(etc), "VENT_STATE": str(tmp_path / "state"), "VENT_ROOT": str(root),
        "VENT_LOG": str(tmp_path / "boot.log"), "VENT_CONSOLE": "/dev/null",
        "VENT_ATTEMPTS": "2", "VENT_BACKOFF": "0",
    }
    return subprocess.run(["bash", str(BOOT), *steps], env=env, capture_output=True, text=True, timeout=120)


def line(name: str, url: str, data: bytes, installs: str, algorithm: str = "sha256") -> str:
    return "\t".join((name, url, algorithm, hashlib.new(algorithm, data).hexdigest(), installs))


def test_verified_binaries_and_archives_are_installed(mirror, tmp_path):
    www, base = mirror
    (www / "tool").write_bytes(GOOD)
    archive = tarball({"pkg/bin/a": b"a\n", "pkg/bin/b": b"b\n"})
    (www / "pkg.tar.gz").write_bytes(archive)
    lines = [
        line("tool", f"{base}/tool", GOOD, "/usr/local/bin/tool"),
        line("pkg", f"{base}/pkg.tar.gz", archive, "/usr/local/bin/a=pkg/bin/a,/opt/cni/bin/b=pkg/bin/b", "sha512"),
    ]
    proc = run_boot(tmp_path, lines, "download", "install")
    assert proc.returncode == 0, proc.stderr
    root = tmp_path / "root"
    assert (root / "usr/local/bin/tool").read_bytes() == GOOD
    assert (root / "usr/local/bin/a").read_bytes() == b"a\n" and (root / "opt/cni/bin/b").read_bytes() == b"b\n"
    assert (root / "usr/local/bin/tool").stat().st_mode & 0o777 == 0o755
    log = (tmp_path / "boot.log").read_text()
    assert log.index("download: tool verified") < log.index("install: tool")


def test_tampered_binary_is_never_installed(mirror, tmp_path):
    www, base = mirror
    (www / "tool").write_bytes(GOOD)
    (www / "evil").write_bytes(EVIL)
    lines = [
        line("tool", f"{base}/tool", GOOD, "/usr/local/bin/tool"),
        line("kubelet", f"{base}/evil", GOOD, "/usr/local/bin/kubelet"),  # pinned to the genuine digest
    ]
    proc = run_boot(tmp_path, lines, "download", "install")
    assert proc.returncode == 1
    assert not (tmp_path / "root").exists(), "nothing at all is installed when one download fails"
    assert not (tmp_path / "state/downloads/kubelet").exists()
    log = (tmp_path / "boot.log").read_text()
    expected = f"expected sha256 {hashlib.sha256(GOOD).hexdigest()}, got {hashlib.sha256(EVIL).hexdigest()}"
    assert log.count(f"kubelet from {base}/evil does not match its pinned digest: {expected}") == 2  # one per attempt
    assert "FAILED: download: kubelet could not be verified; nothing was installed" in proc.stderr


def test_install_refuses_what_was_not_verified(tmp_path):
    proc = run_boot(tmp_path, [line("tool", "http://127.0.0.1:9/none", GOOD, "/usr/local/bin/tool")], "install")
    assert proc.returncode == 1 and "tool was not verified" in proc.stderr
    assert not (tmp_path / "root").exists()


def test_unreachable_mirror_fails_loudly(tmp_path):
    proc = run_boot(tmp_path, [line("tool", "http://127.0.0.1:9/tool", GOOD, "/usr/local/bin/tool")], "download")
    assert proc.returncode == 1
    assert "download: tool from http://127.0.0.1:9/tool failed (attempt 2 of 2)" in proc.stderr


def test_rendered_download_list_matches_the_lock(rendered):
    from vent_bake import lock

    pinned = {(e[a]["url"], e[a].get("sha512") or e[a]["sha256"]) for e in lock.packaged()[lock.newest(lock.packaged())].values()
              if isinstance(e, dict) and "amd64" in e for a in ["amd64"]}
    for node in ("controller-0", "worker-0"):
        rows = (rendered / f"artifacts/nodes/{node}/files/etc/vent/downloads.tsv").read_text().splitlines()
        assert rows and all((r.split("\t")[1], r.split("\t")[3]) in pinned for r in rows)
    worker = (rendered / "artifacts/nodes/worker-0/files/etc/vent/downloads.tsv").read_text()
    assert "kubernetes-server" not in worker and "etcd" not in worker


def test_what_is_installed_as_pinned_is_not_fetched_again(mirror, tmp_path):
    """A binary in place with its receipt (a baked image, an earlier boot) is left alone: the
    mirror could be gone. One changed since is installed again, from the verified download."""
    www, base = mirror
    archive = tarball({"pkg/bin/a": b"a\n", "pkg/bin/b": b"b\n"})
    (www / "pkg.tar.gz").write_bytes(archive)
    (www / "tool").write_bytes(GOOD)
    lines = [line("tool", f"{base}/tool", GOOD, "/usr/local/bin/tool"),
             line("pkg", f"{base}/pkg.tar.gz", archive, "/usr/local/bin/a=pkg/bin/a,/opt/cni/bin/b=pkg/bin/b", "sha512")]
    assert run_boot(tmp_path, lines, "download", "install").returncode == 0
    for served in www.iterdir():
        served.unlink()
    again = run_boot(tmp_path, lines, "download", "install")
    assert again.returncode == 0, again.stderr
    log = (tmp_path / "boot.log").read_text()
    assert "download: tool already installed from its pinned sha256 " in log and "install: pkg already in place" in log
    (tmp_path / "root/opt/cni/bin/b").write_bytes(b"changed\n")
    changed = run_boot(tmp_path, lines, "download", "install")
    assert changed.returncode == 0, changed.stderr
    assert (tmp_path / "root/opt/cni/bin/b").read_bytes() == b"b\n"
    assert "install: tool already in place" in changed.stderr and "install: pkg (" in changed.stderr
