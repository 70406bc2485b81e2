"""The every-boot network unit's script, run for real in a network namespace laid out as
Packet lays a device out: bond0 with a primary public /31 and the private /31 as an alias.
A gateway namespace holds the provider's side; a metadata service answers on the node's own
loopback. Nothing leaves the namespaces."""

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import cli, node_root
from tools import need

TAG = f"vbn{os.getpid() % 100000}"
PUBLIC, PUBLIC_GW = "203.0.113.10", "203.0.113.11"
PRIVATE, PRIVATE_GW = "10.1.2.3", "10.1.2.2"
RESERVED = "198.18.1.10"  # worker-0's address in the example


UDP_LISTEN = ("import socket, sys\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('0.0.0.0', int(sys.argv[1])))\n"
              "s.settimeout(3)\ntry:\n    sys.stdout.buffer.write(s.recv(100))\nexcept socket.timeout:\n    pass\n")
UDP_SEND = ("import socket, sys\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind((sys.argv[1], 0))\n"
            "for _ in range(3):\n    s.sendto(b'vxlan', (sys.argv[2], int(sys.argv[3])))\n")


def sh(*cmd, check=True, timeout=20):
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=timeout)


def metadata(path: Path, addresses: list[dict]) -> None:
    path.write_text(json.dumps({"hostname": "worker-0", "network": {"addresses": addresses}}))


