"""The lab's programs, built from their Go modules at the default lock's versions.

No release binary can be downloaded here, but every component is a Go module: each is built
from a module of ours (gobuild/<name>/go.mod and go.sum beside this file) that requires the
component's module at exactly the lock's version, so the Go checksum database vouches for
every line of source that goes in. Builds are reproducible (-trimpath, fixed version stamps),
kept in a cache outside the repository ($VENT_BUILD_CACHE, default /var/cache/vent-bake)
keyed by everything that went into them, and made once:

    <cache>/go-build                 Go's build cache
    <cache>/bin/<name>-<key>/        the binaries, and SHA256SUMS of them

The pause container's program is C: it is compiled from its source in the Kubernetes module.
"""

import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from vent_bake.errors import VentError

HERE = Path(__file__).parent / "gobuild"
K8S_VERSION, K8S_COMMIT, K8S_DATE = "v1.36.0", "ecf6decece6a6de25a57aad9ba90b6ce580f6f78", "2026-04-22T13:51:51Z"
GVISOR = "v0.0.0-20260905035102-160fafc42237"


def _k8s_stamp(*packages: str, version: str = K8S_VERSION, commit: str = K8S_COMMIT, date: str = K8S_DATE) -> str:
    """The -X flags that make a Kubernetes program report its version (hack/lib/version.sh)."""
    major, minor = version.lstrip("v").split(".")[:2]
    return " ".join(f"-X {p}.gitVersion={version} -X {p}.gitMajor={major} -X {p}.gitMinor={minor} -X {p}.gitCommit={commit}"
                    f" -X {p}.gitTreeState=clean -X {p}.buildDate={date}" for p in packages)


@dataclass(frozen=True)
class Program:
    package: str  # the main package's import path
    tags: str = ""
    ldflags: str = ""  # besides -s -w
    cgo: bool = False
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Build:
    name: str  # gobuild/<name>: the module of ours
    module: str  # the component's module, at `version`
    version: str
    programs: dict[str, Program] = field(default_factory=dict)  # binary -> how to build it

    @property
    def source(self) -> str:
        return f"built from {self.module}@{self.version}"


_K8S_LDFLAGS = _k8s_stamp("k8s.io/client-go/pkg/version", "k8s.io/component-base/version")
_CONTAINERD = "github.com/containerd/containerd/v2"
_CONTAINERD_TAGS = "urfave_cli_no_docs no_btrfs osusergo netgo static_build"
_CONTAINERD_LDFLAGS = f"-X {_CONTAINERD}/version.Version=v2.2.7 -X {_CONTAINERD}/version.Package={_CONTAINERD}"
_ETCD_LDFLAGS = "-X go.etcd.io/etcd/api/v3/version.GitSHA=fc04cf7"
_CNI = "github.com/containernetworking/plugins"

BUILDS = (
    Build("kubernetes", "k8s.io/kubernetes", K8S_VERSION, {
        b: Program(f"k8s.io/kubernetes/cmd/{b}", "selinux notest grpcnotrace", _K8S_LDFLAGS)
        for b in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl")}),
    Build("etcd", "go.etcd.io/etcd/server/v3", "v3.6.14", {
        "etcd": Program("go.etcd.io/etcd/server/v3", ldflags=_ETCD_LDFLAGS),
        "etcdctl": Program("go.etcd.io/etcd/etcdctl/v3", ldflags=_ETCD_LDFLAGS),
        "etcdutl": Program("go.etcd.io/etcd/etcdutl/v3", ldflags=_ETCD_LDFLAGS)}),
    Build("containerd", _CONTAINERD, "v2.2.7", {
        "containerd": Program(f"{_CONTAINERD}/cmd/containerd", _CONTAINERD_TAGS, _CONTAINERD_LDFLAGS),
        "ctr": Program(f"{_CONTAINERD}/cmd/ctr", _CONTAINERD_TAGS, _CONTAINERD_LDFLAGS),
        "containerd-shim-runc-v2": Program(f"{_CONTAINERD}/cmd/containerd-shim-runc-v2", f"{_CONTAINERD_TAGS} no_grpc", _CONTAINERD_LDFLAGS)}),
    Build("runc", "github.com/opencontainers/runc", "v1.4.3", {
        "runc": Program("github.com/opencontainers/runc", "seccomp urfave_cli_no_docs netgo osusergo",
                        "-linkmode external -extldflags -static-pie", cgo=True, flags=("-buildmode=pie",))}),
    Build("cni-plugins", _CNI, "v1.9.1", {
        b: Program(f"{_CNI}/plugins/{kind}/{b}", ldflags=f"-X {_CNI}/pkg/utils/buildversion.BuildVersion=v1.9.1")
        for b, kind in (("bridge", "main"), ("host-local", "ipam"), ("loopback", "main"), ("portmap", "meta"), ("bandwidth", "meta"))}),
    Build("cri-tools", "sigs.k8s.io/cri-tools", "v1.36.0", {
        "crictl": Program("sigs.k8s.io/cri-tools/cmd/crictl", ldflags="-X sigs.k8s.io/cri-tools/pkg/version.Version=v1.36.0")}),
    Build("flannel", "github.com/flannel-io/flannel", "v0.27.4", {
        "flanneld": Program("github.com/flannel-io/flannel", "netgo osusergo",
                            "-X github.com/flannel-io/flannel/pkg/version.Version=v0.27.4 -extldflags -static", cgo=True)}),
    Build("coredns", "github.com/coredns/coredns", "v1.14.2", {"coredns": Program("github.com/coredns/coredns")}),
    Build("metrics-server", "sigs.k8s.io/metrics-server", "v0.8.0", {
        "metrics-server": Program("sigs.k8s.io/metrics-server/cmd/metrics-server", ldflags=_k8s_stamp(
            "k8s.io/client-go/pkg/version", version="v0.8.0", commit="d66279c6426c6581d9656fe3d42bc52db7c29597", date="2025-07-03T08:11:27Z"))}),
    # gVisor publishes its Go module only as pseudo-versions of its `go` branch; the module proxy
    # here has none between 2026-05-27 and this one, 19 days after the lock's release 20260817.0.
    Build("gvisor", "gvisor.dev/gvisor", GVISOR, {
        "runsc": Program("gvisor.dev/gvisor/runsc", ldflags=f"-X gvisor.dev/gvisor/runsc/version.version=go-{GVISOR}"),
        "containerd-shim-runsc-v1": Program("gvisor.dev/gvisor/shim", ldflags=f"-X {_CONTAINERD}/version.Version=gvisor-go-{GVISOR}")}),
)
KUBERNETES = BUILDS[0]
PAUSE_VERSION = "3.10.2"  # kubeadm's PauseVersion in Kubernetes v1.36


def cache_dir() -> Path:
    return Path(os.environ.get("VENT_BUILD_CACHE", "/var/cache/vent-bake"))


def _go_env() -> dict[str, str]:
    root = cache_dir()
    return dict(os.environ, GOCACHE=str(root / "go-build"), GOFLAGS="-mod=readonly -buildvcs=false", GOTOOLCHAIN="local")


def _key(build: Build) -> str:
    """Everything that goes into a build: its module files, its recipe, the Go toolchain."""
    h = hashlib.sha256(repr((build, _go_version())).encode())
    for name in ("go.mod", "go.sum"):
        h.update((HERE / build.name / name).read_bytes())
    return h.hexdigest()[:12]


@cache
def _go_version() -> str:
    return subprocess.run(["go", "version"], capture_output=True, text=True).stdout.strip() if shutil.which("go") else "no go"


def output(build: Build) -> Path:
    return cache_dir() / "bin" / f"{build.name}-{build.version}-{_key(build)}"


def _done(out: Path) -> bool:
    sums = out / "SHA256SUMS"
    if not sums.is_file():
        return False
    for line in sums.read_text().splitlines():
        digest, name = line.split("  ", 1)
        if not (out / name).is_file() or hashlib.sha256((out / name).read_bytes()).hexdigest() != digest:
            return False
    return True


def _run(command: list[str], cwd: Path, env: dict, what: str) -> str:
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise VentError(f"lab build: {what} failed: {' | '.join(detail)}")
    return proc.stdout


def _finish(out: Path, staging: Path) -> None:
    sums = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in sorted(staging.iterdir()))
    (staging / "SHA256SUMS").write_text(sums)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)


