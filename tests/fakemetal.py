"""A fake Equinix Metal API: a real HTTPS server on 127.0.0.1 for packet-python to talk to.

It implements the endpoints vent-bake uses, with the published shapes, and checks every
request and every response it sends against the official OpenAPI document with openapi-core:
a request the document does not accept gets a 422 and is recorded in `violations`, and so is
any response of ours that the document would not produce. Devices move queued ->
provisioning -> active as time passes. Faults on demand: 5xx (before or after the work is
done), 429 with Retry-After, slow answers, dropped connections (before or after the work),
devices that fail, spot devices reclaimed.
"""

import datetime
import http.server
import json
import random
import socket
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse

DOCUMENT = Path(__file__).resolve().parents[2] / "shared" / "metal-openapi.json"
PREFIX = "/metal/v1"
SPEC_HOST = "https://api.equinix.com"  # the document's server; requests are validated as sent there
_openapi = None


def openapi() -> OpenAPI:
    global _openapi
    if _openapi is None:
        _openapi = OpenAPI.from_file_path(str(DOCUMENT))
    return _openapi


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Faults:
    rate: float = 0.0  # share of calls that fail, one way or another
    latency: float = 0.0  # seconds added to every call
    seed: int = 7
    kinds: tuple = ("500-before", "500-after", "503-before", "429", "drop-before", "drop-after")
    fail_hostnames: set = field(default_factory=set)  # devices with these hostnames go to `failed` (once each)

    def __post_init__(self):
        self.random = random.Random(self.seed)

    def pick(self) -> str | None:
        return self.random.choice(self.kinds) if self.rate and self.random.random() < self.rate else None


