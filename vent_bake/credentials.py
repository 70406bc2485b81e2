"""Each node's credentials: certificates, keys (as markers) and kubeconfigs, by least privilege.

Every node: the cluster CA, its own kubelet identity, kube-proxy's and flannel's. Controllers
also get the cluster CA's key (the controller-manager signs with it), the apiserver's and
etcd's credentials, the service-account key pair and the encryption config; the first
controller also gets an admin credential, to apply the add-ons.
"""

from vent_bake import certs, templates
from vent_bake.bundle import File
from vent_bake.config import Node
from vent_bake.state import ENCRYPTION_KEY

KUBE = "/var/lib/kubernetes"
PKI = f"{KUBE}/pki"
CA = f"{PKI}/ca.crt"
ETCD = "/etc/etcd"


def _identity(ctx, name: str, directory: str, stem: str) -> dict:
    """A certificate and its key (a marker) as files in `directory`."""
    return {
        f"{directory}/{stem}.crt": File(ctx.cert(name)),
        f"{directory}/{stem}.key": File(ctx.key(name), 0o600),
    }


def _client(ctx, name: str, user: str, directory: str, stem: str, kubeconfig: str, server: str) -> dict:
    """An identity plus the kubeconfig that uses it."""
    files = _identity(ctx, name, directory, stem)
    files[kubeconfig] = ctx.kubeconfig(name, user, server, (CA, f"{directory}/{stem}.crt", f"{directory}/{stem}.key"))
    return files


def files(ctx, node: Node) -> dict[str, File]:
    net = ctx.cluster.network
    balancer = ctx.url("127.0.0.1", net.balancer_port)
    out = {CA: File(ctx.cert(certs.CLUSTER_CA))}
    out |= _client(ctx, certs.node_cert(node.name), f"system:node:{node.name}", "/var/lib/kubelet", "kubelet",
                   "/var/lib/kubelet/kubeconfig", balancer)
    out |= _client(ctx, "kube-proxy", "system:kube-proxy", "/var/lib/kube-proxy", "kube-proxy",
                   "/var/lib/kube-proxy/kubeconfig", balancer)
    out |= _client(ctx, "flannel", certs.FLANNEL_USER, "/var/lib/flannel", "flannel", "/var/lib/flannel/kubeconfig", balancer)
    if ctx.cluster.role(node) != "controller":
        return out

    local_api = ctx.url("127.0.0.1", net.api_port)
    for name in ("kube-controller-manager", "kube-scheduler"):
        out |= _client(ctx, name, f"system:{name}", PKI, name, f"{KUBE}/{name}.kubeconfig", local_api)
    if ctx.cluster.is_first_controller(node):
        out |= _client(ctx, "admin", "admin", PKI, "admin", f"{KUBE}/admin.kubeconfig", local_api)
    for name in ("kube-apiserver", "apiserver-kubelet-client", "apiserver-etcd-client"):
        out |= _identity(ctx, name, PKI, name)
    out |= {
        f"{PKI}/ca.key": File(ctx.key(certs.CLUSTER_CA), 0o600),
        f"{PKI}/service-accounts.key": File(ctx.secret(certs.SERVICE_ACCOUNT_KEY), 0o600),
        f"{PKI}/service-accounts.pub": File(ctx.service_account_public),
        f"{KUBE}/encryption-config.yaml": File(
            templates.render(
                "configs/encryption-config.yaml",
                provider=ctx.cluster.pki.encryption_provider,
                secret=ctx.secret(ENCRYPTION_KEY),
            ),
            0o600,
        ),
        f"{ETCD}/ca.crt": File(ctx.cert(certs.ETCD_CA)),
    }
    for kind in ("server", "peer"):
        out |= _identity(ctx, certs.etcd_cert(node.name, kind), ETCD, kind)
    return out
