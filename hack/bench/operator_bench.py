"""Operator benchmark: AgentDeployments created at once until Ready, a spec change's rollout, RSS.

Runs the real operator (`uv run agent-operator`, as its ServiceAccount) against the local
cluster (hack/cluster/cluster.sh) or MOORAGE_E2E_KUBECONFIG, in a namespace whose pods land on
the kwok nodes (fake: pods become Ready without running). For each count (default 1 and 200)
it creates that many AgentDeployments at once and times each from its create request to Ready.
With the largest count Ready it changes one object's spec (a new env value: a new pod template)
and times it until that object reports the new generation Ready. Prints the figures and a table
of issue 14's targets (met / NOT met) and writes everything to JSON.

Every time is taken on this process's monotonic clock: the start just before the object's own
request, the end when the watch delivers the status that says Ready (the wall clock here can
jump). The API server's own stamps (creation → Ready's lastTransitionTime, 1 s steps) are
reported beside them as a cross-check. Not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import itertools
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import kubernetes
import yaml
from kubernetes.client.exceptions import ApiException
from procstat import RssSampler, cpu_seconds, process_tree, rss_kib

ROOT = Path(__file__).resolve().parents[2]
OPERATOR_NS = "moorage-system"
OPERATOR_SA = "moorage-operator"
GROUP, VERSION, PLURAL = "moorage.dev", "v1beta1", "agentdeployments"
IMAGE = "localhost/moorage/agent-service:dev"
# The namespace annotations that send its pods to the kwok nodes and tolerate their taint
# (hack/cluster/nodes.yaml), for the PodNodeSelector and PodTolerationRestriction admission
# plugins: one copy, shared by the e2e tests and the operator benchmark.
KWOK_PLACEMENT: dict[str, str] = json.loads(
    (ROOT / "hack" / "cluster" / "kwok-placement.json").read_text()
)
# Issue 14's targets for the operator.
TARGET_COUNT = 200
TARGET_P50_S = 2.0
TARGET_P99_S = 10.0
TARGET_RSS_MIB = 150.0
TARGET_ROLLOUT_S = 2.0
CREATE_THREADS = 8


def cluster_paths() -> tuple[Path, Path]:
    """bin dir and kubeconfig of the local cluster (or MOORAGE_E2E_KUBECONFIG)."""
    out = subprocess.run(
        [str(ROOT / "hack" / "cluster" / "cluster.sh"), "paths"],
        text=True,
        capture_output=True,
        check=True,
    ).stdout
    values = dict(line.split("=", 1) for line in out.splitlines())
    kubeconfig = os.environ.get("MOORAGE_E2E_KUBECONFIG", values["kubeconfig"])
    return Path(values["bin_dir"]), Path(kubeconfig)


class Kubectl:
    """kubectl from the pinned bin dir, on one kubeconfig."""

    def __init__(self, bin_dir: Path, kubeconfig: Path) -> None:
        self.binary = str(bin_dir / "kubectl")
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig)}

    def __call__(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 300
    ) -> str:
        """Run kubectl; stdout as text (a failure says kubectl's stderr)."""
        done = subprocess.run(
            [self.binary, *args],
            env=self.env,
            input=stdin,
            text=True,
            capture_output=True,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout


def agent_manifest(name: str) -> dict[str, Any]:
    """A minimal AgentDeployment."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AgentDeployment",
        "metadata": {"name": name},
        "spec": {"image": IMAGE, "replicas": 1},
    }


def quantile(values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile of `values` (q in (0, 1])."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def spread(values: Sequence[float]) -> dict[str, float] | None:
    """p50/p95/p99/max of `values`, in seconds to the millisecond."""
    if not values:
        return None
    return {f"p{int(q * 100)}": round(quantile(values, q), 3) for q in (0.5, 0.95, 0.99)} | {
        "max": round(max(values), 3)
    }


def _stamp(value: str) -> float:
    stamp = datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")
    return stamp.replace(tzinfo=datetime.UTC).timestamp()


def _ready_condition(obj: dict[str, Any]) -> dict[str, Any]:
    for cond in (obj.get("status") or {}).get("conditions") or ():
        if cond.get("type") == "Ready":
            return dict(cond)
    return {}


class StatusWatch:
    """One watch on the namespace's AgentDeployments: when each generation was first seen
    handled (status.observedGeneration) and Ready, on the monotonic clock."""

    def __init__(self, custom: kubernetes.client.CustomObjectsApi, namespace: str) -> None:
        self.custom = custom
        self.namespace = namespace
        self.observed: dict[tuple[str, int], float] = {}
        self.ready: dict[tuple[str, int], float] = {}
        # creation → Ready's lastTransitionTime on the API server's clock (1 s steps).
        self.server_ready: dict[tuple[str, int], float] = {}
        self.events = 0
        self.lock = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="status-watch", daemon=True)

    def start(self) -> None:
        """Start the watch (a daemon thread: it ends with the benchmark)."""
        self._thread.start()

    def _see(self, obj: dict[str, Any], now: float) -> None:
        meta = obj["metadata"]
        key = (str(meta["name"]), int(meta.get("generation", 1)))
        status = obj.get("status") or {}
        ready = _ready_condition(obj)
        with self.lock:
            self.events += 1
            if status.get("observedGeneration") == key[1]:
                self.observed.setdefault(key, now)
            if (
                status.get("observedGeneration") == key[1]
                and ready.get("status") == "True"
                and ready.get("observedGeneration") == key[1]
                and key not in self.ready
            ):
                self.ready[key] = now
                stamp = ready.get("lastTransitionTime")
                if stamp:
                    self.server_ready[key] = _stamp(stamp) - _stamp(meta["creationTimestamp"])
            self.lock.notify_all()

    def _run(self) -> None:
        args = (GROUP, VERSION, self.namespace, PLURAL)
        while True:
            try:
                listing = self.custom.list_namespaced_custom_object(*args)
                now = time.monotonic()
                for item in listing.get("items") or ():
                    self._see(item, now)
                watch = kubernetes.watch.Watch()
                for event in watch.stream(
                    self.custom.list_namespaced_custom_object,
                    *args,
                    resource_version=listing["metadata"]["resourceVersion"],
                ):
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._see(event["object"], time.monotonic())
            except Exception:  # expired resourceVersion, dropped connection: list again
                time.sleep(0.2)

    def wait(self, done: Callable[[], bool], deadline: float) -> bool:
        """Block until `done()` (checked under the watch's lock) or the monotonic deadline."""
        with self.lock:
            while not done():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.lock.wait(timeout=min(left, 1.0))
            return True


def _when(obj: Any, condition: str) -> float | None:
    for cond in obj.status.conditions or ():
        if cond.type == condition and cond.status == "True":
            return float(cond.last_transition_time.timestamp())
    return None


def stages(
    core: kubernetes.client.CoreV1Api,
    apps: kubernetes.client.AppsV1Api,
    custom: kubernetes.client.CustomObjectsApi,
    namespace: str,
) -> dict[str, Any]:
    """Where each object's create→Ready went, on the API server's clock (1 s steps): p50 and
    max of each stage over the objects."""
    agents = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    deployments = {d.metadata.name: d for d in apps.list_namespaced_deployment(namespace).items}
    pods: dict[str, Any] = {}
    for pod in core.list_namespaced_pod(namespace).items:
        owner = (pod.metadata.labels or {}).get("app.kubernetes.io/instance")
        if owner and (
            owner not in pods
            or pod.metadata.creation_timestamp < pods[owner].metadata.creation_timestamp
        ):
            pods[owner] = pod  # the first pod of each object
    steps: dict[str, list[float]] = {
        "operator_created_deployment": [],
        "controllers_created_pod": [],
        "scheduler_bound_pod": [],
        "node_made_pod_ready": [],
        "operator_reported_ready": [],
    }
    for agent in agents:
        name = agent["metadata"]["name"]
        ready = _ready_condition(agent).get("lastTransitionTime")
        dep, pod = deployments.get(name), pods.get(name)
        if not ready or dep is None or pod is None:
            continue
        times = [
            _stamp(agent["metadata"]["creationTimestamp"]),
            dep.metadata.creation_timestamp.timestamp(),
            pod.metadata.creation_timestamp.timestamp(),
            _when(pod, "PodScheduled"),
            _when(pod, "Ready"),
            _stamp(ready),
        ]
        for values, (a, b) in zip(steps.values(), itertools.pairwise(times), strict=True):
            if a is not None and b is not None:
                values.append(b - a)
    return {
        step: {"p50": quantile(values, 0.5), "max": max(values)}
        for step, values in steps.items()
        if values
    }


def run_round(
    custom: kubernetes.client.CustomObjectsApi,
    watch: StatusWatch,
    namespace: str,
    count: int,
    timeout_s: float,
) -> tuple[dict[str, Any], list[str]]:
    """Create `count` AgentDeployments at once; seconds from each one's create to its Ready."""
    names = [f"bench-{count}-{i:03d}" for i in range(count)]
    sent: dict[str, float] = {}

    def create(name: str) -> None:
        sent[name] = time.monotonic()
        custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, agent_manifest(name)
        )

    batch_start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(CREATE_THREADS) as pool:
        list(pool.map(create, names))
    created_s = time.monotonic() - batch_start
    all_ready = watch.wait(
        lambda: all((n, 1) in watch.ready for n in names), batch_start + timeout_s
    )
    with watch.lock:
        per_object = [watch.ready[(n, 1)] - sent[n] for n in names if (n, 1) in watch.ready]
        from_batch = [watch.ready[(n, 1)] - batch_start for n in names if (n, 1) in watch.ready]
        server = [watch.server_ready[(n, 1)] for n in names if (n, 1) in watch.server_ready]
    result: dict[str, Any] = {
        "count": count,
        "ready": len(per_object),
        "create_requests_seconds": round(created_s, 3),
        "all_ready_seconds": round(max(from_batch), 3) if all_ready else None,
        "timed_out": not all_ready,
        "per_object_create_to_ready_seconds": spread(per_object),
        "from_first_create_seconds": spread(from_batch),
        "server_create_to_ready_seconds": spread(server),
    }
    return result, names


def plain_deployment(name: str) -> dict[str, Any]:
    """A Deployment like the operator's, for the floor (what the cluster alone needs)."""
    labels = {"app.kubernetes.io/name": "bench-floor", "app.kubernetes.io/instance": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "agent", "image": IMAGE}]},
            },
        },
    }


