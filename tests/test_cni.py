"""cni-from-flannel: the bridge and host-local CNI config, written from flannel's subnet file."""

import json
import subprocess
from pathlib import Path

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
    assert bridge["mtu"] == 1450 and bridge["isGateway"] and bridge["ipMasq"] is False  # flanneld masquerades
    assert not (tmp_path / "net.d/10-flannel.conflist.tmp").exists()


def test_no_subnet_file_is_an_error(tmp_path):
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=30,
                          env={"PATH": "/usr/bin:/bin", "FLANNEL_SUBNET_ENV": str(tmp_path / "none"), "CNI_CONF": str(tmp_path / "c"),
                               "VENT_FLANNEL_WAIT": "1", **quiet(tmp_path)})
    assert proc.returncode == 1 and "cni-from-flannel: FAILED: " in proc.stderr and "never appeared" in proc.stderr
