"""The cluster's machines at the provider: reserve addresses, launch, status, destroy.

The provider's records, found by tag, are the truth: nothing about devices is kept locally,
so a launch that died midway, or a device the spot market took back, is picked up by simply
running launch again. A call that is not idempotent (create, assign, reserve) is never sent
twice blindly: after a failure or a lost answer, we look before we try again.
"""

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import requests
import yaml

from vent_bake import artifacts, manifest, render
from vent_bake.config import Cluster, Node
from vent_bake.errors import VentError
from vent_bake.image import build as image_build
from vent_bake.provider import Machine, NodeSpec, Provider, ProviderError, cluster_tag, node_tag, role_tag
from vent_bake.state import ADDRESSES, ADMIN_KUBECONFIG, State

GONE = frozenset({"failed", "deprovisioning", "deleted", "inactive"})
ATTEMPTS = 4


def provider_for(cluster: Cluster, env) -> Provider:
    from vent_bake.provider.packet import PacketProvider

    if cluster.provider is None:
        raise VentError("the cluster file has no provider section; add provider.packet to reserve or launch")
    token = env.get("METAL_AUTH_TOKEN") or env.get("PACKET_AUTH_TOKEN")
    if not token:
        raise VentError("METAL_AUTH_TOKEN is not set: export your Equinix Metal API token (PACKET_AUTH_TOKEN works too)")
    return PacketProvider(cluster.provider.packet, token, env.get("METAL_API_URL"))


def _look_then_retry(action: Callable, found: Callable, what: str, attempts: int = ATTEMPTS, pause: float = 1.0):
    """Run a non-idempotent action; after a failure, look (found()) before trying again."""
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except ProviderError as exc:
            if getattr(exc, "status", None) in (401, 403, 404, 422) or attempt == attempts:
                raise ProviderError(f"{what}: {exc}") from None
            time.sleep(pause * attempt)
            existing = found()
            if existing is not None:
                return existing
    raise AssertionError("unreachable")


# --- reserve ---------------------------------------------------------------------------------------

def reserve(cluster: Cluster, state: State, provider: Provider, say: Callable[[str], None]) -> list[str]:
    """One public IPv4 per node that has no address in the cluster file; idempotent."""
    tag = cluster_tag(cluster.name)
    existing = provider.reservations()
    ours = {r.node: r for r in existing if tag in r.tags and r.node}
    wanted = [n.name for n in cluster.nodes if n.address is None]
    missing = [name for name in wanted if name not in ours]
    quota = cluster.provider.packet.address_quota
    if len(existing) + len(missing) > quota:
        raise VentError(
            f"the cluster needs {len(missing)} more public IPv4 addresses but the project holds {len(existing)}"
            f" of its quota of {quota}; raise the quota with the provider (provider.packet.address_quota) or"
            " make the cluster smaller"
        )
    for name in missing:
        def lookup(name=name):
            return next((r for r in provider.reservations() if tag in r.tags and r.node == name), None)

        ours[name] = _look_then_retry(lambda name=name: provider.reserve(name, [tag, node_tag(name)]), lookup, f"reserving {name}'s address")
        say(f"reserved {ours[name].address} for {name}")
    state.put(ADDRESSES, yaml.safe_dump({name: ours[name].address for name in wanted}, sort_keys=True).encode())
    state.save()
    return missing


# --- launch --------------------------------------------------------------------------------------------

@dataclass
class Options:
    concurrency: int = 16
    max_price: float | None = None
    poll: float = 5.0
    timeout: float = 1800.0
    replacements: int = 3


