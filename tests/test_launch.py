"""reserve, launch, status, destroy through packet-python, against the fake Metal API."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import packet
import pytest

from conftest import cli
from tools import need
from tools import serve

SHARED_DOC = Path(__file__).resolve().parents[2] / "shared" / "metal-openapi.json"

@pytest.fixture(autouse=True)
def api_document():
    """The fake follows the official API document; without it there is nothing to fake (a
    skip, but a failure under CI, where the document must be)."""
    need(str(SHARED_DOC))

TOKEN = "tok-3f1a9c-do-not-print"
EXAMPLE_ARTIFACTS_URL = "https://files.example.com/vent/artifacts/"
PROJECT = "6f1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
NODES = ["controller-0", "controller-1", "controller-2", "worker-0", "worker-1"]


@pytest.fixture(scope="session")
def tls(tmp_path_factory):
    from fakemetal import make_tls

    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def metal(tls, monkeypatch):
    from fakemetal import FakeMetal, Metal

    m = Metal(TOKEN, PROJECT, provision_after=0.1, active_after=0.3)
    with FakeMetal(m, tls / "server.crt", tls / "server.key") as server:
        monkeypatch.setenv("METAL_API_URL", server.url)
        monkeypatch.setenv("METAL_AUTH_TOKEN", TOKEN)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls / "ca.crt"))
        m.url = server.url
        yield m
    assert m.violations == [], "requests or responses outside the API document"


@pytest.fixture
def cluster(tmp_path) -> Path:
    """The example on the fake provider, its artifacts/ published over HTTP as rendered."""
    from vent_bake import example

    text = example.cluster_yaml("vent", 3, 2)
    text = text.replace("00000000-0000-0000-0000-000000000000", PROJECT)
    for line in [l for l in text.splitlines() if l.strip().startswith("address: 198.18.")]:
        text = text.replace(line + "\n", "")
    (tmp_path / "artifacts").mkdir()
    for url in serve(tmp_path / "artifacts"):
        path = tmp_path / "cluster.yaml"
        path.write_text(text.replace(EXAMPLE_ARTIFACTS_URL, f"{url}/"))
        yield path


def run(*args, ok=True):
    result = cli(*args)
    if ok:
        assert result.exit_code == 0, result.output
    assert TOKEN not in result.output, "the token must never be printed"
    return result


def launched(cluster: Path, *extra):
    run("reserve", "-c", cluster)
    run("render", "-c", cluster)
    return run("launch", "-c", cluster, "--yes", "--poll", "0.05", *extra)


def live(m):
    return [d for d in m.live_devices() if "vent-bake:cluster:vent" in d["tags"]]


def assigned(m):
    return {r["address"]: r["assignments"] for r in m.reservations.values()}


def check_converged(m, cluster: Path):
    devices = live(m)
    assert sorted(d["hostname"] for d in devices) == NODES, "exactly one device per node"
    assignments = assigned(m)
    assert len(assignments) == len(NODES) and all(len(a) == 1 for a in assignments.values()), "one assignment per address"
    by_id = {d["id"]: d for d in devices}
    for address, (device,) in assignments.items():
        assert device in by_id, f"{address} is assigned to a device that is gone"
    from vent_bake.state import State

    reserved = State.load(cluster.parent / ".vent").reserved_addresses()
    for d in devices:
        assert reserved[d["hostname"]] in [ip["address"] for ip in d["ips"]]


def test_launch_then_launch_again_creates_nothing(metal, cluster):
    result = launched(cluster)
    check_converged(metal, cluster)
    assert "admin kubeconfig: " in result.stdout and "active" in result.stdout
    for d in live(metal):
        role = "controller" if d["hostname"].startswith("controller") else "worker"
        assert set(d["tags"]) == {"vent-bake:cluster:vent", f"vent-bake:node:{d['hostname']}", f"vent-bake:role:{role}"}
        assert d["spot"] == (role == "worker") and d["metro"] == "da" and d["os"] == "debian_12"
        revealed = run("userdata", d["hostname"], "-c", cluster, "--reveal").stdout
        assert d["userdata"] == revealed, "the device boots exactly the reviewed userdata"
    creates = metal.calls["POST projects/{id}/devices"]
    run("launch", "-c", cluster, "--yes", "--poll", "0.05")
    assert metal.calls["POST projects/{id}/devices"] == creates, "a second launch creates nothing"
    assert metal.calls["POST devices/{id}/ips"] == len(NODES)


def test_a_fifth_of_calls_failing(metal, cluster):
    run("reserve", "-c", cluster)
    run("render", "-c", cluster)
    metal.faults.rate = 0.2
    result = run("launch", "-c", cluster, "--yes", "--poll", "0.05")
    metal.faults.rate = 0.0
    check_converged(metal, cluster)
    assert len(metal.devices) >= len(NODES)
    assert "active 5" in result.stdout


def test_sigkill_midway_then_launch_again(metal, cluster, tmp_path):
    run("reserve", "-c", cluster)
    run("render", "-c", cluster)
    metal.faults.latency = 0.15
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "vent_bake", "launch", "-c", str(cluster), "--yes", "--concurrency", "2", "--poll", "0.05"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while metal.calls.get("POST projects/{id}/devices", 0) < 2:
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() is not None else "timeout"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)  # requests already sent finish on the server: their answers are lost
    assert 1 <= len(live(metal)) < len(NODES)
    metal.faults.latency = 0.0
    run("launch", "-c", cluster, "--yes", "--poll", "0.05")
    check_converged(metal, cluster)


def test_reclaimed_spot_device_comes_back_as_the_same_node(metal, cluster):
    launched(cluster)
    before = {d["hostname"]: d for d in live(metal)}
    gone = metal.reclaim("worker-1")
    result = run("launch", "-c", cluster, "--yes", "--poll", "0.05")
    after = {d["hostname"]: d for d in live(metal)}
    assert after["worker-1"]["id"] != gone
    assert f"worker-1: device {after['worker-1']['id']} created" in result.stdout
    assert result.stdout.count(" created") == 1, "only the reclaimed node gets a new device"
    assert after["worker-1"]["userdata"] == before["worker-1"]["userdata"], "byte-identical userdata"
    assert {d: after[d]["id"] for d in after if d != "worker-1"} == {d: before[d]["id"] for d in before if d != "worker-1"}
    check_converged(metal, cluster)


def test_failed_device_is_replaced(metal, cluster):
    metal.faults.fail_hostnames = {"worker-0"}
    result = launched(cluster)
    assert "worker-0: device failed; replacing it with the same userdata and address" in result.stdout
    check_converged(metal, cluster)


def test_destroy_leaves_nothing_tagged_and_spares_the_rest(metal, cluster):
    launched(cluster)
    with metal.lock:
        stranger = metal.create_device({"hostname": "not-ours", "tags": ["someone-else"], "operating_system": "debian_12",
                                        "plan": "c3.small.x86", "metro": "da"})
        theirs = metal.reserve({"tags": ["someone-else"], "metro": "da"})
    assert run("destroy", "-c", cluster, ok=False).exit_code == 1  # no terminal and no --yes: refuses
    result = run("destroy", "-c", cluster, "--yes")
    assert "deleted 5 devices and 5 address reservations" in result.stdout
    assert [d["id"] for d in metal.live_devices()] == [stranger["id"]]
    assert list(metal.reservations) == [theirs["id"]]
    assert "addresses.yaml" not in os.listdir(cluster.parent / ".vent")


def test_reserve_is_idempotent_and_knows_the_quota(metal, cluster):
    first = run("reserve", "-c", cluster).stdout
    assert first.count("reserved 203.0.113.") == 5
    assert "0 addresses reserved, 5 already held" in run("reserve", "-c", cluster).stdout
    small = cluster.read_text().replace("    os: debian_12\n", "    os: debian_12\n    address_quota: 7\n")
    cluster.write_text(small + "  - name: worker-2\n  - name: worker-3\n  - name: worker-4\n")
    result = run("reserve", "-c", cluster, ok=False)
    assert result.exit_code == 1
    assert "the cluster needs 3 more public IPv4 addresses but the project holds 5 of its quota of 7" in result.stderr


def test_launch_refuses_what_was_not_reserved_rendered_or_reviewed(metal, cluster):
    result = run("launch", "-c", cluster, "--yes", ok=False)
    assert result.exit_code == 1 and "run `vent-bake reserve`" in result.stderr
    run("reserve", "-c", cluster)
    result = run("launch", "-c", cluster, "--yes", ok=False)
    assert "no rendered artifacts: run `vent-bake render`" in result.stderr
    run("render", "-c", cluster)
    cluster.write_text(cluster.read_text().replace("max_price: 0.5", "max_price: 0.4"))
    result = run("launch", "-c", cluster, "--yes", ok=False)
    assert "stale against the cluster file and state: run `vent-bake render`" in result.stderr
    run("render", "-c", cluster)
    userdata = cluster.parent / "artifacts/nodes/worker-0/userdata"
    userdata.write_text(userdata.read_text().replace("hostname: worker-0", "hostname: evil"))
    result = run("launch", "-c", cluster, "--yes", ok=False)
    assert "nodes/worker-0/userdata: changed since it was rendered and reviewed" in result.stderr
    assert metal.calls.get("POST projects/{id}/devices", 0) == 0


def test_launch_without_a_terminal_needs_yes(metal, cluster):
    run("reserve", "-c", cluster)
    run("render", "-c", cluster)
    result = run("launch", "-c", cluster, ok=False)
    assert result.exit_code == 1 and "pass --yes" in result.stderr


def test_token_missing_or_rejected(metal, cluster, monkeypatch):
    monkeypatch.delenv("METAL_AUTH_TOKEN")
    monkeypatch.delenv("PACKET_AUTH_TOKEN", raising=False)
    result = run("status", "-c", cluster, ok=False)
    assert result.exit_code == 1 and result.stderr.startswith("error: METAL_AUTH_TOKEN is not set")
    monkeypatch.setenv("PACKET_AUTH_TOKEN", "wrong-" + TOKEN)
    result = run("status", "-c", cluster, ok=False)
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert "401" in result.stderr and "check METAL_AUTH_TOKEN" in result.stderr and "wrong-" not in result.stderr


def test_status_and_prices(metal, cluster):
    launched(cluster)
    import json

    rows = json.loads(run("status", "-c", cluster, "--json").stdout)
    assert [r["node"] for r in rows] == NODES and {r["state"] for r in rows} == {"active"}
    assert all(r["address"].startswith("203.0.113.") and r["device"] for r in rows)
    assert [r["price"] for r in rows] == [None, None, None, 0.5, 0.5]
    out = run("prices", "-c", cluster).stdout
    assert "  am     0.1900 USD/h  under max" in out and "  ny     0.6200 USD/h\n" in out
    assert "  da     0.2100 USD/h  under max  <- configured metro" in out


def test_the_fake_rejects_what_packet_python_sends_unwrapped(metal):
    """Why the wrapper exists: packet-python's own create_device sends nulls and a {} for tags."""
    manager = packet.Manager(auth_token=TOKEN)
    manager.end_point = metal.url.removeprefix("https://")
    with pytest.raises(packet.baseapi.ResponseError) as caught:
        manager.create_device(PROJECT, "raw", "c3.small.x86", metro="da", operating_system="debian_12", spot_instance=True, spot_price_max=0.5)
    assert "422" in str(caught.value)
    assert metal.violations and metal.violations[0].startswith("request POST /metal/v1/projects/")
    metal.violations.clear()


