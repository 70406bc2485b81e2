"""A node's NoCloud seed: a `cidata` ISO 9660 image holding its user-data and meta-data, and
the operator's network-config if one is given, which cloud-init finds on any hypervisor or
machine (a second disk or a CD). With a node image (vent-bake image build), it is all a
machine needs to become the node.

Without a network-config, cloud-init brings up its fallback: DHCP on the first connected
interface. A network-config cannot say that for a machine whose interface names are unknown:
Debian 12's cloud-init renders for ifupdown, which takes no wildcard match (`name: e*`) and
leaves such an interface down (found booting the disk image under QEMU).

The user-data is the node's revealed userdata: the seed holds the node's secrets.
"""

import io
from pathlib import Path

import yaml

from vent_bake import fsutil
from vent_bake.errors import VentError

ISO_NAMES = {"user-data": "USERDATA.;1", "meta-data": "METADATA.;1", "network-config": "NETWORKC.;1"}


def network_config(path: Path) -> bytes:
    """The operator's network-config, checked to be one cloud-init reads (version 1 or 2)."""
    try:
        data = path.read_bytes()
        parsed = yaml.safe_load(data)
    except (OSError, yaml.YAMLError) as exc:
        raise VentError(f"{path}: cannot read it as a network-config ({exc.__class__.__name__}); give cloud-init's"
                        " network config format, version 1 or 2") from None
    body = parsed.get("network", parsed) if isinstance(parsed, dict) else None
    if not isinstance(body, dict) or body.get("version") not in (1, 2):
        raise VentError(f"{path}: not a network-config: it needs `version: 1` or `version: 2` (cloud-init's network config format)")
    return data


def contents(userdata: str, node: str, network: bytes | None = None) -> dict[str, bytes]:
    meta = {"instance-id": f"vent-{node}", "local-hostname": node}
    files = {"user-data": userdata.encode(), "meta-data": yaml.safe_dump(meta).encode()}
    return files | ({"network-config": network} if network is not None else {})


def default_path(cluster_file: Path, node: str) -> Path:
    """seeds/NODE.iso beside the cluster file, in a directory git is told to ignore: a seed
    holds the node's secrets and must not be committed with the cluster file."""
    directory = cluster_file.parent / "seeds"
    directory.mkdir(mode=0o700, exist_ok=True)
    ignore = directory / fsutil.IGNORE_ALL
    if not ignore.exists():
        fsutil.write_file(ignore, b"*\n", 0o600)
    return directory / f"{node}.iso"


def write(target: Path, userdata: str, node: str, network: bytes | None = None) -> None:
    import pycdlib  # only this command writes ISO 9660

    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, rock_ridge="1.09", joliet=3, vol_ident="cidata")
    for name, data in contents(userdata, node, network).items():
        iso.add_fp(io.BytesIO(data), len(data), f"/{ISO_NAMES[name]}", rr_name=name, joliet_path=f"/{name}")
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    fsutil.write_file(target, out.getvalue(), 0o600)