def check_launchable(ws, provider: Provider) -> dict[str, str]:
    """Refuse, naming the command to run, unless every node's address is reserved and the
    reviewed artifacts are exactly what boots and what is published; then every node's
    bootable userdata. The provider and the web server are asked at the same time; the
    reservations are reported on first."""
    cluster, state = ws.cluster, ws.state
    with ThreadPoolExecutor(1) as pool:
        reservations = pool.submit(provider.reservations)
        try:
            tree, problem = artifacts.reviewed(ws.paths.out, manifest.inputs_digest(ws.text, state, cluster)), None
            check_published(cluster, tree, image_build.check(ws.paths.cluster, cluster))
        except VentError as exc:
            problem = exc
        held = {r.address for r in reservations.result() if cluster_tag(cluster.name) in r.tags}
    for name, address in render.node_addresses(cluster, state).items():
        if address is None or address not in held:
            raise VentError(f"node {name} has no address reserved in the project: run `vent-bake reserve`, then `vent-bake render`")
    if problem:
        raise problem
    return {n.name: artifacts.revealed(tree, cluster, state, n.name) for n in cluster.nodes}


def check_published(cluster: Cluster, tree: dict[str, bytes], images: dict[str, Path] | None = None, concurrency: int = 16) -> None:
    """Refuse unless every node's fetch list, and the iPXE script of every role's node image, is
    published as made under boot.artifacts_url: a node that cannot fetch its files never joins,
    and its machine is billed all the same."""
    def differs(url: str, expected: bytes) -> str | None:
        try:
            response = requests.get(url, timeout=(10, 30))
        except requests.RequestException as exc:
            return f"{url}: unreachable ({type(exc).__name__})"
        if response.status_code != 200:
            return f"{url}: HTTP {response.status_code}"
        if response.content != expected:
            return f"{url}: not the one made"
        return None

    wanted = {f"{cluster.boot.artifacts_base}nodes/{n.name}/fetch.list": tree[f"nodes/{n.name}/fetch.list"] for n in cluster.nodes}
    wanted |= {ipxe_script(cluster, role): (directory / "boot.ipxe").read_bytes() for role, directory in (images or {}).items()}
    with ThreadPoolExecutor(concurrency) as pool:
        problems = [p for p in pool.map(lambda item: differs(*item), wanted.items()) if p]
    if problems:
        raise VentError(f"boot.artifacts_url: {problems[0]} ({len(problems)} of {len(wanted)} files): publish artifacts/ (and"
                        " images/, under images/) there as made, then launch")


def ipxe_script(cluster: Cluster, role: str) -> str | None:
    """The published iPXE script of the role's node image, if the cluster file names one."""
    image = getattr(cluster.image, image_build.ROLES[role])
    return f"{image_build.published(cluster, image)}boot.ipxe" if image else None


def spec_for(cluster: Cluster, node: Node, userdata: str, options: Options) -> NodeSpec:
    role = cluster.role(node)
    settings = getattr(cluster.provider.packet, f"{role}s")
    price = options.max_price if options.max_price is not None and settings.spot else settings.max_price
    tags = (cluster_tag(cluster.name), node_tag(node.name), role_tag(role))
    return NodeSpec(node.name, settings.plan, settings.spot, price, userdata, tags, ipxe_script(cluster, role))


