"""The `vent-bake` command line: argument handling and printing only; the work is elsewhere.

Each command imports what it needs when it runs: `--help`, `--version` and `render` must not
pay for the provider's HTTP stack, the lab or the checks of `verify`.
"""

import sys
from pathlib import Path

import click

from vent_bake import __version__
from vent_bake.errors import VentError

cluster_option = click.option(
    "-c", "--cluster", "cluster_file", type=click.Path(path_type=Path), default=Path("cluster.yaml"),
    show_default=True, help="The cluster file.",
)
out_option = click.option("--out", type=click.Path(path_type=Path), help="Artifacts directory [default: artifacts/ beside the cluster file].")
state_option = click.option("--state", type=click.Path(path_type=Path), help="State directory [default: .vent/ beside the cluster file].")


class Group(click.Group):
    """Report VentError as one line on stderr with its exit status, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except VentError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)


def say(message: str) -> None:
    """Notes and warnings: stderr, so that what a command prints on stdout stays its output."""
    click.echo(message, err=True)


def _opened(cluster_file: Path, out: Path | None, state: Path | None, write: bool, replacing=()):
    from vent_bake import workspace

    return workspace.opened(workspace.Paths.resolve(cluster_file, out, state), write=write, say=say, replacing=replacing)


@click.group(cls=Group)
@click.version_option(__version__, prog_name="vent-bake")
def main():
    """Render a Kubernetes-the-hard-way bootstrap for bare-metal spot machines, and launch it."""


def example_options(workers: int, name: str):
    """The options of the commands that write an example cluster file."""
    options = (
        click.argument("directory", type=click.Path(path_type=Path), default=Path(".")),
        click.option("--controllers", type=click.IntRange(1, 99), default=3, show_default=True),
        click.option("--workers", type=click.IntRange(0, 100_000), default=workers, show_default=True),
        click.option("--name", default=name, show_default=True, help="Cluster name."),
        click.option("--force", is_flag=True, help="Overwrite an existing cluster file."),
    )

    def wrap(command):
        for option in reversed(options):
            command = option(command)
        return command
    return wrap


def _refuse_overwrite(directory: Path, force: bool) -> None:
    if (directory / "cluster.yaml").exists() and not force:
        raise VentError(f"{directory / 'cluster.yaml'} already exists; pass --force to overwrite it")


def _example(directory: Path, controllers: int, workers: int, name: str, force: bool) -> str:
    """The example cluster file's text, checked; refuses to overwrite one without --force."""
    from vent_bake import config, example

    _refuse_overwrite(directory, force)
    try:
        text = example.cluster_yaml(name, controllers, workers)
    except ValueError as exc:
        raise VentError(f"init: {exc}") from None
    config.parse(text, "--name")  # the example must itself be valid (a bad --name fails here)
    return text


@main.command()
@example_options(workers=2, name="vent")
def init(directory: Path, controllers: int, workers: int, name: str, force: bool):
    """Write DIRECTORY/cluster.yaml, a commented example that renders as it is."""
    from vent_bake import fsutil

    text = _example(directory, controllers, workers, name, force)
    directory.mkdir(parents=True, exist_ok=True)
    fsutil.write_file(directory / "cluster.yaml", text.encode(), 0o644)
    click.echo(f"wrote {directory / 'cluster.yaml'} ({controllers} controllers, {workers} workers)")


@main.command()
@cluster_option
@out_option
@state_option
@click.option("--reissue", multiple=True, metavar="NAME",
              help="Replace this certificate and its key (ca, etcd-ca, service-accounts, admin, nodes/HOST, ...), and"
                   " everything it signed; repeatable. Needed to replace a CA or a damaged file.")
def render(cluster_file: Path, out: Path | None, state: Path | None, reissue: tuple[str, ...]):
    """Render every certificate, kubeconfig, config and userdata into the artifacts directory."""
    from vent_bake import config, workspace
    from vent_bake.bundle import USERDATA_BUDGET

    paths = workspace.Paths.resolve(cluster_file, out, state)
    replacing = workspace.reissued_files(config.load(paths.cluster), reissue) if reissue else []
    with workspace.opened(paths, write=True, say=say, replacing=replacing) as ws:
        result = workspace.bake(ws, reissue)
    for warning in result.warnings:
        say(f"warning: {warning}")
    _report("issued", result.issued)
    _report("dropped (no longer in the cluster file)", result.dropped)
    for host, size in result.sizes.items():
        role = result.cluster.role(result.cluster.node(host))
        budget = USERDATA_BUDGET[role]
        over = f"  OVER its {budget // 1024} KiB budget" if size > budget else ""
        click.echo(f"  {host:<24} {role:<10} userdata {size / 1024:6.1f} KiB{over}")
    status = "written" if result.artifacts_changed else "unchanged"
    click.echo(f"artifacts {status}: {paths.out} ({len(result.cluster.nodes)} nodes)")


