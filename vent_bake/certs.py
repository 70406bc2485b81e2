"""Which certificates a cluster needs (the KTHW set, made right for several controllers), and
the step that makes the state hold exactly those.

`plan` is pure: the cluster and the nodes' addresses in, certificate specs out. Names are the
certificates' names in the state directory (pki/<name>.crt and pki/<name>.key).
"""

import ipaddress
from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from vent_bake import pki
from vent_bake.config import DNS_SERVICE_INDEX, Cluster
from vent_bake.pki import CertSpec
from vent_bake.errors import StateError
from vent_bake.state import State

CLUSTER_CA = "ca"
ETCD_CA = "etcd-ca"  # etcd trusts only its own CA: no cluster-CA certificate opens etcd
# The aggregation layer's CA: the apiserver proxies to extension apiservers (metrics-server) as
# front-proxy-client, and they trust request headers only from a certificate of this CA.
FRONT_PROXY_CA = "front-proxy-ca"
FRONT_PROXY_USER = "front-proxy-client"
FLANNEL_USER = "vent:flannel"  # bound to the ClusterRole of the same name (manifests/flannel.yaml)


def node_cert(host: str) -> str:
    return f"nodes/{host}"


def etcd_cert(host: str, kind: str) -> str:
    return f"etcd/{host}-{kind}"


def service_ip(cluster: Cluster, index: int) -> str:
    return str(ipaddress.ip_network(cluster.network.service_cidr)[index])


def dns_ip(cluster: Cluster) -> str:
    return service_ip(cluster, DNS_SERVICE_INDEX)


def apiserver_names(cluster: Cluster) -> tuple[str, ...]:
    domain = cluster.network.cluster_domain
    names = ["kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster"]
    names.append(f"kubernetes.default.svc.{domain}")
    if cluster.network.api_endpoint:
        names.insert(0, cluster.network.api_endpoint)
    return tuple(dict.fromkeys(names))


def plan(cluster: Cluster, addresses: dict[str, str]) -> list[CertSpec]:
    """Every certificate of the cluster, CAs first."""
    ctl_ips = tuple(addresses[n.name] for n in cluster.controllers)
    specs = [
        CertSpec(CLUSTER_CA, f"{cluster.name} kubernetes CA", issuer=None),
        CertSpec(ETCD_CA, f"{cluster.name} etcd CA", issuer=None),
        CertSpec(FRONT_PROXY_CA, f"{cluster.name} front-proxy CA", issuer=None),
        CertSpec("admin", "admin", "system:masters", client=True),
        CertSpec("kube-controller-manager", "system:kube-controller-manager", "system:kube-controller-manager", client=True),
        CertSpec("kube-scheduler", "system:kube-scheduler", "system:kube-scheduler", client=True),
        CertSpec("kube-proxy", "system:kube-proxy", "system:node-proxier", client=True),
        CertSpec("flannel", FLANNEL_USER, client=True),
        CertSpec(
            "kube-apiserver", "kubernetes", server=True, dns=apiserver_names(cluster),
            ips=("127.0.0.1", service_ip(cluster, 1), *ctl_ips),
        ),
        # The apiserver's identity towards kubelets: user `kubernetes`, bound by the
        # system:kube-apiserver-to-kubelet ClusterRoleBinding, and nothing more.
        CertSpec("apiserver-kubelet-client", "kubernetes", client=True),
        CertSpec("apiserver-etcd-client", "kube-apiserver-etcd-client", issuer=ETCD_CA, client=True),
        CertSpec(FRONT_PROXY_USER, FRONT_PROXY_USER, issuer=FRONT_PROXY_CA, client=True),
    ]
    for node in cluster.nodes:
        specs.append(
            CertSpec(
                node_cert(node.name), f"system:node:{node.name}", "system:nodes",
                client=True, server=True, dns=(node.name,), ips=(addresses[node.name],),
            )
        )
    for node in cluster.controllers:
        # Server and client usage on both: etcd's gateway dials its own server, peers dial each other.
        for kind in ("server", "peer"):
            specs.append(
                CertSpec(
                    etcd_cert(node.name, kind), node.name, issuer=ETCD_CA, client=True, server=True,
                    dns=(node.name, "localhost"), ips=(addresses[node.name], "127.0.0.1"),
                )
            )
    return specs


# --- keeping the state's PKI in step with the plan ---------------------------------------------

SERVICE_ACCOUNTS = "service-accounts"
SERVICE_ACCOUNT_KEY = f"pki/{SERVICE_ACCOUNTS}.key"


