"""image tier: the images `make image` built, run the way a kubelet would run them.

No container engine runs here, so a container is assembled from parts: buildah mounts the
image's root filesystem, `unshare` gives it its own mount and network namespaces, the root is
bind-mounted read-only with a tmpfs on /tmp (as the chart's readOnlyRootFilesystem + emptyDir),
and `chroot --userspec` starts the image's entrypoint as the image's user with the image's
environment. The image's own network namespace lets it listen on its declared port untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require, require_binary

CACHE_DIR = Path(os.environ.get("CACHE_DIR", Path.home() / ".cache" / "moorage"))
IMAGE_TAG = os.environ.get("IMAGE_TAG", "dev")
SERVICE_IMAGE = f"{os.environ.get('SERVICE_IMAGE', 'localhost/moorage/agent-service')}:{IMAGE_TAG}"
OPERATOR_IMAGE = (
    f"{os.environ.get('OPERATOR_IMAGE', 'localhost/moorage/agent-operator')}:{IMAGE_TAG}"
)
# The same storage `make image` writes to (hack/make/image.mk exports BUILDAH_FLAGS).
BUILDAH_FLAGS = shlex.split(
    os.environ.get(
        "BUILDAH_FLAGS",
        f"--storage-driver vfs --root {CACHE_DIR}/buildah/storage "
        f"--runroot {CACHE_DIR}/buildah/run",
    )
)

# Runs as root inside fresh mount + network namespaces: $1 is the rootfs, $2 the user, rest argv.
_SANDBOX = """
set -eu
root=$1 user=$2; shift 2
ip link set lo up
# Mount points for extra read-only binds ("src:dst ..."), made in the throwaway container copy.
for bind in ${SANDBOX_BINDS:-}; do mkdir -p "$root${bind#*:}"; done
mount --bind "$root" "$root"
mount -o remount,bind,ro "$root"
mount -t tmpfs -o size=64m,mode=1777 tmpfs "$root/tmp"
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
for bind in ${SANDBOX_BINDS:-}; do
  mount --bind "${bind%%:*}" "$root${bind#*:}"
  mount -o remount,bind,ro "$root${bind#*:}"
done
echo ready > "$SANDBOX_READY"
exec chroot --userspec="$user" "$root" "$@"
"""


def buildah(*args: str) -> str:
    """Run buildah against the project's image storage; stdout."""
    return subprocess.run(
        ["buildah", *BUILDAH_FLAGS, *args], check=True, capture_output=True, text=True, timeout=300
    ).stdout


@dataclass
class Image:
    """An image's config and its root filesystem, mounted from a buildah working container."""

    name: str
    config: dict[str, Any]
    rootfs: Path

    @property
    def user(self) -> str:
        return str(self.config["User"])

    @property
    def env(self) -> dict[str, str]:
        return dict(item.split("=", 1) for item in self.config.get("Env") or [])

    def argv(self, command: list[str], extra_env: dict[str, str] | None = None) -> list[str]:
        """An argv that runs command in the image's environment (plus extra_env) and workdir."""
        env = [f"{k}={v}" for k, v in {**self.env, **(extra_env or {})}.items()]
        workdir = self.config.get("WorkingDir") or "/"
        return ["/usr/bin/env", "-i", f"--chdir={workdir}", *env, *command]


def _image(name: str) -> Iterator[Image]:
    require_binary("buildah")
    for tool in ("unshare", "nsenter", "chroot", "ip"):
        require_binary(tool)
    present = subprocess.run(
        ["buildah", *BUILDAH_FLAGS, "inspect", "--type", "image", name],
        capture_output=True,
        text=True,
        check=False,
    )
    require(present.returncode == 0, f"image {name} (make image)")
    config = json.loads(present.stdout)["Docker"]["config"]
    container = f"moorage-image-test-{uuid.uuid4().hex[:8]}"
    buildah("from", "--pull=never", "--name", container, name)
    try:
        rootfs = Path(buildah("mount", container).strip())
        yield Image(name=name, config=config, rootfs=rootfs)
    finally:
        subprocess.run(
            ["buildah", *BUILDAH_FLAGS, "rm", container], capture_output=True, check=False
        )


