"""Every file a node gets besides its credentials: one declarative table of
(template, path on the node, mode, which nodes), each template filled with the node's values.
"""

from functools import cache

from vent_bake import templates
from vent_bake.bundle import File
from vent_bake.config import Node

ALL, CONTROLLERS, FIRST = "all", "controllers", "first controller"
UNITS = "/etc/systemd/system"
LIB = "/usr/local/lib/vent"
ETC = "/etc/vent"

TABLE = (
    # node prep and the boot itself
    ("configs/modules.conf", "/etc/modules-load.d/vent.conf", 0o644, ALL),
    ("configs/sysctl.conf", "/etc/sysctl.d/90-vent.conf", 0o644, ALL),
    ("configs/node.env", f"{ETC}/node.env", 0o644, ALL),
    ("configs/downloads.tsv", f"{ETC}/downloads.tsv", 0o644, ALL),
    ("configs/units", f"{ETC}/units", 0o644, ALL),
    ("cloudinit/fetch.sh", f"{LIB}/fetch", 0o755, ALL),
    ("cloudinit/lib.sh", f"{LIB}/lib.sh", 0o644, ALL),
    ("cloudinit/boot.sh", f"{LIB}/boot", 0o755, ALL),
    # networking, re-applied at every boot
    ("units/vent-network.service", f"{UNITS}/vent-network.service", 0o644, ALL),
    ("cloudinit/network.sh", f"{LIB}/network", 0o755, ALL),
    ("configs/firewall.nft", f"{ETC}/firewall.nft", 0o644, ALL),
    # every node: API balancer, container runtime, kubelet, kube-proxy, flannel
    ("units/api-balancer.service", f"{UNITS}/api-balancer.service", 0o644, ALL),
    ("configs/api-balancer.cfg", "/etc/haproxy/api-balancer.cfg", 0o644, ALL),
    ("units/containerd.service", f"{UNITS}/containerd.service", 0o644, ALL),
    ("configs/containerd-config.toml", "/etc/containerd/config.toml", 0o644, ALL),
    ("configs/crictl.yaml", "/etc/crictl.yaml", 0o644, ALL),
    ("units/kubelet.service", f"{UNITS}/kubelet.service", 0o644, ALL),
    ("configs/kubelet-config.yaml", "/var/lib/kubelet/kubelet-config.yaml", 0o644, ALL),
    ("units/kube-proxy.service", f"{UNITS}/kube-proxy.service", 0o644, ALL),
    ("configs/kube-proxy-config.yaml", "/var/lib/kube-proxy/kube-proxy-config.yaml", 0o644, ALL),
    ("units/flanneld.service", f"{UNITS}/flanneld.service", 0o644, ALL),
    ("configs/net-conf.json", "/etc/kube-flannel/net-conf.json", 0o644, ALL),
    ("cloudinit/cni-from-flannel.sh", f"{LIB}/cni-from-flannel", 0o755, ALL),
    # controllers: etcd and the control plane
    ("units/etcd.service", f"{UNITS}/etcd.service", 0o644, CONTROLLERS),
    ("cloudinit/etcd-join.sh", f"{LIB}/etcd-join", 0o755, CONTROLLERS),
    ("units/kube-apiserver.service", f"{UNITS}/kube-apiserver.service", 0o644, CONTROLLERS),
    ("configs/audit-policy.yaml", "/var/lib/kubernetes/audit-policy.yaml", 0o644, CONTROLLERS),
    ("units/kube-controller-manager.service", f"{UNITS}/kube-controller-manager.service", 0o644, CONTROLLERS),
    ("units/kube-scheduler.service", f"{UNITS}/kube-scheduler.service", 0o644, CONTROLLERS),
    ("configs/kube-scheduler.yaml", "/etc/kubernetes/config/kube-scheduler.yaml", 0o644, CONTROLLERS),
    # the first controller applies the add-ons
    ("units/vent-addons.service", f"{UNITS}/vent-addons.service", 0o644, FIRST),
    ("cloudinit/apply-addons.sh", f"{LIB}/apply-addons", 0o755, FIRST),
    ("manifests/apiserver-to-kubelet.yaml", f"{ETC}/addons/apiserver-to-kubelet.yaml", 0o644, FIRST),
    ("manifests/flannel.yaml", f"{ETC}/addons/flannel.yaml", 0o644, FIRST),
    ("manifests/coredns.yaml", f"{ETC}/addons/coredns.yaml", 0o644, FIRST),
    ("manifests/runtimeclass-gvisor.yaml", f"{ETC}/addons/runtimeclass-gvisor.yaml", 0o644, FIRST),
)

# What the userdata carries itself besides the secrets: what fetches the rest, the node's facts,
# and (as Vent did) the macvlan and flannel set-up. Every other file the node fetches from the
# published artifacts, pinned by digest (userdata.py): the budgets leave no room for it. The
# carried scripts go without their comment lines for the same reason.
INLINE = frozenset({
    f"{LIB}/fetch", f"{LIB}/lib.sh", f"{ETC}/node.env",
    f"{LIB}/network", f"{UNITS}/vent-network.service",
    "/etc/kube-flannel/net-conf.json", f"{LIB}/cni-from-flannel",
})


@cache
def entries(role: str, first: bool) -> tuple[tuple[str, str, int], ...]:
    """The (template, path, mode) rows for a node of this role."""
    return tuple(
        (template, path, mode)
        for template, path, mode, who in TABLE
        if who == ALL or (who == CONTROLLERS and role == "controller") or (who == FIRST and first)
    )


@cache
def units(rows: tuple) -> tuple[str, ...]:
    """The units the boot script enables, in the table's order."""
    return tuple(path.rsplit("/", 1)[1] for template, path, _ in rows if template.startswith("units/"))


def files(ctx, node: Node) -> dict[str, File]:
    values = ctx.node_values(node)
    rows = entries(values["role"], values["first_controller"])
    values["units"] = units(rows)
    values["downloads"] = ctx.downloads(values["role"])
    out = {}
    for template, path, mode in rows:
        content = ctx.render(template, values)
        out[path] = File(templates.without_comments(content) if path in INLINE and template.endswith(".sh") else content, mode)
    return out