def crt_path(name: str) -> str:
    return f"pki/{name}.crt"


def key_path(name: str) -> str:
    return f"pki/{name}.key"


def names(cluster: Cluster) -> frozenset[str]:
    """Every certificate's name, and the service-account key's: what `render --reissue` takes.
    (Names do not depend on the nodes' addresses.)"""
    stand_in = {n.name: "192.0.2.1" for n in cluster.nodes}
    return frozenset([s.name for s in plan(cluster, stand_in)] + [SERVICE_ACCOUNTS])


def files_of(name: str) -> list[str]:
    """The state files of a certificate (or of the service-account key)."""
    return [SERVICE_ACCOUNT_KEY] if name == SERVICE_ACCOUNTS else [crt_path(name), key_path(name)]


def ensure(cluster: Cluster, addresses: dict[str, str], state: State, replacing: Iterable[str] = ()) -> tuple[list[str], list[str]]:
    """Issue every certificate that is missing or no longer fits; drop those no longer planned.

    A leaf whose names, addresses or usages changed is issued again, with a new key. A CA, or
    the service-account key, is replaced only when `replacing` names it (`render --reissue`):
    everything a cluster trusts hangs on them. Returns (issued, dropped) certificate names.
    """
    algorithm, validity = cluster.pki.key_algorithm, cluster.pki
    cas: dict[str, tuple] = {}
    issued: list[str] = []
    planned = plan(cluster, addresses)
    _refuse_new_cas(planned, algorithm, state, replacing)
    for spec in planned:
        ca = cas.get(spec.issuer) if spec.issuer else None
        pem = state.get(crt_path(spec.name))
        cert = x509.load_pem_x509_certificate(pem) if pem else None
        why = pki.misfit(cert, spec, algorithm, ca and ca[0]) if cert else "missing"
        if why:
            key = pki.new_key(algorithm)
            ca_cert, ca_key = (ca[0], ca[1]()) if ca else (None, None)
            cert = pki.issue(spec, key, validity.ca_days if spec.is_ca else validity.leaf_days, ca_cert, ca_key)
            state.put(key_path(spec.name), pki.key_pem(key))
            state.put(crt_path(spec.name), pki.cert_pem(cert))
            issued.append(spec.name)
        if spec.is_ca:
            cas[spec.name] = (cert, _key_loader(state, spec.name))
    sa = state.get(SERVICE_ACCOUNT_KEY)
    if sa is not None and not pki.key_fits(serialization.load_pem_private_key(sa, None).public_key(), algorithm):
        raise StateError(
            f"{state.root / SERVICE_ACCOUNT_KEY}: its key is not {algorithm}; `vent-bake render --reissue service-accounts`"
            " replaces it (every service-account token issued with it stops working)"
        )
    if sa is None:
        state.put(SERVICE_ACCOUNT_KEY, pki.key_pem(pki.new_key(algorithm)))
        issued.append(SERVICE_ACCOUNTS)
    keep = {p for s in planned for p in files_of(s.name)} | {SERVICE_ACCOUNT_KEY}
    dropped = sorted({n.removeprefix("pki/").rsplit(".", 1)[0] for n in state.files if n.startswith("pki/") and n not in keep})
    for name in dropped:
        state.drop(crt_path(name))
        state.drop(key_path(name))
    return issued, dropped


def _refuse_new_cas(planned: list[CertSpec], algorithm: str, state: State, replacing: Iterable[str]) -> None:
    """A CA is replaced only on the operator's word: one line naming every CA the cluster file
    now asks to replace, and the flags that would."""
    misfits = []
    for spec in planned:
        pem = state.get(crt_path(spec.name)) if spec.is_ca and spec.name not in replacing else None
        why = pki.misfit(x509.load_pem_x509_certificate(pem), spec, algorithm, None) if pem else None
        if why:
            misfits.append((spec.name, why))
    if misfits:
        name, why = misfits[0]
        flags = " ".join(f"--reissue {n}" for n, _ in misfits)
        raise StateError(
            f"{state.root / crt_path(name)}: the cluster file asks for another CA ({why}); `vent-bake render {flags}`"
            " replaces it and every certificate it signed (nodes booted with it must boot again)"
        )


def _key_loader(state: State, name: str):
    """A CA key is parsed only if something is signed with it (a warm render signs nothing)."""
    loaded = []

    def load():
        if not loaded:
            loaded.append(serialization.load_pem_private_key(state.get(key_path(name)), None))
        return loaded[0]

    return load
