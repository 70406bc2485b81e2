"""Every certificate, checked by openssl against the CA it must chain to, for its purpose and SANs.

The expectations are written out here, from KTHW.md, rather than derived from the code.
"""

import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from conftest import render, write_cluster

CONTROLLERS = {"controller-0": "198.18.0.10", "controller-1": "198.18.0.11", "controller-2": "198.18.0.12"}
NODES = {**CONTROLLERS, "worker-0": "198.18.1.10", "worker-1": "198.18.1.11"}
APISERVER_DNS = ["kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster",
                 "kubernetes.default.svc.cluster.local"]

# name -> (CA, subject, purposes it must pass, purposes it must fail, IP SANs, DNS SANs)
EXPECTED = {
    "admin": ("ca", "O=system:masters, CN=admin", ["sslclient"], ["sslserver"], [], []),
    "kube-controller-manager": ("ca", "O=system:kube-controller-manager, CN=system:kube-controller-manager", ["sslclient"], ["sslserver"], [], []),
    "kube-scheduler": ("ca", "O=system:kube-scheduler, CN=system:kube-scheduler", ["sslclient"], ["sslserver"], [], []),
    "kube-proxy": ("ca", "O=system:node-proxier, CN=system:kube-proxy", ["sslclient"], ["sslserver"], [], []),
    "flannel": ("ca", "CN=vent:flannel", ["sslclient"], ["sslserver"], [], []),
    "kube-apiserver": ("ca", "CN=kubernetes", ["sslserver"], ["sslclient"], ["127.0.0.1", "172.31.0.1", *CONTROLLERS.values()], APISERVER_DNS),
    "apiserver-kubelet-client": ("ca", "CN=kubernetes", ["sslclient"], ["sslserver"], [], []),
    "apiserver-etcd-client": ("etcd-ca", "CN=kube-apiserver-etcd-client", ["sslclient"], ["sslserver"], [], []),
    "front-proxy-client": ("front-proxy-ca", "CN=front-proxy-client", ["sslclient"], ["sslserver"], [], []),
    **{f"nodes/{h}": ("ca", f"O=system:nodes, CN=system:node:{h}", ["sslclient", "sslserver"], [], [ip], [h]) for h, ip in NODES.items()},
    **{f"etcd/{h}-{kind}": ("etcd-ca", f"CN={h}", ["sslclient", "sslserver"], [], [ip, "127.0.0.1"], [h, "localhost"])
       for h, ip in CONTROLLERS.items() for kind in ("server", "peer")},
}


def openssl(*args: str, check=True) -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=check)


def verify(ca: Path, cert: Path, *extra: str) -> subprocess.CompletedProcess:
    return openssl("verify", "-x509_strict", "-CAfile", str(ca), *extra, str(cert), check=False)


def test_the_set_is_complete(rendered):
    certs = {p.relative_to(rendered / "artifacts/pki").with_suffix("").as_posix() for p in (rendered / "artifacts/pki").rglob("*.crt")}
    assert certs == set(EXPECTED) | {"ca", "etcd-ca", "front-proxy-ca"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_certificate(rendered, name):
    ca_name, subject, good, bad, ips, dns = EXPECTED[name]
    pki = rendered / "artifacts/pki"
    cert, ca = pki / f"{name}.crt", pki / f"{ca_name}.crt"
    other_ca = pki / ("ca.crt" if ca_name == "etcd-ca" else "etcd-ca.crt")
    assert openssl("x509", "-in", str(cert), "-noout", "-subject", "-nameopt", "sep_comma_plus_space").stdout.strip() == f"subject={subject}"
    for purpose in good:
        assert verify(ca, cert, "-purpose", purpose).returncode == 0, purpose
    for purpose in bad:
        assert verify(ca, cert, "-purpose", purpose).returncode != 0, f"{name} must not pass as {purpose}"
    for ip in ips:
        assert verify(ca, cert, "-verify_ip", ip).returncode == 0, ip
    for host in dns:
        assert verify(ca, cert, "-verify_hostname", host).returncode == 0, host
    assert verify(ca, cert, "-verify_ip", "198.18.99.99").returncode != 0
    assert verify(other_ca, cert).returncode != 0, "etcd and the cluster must not trust each other's certificates"
    # each key matches its certificate
    key = rendered / ".vent/pki" / f"{name}.key"
    assert openssl("pkey", "-in", str(key), "-pubout").stdout == openssl("x509", "-in", str(cert), "-noout", "-pubkey").stdout
    # the exact SAN set, nothing more
    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    if ips or dns:
        san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sorted(str(i) for i in san.get_values_for_type(x509.IPAddress)) == sorted(ips)
        assert sorted(san.get_values_for_type(x509.DNSName)) == sorted(dns)
    assert parsed.extensions.get_extension_for_class(x509.BasicConstraints).critical
    assert parsed.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert parsed.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    assert (parsed.not_valid_after_utc - parsed.not_valid_before_utc).days == 365  # leaf_days + backdating hour


@pytest.mark.parametrize("ca", ["ca", "etcd-ca"])
def test_certificate_authorities(rendered, ca):
    path = rendered / "artifacts/pki" / f"{ca}.crt"
    assert verify(path, path, "-purpose", "any").returncode == 0
    text = openssl("x509", "-in", str(path), "-noout", "-text").stdout
    assert "CA:TRUE, pathlen:0" in text and "Certificate Sign, CRL Sign" in text
    parsed = x509.load_pem_x509_certificate(path.read_bytes())
    assert (parsed.not_valid_after_utc - parsed.not_valid_before_utc).days == 3650


def test_service_account_key_pair(rendered):
    pub = openssl("pkey", "-in", str(rendered / ".vent/pki/service-accounts.key"), "-pubout").stdout
    assert pub == (rendered / "artifacts/pki/service-accounts.pub").read_text()


def test_rsa_keys_and_validity_are_selectable(tmp_path):
    cluster = write_cluster(tmp_path, 1, 1, **{"key_algorithm: ecdsa-p256": "key_algorithm: rsa-2048",
                                               "leaf_days: 365": "leaf_days: 90", "ca_days: 3650": "ca_days: 1000"})
    render(cluster)
    pki = tmp_path / "artifacts/pki"
    node = x509.load_pem_x509_certificate((pki / "nodes/worker-0.crt").read_bytes())
    assert isinstance(node.public_key(), rsa.RSAPublicKey) and node.public_key().key_size == 2048
    assert node.extensions.get_extension_for_class(x509.KeyUsage).value.key_encipherment
    assert (node.not_valid_after_utc - node.not_valid_before_utc).days == 90
    ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    assert (ca.not_valid_after_utc - ca.not_valid_before_utc).days == 1000
    assert verify(pki / "ca.crt", pki / "nodes/worker-0.crt", "-purpose", "sslserver", "-verify_ip", "198.18.1.10").returncode == 0
