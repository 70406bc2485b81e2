"""The command line's start-up, measured: `vent-bake --version` and `--help` (target: under
0.1 s), which modules `render` loads (never requests, urllib3 or packet-python), a cold render
of 3 controllers and 20 workers (target: at most 0.3 s) and a warm render of 3 controllers and
1,000 workers (target: at most 0.6 s), and `vent-bake userdata NODE`. Wall times of the real
command, median of --repeat runs, in each --dir (default: ./.bench on disk, and /dev/shm),
with the package's modules compiled to bytecode as an installed wheel has them.

A cold render is a first one: each run in a new directory, the disk flushed before it (so no
earlier run's writes land on it). It is measured twice: with the user's cache of compiled
templates as any earlier run of vent-bake leaves it, and with none (a first run ever).

    python benchmarks/startup.py [--repeat 7] [--dir DIR ...]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from render import as_installed, filesystem  # noqa: E402  (benchmarks/render.py, beside this script)
from vent_bake import example  # noqa: E402

VENT = [sys.executable, "-m", "vent_bake"]
NOT_FOR_RENDER = ("requests", "urllib3", "packet")


def wall(command: list[str], env: dict | None = None) -> float:
    started = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"{' '.join(command)} failed: {proc.stderr[-500:]}")
    return elapsed


def median(command: list[str], repeat: int) -> float:
    return statistics.median(wall(command) for _ in range(repeat))


def loaded_by_render(cluster: Path) -> list[str]:
    code = ("import sys, runpy; sys.argv = ['vent-bake', 'render', '-c', sys.argv[1]]\n"
            "try:\n    runpy.run_module('vent_bake', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print(' '.join(sorted(sys.modules)), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code, str(cluster)], capture_output=True, text=True)
    modules = proc.stderr.strip().splitlines()[-1].split()
    return sorted(m for m in modules if m.split(".")[0] in NOT_FOR_RENDER)


def cluster(base: Path, workers: int) -> Path:
    """A cluster file of 3 controllers and `workers` workers, in a new directory below base."""
    path = Path(tempfile.mkdtemp(prefix=f"w{workers}-", dir=base)) / "cluster.yaml"
    path.write_text(example.cluster_yaml("bench", 3, workers))
    return path


def cold(base: Path, repeat: int, first_ever: bool = False) -> float:
    """A first render of 3 controllers + 20 workers, each run in a new directory; with
    first_ever, each also with an empty cache of compiled templates."""
    times = []
    for _ in range(repeat):
        path = cluster(base, 20)
        env = {**os.environ, "XDG_CACHE_HOME": tempfile.mkdtemp(prefix="no-cache-", dir=base)} if first_ever else None
        os.sync()
        times.append(wall([*VENT, "render", "-c", str(path)], env=env))
    return statistics.median(times)


def measure(base: Path, repeat: int) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="startup-", dir=base))
    try:
        figures = {"cold": cold(work, repeat), "cold, no compiled templates": cold(work, repeat, first_ever=True)}
        big = cluster(work, 1000)
        wall([*VENT, "render", "-c", str(big)])  # the cold one (benchmarks/render.py measures it)
        wall([*VENT, "render", "-c", str(big)])  # the first warm one stamps again what it had to read
        figures["warm"] = median([*VENT, "render", "-c", str(big)], repeat)
        small = next(work.glob("w20-*/cluster.yaml"))
        figures["userdata"] = median([*VENT, "userdata", "worker-3", "-c", str(small)], repeat)
        figures["loaded"] = loaded_by_render(small)
        return figures
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--dir", type=Path, action="append")
    args = parser.parse_args()
    dirs = args.dir or [ROOT / ".bench", *[Path("/dev/shm")] * os.path.isdir("/dev/shm")]
    print(as_installed())

    def verdict(value: float, target: float) -> str:
        return f"{value:.3f} s (target {target} s: {'met' if value <= target else 'MISSED'})"

    print(f"vent-bake --version: {verdict(median([*VENT, '--version'], args.repeat), 0.1)}")
    print(f"vent-bake --help: {verdict(median([*VENT, '--help'], args.repeat), 0.1)}")
    for base in dirs:
        base.mkdir(exist_ok=True)
        found = measure(base, args.repeat)
        print(f"in {base} ({filesystem(base)}):")
        print(f"  render loads of requests, urllib3, packet-python: {', '.join(found['loaded']) or 'none'}")
        print(f"  cold render, 3 controllers + 20 workers: {verdict(found['cold'], 0.3)}")
        print(f"  the same, no compiled templates cached (a first run ever): {found['cold, no compiled templates']:.3f} s")
        print(f"  warm render, 3 controllers + 1000 workers: {verdict(found['warm'], 0.6)}")
        print(f"  vent-bake userdata worker-3 (3 + 20): {found['userdata']:.3f} s")


if __name__ == "__main__":
    main()
