"""`vent-bake smoke` without a cluster: what it applies validates strictly for the release, and
what it refuses it names. (It runs against a real cluster in tests/test_lab.py.)"""

import subprocess

import yaml

from conftest import cli
from tools import need
from vent_bake import templates


def test_what_smoke_applies_validates_strictly(tmp_path):
    (validate,) = need("kubernetes-validate")
    paths = []
    for name in ("namespace", "workload", "etcd-reader"):
        path = tmp_path / f"{name}.yaml"
        path.write_text(templates.render(f"manifests/smoke/{name}.yaml", namespace="vent-smoke-abc123",
                                         image="registry.k8s.io/e2e-test-images/busybox:1.36.1", controller="controller-0"))
        paths.append(path)
    proc = subprocess.run([validate, "--strict", "-k", "1.36.0", *map(str, paths)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    documents = sum(len([d for d in yaml.safe_load_all(p.read_text()) if d]) for p in paths)
    assert proc.stdout.count("passed") == documents


def test_smoke_names_a_node_it_does_not_know(rendered):
    result = cli("smoke", "-c", rendered / "cluster.yaml", "--except", "worker-9", "--kubectl", "/bin/false")
    assert result.exit_code == 1
    assert result.stderr == "error: smoke: --except worker-9: no such node in the cluster file\n"


def test_smoke_needs_kubectl(rendered):
    result = cli("smoke", "-c", rendered / "cluster.yaml", "--kubectl", "/nonexistent/kubectl", "--timeout", "1")
    assert result.exit_code == 1
    assert "smoke: cannot run /nonexistent/kubectl (No such file or directory); pass --kubectl PATH" in result.output
