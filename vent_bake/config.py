"""The cluster file: one validated model of cluster.yaml, and its loader.

Shape and types are checked by the records' annotations (vent_bake.model); rules that span
several fields (ranges that overlap, duplicate names, sizes) are checked afterwards by
`check`, so that every error can name the exact field it is about.
"""

import dataclasses
import datetime
import ipaddress
import re
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

import yaml

from vent_bake import lock
from vent_bake.errors import ConfigError
from vent_bake.model import MAX_QUOTED, Check, Invalid, Record, build, json_schema, quoted, setting

# The provider's private range: Packet/Equinix Metal routes 10.0.0.0/8 over its private
# network, so neither pods nor services may live there.
PROVIDER_PRIVATE = ipaddress.ip_network("10.0.0.0/8")
# Matched with fullmatch: a `$` would also match before a trailing newline.
HOSTNAME = re.compile(r"(?=.{1,253}\Z)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")
# Every URL ends up in a file a shell reads on every node (node.env): no whitespace, control
# characters, quotes, `$`, backquotes or backslashes, checked on the raw string (urlsplit
# drops newlines before anyone sees them).
UNSAFE_IN_URL = re.compile(r"[\s\x00-\x1f\x7f'\"`$\\]")
MAX_VALUES = 1_000_000  # a cluster file expands (YAML aliases included) to at most this many values
# X.509 limits a common name to 64 characters; a kubelet's is system:node:<name>, and the
# longest CA's is "<cluster> front-proxy CA".
MAX_NODE_NAME = 64 - len("system:node:")
MAX_CLUSTER_NAME = 64 - len(" front-proxy CA")
DNS_SERVICE_INDEX = 10  # CoreDNS sits at the tenth address of the service range, as in KTHW


def _hostname(value: str) -> str:
    if not HOSTNAME.fullmatch(value):
        raise ValueError(
            f"{quoted(value)} is not a valid hostname (RFC 1123: lowercase letters, digits, '-' and '.',"
            " each label 1-63 characters, starting and ending with a letter or digit)"
        )
    return value


def _ipv4_network(value: str) -> str:
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        detail = f" ({exc})" if len(value) <= MAX_QUOTED else ""
        raise ValueError(f"{quoted(value)} is not a valid IPv4 CIDR{detail}") from None
    if net.version != 4:
        raise ValueError(f"{quoted(value)} is IPv6; only IPv4 ranges are supported")
    if str(net) != value:  # a netmask or a bare address: the components' flags take address/prefix only
        raise ValueError(f"{quoted(value)} is not in address/prefix form; write {net}")
    return value


def _ipv4_address(value: str) -> str:
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{quoted(value)} is not a valid IPv4 address") from None
    if addr.version != 4:
        raise ValueError(f"{value!r} is IPv6; a node's reserved address is a public IPv4")
    for is_kind, kind in ((addr.is_unspecified, "unspecified"), (addr.is_loopback, "a loopback"), (addr.is_link_local, "a link-local"),
                          (addr.is_multicast, "a multicast"), (addr == ipaddress.IPv4Address("255.255.255.255"), "the broadcast"),
                          (addr.is_reserved, "a reserved"), (addr in ipaddress.ip_network("0.0.0.0/8"), "a 'this network'")):
        if is_kind:
            raise ValueError(f"{value} is {kind} address; a node's address must be a unicast address that routes to it")
    return value


def _url(value: str) -> str:
    bad = UNSAFE_IN_URL.search(value)
    if bad:
        raise ValueError(f"{quoted(value)} holds {bad[0]!r}; a URL here may hold no whitespace, control characters, quotes, '$', '`' or '\\'")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  (raises on a port that is no number from 0 to 65535)
    except ValueError:
        parts = None
    if not parts or parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(f"{quoted(value)} is not an http(s) URL such as https://files.example.com/vent/")
    if "@" in parts.netloc:
        raise ValueError("holds a user name or password; it would be in every node's userdata and in error messages:"
                         " give the nodes a URL that needs none (the files it serves are checked by digest)")
    return value


