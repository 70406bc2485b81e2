"""`vent-bake verify`: cross-check a rendered bundle (the reviewed artifacts and the state)
before launching it. Each check is a function that yields findings; nothing is changed.

Errors make the bundle unfit to launch (exit 1). Warnings are reported but do not fail it: a
certificate that expires within --days, a userdata over its size budget.
"""

import base64
import datetime
import hashlib
import json
import re
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from vent_bake import artifacts, certs, credentials, lock, manifest, pki, render, secrets
from vent_bake.bundle import USERDATA_BUDGET
from vent_bake.config import Cluster
from vent_bake.errors import VentError
from vent_bake.pki import CertSpec
from vent_bake.state import State


@dataclass(frozen=True)
class Finding:
    check: str
    where: str
    message: str
    level: str = "error"

    def line(self) -> str:
        return f"{self.level}: {self.where}: {self.message}"


@dataclass
class Inspection:
    """What verify reads: the cluster, the state, and the artifacts tree as it is on disk."""

    cluster: Cluster
    state: State
    tree: dict[str, bytes]
    inputs: str
    days: int = 30  # warn of certificates expiring within this many days

    def text(self, path: str) -> str | None:
        data = self.tree.get(path)
        return None if data is None else data.decode(errors="replace")

    def node_files(self, host: str) -> dict[str, str]:
        prefix = f"nodes/{host}/files"
        return {p[len(prefix):]: d.decode(errors="replace") for p, d in self.tree.items() if p.startswith(prefix + "/")}


def inspect(ws, days: int = 30) -> Inspection:
    """The workspace's bundle as verify reads it (ws: an opened workspace.Workspace)."""
    return Inspection(ws.cluster, ws.state, artifacts.read(ws.paths.out), manifest.inputs_digest(ws.text, ws.state, ws.cluster), days)


def run(bundle: Inspection) -> list[Finding]:
    checks = (check_support, check_manifest, check_certificates, check_kubeconfigs, check_references,
              check_secrets, check_privilege, check_fetch, check_sizes, check_ranges)
    return [finding for check in checks for finding in check(bundle)]


def report(findings: list[Finding], as_json: bool) -> str:
    if as_json:
        return json.dumps([asdict(f) for f in findings], indent=2)
    errors = sum(f.level == "error" for f in findings)
    lines = [f.line() for f in findings]
    lines.append(f"{errors} errors, {len(findings) - errors} warnings" if findings else "bundle verified: no findings")
    return "\n".join(lines)


# --- the release: supported, and not about to stop being --------------------------------------

def check_support(b: Inspection):
    warning = lock.support_warning(b.cluster.versions.kubernetes, datetime.date.today())
    if warning:
        yield Finding("support", "versions.kubernetes", warning, "warning")


# --- the manifest: rendered from these inputs, unaltered since --------------------------------

def check_manifest(b: Inspection):
    found = artifacts.examine(b.tree, b.inputs)
    if found.listed is None:
        yield Finding("manifest", manifest.NAME, "missing or unreadable; run `vent-bake render`")
        return
    if found.stale:
        yield Finding("manifest", manifest.NAME, "the artifacts were rendered from another cluster file or state; run `vent-bake render` and review")
    for path in found.altered:
        state = "missing" if path not in found.tree else "not listed" if path not in found.listed else "changed since it was rendered"
        yield Finding("manifest", path, state)


# --- certificates ------------------------------------------------------------------------------

def _load_cert(data: bytes | None):
    try:
        return x509.load_pem_x509_certificate(data) if data else None
    except ValueError:
        return None


