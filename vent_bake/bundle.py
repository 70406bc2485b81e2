"""What a render produces: files with their modes, grouped per node, and the artifacts tree."""

from dataclasses import dataclass

from vent_bake.config import Node

# The most a node's revealed userdata should weigh, in bytes (userdata.py says what it holds).
USERDATA_BUDGET = {"controller": 16 * 1024, "worker": 8 * 1024}


@dataclass(frozen=True)
class File:
    content: str
    mode: int = 0o644
    # In the node's userdata itself rather than on its fetch list: a secret, or a file the node
    # needs before it can fetch (decided where the file is declared: components, credentials).
    carried: bool = False


@dataclass(frozen=True)
class NodeFiles:
    node: Node
    files: dict[str, File]  # absolute path on the node -> file
    userdata: str  # the reviewed cloud-config: secrets as markers
    fetch_list: str  # "sha256 mode path" of every file the node fetches (userdata.py)


@dataclass(frozen=True)
class Bundle:
    shared: dict[str, File]  # path in the artifacts tree -> file
    nodes: dict[str, NodeFiles]

    def tree(self) -> dict[str, bytes]:
        """The artifacts directory: shared files, and for each node its userdata and, under
        nodes/<host>/files/, every file the node gets, as plain text, and the fetch list that
        pins the ones it fetches."""
        out = {path: f.content.encode() for path, f in self.shared.items()}
        for host, nf in self.nodes.items():
            out[f"nodes/{host}/userdata"] = nf.userdata.encode()
            out[f"nodes/{host}/fetch.list"] = nf.fetch_list.encode()
            for path, f in nf.files.items():
                out[f"nodes/{host}/files{path}"] = f.content.encode()
        return out