def _report(what: str, names: list[str], limit: int = 20):
    if not names:
        return
    if len(names) > limit:
        click.echo(f"{what}: {len(names)} ({', '.join(names[:limit])}, ...)")
    else:
        click.echo(f"{what}: {', '.join(names)}")


@main.command("userdata")
@click.argument("node")
@cluster_option
@out_option
@state_option
@click.option("--reveal", is_flag=True, help="Fill in the secrets: the exact userdata that boots the node.")
def userdata_command(node: str, cluster_file: Path, out: Path | None, state: Path | None, reveal: bool):
    """Print NODE's userdata as reviewed in the artifacts, or, with --reveal, as it boots.

    --reveal first checks the artifacts against their MANIFEST and the node's role."""
    with _opened(cluster_file, out, state, write=False) as ws:
        text = _node_userdata(ws, node, reveal)
    click.echo(text, nl=False)


def _node_userdata(ws, node: str, reveal: bool) -> str:
    """NODE's userdata as reviewed in the artifacts, or (reveal) as it boots: every marker filled
    in, once the artifacts match their MANIFEST and the node's role may hold what they name."""
    from vent_bake import artifacts, manifest

    if node not in {n.name for n in ws.cluster.nodes}:
        raise VentError(f"{ws.paths.cluster}: no node {node!r} in the cluster file")
    if reveal:
        tree = artifacts.reviewed(ws.paths.out, manifest.inputs_digest(ws.text, ws.state, ws.cluster))
        return artifacts.revealed(tree, ws.cluster, ws.state, node)
    path = ws.paths.out / "nodes" / node / "userdata"
    try:
        return path.read_text()
    except FileNotFoundError:
        raise VentError(f"{ws.paths.out}: no userdata for node {node!r}; run `vent-bake render` first") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise VentError(f"{path}: cannot read it ({getattr(exc, 'strerror', None) or exc}); run `vent-bake render`") from None


@main.command()
@cluster_option
@out_option
@state_option
@click.option("--days", type=click.IntRange(0), default=30, show_default=True, help="Warn of certificates expiring within this many days.")
@click.option("--json", "as_json", is_flag=True, help="Findings as JSON.")
def verify(cluster_file: Path, out: Path | None, state: Path | None, days: int, as_json: bool):
    """Cross-check the rendered bundle (artifacts and state) before launching it."""
    from vent_bake import verify as checks

    with _opened(cluster_file, out, state, write=False) as ws:
        findings = checks.run(checks.inspect(ws, days))
    click.echo(checks.report(findings, as_json))
    sys.exit(1 if any(f.level == "error" for f in findings) else 0)


def _provider(ws):
    import os

    from vent_bake import launch

    return launch.provider_for(ws.cluster, os.environ)


@main.command()
@cluster_option
@state_option
def reserve(cluster_file: Path, state: Path | None):
    """Reserve one public IPv4 address per node in the project; idempotent."""
    from vent_bake import launch

    with _opened(cluster_file, None, state, write=True) as ws:
        made = launch.reserve(ws.cluster, ws.state, _provider(ws), click.echo)
    click.echo(f"{len(made)} addresses reserved, {len(ws.cluster.nodes) - len(made)} already held; now run `vent-bake render`")


@main.command()
@cluster_option
def prices(cluster_file: Path):
    """The spot price of each role's plan in every metro, against the configured maximum."""
    with _opened(cluster_file, None, None, write=False) as ws:
        cluster, provider = ws.cluster, _provider(ws)
    for role in ("controllers", "workers"):
        settings = getattr(cluster.provider.packet, role)
        quotes = provider.spot_prices(settings.plan)
        click.echo(f"{role}: {settings.plan}" + ("" if settings.spot else " (on demand; spot is off for this role)"))
        for metro, price in sorted(quotes.items(), key=lambda kv: kv[1]):
            under = settings.max_price is not None and price <= settings.max_price
            mark = "  under max" if under else ""
            here = "  <- configured metro" if metro == cluster.provider.packet.metro else ""
            click.echo(f"  {metro:<4} {price:8.4f} USD/h{mark}{here}")


