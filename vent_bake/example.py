"""`vent-bake init`: a commented example cluster file that renders as it is."""

import ipaddress

from vent_bake import lock, templates

# RFC 2544's benchmarking range: never routed on the internet, so example addresses cannot
# collide with anything real.
CONTROLLER_BASE = ipaddress.ip_address("198.18.0.10")
WORKER_BASE = ipaddress.ip_address("198.18.1.10")
NODE_POD_PREFIX = 24
SMALLEST_POD_PREFIX = 13  # 172.16.0.0/13 ends below the default service range 172.31.0.0/16


def pod_cidr(nodes: int) -> str:
    prefix = min(16, NODE_POD_PREFIX - (nodes - 1).bit_length())
    if prefix < SMALLEST_POD_PREFIX:
        raise ValueError(f"{nodes} nodes need more than the example's pod range can hold")
    return f"172.16.0.0/{prefix}"


def cluster_yaml(name: str = "vent", controllers: int = 3, workers: int = 2, arch: str = "amd64", lab: dict | None = None) -> str:
    """The example; `lab` (the lab's URLs, registry and whether the machine runs cgroup v1)
    makes it the lab's."""
    nodes = controllers + workers
    return templates.render(
        "configs/cluster.yaml",
        name=name,
        arch=arch,
        lab=lab,
        kubernetes=lock.newest(lock.packaged()),
        pod_cidr=pod_cidr(nodes),
        node_pod_prefix=NODE_POD_PREFIX,
        node_count=nodes,
        controllers=[{"name": f"controller-{i}", "address": CONTROLLER_BASE + i} for i in range(controllers)],
        workers=[{"name": f"worker-{i}", "address": WORKER_BASE + i} for i in range(workers)],
    )
