"""Render is deterministic, minimal in what it changes, atomic, and leaves no secret in artifacts/."""

import base64
import gzip
import json
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys

import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from conftest import cli, render, write_cluster
from vent_bake import artifacts, fsutil, templates
from vent_bake.state import ARTIFACTS_CACHE, State


def tree(path):
    return fsutil.read_tree(path)


def diff(before: dict, after: dict) -> set[str]:
    return {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}


def test_rerender_changes_nothing(fresh):
    """Nothing but the stat cache the first time, stamped again (`fresh` is a copy, so every
    ctime is new), and nothing at all the next."""
    artifacts, state = tree(fresh / "artifacts"), tree(fresh / ".vent")
    mtime = os.stat(fresh / "artifacts").st_mtime_ns
    result = render(fresh / "cluster.yaml")
    assert "issued" not in result.stdout and "artifacts unchanged" in result.stdout
    assert tree(fresh / "artifacts") == artifacts and diff(tree(fresh / ".vent"), state) <= {ARTIFACTS_CACHE}
    state = tree(fresh / ".vent")
    assert "artifacts unchanged" in render(fresh / "cluster.yaml").stdout
    assert tree(fresh / "artifacts") == artifacts and tree(fresh / ".vent") == state
    assert os.stat(fresh / "artifacts").st_mtime_ns == mtime


def test_a_warm_render_reads_no_artifact(tmp_path, monkeypatch):
    """The stamp a render takes as it writes is the one the next render finds: nothing is read."""
    cluster = write_cluster(tmp_path)
    render(cluster)

    def refuse(*_):
        raise AssertionError("a warm render read the artifacts")

    monkeypatch.setattr(artifacts, "read", refuse)
    assert "artifacts unchanged" in render(cluster).stdout


def test_render_from_a_fresh_state_has_the_same_shape(rendered, tmp_path):
    (tmp_path / "cluster.yaml").write_text((rendered / "cluster.yaml").read_text())
    render(tmp_path / "cluster.yaml")
    assert tree(tmp_path / "artifacts").keys() == tree(rendered / "artifacts").keys()


def add_worker(cluster_file):
    text = cluster_file.read_text()
    cluster_file.write_text(text + "  - name: worker-2\n    address: 198.18.1.12\n")


def test_adding_a_worker_adds_only_its_files(fresh):
    before_a, before_s = tree(fresh / "artifacts"), tree(fresh / ".vent")
    add_worker(fresh / "cluster.yaml")
    result = render(fresh / "cluster.yaml")
    assert "issued: nodes/worker-2\n" in result.stdout
    changed = diff(before_a, tree(fresh / "artifacts"))
    assert changed and {p for p in changed if not p.startswith("nodes/worker-2/")} == {"pki/nodes/worker-2.crt", "MANIFEST"}
    assert diff(before_s, tree(fresh / ".vent")) == {"pki/nodes/worker-2.crt", "pki/nodes/worker-2.key", "index.sha256", "artifacts.cache"}


def test_moving_a_controller_reissues_exactly_what_names_it(fresh):
    cluster = fresh / "cluster.yaml"
    cluster.write_text(cluster.read_text().replace("198.18.0.11", "198.18.0.99"))
    result = render(cluster)
    issued = result.stdout.split("issued: ")[1].splitlines()[0].split(", ")
    assert sorted(issued) == ["etcd/controller-1-peer", "etcd/controller-1-server", "kube-apiserver", "nodes/controller-1"]


def test_removing_a_worker_drops_its_credentials(fresh):
    cluster = fresh / "cluster.yaml"
    cluster.write_text(cluster.read_text().replace("  - name: worker-1\n    address: 198.18.1.11\n", ""))
    result = render(cluster)
    assert "dropped (no longer in the cluster file): nodes/worker-1" in result.stdout
    assert not (fresh / "artifacts/nodes/worker-1").exists()
    assert not (fresh / ".vent/pki/nodes/worker-1.key").exists()


