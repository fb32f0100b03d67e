"""The service image: non-root, serves /healthz on its declared port, healthy, read-only."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.image.conftest import Image, Running, run_image, stop


def declared_port(image: Image) -> int:
    """The one port the image EXPOSEs."""
    ports = list(image.config.get("ExposedPorts") or {})
    assert len(ports) == 1, ports
    number, proto = ports[0].split("/")
    assert proto == "tcp"
    return int(number)


@pytest.fixture
def service(service_image: Image, tmp_path: Path) -> Iterator[Running]:
    """The image's entrypoint running exactly as configured, read-only, in its own namespaces."""
    running = run_image(service_image, list(service_image.config["Entrypoint"]), tmp_path)
    try:
        yield running
    finally:
        stop(running)


def test_image_declares_a_numeric_non_root_user(service_image: Image) -> None:
    user, _, group = service_image.user.partition(":")
    assert user.isdigit()
    assert int(user) > 0
    assert group.isdigit()
    assert int(group) > 0


def test_image_runs_its_entrypoint_as_that_user_and_serves_healthz_on_the_declared_port(
    service_image: Image, service: Running
) -> None:
    port = declared_port(service_image)
    assert service.wait_for_http(port, "/healthz") == 200
    status = Path(f"/proc/{service.pid()}/status").read_text()
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    assert set(uid_line.split()[1:]) == {service_image.user.split(":")[0]}
    assert service.http_status(port, "/readyz") == 200  # memory:// by default: ready at once


def test_healthcheck_command_succeeds_while_serving_and_fails_when_stopped(
    service_image: Image, service: Running
) -> None:
    check = service_image.config["Healthcheck"]["Test"]
    assert check[0] == "CMD", "exec form: no shell needed in the image"
    assert service.wait_for_http(declared_port(service_image), "/healthz") == 200
    healthy = service.in_container(*check[1:])
    assert healthy.returncode == 0, healthy.stderr
    # Same check against a port where nothing listens: it must be able to fail.
    failing = service.in_container(
        "/usr/bin/env", f"AGENT_PORT={declared_port(service_image) + 1}", *check[1:]
    )
    assert failing.returncode != 0


def test_service_writes_nothing_outside_tmp(service_image: Image, service: Running) -> None:
    port = declared_port(service_image)
    assert service.wait_for_http(port, "/healthz") == 200
    # Real work, on a read-only root with only /tmp writable.
    turn = service.in_netns(
        "python3",
        "-c",
        "import json, urllib.request as u; r = u.urlopen(u.Request("
        f"'http://127.0.0.1:{port}/v1/chat', data=json.dumps({{'message': 'hi'}}).encode(), "
        "headers={'content-type': 'application/json'}), timeout=10); print(r.status)",
    )
    assert turn.stdout.strip() == "200", turn.stderr
    # The sandbox really is read-only: a write outside /tmp is refused …
    refused = service.in_container("python3", "-c", "open('/app/probe', 'w')")
    assert refused.returncode != 0
    assert "Read-only file system" in refused.stderr
    # … so serving above proves the service needs no write there; /tmp is where it could write.
    assert service.in_container("python3", "-c", "open('/tmp/probe', 'w')").returncode == 0
    stopped = stop(service)
    assert stopped == 0, service.log.read_text()
    assert "Read-only file system" not in service.log.read_text()


def test_service_logs_are_json_lines(service_image: Image, service: Running) -> None:
    assert service.wait_for_http(declared_port(service_image), "/healthz") == 200
    stop(service)
    lines = [line for line in service.log.read_text().splitlines() if line.strip()]
    assert lines
    for line in lines:
        json.loads(line)


def test_the_charts_pod_spec_fits_the_image(service_image: Image) -> None:
    """The chart's command is on the image's PATH and its user is the image's user."""
    manifest = Path(__file__).resolve().parents[2] / "manifests" / "agent" / "deployment.yaml"
    pod = yaml.safe_load(manifest.read_text())["spec"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "agent")
    command = container["command"][0]
    path_dirs = service_image.env["PATH"].split(":")
    assert any((service_image.rootfs / d.lstrip("/") / command).exists() for d in path_dirs)
    assert service_image.user == f"{pod['securityContext']['runAsUser']}:" + str(
        pod["securityContext"]["runAsGroup"]
    )
    port = container["ports"][0]["containerPort"]
    assert port == declared_port(service_image)


@pytest.mark.parametrize("which", ["service_image", "operator_image"])
def test_no_secret_cache_or_build_tool_is_left_in_the_image(
    which: str, request: pytest.FixtureRequest
) -> None:
    image: Image = request.getfixturevalue(which)
    root = image.rootfs
    leftovers = [
        p
        for p in ("run/secrets/ca-bundle", "root/.cache/uv", "root/.cache/pip", "opt/uv")
        if (root / p).exists()
    ]
    assert not leftovers
    # The build's CA bundle (a build secret) must not have been baked into the trust store.
    bundle = (root / "etc/ssl/certs/ca-certificates.crt").read_text()
    for extra in Path("/usr/local/share/ca-certificates").glob("*.crt"):
        body = "".join(extra.read_text().split("-----")[2].split())
        assert body[:64] not in bundle.replace("\n", ""), extra.name
    # Bytecode is compiled at build time, so a read-only root never needs to write any.
    assert list((root / "app" / ".venv" / "lib").glob("python3*/site-packages/*/__pycache__"))


def test_redis_replies_are_parsed_by_hiredis_in_the_image(service_image: Image) -> None:
    # redis-py picks its C parser when `hiredis` imports; `make bench` measured ~20 % less CPU
    # per chat turn with it. A wheel for another Python or platform would silently fall back.
    site = service_image.rootfs / "app" / ".venv" / "lib"
    (version,) = {p.name for p in site.glob("python3.*")}
    modules = list(site.glob(f"{version}/site-packages/hiredis/hiredis.cpython-*.so"))
    assert modules, "hiredis's compiled module is missing from the image"
    tag = version.removeprefix("python").replace(".", "")
    assert all(f"cpython-{tag}-" in m.name for m in modules), modules
