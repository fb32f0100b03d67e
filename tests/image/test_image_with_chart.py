"""The image run the way the chart's pod spec says: the kubelet's part, played by hand.

Command, environment (ConfigMap + env), user, read-only root with /tmp, the Secret mounted as
files at the chart's path, and the probes on the chart's port and paths, all taken from
`helm template`; a real redis-server in the container's network namespace is the store.
"""

from __future__ import annotations

import base64
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.conftest import CHART, agent_container, find, pinned_tool, run_helm
from tests.conftest import require, require_binary
from tests.image.conftest import Image, Running, run_image, stop

REDIS_PASSWORD = "image-chart-pw-93b2"


@pytest.fixture
def rendered() -> list[dict[str, Any]]:
    """The chart's defaults plus a Redis on the pod's loopback and a model key."""
    helm = pinned_tool("helm4", "helm")
    require(helm.is_file(), f"helm at {helm} (make tool-helm4)")
    out = run_helm(
        helm, "template", "agent", str(CHART),
        "--set", f"session.url=redis://:{REDIS_PASSWORD}@127.0.0.1:6379/0",
        "--set", "model.apiKey=sk-image-chart",
    ).stdout  # fmt: skip
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture
def pod(service_image: Image, rendered: list[dict[str, Any]], tmp_path: Path) -> Iterator[Running]:
    """The agent container started as the rendered pod spec describes."""
    container = agent_container(rendered)
    spec = find(rendered, "Deployment", "agent")["spec"]["template"]["spec"]
    env = dict(find(rendered, "ConfigMap", container["envFrom"][0]["configMapRef"]["name"])["data"])
    env.update({e["name"]: e["value"] for e in container["env"]})
    binds: dict[Path, str] = {}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    for volume in spec["volumes"]:
        if "secret" in volume:
            secret = find(rendered, "Secret", volume["secret"]["secretName"])
            local = tmp_path / volume["name"]
            local.mkdir()
            for item in volume["secret"]["items"]:
                (local / item["path"]).write_bytes(base64.b64decode(secret["data"][item["key"]]))
                # fsGroup + defaultMode 0440 in the pod; here the group is the pod's group too.
                (local / item["path"]).chmod(0o440)
            subprocess.run(
                ["chown", "-R", f"0:{spec['securityContext']['fsGroup']}", str(local)], check=True
            )
            local.chmod(0o750)
            binds[local] = mounts[volume["name"]]
    user = f"{spec['securityContext']['runAsUser']}:{spec['securityContext']['runAsGroup']}"
    running = run_image(
        service_image, container["command"], tmp_path, user=user, env=env, binds=binds
    )
    try:
        yield running
    finally:
        stop(running)


def test_image_serves_the_charts_probes_with_the_charts_config(
    pod: Running, rendered: list[dict[str, Any]], tmp_path: Path
) -> None:
    container = agent_container(rendered)
    port = container["ports"][0]["containerPort"]
    liveness = container["livenessProbe"]["httpGet"]["path"]
    readiness = container["readinessProbe"]["httpGet"]["path"]

    assert pod.wait_for_http(port, liveness) == 200
    assert pod.http_status(port, container["startupProbe"]["httpGet"]["path"]) == 200
    assert pod.http_status(port, readiness) == 503  # the store is not up yet

    redis = subprocess.Popen(
        ["nsenter", f"--target={pod.pid()}", "--net", "--", require_binary("redis-server"),
         "--port", "6379", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--requirepass", REDIS_PASSWORD, "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while pod.http_status(port, readiness) != 200 and time.monotonic() < deadline:
            time.sleep(0.3)
        assert pod.http_status(port, readiness) == 200, pod.log.read_text()
    finally:
        redis.terminate()
        redis.wait(timeout=10)
    assert REDIS_PASSWORD not in pod.log.read_text()
    assert "sk-image-chart" not in pod.log.read_text()
