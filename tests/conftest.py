"""Shared test helpers: prerequisites that fail under CI and skip elsewhere."""

from __future__ import annotations

import os
import shutil
import socket

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require(condition: bool, what: str) -> None:
    """Fail under CI (a missing prerequisite is a failure there), skip on a dev machine."""
    if condition:
        return
    message = f"prerequisite missing: {what} (run `make test` to install it)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)  # not under CI: CI fails above


def require_binary(name: str) -> str:
    """Path of an executable on PATH, or fail/skip as `require` does."""
    path = shutil.which(name)
    require(path is not None, f"`{name}` on PATH")
    assert path is not None
    return path


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