class Metal:
    """The provider's records, and the rules for changing them."""

    def __init__(self, token: str, project: str, provision_after: float = 0.2, active_after: float = 0.5):
        self.token, self.project = token, project
        self.provision_after, self.active_after = provision_after, active_after
        self.devices: dict[str, dict] = {}
        self.reservations: dict[str, dict] = {}
        self.lock = threading.Lock()
        self.faults = Faults()
        self.calls: dict[str, int] = {}
        self.violations: list[str] = []
        self.next_address = 1
        self.spot_prices = {"da": 0.21, "sv": 0.35, "am": 0.19, "ny": 0.62}

    # --- devices

    def _state(self, d: dict) -> str:
        if d["_state"] in ("failed", "deleted"):
            return d["_state"]
        age = time.monotonic() - d["_created"]
        if age >= self.active_after:
            if d["hostname"] in self.faults.fail_hostnames:
                self.faults.fail_hostnames.discard(d["hostname"])
                d["_state"] = "failed"
                return "failed"
            return "active"
        return "provisioning" if age >= self.provision_after else "queued"

    def device_json(self, d: dict) -> dict:
        ips = [
            {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, d["id"] + a["address"])), "address": a["address"], "address_family": 4,
             "cidr": a["cidr"], "public": a["public"], "management": a["management"], "enabled": True,
             "assigned_to": {"href": f"{PREFIX}/devices/{d['id']}"}, "href": f"{PREFIX}/ips/{a.get('id', d['id'])}",
             "created_at": d["created_at"]}
            for a in d["ips"]
        ]
        out = {
            "id": d["id"], "href": f"{PREFIX}/devices/{d['id']}", "hostname": d["hostname"], "state": self._state(d),
            "tags": d["tags"], "created_at": d["created_at"], "updated_at": d["created_at"], "billing_cycle": "hourly",
            "operating_system": {"slug": d["os"], "name": d["os"], "distro": d["os"].split("_")[0], "version": "1"},
            "plan": {"slug": d["plan"], "name": d["plan"]}, "metro": {"code": d["metro"], "id": str(uuid.uuid5(uuid.NAMESPACE_DNS, d["metro"])), "name": d["metro"]},
            "project": {"href": f"{PREFIX}/projects/{self.project}"}, "ip_addresses": ips,
            "spot_instance": d["spot"], "userdata": d["userdata"], "locked": False,
        }
        if d["spot"]:
            out["spot_price_max"] = d["price"]
        return out

    def create_device(self, body: dict) -> dict:
        n = len(self.devices) + 1
        d = {
            "id": str(uuid.uuid4()), "hostname": body.get("hostname", f"device-{n}"), "tags": body.get("tags", []),
            "os": body["operating_system"], "plan": body["plan"], "metro": body["metro"], "userdata": body.get("userdata", ""),
            "spot": bool(body.get("spot_instance")), "price": body.get("spot_price_max"), "_state": "queued",
            "ipxe_script_url": body.get("ipxe_script_url"), "always_pxe": body.get("always_pxe"),
            "_created": time.monotonic(), "created_at": _now(),
            "ips": [{"address": f"10.{n // 250}.{n % 250}.{2 * (n % 120)}", "cidr": 31, "public": False, "management": True}],
        }
        self.devices[d["id"]] = d
        return d

    def reclaim(self, hostname: str) -> str:
        """The spot market takes the device back: it is gone, its assignments with it."""
        with self.lock:
            d = next(d for d in self.devices.values() if d["hostname"] == hostname and d["_state"] != "deleted")
            self._delete(d)
            return d["id"]

    def _delete(self, d: dict):
        d["_state"] = "deleted"
        for r in self.reservations.values():
            r["assignments"] = [a for a in r["assignments"] if a != d["id"]]

    def live_devices(self) -> list[dict]:
        return [d for d in self.devices.values() if d["_state"] != "deleted"]

    # --- reservations

    def reservation_json(self, r: dict) -> dict:
        return {
            "id": r["id"], "href": f"{PREFIX}/ips/{r['id']}", "address": r["address"], "network": r["address"],
            "address_family": 4, "cidr": 32, "netmask": "255.255.255.255", "public": True, "management": False,
            "manageable": True, "type": "public_ipv4", "state": "created", "tags": r["tags"], "created_at": r["created_at"],
            "metro": {"code": r["metro"], "id": str(uuid.uuid5(uuid.NAMESPACE_DNS, r["metro"])), "name": r["metro"]},
            "project": {"href": f"{PREFIX}/projects/{self.project}"},
            "assignments": [{"assigned_to": {"href": f"{PREFIX}/devices/{dev}"}, "address": r["address"], "cidr": 32,
                             "address_family": 4, "public": True, "href": f"{PREFIX}/ips/{r['id']}"} for dev in r["assignments"]],
        }

    def reserve(self, body: dict) -> dict:
        # 203.0.113.0/24 (TEST-NET-3): never routed, so no address here can be mistaken for a real one
        address = f"203.0.113.{self.next_address}"
        self.next_address += 1
        r = {"id": str(uuid.uuid4()), "address": address, "tags": body.get("tags", []), "metro": body.get("metro", "da"),
             "assignments": [], "created_at": _now()}
        self.reservations[r["id"]] = r
        return r


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    metal: Metal  # set on the subclass made per server

    def log_message(self, *args):
        pass

    def do_GET(self):
        self._serve("GET")

    def do_POST(self):
        self._serve("POST")

    def do_DELETE(self):
        self._serve("DELETE")

    # --- plumbing

    def _serve(self, method: str):
        m = self.metal
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        query = parse_qs(url.query)
        kind = f"{method} {_kind(url.path)}"
        with m.lock:
            m.calls[kind] = m.calls.get(kind, 0) + 1
            fault = m.faults.pick()
        if m.faults.latency:
            time.sleep(m.faults.latency)
        if fault == "drop-before":
            return self._drop()
        if fault in ("500-before", "503-before"):
            return self._send(int(fault[:3]), {"errors": ["injected fault"]}, validate=False)
        if fault == "429":
            return self._send(429, {"errors": ["slow down"]}, validate=False, headers={"Retry-After": "1"})
        request = MockRequest(SPEC_HOST, method, url.path, args=[(k, v) for k, vs in query.items() for v in vs],
                              headers=dict(self.headers), data=raw, content_type=self.headers.get("Content-Type", "application/json"))
        if self.headers.get("X-Auth-Token") != m.token:
            return self._send(401, {"errors": ["invalid token"]}, request=request)
        try:
            openapi().validate_request(request)
        except Exception as exc:  # the document does not accept this request
            reason = str(getattr(exc, "__cause__", None) or exc)
            with m.lock:
                m.violations.append(f"request {method} {url.path}: {reason}")
            return self._send(422, {"errors": [f"request does not match the API document: {reason[:300]}"]}, request=request)
        body = json.loads(raw) if raw else {}
        with m.lock:
            status, payload = route(m, method, url.path.removeprefix(PREFIX), query, body)
        if fault == "drop-after":
            return self._drop()
        if fault == "500-after":
            return self._send(500, {"errors": ["injected fault after the work was done"]}, validate=False)
        self._send(status, payload, request=request)

    def _drop(self):
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _send(self, status: int, payload, request=None, validate=True, headers=None):
        data = b"" if payload is None else json.dumps(payload).encode()
        if validate and request is not None and status != 422:
            response = MockResponse(data, status_code=status, headers={"Content-Type": "application/json"})
            try:
                openapi().validate_response(request, response)
            except Exception as exc:
                with self.metal.lock:
                    self.metal.violations.append(f"response {status} to {request.method} {request.path}: {getattr(exc, '__cause__', None) or exc}")
        self.send_response(status)
        if data:
            self.send_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _kind(path: str) -> str:
    parts = path.removeprefix(PREFIX).strip("/").split("/")
    return "/".join("{id}" if i % 2 == 1 and p not in ("spot", "prices", "metros") else p for i, p in enumerate(parts))


