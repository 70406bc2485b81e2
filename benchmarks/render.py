#!/usr/bin/env python3
"""Render speed: cold and warm renders of 3 controllers + N workers, and the reference procedure.

Every vent-bake figure is the wall time of the real command (`python -m vent_bake render`,
interpreter start included), median of --repeat runs; peak memory is the child's max RSS.
The reference procedure makes the same certificate set the way Kubernetes the Hard Way does:
one openssl process per key, per request and per signature.

    python benchmarks/render.py [--dir DIR ...] [--repeat 3] [--skip-reference]

Each directory is measured in turn (default: ./.bench on disk, and /dev/shm when there is
one). For each, the floor is the time the filesystem alone takes to create as many
directories and files as the 1000-worker tree holds, with nothing rendered: on a disk whose
metadata operations are slow, that floor, not the render, decides the cold figure.
"""

import argparse
import compileall
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vent_bake import certs, config, example
from vent_bake.pki import CertSpec

TARGETS = {"cold": 3.0, "warm": 1.0}  # seconds, 3 controllers + 1000 workers
REFERENCE_SPEEDUP, LIKE_FOR_LIKE_SPEEDUP = 100, 5


def run(cmd: list[str], **kw) -> tuple[float, int]:
    """Wall seconds and peak RSS (MiB) of one command. GNU time takes the peak: the maxrss
    wait4 reports would count the process the command was forked from, this benchmark."""
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed: {proc.stderr.decode()}")
    return wall, int(proc.stderr.split()[-1]) // 1024


def render(cluster: Path) -> tuple[float, int]:
    return run([sys.executable, "-m", "vent_bake", "render", "-c", str(cluster)])


def bench_vent(base: Path, workers: int, repeat: int) -> dict:
    """Cold: each run in a new directory (empty state), as a first render is. Warm: the last
    of those again, state and artifacts kept, nothing changed."""
    text = example.cluster_yaml("bench", 3, workers)
    cold = []
    for i in range(repeat):
        cluster = base / f"w{workers}-{i}" / "cluster.yaml"
        cluster.parent.mkdir(parents=True)
        cluster.write_text(text)
        cold.append(render(cluster))
    warm = [render(cluster) for _ in range(repeat)]
    return {kind: (statistics.median(w for w, _ in runs), max(m for _, m in runs)) for kind, runs in (("cold", cold), ("warm", warm))}


def _subj(spec: CertSpec) -> str:
    return (f"/O={spec.organization}" if spec.organization else "") + f"/CN={spec.common_name}"


def reference(base: Path, workers: int, keygen: list[str]) -> float:
    """The KTHW way: genrsa/genpkey, req and x509 -req, one process each, for the whole set."""
    cluster = config.parse(example.cluster_yaml("bench", 3, workers), "bench")
    specs = certs.plan(cluster, {n.name: n.address for n in cluster.nodes})
    work = base / f"reference-{workers}-{keygen[0]}"
    work.mkdir()
    start = time.perf_counter()
    for spec in specs:
        name = spec.name.replace("/", "_")
        key, csr, crt = (str(work / f"{name}.{ext}") for ext in ("key", "csr", "crt"))
        subprocess.run(["openssl", *(a.format(key=key) for a in keygen)], check=True, capture_output=True)
        if spec.is_ca:
            subprocess.run(["openssl", "req", "-x509", "-new", "-sha256", "-key", key, "-days", "3650",
                            "-subj", _subj(spec), "-out", crt], check=True, capture_output=True)
            continue
        usage = ",".join(u for u, on in (("serverAuth", spec.server), ("clientAuth", spec.client)) if on)
        req = ["openssl", "req", "-new", "-sha256", "-key", key, "-subj", _subj(spec),
               "-addext", f"extendedKeyUsage={usage}", "-out", csr]
        sans = [f"DNS:{d}" for d in spec.dns] + [f"IP:{i}" for i in spec.ips]
        if sans:
            req[-2:-2] = ["-addext", "subjectAltName=" + ",".join(sans)]
        subprocess.run(req, check=True, capture_output=True)
        ca = work / spec.issuer
        subprocess.run(["openssl", "x509", "-req", "-sha256", "-in", csr, "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
                        "-CAcreateserial", "-days", "365", "-copy_extensions", "copyall", "-out", crt],
                       check=True, capture_output=True)
    return time.perf_counter() - start


