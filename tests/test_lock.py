"""`vent-bake lock` against a local HTTP server laid out as the official hosts (<host>/<path>)."""

import hashlib
from pathlib import PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml

from conftest import cli, write_cluster
from vent_bake import lock

VERSION = "v1.36.9"  # a patch release no lock knows: its checksum files are served here
BASE = lock.newest(lock.packaged())  # what `lock` takes the other components from


def served(www, url: str, text: str) -> None:
    parts = urlsplit(url)
    path = www / parts.netloc / parts.path.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_digest_formats():
    sha = "a" * 64
    assert lock.digest_in(f"{sha}\n", "kubelet", "sha256", "x") == sha  # dl.k8s.io: the digest alone
    assert lock.digest_in(f"{'b' * 64}  other.tgz\n{sha}  *etcd.tgz\n", "etcd.tgz", "sha256", "x") == sha  # SHA256SUMS
    assert lock.digest_in(f"{sha}  ./dist/runc.amd64\n", "runc.amd64", "sha256", "x") == sha


def publish(www, tamper: str | None = None, version: str = VERSION) -> dict:
    """Serve checksum files: made-up digests for the test-only Kubernetes release, and the
    packaged pins of the other components, as their projects publish them (with a decoy)."""
    expected = {}
    for binary in lock.KUBERNETES_BINARIES:
        for arch in lock.ARCHES:
            digest = hashlib.sha256(f"{binary}-{arch}-{version}".encode()).hexdigest()
            served(www, f"https://dl.k8s.io/{version}/bin/linux/{arch}/{binary}.sha256", digest + "\n")
            expected[binary, arch] = digest
    files: dict[str, str] = {}  # one checksum file can list several arches (etcd's SHA256SUMS)
    for name, entry in lock.packaged()[BASE].items():
        if name == "images" or name.startswith("kubernetes-") or name in lock.KUBERNETES_BINARIES:
            continue
        for arch in lock.ARCHES:
            if "sums" not in entry[arch]:
                continue
            _, digest = lock.pinned(entry, arch)
            if name == tamper:
                digest = "f" * len(digest)
            filename = PurePosixPath(urlsplit(entry[arch]["url"]).path).name
            decoy = "0" * len(digest) + "  some-other-file.tar.gz\n"
            files[entry[arch]["sums"]] = files.get(entry[arch]["sums"], decoy) + f"{digest}  {filename}\n"
    for url, text in files.items():
        served(www, url, text)
    return expected


@pytest.mark.parametrize("version", ["v1.35.9", "v1.36.9", "v1.37.1"])
def test_lock_pins_each_binary_and_render_uses_it(mirror, tmp_path, version):
    """Any patch release of a supported minor; each served here with made-up digests."""
    www, base = mirror
    expected = publish(www, version=version)
    VERSION = version
    cluster = write_cluster(tmp_path / "c", **{f"kubernetes: {BASE}": f"kubernetes: {VERSION}"})
    assert cli("render", "-c", cluster).exit_code == 2  # no lock knows the version yet
    result = cli("lock", "-c", cluster, "--from", base)
    assert result.exit_code == 0, result.output
    assert "note: flanneld (amd64): no published checksum file; its pin is carried over unchecked" in result.stdout
    project = yaml.safe_load((tmp_path / "c/binaries.lock.yaml").read_text())
    entry = project[VERSION]
    assert entry["kube-proxy"]["amd64"] == {
        "url": f"https://dl.k8s.io/{VERSION}/bin/linux/amd64/kube-proxy", "sha256": expected["kube-proxy", "amd64"],
        "sums": f"https://dl.k8s.io/{VERSION}/bin/linux/amd64/kube-proxy.sha256",
    }
    assert "kubernetes-server" not in entry and entry["etcd"]["version"] == lock.packaged()[BASE]["etcd"]["version"]

    assert cli("render", "-c", cluster).exit_code == 0
    worker = (tmp_path / "c/artifacts/nodes/worker-0/files/etc/vent/downloads.tsv").read_text().splitlines()
    rows = {r.split("\t")[0]: r.split("\t") for r in worker}
    assert rows["kube-proxy"][1:] == [f"https://dl.k8s.io/{VERSION}/bin/linux/amd64/kube-proxy", "sha256",
                                      expected["kube-proxy", "amd64"], "/usr/local/bin/kube-proxy"]
    assert "kubernetes-node" not in rows
    controller = (tmp_path / "c/artifacts/nodes/controller-0/files/etc/vent/downloads.tsv").read_text()
    assert expected["kube-apiserver", "amd64"] in controller and "kubernetes-server" not in controller


def test_a_checksum_file_that_contradicts_the_lock_writes_nothing(mirror, tmp_path):
    www, base = mirror
    publish(www, tamper="etcd")
    cluster = write_cluster(tmp_path / "c")
    result = cli("lock", "-c", cluster, "--kubernetes", VERSION, "--from", base)
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    etcd = lock.packaged()[BASE]["etcd"]["amd64"]
    assert f"{etcd['url']}, but the lock pins {etcd['sha256']}" in result.stderr
    assert "nothing was written" in result.stderr
    assert not (tmp_path / "c/binaries.lock.yaml").exists()


def test_a_missing_checksum_file_is_a_clear_error(mirror, tmp_path):
    _, base = mirror
    result = cli("lock", "-c", write_cluster(tmp_path / "c"), "--kubernetes", VERSION, "--from", base)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {base}/dl.k8s.io/{VERSION}/bin/linux/amd64/kube-apiserver.sha256: 404")
