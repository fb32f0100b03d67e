"""Rollouts that protect themselves, on the real node: the smoke gate and automatic rollback.

The operator runs in-cluster from its image. One AgentDeployment (two replicas on a Redis on
the host, a two-prompt gate) serves load through its Service while each test rolls out a change:
an image whose process exits at start, a setting the service refuses, an image that is healthy
but answers wrongly (all rolled back, with an Event and status saying why), and a good image
(gated and completed; the time the gate adds per pod is printed). No request fails meanwhile.

The bad images are built here from the good one with buildah; the service has no switch that
makes it misbehave, so each regression is a build of its own:
- broken: `uvicorn` left out of the image, so `agent-service` dies at import (the pod's command
  is the contract's `agent-service`, so a changed entrypoint would not reach the pod);
- regressed: a `.pth` start-up hook that makes the echo model shout its reply (ECHO: PING).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import REAL_PLACEMENT, ROOT, Cluster, create_namespace, wait_until
from tests.e2e.realnode import (
    CHART,
    IMAGE_TAG,
    OPERATOR_REPO,
    SERVICE_REPO,
    Load,
    helm,
    host_redis,
    image_values,
    pods,
    post_json,
    ready,
    service_url,
    wait_rollout,
)
from tests.image.conftest import buildah

NAME = "agent"
SELECTOR = f"app.kubernetes.io/instance={NAME}"
GOOD = f"{SERVICE_REPO}:{IMAGE_TAG}"
NEXT = f"{SERVICE_REPO}:{IMAGE_TAG}-gate-next"  # the same build under a new reference
BROKEN = f"{SERVICE_REPO}:{IMAGE_TAG}-gate-broken"
REGRESSED = f"{SERVICE_REPO}:{IMAGE_TAG}-gate-regressed"
GATE = [
    {"message": "calc 6*7", "contains": "42", "maxLatencyMs": 3000},  # a tool call round trip
    {"message": "ping", "contains": "echo: ping", "maxLatencyMs": 3000},
]
FROM_LABEL = "dev.moorage.test.from"
REGRESSION = '''"""A deliberate regression the echo model shouts."""

import dataclasses

from agent_service import providers

_answer = providers.EchoModel._answer


def _shout(self, messages):
    reply = _answer(self, messages)
    return dataclasses.replace(reply, content=reply.content.upper())


providers.EchoModel._answer = _shout
'''


def _image_id(image: str) -> str:
    return buildah("inspect", "--type", "image", "--format", "{{.FromImageID}}", image).strip()


def _built_from(image: str, base_id: str) -> bool:
    """Whether `image` exists and was derived from the image `base_id` (a cache hit)."""
    try:
        raw = buildah("inspect", "--type", "image", image)
    except subprocess.CalledProcessError:  # not built yet
        return False
    labels = json.loads(raw).get("OCIv1", {}).get("config", {}).get("Labels") or {}
    return bool(labels.get(FROM_LABEL) == base_id)


def _derive(image: str, base_id: str, change: Any) -> None:
    """Build `image` from GOOD with `change(rootfs)` applied, unless it is already built."""
    if _built_from(image, base_id):
        return
    container = buildah("from", "--pull=never", GOOD).strip()
    try:
        rootfs = Path(buildah("mount", container).strip())
        change(rootfs)
        buildah("umount", container)
        buildah("config", "--label", f"{FROM_LABEL}={base_id}", container)
        buildah("commit", "--quiet", "--rm", container, image)
    except BaseException:
        buildah("rm", container)
        raise


def _site_packages(rootfs: Path) -> Path:
    (found,) = rootfs.glob("app/.venv/lib/python3*/site-packages")
    return found


def _leave_out_uvicorn(rootfs: Path) -> None:
    shutil.rmtree(_site_packages(rootfs) / "uvicorn")


def _shouting_echo(rootfs: Path) -> None:
    site = _site_packages(rootfs)
    (site / "moorage_regression.py").write_text(REGRESSION)
    (site / "moorage_regression.pth").write_text("import moorage_regression\n")
    for path in (site / "moorage_regression.py", site / "moorage_regression.pth"):
        path.chmod(0o644)


@pytest.fixture(scope="module")
def gate_images() -> None:
    """GOOD under a second reference, the broken and the regressed builds; all in the node."""
    from tests.e2e.conftest import load_image

    base_id = _image_id(GOOD)
    buildah("tag", GOOD, NEXT)
    _derive(BROKEN, base_id, _leave_out_uvicorn)
    _derive(REGRESSED, base_id, _shouting_echo)
    for image in (GOOD, NEXT, BROKEN, REGRESSED):
        load_image(image)


@pytest.fixture(scope="module")
def operator_in_cluster(cluster: Cluster) -> Iterator[str]:
    """The operator from its image of this build (IMAGE_TAG), in moorage-system."""
    cluster.kubectl_run("apply", "-k", str(ROOT / "manifests" / "crds"))
    cluster.kubectl_run(
        "wait", "--for=condition=Established", "crd", "-l", "app.kubernetes.io/part-of=moorage",
        "--timeout=60s",
    )  # fmt: skip
    # A first apply can lose the race for the peering object the operator makes at start.
    if cluster.kubectl_run(
        "apply", "-k", str(ROOT / "manifests" / "operator"), check=False
    ).returncode:
        cluster.kubectl_run("apply", "-k", str(ROOT / "manifests" / "operator"))
    ns = "moorage-system"
    cluster.kubectl_run(
        "set", "image", "deployment/moorage-operator", "-n", ns,
        f"operator={OPERATOR_REPO}:{IMAGE_TAG}",
    )  # fmt: skip
    cluster.kubectl_run("scale", "deployment/moorage-operator", "-n", ns, "--replicas=1")
    wait_rollout(cluster, ns, "moorage-operator")
    try:
        yield ns
    finally:
        # Other tests run their own operators on this machine; this one steps aside.
        cluster.kubectl_run("scale", "deployment/moorage-operator", "-n", ns, "--replicas=0")


def agent_pods_serving(cluster: Cluster, namespace: str, image: str, count: int) -> bool:
    """Exactly `count` live agent pods, all of `image` and Ready."""
    live = [
        p for p in pods(cluster, namespace, SELECTOR) if not p["metadata"].get("deletionTimestamp")
    ]
    return len(live) == count and all(
        ready(p) and p["spec"]["containers"][0]["image"] == image for p in live
    )


@dataclass
class Agent:
    """The AgentDeployment under test: its namespace and its Service's URL."""

    cluster: Cluster
    namespace: str
    url: str

    def get(self) -> dict[str, Any]:
        raw = self.cluster.kubectl_run(
            "get", "agentdeployment", NAME, "-n", self.namespace, "-o", "json"
        ).stdout
        return dict(json.loads(raw))

    def patch(self, spec: dict[str, Any]) -> int:
        """Merge-patch the spec; the generation it made."""
        out = self.cluster.kubectl_run(
            "patch", "agentdeployment", NAME, "-n", self.namespace, "--type=merge",
            "-p", json.dumps({"spec": spec}), "-o", "json",
        ).stdout  # fmt: skip
        return int(json.loads(out)["metadata"]["generation"])

    def live_pods(self) -> list[dict[str, Any]]:
        return [
            p for p in pods(self.cluster, self.namespace, SELECTOR)
            if not p["metadata"].get("deletionTimestamp")
        ]  # fmt: skip

    def serving(self, image: str, count: int = 2) -> bool:
        """Exactly `count` live pods, all of `image` and Ready (the gate passed)."""
        return agent_pods_serving(self.cluster, self.namespace, image, count)

    def outcome(self, generation: int) -> dict[str, Any] | None:
        """status.history's entry for this generation once it has an outcome, else None."""
        for entry in self.get().get("status", {}).get("history") or ():
            if entry.get("generation") == generation and entry.get("outcome") != "Progressing":
                return dict(entry)
        return None

    def events(self, reason: str) -> list[str]:
        raw = self.cluster.kubectl_run(
            "get", "events", "-n", self.namespace, "-o", "json", "--field-selector",
            f"involvedObject.kind=AgentDeployment,involvedObject.name={NAME},reason={reason}",
        ).stdout  # fmt: skip
        return [str(e.get("message", "")) for e in json.loads(raw)["items"]]


