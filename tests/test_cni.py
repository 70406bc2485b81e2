"""cni-from-flannel: the bridge and host-local CNI config, written from flannel's subnet file."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from tools import need_built

SCRIPT = Path(__file__).parents[1] / "cloudinit" / "cni-from-flannel.sh"


def quiet(tmp_path: Path) -> dict:
    """lib.sh's log, kept in the test's directory and off the console."""
    return {"VENT_LOG": str(tmp_path / "vent.log"), "VENT_CONSOLE": "/dev/null"}


def test_conflist_from_the_subnet_file(tmp_path):
    subnet = tmp_path / "subnet.env"
    subnet.write_text("FLANNEL_NETWORK=172.16.0.0/16\nFLANNEL_SUBNET=172.16.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
    conf = tmp_path / "net.d/10-flannel.conflist"
    subprocess.run(["bash", str(SCRIPT)], env={"PATH": "/usr/bin:/bin", "FLANNEL_SUBNET_ENV": str(subnet), "CNI_CONF": str(conf), **quiet(tmp_path)},
                   check=True, timeout=30)
    doc = json.loads(conf.read_text())
    bridge, portmap = doc["plugins"]
    assert doc["cniVersion"] == "1.0.0" and bridge["type"] == "bridge" and portmap["type"] == "portmap"
    assert bridge["ipam"] == {"type": "host-local", "ranges": [[{"subnet": "172.16.7.0/24", "gateway": "172.16.7.1"}]],
                              "routes": [{"dst": "172.16.0.0/16"}]}
    assert bridge["mtu"] == 1450 and bridge["isDefaultGateway"] and bridge["ipMasq"] is False  # flanneld masquerades
    assert not (tmp_path / "net.d/10-flannel.conflist.tmp").exists()


def test_no_subnet_file_is_an_error(tmp_path):
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=30,
                          env={"PATH": "/usr/bin:/bin", "FLANNEL_SUBNET_ENV": str(tmp_path / "none"), "CNI_CONF": str(tmp_path / "c"),
                               "VENT_FLANNEL_WAIT": "1", **quiet(tmp_path)})
    assert proc.returncode == 1 and "cni-from-flannel: FAILED: " in proc.stderr and "never appeared" in proc.stderr


def test_pods_get_a_default_route_from_the_real_plugins(tmp_path):
    """The conflist, run by the bridge and host-local plugins built from their module, in a node
    namespace for a pod namespace: the pod reaches service IPs and the world through the bridge
    (the lab found pods with a route to the pod network only, unable to reach the API)."""
    (bridge,) = need_built("bridge")
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    subnet = tmp_path / "subnet.env"
    subnet.write_text("FLANNEL_NETWORK=172.16.0.0/16\nFLANNEL_SUBNET=172.16.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
    conf = tmp_path / "net.d/10-flannel.conflist"
    subprocess.run(["bash", str(SCRIPT)], env={"PATH": "/usr/bin:/bin", "FLANNEL_SUBNET_ENV": str(subnet), "CNI_CONF": str(conf),
                                              **quiet(tmp_path)}, check=True, timeout=30)
    conflist = json.loads(conf.read_text())
    plugin = {"cniVersion": conflist["cniVersion"], "name": conflist["name"], **conflist["plugins"][0]}
    plugin["ipam"]["dataDir"] = str(tmp_path / "ipam")  # host-local's allocations: here, not in the machine's /var/lib/cni
    node, pod = f"vbcni{os.getpid() % 100000}", f"vbpod{os.getpid() % 100000}"
    for ns in (node, pod):
        subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "smoke", "CNI_NETNS": f"/run/netns/{pod}",
               "CNI_IFNAME": "eth0", "CNI_PATH": str(Path(bridge).parent)}
        added = subprocess.run(["ip", "netns", "exec", node, bridge], input=json.dumps(plugin), env=env, capture_output=True,
                               text=True, timeout=30)
        assert added.returncode == 0, added.stdout + added.stderr
        routes = subprocess.run(["ip", "-n", pod, "route"], capture_output=True, text=True, check=True).stdout
        assert "default via 172.16.7.1 dev eth0" in routes and "172.16.0.0/16 via 172.16.7.1 dev eth0" in routes, routes
    finally:
        for ns in (pod, node):
            subprocess.run(["ip", "netns", "delete", ns], check=False)
