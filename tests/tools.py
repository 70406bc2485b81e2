"""Finding the real tools the tests run: skip where one is missing, but never in CI, where
`make test` installs them and a skip would hide a missing install step."""

import os
import shutil

import pytest


def need(*tools: str) -> None:
    missing = [t for t in tools if not shutil.which(t) and not os.path.exists(t)]
    if not missing:
        return
    message = f"not installed: {', '.join(missing)} (`make test` installs them)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)
