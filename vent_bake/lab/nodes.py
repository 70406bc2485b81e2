"""One lab node: an overlay of its root filesystem with the node's NoCloud seed, booted by
systemd-nspawn with systemd as PID 1, in a network namespace of its own whose `bond0` is a
veth into the lab's namespace (--network-veth-extra; a private network also leaves the node's
/proc/sys/net writable, as a machine's is).

The host runs no systemd (no machined), so nspawn runs with --register=no --keep-unit, and
each node starts from a cgroup of its own in every hierarchy: nodes sharing one race on their
units, and their kubelets would share pods' cgroups. What a kubelet needs of the machine under
it (as kind gives a node in a container): the cgroup hierarchies writable (the image's init,
files/init, before systemd), /dev/kmsg, every capability but loading kernel modules, the
keyring and bpf system calls, and containerd's data on a real disk (an overlay cannot be the
upper directory of containerd's own overlays).
"""

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import yaml

from vent_bake.errors import VentError
from vent_bake.lab import image
from vent_bake.lab.network import run
from vent_bake.lab.plan import LabNode

CGROUP_ROOT = Path("/sys/fs/cgroup")


class NodeDir:
    """Where a node lives on the host: its overlay, console log and nspawn's pid."""

    def __init__(self, workdir: Path, node: LabNode):
        self.node, self.base = node, workdir / "nodes" / node.name
        self.upper, self.work, self.root = self.base / "upper", self.base / "work", self.base / "root"
        self.console, self.pid_file = self.base / "console.log", self.base / "nspawn.pid"

    def file(self, path: str) -> Path:
        """A file inside the running node, as the host sees it."""
        return self.root / path.lstrip("/")

    @property
    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return pid if alive(pid) else None

    def leader(self) -> int | None:
        """PID 1 of the node: the child nspawn started."""
        pid = self.pid
        if pid is None:
            return None
        for task in Path(f"/proc/{pid}/task").iterdir():
            children = (task / "children").read_text().split()
            if children:
                return int(children[0])
        return None


def hierarchies() -> list[Path]:
    """Every cgroup hierarchy mounted here: each v1 controller's (and name=systemd's) and the
    unified one, or the one cgroup v2 tree."""
    if (CGROUP_ROOT / "cgroup.procs").exists():
        return [CGROUP_ROOT]
    return sorted(t for t in CGROUP_ROOT.iterdir() if (t / "cgroup.procs").exists() and not t.is_symlink())


def _cgroups(node: LabNode) -> list[Path]:
    """The node's own cgroup in every hierarchy."""
    return [t / "vent-lab" / node.machine for t in hierarchies()]


def _make_cgroup(cgroup: Path) -> None:
    """mkdir, and for cpuset the parent's CPUs and memory nodes (empty, no task may join)."""
    for directory in (cgroup.parent, cgroup):
        directory.mkdir(exist_ok=True)
        for setting in ("cpuset.cpus", "cpuset.mems"):
            own = directory / setting
            if own.exists() and not own.read_text().strip():
                own.write_text((directory.parent / setting).read_text())


def _seed(d: NodeDir, userdata: str, network: dict) -> None:
    seed = d.file("/var/lib/cloud/seed/nocloud")
    seed.mkdir(parents=True, exist_ok=True)
    # A new instance id per boot of a fresh node: a replaced device is a new instance.
    meta = {"instance-id": f"{d.node.machine}-{time.time_ns()}", "local-hostname": d.node.name}
    (seed / "meta-data").write_text(yaml.safe_dump(meta))
    (seed / "user-data").write_text(userdata)
    (seed / "network-config").write_text(yaml.safe_dump(network, sort_keys=False))


def boot(d: NodeDir, lower: Path, userdata: str, network: dict) -> None:
    """A fresh node: an empty overlay of its root filesystem (the golden image, or its role's
    node image), the lab's machine files, its seed, and systemd-nspawn booting it."""
    discard(d)
    for path in (d.upper, d.work, d.root):
        path.mkdir(parents=True)
    run("mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lower},upperdir={d.upper},workdir={d.work}", str(d.root))
    for path, (data, mode) in image.machine_files().items():
        target = d.file(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        target.chmod(mode)
    _seed(d, userdata, network)
    cgroups = _cgroups(d.node)
    for cgroup in cgroups:
        _make_cgroup(cgroup)
    containerd = d.base / "containerd"
    containerd.mkdir()

    def join_own_cgroup():
        for cgroup in cgroups:
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))

    # nsenter, not `ip netns exec`: that remounts /sys, and with it the cgroup trees nspawn needs.
    command = ["nsenter", f"--net=/run/netns/{d.node.lab}",
               "systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--directory", str(d.root),
               "--machine", d.node.machine, "--hostname", d.node.name,
               "--private-network", f"--network-veth-extra={d.node.port}:bond0",
               "--capability=all", "--drop-capability=CAP_SYS_MODULE", "--system-call-filter=@keyring bpf perf_event_open",
               "--bind=/dev/kmsg", f"--bind={containerd}:/var/lib/containerd",
               "--kill-signal=SIGRTMIN+3", image.INIT]
    with open(d.console, "ab") as console:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=join_own_cgroup)
    d.pid_file.write_text(str(proc.pid))


def stop(d: NodeDir, timeout: float = 30) -> None:
    """Power the node off (nspawn passes SIGTERM on as an orderly shutdown), then kill what is left."""
    pid = d.pid
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if alive(pid):
            os.killpg(pid, signal.SIGKILL)
            time.sleep(0.5)
    for cgroup in _cgroups(d.node):
        _kill_and_remove(cgroup)


def discard(d: NodeDir) -> None:
    """Stop the node and throw its disk away, as a reclaimed device's is."""
    stop(d)
    if d.root.is_mount():
        run("umount", str(d.root))
    shutil.rmtree(d.base, ignore_errors=True)
    shutil.rmtree(f"/run/systemd/nspawn/propagate/{d.node.machine}", ignore_errors=True)


def run_in(d: NodeDir, command: list[str], **kw) -> subprocess.CompletedProcess:
    """Run a command inside the node's namespaces, as `machinectl shell` would."""
    leader = d.leader()
    if leader is None:
        raise VentError(f"lab: node {d.node.name} is not running; `vent-bake lab up` boots it")
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    return subprocess.run(["nsenter", "--target", str(leader), "--mount", "--uts", "--ipc", "--net", "--pid", "--", *command],
                          env=env, **kw)


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting to be reaped (by us if it is our child)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _kill_and_remove(cgroup: Path) -> None:
    if not cgroup.exists():
        return
    for _ in range(50):
        pids = [int(p) for c in cgroup.rglob("cgroup.procs") for p in c.read_text().split()]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    for path in sorted((p for p in cgroup.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True) + [cgroup]:
        try:
            path.rmdir()
        except OSError:
            pass


def remove_empty_cgroup_roots() -> None:
    for tree in hierarchies():
        try:
            (tree / "vent-lab").rmdir()
        except OSError:
            pass
