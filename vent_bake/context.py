"""The render's context: what every step of a render reads (the cluster, the state, the nodes'
addresses), the values templates are filled with, and the memory that lets a thousand nodes
cost little more than one.

Values come in three scopes, and a template is filled with exactly one of them:
- `shared_values`: the same for the whole cluster;
- `role_values(role, first)`: plus the node's role (and whether it is the first controller);
- `node_values(node)`: plus the node itself and its address.
A template declared per role (components.TABLE) is filled once per role and reused for every
node of it; it is never handed a node's values, so one that reads them fails loudly
(StrictUndefined) instead of serving one node's text to the others.
"""

import base64
import ipaddress
from collections.abc import Callable
from functools import cached_property

from cryptography.hazmat.primitives import serialization

from vent_bake import binaries, certs, pki, secrets, templates
from vent_bake.bundle import File
from vent_bake.config import Cluster, Node
from vent_bake.errors import StateError
from vent_bake.state import State


def node_addresses(cluster: Cluster, state: State) -> dict[str, str | None]:
    """Each node's reserved address: from the cluster file, or as `vent-bake reserve` recorded
    it; None where neither has one yet."""
    reserved = state.reserved_addresses()
    return {node.name: node.address or reserved.get(node.name) for node in cluster.nodes}


def addresses(cluster: Cluster, state: State) -> dict[str, str]:
    """Every node's address; an error naming the first node that has none."""
    found = node_addresses(cluster, state)
    for name, address in found.items():
        if address is None:
            raise StateError(f"node {name} has no address: run `vent-bake reserve`, or set its address in the cluster file")
    return found


class Context:
    def __init__(self, cluster: Cluster, state: State):
        self.cluster, self.state = cluster, state
        self.addresses = addresses(cluster, state)
        self._memo: dict[tuple, object] = {}

    def memo(self, key: tuple, make: Callable[[], object]):
        """make(), once per key for this render: for what every node of a role shares."""
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    # --- the state's secrets and certificates, as the bundle shows them

    def cert(self, name: str) -> str:
        return self.state.secret(certs.crt_path(name)).decode()

    def secret(self, path: str, enc: str = "raw") -> str:
        return secrets.marker(path, self.state.secret(path), enc)

    def key(self, name: str, enc: str = "raw") -> str:
        return self.secret(certs.key_path(name), enc)

    @cached_property
    def service_account_public(self) -> str:
        key = serialization.load_pem_private_key(self.state.secret(certs.SERVICE_ACCOUNT_KEY), None)
        return pki.public_pem(key).decode()

    def kubeconfig(self, name: str, user: str, server: str, files: tuple[str, str, str] | None = None) -> File:
        """A kubeconfig for certificate `name`: embedded, or naming the (ca, cert, key) files."""
        def make() -> File:
            values = dict(cluster=self.cluster.name, server=server, user=user, embed=files is None)
            if files is None:
                values.update(ca_data=_b64(self.cert(certs.CLUSTER_CA)), cert_data=_b64(self.cert(name)), key_data=self.key(name, "b64"))
            else:
                values.update(zip(("ca_file", "cert_file", "key_file"), files))
            return File(templates.render("configs/kubeconfig.yaml", **values), 0o600 if files is None else 0o644)

        return self.memo(("kubeconfig", name, server, files), make)

    # --- the values templates are filled with

    @staticmethod
    def url(host: str, port: int) -> str:
        return f"https://{host}:{port}"

    @cached_property
    def api_url(self) -> str:
        """Where operators reach the API: the endpoint name, or the first controller."""
        net = self.cluster.network
        return self.url(net.api_endpoint or self.addresses[self.cluster.controllers[0].name], net.api_port)

    @cached_property
    def shared_values(self) -> dict:
        c, net = self.cluster, self.cluster.network
        controllers = [(n.name, self.addresses[n.name]) for n in c.controllers]
        admin_and_nodes = [*net.admin_networks, *(f"{a}/32" for a in self.addresses.values())]
        images = c.lock[c.versions.kubernetes]["images"]
        return dict(
            cluster=c,
            net=net,
            controllers=controllers,
            etcd_servers=",".join(f"https://{a}:2379" for _, a in controllers),
            etcd_initial_cluster=",".join(f"{n}=https://{a}:2380" for n, a in controllers),
            api_url=self.api_url,
            balancer=f"127.0.0.1:{net.balancer_port}",
            dns_ip=certs.dns_ip(c),
            cluster_domain=net.cluster_domain,
            # nftables refuses overlapping intervals in one set
            api_clients=[str(n) for n in ipaddress.collapse_addresses(ipaddress.ip_network(a) for a in admin_and_nodes)],
            flannel_user=certs.FLANNEL_USER,
            images=images,
        )

    def role_values(self, role: str, first: bool) -> dict:
        def make() -> dict:
            downloads = tuple(binaries.downloads(self.cluster, role))
            return dict(self.shared_values, role=role, first_controller=first, downloads=downloads)

        return self.memo(("role values", role, first), make)

    def node_values(self, node: Node) -> dict:
        role = self.cluster.role(node)
        return dict(self.role_values(role, self.cluster.is_first_controller(node)), node=node, address=self.addresses[node.name])


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()