def test_changing_the_key_algorithm_replaces_the_cas_only_when_told(fresh):
    cluster = fresh / "cluster.yaml"
    state = tree(fresh / ".vent")
    cluster.write_text(cluster.read_text().replace("ecdsa-p256", "rsa-2048"))
    refused = cli("render", "-c", cluster)
    assert refused.exit_code == 1 and tree(fresh / ".vent") == state
    assert refused.stderr == (f"error: {fresh / '.vent/pki/ca.crt'}: the cluster file asks for another CA (its key is not rsa-2048);"
                              " `vent-bake render --reissue ca --reissue etcd-ca --reissue front-proxy-ca` replaces it and every"
                              " certificate it signed (nodes booted with it must boot again)\n")
    reissue = ["--reissue", "ca", "--reissue", "etcd-ca", "--reissue", "front-proxy-ca", "--reissue", "service-accounts"]
    result = cli("render", "-c", cluster, *reissue)
    assert result.exit_code == 0, result.output
    assert "issued: 24 (ca, etcd-ca, front-proxy-ca," in result.stdout  # 23 certificates and the service-account key


def test_invalid_cluster_file_leaves_everything_as_it_was(fresh):
    artifacts, state = tree(fresh / "artifacts"), tree(fresh / ".vent")
    (fresh / "cluster.yaml").write_text((fresh / "cluster.yaml").read_text().replace("172.31.0.0/16", "10.32.0.0/24"))
    assert cli("render", "-c", fresh / "cluster.yaml").exit_code == 2
    assert tree(fresh / "artifacts") == artifacts and tree(fresh / ".vent") == state


@pytest.mark.parametrize("fails", ["the state directory", "the artifacts"])
def test_a_full_disk_while_writing_leaves_the_previous_files(fresh, fails):
    """A file size limit (as `ulimit -f` sets) stands in for a full disk, met while the state is
    written or, later, the artifacts: what failed stays as it was, with nothing left beside it."""
    state, artifacts = tree(fresh / ".vent"), tree(fresh / "artifacts")
    largest_state, largest_artifact = (max(map(len, t.values())) for t in (state, artifacts))
    assert largest_state < largest_artifact
    limit = largest_state // 2 if fails == "the state directory" else (largest_state + largest_artifact) // 2
    add_worker(fresh / "cluster.yaml")

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run([sys.executable, "-m", "vent_bake", "render", "-c", str(fresh / "cluster.yaml")], capture_output=True,
                          text=True, preexec_fn=limited)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"cannot write {fails}" in proc.stderr and "File too large" in proc.stderr and "unchanged" in proc.stderr
    assert tree(fresh / "artifacts") == artifacts
    assert sorted(os.listdir(fresh)) == [".vent", "artifacts", "cluster.yaml"]  # no staging left behind
    if fails == "the state directory":
        assert tree(fresh / ".vent") == state
    else:  # the state was saved first: the old artifacts are stale against it, and say so
        assert "pki/nodes/worker-2.key" in tree(fresh / ".vent")
        assert "error: MANIFEST: the artifacts were rendered from another cluster file or state" in cli("verify", "-c", fresh / "cluster.yaml").stdout


def test_operator_files_in_artifacts_are_kept(fresh):
    (fresh / "artifacts/.gitattributes").write_text("* -diff\n")
    add_worker(fresh / "cluster.yaml")
    render(fresh / "cluster.yaml")
    assert (fresh / "artifacts/.gitattributes").read_text() == "* -diff\n"


def test_state_is_private(rendered):
    root = rendered / ".vent"
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o700
    for dirpath, dirs, files in os.walk(root):
        for d in dirs:
            assert stat.S_IMODE(os.stat(os.path.join(dirpath, d)).st_mode) == 0o700
        for f in files:
            assert stat.S_IMODE(os.stat(os.path.join(dirpath, f)).st_mode) == 0o600


def secret_encodings(state: State) -> dict[str, list[bytes]]:
    """Every form in which a secret of the state could leak into a file."""
    out = {}
    for name, value in state.files.items():
        if name.startswith("pki/") and name.endswith(".key"):
            key = serialization.load_pem_private_key(value, None)
            der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
            raw = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
            out[name] = [value, base64.b64encode(value), base64.b64encode(der)[:64], base64.b64encode(raw)[:64], der.hex().encode()[:64]]
        elif name.startswith("secrets/"):
            out[name] = [value, base64.b64decode(value).hex().encode()]
    return out


def unpacked(files: dict[str, bytes]) -> dict[str, bytes]:
    """The artifacts, plus the decoded content of every encoded entry of every userdata."""
    out = dict(files)
    for path, data in files.items():
        if path.endswith("/userdata"):
            for i, entry in enumerate(yaml.safe_load(data)["write_files"]):
                if entry.get("encoding") == "gz+b64":
                    out[f"{path}#{i}"] = gzip.decompress(base64.b64decode(entry["content"]))
    return out