def check_certificates(b: Inspection):
    now = datetime.datetime.now(datetime.timezone.utc)
    soon = now + datetime.timedelta(days=b.days)
    cas = {name: _load_cert(b.tree.get(f"pki/{name}.crt")) for name in (certs.CLUSTER_CA, certs.ETCD_CA, certs.FRONT_PROXY_CA)}
    for spec in certs.plan(b.cluster, render.addresses(b.cluster, b.state)):
        where = f"pki/{spec.name}.crt"
        cert = _load_cert(b.tree.get(where))
        if cert is None:
            yield Finding("certificate", where, "missing or not a PEM certificate")
            continue
        ca = cert if spec.is_ca else cas.get(spec.issuer)
        try:
            if ca is None:
                raise ValueError(f"its CA {spec.issuer} is missing")
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature) as exc:
            yield Finding("certificate", where, f"does not chain to {spec.issuer or 'itself'} ({exc or 'bad signature'})")
        if cert.not_valid_after_utc <= now or cert.not_valid_before_utc > now:
            yield Finding("certificate", where, f"not valid now (valid {cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d})")
        elif cert.not_valid_after_utc <= soon:
            yield Finding("certificate", where, f"expires {cert.not_valid_after_utc:%Y-%m-%d}, within {b.days} days", "warning")
        yield from (Finding("certificate", where, m) for m in _spec_mismatches(cert, spec))
        key = b.state.get(certs.key_path(spec.name))
        if key is None:
            yield Finding("certificate", where, f"its key {certs.key_path(spec.name)} is not in the state")
        elif serialization.load_pem_private_key(key, None).public_key() != cert.public_key():
            yield Finding("certificate", where, f"does not match its key {certs.key_path(spec.name)}")
        if b.state.get(certs.crt_path(spec.name)) != b.tree.get(where):
            yield Finding("certificate", where, "differs from the state's certificate")


def _spec_mismatches(cert: x509.Certificate, spec: CertSpec):
    subject = cert.subject.rfc4514_string()
    expected = pki.subject(spec).rfc4514_string()
    if subject != expected:
        yield f"subject is {subject}, the role needs {expected}"
    if spec.is_ca:
        return
    san = pki.extension(cert, x509.SubjectAlternativeName)
    have = {str(n.value) for n in san} if san else set()
    need = set(spec.dns) | set(spec.ips)
    for missing in sorted(need - have):
        yield f"lacks the SAN {missing}"
    for extra in sorted(have - need):
        yield f"names {extra}, which its role does not"
    eku = pki.extension(cert, x509.ExtendedKeyUsage)
    usages = {u._name for u in eku} if eku else set()
    for flag, usage in ((spec.server, "serverAuth"), (spec.client, "clientAuth")):
        if flag and usage not in usages:
            yield f"lacks the {usage} usage"


# --- kubeconfigs -------------------------------------------------------------------------------

def _kubeconfigs(b: Inspection):
    """(where, expected user, the document, files of the node it lives on or None)."""
    yield "admin.kubeconfig", "admin", b.text("admin.kubeconfig"), None
    for node in b.cluster.nodes:
        files = b.node_files(node.name)
        for identity in credentials.identities(b.cluster, node):
            if identity.kubeconfig:
                yield f"nodes/{node.name}/files{identity.kubeconfig}", identity.user, files.get(identity.kubeconfig), files


def check_kubeconfigs(b: Inspection):
    api = _load_cert(b.tree.get("pki/kube-apiserver.crt"))
    san = pki.extension(api, x509.SubjectAlternativeName) if api else None
    names = {str(n.value) for n in san} if san else set()
    for where, user, text, files in _kubeconfigs(b):
        if text is None:
            yield Finding("kubeconfig", where, "missing")
            continue
        try:
            doc = yaml.safe_load(text)
            cluster, account = doc["clusters"][0]["cluster"], doc["users"][0]["user"]
        except (yaml.YAMLError, KeyError, IndexError, TypeError):
            yield Finding("kubeconfig", where, "not a kubeconfig (no cluster and user)")
            continue
        host = urlsplit(cluster["server"]).hostname
        if host not in names:
            yield Finding("kubeconfig", where, f"its server {cluster['server']} is not named by the apiserver certificate")
        if "client-certificate-data" in account:
            cert = _load_cert(base64.b64decode(account["client-certificate-data"]))
        else:
            cert = _load_cert((files or {}).get(account.get("client-certificate", ""), "").encode() or None)
        if cert is None:
            yield Finding("kubeconfig", where, "its client certificate is missing")
            continue
        cn = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value
        if cn != user:
            yield Finding("kubeconfig", where, f"authenticates as {cn}, its role needs {user}")


# --- references: every file a unit or config names is written; every binary is pinned ------------

# Written at run time, not by the userdata (data dirs, logs, the runtime dir, generated files),
# or read only if present (containerd's registry hosts, with no registry mirror).
RUNTIME = ("/var/lib/etcd", "/var/log", "/run", "/var/lib/vent", "/etc/cni/net.d", "/etc/containerd/certs.d")
# The OS packages the boot script installs, and the OS itself.
OS_PROVIDED = ("/usr/sbin/haproxy", "/sbin/modprobe", "/bin/kill", "/usr/sbin/nft", "/usr/bin/python3", "/etc/resolv.conf")
# Files whose paths are not the node's: the add-on manifests name paths inside pods.
NOT_NODE_PATHS = ("/etc/vent/addons/",)
PATH = re.compile(r"(?<![\w.:/-])(/(?:etc|var|usr|opt|run|sbin|bin)/[\w.@/-]*[\w])")


