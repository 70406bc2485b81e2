"""`vent-bake lab up|status|down|exec`: the lab's steps, in order.

    up      check the host and the bundle, fill the mirror if the official binaries are
            wanted, build (or reuse) the golden image, bring up the
            provider's namespace and service, then for each node: its namespace and bond0,
            a fresh overlay and seed, systemd-nspawn; assign each node's reserved address once
            its network unit waits for it; wait until cloud-init is done everywhere
    status  each node's state, cloud-init's result and the boot log's last word, and every
            component the lab could not exercise, with the reason
    down    stop and discard nodes (all of them: the whole lab, namespaces and service too)
    exec    a command inside a node

The lab's disks and logs are under $VENT_LAB_DIR (default /var/lib/vent-bake/lab): the golden
image in cache/, each lab in a directory named after it.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from vent_bake import artifacts, binaries, manifest, render, workspace
from vent_bake.config import Cluster
from vent_bake.errors import VentError
from vent_bake.image import build as image_build
from vent_bake.lab import image, images, mirror, network, nodes, plan
from vent_bake.lab.nodes import NodeDir
from vent_bake.lab.plan import LabNode
from vent_bake.state import State

BOOT_LOG = "/var/log/vent-boot.log"
CLOUD_INIT_RESULT = "/var/lib/cloud/data/result.json"
TOOLS = ("systemd-nspawn", "nsenter", "ip", "mount")


def base() -> Path:
    return Path(os.environ.get("VENT_LAB_DIR", "/var/lib/vent-bake/lab"))


@dataclass
class Lab:
    paths: workspace.Paths
    cluster: Cluster
    state: State
    nodes: list[LabNode]
    userdata: dict[str, str] | None  # each node's bootable userdata; None if the artifacts are not as reviewed
    problem: VentError | None  # why not

    @classmethod
    def load(cls, paths: workspace.Paths, say: Callable[[str], None]) -> "Lab":
        with workspace.opened(paths, write=False, say=say) as ws:
            cluster, state = ws.cluster, ws.state
            try:
                tree = artifacts.reviewed(paths.out, manifest.inputs_digest(ws.text, state, cluster))
                userdata, problem = {n.name: artifacts.revealed(tree, cluster, state, n.name) for n in cluster.nodes}, None
            except VentError as exc:
                userdata, problem = None, exc
        return cls(paths, cluster, state, plan.layout(cluster, render.addresses(cluster, state)), userdata, problem)

    @property
    def name(self) -> str:
        return plan.name(self.cluster)

    @property
    def work(self) -> Path:
        return base() / self.name

    def dir(self, node: LabNode) -> NodeDir:
        return NodeDir(self.work, node)

    def pick(self, names: tuple[str, ...]) -> list[LabNode]:
        known = {n.name: n for n in self.nodes}
        for name in names:
            if name not in known:
                raise VentError(f"lab: no node {name!r} in {self.paths.cluster}")
        return [known[n] for n in names] if names else self.nodes


# --- up -------------------------------------------------------------------------------------------

def check_host() -> None:
    if os.geteuid() != 0:
        raise VentError("lab: needs root (network namespaces, overlay mounts, systemd-nspawn)")
    missing = [t for t in TOOLS if not shutil.which(t)]
    if missing:
        raise VentError(f"lab: {', '.join(missing)} not found; install the Debian packages systemd-container, util-linux and iproute2")


def check_bundle(lab: Lab) -> None:
    """The lab is closed: every URL a node uses must be the lab's own service."""
    boot = lab.cluster.boot
    for field, have, want in (("boot.artifacts_url", boot.artifacts_url, plan.ARTIFACTS_URL),
                              ("boot.metadata_url", boot.metadata_url, plan.METADATA_URL)):
        if have != want:
            raise VentError(f"{lab.paths.cluster}: {field}: is {have}; the lab serves it at {want}"
                            " (`vent-bake lab init` writes a cluster file for the lab)")
    for role in ("controller", "worker"):
        for download in binaries.downloads(lab.cluster, role):
            if not download.url.startswith(plan.MIRROR_URL):
                raise VentError(f"{lab.paths.cluster}: {download.name} comes from {download.url}, which the closed lab cannot"
                                f" reach; the lab serves binaries at {plan.MIRROR_URL} (`vent-bake lab init` writes a lab lock)")
    if lab.cluster.registry_mirrors.get(images.REGISTRY, "").rstrip("/") != plan.REGISTRY_URL:
        raise VentError(f"{lab.paths.cluster}: registry_mirrors: {images.REGISTRY} must be pulled through the lab's registry"
                        f" {plan.REGISTRY_URL} (`vent-bake lab init` writes a cluster file for the lab)")