Hostname = Annotated[str, Check(_hostname, format="hostname")]
URL = Annotated[str, Check(_url, format="uri")]
CIDR = Annotated[str, Check(_ipv4_network)]
IPv4 = Annotated[str, Check(_ipv4_address, format="ipv4")]


class Node(Record):
    """A machine of the cluster: its hostname and its reserved public IPv4 address."""

    name: Hostname = setting(description="Hostname and Kubernetes node name (RFC 1123).")
    address: IPv4 | None = setting(
        None,
        description="Reserved public IPv4 address. Leave it out when the provider reserves it"
        " (`vent-bake reserve`).",
    )


class RoleSettings(Record):
    """How the provider runs the machines of one role."""

    plan: str = setting("c3.small.x86", description="Device plan.")
    spot: bool = setting(description="Run on the spot market.")
    max_price: float | None = setting(
        None, description="Highest spot price per hour (USD) to bid; required when spot is true."
    )


class Packet(Record):
    """Packet / Equinix Metal settings, used by reserve, launch, status and destroy."""

    project: str = setting(description="Project ID (UUID).")
    metro: str = setting(description="Metro code, e.g. da, sv, am.")
    os: str = setting("debian_12", description="Operating system slug: debian_12, ubuntu_22_04, ubuntu_24_04.")
    api_url: str = setting(
        "https://api.equinix.com/metal/v1",
        description="API base URL; METAL_API_URL overrides it.",
    )
    controllers: RoleSettings = setting(
        RoleSettings(spot=False),
        description="Controllers run on-demand by default: a reclaim wave must not take etcd's quorum.",
    )
    workers: RoleSettings = setting(RoleSettings(spot=True, max_price=0.5), description="Workers run on spot by default.")
    address_quota: int = setting(
        256, ge=1, description="The project's quota of public IPv4 addresses; `reserve` refuses a cluster that needs more."
    )


class Provider(Record):
    packet: Packet


class Network(Record):
    pod_cidr: CIDR = setting("172.16.0.0/16", description="Pod range; each node gets one subnet of it.")
    node_pod_prefix: int = setting(24, ge=16, le=28, description="Prefix length of each node's pod subnet.")
    service_cidr: CIDR = setting("172.31.0.0/16", description="Service range (--service-cluster-ip-range).")
    cluster_domain: Hostname = setting("cluster.local", description="Cluster DNS domain.")
    api_endpoint: Hostname | None = setting(
        None,
        description="DNS name operators use to reach the API (added to the apiserver certificate)."
        " Default: the first controller's address.",
    )
    api_port: int = setting(6443, ge=1, le=65535, description="Port of kube-apiserver on every controller.")
    balancer_port: int = setting(
        7443, ge=1, le=65535, description="Port of the local API balancer on 127.0.0.1 of every node."
    )
    admin_networks: list[CIDR] = setting(
        ["0.0.0.0/0"],
        description="Networks allowed to reach the API from outside the cluster (mutual TLS guards it too).",
    )
    ssh: bool = setting(False, description="Open SSH (22/tcp) in the host firewall.")


class PKI(Record):
    key_algorithm: Literal["ecdsa-p256", "rsa-2048", "rsa-3072", "rsa-4096"] = setting(
        "ecdsa-p256", description="Key type of every key the cluster makes."
    )
    ca_days: int = setting(3650, ge=1, le=36500, description="Validity of the CAs, in days.")
    leaf_days: int = setting(365, ge=1, le=36500, description="Validity of every other certificate, in days.")
    encryption_provider: Literal["secretbox", "aescbc"] = setting(
        "secretbox", description="How kube-apiserver encrypts Secrets at rest (EncryptionConfiguration)."
    )


class Boot(Record):
    """What a booting node reaches besides the binaries' hosts."""

    artifacts_url: URL = setting(
        description="Where you publish this cluster's artifacts/ directory. A node's userdata carries"
        " its secrets and its network and flannel set-up; the node fetches every other file from"
        " nodes/<host>/ under this URL, each checked against a digest its userdata pins.",
    )
    metadata_url: URL = setting(
        "https://metadata.platformequinix.com/metadata",
        description="The provider's metadata service (the node's private address, its reserved"
        " address); pods are kept away from it.",
    )

    @property
    def artifacts_base(self) -> str:
        return self.artifacts_url.rstrip("/") + "/"