def _condition(body: dict[str, Any], type_: str) -> dict[str, Any]:
    conditions = body.get("status", {}).get("conditions") or ()
    return next((dict(c) for c in conditions if c.get("type") == type_), {})


@pytest.fixture(scope="module")
def agent(cluster: Cluster, gate_images: None, operator_in_cluster: str) -> Iterator[Agent]:
    """Two gated replicas of GOOD on a Redis on the host, rolled out once (its last good)."""
    namespace = f"e2e-rollout-gate-{uuid.uuid4().hex[:6]}"
    create_namespace(cluster, namespace, REAL_PLACEMENT)
    try:
        with host_redis(cluster) as redis:
            resource = {
                "apiVersion": "moorage.dev/v1beta1",
                "kind": "AgentDeployment",
                "metadata": {"name": NAME, "namespace": namespace},
                "spec": {
                    "image": GOOD,
                    "imagePullPolicy": "Never",
                    "replicas": 2,
                    "model": {"name": "echo"},
                    "session": {"url": redis.url},
                    "termination": {"drainDelaySeconds": 3},
                    "rollout": {"progressDeadlineSeconds": 120, "gate": {"prompts": GATE}},
                },
            }
            cluster.kubectl_run("apply", "-f", "-", input=json.dumps(resource))
            subject = Agent(cluster, namespace, "")
            wait_until(
                lambda: subject.outcome(1) is not None, "the first rollout to end", timeout=180
            )
            assert subject.outcome(1)["outcome"] == "Complete", subject.get()["status"]
            subject.url = service_url(cluster, namespace, NAME)
            yield subject
    finally:
        cluster.kubectl_run("delete", "namespace", namespace, "--wait=false", check=False)