@main.command("launch")
@cluster_option
@out_option
@state_option
@click.option("--yes", is_flag=True, help="Do not ask before creating machines (for CI).")
@click.option("--max-price", type=click.FloatRange(min=0, min_open=True), help="Spot bid for roles on spot, USD per hour.")
@click.option("--concurrency", type=click.IntRange(1, 64), default=16, show_default=True)
@click.option("--timeout", type=click.FloatRange(min=1), default=1800, show_default=True, help="Seconds to wait for every device.")
@click.option("--poll", type=click.FloatRange(min=0.05), default=5, show_default=True, help="Seconds between status checks.")
def launch_command(cluster_file, out, state, yes, max_price, concurrency, timeout, poll):
    """Create every missing device with its reviewed userdata, assign its address, wait for active."""
    from vent_bake import launch

    with _opened(cluster_file, out, state, write=False) as ws:
        provider = _provider(ws)
        userdata = launch.check_launchable(ws, provider)
        cluster = ws.cluster
        if not yes:
            if not sys.stdin.isatty():
                raise VentError("launch creates billable machines: pass --yes to confirm without a terminal")
            click.confirm(f"Launch {len(cluster.nodes)} nodes of {cluster.name} in {cluster.provider.packet.metro}?", abort=True)
        options = launch.Options(concurrency=concurrency, max_price=max_price, timeout=timeout, poll=poll)
        machines = launch.Launch(cluster, ws.state, provider, userdata, options, click.echo).run()
        click.echo(launch.format_table(launch.table(cluster, ws.state, machines)))
        click.echo(f"admin kubeconfig: {launch.admin_kubeconfig(ws.paths)}")


@main.command()
@cluster_option
@state_option
@click.option("--json", "as_json", is_flag=True)
def status(cluster_file, state, as_json):
    """Each node's device, state, address and price."""
    import json

    from vent_bake import launch

    with _opened(cluster_file, None, state, write=False) as ws:
        rows = launch.status(ws.cluster, ws.state, _provider(ws))
    click.echo(json.dumps(rows, indent=2) if as_json else launch.format_table(rows))


@main.command()
@cluster_option
@state_option
@click.option("--yes", is_flag=True, help="Do not ask.")
def destroy(cluster_file, state, yes):
    """Delete this cluster's devices and address reservations (found by tag, nothing else)."""
    from vent_bake import launch

    with _opened(cluster_file, None, state, write=True) as ws:
        if not yes:
            if not sys.stdin.isatty():
                raise VentError("destroy deletes machines: pass --yes to confirm without a terminal")
            click.confirm(f"Delete every device and address of {ws.cluster.name}?", abort=True)
        devices, addresses = launch.destroy(ws.cluster, ws.state, _provider(ws), click.echo)
    click.echo(f"deleted {devices} devices and {addresses} address reservations")


@main.command()
@cluster_option
@state_option
@click.option("--kubectl", default="kubectl", show_default=True, help="The kubectl to run.")
@click.option("--outside", default="http://example.com/", show_default=True, help="A URL outside the cluster that pods must reach.")
@click.option("--timeout", type=click.FloatRange(min=1), default=300, show_default=True, help="Seconds each check may wait.")
@click.option("--except", "down", multiple=True, metavar="NODE", help="A node known to be down, left out of the checks; repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Results as JSON.")
def smoke(cluster_file, state, kubectl, outside, timeout, down, as_json):
    """Judge the live cluster with the admin kubeconfig: nodes, API, encryption, workloads,
    services, DNS, metrics, gVisor. Leaves nothing behind; exit 1 if any check fails."""
    from vent_bake import render, smoke as checks
    from vent_bake.state import ADMIN_KUBECONFIG

    with _opened(cluster_file, None, state, write=False) as ws:
        kubeconfig = ws.paths.state / ADMIN_KUBECONFIG
        if not kubeconfig.is_file():
            raise VentError(f"{kubeconfig}: no admin kubeconfig; run `vent-bake render` first")
        run = checks.Smoke(ws.cluster, render.addresses(ws.cluster, ws.state), kubeconfig, kubectl, outside, timeout,
                           (lambda _: None) if as_json else click.echo, down)
        results = run.run()
    click.echo(checks.report(results, as_json))
    sys.exit(0 if all(r.passed for r in results) else 1)


@main.command("lock")
@cluster_option
@click.option("--kubernetes", "version", help="Kubernetes version to pin, e.g. v1.36.1 [default: the cluster file's].")
@click.option("--from", "source", help="Fetch the checksum files from this mirror of the official hosts (<URL>/<host>/<path>).")
def lock_command(cluster_file: Path, version: str | None, source: str | None):
    """Pin a Kubernetes version's binaries from the published checksum files (online).

    Writes binaries.lock.yaml beside the cluster file; review it like code."""
    from vent_bake import lock

    target, notes = lock.pin(cluster_file, version, source)
    for note in notes:
        click.echo(f"note: {note}")
    click.echo(f"pinned {target[0]} in {target[1]}; now run `vent-bake render`")


@main.command()
def schema():
    """Print the JSON Schema of the cluster file."""
    import json

    from vent_bake import config

    click.echo(json.dumps(config.schema(), indent=2))


@main.group(cls=Group)
def image():
    """Node images: the OS and a role's verified binaries, baked once (root)."""


