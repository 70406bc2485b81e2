"""Every file a node gets besides its credentials: one declarative table of rows (template,
path on the node, mode, which nodes, whose values it reads, whether the userdata carries it),
each template filled with the node's values.
"""

from functools import cache
from typing import NamedTuple

from vent_bake import templates
from vent_bake.bundle import File
from vent_bake.config import Node
from vent_bake.context import Context

ALL, CONTROLLERS, FIRST = "all", "controllers", "first controller"
ROLE, NODE = "role", "node"  # whose values a template reads: the same for every node of a role, or each node's
UNITS = "/etc/systemd/system"
LIB = "/usr/local/lib/vent"
ETC = "/etc/vent"


class Row(NamedTuple):
    template: str
    path: str
    mode: int = 0o644
    who: str = ALL
    per: str = ROLE
    # In the userdata itself (what fetches the rest, the node's facts, and, as Vent did, the
    # macvlan and flannel set-up); every other file the node fetches, pinned by digest.
    carried: bool = False
    # A file per registry mirror: the path names {upstream}, the template reads upstream and mirror.
    each_mirror: bool = False


TABLE = (
    # node prep and the boot itself
    Row("configs/modules.conf", "/etc/modules-load.d/vent.conf"),
    Row("configs/sysctl.conf", "/etc/sysctl.d/90-vent.conf"),
    Row("configs/node.env", f"{ETC}/node.env", per=NODE, carried=True),
    Row("configs/downloads.tsv", f"{ETC}/downloads.tsv"),
    Row("configs/os-packages", f"{ETC}/os-packages"),
    Row("configs/boot.env", f"{ETC}/boot.env"),
    Row("configs/units", f"{ETC}/units"),
    Row("cloudinit/fetch.sh", f"{LIB}/fetch", 0o755, carried=True),
    Row("cloudinit/lib.sh", f"{LIB}/lib.sh", carried=True),
    Row("cloudinit/boot.sh", f"{LIB}/boot", 0o755),
    # networking, re-applied at every boot
    Row("units/vent-network.service", f"{UNITS}/vent-network.service", carried=True),
    Row("cloudinit/network.sh", f"{LIB}/network", 0o755, carried=True),
    Row("configs/firewall.nft", f"{ETC}/firewall.nft"),
    # every node: API balancer, container runtime, kubelet, kube-proxy, flannel
    Row("units/api-balancer.service", f"{UNITS}/api-balancer.service"),
    Row("configs/api-balancer.cfg", "/etc/haproxy/api-balancer.cfg"),
    Row("units/containerd.service", f"{UNITS}/containerd.service"),
    Row("configs/containerd-config.toml", "/etc/containerd/config.toml"),
    Row("configs/runsc.toml", "/etc/containerd/runsc.toml"),
    Row("configs/containerd-hosts.toml", "/etc/containerd/certs.d/{upstream}/hosts.toml", each_mirror=True),
    Row("configs/crictl.yaml", "/etc/crictl.yaml"),
    Row("units/kubelet.service", f"{UNITS}/kubelet.service", per=NODE),
    Row("configs/kubelet-config.yaml", "/var/lib/kubelet/kubelet-config.yaml"),
    Row("units/kube-proxy.service", f"{UNITS}/kube-proxy.service", per=NODE),
    Row("configs/kube-proxy-config.yaml", "/var/lib/kube-proxy/kube-proxy-config.yaml", per=NODE),
    Row("units/flanneld.service", f"{UNITS}/flanneld.service", per=NODE),
    Row("configs/net-conf.json", "/etc/kube-flannel/net-conf.json", carried=True),
    Row("cloudinit/cni-from-flannel.sh", f"{LIB}/cni-from-flannel", 0o755, carried=True),
    # controllers: etcd and the control plane
    Row("units/etcd.service", f"{UNITS}/etcd.service", who=CONTROLLERS, per=NODE),
    Row("cloudinit/etcd-join.sh", f"{LIB}/etcd-join", 0o755, who=CONTROLLERS),
    Row("units/kube-apiserver.service", f"{UNITS}/kube-apiserver.service", who=CONTROLLERS, per=NODE),
    Row("configs/audit-policy.yaml", "/var/lib/kubernetes/audit-policy.yaml", who=CONTROLLERS),
    Row("units/kube-controller-manager.service", f"{UNITS}/kube-controller-manager.service", who=CONTROLLERS),
    Row("units/kube-scheduler.service", f"{UNITS}/kube-scheduler.service", who=CONTROLLERS),
    Row("configs/kube-scheduler.yaml", "/etc/kubernetes/config/kube-scheduler.yaml", who=CONTROLLERS),
    # the first controller applies the add-ons
    Row("units/vent-addons.service", f"{UNITS}/vent-addons.service", who=FIRST),
    Row("cloudinit/apply-addons.sh", f"{LIB}/apply-addons", 0o755, who=FIRST),
    Row("manifests/apiserver-to-kubelet.yaml", f"{ETC}/addons/apiserver-to-kubelet.yaml", who=FIRST),
    Row("manifests/flannel.yaml", f"{ETC}/addons/flannel.yaml", who=FIRST),
    Row("manifests/coredns.yaml", f"{ETC}/addons/coredns.yaml", who=FIRST),
    Row("manifests/runtimeclass-gvisor.yaml", f"{ETC}/addons/runtimeclass-gvisor.yaml", who=FIRST),
    Row("manifests/metrics-server.yaml", f"{ETC}/addons/metrics-server.yaml", who=FIRST),
)


@cache
def entries(role: str, first: bool) -> tuple[Row, ...]:
    """The rows for a node of this role."""
    return tuple(row for row in TABLE if row.who == ALL or (row.who == CONTROLLERS and role == "controller") or (row.who == FIRST and first))


@cache
def units(rows: tuple[Row, ...]) -> tuple[str, ...]:
    """The units the boot script enables, in the table's order."""
    return tuple(row.path.rsplit("/", 1)[1] for row in rows if row.template.startswith("units/"))


def _file(row: Row, content: str) -> File:
    # A carried script goes without its comment lines: the userdata's budget has no room for
    # them, and the commented source is the template.
    if row.carried and row.template.endswith(".sh"):
        content = templates.without_comments(content)
    return File(content, row.mode, row.carried)


def files(ctx: Context, node: Node) -> dict[str, File]:
    role, first = ctx.cluster.role(node), ctx.cluster.is_first_controller(node)
    rows = entries(role, first)
    shared = ctx.memo(("component values", role, first), lambda: dict(ctx.role_values(role, first), units=units(rows)))
    own = dict(shared, node=node, address=ctx.addresses[node.name])
    out = {}
    for row in rows:
        if row.each_mirror:
            for upstream, mirror in ctx.cluster.registry_mirrors.items():
                out[row.path.format(upstream=upstream)] = ctx.memo(
                    ("component", row, upstream), lambda row=row, u=upstream, m=mirror: _file(row, templates.render(
                        row.template, **shared, upstream=u, mirror=m)))
        elif row.per == NODE:
            out[row.path] = _file(row, templates.render(row.template, **own))
        else:
            out[row.path] = ctx.memo(("component", row, role, first), lambda row=row: _file(row, templates.render(row.template, **shared)))
    return out
