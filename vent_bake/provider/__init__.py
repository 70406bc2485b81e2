"""The provider interface: what launching a cluster asks of a bare-metal cloud.

Nothing above this package knows which provider it talks to. Every resource vent-bake makes
carries tags naming the cluster (and the node), and every lookup goes by those tags: the
provider's own records are the truth, so a launcher that died midway picks up where it was.
"""

from dataclasses import dataclass, field
from typing import Protocol

from vent_bake.errors import VentError


class ProviderError(VentError):
    """The provider refused or could not be reached; the message says which and what to do."""


def cluster_tag(cluster: str) -> str:
    return f"vent-bake:cluster:{cluster}"


def node_tag(node: str) -> str:
    return f"vent-bake:node:{node}"


def role_tag(role: str) -> str:
    return f"vent-bake:role:{role}"


@dataclass(frozen=True)
class Reservation:
    id: str
    address: str
    node: str | None  # from its node tag
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Machine:
    """A device that plays a node."""

    id: str
    node: str | None  # from its node tag
    state: str  # queued, provisioning, active, failed, ...
    addresses: tuple[str, ...] = ()
    spot: bool = False
    price: float | None = None
    tags: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class NodeSpec:
    """What to create for one node."""

    name: str
    plan: str
    spot: bool
    max_price: float | None
    userdata: str
    tags: tuple[str, ...]
    ipxe_script_url: str | None = None  # boot a node image over the network rather than the provider's OS


class Provider(Protocol):
    def reservations(self) -> list[Reservation]: ...
    def reserve(self, node: str, tags: list[str]) -> Reservation: ...
    def release(self, reservation: Reservation) -> None: ...
    def machines(self, tag: str) -> list[Machine]: ...
    def create(self, spec: NodeSpec) -> Machine: ...
    def assign(self, machine: Machine, address: str) -> None: ...
    def delete(self, machine: Machine) -> None: ...
    def spot_prices(self, plan: str) -> dict[str, float]: ...
