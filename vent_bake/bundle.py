"""What a render produces: files with their modes, grouped per node, and the artifacts tree."""

from dataclasses import dataclass, field

from vent_bake.config import Node


@dataclass(frozen=True)
class File:
    content: str
    mode: int = 0o644


@dataclass
class NodeBundle:
    node: Node
    role: str
    files: dict[str, File] = field(default_factory=dict)  # absolute path on the node -> file
    userdata: str = ""  # the reviewed cloud-config: secrets as markers
    fetch_list: str = ""  # "sha256 mode path" of every file the node fetches (userdata.py)


@dataclass
class Bundle:
    shared: dict[str, File]  # path in the artifacts tree -> file
    nodes: dict[str, NodeBundle]

    def tree(self) -> dict[str, bytes]:
        """The artifacts directory: shared files, and for each node its userdata and, under
        nodes/<host>/files/, every file the node gets, as plain text, and the fetch list that
        pins the ones it fetches."""
        out = {path: f.content.encode() for path, f in self.shared.items()}
        for host, nb in self.nodes.items():
            out[f"nodes/{host}/userdata"] = nb.userdata.encode()
            out[f"nodes/{host}/fetch.list"] = nb.fetch_list.encode()
            for path, f in nb.files.items():
                out[f"nodes/{host}/files{path}"] = f.content.encode()
        return out