def _installed(files: dict[str, str]) -> dict[str, str]:
    """Binary path -> digest, from the node's download list."""
    out = {}
    for row in files.get("/etc/vent/downloads.tsv", "").splitlines():
        cols = row.split("\t")
        if len(cols) == 5:
            for install in cols[4].split(","):
                out[install.split("=", 1)[0]] = cols[3]
    return out


def check_references(b: Inspection):
    for node in b.cluster.nodes:
        files = b.node_files(node.name)
        installed = _installed(files)
        for dest, digest in installed.items():
            if not re.fullmatch(r"[0-9a-f]{64}|[0-9a-f]{128}", digest):
                yield Finding("binary", f"nodes/{node.name}/files/etc/vent/downloads.tsv", f"{dest} has no digest")
        dirs = {p.rsplit("/", 1)[0] for p in files} | {d.rsplit("/", 1)[0] for d in installed}
        for path, text in sorted(files.items()):
            if path.startswith(NOT_NODE_PATHS) or path.startswith("/usr/local/lib/vent/"):
                continue  # scripts are checked by shellcheck and their tests, not by path
            for ref in sorted(set(PATH.findall(text))):
                if ref in files or ref in installed or ref in dirs or ref in OS_PROVIDED:
                    continue
                if any(ref == r or ref.startswith(r + "/") for r in RUNTIME):
                    continue
                if any(f.startswith(ref + "/") for f in files):
                    continue
                yield Finding("reference", f"nodes/{node.name}/files{path}", f"refers to {ref}, which the node's userdata neither writes nor installs")


# --- secrets ------------------------------------------------------------------------------------

def check_secrets(b: Inspection):
    values = {name: data for name, data in b.state.files.items() if name.endswith(".key") or name.startswith("secrets/")}
    for path, data in sorted(b.tree.items()):
        text = data.decode(errors="replace")
        for m in secrets.markers(text):
            value = b.state.get(m["name"])
            if value is None:
                yield Finding("secret", path, f"its marker names {m['name']}, which the state does not hold")
            elif secrets.fingerprint(value) != m["digest"]:
                yield Finding("secret", path, f"its marker for {m['name']} is stale: the state's secret has another sha256")
        if b"PRIVATE KEY" in data:
            yield Finding("secret", path, "holds a private key")
        else:
            for name, value in values.items():
                if value in data or secrets.encode(value, "b64").encode() in data:
                    yield Finding("secret", path, f"holds the secret {name}")


# --- least privilege ----------------------------------------------------------------------------

def check_privilege(b: Inspection):
    for node in b.cluster.nodes:
        text = b.text(f"nodes/{node.name}/userdata")
        if text is None:
            yield Finding("privilege", f"nodes/{node.name}", "has no userdata")
            continue
        names = {m["name"] for m in secrets.markers(text)}
        allowed = credentials.secrets(b.cluster, node)
        for name in sorted(names - allowed):
            yield Finding("privilege", f"nodes/{node.name}/userdata", f"carries {name}, which a {b.cluster.role(node)} must not hold")


# --- fetch: the userdata pins the list, the list pins every file the userdata does not carry ---