def _report(capsys: pytest.CaptureFixture[str], line: str) -> None:
    """A figure for the reader of the test run (printed, never asserted)."""
    with capsys.disabled():
        print(line)  # noqa: T201


def _seconds(since: str, until: str) -> float:
    """Seconds between two Kubernetes timestamps (whole seconds)."""
    parse = datetime.datetime.fromisoformat
    return (parse(until) - parse(since)).total_seconds()


def _roll_back(
    agent: Agent, spec: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> dict[str, Any]:
    """Roll out `spec` under load; it must be rolled back with no failed request.

    Returns the history entry of the rolled-back generation.
    """
    assert agent.serving(GOOD) or agent.serving(NEXT)
    before = {p["spec"]["containers"][0]["image"] for p in agent.live_pods()}
    with Load(agent.url, loops=2) as load:
        started = time.monotonic()
        generation = agent.patch(spec)
        wait_until(
            lambda: agent.outcome(generation) is not None, "the rollout to be judged", timeout=150
        )
        judged = time.monotonic() - started
        entry = agent.outcome(generation)
        assert entry is not None
        served_before = load.count()
        (image,) = before
        wait_until(lambda: agent.serving(image), "the last good pods alone again", timeout=90)
        wait_until(lambda: load.count() > served_before + 5, "turns served after the rollback")
    assert load.failures == [], load.failures[:5]
    assert load.ok > 0
    body = agent.get()
    degraded = _condition(body, "Degraded")
    assert degraded.get("status") == "True", body["status"]
    assert degraded.get("reason") == "RolledBack"
    assert entry["outcome"] == "RolledBack", entry
    assert degraded.get("message") == entry["message"]
    # The spec stays as the user wrote it; the Deployment runs the last good revision.
    assert {k: body["spec"].get(k) for k in spec} == spec
    deployment = json.loads(
        agent.cluster.kubectl_run(
            "get", "deployment", NAME, "-n", agent.namespace, "-o", "json"
        ).stdout
    )
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == image
    assert body["status"]["lastGood"]["image"] == image
    _report(
        capsys, f"\n{spec}: rolled back {judged:.1f}s after the patch, {load.ok} turns, 0 failed"
    )
    return entry


def test_an_image_whose_process_exits_at_start_is_rolled_back(
    agent: Agent, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = _roll_back(agent, {"image": BROKEN}, capsys)
    assert entry["reason"] == "CrashLoop"
    assert entry["image"] == BROKEN
    # The Event names the bad image and what its process said before it died.
    (event,) = [m for m in agent.events("RolledBack") if BROKEN in m]
    assert "exited with code 1" in event
    assert "No module named 'uvicorn'" in event
    assert "No module named 'uvicorn'" in entry["message"]


def test_a_setting_the_service_refuses_is_rolled_back(
    agent: Agent, capsys: pytest.CaptureFixture[str]
) -> None:
    env = [{"name": "AGENT_CONTEXT_MESSAGES", "value": "1"}]
    entry = _roll_back(agent, {"image": GOOD, "env": env}, capsys)
    assert entry["reason"] == "CrashLoop"
    (event,) = [m for m in agent.events("RolledBack") if "AGENT_CONTEXT_MESSAGES" in m]
    assert "exited with code 2" in event
    assert "invalid configuration" in event
    # The pods kept the last good template: no refused setting in it.
    for pod in agent.live_pods():
        names = {e["name"] for e in pod["spec"]["containers"][0].get("env") or ()}
        assert "AGENT_CONTEXT_MESSAGES" not in names


def test_a_healthy_image_that_answers_wrongly_fails_the_gate_and_is_rolled_back(
    agent: Agent, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = _roll_back(agent, {"image": REGRESSED, "env": None}, capsys)
    assert entry["reason"] == "GateFailed"
    assert entry["image"] == REGRESSED
    (event,) = [m for m in agent.events("RolledBack") if REGRESSED in m]
    assert "failed the smoke gate" in event
    # The gate runs only once the pod's containers are ready (/readyz), and the pod answered
    # HTTP 200 with its reply: healthy, just wrong.
    assert "'ECHO: PING' does not contain 'echo: ping'" in event
    # Through the Service every answer came from the old pods: never a shouted one.
    status, answer = post_json(f"{agent.url}/v1/chat", {"message": "ping"})
    assert (status, answer["reply"]) == (200, "echo: ping")


def test_a_good_image_passes_the_gate_and_completes(
    agent: Agent, capsys: pytest.CaptureFixture[str]
) -> None:
    image = NEXT if agent.serving(GOOD) else GOOD
    old = {p["metadata"]["name"] for p in agent.live_pods()}
    with Load(agent.url, loops=2) as load:
        started = time.monotonic()
        generation = agent.patch({"image": image, "env": None})
        wait_until(lambda: agent.outcome(generation) is not None, "the rollout", timeout=180)
        took = time.monotonic() - started
        wait_until(lambda: agent.serving(image), "two gated pods of the new image", timeout=90)
    assert load.failures == [], load.failures[:5]
    assert load.ok > 0
    entry = agent.outcome(generation)
    assert entry is not None
    assert entry["outcome"] == "Complete", entry
    body = agent.get()
    assert body["status"]["lastGood"]["image"] == image
    assert _condition(body, "Degraded").get("status") == "False", body["status"]
    new = agent.live_pods()
    assert not old & {p["metadata"]["name"] for p in new}
    _report(capsys, f"\nrollout of {image}: 2 gated pods in {took:.1f}s; {load.ok} turns, 0 failed")
    for pod in new:
        gate = _condition(pod, "moorage.dev/gate-passed")
        assert gate["status"] == "True", gate
        assert gate["reason"] == "GatePassed"
        run = re.search(r"passed in ([0-9.]+)s", gate["message"])
        assert run is not None, gate["message"]
        # What the gate adds to a pod: from its containers' readiness (the kubelet's /readyz)
        # to the pod's (the operator's verdict), whole seconds; and the prompts' own run time.
        added = _seconds(
            _condition(pod, "ContainersReady")["lastTransitionTime"],
            _condition(pod, "Ready")["lastTransitionTime"],
        )
        _report(
            capsys,
            f"gate of pod {pod['metadata']['name']}: ContainersReady -> Ready {added:.0f}s, "
            f"prompts {float(run.group(1)):.3f}s",
        )


def test_the_gate_asks_as_a_client_when_the_service_requires_api_keys(
    cluster: Cluster, real_namespace: str, gate_images: None, operator_in_cluster: str
) -> None:
    key = f"gate-e2e-{uuid.uuid4().hex}"
    cluster.kubectl_run(
        "create", "secret", "generic", "clients", "-n", real_namespace,
        f"--from-literal=keys=# the gate asks as the first client\nsmoke:{key}\n",
    )  # fmt: skip
    resource = {
        "apiVersion": "moorage.dev/v1beta1",
        "kind": "AgentDeployment",
        "metadata": {"name": NAME, "namespace": real_namespace},
        "spec": {
            "image": GOOD,
            "imagePullPolicy": "Never",
            "replicas": 1,
            "clients": {"apiKeysSecretRef": {"name": "clients", "key": "keys"}},
            "rollout": {"progressDeadlineSeconds": 60, "gate": {"prompts": GATE}},
        },
    }
    cluster.kubectl_run("apply", "-f", "-", input=json.dumps(resource))
    subject = Agent(cluster, real_namespace, "")
    wait_until(lambda: subject.outcome(1) is not None, "the first rollout to end", timeout=120)
    entry = subject.outcome(1)
    assert entry is not None
    assert entry["outcome"] == "Complete", entry  # not "HTTP 401" from every prompt
    (pod,) = subject.live_pods()
    gate = _condition(pod, "moorage.dev/gate-passed")
    assert (gate["status"], gate["reason"]) == ("True", "GatePassed"), gate
    # The service does require the key: without one, the same prompt is refused.
    url = service_url(cluster, real_namespace, NAME)
    assert post_json(f"{url}/v1/chat", {"message": "ping"})[0] == 401
    cluster.kubectl_run("delete", "agentdeployment", NAME, "-n", real_namespace, "--wait=true")


# --- The chart's equivalent: helm upgrade --rollback-on-failure, and helm test's smoke prompts.

PING = [
    "--set",
    "tests.prompts.ping.message=ping",
    "--set",
    "tests.prompts.ping.contains=echo: ping",
]


def _release(cluster: Cluster, namespace: str) -> str:
    """One replica of GOOD from the chart, installed and answering; the Service's URL."""
    helm(
        cluster, "install", NAME, str(CHART), "-n", namespace, *image_values(), *PING,
        "--set", "termination.drainDelaySeconds=2", "--wait", "--timeout", "120s",
    )  # fmt: skip
    return service_url(cluster, namespace, NAME)


def _deployment_image(cluster: Cluster, namespace: str) -> str:
    raw = cluster.kubectl_run("get", "deployment", NAME, "-n", namespace, "-o", "json").stdout
    return str(json.loads(raw)["spec"]["template"]["spec"]["containers"][0]["image"])


def _history(cluster: Cluster, namespace: str) -> list[tuple[int, str, str]]:
    raw = helm(cluster, "history", NAME, "-n", namespace, "-o", "json").stdout
    return [(h["revision"], h["status"], h["description"]) for h in json.loads(raw)]


@pytest.mark.parametrize(
    ("version", "flag"), [("v4", "--rollback-on-failure"), ("v3", "--atomic")], ids=["v4", "v3"]
)
def test_helm_upgrade_rollback_on_failure_returns_to_the_previous_revision(
    cluster: Cluster,
    real_namespace: str,
    gate_images: None,
    capsys: pytest.CaptureFixture[str],
    version: str,
    flag: str,
) -> None:
    if version == "v3":  # helm v3 names the flag --atomic (and merges client-side)
        cluster = dataclasses.replace(cluster, helm=cluster.helm3)
    url = _release(cluster, real_namespace)
    with Load(url, loops=2) as load:
        started = time.monotonic()
        failed = helm(
            cluster, "upgrade", NAME, str(CHART), "-n", real_namespace, "--reuse-values",
            "--set", f"image.tag={BROKEN.rsplit(':', 1)[1]}", flag, "--timeout", "30s",
            check=False,
        )  # fmt: skip
        took = time.monotonic() - started
        wait_until(
            lambda: agent_pods_serving(cluster, real_namespace, GOOD, 1),
            "the release's good pod alone again",
            timeout=60,
        )
    assert failed.returncode != 0
    assert re.search(r"roll(ed )?back", failed.stderr), failed.stderr
    assert load.failures == [], load.failures[:5]
    assert load.ok > 0
    revisions = _history(cluster, real_namespace)
    assert [(r, s) for r, s, _ in revisions] == [(1, "superseded"), (2, "failed"), (3, "deployed")]
    assert revisions[-1][2] == "Rollback to 1"
    assert _deployment_image(cluster, real_namespace) == GOOD
    _report(capsys, f"\nhelm {version} upgrade {flag} (30s timeout) back in {took:.1f}s")

    # The release it returned to passes helm test: /readyz and the smoke prompts, via the Service.
    tested = helm(cluster, "test", NAME, "-n", real_namespace, "--timeout", "120s", check=False)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert f"{NAME}-test-smoke" in tested.stdout
    assert f"{NAME}-test-readyz" in tested.stdout


def test_helm_test_fails_an_image_whose_probes_pass_but_answers_wrongly(
    cluster: Cluster, real_namespace: str, gate_images: None
) -> None:
    _release(cluster, real_namespace)
    # Healthy: the upgrade's wait (the chart's probes) succeeds, and nothing rolls back.
    helm(
        cluster, "upgrade", NAME, str(CHART), "-n", real_namespace, "--reuse-values",
        "--set", f"image.tag={REGRESSED.rsplit(':', 1)[1]}", "--rollback-on-failure",
        "--timeout", "90s",
    )  # fmt: skip
    assert _deployment_image(cluster, real_namespace) == REGRESSED
    # helm test's smoke prompts catch it; the failed Job stays, its log names prompt and answer.
    tested = helm(cluster, "test", NAME, "-n", real_namespace, "--timeout", "120s", check=False)
    assert tested.returncode != 0
    assert f"Job/{real_namespace}/{NAME}-test-smoke" in tested.stderr, tested.stderr
    output = cluster.kubectl_run("logs", f"job/{NAME}-test-smoke", "-n", real_namespace).stdout
    assert "ping: reply 'ECHO: PING' does not contain 'echo: ping'" in output, output
    assert "calc: passed" in output  # a tool round trip still answers 42, shouted or not
    helm(cluster, "rollback", NAME, "1", "-n", real_namespace, "--wait", "--timeout", "90s")
    assert _deployment_image(cluster, real_namespace) == GOOD
    passed = helm(cluster, "test", NAME, "-n", real_namespace, "--timeout", "120s", check=False)
    assert passed.returncode == 0, passed.stdout + passed.stderr
