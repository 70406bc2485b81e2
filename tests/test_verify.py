"""`vent-bake verify`: the untouched bundle verifies clean; each way of tampering with a copy
of it gives its exact finding."""

import datetime
import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import cli
from vent_bake import pki, secrets
from vent_bake.pki import CertSpec
from vent_bake.state import State


def verify(root, *args):
    result = cli("verify", "-c", root / "cluster.yaml", *args)
    return result.exit_code, result.stdout.splitlines()


def errors(lines):
    return [line for line in lines if line.startswith("error: ")]


def test_untouched_bundle_verifies_clean(rendered):
    code, lines = verify(rendered)
    assert (code, lines) == (0, ["bundle verified: no findings"])


def test_json_findings(fresh):
    (fresh / "artifacts/nodes/worker-0/files/etc/crictl.yaml").write_text("changed\n")
    result = cli("verify", "-c", fresh / "cluster.yaml", "--json")
    findings = json.loads(result.stdout)
    assert {(f["check"], f["level"]) for f in findings} >= {("manifest", "error")}


def sign(root, spec: CertSpec, *, not_before=None, not_after=None):
    """A certificate for spec in the artifacts, signed by the bundle's real CA: a tamperer with
    the CA key, who cannot change the state too (every command refuses a changed state)."""
    ca_key = serialization.load_pem_private_key((root / ".vent/pki/ca.key").read_bytes(), None)
    ca = x509.load_pem_x509_certificate((root / ".vent/pki/ca.crt").read_bytes())
    cert = pki.issue(spec, serialization.load_pem_private_key((root / f".vent/pki/{spec.name}.key").read_bytes(), None), 365, ca, ca_key)
    if not_before:
        builder = (x509.CertificateBuilder().subject_name(cert.subject).issuer_name(cert.issuer).public_key(cert.public_key())
                   .serial_number(cert.serial_number).not_valid_before(not_before).not_valid_after(not_after))
        for ext in cert.extensions:
            builder = builder.add_extension(ext.value, ext.critical)
        cert = builder.sign(ca_key, hashes.SHA256())
    (root / f"artifacts/pki/{spec.name}.crt").write_bytes(pki.cert_pem(cert))


def test_swapped_key_in_the_state_stops_verify(fresh):
    (fresh / ".vent/pki/admin.key").write_bytes((fresh / ".vent/pki/kube-proxy.key").read_bytes())
    result = cli("verify", "-c", fresh / "cluster.yaml")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith(f"error: {fresh / '.vent/pki/admin.key'}: changed since vent-bake wrote it"
                                    " (it and pki/admin.crt are not a pair)")


def test_swapped_certificate(fresh):
    (fresh / "artifacts/pki/admin.crt").write_bytes((fresh / "artifacts/pki/kube-proxy.crt").read_bytes())
    code, lines = verify(fresh)
    assert code == 1
    assert "error: pki/admin.crt: does not match its key pki/admin.key" in lines
    assert "error: pki/admin.crt: differs from the state's certificate" in lines


def test_dropped_san(fresh):
    ips = ("127.0.0.1", "172.31.0.1", "198.18.0.10", "198.18.0.12")  # controller-1's 198.18.0.11 left out
    dns = ("kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster", "kubernetes.default.svc.cluster.local")
    sign(fresh, CertSpec("kube-apiserver", "kubernetes", server=True, dns=dns, ips=ips))
    code, lines = verify(fresh)
    assert code == 1
    assert "error: pki/kube-apiserver.crt: lacks the SAN 198.18.0.11" in lines
    assert "error: pki/kube-apiserver.crt: changed since it was rendered" in lines


def test_expired_certificate(fresh):
    long_ago = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    sign(fresh, CertSpec("admin", "admin", "system:masters", client=True), not_before=long_ago, not_after=long_ago + datetime.timedelta(days=30))
    code, lines = verify(fresh)
    assert code == 1 and "error: pki/admin.crt: not valid now (valid 2020-01-01 to 2020-01-31)" in lines


def test_certificates_expiring_soon_are_warnings(rendered):
    code, lines = verify(rendered, "--days", "400")
    assert code == 0
    assert any(line.startswith("warning: pki/admin.crt: expires ") and line.endswith("within 400 days") for line in lines)
    assert not any(line.startswith("warning: pki/ca.crt") for line in lines)  # the CA lasts ten years


def test_deleted_referenced_file(fresh):
    (fresh / "artifacts/nodes/worker-0/files/var/lib/kubelet/kubelet-config.yaml").unlink()
    code, lines = verify(fresh)
    assert code == 1
    assert ("error: nodes/worker-0/files/etc/systemd/system/kubelet.service: refers to /var/lib/kubelet/kubelet-config.yaml,"
            " which the node's userdata neither writes nor installs") in lines
    assert "error: nodes/worker-0/files/var/lib/kubelet/kubelet-config.yaml: missing" in lines


