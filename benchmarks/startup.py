"""The command line's start-up, measured: `vent-bake --version` and `--help` (target: under
0.1 s), which modules `render` loads (never requests, urllib3 or packet-python), a cold render
of 3 controllers and 20 workers (target: at most 0.3 s) and a warm render of 3 controllers and
1,000 workers (target: at most 0.6 s). Wall times of the real command, median of --repeat runs.

    python benchmarks/startup.py [--repeat 7] [--dir DIR]
"""

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vent_bake import example  # noqa: E402

VENT = [sys.executable, "-m", "vent_bake"]
NOT_FOR_RENDER = ("requests", "urllib3", "packet")


def wall(command: list[str], cwd: Path | None = None) -> float:
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"{' '.join(command)} failed: {proc.stderr[-500:]}")
    return elapsed


def median(command: list[str], repeat: int, prepare=None) -> float:
    times = []
    for _ in range(repeat):
        if prepare:
            prepare()
        times.append(wall(command))
    return statistics.median(times)


def loaded_by_render(cluster: Path) -> list[str]:
    code = ("import sys, runpy; sys.argv = ['vent-bake', 'render', '-c', sys.argv[1]]\n"
            "try:\n    runpy.run_module('vent_bake', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print(' '.join(sorted(sys.modules)), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code, str(cluster)], capture_output=True, text=True)
    modules = proc.stderr.strip().splitlines()[-1].split()
    return sorted(m for m in modules if m.split(".")[0] in NOT_FOR_RENDER)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--dir", type=Path, default=ROOT / ".bench")
    args = parser.parse_args()
    args.dir.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="startup-", dir=args.dir))
    try:
        version = median([*VENT, "--version"], args.repeat)
        help_ = median([*VENT, "--help"], args.repeat)
        small, big = work / "small", work / "big"
        for directory, workers in ((small, 20), (big, 1000)):
            directory.mkdir()
            (directory / "cluster.yaml").write_text(example.cluster_yaml("bench", 3, workers))

        def fresh_small():
            for name in ("artifacts", ".vent"):
                shutil.rmtree(small / name, ignore_errors=True)

        cold = median([*VENT, "render", "-c", str(small / "cluster.yaml")], args.repeat, fresh_small)
        wall([*VENT, "render", "-c", str(big / "cluster.yaml")])  # the cold one, not measured here (benchmarks/render.py does)
        warm = median([*VENT, "render", "-c", str(big / "cluster.yaml")], args.repeat)
        loaded = loaded_by_render(small / "cluster.yaml")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def verdict(value: float, target: float) -> str:
        return f"{value:.3f} s (target {target} s: {'met' if value <= target else 'MISSED'})"

    print(f"vent-bake --version: {verdict(version, 0.1)}")
    print(f"vent-bake --help: {verdict(help_, 0.1)}")
    print(f"render loads of requests, urllib3, packet-python: {', '.join(loaded) or 'none'}")
    print(f"cold render, 3 controllers + 20 workers: {verdict(cold, 0.3)}")
    print(f"warm render, 3 controllers + 1000 workers: {verdict(warm, 0.6)}")


if __name__ == "__main__":
    main()