def run_floor(
    apps: kubernetes.client.AppsV1Api, namespace: str, count: int, timeout_s: float
) -> dict[str, Any]:
    """The floor: `count` plain Deployments created at once (no operator involved), seconds
    from each one's create to all of its replicas available. The operator cannot beat this."""
    names = [f"floor-{i:03d}" for i in range(count)]
    sent: dict[str, float] = {}
    available: dict[str, float] = {}
    lock = threading.Condition()

    def watch_available() -> None:
        while True:
            try:
                listing = apps.list_namespaced_deployment(namespace)
                stream = kubernetes.watch.Watch().stream(
                    apps.list_namespaced_deployment,
                    namespace,
                    resource_version=listing.metadata.resource_version,
                )
                for deployment in listing.items:
                    _floor_seen(deployment, available, lock)
                for event in stream:
                    _floor_seen(event["object"], available, lock)
            except Exception:  # expired or dropped: list again
                time.sleep(0.2)

    threading.Thread(target=watch_available, name="floor-watch", daemon=True).start()

    def create(name: str) -> None:
        sent[name] = time.monotonic()
        apps.create_namespaced_deployment(namespace, plain_deployment(name))

    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(CREATE_THREADS) as pool:
        list(pool.map(create, names))
    with lock:
        done = lock.wait_for(
            lambda: all(n in available for n in names), start + timeout_s - time.monotonic()
        )
        latencies = [available[n] - sent[n] for n in names if n in available]
    return {
        "count": count,
        "available": len(latencies),
        "timed_out": not done,
        "per_object_create_to_available_seconds": spread(latencies),
    }


