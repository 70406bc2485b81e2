"""Packet / Equinix Metal, through packet-python.

packet-python's Manager knows the API's paths and shapes; this module wraps it where it falls
short for a launcher:
- `call_api` is replaced: one requests.Session per thread (the Manager keeps pagination state
  on itself, so each thread also has a Manager of its own), connect and read timeouts,
  urllib3's Retry for idempotent methods only (backoff with jitter, honouring Retry-After),
  the base URL from the settings, no `//` in paths, and request bodies without JSON nulls;
- device creation builds its own body: packet-python's sends nulls for unset spot fields, a
  `{}` for tags, and has no `ip_addresses`;
- errors become one line for the operator, and never carry the token.
Calls that are not idempotent (create, assign, reserve) are never retried here: the caller
looks at what exists, by tag, before trying again (vent_bake/launch.py).
"""

import json
import threading
from urllib.parse import urlencode

import packet
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from vent_bake.provider import Machine, NodeSpec, ProviderError, Reservation

TIMEOUT = (10, 60)  # connect, read (seconds)
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
PER_PAGE = 100
NODE_TAG = "vent-bake:node:"


class ApiError(ProviderError):
    def __init__(self, status: int, method: str, path: str, detail: str):
        self.status = status
        hint = {401: "; check METAL_AUTH_TOKEN", 403: "; the token has no access to this project"}.get(status, "")
        super().__init__(f"Metal API {method} {path}: {status} {detail}{hint}")


def _retry() -> Retry:
    return Retry(
        total=6, connect=6, read=6, status=6, other=0,
        backoff_factor=0.25, backoff_max=15, backoff_jitter=0.25,
        status_forcelist=(429, 500, 502, 503, 504), allowed_methods=IDEMPOTENT,
        respect_retry_after_header=True, raise_on_status=False,
    )


def _without_nulls(value):
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


class MetalManager(packet.Manager):
    """packet-python's Manager with a call_api fit for launching many machines at once."""

    def __init__(self, token: str, base_url: str, pool: int = 32):
        super().__init__(auth_token=token)
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        adapter = HTTPAdapter(max_retries=_retry(), pool_connections=pool, pool_maxsize=pool)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)

    def call_api(self, method, type="GET", params=None):  # noqa: A002 (packet-python's signature)
        path = "/" + method.lstrip("/")
        url = self.base_url + path
        body = None
        if type in ("GET", "DELETE") and params:
            url += "?" + urlencode(params, doseq=True)
        elif type in ("POST", "PUT", "PATCH"):
            body = json.dumps(_without_nulls(params or {}))
        headers = {"X-Auth-Token": self.auth_token, "Content-Type": "application/json", "User-Agent": self.user_agent}
        try:
            resp = self.session.request(type, url, headers=headers, data=body, timeout=TIMEOUT)
        except requests.RequestException as exc:
            raise ProviderError(f"Metal API {type} {path}: cannot reach {self.base_url} ({exc.__class__.__name__})") from None
        data = None
        if resp.content and resp.headers.get("content-type", "").startswith("application/json"):
            try:
                data = resp.json()
            except ValueError:
                data = None
        if not resp.ok:
            detail = ""
            if isinstance(data, dict):
                detail = data.get("error") or "; ".join(data.get("errors") or [])
            raise ApiError(resp.status_code, type, path, detail or resp.reason or "")
        self.meta = data.get("meta") if isinstance(data, dict) else None
        return data


