"""The wheel carries the templates, and renders from them with no source checkout around."""

import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import write_cluster


def test_wheel_ships_templates_and_renders(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path / "dist"), str(repo)], check=True)
    (wheel,) = (tmp_path / "dist").glob("vent_bake-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for template in ("configs/kubeconfig.yaml", "configs/cluster.yaml", "configs/encryption-config.yaml"):
        assert f"vent_bake/templates/{template}" in names
    assert "vent_bake/binaries.lock.yaml" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    cluster = write_cluster(tmp_path / "c", 1, 1)
    proc = subprocess.run(
        [sys.executable, "-c", "import vent_bake.templates as t; print(t.root()); from vent_bake.cli import main; main()",
         "render", "-c", str(cluster)],
        cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == str(site / "vent_bake/templates")
    assert (tmp_path / "c/artifacts/nodes/worker-0/files/var/lib/kubelet/kubeconfig").is_file()