def fs_floor(base: Path, tree: Path) -> tuple[float, int, int]:
    """Seconds to make as many directories and files as `tree` holds, empty-handed."""
    dirs = sum(len(d) for _, d, _ in os.walk(tree))
    files = sum(len(f) for _, _, f in os.walk(tree))
    probe = base / "floor"
    start = time.perf_counter()
    probe.mkdir()
    for i in range(dirs):
        os.mkdir(probe / str(i))
    for i in range(files):
        (probe / str(i % max(dirs, 1)) / f"f{i}").write_bytes(b"x" * 600)
    wall = time.perf_counter() - start
    shutil.rmtree(probe)
    return wall, dirs, files


def as_installed() -> str:
    """Compile the package's modules to bytecode, as pip does when it installs the wheel. A
    source checkout run under PYTHONDONTWRITEBYTECODE (set on this project's machines) would
    otherwise compile every module again at every start, which no installed vent-bake does."""
    compileall.compile_dir(Path(__file__).resolve().parents[1] / "vent_bake", quiet=1)
    return "vent_bake's modules compiled to bytecode first, as pip installs them"


def filesystem(path: Path) -> str:
    """The type of the filesystem holding path (ext4, tmpfs, ...)."""
    return subprocess.run(["df", "--output=fstype", str(path)], capture_output=True, text=True).stdout.split()[-1]


def verdict(ok: bool) -> str:
    return "meets target" if ok else "MISSES target"


def measure(base: Path, repeat: int) -> dict:
    fs = filesystem(base)
    print(f"\nvent-bake render, 3 controllers + N workers, median of {repeat} ({os.cpu_count()} cores, {fs} at {base})")
    print(f"{'workers':>8} {'kind':>5} {'wall s':>8} {'ms/node':>8} {'peak MiB':>9}")
    results = {}
    for workers in (10, 20, 100, 1000):
        results[workers] = bench_vent(base, workers, repeat)
        for kind, (wall, rss) in results[workers].items():
            print(f"{workers:>8} {kind:>5} {wall:>8.3f} {wall / (workers + 3) * 1000:>8.2f} {rss:>9}")
    for kind, limit in TARGETS.items():
        wall = results[1000][kind][0]
        print(f"target: {kind} 1000-worker render <= {limit} s: {wall:.2f} s, {verdict(wall <= limit)}")
    floor, dirs, files = fs_floor(base, base / "w1000-0" / "artifacts")
    print(f"filesystem floor: {dirs} mkdir + {files} file writes alone take {floor:.2f} s here")
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, action="append", help="where to render (repeatable)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-reference", action="store_true", help="skip the (slow) openssl procedures")
    args = parser.parse_args()
    print(as_installed())
    dirs = args.dir or [Path(".bench")] + ([Path("/dev/shm")] if Path("/dev/shm").is_dir() else [])
    bases = []
    try:
        for d in dirs:
            d.mkdir(exist_ok=True)
            bases.append(Path(tempfile.mkdtemp(prefix="render-", dir=d)).absolute())
            results = measure(bases[-1], args.repeat)
        if args.skip_reference:
            return
        # The ratios compare against the last directory's figures (tmpfs by default), so that
        # both sides pay the same, small filesystem cost.
        ref = reference(bases[-1], 20, ["genrsa", "-out", "{key}", "4096"])
        ratio = ref / results[20]["cold"][0]
        print(f"\nreference procedure (openssl, RSA-4096), 20 workers: {ref:.1f} s; vent-bake cold is {ratio:.0f}x faster"
              f" ({verdict(ratio >= REFERENCE_SPEEDUP)} of {REFERENCE_SPEEDUP}x)")
        like = reference(bases[-1], 100, ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "{key}"])
        ratio = like / results[100]["cold"][0]
        print(f"like for like (openssl, ECDSA P-256), 100 workers: {like:.1f} s; vent-bake cold is {ratio:.1f}x faster"
              f" ({verdict(ratio >= LIKE_FOR_LIKE_SPEEDUP)} of {LIKE_FOR_LIKE_SPEEDUP}x)")
    finally:
        for base in bases:
            shutil.rmtree(base)


if __name__ == "__main__":
    main()