class Versions(Record):
    kubernetes: str = setting("v1.36.0", description="Kubernetes version; must be in the binaries lock.")


class Host(Record):
    """What the machines under the nodes allow. The defaults are a bare-metal machine's, and
    strict: set one only for machines that cannot do otherwise (a node in a container, as
    the lab's are), since each trades a safeguard away."""

    allow_cgroup_v1: bool = setting(
        False, description="Kubernetes 1.35+ refuses cgroup v1, and so does the boot script; true keeps a cgroup v1"
        " machine running (kubelet's failCgroupV1: false).")
    can_lower_oom_score: bool = setting(
        True, description="false where nothing may lower a process's oom_score_adj (containerd's restrict_oom_score_adj).")
    conntrack_sysctls: bool = setting(
        True, description="false where the conntrack table's size cannot be set (kube-proxy then leaves it as it is).")
    gvisor_cgroups: bool = setting(
        True, description="false where gVisor cannot manage cgroups through systemd (cgroup v1): runsc ignores cgroups.")
    own_disk: bool = setting(
        True, description="false where nodes share one disk: kubelet's disk-pressure eviction and image garbage"
        " collection, which would judge the sum, are turned off.")


class Image(Record):
    """Node images made by `vent-bake image build`, by role: a directory under images/ beside
    the cluster file. A node of an imaged role boots from it (launch: Packet's custom iPXE, with
    the image's boot.ipxe published under boot.artifacts_url) and downloads nothing."""

    controllers: Hostname | None = setting(None, description="e.g. controller-v1.36.0")
    workers: Hostname | None = setting(None, description="e.g. worker-v1.36.0")


class Cluster(Record):
    """A Kubernetes-the-Hard-Way cluster on bare metal."""

    name: Hostname = setting(description="Cluster name: the kubeconfig cluster name and the provider tag.")
    arch: Literal["amd64", "arm64"] = "amd64"
    versions: Versions = Versions()
    provider: Provider | None = setting(None, description="Leave out to render without a provider.")
    network: Network = Network()
    pki: PKI = PKI()
    mirror: URL | None = setting(None, description="Base URL that replaces the official download hosts.")
    registry_mirrors: dict[Hostname, URL] = setting(
        {}, description="Container registries pulled through a mirror: upstream registry host -> the mirror's URL"
        " (containerd's hosts.toml), e.g. registry.k8s.io: https://registry.example.com. For air-gapped sites.")
    host: Host = Host()
    image: Image = Image()
    boot: Boot
    controllers: list[Node]
    workers: list[Node] = setting([])

    # The binaries lock in force: the packaged one, with a project lock beside the cluster
    # file taking its place for the versions it names (set by `parse`, not a setting).
    _lock: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def lock(self) -> dict:
        return self._lock or lock.packaged()

    @property
    def nodes(self) -> list[Node]:
        return [*self.controllers, *self.workers]

    @cached_property
    def _controller_names(self) -> frozenset[str]:
        return frozenset(n.name for n in self.controllers)

    @cached_property
    def _by_name(self) -> dict[str, Node]:
        return {n.name: n for n in self.nodes}

    def role(self, node: Node) -> str:
        return "controller" if node.name in self._controller_names else "worker"

    def node(self, name: str) -> Node:
        return self._by_name[name]

    def is_first_controller(self, node: Node) -> bool:
        return node.name == self.controllers[0].name


def schema() -> dict:
    return json_schema(Cluster)


# --- loading -------------------------------------------------------------------------------