class PacketProvider:
    def __init__(self, settings, token: str, base_url: str | None = None):
        self.settings = settings
        self.token = token
        self.base_url = base_url or settings.api_url
        self._local = threading.local()

    @property
    def manager(self) -> MetalManager:
        """This thread's Manager: packet-python keeps pagination state on it."""
        if not hasattr(self._local, "manager"):
            self._local.manager = MetalManager(self.token, self.base_url)
        return self._local.manager

    # --- addresses

    def reservations(self) -> list[Reservation]:
        """The project's single public IPv4 addresses (/32 reservations), with their assignments."""
        data = self.manager.call_api(f"projects/{self.settings.project}/ips", params={"types": "public_ipv4", "per_page": 1000})
        out = []
        for ip in (data or {}).get("ip_addresses", []):
            if ip.get("cidr") != 32 or not ip.get("public", True) or not ip.get("address"):
                continue
            tags = tuple(ip.get("tags") or ())
            out.append(Reservation(ip["id"], ip["address"], _node(tags), tags))
        return out

    def reserve(self, node: str, tags: list[str]) -> Reservation:
        ip = self.manager.reserve_ip_address(
            self.settings.project, "public_ipv4", 1, metro=self.settings.metro, tags=tags,
            comments=f"vent-bake: the address of {node}",
        )
        return Reservation(ip.id, ip.address, node, tuple(ip.tags or tags))

    def release(self, reservation: Reservation) -> None:
        self.manager.call_api(f"ips/{reservation.id}", type="DELETE")

    # --- machines

    def machines(self, tag: str) -> list[Machine]:
        out, page = [], 1
        while True:
            devices = self.manager.list_devices(self.settings.project, params={"tag": tag, "per_page": PER_PAGE, "page": page})
            out += [_machine(d) for d in devices]
            if not (self.manager.meta or {}).get("next"):
                return out
            page += 1

    def create(self, spec: NodeSpec) -> Machine:
        body = {
            "metro": self.settings.metro,
            "plan": spec.plan,
            "operating_system": self.settings.os,
            "hostname": spec.name,
            "billing_cycle": "hourly",
            "userdata": spec.userdata,
            "tags": list(spec.tags),
            # the provider's usual layout, said out loud: one public and one private IPv4, and IPv6
            "ip_addresses": [
                {"address_family": 4, "public": True},
                {"address_family": 4, "public": False},
                {"address_family": 6, "public": True},
            ],
        }
        if spec.spot:
            body |= {"spot_instance": True, "spot_price_max": spec.max_price}
        if spec.ipxe_script_url:
            # Packet's custom iPXE path. Flatcar's iPXE boot installed to disk, so it PXE-booted once;
            # a node image runs from memory (live-boot) and writes no disk to boot from later: it
            # PXE-boots on every boot, each reboot a fresh node from its userdata, as a replacement is.
            body |= {"operating_system": "custom_ipxe", "ipxe_script_url": spec.ipxe_script_url, "always_pxe": True}
        data = self.manager.call_api(f"projects/{self.settings.project}/devices", type="POST", params=body)
        return _machine(packet.Device(data, self.manager))

    def assign(self, machine: Machine, address: str) -> None:
        self.manager.create_device_ip(machine.id, f"{address}/32")

    def delete(self, machine: Machine) -> None:
        try:
            self.manager.call_api(f"devices/{machine.id}", type="DELETE")
        except ApiError as exc:
            if exc.status != 404:  # already gone is what we wanted
                raise

    def spot_prices(self, plan: str) -> dict[str, float]:
        data = self.manager.call_api("market/spot/prices/metros", params={"plan": plan})
        report = (data or {}).get("spot_market_prices") or {}
        out = {}
        for metro, plans in report.items():
            if isinstance(plans, dict) and isinstance(plans.get(plan), dict) and "price" in plans[plan]:
                out[metro] = float(plans[plan]["price"])
        return out


def _node(tags) -> str | None:
    for tag in tags or []:
        if tag.startswith(NODE_TAG):
            return tag[len(NODE_TAG):]
    return None


def _machine(device) -> Machine:
    addresses = tuple(ip.get("address") for ip in device.ip_addresses or [] if ip.get("address"))
    return Machine(device.id, _node(device.tags), device.state or "", addresses, bool(device.spot_instance),
                   device.spot_price_max, tuple(device.tags or ()))
