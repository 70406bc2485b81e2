"""Where each node of a lab sits: Packet's layout, rebuilt on a bridge of the lab's own.

As on Packet, a node's `bond0` holds a public /31 (the node's address and its gateway) and a
private /31 from 10.0.0.0/8 as an alias, with the route to 10.0.0.0/8 through the private
gateway. Its reserved address is routed to it only once the lab assigns it. One address on
the bridge, the link-local 169.254.169.254, is the lab's service: metadata, artifacts, mirror,
and (port 5000) the container registry; another, 192.0.2.80, stands for the world outside.
"""

import ipaddress
from dataclasses import dataclass

from vent_bake.config import Cluster
from vent_bake.errors import VentError
from vent_bake.provider import cluster_tag, node_tag, role_tag

SERVICE_IP = "169.254.169.254"
SERVICE = f"http://{SERVICE_IP}"
METADATA_URL = f"{SERVICE}/metadata"
ARTIFACTS_URL = f"{SERVICE}/artifacts/"
MIRROR_URL = f"{SERVICE}/mirror/"
REGISTRY = f"{SERVICE_IP}:5000"  # the lab's container registry
REGISTRY_URL = f"http://{REGISTRY}"
# An address outside the cluster (TEST-NET-1, never routed on the internet): a page the lab's
# service also serves, for the smoke test's "an address outside the cluster is routed".
OUTSIDE_IP = "192.0.2.80"
OUTSIDE_URL = f"http://{OUTSIDE_IP}/"
PUBLIC = ipaddress.ip_network("100.64.0.0/24")  # shared address space: never routed on the internet
PRIVATE = ipaddress.ip_network("10.80.0.0/24")
MAX_NODES = PUBLIC.num_addresses // 2


@dataclass(frozen=True)
class LabNode:
    lab: str  # the lab's namespace
    name: str
    role: str
    index: int
    public: str  # the node's primary address on bond0 (/31)
    public_gateway: str
    private: str  # the private alias on bond0 (/31)
    private_gateway: str
    reserved: str  # the node's identity, assigned after it boots

    @property
    def machine(self) -> str:
        return f"{self.lab}-{self.name}"[:64]

    @property
    def port(self) -> str:
        """bond0's peer on the lab's bridge (an interface name, at most 15 characters)."""
        return f"port{self.index}"


def stray(lab: str, node: str) -> LabNode:
    """A node the lab's records hold but its cluster file does not name: only its names are
    known, which is all it takes to stop and discard it."""
    return LabNode(lab, node, "unknown", -1, "", "", "", "", "")


def name(cluster: Cluster) -> str:
    """The lab's own namespace, and the prefix of its nodes' namespaces and machines."""
    return f"vent-lab-{cluster.name}"[:48]


def layout(cluster: Cluster, addresses: dict[str, str]) -> list[LabNode]:
    if len(cluster.nodes) > MAX_NODES:
        raise VentError(f"the lab holds at most {MAX_NODES} nodes; the cluster has {len(cluster.nodes)}")
    out = []
    for i, node in enumerate(cluster.nodes):
        reserved = ipaddress.ip_address(addresses[node.name])
        for net in (PUBLIC, PRIVATE):
            if reserved in net:
                raise VentError(f"node {node.name}: its address {reserved} is inside the lab's own {net}; pick another")
        out.append(LabNode(
            name(cluster), node.name, cluster.role(node), i,
            str(PUBLIC[2 * i + 1]), str(PUBLIC[2 * i]),
            str(PRIVATE[2 * i + 1]), str(PRIVATE[2 * i]),
            str(reserved),
        ))
    return out


def network_config(node: LabNode) -> dict:
    """bond0 as a Packet device's image sets it up (cloud-init network config, version 1): the
    public /31 with the default route, the private /31 as an alias with the route to 10/8."""
    return {"version": 1, "config": [{"type": "physical", "name": "bond0", "subnets": [
        {"type": "static", "address": f"{node.public}/31", "gateway": node.public_gateway},
        {"type": "static", "address": f"{node.private}/31",
         "routes": [{"network": "10.0.0.0", "netmask": "255.0.0.0", "gateway": node.private_gateway}]},
    ]}]}


def metadata(node: LabNode, cluster: Cluster, assigned: bool) -> dict:
    """What the lab's metadata service answers this node, in Packet's shape."""
    def address(addr: str, gateway: str, cidr: int, public: bool, management: bool) -> dict:
        net = ipaddress.ip_network(f"{addr}/{cidr}", strict=False)
        return {"address_family": 4, "address": addr, "gateway": gateway, "cidr": cidr, "netmask": str(net.netmask),
                "network": str(net.network_address), "public": public, "management": management}

    addresses = [
        address(node.public, node.public_gateway, 31, True, True),
        address(node.private, node.private_gateway, 31, False, True),
    ]
    if assigned:
        addresses.append(address(node.reserved, node.public_gateway, 32, True, False))
    return {
        "id": f"lab-{cluster.name}-{node.name}",
        "hostname": node.name,
        "plan": "lab",
        "metro": "lab",
        "tags": [cluster_tag(cluster.name), node_tag(node.name), role_tag(node.role)],
        "network": {"bonding": {"mode": 4}, "interfaces": [{"name": "bond0"}], "addresses": addresses},
    }