@image.command("build")
@cluster_option
@click.option("--role", type=click.Choice(["controller", "worker", "both"]), default="both", show_default=True)
@click.option("--from", "source", help="Fetch the binaries from this mirror of the official hosts (<URL>/<host>/<path>).")
def image_build(cluster_file, role, source):
    """Build images/<role>-<kubernetes version>/ beside the cluster file: a disk image, the kernel,
    initrd and root filesystem for network boot with their iPXE script, and a manifest."""
    from vent_bake.image import build

    for each in ("controller", "worker") if role == "both" else (role,):
        out = build.build(cluster_file, each, source, click.echo)
        click.echo(f"wrote {out}")


@main.command()
@click.argument("node")
@cluster_option
@out_option
@state_option
@click.option("--output", type=click.Path(path_type=Path), help="The seed image [default: seeds/NODE.iso beside the cluster file].")
@click.option("--network-config", "network", type=click.Path(path_type=Path),
              help="cloud-init network config (version 1 or 2) to put in the seed [default: none, cloud-init's fallback: DHCP].")
def seed(node, cluster_file, out, state, output, network):
    """Write NODE's NoCloud seed (a `cidata` ISO 9660 image: user-data, meta-data and any
    network-config), so that it boots on any hypervisor or machine from a node image."""
    from vent_bake import seed as seeds

    network_config = seeds.network_config(network) if network else None
    with _opened(cluster_file, out, state, write=False) as ws:
        userdata = _node_userdata(ws, node, reveal=True)
        target = output or seeds.default_path(ws.paths.cluster, node)
        seeds.write(target, userdata, node, network_config)
    click.echo(f"wrote {target} (it holds the node's secrets: keep it as you keep .vent/)")


@main.group(cls=Group)
def lab():
    """Boot the rendered nodes on this machine, under real systemd and cloud-init (root)."""


@lab.command("build")
def lab_build():
    """Build every program the lab runs from its Go module, at the lock's versions (cached)."""
    from vent_bake.lab import build

    for binary, (path, source) in build.all_binaries(click.echo).items():
        click.echo(f"{binary:<26} {source}  {path}")


@lab.command("init")
@example_options(workers=2, name="lab")
@click.option("--official", is_flag=True, help="Keep the official binaries (`lab up` fetches them; needs internet).")
def lab_init(directory: Path, controllers: int, workers: int, name: str, force: bool, official: bool):
    """Write a cluster file for the lab, and a lab lock and mirror of what this machine builds."""
    from vent_bake.lab import mirror

    _refuse_overwrite(directory, force)
    for path in mirror.init(directory, controllers, workers, name, official, click.echo):
        click.echo(f"wrote {path}")
    click.echo(f"now run `vent-bake render -c {directory / 'cluster.yaml'}`, then `vent-bake lab up -c {directory / 'cluster.yaml'}`")


def _lab(cluster_file: Path, out: Path | None, state: Path | None):
    from vent_bake import workspace
    from vent_bake.lab import lab as steps

    return steps, steps.Lab.load(workspace.Paths.resolve(cluster_file, out, state), say)


@lab.command("up")
@click.argument("nodes", nargs=-1)
@cluster_option
@out_option
@state_option
@click.option("--timeout", type=click.FloatRange(min=1), default=600, show_default=True, help="Seconds to wait for cloud-init.")
@click.option("--from", "source", help="Fill the lab's mirror from this mirror of the official hosts (<URL>/<host>/<path>).")
def lab_up(nodes, cluster_file, out, state, timeout, source):
    """Boot every node that is not running (or fresh NODES) and wait until cloud-init is done."""
    steps, the_lab = _lab(cluster_file, out, state)
    steps.up(the_lab, nodes, click.echo, timeout, source)
    _lab_report(steps, the_lab)


def _lab_report(steps, the_lab):
    from vent_bake import launch

    rows, sources = steps.status(the_lab)
    click.echo(launch.format_table(rows))
    for component, source in sources.items():
        click.echo(f"{component}: {source}")


@lab.command("status")
@cluster_option
@out_option
@state_option
def lab_status(cluster_file, out, state):
    """Each node's state, cloud-init result and boot log, and what the lab does not exercise."""
    _lab_report(*_lab(cluster_file, out, state))


@lab.command("down")
@click.argument("nodes", nargs=-1)
@cluster_option
@out_option
@state_option
def lab_down(nodes, cluster_file, out, state):
    """Stop and discard NODES, or the whole lab: nodes, namespaces, service, disks."""
    steps, the_lab = _lab(cluster_file, out, state)
    steps.down(the_lab, nodes, click.echo)


@lab.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("node")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@cluster_option
@out_option
@state_option
def lab_exec(node, command, cluster_file, out, state):
    """Run COMMAND inside NODE (put it after --)."""
    steps, the_lab = _lab(cluster_file, out, state)
    sys.exit(steps.exec_in(the_lab, node, list(command)))