def test_no_secret_in_artifacts_in_any_encoding(rendered, state):
    files = unpacked(tree(rendered / "artifacts"))
    assert any("#" in p for p in files)
    leaks = secret_encodings(state)
    assert len(leaks) == 25  # 23 certificate keys, the service-account key, the encryption key
    for path, data in files.items():
        assert b"PRIVATE KEY" not in data, path
        for name, forms in leaks.items():
            for form in forms:
                assert form not in data, f"{name} leaks into {path}"


def test_artifacts_layout(rendered):
    files = tree(rendered / "artifacts")
    assert "nodes/worker-0/userdata" in files and "admin.kubeconfig" in files
    worker = {p.removeprefix("nodes/worker-0/files") for p in files if p.startswith("nodes/worker-0/files/")}
    credentials = {p for p in worker if p.endswith((".crt", ".key", "kubeconfig"))}
    assert credentials == {
        "/var/lib/kubernetes/pki/ca.crt",
        "/var/lib/kubelet/kubelet.crt", "/var/lib/kubelet/kubelet.key", "/var/lib/kubelet/kubeconfig",
        "/var/lib/kube-proxy/kube-proxy.crt", "/var/lib/kube-proxy/kube-proxy.key", "/var/lib/kube-proxy/kubeconfig",
        "/var/lib/flannel/flannel.crt", "/var/lib/flannel/flannel.key", "/var/lib/flannel/kubeconfig",
    }
    assert {"/usr/local/lib/vent/boot", "/etc/vent/downloads.tsv", "/etc/systemd/system/kubelet.service"} <= worker
    controller = {p.removeprefix("nodes/controller-1/files") for p in files if p.startswith("nodes/controller-1/files/")}
    assert worker - {"/etc/vent/downloads.tsv"} < controller
    assert {"/etc/etcd/server.key", "/etc/etcd/peer.crt", "/var/lib/kubernetes/encryption-config.yaml",
            "/var/lib/kubernetes/pki/ca.key", "/var/lib/kubernetes/pki/service-accounts.key"} <= controller
    assert not any(p.startswith("/etc/vent/addons/") for p in controller), "only the first controller applies add-ons"


@pytest.mark.parametrize("bad", ["artifacts", "state"])
def test_out_and_state_must_not_nest(fresh, bad):
    args = ["--out", fresh / ".vent" / "a"] if bad == "artifacts" else ["--state", fresh / "artifacts" / "s"]
    result = cli("render", "-c", fresh / "cluster.yaml", *args)
    assert result.exit_code == 1 and "must not contain each other" in result.stderr


def test_a_hand_edit_in_artifacts_is_rendered_away(fresh):
    path = fresh / "artifacts/nodes/worker-0/files/etc/systemd/system/kubelet.service"
    original = path.read_text()
    path.write_text(original.replace("--v=2", "--v=9"))
    result = render(fresh / "cluster.yaml")
    assert "artifacts written" in result.stdout and "issued" not in result.stdout
    assert path.read_text() == original


def test_manifest_lists_every_artifact(rendered):
    import hashlib

    files = tree(rendered / "artifacts")
    lines = files.pop("MANIFEST").decode().splitlines()
    assert lines[0].startswith("vent-bake artifacts; inputs sha256:")
    listed = dict(reversed(line.split("  ", 1)) for line in lines[1:])
    assert listed == {p: hashlib.sha256(d).hexdigest() for p, d in files.items()}


def test_compiled_templates_change_no_byte(fresh, tmp_path):
    """A render compiling every template and one loading them compiled write the same tree."""
    expected = tree(fresh / "artifacts")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    for _ in ("compiling", "compiled"):
        shutil.rmtree(fresh / "artifacts")
        subprocess.run([sys.executable, "-m", "vent_bake", "render", "-c", fresh / "cluster.yaml"], env=env, check=True,
                       capture_output=True)
        assert tree(fresh / "artifacts") == expected
    assert list((tmp_path / "cache").rglob("*.cache")), "the compiled templates were kept"


def test_compiled_templates_are_read_only_from_a_directory_of_the_users_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    directory = templates.cache_directory()
    assert templates.bytecode_cache() is not None and stat.S_IMODE(directory.stat().st_mode) == 0o700
    directory.chmod(0o777)
    assert templates.bytecode_cache() is None, "others could put code there"
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a-file"))
    assert templates.bytecode_cache() is None, "no cache where none can be made: slower, not broken"


