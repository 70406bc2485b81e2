"""Render: a pure function of (cluster, state) to the bundle of every file the cluster needs.

Nothing here reads or writes disk or network; the CLI does I/O before and after. Secrets
appear only as markers (vent_bake.secrets), so the bundle is safe to commit and review.
"""

import base64
from dataclasses import dataclass, field
from functools import cached_property

from cryptography.hazmat.primitives import serialization

from vent_bake import certs, pki, secrets, templates
from vent_bake.config import Cluster, Node
from vent_bake.errors import StateError
from vent_bake.state import ENCRYPTION_KEY, State

KUBE = "/var/lib/kubernetes"
KUBELET = "/var/lib/kubelet"
ETCD = "/etc/etcd"


@dataclass(frozen=True)
class File:
    content: str
    mode: int = 0o644

    @property
    def secret(self) -> bool:
        return bool(secrets.markers(self.content))


@dataclass
class NodeBundle:
    node: Node
    role: str
    files: dict[str, File] = field(default_factory=dict)  # absolute path on the node -> file


@dataclass
class Bundle:
    shared: dict[str, File]  # path in the artifacts tree -> file
    nodes: dict[str, NodeBundle]

    def tree(self) -> dict[str, bytes]:
        """The artifacts directory: shared files, and each node's files under nodes/<host>/files/."""
        out = {path: f.content.encode() for path, f in self.shared.items()}
        for host, nb in self.nodes.items():
            for path, f in nb.files.items():
                out[f"nodes/{host}/files{path}"] = f.content.encode()
        return out


def addresses(cluster: Cluster, state: State) -> dict[str, str]:
    """Each node's reserved address: from the cluster file, or as `vent-bake reserve` recorded it."""
    reserved = state.reserved_addresses()
    out = {}
    for node in cluster.nodes:
        addr = node.address or reserved.get(node.name)
        if addr is None:
            raise StateError(
                f"node {node.name} has no address: run `vent-bake reserve`, or set its address in the cluster file"
            )
        out[node.name] = addr
    return out


class Context:
    """What every step of the render reads: the cluster, the state and the nodes' addresses."""

    def __init__(self, cluster: Cluster, state: State):
        self.cluster, self.state = cluster, state
        self.addresses = addresses(cluster, state)
        self._kubeconfigs: dict[tuple, File] = {}

    @cached_property
    def service_account_public(self) -> str:
        key = serialization.load_pem_private_key(self.state.secret(certs.SERVICE_ACCOUNT_KEY), None)
        return pki.public_pem(key).decode()

    def cert(self, name: str) -> str:
        return self.state.secret(certs.crt_path(name)).decode()

    def key(self, name: str, enc: str = "raw") -> str:
        path = certs.key_path(name)
        return secrets.marker(path, self.state.secret(path), enc)

    def kubeconfig(self, name: str, user: str, server: str) -> File:
        """A kubeconfig with certificates embedded (kube-proxy's is the same on every node)."""
        if (name, server) in self._kubeconfigs:
            return self._kubeconfigs[name, server]
        content = templates.render(
            "configs/kubeconfig.yaml",
            cluster=self.cluster.name,
            server=server,
            user=user,
            ca_data=_b64(self.cert(certs.CLUSTER_CA)),
            cert_data=_b64(self.cert(name)),
            key_data=self.key(name, "b64"),
        )
        self._kubeconfigs[name, server] = File(content, 0o600)
        return self._kubeconfigs[name, server]

    def api_url(self, host: str, port: int) -> str:
        return f"https://{host}:{port}"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def render(cluster: Cluster, state: State) -> Bundle:
    ctx = Context(cluster, state)
    net = cluster.network
    first = cluster.controllers[0]
    admin_host = net.api_endpoint or ctx.addresses[first.name]
    shared = {
        "admin.kubeconfig": ctx.kubeconfig("admin", "admin", ctx.api_url(admin_host, net.api_port)),
        "pki/service-accounts.pub": File(ctx.service_account_public),
    }
    for spec in certs.plan(cluster, ctx.addresses):
        shared[f"pki/{spec.name}.crt"] = File(ctx.cert(spec.name))
    nodes = {}
    for node in cluster.nodes:
        nb = NodeBundle(node, cluster.role(node))
        nb.files.update(node_credentials(ctx, node))
        if nb.role == "controller":
            nb.files.update(controller_credentials(ctx, node))
        nodes[node.name] = nb
    return Bundle(shared, nodes)


def node_credentials(ctx: Context, node: Node) -> dict[str, File]:
    """What every node holds: the cluster CA, its own kubelet identity and kube-proxy's."""
    local_api = ctx.api_url("127.0.0.1", ctx.cluster.network.balancer_port)
    name = certs.node_cert(node.name)
    return {
        f"{KUBE}/pki/ca.crt": File(ctx.cert(certs.CLUSTER_CA)),
        f"{KUBELET}/kubelet.crt": File(ctx.cert(name)),
        f"{KUBELET}/kubelet.key": File(ctx.key(name), 0o600),
        f"{KUBELET}/kubeconfig": ctx.kubeconfig(name, f"system:node:{node.name}", local_api),
        "/var/lib/kube-proxy/kubeconfig": ctx.kubeconfig("kube-proxy", "system:kube-proxy", local_api),
    }


def controller_credentials(ctx: Context, node: Node) -> dict[str, File]:
    """Controller-only secrets: the CA keys, apiserver and etcd credentials, the encryption key."""
    local_api = ctx.api_url("127.0.0.1", ctx.cluster.network.api_port)
    files = {
        f"{KUBE}/pki/ca.key": File(ctx.key(certs.CLUSTER_CA), 0o600),
        f"{KUBE}/pki/etcd-ca.crt": File(ctx.cert(certs.ETCD_CA)),
        f"{KUBE}/pki/service-accounts.key": File(
            secrets.marker(certs.SERVICE_ACCOUNT_KEY, ctx.state.secret(certs.SERVICE_ACCOUNT_KEY)), 0o600
        ),
        f"{KUBE}/pki/service-accounts.pub": File(ctx.service_account_public),
        f"{KUBE}/encryption-config.yaml": File(
            templates.render(
                "configs/encryption-config.yaml",
                provider=ctx.cluster.pki.encryption_provider,
                secret=secrets.marker(ENCRYPTION_KEY, ctx.state.secret(ENCRYPTION_KEY)),
            ),
            0o600,
        ),
        f"{KUBE}/kube-controller-manager.kubeconfig": ctx.kubeconfig(
            "kube-controller-manager", "system:kube-controller-manager", local_api
        ),
        f"{KUBE}/kube-scheduler.kubeconfig": ctx.kubeconfig("kube-scheduler", "system:kube-scheduler", local_api),
        f"{ETCD}/ca.crt": File(ctx.cert(certs.ETCD_CA)),
    }
    for name in ("kube-apiserver", "apiserver-kubelet-client", "apiserver-etcd-client"):
        files[f"{KUBE}/pki/{name}.crt"] = File(ctx.cert(name))
        files[f"{KUBE}/pki/{name}.key"] = File(ctx.key(name), 0o600)
    for kind in ("server", "peer"):
        name = certs.etcd_cert(node.name, kind)
        files[f"{ETCD}/{kind}.crt"] = File(ctx.cert(name))
        files[f"{ETCD}/{kind}.key"] = File(ctx.key(name), 0o600)
    return files
