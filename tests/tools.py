"""What the tests and benchmarks share: finding the real tools they run (skip where one is
missing, but never in CI, where `make test` installs them and a skip would hide a missing
install step), and a static HTTP server on loopback."""

import functools
import http.server
import os
import shutil
import threading
from pathlib import Path

import pytest


def need(*tools: str) -> None:
    missing = [t for t in tools if not shutil.which(t) and not os.path.exists(t)]
    if not missing:
        return
    message = f"not installed: {', '.join(missing)} (`make test` installs them)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class _Server(http.server.ThreadingHTTPServer):
    request_queue_size = 128  # the default 5 drops concurrent connects, costing a 1 s SYN retry each


def serve(directory: Path):
    """An HTTP server on 127.0.0.1 serving directory; yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


if __name__ == "__main__":
    # `python tests/tools.py DIR`: serve DIR from a process of its own, as a web server would
    # (benchmarks keep it out of the measured process); prints the URL, serves until killed.
    import sys

    for url in serve(Path(sys.argv[1])):
        print(url, flush=True)
        threading.Event().wait()