@pytest.fixture
def node(rendered, published, tmp_path):
    need("ip", "nft", "curl", "/usr/bin/python3")
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    ns, gw = f"{TAG}-node", f"{TAG}-gw"
    userdata = tmp_path / "userdata"
    userdata.write_text(cli("userdata", "worker-0", "-c", rendered / "cluster.yaml", "--reveal").stdout)
    root = node_root(userdata, tmp_path / "root", published)
    env_file = root / "etc/vent/node.env"
    env_file.write_text(env_file.read_text().replace("https://metadata.platformequinix.com/metadata", "http://127.0.0.1:8775/metadata"))
    meta = tmp_path / "meta"
    meta.mkdir()
    addresses = [
        {"address_family": 4, "public": True, "address": PUBLIC, "cidr": 31, "gateway": PUBLIC_GW},
        {"address_family": 4, "public": False, "address": PRIVATE, "cidr": 31, "gateway": PRIVATE_GW},
    ]
    metadata(meta / "metadata", addresses)
    procs = []
    try:
        for name in (ns, gw):
            sh("ip", "netns", "add", name)
            sh("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
        sh("ip", "link", "add", "bond0", "netns", ns, "type", "veth", "peer", "name", "up0", "netns", gw)
        run = lambda name, *cmd: sh("ip", "netns", "exec", name, *cmd)  # noqa: E731
        run(gw, "ip", "addr", "add", f"{PUBLIC_GW}/31", "dev", "up0")
        run(gw, "ip", "addr", "add", f"{PRIVATE_GW}/31", "dev", "up0")
        run(gw, "ip", "link", "set", "up0", "up")
        run(ns, "ip", "link", "set", "bond0", "up")
        run(ns, "ip", "addr", "add", f"{PUBLIC}/31", "dev", "bond0")
        run(ns, "ip", "addr", "add", f"{PRIVATE}/31", "dev", "bond0")
        run(ns, "ip", "route", "add", "default", "via", PUBLIC_GW, "dev", "bond0")
        procs.append(subprocess.Popen(["ip", "netns", "exec", ns, "/usr/bin/python3", "-m", "http.server", "--bind", "127.0.0.1",
                                       "--directory", str(meta), "8775"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        env = {"PATH": os.environ["PATH"], "VENT_ETC": f"{root}/etc/vent", "VENT_RUN": str(tmp_path / "run"),
               "VENT_LOG": str(tmp_path / "boot.log"), "VENT_CONSOLE": "/dev/null", "VENT_ADDRESS_WAIT": "60"}
        script = root / "usr/local/lib/vent/network"
        yield dict(ns=ns, gw=gw, run=run, env=env, script=script, meta=meta, addresses=addresses, log=tmp_path / "boot.log",
                   tmp=tmp_path, procs=procs)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        for name in (ns, gw):
            sh("ip", "netns", "delete", name, check=False)


def wait_for(predicate, what: str, seconds: float = 20):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_network_unit(node):
    ns, run = node["ns"], node["run"]
    proc = subprocess.Popen(["ip", "netns", "exec", ns, str(node["script"])], env=node["env"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    node["procs"].append(proc)
    wait_for(lambda: node["log"].exists() and f"waiting for {RESERVED}" in node["log"].read_text(), "the script never waited")

    # Before the address is assigned: the firewall is up, and the private /31 is on fake0.
    table = run(ns, "nft", "list", "table", "inet", "vent").stdout
    assert "hook input priority filter; policy drop;" in table and "set controllers" in table
    assert f"inet {PRIVATE}/31" in run(ns, "ip", "-4", "addr", "show", "dev", "fake0").stdout
    assert PRIVATE not in run(ns, "ip", "-4", "addr", "show", "dev", "bond0").stdout
    assert f"10.0.0.0/8 via {PRIVATE_GW} dev fake0" in run(ns, "ip", "route").stdout
    assert RESERVED not in run(ns, "ip", "-4", "addr").stdout

    # The provider assigns the reserved address: the node takes it and sources from it.
    metadata(node["meta"] / "metadata", node["addresses"] + [{"address_family": 4, "public": True, "address": RESERVED, "cidr": 32}])
    assert proc.wait(timeout=30) == 0, proc.stderr.read()
    assert f"inet {RESERVED}/32" in run(ns, "ip", "-4", "addr", "show", "dev", "bond0").stdout
    assert f"default via {PUBLIC_GW} dev bond0 src {RESERVED}" in run(ns, "ip", "route").stdout
    assert (node["tmp"] / "run/resolv.conf").exists()
    assert "127.0.0.1" in run(ns, "nft", "list", "set", "inet", "vent", "metadata").stdout

    # The firewall, from the provider's side: NodePorts answer, the kubelet port does not.
    for port in (30080, 10250):
        node["procs"].append(subprocess.Popen(["ip", "netns", "exec", ns, "/usr/bin/python3", "-m", "http.server", "--bind",
                                               "0.0.0.0", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    gw = node["gw"]
    wait_for(lambda: sh("ip", "netns", "exec", gw, "curl", "-s", "-o", "/dev/null", "--max-time", "1",
                        f"http://{PUBLIC}:30080/", check=False).returncode == 0, "a NodePort did not answer")
    blocked = sh("ip", "netns", "exec", gw, "curl", "-s", "-o", "/dev/null", "--max-time", "2", f"http://{PUBLIC}:10250/", check=False)
    assert blocked.returncode == 28, "the kubelet port must be closed to anyone but the controllers"

    # VXLAN from the private network is let in whichever interface it arrives on (bond0, fake0's
    # parent, answers ARP for fake0's address too: the lab found peers' VXLAN dropped), and
    # VXLAN from anywhere else is not.
    for source, expected in ((PRIVATE_GW, b"vxlan"), (PUBLIC_GW, b"")):
        listener = subprocess.Popen(["ip", "netns", "exec", ns, "/usr/bin/python3", "-c", UDP_LISTEN, "8472"], stdout=subprocess.PIPE)
        time.sleep(0.5)
        sh("ip", "netns", "exec", gw, "/usr/bin/python3", "-c", UDP_SEND, source, PRIVATE, "8472")
        assert listener.communicate(timeout=10)[0] == expected, f"VXLAN from {source}"

    # Every boot runs it again: nothing doubles, nothing breaks.
    again = subprocess.run(["ip", "netns", "exec", ns, str(node["script"])], env=node["env"], capture_output=True, text=True, timeout=30)
    assert again.returncode == 0, again.stderr
    assert "fake0 already holds the private address" in node["log"].read_text()
    assert run(ns, "ip", "-4", "addr", "show", "dev", "fake0").stdout.count("inet ") == 1
    assert run(ns, "nft", "list", "tables").stdout.count("table inet vent") == 1