def test_launch_refuses_until_the_artifacts_are_published(metal, cluster, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    for url in serve(site):
        text = cluster.read_text()
        cluster.write_text(text.replace(text.split("artifacts_url: ")[1].split()[0], f"{url}/"))
        run("reserve", "-c", cluster)
        run("render", "-c", cluster)
        result = run("launch", "-c", cluster, "--yes", ok=False)
        assert result.exit_code == 1
        assert f"error: boot.artifacts_url: {url}/nodes/controller-0/fetch.list: HTTP 404 (5 of 5 files): publish artifacts/" in result.stderr
        shutil.copytree(cluster.parent / "artifacts", site, dirs_exist_ok=True)
        listed = site / "nodes/worker-1/fetch.list"
        listed.write_text(listed.read_text()[1:])
        result = run("launch", "-c", cluster, "--yes", ok=False)
        assert f"{url}/nodes/worker-1/fetch.list: not the one made (1 of 5 files)" in result.stderr
    assert metal.calls.get("POST projects/{id}/devices", 0) == 0


def fake_image(cluster: Path, role: str) -> str:
    """An image directory as `vent-bake image build` leaves it, as far as launch reads it: its
    manifest (the role's pins) and its iPXE script, published."""
    from vent_bake import binaries, config
    from vent_bake.image import build

    c = config.load(cluster)
    name = build.name(c, role)
    directory = cluster.parent / build.IMAGES / name
    directory.mkdir(parents=True)
    downloads = {d.name: {"algorithm": d.algorithm, "digest": d.digest, "url": d.url} for d in binaries.downloads(c, role)}
    (directory / build.MANIFEST).write_text(json.dumps({"role": role, "downloads": downloads}))
    (directory / "boot.ipxe").write_text(build.netboot.ipxe(role, c.versions.kubernetes, build.published(c, name), "console=ttyS1"))
    published = cluster.parent / "artifacts" / build.IMAGES / name
    published.mkdir(parents=True)
    shutil.copy(directory / "boot.ipxe", published / "boot.ipxe")
    return name


def test_an_imaged_role_boots_its_image_over_custom_ipxe(metal, cluster):
    name = fake_image(cluster, "worker")
    cluster.write_text(cluster.read_text().replace("\nboot:\n", f"\nimage:\n  workers: {name}\n\nboot:\n"))
    launched(cluster)
    devices = {d["hostname"]: d for d in live(metal)}
    base = cluster.read_text().split("artifacts_url: ")[1].split()[0]
    for host in ("worker-0", "worker-1"):
        assert (devices[host]["os"], devices[host]["ipxe_script_url"], devices[host]["always_pxe"]) == (
            "custom_ipxe", f"{base}images/{name}/boot.ipxe", True)
    assert devices["controller-0"]["os"] == "debian_12" and devices["controller-0"]["ipxe_script_url"] is None


def test_launch_refuses_an_ipxe_script_not_published_as_made(metal, cluster):
    name = fake_image(cluster, "worker")
    cluster.write_text(cluster.read_text().replace("\nboot:\n", f"\nimage:\n  workers: {name}\n\nboot:\n"))
    run("reserve", "-c", cluster)
    run("render", "-c", cluster)
    published = cluster.parent / "artifacts" / "images" / name / "boot.ipxe"
    published.write_text(published.read_text().replace("vmlinuz", "another-kernel"))
    result = run("launch", "-c", cluster, "--yes", ok=False)
    assert f"images/{name}/boot.ipxe: not the one made" in result.stderr
    published.unlink()
    result = run("launch", "-c", cluster, "--yes", ok=False)
    assert f"images/{name}/boot.ipxe: HTTP 404" in result.stderr
    assert metal.calls.get("POST projects/{id}/devices", 0) == 0


def test_an_image_of_another_lock_is_refused(metal, cluster):
    name = fake_image(cluster, "worker")
    cluster.write_text(cluster.read_text().replace("\nboot:\n", f"\nimage:\n  workers: {name}\n\nboot:\n"))
    run("reserve", "-c", cluster)
    run("render", "-c", cluster)
    baked = cluster.parent / "images" / name / "manifest.json"  # rebuilt since, from another lock
    doc = json.loads(baked.read_text())
    doc["downloads"]["runc"]["digest"] = "0" * 64
    baked.write_text(json.dumps(doc))
    for command in (("render",), ("launch", "--yes")):
        result = run(*command, "-c", cluster, ok=False)
        assert result.exit_code == 1, result.output
        assert f"image.workers: {name} was baked from another lock: runc is sha256 0000000000000000..." in result.stderr
    assert metal.calls.get("POST projects/{id}/devices", 0) == 0
