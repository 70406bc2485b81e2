"""Every kubeconfig, revealed as a node gets it, loads in the Kubernetes client as the right identity."""

import base64
import subprocess
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from kubernetes import client, config as kube_config

from conftest import revealed_kubeconfig
from tools import need_built
from vent_bake import secrets
from vent_bake.state import State

# kubeconfig (under artifacts/) -> (user, server)
LOCAL_API, BALANCER = "https://127.0.0.1:6443", "https://127.0.0.1:7443"
KUBECONFIGS = {
    "admin.kubeconfig": ("admin", "https://198.18.0.10:6443"),
    "nodes/controller-0/files/var/lib/kubernetes/admin.kubeconfig": ("admin", LOCAL_API),
    "nodes/controller-0/files/var/lib/kubernetes/kube-controller-manager.kubeconfig": ("system:kube-controller-manager", LOCAL_API),
    "nodes/controller-0/files/var/lib/kubernetes/kube-scheduler.kubeconfig": ("system:kube-scheduler", LOCAL_API),
    "nodes/worker-1/files/var/lib/kube-proxy/kubeconfig": ("system:kube-proxy", BALANCER),
    "nodes/worker-1/files/var/lib/flannel/kubeconfig": ("vent:flannel", BALANCER),
    "nodes/worker-1/files/var/lib/kubelet/kubeconfig": ("system:node:worker-1", BALANCER),
    "nodes/controller-2/files/var/lib/kubelet/kubeconfig": ("system:node:controller-2", BALANCER),
}


@pytest.mark.parametrize("rel", sorted(KUBECONFIGS))
def test_kubeconfig_loads_as_its_identity(rendered, rel, tmp_path):
    user, server = KUBECONFIGS[rel]
    path = revealed_kubeconfig(rendered, rel, tmp_path)
    doc = yaml.safe_load(path.read_text())
    assert doc["clusters"][0]["name"] == "vent" and doc["users"][0]["name"] == user

    conf = client.Configuration()
    kube_config.load_kube_config(config_file=str(path), client_configuration=conf)
    assert conf.host == server
    cert = x509.load_pem_x509_certificate(Path(conf.cert_file).read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == user
    ca = x509.load_pem_x509_certificate(Path(conf.ssl_ca_cert).read_bytes())
    cert.verify_directly_issued_by(ca)
    out = subprocess.run(["openssl", "pkey", "-in", conf.key_file, "-pubout"], capture_output=True, text=True, check=True)
    spki = cert.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert out.stdout.encode() == spki


def test_admin_kubeconfig_in_kubectl(rendered):
    (kubectl,) = need_built("kubectl")  # kubectl v1.36.0, as `vent-bake lab build` makes it
    out = subprocess.run(
        [kubectl, "config", "view", "--raw", "--minify", "--kubeconfig", str(rendered / ".vent/admin.kubeconfig")],
        capture_output=True, text=True, check=True,
    )
    view = yaml.safe_load(out.stdout)
    assert view["current-context"] == "vent"
    assert view["clusters"][0]["cluster"]["server"] == "https://198.18.0.10:6443"
    assert view["users"][0]["user"]["client-key-data"]


def test_state_admin_kubeconfig_is_the_revealed_artifact(rendered, tmp_path):
    assert revealed_kubeconfig(rendered, "admin.kubeconfig", tmp_path).read_text() == (rendered / ".vent/admin.kubeconfig").read_text()


def test_encryption_config(rendered):
    state = State.load(rendered / ".vent")
    text = (rendered / "artifacts/nodes/controller-1/files/var/lib/kubernetes/encryption-config.yaml").read_text()
    doc = yaml.safe_load(secrets.reveal(text, state.secret))
    assert doc["kind"] == "EncryptionConfiguration" and doc["apiVersion"] == "apiserver.config.k8s.io/v1"
    providers = doc["resources"][0]["providers"]
    assert list(providers[0]) == ["secretbox"] and providers[1] == {"identity": {}}
    assert len(base64.b64decode(providers[0]["secretbox"]["keys"][0]["secret"])) == 32