def _service_running(lab: Lab) -> bool:
    ready = lab.work / "service.ready"
    return ready.exists() and nodes.alive(int(ready.read_text()))


def start_service(lab: Lab) -> None:
    if _service_running(lab):
        serving = json.loads((lab.work / "service.json").read_text())["artifacts"]
        if serving != str(lab.paths.out):
            raise VentError(f"lab: {lab.name} is up for another cluster's artifacts ({serving}); take that lab down"
                            " first, or give this cluster another name")
        return
    network.stop_processes(lab.name)  # a service the lab lost track of would hold the address
    (lab.work / "metadata").mkdir(parents=True, exist_ok=True)
    (lab.work / "service.ready").unlink(missing_ok=True)
    addresses = {a: n.name for n in lab.nodes for a in (n.public, n.private, n.reserved)}
    config = {"address": plan.SERVICE_IP, "outside": plan.OUTSIDE_IP, "artifacts": str(lab.paths.out),
              "mirror": str(lab.paths.cluster.parent / mirror.MIRROR_DIR), "nodes": addresses}
    (lab.work / "service.json").write_text(json.dumps(config, indent=2))
    _spawn(lab, "service", [sys.executable, "-m", "vent_bake.lab.service", str(lab.work)])
    _spawn(lab, "registry", [REGISTRY_PROGRAM, "serve", str(_registry_config(lab))])
    deadline = time.monotonic() + 15
    while not (lab.work / "service.ready").exists() or not _answers(lab, f"{plan.REGISTRY_URL}/v2/"):
        if time.monotonic() > deadline:
            raise VentError(f"lab: the service or the registry did not start; see {lab.work}/service.err and registry.err")
        time.sleep(0.2)


REGISTRY_PROGRAM = "/usr/bin/docker-registry"  # Debian's docker-registry: the reference distribution registry


def _registry_config(lab: Lab) -> Path:
    path = lab.work / "registry.yml"
    path.write_text(yaml.safe_dump({"version": 0.1, "log": {"level": "warn"},
                                    "storage": {"filesystem": {"rootdirectory": str(lab.work / "registry")}},
                                    "http": {"addr": plan.REGISTRY}}))
    return path


def _spawn(lab: Lab, name: str, command: list[str]) -> None:
    """A process of the lab's, inside its namespace, logging to <work>/<name>.err."""
    with open(lab.work / f"{name}.err", "ab") as err:
        subprocess.Popen(["ip", "netns", "exec", lab.name, *command], stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                         start_new_session=True)


def _answers(lab: Lab, url: str) -> bool:
    return subprocess.run(["ip", "netns", "exec", lab.name, "curl", "-fs", "-o", "/dev/null", "--max-time", "2", url]).returncode == 0


def roots(lab: Lab, say: Callable[[str], None]) -> dict[str, Path]:
    """Each role's root filesystem: its node image (the cluster file's `image`), or the golden one."""
    cache = base() / "cache"
    images = image_build.check(lab.paths.cluster, lab.cluster)  # refused if rebuilt from another lock since render
    return {role: image.baked(images[role] / "filesystem.squashfs", cache, say) if role in images else image.golden(cache, say)
            for role in image_build.ROLES}


def fill_registry(lab: Lab, say: Callable[[str], None]) -> None:
    """Put every image the lock names into the lab's registry: the lab's own, made here, or
    (`lab init --official`) the official ones, copied from their registry on the host side."""
    wanted = set(lab.cluster.lock[lab.cluster.versions.kubernetes]["images"].values())
    made = images.made(lab.cluster.arch, say)
    ours = {images.reference(image, digest): name for name, (image, _, digest) in made.items()}
    images.push({ours[ref]: made[ours[ref]] for ref in wanted if ref in ours}, lab.name, plan.REGISTRY)
    for ref in sorted(wanted - ours.keys()):
        say(f"registry: copying {ref} from its registry")
        images.copy(ref, lab.name, plan.REGISTRY)


def _publish_metadata(lab: Lab, node: LabNode, assigned: bool) -> None:
    target = lab.work / "metadata" / f"{node.name}.json"
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(plan.metadata(node, lab.cluster, assigned), indent=2))
    tmp.replace(target)


