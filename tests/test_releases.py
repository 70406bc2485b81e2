"""Supported releases by default: the packaged lock pins what checksums-supported.yaml publishes,
knows each minor's end of life, and render and verify say when a cluster is past it or near."""

import datetime

import pytest
import yaml

from conftest import SHARED, cli, render, write_cluster
from tools import need
from vent_bake import binaries, config, example, lock

DEFAULT = "v1.36.0"


def test_the_default_is_a_supported_release():
    assert lock.newest(lock.packaged()) == DEFAULT
    assert f"kubernetes: {DEFAULT}" in example.cluster_yaml()
    assert {"v1.35.4", "v1.32.8"} <= lock.packaged().keys()


def test_every_download_of_the_default_is_pinned_as_published(rendered):
    """Each download line's digest is one ../shared/checksums-supported.yaml copied from its
    publisher (the Kubernetes tarballs, kubespray's list) or, for flanneld, checksums.yaml's
    third-party pin."""
    need(str(SHARED / "checksums-supported.yaml"))
    supported = yaml.safe_load((SHARED / "checksums-supported.yaml").read_text())
    published = {f["sha512"] for v in supported["kubernetes_tarballs"].values() for f in v["files"].values()}
    published |= {d.split(":", 1)[1] for c in supported["components"].values() if isinstance(c, dict) and "digests" in c
                  for per_version in c["digests"].values() for d in per_version.values()}
    third_party = {a["digest"] for a in yaml.safe_load((SHARED / "checksums.yaml").read_text())["artifacts"] if a["name"] == "flanneld"}
    versions = {"kubernetes-server": DEFAULT, "etcd": "v3.6.14", "containerd": "v2.2.7", "runc": "v1.4.3", "cni-plugins": "v1.9.1",
                "crictl": "v1.36.0", "runsc": "20260817.0", "containerd-shim-runsc-v1": "20260817.0", "kubernetes-node": DEFAULT}
    for node in ("controller-0", "worker-0"):
        for row in (rendered / f"artifacts/nodes/{node}/files/etc/vent/downloads.tsv").read_text().splitlines():
            name, url, _, digest, _ = row.split("\t")
            assert digest in (third_party if name == "flanneld" else published), (node, name)
            if name in versions:
                assert versions[name] in url, (name, url)


def test_an_old_release_still_renders_and_says_it_is_past_its_end_of_life(tmp_path):
    cluster = write_cluster(tmp_path, **{f"kubernetes: {DEFAULT}": "kubernetes: v1.32.8"})
    result = render(cluster)
    assert ("warning: versions.kubernetes: v1.32.8 reached its end of life on 2026-02-28: it gets no more fixes; move to a"
            " supported release") in result.stderr
    assert "warning: versions.kubernetes: v1.32.8 reached its end of life" in cli("verify", "-c", cluster).stdout
    downloads = (tmp_path / "artifacts/nodes/worker-0/files/etc/vent/downloads.tsv").read_text()
    assert "/v1.32.8/" in downloads and "etcd" not in downloads


@pytest.mark.parametrize("version,today,expected", [
    ("v1.36.0", "2026-11-30", None),
    ("v1.35.4", "2026-11-30", None),
    ("v1.35.4", "2027-01-10", "v1.35.4 reaches its end of life on 2027-02-28, in 49 days; plan the move to a newer release"),
    ("v1.35.4", "2027-03-01", "v1.35.4 reached its end of life on 2027-02-28: it gets no more fixes"),
    ("v1.99.0", "2026-11-30", "v1.99.0: the binaries lock knows no end-of-life date for it"),
])
def test_support_warnings_from_sixty_days_before(version, today, expected):
    warning = lock.support_warning(version, datetime.date.fromisoformat(today))
    assert warning == expected or (expected and warning.startswith(expected)), warning


def test_workers_fetch_the_node_tarball_and_controllers_the_server_tarball():
    cluster = config.parse(example.cluster_yaml(), "example")
    worker, controller = ([d.name for d in binaries.downloads(cluster, role)] for role in ("worker", "controller"))
    assert "kubernetes-node" in worker and "kubernetes-server" not in worker
    assert "kubernetes-server" in controller and "kubernetes-node" not in controller and "kubernetes-client" not in controller