def _floor_seen(deployment: Any, available: dict[str, float], lock: threading.Condition) -> None:
    status = deployment.status
    if status and (status.available_replicas or 0) >= 1 and (status.updated_replicas or 0) >= 1:
        with lock:
            available.setdefault(deployment.metadata.name, time.monotonic())
            lock.notify_all()


def run_rollouts(
    custom: kubernetes.client.CustomObjectsApi,
    apps: kubernetes.client.AppsV1Api,
    watch: StatusWatch,
    namespace: str,
    names: Sequence[str],
    trials: int,
    timeout_s: float,
) -> list[dict[str, Any]]:
    """Change one object's spec at a time (a new env value, so a new pod template); seconds
    until the operator has handled the generation and until it reports that generation Ready."""
    results = []
    picks = [names[(len(names) * (i + 1)) // (trials + 1)] for i in range(trials)]
    for name in picks:
        token = uuid.uuid4().hex[:8]
        start = time.monotonic()
        patched = custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            {"spec": {"env": [{"name": "BENCH_ROLLOUT", "value": token}]}},
            _content_type="application/merge-patch+json",
        )
        key = (name, int(patched["metadata"]["generation"]))
        done = watch.wait(lambda k=key: k in watch.ready, start + timeout_s)
        with watch.lock:
            ready_at = watch.ready.get(key)
            observed_at = watch.observed.get(key)
        deployment = apps.read_namespaced_deployment(name, namespace)
        env = deployment.spec.template.spec.containers[0].env or []
        results.append(
            {
                "object": name,
                "generation": key[1],
                "handled_seconds": None if observed_at is None else round(observed_at - start, 3),
                "ready_seconds": round(ready_at - start, 3) if done and ready_at else None,
                "deployment_has_change": any(
                    e.name == "BENCH_ROLLOUT" and e.value == token for e in env
                ),
                "deployment_rolled_out": (deployment.status.updated_replicas or 0)
                == (deployment.status.replicas or 0)
                == (deployment.status.available_replicas or 0)
                == 1,
            }
        )
        print(json.dumps(results[-1]), flush=True)
    return results


def service_account_kubeconfig(kubectl: Kubectl, path: Path) -> None:
    """A kubeconfig authenticating as the operator's ServiceAccount."""
    token = kubectl("create", "token", OPERATOR_SA, "-n", OPERATOR_NS, "--duration=2h").strip()
    admin = json.loads(kubectl("config", "view", "--raw", "--minify", "-o", "json"))
    cluster_name = admin["clusters"][0]["name"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": OPERATOR_SA, "user": {"token": token}}],
        "contexts": [{"name": "op", "context": {"cluster": cluster_name, "user": OPERATOR_SA}}],
        "current-context": "op",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)


def operator_pid(root: int) -> int:
    """The operator's Python process under `uv run` (uv itself is not the operator)."""
    for pid in process_tree(root):
        if pid == root:
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"agent-operator" in cmdline or b"agent_operator" in cmdline:
            return pid
    return root


@contextlib.contextmanager
def operator_process(
    kubectl: Kubectl, uv: str, workdir: Path, log_level: str, extra_env: dict[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    """The operator as its ServiceAccount, alive (liveness answered), stopped on exit."""
    op_kubeconfig = workdir / "kubeconfig"
    service_account_kubeconfig(kubectl, op_kubeconfig)
    port = 18080 + os.getpid() % 1000
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_")}
    env.update(
        KUBECONFIG=str(op_kubeconfig),
        AGENT_OPERATOR_LIVENESS=f"http://127.0.0.1:{port}/healthz",
        AGENT_OPERATOR_LOG_LEVEL=log_level,
    )
    env.update(extra_env)
    with (workdir / "operator.log").open("w") as log:
        proc = subprocess.Popen(
            [uv, "run", "--frozen", "agent-operator"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the operator did not come up; see {workdir}") from None
                time.sleep(0.5)
        time.sleep(2)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 14's operator targets: what was measured, what is wanted, met or not."""
    at_target = next((r for r in report["rounds"] if r["count"] == TARGET_COUNT), None)
    spread_ = (at_target or {}).get("per_object_create_to_ready_seconds") or {}
    timed_out = bool(at_target and at_target["timed_out"])
    rollouts = [r["ready_seconds"] for r in report["rollouts"]]
    worst_rollout = None if not rollouts or None in rollouts else max(rollouts)
    rows = [
        (
            f"{TARGET_COUNT} at once: per-object create→Ready p50",
            None if timed_out else spread_.get("p50"),
            TARGET_P50_S,
            "s",
        ),
        (
            f"{TARGET_COUNT} at once: per-object create→Ready p99",
            None if timed_out else spread_.get("p99"),
            TARGET_P99_S,
            "s",
        ),
        (
            "operator peak RSS (its Python process)",
            report["operator_rss_mib"]["peak"],
            TARGET_RSS_MIB,
            "MiB",
        ),
        (
            f"spec change on 1 of {TARGET_COUNT}: rolled out and Ready (worst of {len(rollouts)})",
            worst_rollout,
            TARGET_ROLLOUT_S,
            "s",
        ),
    ]
    return [
        {
            "target": name,
            "measured": measured,
            "wanted": f"<= {wanted} {unit}",
            "met": measured is not None and measured <= wanted,
        }
        for name, measured, wanted, unit in rows
    ]


def print_summary(report: dict[str, Any], out: Path) -> None:
    """The figures and the targets table, for a human."""
    for r in report["rounds"]:
        per = r["per_object_create_to_ready_seconds"] or {}
        print(
            f"{r['count']:>3} AgentDeployments: {r['ready']} Ready, all in "
            f"{r['all_ready_seconds']} s (creates took {r['create_requests_seconds']} s); "
            f"per object create→Ready p50 {per.get('p50')} s, p95 {per.get('p95')} s, "
            f"p99 {per.get('p99')} s, max {per.get('max')} s; operator CPU "
            f"{r['operator_cpu_seconds']} s; server clock (1 s steps) "
            f"{r['server_create_to_ready_seconds']}"
        )
        print(f"    stages (server clock, p50/max): {r['server_stages_seconds']}")
    for t in report["rollouts"]:
        print(
            f"spec change on {t['object']}: handled in {t['handled_seconds']} s, rolled out and "
            f"Ready in {t['ready_seconds']} s (Deployment has it: {t['deployment_has_change']})"
        )
    floor = report["floor_without_operator"]
    if floor:
        per = floor["per_object_create_to_available_seconds"] or {}
        print(
            f"floor: {floor['count']} plain Deployments, no operator: {floor['available']} "
            f"available; per object create→available p50 {per.get('p50')} s, p99 "
            f"{per.get('p99')} s, max {per.get('max')} s"
        )
    mib = report["operator_rss_mib"]
    print(
        f"operator RSS MiB: idle {mib['idle']}, peak {mib['peak']}, after {mib['after']} "
        f"(with uv run around it: peak {mib['peak_with_uv']})"
    )
    print(f"load average (1/5/15 min): {report['machine']['loadavg_1_5_15']}")
    rows = [("target", "measured", "wanted", "")] + [
        (t["target"], str(t["measured"]), t["wanted"], "met" if t["met"] else "NOT met")
        for t in report["targets"]
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    print(f"wrote {out}")


def main() -> int:
    """Run the benchmark and write its JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "operator.json")
    parser.add_argument("--counts", default=f"1,{TARGET_COUNT}")
    parser.add_argument("--rollouts", type=int, default=3, help="spec changes timed, one by one")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per round or change")
    parser.add_argument("--uv", default=os.environ.get("UV", "uv"))
    parser.add_argument(
        "--floor-count",
        type=int,
        default=TARGET_COUNT,
        help="plain Deployments created at once without the operator, for comparison (0: skip)",
    )
    parser.add_argument(
        "--operator-env",
        action="append",
        default=[],
        type=lambda item: tuple(item.split("=", 1)),
        metavar="NAME=VALUE",
        help="an environment variable for the operator (e.g. AGENT_OPERATOR_WORKERS=32)",
    )
    parser.add_argument("--operator-log-level", default="warning", choices=["info", "warning"])
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]

    bin_dir, kubeconfig = cluster_paths()
    kubectl = Kubectl(bin_dir, kubeconfig)
    kubectl("apply", "-k", str(ROOT / "manifests" / "crds"))
    kubectl("wait", "--for=condition=Established", "crd", "-l", "app.kubernetes.io/part-of=moorage")
    kubectl("apply", "-k", str(ROOT / "manifests" / "operator"))
    kubectl("scale", "-n", OPERATOR_NS, "deployment/moorage-operator", "--replicas=0")
    namespace = f"bench-operator-{uuid.uuid4().hex[:6]}"
    api = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    core = kubernetes.client.CoreV1Api(api)
    custom = kubernetes.client.CustomObjectsApi(api)
    apps = kubernetes.client.AppsV1Api(api)
    core.create_namespace({"metadata": {"name": namespace, "annotations": KWOK_PLACEMENT}})
    workdir = Path(tempfile.mkdtemp(prefix="operator-bench-"))
    rounds: list[dict[str, Any]] = []
    rollouts: list[dict[str, Any]] = []
    floor: dict[str, Any] | None = None
    try:
        watch = StatusWatch(custom, namespace)
        watch.start()
        with operator_process(
            kubectl, args.uv, workdir, args.operator_log_level, dict(args.operator_env)
        ) as proc:
            op = operator_pid(proc.pid)
            idle_rss = rss_kib([op])
            with RssSampler([op, proc.pid], interval_s=0.1, tree=True) as sampler:
                for count in counts:
                    cpu_before = cpu_seconds([op])
                    result, names = run_round(custom, watch, namespace, count, args.timeout)
                    result["server_stages_seconds"] = stages(core, apps, custom, namespace)
                    if count == max(counts) and not result["timed_out"]:
                        rollouts = run_rollouts(
                            custom, apps, watch, namespace, names, args.rollouts, args.timeout
                        )
                    result["operator_cpu_seconds"] = round(cpu_seconds([op]) - cpu_before, 2)
                    rounds.append(result)
                    print(json.dumps(result), flush=True)
                    # Next round from an empty namespace (children go by ownerReference).
                    kubectl("delete", "agentdeployments", "--all", "-n", namespace, "--wait=true")
            after_rss = rss_kib([op])
        if args.floor_count > 0:
            # After the operator has stopped: the cluster alone, on the same namespace.
            floor = run_floor(apps, namespace, args.floor_count, args.timeout)
            print(json.dumps(floor), flush=True)
    finally:
        with contextlib.suppress(ApiException):
            core.delete_namespace(namespace)

    report: dict[str, Any] = {
        "benchmark": "operator: AgentDeployments created at once until Ready, spec change rollout",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            # Shared machine: the load says how much else competed for the CPUs meanwhile.
            "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        },
        "cluster": "kwokctl binary runtime, pods on kwok nodes (Ready without running)",
        "clock": "monotonic, this process: from each object's create (or patch) request to the "
        "watch event reporting Ready for that generation",
        "rollout_signal": "status.observedGeneration and the Ready condition's observedGeneration "
        "equal the new metadata.generation and Ready is True: the operator applied the new "
        "template and its Deployment has every replica updated and available",
        "rounds": rounds,
        "rollouts": rollouts,
        "floor_without_operator": floor,
        "operator_rss_mib": {
            "idle": round(idle_rss / 1024, 1),
            "peak": round(sampler.peak[op] / 1024, 1),
            "after": round(after_rss / 1024, 1),
            "peak_with_uv": round(sampler.peak[proc.pid] / 1024, 1),
        },
        "operator_log": str(workdir / "operator.log"),
        "operator_env": dict(args.operator_env),
    }
    report["targets"] = targets(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_summary(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
