#!/usr/bin/env python3
"""Launch speed: N nodes against the fake Metal API with 250 ms added to every call.

Prints, for 25, 50 and 100 nodes, the wall time of `vent-bake launch` (reserve and render
are done first, untimed) and the API calls it made by kind, as the fake server counted them.
Devices become active one second after they are created: provisioning real hardware takes
minutes, so what this measures is vent-bake's own orchestration.

    python benchmarks/launch.py [--latency 0.25] [--concurrency 32]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from click.testing import CliRunner

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))

from fakemetal import DOCUMENT, FakeMetal, Metal, make_tls  # noqa: E402

from vent_bake import example  # noqa: E402
from vent_bake.cli import main as vent  # noqa: E402

TOKEN, PROJECT = "bench-token", "6f1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
TARGET_SECONDS = 5.0
DEFAULT_CONCURRENCY = 16  # `vent-bake launch --concurrency`


def cluster_file(directory: Path, nodes: int, published: str) -> Path:
    text = example.cluster_yaml("bench", 3, nodes - 3).replace("00000000-0000-0000-0000-000000000000", PROJECT)
    text = text.replace("https://files.example.com/vent/artifacts/", f"{published}/")
    text = "\n".join(line for line in text.splitlines() if not line.strip().startswith("address: 198.18.")) + "\n"
    path = directory / "cluster.yaml"
    path.write_text(text)
    return path


def cli(*args) -> str:
    result = CliRunner().invoke(vent, [str(a) for a in args])
    if result.exit_code != 0:
        sys.exit(f"vent-bake {' '.join(map(str, args))} failed: {result.output}")
    return result.output


def bench(base: Path, nodes: int, latency: float, concurrency: int) -> tuple[float, dict]:
    work = base / f"n{nodes}-c{concurrency}"
    work.mkdir()
    metal = Metal(TOKEN, PROJECT, provision_after=0.5, active_after=1.0)
    (work / "artifacts").mkdir()
    # The operator's web server, where launch checks that the artifacts are published: a
    # process of its own, as a real one is.
    web = subprocess.Popen([sys.executable, str(TESTS / "tools.py"), str(work / "artifacts")], stdout=subprocess.PIPE, text=True)
    with web, FakeMetal(metal, base / "server.crt", base / "server.key") as server:
        os.environ.update(METAL_API_URL=server.url, METAL_AUTH_TOKEN=TOKEN, REQUESTS_CA_BUNDLE=str(base / "ca.crt"))
        cluster = cluster_file(work, nodes, web.stdout.readline().strip())
        cli("reserve", "-c", cluster)
        cli("render", "-c", cluster)
        metal.calls.clear()
        metal.faults.latency = latency
        start = time.perf_counter()
        cli("launch", "-c", cluster, "--yes", "--concurrency", concurrency, "--poll", "0.25")
        wall = time.perf_counter() - start
        web.terminate()
        if metal.violations:
            sys.exit(f"the fake saw requests outside the API document: {metal.violations[:3]}")
        return wall, dict(metal.calls)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.25)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    if not DOCUMENT.is_file():
        sys.exit(f"{DOCUMENT} is absent: the fake API needs the OpenAPI document")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        make_tls(base)
        print(f"vent-bake launch against the fake Metal API, {args.latency * 1000:.0f} ms added to every call, concurrency {args.concurrency}")
        results = {n: bench(base, n, args.latency, args.concurrency) for n in (25, 50, 100)}
        kinds = sorted({k for _, calls in results.values() for k in calls})
        print(f"{'nodes':>6} {'wall s':>7} {'calls':>6}  " + "  ".join(kinds))
        for n, (wall, calls) in results.items():
            print(f"{n:>6} {wall:>7.2f} {sum(calls.values()):>6}  " + "  ".join(f"{calls.get(k, 0):>{len(k)}}" for k in kinds))
        wall, calls = results[100]
        per_node = {n: sum(c.values()) / n for n, (_, c) in results.items()}
        print("calls per node: " + ", ".join(f"{n}: {v:.2f}" for n, v in per_node.items()))
        verdict = "meets" if wall <= TARGET_SECONDS else "MISSES"
        print(f"target: 100 nodes in at most {TARGET_SECONDS:.0f} s: {wall:.2f} s, {verdict} target")
        default, _ = bench(base, 100, args.latency, DEFAULT_CONCURRENCY)
        print(f"with launch's default --concurrency {DEFAULT_CONCURRENCY}: 100 nodes in {default:.2f} s")


if __name__ == "__main__":
    main()
