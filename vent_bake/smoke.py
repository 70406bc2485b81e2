"""`vent-bake smoke`: judge a live cluster, as an operator would, with the admin kubeconfig and
kubectl: Kubernetes the Hard Way's smoke test, and more. One line per check; everything it
makes lives in a namespace of its own, deleted at the end.

    nodes        every node Ready, its InternalIP its reserved address
    apiservers   /readyz of every controller's kube-apiserver
    encryption   a Secret, read raw from etcd (by a pod on a controller, with the apiserver's
                 etcd credential), starts with k8s:enc:<provider>:v1:
    deployment   a Deployment's pod Running; port-forward to it answers; its logs; exec in it
    nodeport     a NodePort Service answers on every node's address
    metadata     pods cannot reach the metadata service (it serves every node's secrets)
    from a pod   kubernetes.default.svc.<domain> resolves through CoreDNS; the kubernetes
                 Service answers (the apiserver's own reply to plain HTTP on its TLS port: the
                 workload's busybox speaks no TLS the apiserver accepts); an address outside
                 the cluster is routed
    metrics      `kubectl top nodes` answers (metrics-server, through the aggregation layer)
    gvisor       a pod of RuntimeClass gvisor runs, under gVisor's kernel; on machines that
                 cannot lower OOM scores (host.can_lower_oom_score: false) gVisor's shim cannot
                 start a sandbox: the check shows that this is what stops it, and says so
"""

import ipaddress
import json
import re
import secrets
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from vent_bake import templates
from vent_bake.config import Cluster
from vent_bake.errors import VentError

GVISOR_SIGNATURE = "Starting gVisor"  # the first line of the kernel log gVisor's sentry writes


PASSED, FAILED, NOT_HERE = "ok", "FAILED", "not here"
# containerd-shim-runsc-v1 sets -999 on its sandboxes (gVisor's pkg/shim/v1/manager.go), which
# needs CAP_SYS_RESOURCE: what a machine that cannot lower OOM scores reports.
SHIM_OOM_SCORE = "failed to set OOM Score on shim"


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # PASSED, FAILED, or NOT_HERE: what the cluster file says these machines cannot do
    detail: str

    @property
    def passed(self) -> bool:
        return self.status != FAILED

    def line(self) -> str:
        return f"{self.status:<9}{self.name}: {self.detail}"


class Failed(Exception):
    """A check's failure, with the reason."""


class NotHere(Exception):
    """What the check needs, the machines under this cluster cannot do (their host settings)."""