class Launch:
    def __init__(self, cluster: Cluster, state: State, provider: Provider, userdata: dict[str, str], options: Options,
                 say: Callable[[str], None]):
        self.cluster, self.provider, self.options, self.say = cluster, provider, options, say
        self.address = render.addresses(cluster, state)
        self.specs = {n.name: spec_for(cluster, n, userdata[n.name], options) for n in cluster.nodes}
        self.tag = cluster_tag(cluster.name)

    def live(self, machines: list[Machine]) -> dict[str, Machine]:
        """Each node's live machine; spare live machines of a node (never made by us twice, but
        a launch killed at the wrong moment could) and dead ones are deleted."""
        out: dict[str, Machine] = {}
        for m in sorted(machines, key=lambda m: m.id):
            if m.node not in self.specs:
                continue
            if m.state in GONE or m.node in out:
                self.say(f"{m.node}: removing device {m.id} ({m.state or 'spare'})")
                self.provider.delete(m)
            else:
                out[m.node] = m
        return out

    def _find(self, name: str) -> Machine | None:
        return next((m for m in self.provider.machines(node_tag(name)) if m.state not in GONE and self.tag in m.tags), None)

    def create(self, name: str) -> Machine:
        machine = _look_then_retry(lambda: self.provider.create(self.specs[name]), lambda: self._find(name), f"creating {name}")
        self.say(f"{name}: device {machine.id} created")
        return machine

    def assign(self, name: str, machine: Machine) -> None:
        address = self.address[name]
        if address in machine.addresses:
            return

        def assigned():
            current = self._find(name)
            return True if current and address in current.addresses else None

        _look_then_retry(lambda: self.provider.assign(machine, address), assigned, f"assigning {address} to {name}")

    def ensure(self, names: list[str], machines: dict[str, Machine]) -> dict[str, Machine]:
        """Create what is missing and assign every address, several at a time."""
        def one(name: str) -> Machine:
            machine = machines.get(name) or self.create(name)
            self.assign(name, machine)
            return machine

        with ThreadPoolExecutor(max_workers=self.options.concurrency) as pool:
            return dict(zip(names, pool.map(one, names)))

    def run(self) -> dict[str, Machine]:
        names = list(self.specs)
        self.ensure(names, self.live(self.provider.machines(self.tag)))
        deadline = time.monotonic() + self.options.timeout
        replaced: dict[str, int] = {}
        last = ""
        while True:
            current = {m.node: m for m in self.provider.machines(self.tag) if m.node in self.specs}
            dead = [n for n in names if n not in current or current[n].state in GONE]
            for name in dead:
                replaced[name] = replaced.get(name, 0) + 1
                if replaced[name] > self.options.replacements:
                    raise VentError(f"{name}: its device failed {self.options.replacements} times; see the provider's events")
                self.say(f"{name}: device {'gone' if name not in current else current[name].state}; replacing it with the same userdata and address")
            if dead:
                self.live(list(current.values()))
                current |= self.ensure(dead, {})
                continue
            counts: dict[str, int] = {}
            for m in current.values():
                counts[m.state] = counts.get(m.state, 0) + 1
            progress = ", ".join(f"{s} {n}" for s, n in sorted(counts.items()))
            if progress != last:
                self.say(f"devices: {progress}")
                last = progress
            if counts.get("active") == len(names):
                return current
            if time.monotonic() > deadline:
                raise VentError(f"not every device became active in {self.options.timeout:.0f} s ({progress}); run `vent-bake launch` again to go on")
            time.sleep(self.options.poll)


def table(cluster: Cluster, state: State, machines: dict[str, Machine]) -> list[dict]:
    addresses = render.node_addresses(cluster, state)
    rows = []
    for node in cluster.nodes:
        m = machines.get(node.name)
        rows.append({
            "node": node.name, "role": cluster.role(node), "device": m.id if m else None,
            "state": m.state if m else "absent", "address": addresses.get(node.name),
            "price": m.price if m and m.spot else None,
        })
    return rows


def format_table(rows: list[dict]) -> str:
    cols = tuple(rows[0]) if rows else ()
    cells = [[("" if r[c] is None else str(r[c])) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def status(cluster: Cluster, state: State, provider: Provider) -> list[dict]:
    machines = {m.node: m for m in provider.machines(cluster_tag(cluster.name)) if m.node}
    return table(cluster, state, machines)


def destroy(cluster: Cluster, state: State, provider: Provider, say: Callable[[str], None]) -> tuple[int, int]:
    """Delete this cluster's devices, then its address reservations, found by the cluster tag."""
    tag = cluster_tag(cluster.name)
    machines = [m for m in provider.machines(tag) if tag in m.tags]
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(provider.delete, machines))
    for m in machines:
        say(f"deleted device {m.id} ({m.node})")
    released = 0
    for r in provider.reservations():
        if tag in r.tags:
            provider.release(r)
            released += 1
            say(f"released {r.address} ({r.node})")
    state.drop(ADDRESSES)
    state.save()
    return len(machines), released


def admin_kubeconfig(paths) -> str:
    return str(paths.state / ADMIN_KUBECONFIG)