class _UniqueKeyLoader(lock.YAML_LOADER):
    """PyYAML keeps the last of two equal keys; an operator would rather hear about it."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                raise yaml.MarkedYAMLError(problem="a key that is a list or a mapping", problem_mark=key_node.start_mark) from None
            if key in seen:
                raise yaml.MarkedYAMLError(
                    problem=f"duplicate key {key!r}", problem_mark=key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def _field_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _too_big(data) -> str | None:
    """Bound what validation will walk: YAML aliases let a few lines stand for billions of
    values (and one that contains itself, for infinitely many)."""
    sizes: dict[int, int] = {}
    busy: set[int] = set()

    class Cycle(Exception):
        pass

    def size(value) -> int:
        if not isinstance(value, (dict, list)):
            return 1
        key = id(value)
        if key in busy:
            raise Cycle
        if key not in sizes:
            busy.add(key)
            children = value.items() if isinstance(value, dict) else ((None, v) for v in value)
            sizes[key] = 1 + sum(size(k) + size(v) for k, v in children)
            busy.discard(key)
        return min(sizes[key], MAX_VALUES + 1)

    try:
        total = size(data)
    except Cycle:
        return "a YAML alias refers to a value that contains it; write the settings out"
    except RecursionError:
        return "nests deeper than any cluster file needs"
    if total > MAX_VALUES:
        return f"expands to more than {MAX_VALUES:,} values (YAML aliases?); write the settings out without aliases"
    return None


def parse(text: str, source: str, project_lock: dict | None = None) -> Cluster:
    """Parse and validate a cluster file's text; raise ConfigError naming the field."""
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, "", f"not valid YAML{where}: {problem}") from None
    except ValueError as exc:  # a scalar PyYAML's resolver took for a number or a date, and Python refused
        raise ConfigError(source, "", f"not valid YAML: a value cannot be read ({str(exc).split(';')[0]})") from None
    if data is None:
        raise ConfigError(source, "", "the file holds no settings; `vent-bake init` writes a commented example")
    if not isinstance(data, dict):
        found = "a list" if isinstance(data, list) else "a single value"
        raise ConfigError(source, "", f"must be a mapping of settings (name:, controllers:, ...), not {found}")
    problem = _too_big(data)
    if problem:
        raise ConfigError(source, "", problem)
    try:
        cluster = build(Cluster, data)
    except Invalid as exc:
        raise ConfigError(source, _field_path(exc.where), exc.problem) from None
    object.__setattr__(cluster, "_lock", lock.merged(project_lock))  # frozen: set once, here
    for path, problem in check(cluster):
        raise ConfigError(source, path, problem)
    return cluster


def read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(str(path), "", "no such file; `vent-bake init` writes an example there") from None
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read it ({exc.strerror})") from None


def load(path: Path, text: bytes | None = None) -> Cluster:
    """The cluster file at path (its bytes, if already read), validated, with the project's
    binaries lock beside it if there is one."""
    text = read(path) if text is None else text
    try:
        return parse(text.decode(), str(path), lock.read_project(path.parent / lock.PROJECT_LOCK))
    except UnicodeDecodeError:
        raise ConfigError(str(path), "", "not UTF-8 text; save the file as UTF-8") from None


# --- rules across fields ---------------------------------------------------------------------


def check(c: Cluster):
    """Yield (field path, problem) for every rule the cluster breaks, most basic first."""
    if len(c.name) > MAX_CLUSTER_NAME:
        yield "name", (f"{quoted(c.name)} is {len(c.name)} characters; at most {MAX_CLUSTER_NAME} fit, as its CAs' common"
                       " names ('<name> front-proxy CA') are limited to 64")
    if not c.controllers:
        yield "controllers", "at least one controller is needed (three for a highly available etcd)"
    if c.versions.kubernetes not in c.lock:
        known = ", ".join(sorted(c.lock))
        yield "versions.kubernetes", (
            f"{c.versions.kubernetes} is not in the binaries lock (known: {known});"
            " pick one of those or add it with `vent-bake lock`"
        )
    yield from _check_nodes(c)
    yield from _check_ranges(c)
    if c.provider:
        for role in ("controllers", "workers"):
            settings = getattr(c.provider.packet, role)
            where = f"provider.packet.{role}.max_price"
            if settings.max_price is not None and settings.max_price <= 0:
                yield where, f"must be a positive price per hour, got {settings.max_price}"
            elif settings.spot and settings.max_price is None:
                yield where, "spot machines need a maximum price per hour"