def up(lab: Lab, names: tuple[str, ...], say: Callable[[str], None], timeout: float = 600, source: str | None = None) -> None:
    check_host()
    check_bundle(lab)
    if lab.problem:
        raise lab.problem
    userdata = lab.userdata
    targets = lab.pick(names) if names else [n for n in lab.nodes if lab.dir(n).pid is None]
    mirror.fill(lab.cluster, lab.paths.cluster.parent / mirror.MIRROR_DIR, source, say)
    lower = roots(lab, say)
    lab.work.mkdir(parents=True, exist_ok=True)
    network.create(lab.name)
    start_service(lab)
    fill_registry(lab, say)
    for node in targets:
        network.prepare(node)
        _publish_metadata(lab, node, assigned=False)
        nodes.boot(lab.dir(node), lower[node.role], userdata[node.name], plan.network_config(node))
        network.plug(node)
        say(f"{node.name}: booting ({node.role}, bond0 {node.public}/31, private {node.private}/31)")
    settle(lab, targets, say, timeout)


def settle(lab: Lab, targets: list[LabNode], say: Callable[[str], None], timeout: float) -> None:
    """Assign each node's reserved address once its network unit waits for it, as the provider
    does after a device is up; return when every node's cloud-init is done and its network
    ready, or its boot has failed."""
    assigned: set[str] = set()
    pending = {n.name: n for n in targets}
    deadline = time.monotonic() + timeout
    while pending:
        for name, node in list(pending.items()):
            d = lab.dir(node)
            log = _read(d.file(BOOT_LOG))
            if name not in assigned and f"waiting for {node.reserved} to be assigned" in log:
                network.assign(node)
                _publish_metadata(lab, node, assigned=True)
                assigned.add(name)
                say(f"{name}: reserved address {node.reserved} assigned")
            cloud_init = _cloud_init(d)
            failed = "FAILED:" in log or cloud_init == "failed"
            if cloud_init != "running" and ("vent-network: network ready" in log or failed):
                say(f"{name}: cloud-init done" + (f"; the boot failed: {_last(log, 'FAILED:')}" if failed else ""))
                del pending[name]
            elif d.pid is None:
                raise VentError(f"lab: node {name} stopped while booting; see {d.console}")
        if pending and time.monotonic() > deadline:
            raise VentError(f"lab: {', '.join(sorted(pending))} not done after {timeout:.0f} s; see `vent-bake lab status`")
        time.sleep(0.5)


def _cloud_init(d: NodeDir) -> str:
    """running (no result yet), done, or failed (it reported errors), from its result file."""
    result = _read(d.file(CLOUD_INIT_RESULT))
    return "running" if not result else "failed" if json.loads(result)["v1"]["errors"] else "done"


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _last(text: str, marker: str) -> str:
    return next((line.split(marker, 1)[1].strip() for line in reversed(text.splitlines()) if marker in line), "")


# --- status ---------------------------------------------------------------------------------------

def status(lab: Lab) -> tuple[list[dict], dict[str, str]]:
    """(a row per node, component -> where the binary the lab runs comes from)."""
    rows = []
    for node in lab.nodes:
        d = lab.dir(node)
        log = _read(d.file(BOOT_LOG))
        boot = f"FAILED: {_last(log, 'FAILED:')}" if "FAILED:" in log else (log.strip().splitlines() or ["-"])[-1].split(" ", 1)[-1]
        cloud_init = _cloud_init(d)
        rows.append({"node": node.name, "role": node.role, "state": "running" if d.pid else "stopped", "reserved": node.reserved,
                     "cloud-init": "-" if cloud_init == "running" and not d.pid else cloud_init, "boot log": boot})
    return rows, mirror.sources(lab.cluster)


# --- down and exec ---------------------------------------------------------------------------------

def down(lab: Lab, names: tuple[str, ...], say: Callable[[str], None]) -> None:
    """Stop and discard the named nodes; with no names, the whole lab, including any node its
    records hold that the cluster file no longer names (a lab left up by a killed run)."""
    check_host()
    for node in lab.pick(names):
        nodes.discard(lab.dir(node))
        network.unassign(node)
        say(f"{node.name}: stopped and discarded")
    if names:
        return
    known = {n.name for n in lab.nodes}
    recorded = lab.work / "nodes"
    for name in sorted(p.name for p in recorded.iterdir()) if recorded.is_dir() else ():
        if name not in known:
            nodes.discard(NodeDir(lab.work, plan.stray(lab.name, name)))
            say(f"{name}: stopped and discarded (no longer in the cluster file)")
    network.destroy(lab.name)
    shutil.rmtree(lab.work, ignore_errors=True)
    nodes.remove_empty_cgroup_roots()
    say(f"lab {lab.name}: down")


def exec_in(lab: Lab, name: str, command: list[str]) -> int:
    (node,) = lab.pick((name,))
    return nodes.run_in(lab.dir(node), command).returncode