def route(m: Metal, method: str, path: str, query: dict, body: dict):
    parts = path.strip("/").split("/")
    one = lambda name: (query.get(name) or [None])[0]  # noqa: E731
    match method, parts:
        case "GET", ["projects", project, "devices"]:
            tag = one("tag")
            found = [d for d in m.live_devices() if project == m.project and (tag is None or tag in d["tags"])]
            per_page, page = int(one("per_page") or 10), int(one("page") or 1)
            last = max(1, -(-len(found) // per_page))
            chunk = found[(page - 1) * per_page: page * per_page]
            meta = {"current_page": page, "last_page": last, "total": len(found),
                    "next": {"href": f"{PREFIX}/projects/{project}/devices?page={page + 1}"} if page < last else None}
            if meta["next"] is None:
                del meta["next"]
            return 200, {"devices": [m.device_json(d) for d in chunk], "meta": meta}
        case "POST", ["projects", project, "devices"]:
            return 201, m.device_json(m.create_device(body))
        case "GET", ["devices", device_id]:
            d = m.devices.get(device_id)
            return (200, m.device_json(d)) if d and d["_state"] != "deleted" else (404, {"errors": ["not found"]})
        case "DELETE", ["devices", device_id]:
            d = m.devices.get(device_id)
            if not d or d["_state"] == "deleted":
                return 404, {"errors": ["not found"]}
            m._delete(d)
            return 204, None
        case "POST", ["devices", device_id, "ips"]:
            d = m.devices.get(device_id)
            if not d or d["_state"] == "deleted":
                return 404, {"errors": ["not found"]}
            address = body["address"].split("/")[0]
            r = next((r for r in m.reservations.values() if r["address"] == address), None)
            if r is None:
                return 422, {"errors": [f"{address} is not reserved in this project"]}
            if r["assignments"]:
                return 422, {"errors": [f"{address} is already assigned"]}
            r["assignments"].append(device_id)
            d["ips"].append({"address": address, "cidr": 32, "public": True, "management": False, "id": r["id"]})
            a = {"id": str(uuid.uuid4()), "address": address, "address_family": 4, "cidr": 32, "public": True,
                 "management": False, "assigned_to": {"href": f"{PREFIX}/devices/{device_id}"}, "href": f"{PREFIX}/ips/{r['id']}"}
            return 201, a
        case "GET", ["projects", project, "ips"]:
            return 200, {"ip_addresses": [m.reservation_json(r) for r in m.reservations.values()]}
        case "POST", ["projects", project, "ips"]:
            return 201, m.reservation_json(m.reserve(body))
        case "DELETE", ["ips", ip_id]:
            if ip_id not in m.reservations:
                return 404, {"errors": ["not found"]}
            del m.reservations[ip_id]
            return 204, None
        case "GET", ["market", "spot", "prices", "metros"]:
            plan = one("plan") or "c3.small.x86"
            return 200, {"spot_market_prices": {metro: {plan: {"price": price}} for metro, price in m.spot_prices.items()}}
    return 404, {"errors": [f"no route for {method} {path}"]}


def make_tls(directory: Path) -> Path:
    """A test CA (ca.crt) and a server certificate for 127.0.0.1 (server.crt, server.key) in
    directory, made with vent-bake's own PKI code; returns directory."""
    from vent_bake import pki
    from vent_bake.pki import CertSpec

    ca_key, key = pki.new_key("ecdsa-p256"), pki.new_key("ecdsa-p256")
    ca = pki.issue(CertSpec("ca", "fake metal test CA", issuer=None), ca_key, 1)
    cert = pki.issue(CertSpec("server", "127.0.0.1", server=True, ips=("127.0.0.1",)), key, 1, ca, ca_key)
    (directory / "ca.crt").write_bytes(pki.cert_pem(ca))
    (directory / "server.crt").write_bytes(pki.cert_pem(cert))
    (directory / "server.key").write_bytes(pki.key_pem(key))
    return directory


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # a client that went away (killed, timed out) is part of what the tests do


class FakeMetal:
    """The server: start() serves on 127.0.0.1 over TLS with a certificate from `ca`."""

    def __init__(self, metal: Metal, cert: Path, key: Path):
        handler = type("BoundHandler", (Handler,), {"metal": metal})
        self.metal = metal
        self.server = _Server(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True, do_handshake_on_connect=False)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}{PREFIX}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