def check_fetch(b: Inspection):
    for node in b.cluster.nodes:
        here = f"nodes/{node.name}"
        listed, text = b.tree.get(f"{here}/fetch.list"), b.text(f"{here}/userdata")
        if listed is None or text is None:
            yield Finding("fetch", here, "has no fetch.list or no userdata; run `vent-bake render`")
            continue
        try:
            doc = yaml.safe_load(text)
            _, url, pin = doc["runcmd"][0]
            carried = {f["path"] for f in doc["write_files"]}
        except (yaml.YAMLError, KeyError, TypeError, ValueError):
            yield Finding("fetch", f"{here}/userdata", "not a vent-bake userdata (no write_files, or no fetch command first in runcmd)")
            continue
        if pin != hashlib.sha256(listed).hexdigest():
            yield Finding("fetch", f"{here}/userdata", "pins another fetch.list than the one beside it")
        if url != f"{b.cluster.boot.artifacts_base}{here}/":
            yield Finding("fetch", f"{here}/userdata", f"fetches from {url}, the cluster file says {b.cluster.boot.artifacts_base}{here}/")
        files = {path: data.encode() for path, data in b.node_files(node.name).items()}
        fetched = {}
        for line in listed.decode(errors="replace").splitlines():
            digest, _mode, path = (line.split(" ", 2) + ["", ""])[:3]
            fetched[path] = digest
            if path not in files:
                yield Finding("fetch", f"{here}/fetch.list", f"lists {path}, which is not in files/")
            elif digest != hashlib.sha256(files[path]).hexdigest():
                yield Finding("fetch", f"{here}/fetch.list", f"{path}: its sha256 is not the file's in files/")
            if secrets.markers(files.get(path, b"").decode(errors="replace")):
                yield Finding("fetch", f"{here}/fetch.list", f"lists {path}, which carries a secret: secrets travel only in the userdata")
        for path in sorted(files.keys() - fetched.keys() - carried):
            yield Finding("fetch", f"{here}/files{path}", "neither carried by the userdata nor on fetch.list")
        for path in sorted(fetched.keys() & carried):
            yield Finding("fetch", f"{here}/files{path}", "both carried by the userdata and on fetch.list")


# --- sizes ----------------------------------------------------------------------------------------

def check_sizes(b: Inspection):
    for node in b.cluster.nodes:
        text = b.text(f"nodes/{node.name}/userdata")
        if text is None:
            continue
        try:
            size = len(secrets.reveal(text, b.state.secret).encode())
        except VentError:
            continue  # a stale or unknown marker is check_secrets' finding
        role = b.cluster.role(node)
        if size > USERDATA_BUDGET[role]:
            yield Finding("size", f"nodes/{node.name}/userdata",
                          f"revealed userdata is {size} bytes, over the {role} budget of {USERDATA_BUDGET[role]}", "warning")


# --- ranges: what the files say matches the cluster file ----------------------------------------

def _flag(text: str, name: str) -> str | None:
    m = re.search(rf"--{re.escape(name)}=(\S+)", text)
    return m[1] if m else None


def check_ranges(b: Inspection):
    net = b.cluster.network
    addresses = render.addresses(b.cluster, b.state)
    dns = certs.dns_ip(b.cluster)
    for node in b.cluster.nodes:
        files = b.node_files(node.name)
        here = f"nodes/{node.name}/files"
        expect = [
            ("/etc/systemd/system/kubelet.service", _flag(files.get("/etc/systemd/system/kubelet.service", ""), "node-ip"), addresses[node.name], "kubelet --node-ip"),
            ("/var/lib/kube-proxy/kube-proxy-config.yaml", (yaml.safe_load(files.get("/var/lib/kube-proxy/kube-proxy-config.yaml", "{}")) or {}).get("clusterCIDR"), net.pod_cidr, "clusterCIDR"),
            ("/var/lib/kubelet/kubelet-config.yaml", ((yaml.safe_load(files.get("/var/lib/kubelet/kubelet-config.yaml", "{}")) or {}).get("clusterDNS") or [None])[0], dns, "clusterDNS"),
            ("/etc/kube-flannel/net-conf.json", (json.loads(files.get("/etc/kube-flannel/net-conf.json", "{}")) or {}).get("Network"), net.pod_cidr, "flannel Network"),
        ]
        if b.cluster.role(node) == "controller":
            kcm = files.get("/etc/systemd/system/kube-controller-manager.service", "")
            api = files.get("/etc/systemd/system/kube-apiserver.service", "")
            expect += [
                ("/etc/systemd/system/kube-controller-manager.service", _flag(kcm, "cluster-cidr"), net.pod_cidr, "--cluster-cidr"),
                ("/etc/systemd/system/kube-controller-manager.service", _flag(kcm, "service-cluster-ip-range"), net.service_cidr, "--service-cluster-ip-range"),
                ("/etc/systemd/system/kube-apiserver.service", _flag(api, "service-cluster-ip-range"), net.service_cidr, "--service-cluster-ip-range"),
                ("/etc/systemd/system/kube-apiserver.service", _flag(api, "advertise-address"), addresses[node.name], "--advertise-address"),
            ]
        for path, have, want, what in expect:
            if have != want:
                yield Finding("ranges", here + path, f"{what} is {have}, the cluster file says {want}")
