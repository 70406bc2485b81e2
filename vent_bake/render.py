"""Render: a pure function of (cluster, state) to the bundle of every file the cluster needs.

Nothing here reads or writes disk or network; the CLI does I/O before and after. Secrets
appear only as markers (vent_bake.secrets), so the bundle is safe to commit and review.

    render()  ->  credentials (PKI files, kubeconfigs)  ->  components (units, configs,
                  scripts, add-ons)  ->  userdata (one cloud-config per node)
"""

import base64
import ipaddress
from functools import cached_property

from cryptography.hazmat.primitives import serialization

from vent_bake import binaries, certs, components, credentials, pki, secrets, templates, userdata
from vent_bake.bundle import Bundle, File, NodeBundle
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
    """What every step of the render reads: the cluster, the state, the nodes' addresses, and
    the values that every node's templates share."""

    def __init__(self, cluster: Cluster, state: State):
        self.cluster, self.state = cluster, state
        self.addresses = addresses(cluster, state)
        self._kubeconfigs: dict[tuple, File] = {}
        self._rendered: dict[tuple, str] = {}
        self._downloads: dict[str, tuple] = {}
        self.entries: dict[tuple, str] = {}  # (path, mode, content) -> write_files entry (userdata.py)

    def render(self, template: str, values: dict) -> str:
        """Fill a template, once per distinct set of the values it reads: most files are the
        same on every node of a role, and a thousand nodes should not cost a thousand renders.
        Values are told apart by identity, except plain scalars: every node shares the objects
        of shared_values, and a per-node object differs for each node."""
        key = (template, *((name, _identity(values.get(name))) for name in sorted(templates.variables(template))))
        if key not in self._rendered:
            self._rendered[key] = templates.render(template, **values)
        return self._rendered[key]

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
        memo = (name, server, files)
        if memo not in self._kubeconfigs:
            values = dict(cluster=self.cluster.name, server=server, user=user, embed=files is None)
            if files is None:
                values.update(ca_data=_b64(self.cert(certs.CLUSTER_CA)), cert_data=_b64(self.cert(name)), key_data=self.key(name, "b64"))
            else:
                values.update(zip(("ca_file", "cert_file", "key_file"), files))
            content = templates.render("configs/kubeconfig.yaml", **values)
            self._kubeconfigs[memo] = File(content, 0o600 if files is None else 0o644)
        return self._kubeconfigs[memo]

    # --- values every node's templates share

    def downloads(self, role: str) -> tuple:
        if role not in self._downloads:
            self._downloads[role] = tuple(binaries.downloads(self.cluster, role))
        return self._downloads[role]

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
            images=c.lock[c.versions.kubernetes]["images"],
            coredns_image=c.lock[c.versions.kubernetes]["images"]["coredns"],
        )

    def node_values(self, node: Node) -> dict:
        role = self.cluster.role(node)
        return dict(self.shared_values, node=node, role=role, address=self.addresses[node.name],
                    first_controller=self.cluster.is_first_controller(node))


def _identity(value):
    return value if isinstance(value, (str, int, float, bool, type(None))) else id(value)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def render(cluster: Cluster, state: State) -> Bundle:
    ctx = Context(cluster, state)
    shared = {
        "admin.kubeconfig": ctx.kubeconfig("admin", "admin", ctx.api_url),
        "pki/service-accounts.pub": File(ctx.service_account_public),
    }
    for spec in certs.plan(cluster, ctx.addresses):
        shared[f"pki/{spec.name}.crt"] = File(ctx.cert(spec.name))
    nodes = {}
    for node in cluster.nodes:
        nb = NodeBundle(node, cluster.role(node))
        nb.files.update(credentials.files(ctx, node))
        nb.files.update(components.files(ctx, node))
        userdata.render(ctx, nb)
        nodes[node.name] = nb
    return Bundle(shared, nodes)