class Smoke:
    def __init__(self, cluster: Cluster, addresses: dict[str, str], kubeconfig: Path, kubectl: str, outside: str, timeout: float,
                 say: Callable[[str], None], down: tuple[str, ...] = ()):
        self.cluster, self.addresses, self.kubeconfig, self.kubectl = cluster, addresses, kubeconfig, kubectl
        self.outside, self.timeout, self.say = outside, timeout, say
        unknown = set(down) - {n.name for n in cluster.nodes}
        if unknown:
            raise VentError(f"smoke: --except {', '.join(sorted(unknown))}: no such node in the cluster file")
        # Nodes known to be down (--except): left out of the checks of every node.
        self.up = [n for n in cluster.nodes if n.name not in down]
        self.up_controllers = [n for n in cluster.controllers if n.name not in down]
        self.namespace = f"vent-smoke-{secrets.token_hex(3)}"
        self.image = cluster.lock[cluster.versions.kubernetes]["images"]["workload"]
        self.domain = cluster.network.cluster_domain

    # --- kubectl

    def k(self, *args: str, stdin: str | None = None, timeout: float = 60, server: str | None = None) -> str:
        """kubectl's output; Failed with what it said otherwise."""
        command = [self.kubectl, f"--kubeconfig={self.kubeconfig}", *([f"--server={server}"] if server else []), *args]
        try:
            proc = subprocess.run(command, input=stdin, capture_output=True, text=True, errors="replace", timeout=timeout)
        except subprocess.TimeoutExpired:
            raise Failed(f"`kubectl {' '.join(args)}` did not answer in {timeout:.0f} s") from None
        except OSError as exc:
            raise VentError(f"smoke: cannot run {self.kubectl} ({exc.strerror}); pass --kubectl PATH") from None
        if proc.returncode != 0:
            raise Failed(f"`kubectl {' '.join(args)}`: {(proc.stderr or proc.stdout).strip().splitlines()[-1:] or ['failed']}"[:300])
        return proc.stdout

    def in_pod(self, *command: str) -> str:
        return self.k("-n", self.namespace, "exec", "deploy/smoke-web", "--", *command, timeout=30)

    def until(self, what: str, attempt: Callable[[], str | None]) -> str:
        """attempt() until it returns a result rather than raising Failed, or the timeout."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                return attempt()
            except Failed as exc:
                if time.monotonic() > deadline:
                    raise Failed(f"{what}: {exc} (still, after {self.timeout:.0f} s)") from None
            time.sleep(3)

    # --- the checks

    def nodes(self) -> str:
        def ready() -> str:
            listed = {n["metadata"]["name"]: n for n in json.loads(self.k("get", "nodes", "-o", "json"))["items"]}
            for node in self.up:
                found = listed.get(node.name)
                if found is None:
                    raise Failed(f"{node.name} has not registered")
                conditions = {c["type"]: c["status"] for c in found["status"].get("conditions", [])}
                if conditions.get("Ready") != "True":
                    raise Failed(f"{node.name} is not Ready")
                internal = [a["address"] for a in found["status"].get("addresses", []) if a["type"] == "InternalIP"]
                if internal != [self.addresses[node.name]]:
                    raise Failed(f"{node.name}'s InternalIP is {internal}, not its reserved address {self.addresses[node.name]}")
            return f"{len(self.up)} nodes Ready, each at its reserved address"
        return self.until("nodes", ready)

    def apiservers(self) -> str:
        for node in self.up_controllers:
            server = f"https://{self.addresses[node.name]}:{self.cluster.network.api_port}"
            answer = self.k("get", "--raw", "/readyz", server=server, timeout=20).strip()
            if answer != "ok":
                raise Failed(f"{server}/readyz answered {answer!r}")
        return f"/readyz ok on {len(self.up_controllers)} kube-apiservers"

    def encryption(self) -> str:
        controller = self.up_controllers[0].name
        self.apply("smoke/etcd-reader.yaml", controller=controller)
        self.until("the etcd reader", lambda: self.phase("smoke-etcd-reader", "Succeeded"))
        stored = self.k("-n", self.namespace, "logs", "smoke-etcd-reader")
        prefix = f"k8s:enc:{self.cluster.pki.encryption_provider}:v1:"
        if not stored.startswith(prefix):
            raise Failed(f"etcd holds the Secret as {stored[:24]!r}..., not encrypted ({prefix})")
        return f"the Secret is stored in etcd as {prefix}..."

    def deployment(self) -> str:
        pod = self.until("the deployment", lambda: self.running("app=smoke-web"))
        forward = subprocess.Popen([self.kubectl, f"--kubeconfig={self.kubeconfig}", "-n", self.namespace, "port-forward",
                                    f"pod/{pod}", ":8080"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = forward.stdout.readline()
            port = re.search(r"127\.0\.0\.1:(\d+) ->", line)
            if not port:
                raise Failed(f"port-forward said {line.strip() or forward.stderr.read().strip()!r}")
            page = self.fetch(f"http://127.0.0.1:{port[1]}/")
        finally:
            forward.terminate()
            forward.wait(10)
        logs = self.k("-n", self.namespace, "logs", f"pod/{pod}")
        if "vent-bake smoke: serving" not in logs:
            raise Failed(f"the pod's logs lack its first line: {logs[:200]!r}")
        hostname = self.in_pod("hostname").strip()
        if hostname != pod:
            raise Failed(f"exec ran `hostname` and got {hostname!r}, not {pod!r}")
        return f"pod {pod} Running; port-forward answered {page.strip()!r}; logs and exec work"

    def nodeport(self) -> str:
        port = json.loads(self.k("-n", self.namespace, "get", "service", "smoke-web", "-o", "json"))["spec"]["ports"][0]["nodePort"]
        for node in self.up:
            self.until(f"NodePort {port} on {node.name}", lambda node=node: self.fetch(f"http://{self.addresses[node.name]}:{port}/"))
        return f"NodePort {port} answers on all {len(self.up)} node addresses"

    def from_pod(self) -> str:
        name = f"kubernetes.default.svc.{self.domain}"
        resolved = self.until("DNS", lambda: self.in_pod("nslookup", name))
        addresses = re.findall(r"Address:\s*(\S+)", resolved.split(name, 1)[-1])
        if not addresses:
            raise Failed(f"CoreDNS did not resolve {name}: {resolved.strip()[-200:]!r}")
        answer = self.in_pod("sh", "-c", f'printf "GET / HTTP/1.0\\r\\n\\r\\n" | nc -w 10 {name} 443')
        if "Client sent an HTTP request to an HTTPS server" not in answer:
            raise Failed(f"the kubernetes Service did not answer as the apiserver does: {answer[:120]!r}")
        outside = self.in_pod("timeout", "15", "wget", "-q", "-O-", self.outside)  # busybox's own -T crashes it
        return f"{name} is {addresses[0]}; the kubernetes Service answered; {self.outside} answered ({len(outside)} bytes)"

    def metadata(self) -> str:
        """The metadata service hands out every node's userdata, secrets included: pods must not
        reach it (the nodes' firewall)."""
        url = urllib.parse.urlsplit(self.cluster.boot.metadata_url)
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            ipaddress.ip_address(url.hostname)
        except ValueError:
            self.in_pod("nslookup", url.hostname)  # so that a refusal below is the firewall's, not DNS's
        said = self.in_pod("sh", "-c", f"timeout 15 nc -w 5 {url.hostname} {port} </dev/null 2>&1; echo nc exit $?")
        if "nc exit 0" in said:
            raise Failed(f"a pod connected to the metadata service at {url.hostname}:{port}: pods could read every node's secrets")
        if not any(refusal in said for refusal in ("can't connect", "timed out", "nc exit 143")):  # refused or timed out only
            raise Failed(f"could not tell whether pods reach the metadata service: {said.strip()[-150:]!r}")
        return f"pods cannot reach the metadata service ({url.hostname}:{port})"

    def metrics(self) -> str:
        def top() -> str:
            table = self.k("top", "nodes", "--no-headers")
            missing = [n.name for n in self.up if not re.search(rf"^{re.escape(n.name)}\s", table, re.M)]
            if missing:
                raise Failed(f"no metrics yet for {', '.join(missing)}")
            return table
        self.until("kubectl top nodes", top)
        return f"`kubectl top nodes` lists all {len(self.up)} nodes"

    def gvisor(self) -> str:
        if not self.cluster.host.can_lower_oom_score:
            self.until("the gVisor pod's refusal", self.shim_refused)
            raise NotHere(f"host.can_lower_oom_score is false, and containerd-shim-runsc-v1 refused the sandbox as expected"
                          f" ({SHIM_OOM_SCORE}: it sets -999, which needs CAP_SYS_RESOURCE); no gVisor pod can run here")
        self.until("the gVisor pod", lambda: self.phase("smoke-gvisor", "Succeeded"))
        log = self.k("-n", self.namespace, "logs", "smoke-gvisor")
        if GVISOR_SIGNATURE not in log:
            raise Failed(f"the pod ran, but not under gVisor: its kernel log is {log[:120]!r}")
        return "a pod of RuntimeClass gvisor ran under gVisor's kernel"

    def shim_refused(self) -> str:
        events = json.loads(self.k("-n", self.namespace, "get", "events", "--field-selector",
                                   "involvedObject.name=smoke-gvisor,reason=FailedCreatePodSandBox", "-o", "json"))["items"]
        if not any(SHIM_OOM_SCORE in e.get("message", "") for e in events):
            raise Failed(f"no sandbox failure from gVisor's shim yet ({[e.get('message', '')[:100] for e in events]})")
        return "refused"

    # --- helpers

    def apply(self, template: str, **values) -> None:
        text = templates.render(f"manifests/{template}", namespace=self.namespace, image=self.image, **values)
        self.k("apply", "-f", "-", stdin=text)

    def phase(self, pod: str, wanted: str) -> str:
        status = json.loads(self.k("-n", self.namespace, "get", "pod", pod, "-o", "json"))["status"]
        phase = status.get("phase")
        if phase == "Failed":
            raise VentError(f"pod {pod} failed: {json.dumps(status.get('containerStatuses', ''))[:300]}")
        if phase != wanted:
            waiting = [c.get("state", {}) for c in status.get("containerStatuses", [])]
            raise Failed(f"pod {pod} is {phase} {json.dumps(waiting)[:200]}")
        return phase

    def running(self, selector: str) -> str:
        pods = json.loads(self.k("-n", self.namespace, "get", "pods", "-l", selector, "-o", "json"))["items"]
        ready = [p["metadata"]["name"] for p in pods if p["status"].get("phase") == "Running"
                 and all(c.get("ready") for c in p["status"].get("containerStatuses", []))]
        if not ready:
            states = [c.get("state") for p in pods for c in p["status"].get("containerStatuses", [])]
            raise Failed(f"no pod Running and ready ({json.dumps(states)[:200]})")
        return ready[0]

    @staticmethod
    def fetch(url: str) -> str:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.read().decode(errors="replace")
        except OSError as exc:
            raise Failed(f"{url}: {exc}") from None

    def run(self) -> list[Check]:
        checks = (("nodes", self.nodes), ("apiservers", self.apiservers), ("encryption", self.encryption),
                  ("deployment", self.deployment), ("nodeport", self.nodeport), ("from a pod", self.from_pod), ("metadata", self.metadata),
                  ("metrics", self.metrics), ("gvisor", self.gvisor))
        results = []
        try:
            self.apply("smoke/namespace.yaml")
            # The controller manager gives a new namespace its default service account a moment later (later still
            # while a stopped controller's leadership lapses); pods created before that are refused.
            self.until("the namespace's default service account",
                       lambda: self.k("-n", self.namespace, "get", "serviceaccount", "default", "-o", "name"))
            self.apply("smoke/workload.yaml")
            for name, check in checks:
                try:
                    results.append(Check(name, PASSED, check()))
                except NotHere as exc:
                    results.append(Check(name, NOT_HERE, str(exc)))
                except (Failed, VentError) as exc:
                    results.append(Check(name, FAILED, str(exc)))
                self.say(results[-1].line())
        except Failed as exc:
            results.append(Check("set-up", FAILED, str(exc)))
            self.say(results[-1].line())
        finally:
            self.clean_up()
        return results

    def clean_up(self) -> None:
        try:
            self.k("delete", "namespace", self.namespace, "--wait=true", "--ignore-not-found", timeout=180)
        except Failed as exc:
            self.say(f"warning: smoke could not delete namespace {self.namespace}: {exc}")


def report(results: list[Check], as_json: bool) -> str:
    if as_json:
        return json.dumps([asdict(r) for r in results], indent=2)
    counts = {status: sum(r.status == status for r in results) for status in (PASSED, FAILED, NOT_HERE)}
    here = f", {counts[NOT_HERE]} not possible on these machines" if counts[NOT_HERE] else ""
    return f"smoke: {counts[PASSED]} passed, {counts[FAILED]} failed{here}"
