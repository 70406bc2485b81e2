"""The lab, measured (root): building the programs and images, booting a cluster of 3
controllers and 2 workers to every node Ready, and `vent-bake smoke` passing; the memory each
node uses. Prints its figures.

    sudo python benchmarks/lab.py [--cold] [--dir DIR]

--cold builds into a new, empty build cache: every module is compiled from nothing (13 minutes
measured on 2 cores, the Go module cache empty too). Without it the build step measures the
cache as it is.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vent_bake.lab import build, nodes, plan  # noqa: E402

VENT = [sys.executable, "-m", "vent_bake"]


def timed(command: list[str], env: dict | None = None) -> float:
    started = time.monotonic()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return time.monotonic() - started


def ready(kubectl: str, kubeconfig: Path, lab: str) -> int:
    proc = subprocess.run(["ip", "netns", "exec", lab, kubectl, f"--kubeconfig={kubeconfig}", "get", "nodes", "-o", "json"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return 0
    return sum(any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"])
               for n in json.loads(proc.stdout)["items"])


def memory(machine: str) -> int | None:
    """Bytes the node's processes use now, from its memory cgroup."""
    for tree in nodes.hierarchies():
        for name in ("memory.usage_in_bytes", "memory.current"):
            path = tree / "vent-lab" / machine / name
            if path.exists():
                return int(path.read_text())
    return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cold", action="store_true", help="build into a new, empty build cache")
    parser.add_argument("--dir", type=Path, default=None, help="where the lab's cluster directory goes")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("the lab needs root")
    env = dict(os.environ)
    if args.cold:
        env["VENT_BUILD_CACHE"] = tempfile.mkdtemp(prefix="vent-build-cold-", dir="/var/tmp")
        os.environ["VENT_BUILD_CACHE"] = env["VENT_BUILD_CACHE"]
    env.setdefault("VENT_LAB_DIR", "/var/tmp/vent-bake-bench-lab")
    os.environ["VENT_LAB_DIR"] = env["VENT_LAB_DIR"]
    directory = args.dir or Path(tempfile.mkdtemp(prefix="vent-lab-bench-", dir="/var/tmp"))
    cluster = directory / "cluster.yaml"

    build_s = timed([*VENT, "lab", "build"], env)
    init_s = timed([*VENT, "lab", "init", str(directory), "--name", "bench", "--force"], env)  # the images are made here
    timed([*VENT, "render", "-c", str(cluster)], env)
    kubectl = str(build.built("kubectl"))
    lab = "vent-lab-bench"
    timed([*VENT, "lab", "down", "-c", str(cluster)], env)
    started = time.monotonic()
    up_s = timed([*VENT, "lab", "up", "-c", str(cluster)], env)
    while ready(kubectl, directory / ".vent/admin.kubeconfig", lab) < 5:
        time.sleep(1)
    ready_s = time.monotonic() - started
    smoke = subprocess.run(["ip", "netns", "exec", lab, *VENT, "smoke", "-c", str(cluster), "--kubectl", kubectl, "--outside",
                            plan.OUTSIDE_URL, "--json"], cwd=ROOT, env=env, capture_output=True, text=True)
    smoke_s = time.monotonic() - started
    results = json.loads(smoke.stdout or "[]")
    used = {n: memory(f"{lab}-{n}") for n in ("controller-0", "controller-1", "controller-2", "worker-0", "worker-1")}
    timed([*VENT, "lab", "down", "-c", str(cluster)], env)

    print(f"build ({'cold, empty cache' if args.cold else 'cache as it was'}): {build_s:.0f} s; images and lab lock: {init_s:.0f} s")
    print(f"lab up (every node's cloud-init done): {up_s:.0f} s")
    print(f"lab up to every node Ready: {ready_s:.0f} s")
    print(f"lab up to smoke done: {smoke_s:.0f} s ({sum(r['status'] == 'ok' for r in results)} ok,"
          f" {sum(r['status'] == 'FAILED' for r in results)} failed, {sum(r['status'] == 'not here' for r in results)} not here)")
    for node, value in used.items():
        print(f"memory {node}: {value / 2**20:.0f} MiB" if value else f"memory {node}: unknown")


if __name__ == "__main__":
    main()