@pytest.fixture(scope="session")
def service_image() -> Iterator[Image]:
    """The service image, mounted."""
    yield from _image(SERVICE_IMAGE)


@pytest.fixture(scope="session")
def operator_image() -> Iterator[Image]:
    """The operator image, mounted."""
    yield from _image(OPERATOR_IMAGE)


@dataclass
class Running:
    """A process started from an image in its own namespaces."""

    image: Image
    proc: subprocess.Popen[bytes]
    log: Path

    def in_netns(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run a host command inside the container's network namespace."""
        return subprocess.run(
            ["nsenter", f"--target={self.pid()}", "--net", "--", *argv],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )

    def in_container(self, *command: str) -> subprocess.CompletedProcess[str]:
        """Run a command inside the container (its namespaces, root, user and environment)."""
        return subprocess.run(
            [
                "nsenter", f"--target={self.pid()}", "--net", "--mount", "--",
                "chroot", f"--userspec={self.image.user}", str(self.image.rootfs),
                *self.image.argv(list(command)),
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )  # fmt: skip

    def pid(self) -> int:
        """Pid of the image's process (the child of `unshare --fork`)."""
        children = _children(self.proc.pid)
        assert children, f"the container process is gone:\n{self.log.read_text()}"
        return children[0]

    def http_status(self, port: int, path: str) -> int | None:
        """Status of GET path on 127.0.0.1:port inside the container's netns; None if refused."""
        probe = (
            "import sys, urllib.request, urllib.error\n"
            "try:\n"
            f"    r = urllib.request.urlopen('http://127.0.0.1:{port}{path}', timeout=3)\n"
            "    print(r.status)\n"
            "except urllib.error.HTTPError as e:\n"
            "    print(e.code)\n"
            "except OSError:\n"
            "    print('refused')\n"
        )
        out = self.in_netns(sys.executable, "-c", probe).stdout.strip()
        return None if out in ("refused", "") else int(out)

    def wait_for_http(self, port: int, path: str, timeout: float = 60) -> int:
        """First status the container answers with at path; fails if it never listens."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"container exited {self.proc.returncode}:\n{self.log.read_text()}")
            status = self.http_status(port, path)
            if status is not None:
                return status
            time.sleep(0.3)
        pytest.fail(f"nothing listened on {port} within {timeout}s:\n{self.log.read_text()}")


def _children(pid: int) -> list[int]:
    """Direct children of pid, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found.append(int(entry.name))
    return sorted(found)


def run_image(
    image: Image,
    command: list[str],
    tmp_path: Path,
    *,
    user: str | None = None,
    env: dict[str, str] | None = None,
    binds: dict[Path, str] | None = None,
) -> Running:
    """Start command from the image read-only, as the image's user unless `user` says otherwise,
    with extra `env` and read-only `binds` (host dir → container path); returns once it execs."""
    log = tmp_path / "container.log"
    ready = tmp_path / "sandbox-ready"
    sandbox_env = {
        "PATH": os.environ["PATH"],
        "SANDBOX_READY": str(ready),
        "SANDBOX_BINDS": " ".join(f"{src}:{dst}" for src, dst in (binds or {}).items()),
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["unshare", "--mount", "--net", "--fork", "--", "sh", "-c", _SANDBOX, "sandbox",
             str(image.rootfs), user or image.user, *image.argv(command, env)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=sandbox_env,
        )  # fmt: skip
    deadline = time.monotonic() + 30
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"sandbox did not start:\n{log.read_text()}")
        time.sleep(0.05)
    return Running(image=image, proc=proc, log=log)


def stop(running: Running) -> int:
    """SIGTERM the container's process (as the kubelet does) and return its exit code."""
    with contextlib.suppress(AssertionError, ProcessLookupError):
        os.kill(running.pid(), signal.SIGTERM)
    try:
        return running.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        running.proc.kill()
        return running.proc.wait()
