"""The lab's network: a namespace playing the provider (its bridge, the nodes' gateways, the
service address, routes to reserved addresses once assigned). Each node's systemd-nspawn runs
in it and gives the node a private namespace whose `bond0` is a veth into it, plugged into the
bridge. The provider's namespace has no other interface, so the nodes reach each other and
the lab's service, and nothing else; the host forwards nothing.
"""

import os
import signal
import subprocess
import time

from vent_bake.errors import VentError
from vent_bake.lab.plan import OUTSIDE_IP, SERVICE_IP, LabNode

BRIDGE = "lab0"


def run(*command: str, check: bool = True) -> subprocess.CompletedProcess:
    """A host command of the lab's; a failure is an error that quotes it."""
    proc = subprocess.run(command, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise VentError(f"lab: `{' '.join(command)}` failed: {proc.stderr.strip()}")
    return proc


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run("ip", *args, check=check)


def namespaces() -> list[str]:
    return [line.split()[0] for line in ip("netns", "list").stdout.splitlines() if line.strip()]


def exists(netns: str) -> bool:
    return netns in namespaces()


def create(lab: str) -> None:
    """The provider's namespace and bridge, with forwarding among the nodes only."""
    if exists(lab):
        return
    ip("netns", "add", lab)
    ip("-n", lab, "link", "set", "lo", "up")
    ip("-n", lab, "link", "add", BRIDGE, "type", "bridge")
    ip("-n", lab, "link", "set", BRIDGE, "up")
    ip("-n", lab, "addr", "add", f"{SERVICE_IP}/32", "dev", BRIDGE)
    ip("-n", lab, "addr", "add", f"{OUTSIDE_IP}/32", "dev", BRIDGE)
    for key, value in (("net.ipv4.ip_forward", "1"), ("net.ipv4.conf.all.rp_filter", "0"), ("net.ipv4.conf.default.rp_filter", "0")):
        ip("netns", "exec", lab, "sysctl", "-qw", f"{key}={value}")


def prepare(node: LabNode) -> None:
    """The node's gateways on the bridge; its reserved address not routed yet (a new device)."""
    ip("-n", node.lab, "addr", "replace", f"{node.public_gateway}/31", "dev", BRIDGE)
    ip("-n", node.lab, "addr", "replace", f"{node.private_gateway}/31", "dev", BRIDGE)
    ip("-n", node.lab, "route", "del", f"{node.reserved}/32", check=False)


def plug(node: LabNode, timeout: float = 15) -> None:
    """Put bond0's peer on the bridge as soon as systemd-nspawn has made it."""
    deadline = time.monotonic() + timeout
    while ip("-n", node.lab, "link", "show", node.port, check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise VentError(f"lab: {node.name}'s bond0 never appeared (no {node.port} in {node.lab})")
        time.sleep(0.05)
    ip("-n", node.lab, "link", "set", node.port, "master", BRIDGE, "up")


def assign(node: LabNode) -> None:
    """Route the node's reserved address to it, as the provider does on assignment."""
    ip("-n", node.lab, "route", "replace", f"{node.reserved}/32", "via", node.public)


def unassign(node: LabNode) -> None:
    if exists(node.lab):
        ip("-n", node.lab, "route", "del", f"{node.reserved}/32", check=False)


def stop_processes(lab: str) -> None:
    """Kill whatever runs in the lab's namespace (its service), even if the lab lost track of it."""
    if not exists(lab):
        return
    for pid in ip("netns", "pids", lab).stdout.split():
        try:
            os.kill(int(pid), signal.SIGTERM)
        except ProcessLookupError:
            pass


def destroy(lab: str) -> None:
    stop_processes(lab)
    if exists(lab):
        ip("netns", "del", lab)