def _check_nodes(c: Cluster):
    names: dict[str, str] = {}
    addresses: dict[str, str] = {}
    for role in ("controllers", "workers"):
        for i, node in enumerate(getattr(c, role)):
            where = f"{role}[{i}]"
            if node.name in names:
                yield f"{where}.name", f"{node.name!r} is already the name of {names[node.name]}"
            if len(node.name) > MAX_NODE_NAME:
                yield f"{where}.name", (
                    f"{node.name!r} is {len(node.name)} characters; at most {MAX_NODE_NAME} fit, as its kubelet"
                    " certificate's common name system:node:<name> is limited to 64"
                )
            names.setdefault(node.name, where)
            if node.address is None:
                if c.provider is None:
                    yield f"{where}.address", (
                        "required: without a provider to reserve one, every node needs its address"
                    )
                continue
            if node.address in addresses:
                yield f"{where}.address", f"{node.address} is already the address of {addresses[node.address]}"
            addresses.setdefault(node.address, where)
            if ipaddress.ip_address(node.address) in PROVIDER_PRIVATE:
                yield f"{where}.address", (
                    f"{node.address} is in the provider's private range 10.0.0.0/8;"
                    " a node's identity is a reserved public address"
                )


def _check_ranges(c: Cluster):
    n = c.network
    pods, services = ipaddress.ip_network(n.pod_cidr), ipaddress.ip_network(n.service_cidr)
    for field, net in (("pod_cidr", pods), ("service_cidr", services)):
        if net.overlaps(PROVIDER_PRIVATE):
            yield f"network.{field}", (
                f"{net} overlaps the provider's private range 10.0.0.0/8; pick a range outside it"
            )
    if pods.overlaps(services):
        yield "network.service_cidr", f"{services} overlaps the pod range {pods}"
    if services.num_addresses < 16:
        yield "network.service_cidr", (
            f"{services} is too small: the DNS service needs its tenth address; use a /28 or larger"
        )
    if services.prefixlen < 12:
        yield "network.service_cidr", f"{services} is larger than Kubernetes allows for services (/12 at most)"
    if n.node_pod_prefix <= pods.prefixlen:
        yield "network.node_pod_prefix", (
            f"/{n.node_pod_prefix} must be longer than the pod range's /{pods.prefixlen}"
        )
    else:
        room = 2 ** (n.node_pod_prefix - pods.prefixlen)
        if room < len(c.nodes):
            need = n.node_pod_prefix - (len(c.nodes) - 1).bit_length()
            yield "network.pod_cidr", (
                f"{pods} holds {room} node subnets of /{n.node_pod_prefix} but the cluster has"
                f" {len(c.nodes)} nodes; use a /{need} or larger"
            )
    for field in ("controllers", "workers"):
        for i, node in enumerate(getattr(c, field)):
            if node.address is None:
                continue
            addr = ipaddress.ip_address(node.address)
            for name, net in (("pod", pods), ("service", services)):
                if addr in net:
                    yield f"{field}[{i}].address", f"{addr} is inside the {name} range {net}"


def warnings(c: Cluster, today: datetime.date | None = None) -> list[str]:
    out = []
    support = lock.support_warning(c.versions.kubernetes, today or datetime.date.today())
    if support:
        out.append(f"versions.kubernetes: {support}")
    if len(c.controllers) % 2 == 0:
        out.append(
            f"controllers: {len(c.controllers)} controllers tolerate no more failures than"
            f" {len(c.controllers) - 1}; etcd quorum prefers an odd count"
        )
    urls = [("boot.artifacts_url", c.boot.artifacts_url), ("mirror", c.mirror)]
    urls += [(f"registry_mirrors.{host}", url) for host, url in c.registry_mirrors.items()]
    for field, url in urls:
        if url and url.startswith("http://"):
            out.append(f"{field}: {url} is plain http: every file is still checked by its digest, but anyone on the"
                       " path sees what the nodes fetch; prefer https")
    if (c.image.controllers or c.image.workers) and c.boot.artifacts_url.startswith("http://"):
        out.append(f"image: the nodes network-boot from {c.boot.artifacts_url} over plain http, and iPXE checks no digest"
                   " of the kernel, initrd or root filesystem: anyone on the path could replace them; use https")
    return out
