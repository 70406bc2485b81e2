"""What the tests and benchmarks share: finding the real tools they run (skip where one is
missing, but never in CI, where `make test` installs them and a skip would hide a missing
install step), and a static HTTP server on loopback."""

import functools
import http.server
import os
import shutil
import sys
import threading
from pathlib import Path

import pytest

# Where the running interpreter's packages put their commands (a venv's bin/): `make test`
# installs the test extra's tools there, and that directory need not be on PATH.
SCRIPTS = Path(sys.executable).parent


def find(tool: str) -> str | None:
    """A tool's path: as given if it is a path, else beside the interpreter, else on PATH."""
    if "/" in tool:
        return tool if os.path.exists(tool) else None
    beside = SCRIPTS / tool
    return str(beside) if os.access(beside, os.X_OK) else shutil.which(tool)


def need(*tools: str) -> list[str]:
    """The tools' paths; a test that lacks one skips, or fails under CI."""
    found = [find(t) for t in tools]
    missing = [t for t, path in zip(tools, found) if path is None]
    if missing:
        _lacking(f"not installed: {', '.join(missing)} (`make test` installs them)")
    return found


def need_built(*binaries: str) -> list[str]:
    """Programs the lab builds from their Go modules (`vent-bake lab build`, which `make test`
    runs first): their paths; a test that lacks one skips, or fails under CI."""
    from vent_bake.lab import build

    found = [build.built(b) for b in binaries]
    missing = [b for b, path in zip(binaries, found) if path is None]
    if missing:
        _lacking(f"not built: {', '.join(missing)} (`vent-bake lab build` builds them; `make test` runs it)")
    return [str(p) for p in found]


def _lacking(message: str) -> None:
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
