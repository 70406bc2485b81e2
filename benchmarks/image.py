"""Node images, measured (root): `vent-bake image build` (time; each output's size), then the
lab booted twice, from the golden image as today and from the baked images, each node's
first boot to cloud-init done and the bytes it downloaded (from the lab service's log: each
request's file, by the node's address). Prints its figures.

    sudo python benchmarks/image.py [--dir DIR] [--workers 1]

Builds into a lab cluster directory (`lab init`, so `vent-bake lab build` must have run).
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vent_bake import workspace  # noqa: E402
from vent_bake.lab import lab as steps  # noqa: E402

VENT = [sys.executable, "-m", "vent_bake"]
REQUEST = re.compile(r'^\S+ (\S+) "GET (/(?:artifacts|mirror)/\S+) HTTP/[\d.]+" 200 ')


def timed(command: list[str]) -> float:
    started = time.monotonic()
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(map(str, command))} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return time.monotonic() - started


def first_boot(cluster: Path) -> tuple[float, dict[str, float], dict[str, dict[str, int]]]:
    """`lab up` from nothing: its wall time, each node's first boot (its container started,
    by its nspawn pid file, to cloud-init's modules-final finished) and bytes fetched."""
    timed([*VENT, "lab", "down", "-c", cluster])
    up = timed([*VENT, "lab", "up", "-c", cluster, "--timeout", "900"])
    lab = steps.Lab.load(workspace.Paths.resolve(cluster, None, None), lambda _: None)
    service = json.loads((lab.work / "service.json").read_text())
    by_address = service["nodes"]
    served = {"artifacts": Path(service["artifacts"]), "mirror": Path(service["mirror"])}
    fetched = {n.name: {"artifacts": 0, "mirror": 0} for n in lab.nodes}
    for line in (lab.work / "service.log").read_text().splitlines():
        match = REQUEST.match(line)
        if match and match[1] in by_address:
            prefix, _, rest = match[2].lstrip("/").partition("/")
            fetched[by_address[match[1]]][prefix] += (served[prefix] / rest.split("?")[0]).stat().st_size
    booted = {}
    for node in lab.nodes:
        status = json.loads(lab.dir(node).file("/var/lib/cloud/data/status.json").read_text())["v1"]
        booted[node.name] = status["modules-final"]["finished"] - lab.dir(node).pid_file.stat().st_mtime
    return up, booted, fetched


def sizes(directory: Path) -> str:
    def mib(n: int) -> str:
        return f"{n / 2**20:.0f} MiB"
    return ", ".join(f"{p.name} {mib(p.stat().st_size)}" + (f" ({mib(p.stat().st_blocks * 512)} allocated)" if p.name == "disk.raw" else "")
                     for p in sorted(directory.iterdir()) if p.name != "manifest.json")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=Path, default=None, help="where the lab's cluster directory goes")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("building images and the lab need root")
    os.environ.setdefault("VENT_LAB_DIR", "/var/tmp/vent-bake-bench-lab")
    directory = args.dir or Path(tempfile.mkdtemp(prefix="vent-image-bench-", dir="/var/tmp"))
    cluster = directory / "cluster.yaml"
    timed([*VENT, "lab", "init", directory, "--name", "imgbench", "--workers", str(args.workers), "--force"])
    timed([*VENT, "render", "-c", cluster])
    built = {role: timed([*VENT, "image", "build", "-c", cluster, "--role", role]) for role in ("controller", "worker")}
    version = next((directory / "images").iterdir()).name.split("-", 1)[1]
    try:
        unbaked = first_boot(cluster)
        text = cluster.read_text()
        cluster.write_text(text.replace("\nboot:\n", f"\nimage:\n  controllers: controller-{version}\n  workers: worker-{version}\n\nboot:\n"))
        timed([*VENT, "render", "-c", cluster])
        baked = first_boot(cluster)
    finally:
        subprocess.run([*VENT, "lab", "down", "-c", cluster], cwd=ROOT, capture_output=True)

    for role, seconds in built.items():
        print(f"image build, {role}: {seconds:.0f} s; {sizes(directory / 'images' / f'{role}-{version}')}")
    for label, (up, booted, fetched) in (("unbaked (golden image)", unbaked), ("baked (node images)", baked)):
        print(f"{label}: lab up {up:.0f} s")
        for node in booted:
            print(f"  {node}: first boot to cloud-init done {booted[node]:.0f} s, downloaded {fetched[node]['mirror'] / 2**20:.1f} MiB"
                  f" of binaries and {fetched[node]['artifacts'] / 2**10:.0f} KiB of its own files")


if __name__ == "__main__":
    main()
