"""The operator as a local process, with its ServiceAccount's token, on the local cluster."""

from __future__ import annotations

import base64
import json
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import free_port, require
from tests.e2e.conftest import Cluster, wait_until

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "manifests" / "samples" / "agentdeployment.yaml"
OPERATOR_NS = "moorage-system"
OPERATOR_SA = "moorage-operator"
IMAGE_V1 = "localhost/moorage/agent-service:dev"
IMAGE_V2 = "localhost/moorage/agent-service:v2"
QUIET_SECONDS = 20
CHILDREN = ("deployment", "service", "configmap", "poddisruptionbudget", "serviceaccount")


def uv_binary() -> str:
    """The uv that `make sync` installs, else one on PATH."""
    pinned = Path.home() / ".cache" / "moorage" / "uv-0.13.8" / "bin" / "uv"
    found = str(pinned) if pinned.exists() else shutil.which("uv")
    require(found is not None, "uv (make sync)")
    assert found is not None
    return found


def install_operator_manifests(cluster: Cluster, root: Path = ROOT) -> None:
    """CRDs, namespace, RBAC, peering object and operator Deployment, as a user installs them
    (from this tree, or from `root`, a previous release's)."""
    # CRDs first: one apply cannot create the peering object of a kind it only just defined.
    cluster.kubectl_run("apply", "-k", str(root / "manifests" / "crds"))
    cluster.kubectl_run(
        "wait",
        "--for=condition=Established",
        "crd",
        "-l",
        "app.kubernetes.io/part-of=moorage",
        "--timeout=60s",
    )
    # The Deployment in the kustomization is the in-cluster operator, which on the real node
    # really starts; the tests run the operator as a local process instead. Applied with 0
    # replicas, no pod of it ever starts: one that ran for a moment (apply, then scale to 0)
    # left a same-priority peer in the peering object, and the local operators paused for it.
    rendered = cluster.kubectl_run("kustomize", str(root / "manifests" / "operator")).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    for doc in docs:
        if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "moorage-operator":
            doc["spec"]["replicas"] = 0
    cluster.kubectl_run("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    # An in-cluster operator another test ran (or a README's apply-then-scale) must be gone, and
    # with it its peer entry: the local operators here start on an empty peering object (they
    # create it when it is missing).
    cluster.kubectl_run(
        "wait", "--for=delete", "pod", "-n", OPERATOR_NS,
        "-l", "app.kubernetes.io/name=moorage-operator", "--timeout=120s",
    )  # fmt: skip
    cluster.kubectl_run(
        "delete", "clusterkopfpeering", "moorage-operator", "--ignore-not-found", "--wait=true"
    )


def service_account_kubeconfig(cluster: Cluster, path: Path, namespace: str = OPERATOR_NS) -> Path:
    """A kubeconfig that authenticates as the operator's ServiceAccount (a bound token)."""
    token = cluster.kubectl_run(
        "create", "token", OPERATOR_SA, "-n", namespace, "--duration=3h"
    ).stdout.strip()
    admin = json.loads(
        cluster.kubectl_run("config", "view", "--raw", "--minify", "-o", "json").stdout
    )
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": OPERATOR_SA, "user": {"token": token}}],
        "contexts": [
            {
                "name": OPERATOR_SA,
                "context": {"cluster": admin["clusters"][0]["name"], "user": OPERATOR_SA},
            }
        ],
        "current-context": OPERATOR_SA,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


class OperatorProcess:
    """`agent-operator` started through uv run (of this tree, or `root`'s); stopped by its pid."""

    def __init__(
        self, cluster: Cluster, kubeconfig: Path, log_path: Path, root: Path = ROOT, **env: str
    ) -> None:
        self.port = free_port()
        self.log_path = log_path
        environment = {k: v for k, v in cluster.env.items() if not k.startswith("AGENT_")}
        environment.update(
            KUBECONFIG=str(kubeconfig),
            AGENT_OPERATOR_LIVENESS=f"http://127.0.0.1:{self.port}/healthz",
            AGENT_OPERATOR_SECRET_RETRY_SECONDS="2",
            AGENT_OPERATOR_RESYNC_SECONDS="3",
            **env,
        )
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(
            [uv_binary(), "run", "--frozen", "agent-operator"],
            cwd=root,
            env=environment,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_alive(self, timeout: float = 90) -> None:
        """Wait until kopf's liveness endpoint answers; fail with the log if the process ends."""
        wait_until(
            lambda: self.alive() or self.proc.poll() is not None,
            "the operator's liveness endpoint",
            timeout=timeout,
        )
        assert self.proc.poll() is None, self.output()[-3000:]

    def alive(self) -> bool:
        """Whether kopf's liveness endpoint answers 200."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as rsp:
                return bool(rsp.status == 200)
        except OSError:
            return False

    def output(self) -> str:
        """The operator's log so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM by pid, then wait (kopf leaves the peering on a clean exit)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return int(self.proc.returncode)


@pytest.fixture(scope="module")
def operator(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """The real operator, as the operator's ServiceAccount, for this module's tests."""
    install_operator_manifests(cluster)
    workdir = tmp_path_factory.mktemp("operator")
    kubeconfig = service_account_kubeconfig(cluster, workdir / "kubeconfig")
    process = OperatorProcess(cluster, kubeconfig, workdir / "operator.log")
    try:
        process.wait_alive()
        yield process
    finally:
        code = process.stop()
        log_text = process.output()
        # Every log line is JSON (kopf's JSON formatter on the root logger).
        lines = [line for line in log_text.splitlines() if line.strip()]
        assert lines, "the operator logged nothing"
        bad = [line for line in lines if not line.startswith("{")]
        assert not bad, f"non-JSON log lines: {bad[:3]}"
        assert code == 0, log_text[-3000:]


def kget(cluster: Cluster, namespace: str, *what: str) -> Any:
    """`kubectl get ... -o json` in a namespace, parsed."""
    result = cluster.kubectl_run("get", "-n", namespace, *what, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def agent(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    """The AgentDeployment as it is now."""
    obj = kget(cluster, namespace, "agentdeployment", name)
    assert obj is not None
    return dict(obj)


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    """A status condition by type, or {}."""
    for cond in obj.get("status", {}).get("conditions") or ():
        if cond["type"] == type_:
            return dict(cond)
    return {}


def settled(cluster: Cluster, namespace: str, name: str, state: str = "Ready") -> bool:
    """The operator has observed the current generation and reports `state`."""
    obj = agent(cluster, namespace, name)
    status = obj.get("status", {})
    return (
        status.get("observedGeneration") == obj["metadata"]["generation"]
        and status.get("state") == state
    )


def wait_state(
    cluster: Cluster, op: OperatorProcess, namespace: str, name: str, state: str = "Ready"
) -> dict[str, Any]:
    """Wait until the AgentDeployment settles in `state`; fail with the operator's log if not."""
    try:
        wait_until(lambda: settled(cluster, namespace, name, state), f"{name} {state}", timeout=120)
    except pytest.fail.Exception:
        print(op.output()[-5000:])  # noqa: T201 - shown by pytest on failure
        print(json.dumps(agent(cluster, namespace, name).get("status"), indent=1))  # noqa: T201
        raise
    return agent(cluster, namespace, name)


def deployment(cluster: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    """The child Deployment, or None."""
    obj = kget(cluster, namespace, "deployment", name)
    return dict(obj) if obj else None


def image_of(dep: dict[str, Any] | None) -> str | None:
    """The agent container's image."""
    return dep["spec"]["template"]["spec"]["containers"][0]["image"] if dep else None


def events(cluster: Cluster, namespace: str, name: str, reason: str) -> list[dict[str, Any]]:
    """Events about the AgentDeployment `name` with `reason`."""
    listed = kget(
        cluster,
        namespace,
        "events",
        f"--field-selector=involvedObject.name={name},involvedObject.kind=AgentDeployment,"
        f"reason={reason}",
    )
    return list(listed["items"]) if listed else []


def apply_agent(cluster: Cluster, namespace: str, name: str, **spec: Any) -> None:
    """Apply an AgentDeployment with the given spec (kubectl apply, as a user would)."""
    manifest = {
        "apiVersion": "moorage.dev/v1beta1",
        "kind": "AgentDeployment",
        "metadata": {"name": name},
        "spec": {"image": IMAGE_V1, **spec},
    }
    cluster.kubectl_run("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))


def patch_spec(cluster: Cluster, namespace: str, name: str, spec: dict[str, Any]) -> None:
    """Merge-patch the AgentDeployment's spec."""
    cluster.kubectl_run(
        "patch", "-n", namespace, "agentdeployment", name, "--type=merge",
        "-p", json.dumps({"spec": spec}),
    )  # fmt: skip


def test_sample_applied_as_is_becomes_ready_with_owned_children(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    cluster.kubectl_run("apply", "-n", namespace, "-f", str(SAMPLE))
    name = yaml.safe_load(SAMPLE.read_text())["metadata"]["name"]
    obj = wait_state(cluster, operator, namespace, name)
    uid = obj["metadata"]["uid"]
    for kind in CHILDREN:
        child_name = f"{name}-config" if kind == "configmap" else name
        child = kget(cluster, namespace, kind, child_name)
        assert child is not None, kind
        (ref,) = child["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == (
            "AgentDeployment",
            name,
            uid,
            True,
        )
    assert kget(cluster, namespace, "hpa", name) is None
    # No finalizer (no kopf timer or daemon): deleting never waits for a running operator.
    assert not obj["metadata"].get("finalizers")
    selector = obj["status"]["selector"]
    cluster.kubectl_run(
        "wait", "-n", namespace, "pod", "-l", selector, "--for=condition=Ready", "--timeout=60s"
    )
    for type_, expected in (("Ready", "True"), ("Progressing", "False"), ("Degraded", "False")):
        assert condition(obj, type_)["status"] == expected, obj["status"]
    table = cluster.kubectl_run("get", "-n", namespace, "agentdep", name).stdout.splitlines()
    assert table[0].split() == ["NAME", "IMAGE", "DESIRED", "READY", "STATUS", "AGE"]
    assert table[1].split()[:5] == [name, IMAGE_V1, "1", "1", "Ready"]
    assert obj["status"]["recentImages"] == [IMAGE_V1]
    wait_until(lambda: bool(events(cluster, namespace, name, "Created")), "the Created event", 30)


def test_kubectl_scale_on_the_agentdeployment_is_followed_by_the_deployment(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    apply_agent(cluster, namespace, "scaled")
    wait_state(cluster, operator, namespace, "scaled")
    cluster.kubectl_run("scale", "-n", namespace, "agentdeployment/scaled", "--replicas=3")
    obj = wait_state(cluster, operator, namespace, "scaled")
    assert obj["spec"]["replicas"] == 3
    dep = deployment(cluster, namespace, "scaled")
    assert dep is not None
    assert dep["spec"]["replicas"] == 3
    assert (obj["status"]["replicas"], obj["status"]["readyReplicas"]) == (3, 3)
    # Three pods with the sample's in-memory sessions: the operator warns.
    wait_until(
        lambda: bool(events(cluster, namespace, "scaled", "SessionsNotShared")), "the Event", 30
    )
    scale = kget(cluster, namespace, "agentdeployment", "scaled", "--subresource=scale")
    assert scale["status"]["replicas"] == 3
    assert scale["status"]["selector"] == obj["status"]["selector"]


def test_an_image_change_rolls_out_and_reverting_it_rolls_back(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    apply_agent(cluster, namespace, "roll", replicas=2)
    wait_state(cluster, operator, namespace, "roll")
    patch_spec(cluster, namespace, "roll", {"image": IMAGE_V2})
    obj = wait_state(cluster, operator, namespace, "roll")
    assert image_of(deployment(cluster, namespace, "roll")) == IMAGE_V2
    assert obj["status"]["recentImages"] == [IMAGE_V2, IMAGE_V1]
    assert obj["status"]["updatedReplicas"] == 2
    cluster.kubectl_run("rollout", "status", "-n", namespace, "deployment/roll", "--timeout=60s")
    patch_spec(cluster, namespace, "roll", {"image": IMAGE_V1})
    obj = wait_state(cluster, operator, namespace, "roll")
    assert image_of(deployment(cluster, namespace, "roll")) == IMAGE_V1
    assert obj["status"]["recentImages"] == [IMAGE_V1, IMAGE_V2]
    history = cluster.kubectl_run("rollout", "history", "-n", namespace, "deployment/roll").stdout
    assert len([line for line in history.splitlines() if line[:1].isdigit()]) == 2


def test_rollout_undo_on_the_owned_deployment_is_reverted_with_an_event(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    apply_agent(cluster, namespace, "undo")
    wait_state(cluster, operator, namespace, "undo")
    patch_spec(cluster, namespace, "undo", {"image": IMAGE_V2})
    wait_state(cluster, operator, namespace, "undo")
    cluster.kubectl_run("rollout", "status", "-n", namespace, "deployment/undo", "--timeout=60s")
    cluster.kubectl_run("rollout", "undo", "-n", namespace, "deployment/undo")
    wait_until(
        lambda: bool(events(cluster, namespace, "undo", "RollbackReverted")),
        "the RollbackReverted event",
        timeout=60,
    )
    wait_until(
        lambda: image_of(deployment(cluster, namespace, "undo")) == IMAGE_V2,
        "the Deployment back on spec.image",
        timeout=60,
    )
    message = events(cluster, namespace, "undo", "RollbackReverted")[0]["message"]
    assert "set spec.image" in message
    assert IMAGE_V1 in message
    assert agent(cluster, namespace, "undo")["spec"]["image"] == IMAGE_V2
    described = cluster.kubectl_run("describe", "-n", namespace, "agentdep", "undo").stdout
    assert "RollbackReverted" in described


def test_a_deleted_child_deployment_is_recreated(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    apply_agent(cluster, namespace, "gone", replicas=2)
    wait_state(cluster, operator, namespace, "gone")
    old = deployment(cluster, namespace, "gone")
    assert old is not None
    cluster.kubectl_run("delete", "-n", namespace, "deployment/gone", "--wait=true")
    wait_until(
        lambda: (
            (d := deployment(cluster, namespace, "gone")) is not None
            and d["metadata"]["uid"] != old["metadata"]["uid"]
        ),
        "a new Deployment",
        timeout=60,
    )
    wait_until(lambda: bool(events(cluster, namespace, "gone", "ChildRecreated")), "the Event", 30)
    obj = wait_state(cluster, operator, namespace, "gone")
    assert obj["status"]["readyReplicas"] == 2


def test_hand_edited_replicas_are_restored_while_autoscaling_is_off(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    apply_agent(cluster, namespace, "edited", replicas=2)
    wait_state(cluster, operator, namespace, "edited")
    cluster.kubectl_run("scale", "-n", namespace, "deployment/edited", "--replicas=5")
    wait_until(
        lambda: bool(events(cluster, namespace, "edited", "DriftRestored")),
        "the DriftRestored event",
        timeout=60,
    )
    wait_until(
        lambda: (deployment(cluster, namespace, "edited") or {})["spec"]["replicas"] == 2,
        "replicas back at 2",
        timeout=60,
    )
    assert ".spec.replicas" in events(cluster, namespace, "edited", "DriftRestored")[0]["message"]


def test_an_edit_no_event_leads_back_from_is_repaired_by_the_periodic_resync(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    apply_agent(cluster, namespace, "orphaned")
    wait_state(cluster, operator, namespace, "orphaned")
    # Without its owner reference, the Service's own events no longer name the AgentDeployment
    # (so no event-driven repair happens); only the periodic resync can notice.
    cluster.kubectl_run(
        "patch", "-n", namespace, "service", "orphaned", "--type=json",
        "-p", '[{"op": "remove", "path": "/metadata/ownerReferences"}]',
    )  # fmt: skip
    wait_until(
        lambda: bool(
            (kget(cluster, namespace, "service", "orphaned") or {})["metadata"].get(
                "ownerReferences"
            )
        ),
        "the owner reference restored",
        timeout=60,
    )
    wait_until(
        lambda: any(
            "ownerReferences" in e["message"]
            for e in events(cluster, namespace, "orphaned", "DriftRestored")
        ),
        "the DriftRestored event",
        timeout=30,
    )


def _replicas_owners(cluster: Cluster, namespace: str, name: str) -> set[str]:
    """Field managers of the Deployment's spec.replicas."""
    dep = kget(cluster, namespace, "deployment", name, "--show-managed-fields")
    return {
        entry["manager"]
        for entry in dep["metadata"].get("managedFields", [])
        if "f:replicas" in entry.get("fieldsV1", {}).get("f:spec", {})
    }


def test_with_autoscaling_on_the_hpa_sets_replicas_and_the_operator_leaves_them(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    apply_agent(cluster, namespace, "auto", replicas=3)
    wait_state(cluster, operator, namespace, "auto")
    # Turning autoscaling on hands spec.replicas over without dropping to the default of 1.
    patch_spec(
        cluster,
        namespace,
        "auto",
        {"autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 4}},
    )
    wait_state(cluster, operator, namespace, "auto")
    hpa = kget(cluster, namespace, "hpa", "auto")
    assert hpa is not None
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 4)
    dep = deployment(cluster, namespace, "auto")
    assert dep is not None
    assert dep["spec"]["replicas"] == 3
    owners = _replicas_owners(cluster, namespace, "auto")
    assert "moorage-operator-handoff" in owners
    assert "moorage-operator" not in owners
    # kwok pods report no CPU, so the HPA controller cannot act on utilisation; it does enforce
    # its bounds. Below minReplicas, the real HPA controller scales the Deployment back up.
    cluster.kubectl_run("scale", "-n", namespace, "deployment/auto", "--replicas=1")
    wait_until(
        lambda: (deployment(cluster, namespace, "auto") or {})["spec"]["replicas"] == 2,
        "the HPA controller raising replicas to minReplicas",
        timeout=90,
    )
    assert "kube-controller-manager" in _replicas_owners(cluster, namespace, "auto")
    # A full reconciliation (a spec change) leaves the HPA's choice alone.
    patch_spec(cluster, namespace, "auto", {"autoscaling": {"maxReplicas": 5}})
    wait_until(
        lambda: (kget(cluster, namespace, "hpa", "auto") or {})["spec"]["maxReplicas"] == 5,
        "the HPA updated",
        timeout=60,
    )
    obj = wait_state(cluster, operator, namespace, "auto")
    assert (deployment(cluster, namespace, "auto") or {})["spec"]["replicas"] == 2
    assert obj["status"]["desiredReplicas"] == 2
    assert not events(cluster, namespace, "auto", "DriftRestored")
    # Scaling the resource itself while the HPA is in charge is refused with a warning.
    cluster.kubectl_run("scale", "-n", namespace, "agentdeployment/auto", "--replicas=7")
    wait_until(lambda: bool(events(cluster, namespace, "auto", "ReplicasIgnored")), "the Event", 30)
    wait_state(cluster, operator, namespace, "auto")
    assert (deployment(cluster, namespace, "auto") or {})["spec"]["replicas"] == 2
    # Off again: the operator owns replicas once more and deletes the HPA.
    patch_spec(cluster, namespace, "auto", {"replicas": 3, "autoscaling": {"enabled": False}})
    wait_state(cluster, operator, namespace, "auto")
    wait_until(lambda: kget(cluster, namespace, "hpa", "auto") is None, "the HPA deleted", 60)
    assert (deployment(cluster, namespace, "auto") or {})["spec"]["replicas"] == 3


def test_deleting_the_agentdeployment_garbage_collects_every_child(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    apply_agent(cluster, namespace, "doomed", autoscaling={"enabled": True})
    wait_state(cluster, operator, namespace, "doomed")
    assert kget(cluster, namespace, "hpa", "doomed") is not None
    cluster.kubectl_run("delete", "-n", namespace, "agentdeployment/doomed", "--wait=true")
    selector = "app.kubernetes.io/instance=doomed"
    kinds = "deployments,services,configmaps,poddisruptionbudgets,horizontalpodautoscalers,pods"

    def children_left() -> list[str]:
        listed = kget(cluster, namespace, kinds, "-l", selector)
        return [f"{i['kind']}/{i['metadata']['name']}" for i in (listed or {}).get("items", [])]

    wait_until(lambda: not children_left(), "garbage collection of the children", timeout=120)


def test_a_missing_secret_degrades_and_recovers_once_the_secret_exists(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    apply_agent(
        cluster,
        namespace,
        "secretive",
        model={"name": "openai:gpt-4o-mini"},
        modelApiKeySecretRef={"name": "llm-credentials", "key": "api-key"},
    )
    obj = wait_state(cluster, operator, namespace, "secretive", state="Degraded")
    degraded = condition(obj, "Degraded")
    assert degraded["reason"] == "SecretNotFound"
    assert "llm-credentials" in degraded["message"]
    assert condition(obj, "Ready")["status"] == "False"
    assert deployment(cluster, namespace, "secretive") is None
    wait_until(
        lambda: bool(events(cluster, namespace, "secretive", "SecretNotFound")), "the Event", 30
    )
    cluster.kubectl_run(
        "create", "secret", "generic", "llm-credentials", "-n", namespace,
        "--from-literal=api-key=not-a-real-key",
    )  # fmt: skip
    obj = wait_state(cluster, operator, namespace, "secretive")
    dep = deployment(cluster, namespace, "secretive")
    assert dep is not None
    env = {
        e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["AGENT_MODEL_API_KEY_FILE"] == "/etc/moorage/secrets/model-api-key"
    assert "not-a-real-key" not in json.dumps(obj) + json.dumps(dep) + operator.output()


def test_a_secret_deleted_later_degrades_drift_repair_until_it_is_back(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    cluster.kubectl_run(
        "create", "secret", "generic", "store", "-n", namespace,
        "--from-literal=url=redis://redis.example:6379/0",
    )  # fmt: skip
    apply_agent(
        cluster, namespace, "fragile", session={"urlSecretRef": {"name": "store", "key": "url"}}
    )
    wait_state(cluster, operator, namespace, "fragile")
    cluster.kubectl_run("delete", "secret", "store", "-n", namespace)
    # The next repair (a deleted Deployment) notices: recreating pods that cannot start is
    # refused, and the resource says why.
    cluster.kubectl_run("delete", "-n", namespace, "deployment/fragile", "--wait=true")
    obj = wait_state(cluster, operator, namespace, "fragile", state="Degraded")
    assert condition(obj, "Degraded")["reason"] == "SecretNotFound"
    assert deployment(cluster, namespace, "fragile") is None
    cluster.kubectl_run(
        "create", "secret", "generic", "store", "-n", namespace,
        "--from-literal=url=redis://redis.example:6379/0",
    )  # fmt: skip
    wait_state(cluster, operator, namespace, "fragile")
    assert deployment(cluster, namespace, "fragile") is not None
    wait_until(lambda: bool(events(cluster, namespace, "fragile", "Recovered")), "the Event", 30)


def test_a_spec_the_api_server_refuses_is_degraded_once_without_a_retry_loop(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    # Passes the CRD (quantities are well-formed) but the Deployment's validation refuses it.
    apply_agent(
        cluster,
        namespace,
        "greedy",
        resources={"requests": {"cpu": "2", "memory": "128Mi"}, "limits": {"cpu": "1"}},
    )
    obj = wait_state(cluster, operator, namespace, "greedy", state="Degraded")
    degraded = condition(obj, "Degraded")
    assert degraded["reason"] == "InvalidSpec"
    assert "must be less than or equal to cpu limit" in degraded["message"]
    # A while later (Deployment events keep arriving meanwhile) still one refusal: no retry loop.
    generation = obj["metadata"]["generation"]
    time.sleep(QUIET_SECONDS)
    assert len(events(cluster, namespace, "greedy", "InvalidSpec")) == 1
    assert agent(cluster, namespace, "greedy")["metadata"]["generation"] == generation
    # Fixing the spec recovers it.
    patch_spec(cluster, namespace, "greedy", {"resources": {"limits": {"cpu": "2"}}})
    wait_state(cluster, operator, namespace, "greedy")


def _pod_names(cluster: Cluster, namespace: str, name: str) -> set[str]:
    listed = kget(cluster, namespace, "pods", "-l", f"app.kubernetes.io/instance={name}")
    items = listed["items"]
    return {p["metadata"]["name"] for p in items if not p["metadata"].get("deletionTimestamp")}


def test_pod_overrides_and_agent_settings_reach_the_pods_and_a_change_rolls_them(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    toleration = {"key": "dedicated", "operator": "Equal", "value": "agents"}
    toleration["effect"] = "NoSchedule"
    apply_agent(
        cluster, namespace, "placed",
        pod={
            "nodeSelector": {"type": "kwok"},
            "tolerations": [toleration],
            "labels": {"team": "search"},
            "annotations": {"example.com/owner": "search"},
            "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "1Mi"}}],
            "volumeMounts": [{"name": "scratch", "mountPath": "/var/scratch"}],
        },
        service={"annotations": {"example.com/lb": "internal"}},
        agent={"systemPrompt": "You answer in one word.", "tools": ["clock"],
               "context": {"maxMessages": 6}},
    )  # fmt: skip
    wait_state(cluster, operator, namespace, "placed")
    template = deployment(cluster, namespace, "placed")["spec"]["template"]  # type: ignore[index]
    pod = template["spec"]
    assert pod["nodeSelector"] == {"type": "kwok"}
    assert toleration in pod["tolerations"]
    assert pod["serviceAccountName"] == "placed"
    assert template["metadata"]["labels"]["team"] == "search"
    assert template["metadata"]["annotations"]["example.com/owner"] == "search"
    assert {"name": "scratch", "emptyDir": {"sizeLimit": "1Mi"}} in pod["volumes"]
    mounts = pod["containers"][0]["volumeMounts"]
    assert {"name": "scratch", "mountPath": "/var/scratch"} in mounts
    service = kget(cluster, namespace, "service", "placed")
    assert service["metadata"]["annotations"]["example.com/lb"] == "internal"
    config = kget(cluster, namespace, "configmap", "placed-config")
    assert config["data"]["AGENT_TOOLS"] == "clock"
    assert config["data"]["AGENT_CONTEXT_MAX_MESSAGES"] == "6"
    (prompt,) = config["binaryData"].values()
    assert base64.b64decode(prompt).decode() == "You answer in one word."
    env = {e["name"]: e.get("value") for e in pod["containers"][0].get("env") or ()}
    assert env.get("AGENT_SYSTEM_PROMPT_FILE", "").startswith("/etc/moorage/agent/")
    # The kwok pods carry the user's label (placed on a kwok node by the selector).
    cluster.kubectl_run(
        "wait", "-n", namespace, "pod", "-l", "team=search", "--for=condition=Ready",
        "--timeout=60s",
    )  # fmt: skip
    before = _pod_names(cluster, namespace, "placed")

    # A placement change and a prompt change are rollouts: new pods replace the old ones.
    patch_spec(cluster, namespace, "placed", {
        "pod": {"tolerations": [toleration, {**toleration, "value": "batch"}]},
        "agent": {"systemPrompt": "You answer in two words."},
    })  # fmt: skip
    wait_until(lambda: settled(cluster, namespace, "placed"), "placed settled after its patch")
    wait_until(
        lambda: (
            _pod_names(cluster, namespace, "placed").isdisjoint(before)
            and len(_pod_names(cluster, namespace, "placed")) == 1
        ),
        "the pods replaced after the spec change",
        timeout=120,
    )
    pod = deployment(cluster, namespace, "placed")["spec"]["template"]["spec"]  # type: ignore[index]
    assert {**toleration, "value": "batch"} in pod["tolerations"]

    # A hand edit of the placement is drift: restored, with an Event.
    cluster.kubectl_run(
        "patch", "-n", namespace, "deployment", "placed", "--type=json",
        "-p", json.dumps([{"op": "remove", "path": "/spec/template/spec/nodeSelector"}]),
    )  # fmt: skip
    wait_until(
        lambda: (deployment(cluster, namespace, "placed") or {})["spec"]["template"]["spec"]
        .get("nodeSelector") == {"type": "kwok"},
        "the nodeSelector restored",
        timeout=60,
    )  # fmt: skip
    wait_until(lambda: bool(events(cluster, namespace, "placed", "DriftRestored")),
               "the DriftRestored event", timeout=60)  # fmt: skip
