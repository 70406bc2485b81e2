"""Render: a pure function of (cluster, state) to the bundle of every file the cluster needs.

Nothing here reads or writes disk or network (templates are read once per process); the
workspace does the I/O before and after. Secrets appear only as markers (vent_bake.secrets),
so the bundle is safe to commit and review.

    render()  ->  per node: credentials (PKI files, kubeconfigs) + components (units, configs,
                  scripts, add-ons)  ->  userdata (one cloud-config and fetch list per node)
"""

from vent_bake import certs, components, credentials, userdata
from vent_bake.bundle import Bundle, File, NodeFiles
from vent_bake.config import Cluster
from vent_bake.context import Context, addresses, node_addresses
from vent_bake.state import State

__all__ = ["addresses", "node_addresses", "render"]


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
        files = credentials.files(ctx, node) | components.files(ctx, node)
        nodes[node.name] = NodeFiles(node, files, *userdata.render(ctx, node, files))
    return Bundle(shared, nodes)