@pytest.mark.parametrize("kind", ["file", "symlink", "directory"])
def test_what_is_added_to_the_artifacts_is_rendered_away(fresh, kind):
    """A warm render lists no directory: what was added is seen by its directory's mtime, and
    anything but a rendered file is refused by the full check too."""
    render(fresh / "cluster.yaml")  # stamped again: `fresh` is a copy
    added = fresh / "artifacts/nodes/worker-0/files/etc/systemd/system/evil.service"
    {"file": lambda: added.write_text("[Service]\nExecStart=/bin/true\n"),
     "symlink": lambda: added.symlink_to("/etc/passwd"),
     "directory": lambda: added.mkdir()}[kind]()
    cache = json.loads((fresh / ".vent/artifacts.cache").read_text())
    assert fsutil.restamp(fresh / "artifacts", cache["paths"].split("\n"), 0)[0] != cache["stamp"]
    if kind != "file":
        result = cli("verify", "-c", fresh / "cluster.yaml")
        assert result.exit_code != 0 and "evil.service" in result.stderr and "not a file vent-bake rendered" in result.stderr
    assert "artifacts written" in render(fresh / "cluster.yaml").stdout
    assert not os.path.lexists(added)


def test_a_cache_with_other_sizes_is_ignored(fresh):
    render(fresh / "cluster.yaml")  # stamped again: `fresh` is a copy
    path = fresh / ".vent/artifacts.cache"
    cache = json.loads(path.read_text())
    sizes = cache["sizes"]
    for forged in ({**sizes, "worker-0": "big"}, {**sizes, "nosuch": 1}, {}):
        path.write_text(json.dumps({**cache, "sizes": forged}))
        result = render(fresh / "cluster.yaml")
        assert "artifacts unchanged" in result.stdout and "worker-0" in result.stdout


@pytest.mark.parametrize("change", ["edited", "added", "manifest"])
def test_a_change_in_the_clock_tick_of_the_stamp_is_still_seen(fresh, change):
    """The stat cache cannot vouch for what changed in the very clock tick it was stamped (a
    coarse clock, a fast disk): such a file is checked by its content, such a directory by its
    entries. The cache is forged here as a stamp taken just after the change would read."""
    unit = fresh / "artifacts/nodes/worker-1/files/etc/systemd/system/kubelet.service"
    original = unit.read_text()
    manifest = fresh / "artifacts/MANIFEST"
    listed = manifest.read_text()
    if change == "edited":
        unit.write_text(original.replace("--v=2", "--v=9"))  # the same size
        changed = unit
    elif change == "manifest":
        digest = listed.splitlines()[1][:64]
        manifest.write_text(listed.replace(digest, digest[::-1], 1))  # the same size
        changed = manifest
    else:
        (unit.parent / "evil.service").write_text("[Service]\n")
        changed = unit.parent
    path = fresh / ".vent/artifacts.cache"
    cache = json.loads(path.read_text())
    cache["stamp"], _ = fsutil.restamp(fresh / "artifacts", cache["paths"].split("\n"), 0)
    path.write_text(json.dumps(cache))
    ctime = os.stat(changed).st_ctime_ns

    os.utime(path, ns=(ctime + 10**9, ctime + 10**9))  # a tick later: the forged stamp is trusted
    assert "artifacts unchanged" in render(fresh / "cluster.yaml").stdout
    os.utime(path, ns=(ctime, ctime))  # the same tick: it is not
    assert "artifacts written" in render(fresh / "cluster.yaml").stdout
    assert unit.read_text() == original and not (unit.parent / "evil.service").exists() and manifest.read_text() == listed


def test_node_env_is_read_by_bash_as_written(tmp_path):
    """Every value in node.env is one shell word: sourcing it runs nothing, whatever a URL holds."""
    url = "https://m.example/meta;touch%20pwned&x=|(y)<z>"
    cluster = write_cluster(tmp_path, controllers=1, workers=0, **{"https://metadata.platformequinix.com/metadata": url})
    render(cluster)
    env = tmp_path / "artifacts/nodes/controller-0/files/etc/vent/node.env"
    out = subprocess.run(["bash", "-c", f'set -eu; . "{env}"; printf "%s\\n" "$METADATA_URL" "$NODE_NAME" "$CONTROLLERS"'],
                         cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert out == f"{url}\ncontroller-0\ncontroller-0=198.18.0.10\n"
    assert not (tmp_path / "pwned").exists()
