"""Each node's credentials, by least privilege: which identities and keys a node holds, stated
once here, and read by the render (files), by `verify` and by every reveal (secrets).

Every node: the cluster CA, its own kubelet identity, kube-proxy's and flannel's. Controllers
also get the cluster CA's key (the controller-manager signs with it), the apiserver's and
etcd's credentials, the service-account key pair and the encryption config; the first
controller also gets an admin credential, to apply the add-ons.
"""

from dataclasses import dataclass

from vent_bake import certs, templates
from vent_bake.bundle import File
from vent_bake.config import Cluster, Node
from vent_bake.context import Context
from vent_bake.state import ENCRYPTION_KEY

KUBE = "/var/lib/kubernetes"
PKI = f"{KUBE}/pki"
CA = f"{PKI}/ca.crt"
ETCD = "/etc/etcd"
ENCRYPTION_CONFIG = f"{KUBE}/encryption-config.yaml"


@dataclass(frozen=True)
class Identity:
    """A certificate and its key as files `<directory>/<stem>.crt|.key` on the node, and the
    kubeconfig that uses them, if any (reaching the API through `server`)."""

    cert: str  # the certificate's name in the state
    directory: str
    stem: str
    kubeconfig: str | None = None
    user: str = ""
    server: str = "balancer"  # "balancer": 127.0.0.1:<balancer_port>; "local": the controller's own apiserver

    @property
    def files(self) -> tuple[str, str]:
        return f"{self.directory}/{self.stem}.crt", f"{self.directory}/{self.stem}.key"


def identities(cluster: Cluster, node: Node) -> list[Identity]:
    out = [
        Identity(certs.node_cert(node.name), "/var/lib/kubelet", "kubelet", "/var/lib/kubelet/kubeconfig", f"system:node:{node.name}"),
        Identity("kube-proxy", "/var/lib/kube-proxy", "kube-proxy", "/var/lib/kube-proxy/kubeconfig", "system:kube-proxy"),
        Identity("flannel", "/var/lib/flannel", "flannel", "/var/lib/flannel/kubeconfig", certs.FLANNEL_USER),
    ]
    if cluster.role(node) != "controller":
        return out
    for name in ("kube-controller-manager", "kube-scheduler"):
        out.append(Identity(name, PKI, name, f"{KUBE}/{name}.kubeconfig", f"system:{name}", "local"))
    if cluster.is_first_controller(node):
        out.append(Identity("admin", PKI, "admin", f"{KUBE}/admin.kubeconfig", "admin", "local"))
    out += [Identity(name, PKI, name) for name in ("kube-apiserver", "apiserver-kubelet-client", "apiserver-etcd-client",
                                                    certs.FRONT_PROXY_USER)]
    out += [Identity(certs.etcd_cert(node.name, kind), ETCD, kind) for kind in ("server", "peer")]
    return out


# Keys a controller holds besides its identities': state path -> path on the node.
CONTROLLER_KEYS = {
    certs.key_path(certs.CLUSTER_CA): f"{PKI}/ca.key",  # the controller-manager's signer
    certs.SERVICE_ACCOUNT_KEY: f"{PKI}/service-accounts.key",
}


def secrets(cluster: Cluster, node: Node) -> frozenset[str]:
    """Every secret (its state path) this node may hold: what its userdata may carry."""
    keys = {certs.key_path(i.cert) for i in identities(cluster, node)}
    if cluster.role(node) == "controller":
        keys |= {*CONTROLLER_KEYS, ENCRYPTION_KEY}
    return frozenset(keys)


def files(ctx: Context, node: Node) -> dict[str, File]:
    """The node's credential files; every secret is carried by its userdata."""
    net = ctx.cluster.network
    servers = {"balancer": ctx.url("127.0.0.1", net.balancer_port), "local": ctx.url("127.0.0.1", net.api_port)}
    out = {CA: File(ctx.cert(certs.CLUSTER_CA))}
    for identity in identities(ctx.cluster, node):
        crt, key = identity.files
        out[crt] = File(ctx.cert(identity.cert))
        out[key] = File(ctx.key(identity.cert), 0o600, carried=True)
        if identity.kubeconfig:
            out[identity.kubeconfig] = ctx.kubeconfig(identity.cert, identity.user, servers[identity.server], (CA, crt, key))
    if ctx.cluster.role(node) != "controller":
        return out
    out |= {path: File(ctx.secret(name), 0o600, carried=True) for name, path in CONTROLLER_KEYS.items()}
    out |= {
        f"{PKI}/service-accounts.pub": File(ctx.service_account_public),
        ENCRYPTION_CONFIG: File(
            templates.render(
                "configs/encryption-config.yaml",
                provider=ctx.cluster.pki.encryption_provider,
                secret=ctx.secret(ENCRYPTION_KEY),
            ),
            0o600,
            carried=True,
        ),
        f"{ETCD}/ca.crt": File(ctx.cert(certs.ETCD_CA)),
        f"{PKI}/front-proxy-ca.crt": File(ctx.cert(certs.FRONT_PROXY_CA)),
    }
    return out
