"""The lab's one HTTP service at 169.254.169.254, run inside the lab's namespace:

    /metadata      the asking node's metadata, in Packet's shape (the node is told by the
                   address it asks from, as on Packet)
    /artifacts/... the published artifacts directory
    /mirror/...    the lab's mirror of binaries

and, at 192.0.2.80, one page that stands for the world outside the cluster.

    python -m vent_bake.lab.service WORKDIR

WORKDIR/service.json names the directories and maps each node's addresses to its name;
WORKDIR/metadata/<node>.json is what it answers that node, rewritten by the lab when it
assigns the node's reserved address. Requests are logged to WORKDIR/service.log.
"""

import functools
import http.server
import json
import os
import sys
import threading
import time
from pathlib import Path

PORT = 80


class Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args, workdir: Path, config: dict, **kw):
        self.workdir, self.config = workdir, config
        super().__init__(*args, directory=str(workdir), **kw)

    def translate_path(self, path: str) -> str:
        for prefix in ("artifacts", "mirror"):
            if path.startswith(f"/{prefix}/"):
                self.directory = self.config[prefix]
                return super().translate_path(path[len(prefix) + 1:])
        return str(self.workdir / "no-such-file")

    def do_GET(self):
        if self.path.split("?")[0] == "/metadata":
            node = self.config["nodes"].get(self.client_address[0])
            document = self.workdir / "metadata" / f"{node}.json"
            if node is None or not document.is_file():
                self.send_error(404, f"no device has the address {self.client_address[0]}")
                return
            body = document.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def log_message(self, fmt, *args):
        with open(self.workdir / "service.log", "a") as log:
            log.write(f"{time.strftime('%H:%M:%S')} {self.client_address[0]} {fmt % args}\n")


class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 128
    daemon_threads = True


class Outside(http.server.BaseHTTPRequestHandler):
    PAGE = b"outside the cluster\n"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(self.PAGE)))
        self.end_headers()
        self.wfile.write(self.PAGE)

    def log_message(self, fmt, *args):
        pass


def main(workdir: Path) -> None:
    config = json.loads((workdir / "service.json").read_text())
    handler = functools.partial(Handler, workdir=workdir, config=config)
    outside = Server((config["outside"], PORT), Outside)
    threading.Thread(target=outside.serve_forever, daemon=True).start()
    with Server((config["address"], PORT), handler) as server:
        (workdir / "service.ready").write_text(str(os.getpid()))
        server.serve_forever()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