def test_stale_marker(fresh):
    path = fresh / "artifacts/nodes/worker-0/userdata"
    text = path.read_text()
    start = text.index("vent-secret:pki/nodes/worker-0.key:b64:sha256:") + len("vent-secret:pki/nodes/worker-0.key:b64:sha256:")
    path.write_text(text[:start] + "0" * 64 + text[start + 64:])
    code, lines = verify(fresh)
    assert code == 1
    assert "error: nodes/worker-0/userdata: its marker for pki/nodes/worker-0.key is stale: the state's secret has another sha256" in lines


def test_oversize_userdata(fresh):
    path = fresh / "artifacts/nodes/worker-1/userdata"
    path.write_text(path.read_text() + "# padding\n" * 1000)
    code, lines = verify(fresh)
    size = len(secrets.reveal(path.read_text(), State.load(fresh / ".vent").secret).encode())
    assert f"warning: nodes/worker-1/userdata: revealed userdata is {size} bytes, over the worker budget of 8192" in lines
    assert code == 1 and errors(lines) == ["error: nodes/worker-1/userdata: changed since it was rendered"]


def test_private_key_in_the_tree(fresh):
    key = ec.generate_private_key(ec.SECP256R1())
    (fresh / "artifacts/pki/leak.crt").write_bytes(pki.key_pem(key))
    code, lines = verify(fresh)
    assert code == 1 and "error: pki/leak.crt: holds a private key" in lines


def test_controller_secret_on_a_worker(fresh):
    path = fresh / "artifacts/nodes/worker-0/userdata"
    ca_marker = (fresh / "artifacts/nodes/controller-0/files/var/lib/kubernetes/pki/ca.key").read_text().replace(":raw:", ":b64:")
    path.write_text(path.read_text().replace("runcmd:", f"  - path: /root/ca.key\n    encoding: b64\n    content: {ca_marker}\nruncmd:"))
    code, lines = verify(fresh)
    assert code == 1 and "error: nodes/worker-0/userdata: carries pki/ca.key, which a worker must not hold" in lines


EDITS = {  # one artifact edited in place -> the finding it must give
    "fetch list": ("nodes/worker-0/fetch.list", "0644 /etc/crictl.yaml", "0755 /etc/crictl.yaml",
                   "error: nodes/worker-0/userdata: pins another fetch.list than the one beside it"),
    "fetched file": ("nodes/worker-0/files/etc/crictl.yaml", "runtime-endpoint", "image-endpoint",
                     "error: nodes/worker-0/fetch.list: /etc/crictl.yaml: its sha256 is not the file's in files/"),
    "range": ("nodes/worker-1/files/var/lib/kube-proxy/kube-proxy-config.yaml", "172.16.0.0/16", "172.20.0.0/16",
              "error: nodes/worker-1/files/var/lib/kube-proxy/kube-proxy-config.yaml: clusterCIDR is 172.20.0.0/16,"
              " the cluster file says 172.16.0.0/16"),
    "kubeconfig server": ("admin.kubeconfig", "https://198.18.0.10:6443", "https://203.0.113.7:6443",
                          "error: admin.kubeconfig: its server https://203.0.113.7:6443 is not named by the apiserver certificate"),
    "kubeconfig identity": ("nodes/worker-0/files/var/lib/kube-proxy/kubeconfig", "/var/lib/kube-proxy/kube-proxy.crt",
                            "/var/lib/kubelet/kubelet.crt",
                            "error: nodes/worker-0/files/var/lib/kube-proxy/kubeconfig: authenticates as system:node:worker-0,"
                            " its role needs system:kube-proxy"),
}


@pytest.mark.parametrize("case", sorted(EDITS))
def test_edited_artifact(fresh, case):
    rel, old, new, finding = EDITS[case]
    path = fresh / "artifacts" / rel
    assert old in path.read_text()
    path.write_text(path.read_text().replace(old, new))
    code, lines = verify(fresh)
    assert code == 1 and finding in lines


def test_binary_without_a_digest(fresh):
    path = fresh / "artifacts/nodes/worker-0/files/etc/vent/downloads.tsv"
    rows = [r.split("\t") for r in path.read_text().splitlines()]
    rows[0][3] = "latest"
    path.write_text("".join("\t".join(r) + "\n" for r in rows))
    code, lines = verify(fresh)
    assert code == 1 and "error: nodes/worker-0/files/etc/vent/downloads.tsv: /usr/local/bin/kubelet has no digest" in lines


def test_artifacts_stale_against_the_cluster_file(fresh):
    cluster = fresh / "cluster.yaml"
    cluster.write_text(cluster.read_text().replace("leaf_days: 365", "leaf_days: 200"))
    code, lines = verify(fresh)
    assert code == 1
    assert lines[0] == "error: MANIFEST: the artifacts were rendered from another cluster file or state; run `vent-bake render` and review"
