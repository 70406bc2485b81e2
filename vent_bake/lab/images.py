"""The lab's container images, made here: no registry outside can be reached.

Each image is one layer holding a static program built from its module (build.py) or, for the
workload the smoke test runs, Debian's busybox-static; it is written as an OCI image layout,
byte for byte the same for the same program (sorted tar entries, no times, gzip without a
name or time), so its digest is known before it is pushed. The lab's registry (Debian's
docker-registry, the reference distribution registry) takes them from skopeo, and the nodes'
containerd pulls them through it as a registry mirror, under the names the lock gives them.
"""

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vent_bake.errors import VentError
from vent_bake.lab import build

BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static
# The applets the smoke test's pods use.
APPLETS = ("sh", "cat", "cut", "dmesg", "echo", "env", "grep", "head", "hostname", "httpd", "ls", "nc", "nslookup", "od", "sleep",
           "timeout", "tr", "wget")


@dataclass(frozen=True)
class Image:
    name: str  # the lock's images key
    repository: str  # as the lock names it, under registry.k8s.io
    tag: str
    entrypoint: tuple[str, ...]
    program: str  # the binary that makes it


IMAGES = (
    Image("pause", "pause", build.PAUSE_VERSION, ("/pause",), "pause"),
    Image("coredns", "coredns/coredns", "v1.14.2", ("/coredns",), "coredns"),
    Image("metrics-server", "metrics-server/metrics-server", "v0.8.0", ("/metrics-server",), "metrics-server"),
    # The workload `vent-bake smoke` runs; the official one is Kubernetes' e2e busybox.
    Image("workload", "e2e-test-images/busybox", "1.35.0-vent", ("/bin/sh",), "busybox"),
)
REGISTRY = "registry.k8s.io"  # the upstream the lab's cluster file mirrors


def _files(image: Image, program: Path) -> dict[str, tuple[bytes, int]]:
    """path in the image -> (content, mode); a symlink is (b"->target", 0)."""
    data = program.read_bytes()
    if image.program != "busybox":
        return {image.entrypoint[0].lstrip("/"): (data, 0o755)}
    files = {"bin/busybox": (data, 0o755), "tmp/.keep": (b"", 0o644)}
    files |= {f"bin/{applet}": (b"->busybox", 0) for applet in APPLETS}
    return files


def _layer(files: dict[str, tuple[bytes, int]]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({str(Path(p).parent) for p in files} - {"."})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755 if d != "tmp" else 0o1777
            tar.addfile(info)
        for path in sorted(files):
            data, mode = files[path]
            info = tarfile.TarInfo(path)
            if data.startswith(b"->") and mode == 0:
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, data[2:].decode(), 0o777
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), mode
                tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def _blob(out: Path, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    (out / "blobs/sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def oci_layout(image: Image, program: Path, arch: str, out: Path) -> str:
    """Write the image as an OCI layout at out; its manifest's digest."""
    shutil.rmtree(out, ignore_errors=True)
    (out / "blobs/sha256").mkdir(parents=True)
    tar = _layer(_files(image, program))
    layer = _blob(out, gzip.compress(tar, compresslevel=6, mtime=0))
    config = {
        "architecture": arch, "os": "linux",
        "config": {"Entrypoint": list(image.entrypoint), "Env": ["PATH=/bin:/usr/bin:/usr/local/bin"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(tar).hexdigest()}"]},
    }
    config_blob = _blob(out, json.dumps(config, sort_keys=True, separators=(",", ":")).encode())
    manifest = {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_blob},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer}],
    }
    manifest_blob = _blob(out, json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode())
    index = {"schemaVersion": 2, "manifests": [{"mediaType": manifest["mediaType"], **manifest_blob,
                                                "annotations": {"org.opencontainers.image.ref.name": image.tag}}]}
    (out / "index.json").write_text(json.dumps(index, sort_keys=True))
    (out / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    return manifest_blob["digest"]


def made(arch: str, say: Callable[[str], None]) -> dict[str, tuple[Image, Path, str]]:
    """Every lab image, made now unless the build cache has it: name -> (image, layout, digest)."""
    programs = {b: p for b, (p, _) in build.all_binaries(say).items()}
    if not BUSYBOX.is_file():
        raise VentError(f"lab: {BUSYBOX} is missing; install the Debian package busybox-static")
    programs["busybox"] = BUSYBOX
    out = {}
    for image in IMAGES:
        program = programs[image.program]
        files = _files(image, program)
        key = hashlib.sha256(repr((image, arch, sorted((p, hashlib.sha256(d).hexdigest(), m) for p, (d, m) in files.items())))
                             .encode()).hexdigest()[:12]
        layout = build.cache_dir() / "images" / f"{image.name}-{image.tag}-{key}"
        digest_file = layout / "digest"
        if not digest_file.is_file():
            say(f"image: {REGISTRY}/{image.repository}:{image.tag} from {program.name}")
            staging = layout.with_name(layout.name + ".making")
            digest = oci_layout(image, program, arch, staging)
            (staging / "digest").write_text(digest)
            shutil.rmtree(layout, ignore_errors=True)
            staging.rename(layout)
        out[image.name] = (image, layout, digest_file.read_text())
    return out


def reference(image: Image, digest: str) -> str:
    return f"{REGISTRY}/{image.repository}:{image.tag}@{digest}"


def push(images: dict[str, tuple[Image, Path, str]], namespace: str, registry: str) -> None:
    """Copy every image into the lab's registry, digests preserved."""
    for image, layout, _ in images.values():
        push_one(layout, image.tag, image.repository, namespace, registry)


def push_one(layout: Path, tag: str, repository: str, namespace: str, registry: str) -> None:
    """One OCI layout into the lab's registry, from inside the lab's namespace where it listens."""
    if not shutil.which("skopeo"):
        raise VentError("lab: skopeo is not installed; install the Debian package skopeo")
    proc = subprocess.run(["ip", "netns", "exec", namespace, "skopeo", "copy", "--quiet", "--preserve-digests",
                           "--dest-tls-verify=false", f"oci:{layout}:{tag}", f"docker://{registry}/{repository}:{tag}"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise VentError(f"lab: pushing {repository}:{tag} failed: {proc.stderr.strip()[-300:]}")


def copy(reference: str, namespace: str, registry: str) -> None:
    """Copy an official image (<registry>/<repository>:<tag>@<digest>) into the lab's registry
    under the same repository and tag, digest preserved. The lab's namespace has no way out,
    so skopeo reads it on the host side first."""
    name, _, digest = reference.partition("@")
    host_and_repository, _, tag = name.rpartition(":")
    repository = host_and_repository.split("/", 1)[1]
    source = f"docker://{host_and_repository}@{digest}" if digest else f"docker://{name}"  # skopeo takes a tag or a digest
    scratch = build.cache_dir() / "images" / "official" / f"{repository.replace('/', '_')}-{tag}"
    local = subprocess.run(["skopeo", "copy", "--quiet", "--preserve-digests", source, f"oci:{scratch}:{tag}"],
                           capture_output=True, text=True)
    if local.returncode != 0:
        raise VentError(f"lab: cannot fetch {reference} ({local.stderr.strip()[-200:]}); official images need internet access")
    push_one(scratch, tag, repository, namespace, registry)