def build(b: Build, say: Callable[[str], None]) -> Path:
    """The component's binaries, built now unless the cache has them."""
    out = output(b)
    if _done(out):
        return out
    if not shutil.which("go"):
        raise VentError("lab build: go is not installed (Go 1.26 builds the lab's programs)")
    staging = out.with_name(out.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    started = time.monotonic()
    say(f"build: {b.source} ({', '.join(b.programs)})")
    for binary, p in b.programs.items():
        env = dict(_go_env(), CGO_ENABLED="1" if p.cgo else "0")
        command = ["go", "build", "-trimpath", *p.flags, "-tags", p.tags, "-ldflags", f"-s -w {p.ldflags}".strip(),
                   "-o", str(staging / binary), p.package]
        _run(command, HERE / b.name, env, f"building {binary} from {b.module}@{b.version}")
    _finish(out, staging)
    say(f"build: {b.name} done in {time.monotonic() - started:.0f} s")
    return out


def _pause_output() -> Path:
    return cache_dir() / "bin" / f"pause-{PAUSE_VERSION}-{_key(KUBERNETES)}"


def pause(say: Callable[[str], None]) -> Path:
    """The pause container's program, from pause.c in the Kubernetes module, linked static."""
    kubernetes = KUBERNETES
    out = _pause_output()
    if _done(out):
        return out
    if not shutil.which("gcc"):
        raise VentError("lab build: gcc is not installed (it compiles the pause program)")
    found = json.loads(_run(["go", "mod", "download", "-json", kubernetes.module], HERE / kubernetes.name, _go_env(),
                            f"fetching {kubernetes.module}@{kubernetes.version}"))
    staging = out.with_name(out.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    say(f"build: pause {PAUSE_VERSION} from {kubernetes.module}@{kubernetes.version} build/pause/linux/pause.c")
    _run(["gcc", "-Os", "-Wall", "-Werror", "-static", f"-DVERSION=v{PAUSE_VERSION}", "-o", str(staging / "pause"),
          f"{found['Dir']}/build/pause/linux/pause.c"], staging, dict(os.environ), "compiling pause")
    _run(["strip", str(staging / "pause")], staging, dict(os.environ), "stripping pause")
    _finish(out, staging)
    return out


def all_binaries(say: Callable[[str], None]) -> dict[str, tuple[Path, str]]:
    """Every program the lab runs: binary name -> (its path, where it was built from)."""
    found = {}
    for b in BUILDS:
        out = build(b, say)
        found |= {binary: (out / binary, b.source) for binary in b.programs}
    found["pause"] = (pause(say) / "pause", f"{KUBERNETES.source} build/pause/linux/pause.c")
    return found


def built(binary: str) -> Path | None:
    """A program's path if it has been built (for the tests that read configs with it)."""
    outputs = [output(b) for b in BUILDS if binary in b.programs] or ([_pause_output()] if binary == "pause" else [])
    return next((out / binary for out in outputs if _done(out)), None)
