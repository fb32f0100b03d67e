"""Helpers of the real-node tests: images in the node, helm, a Redis on the host, load, probes."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import require
from tests.e2e.conftest import ROOT, Cluster, wait_until

CHART = ROOT / "charts" / "agent"
IMAGE_TAG = os.environ.get("IMAGE_TAG", "dev")
SERVICE_REPO = os.environ.get("SERVICE_IMAGE", "localhost/moorage/agent-service")
OPERATOR_REPO = os.environ.get("OPERATOR_IMAGE", "localhost/moorage/agent-operator")
NODE_NAME = "moorage-node"


def node_ip(cluster: Cluster) -> str:
    """The real node's InternalIP: this machine's own address on its default route."""
    out = cluster.kubectl_run(
        "get",
        "node",
        NODE_NAME,
        "-o",
        "jsonpath={.status.addresses[?(@.type=='InternalIP')].address}",
    ).stdout
    return out.strip()


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class HostRedis:
    """A redis-server on the node's address, reachable from pods; stopped by pid."""

    host: str
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", self.host, "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--protected-mode", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until(
            self.answers, f"redis-server on {self.host}:{self.port}", timeout=20, interval=0.1
        )

    def answers(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), 1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
        return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
        self.proc = None


@contextlib.contextmanager
def host_redis(cluster: Cluster) -> Iterator[HostRedis]:
    require(shutil.which("redis-server") is not None, "redis-server (make apt-deps)")
    ip = node_ip(cluster)
    redis = HostRedis(ip, free_port(ip))
    redis.start()
    try:
        yield redis
    finally:
        redis.stop()


def helm(cluster: Cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(cluster.helm), *args],
        env=cluster.env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def image_values(tag: str = IMAGE_TAG) -> list[str]:
    """The chart values that run the locally built image (no registry: never pulled)."""
    return [
        "--set", f"image.repository={SERVICE_REPO}",
        "--set", f"image.tag={tag}",
        "--set", "image.pullPolicy=Never",
    ]  # fmt: skip


def pods(cluster: Cluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    out = cluster.kubectl_run("get", "pods", "-n", namespace, "-l", selector, "-o", "json").stdout
    return list(json.loads(out)["items"])


def ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def service_url(cluster: Cluster, namespace: str, name: str) -> str:
    """http://<ClusterIP>:<port>, once it answers: reached from the host through kube-proxy's
    rules, which follow the Service's endpoints a moment after the pods are Ready."""
    svc = json.loads(
        cluster.kubectl_run("get", "service", name, "-n", namespace, "-o", "json").stdout
    )
    url = f"http://{svc['spec']['clusterIP']}:{svc['spec']['ports'][0]['port']}"

    def answers() -> bool:
        try:
            return get_json(f"{url}/readyz", timeout=5)[0] == 200
        except OSError:
            return False

    wait_until(answers, f"{url} to answer through kube-proxy", timeout=60, interval=0.5)
    return url


def post_json(url: str, body: dict[str, Any], timeout: float = 30) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def get_json(url: str, timeout: float = 30) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def stream_turn(url: str, message: str, timeout: float = 60) -> list[str]:
    """The event names of one streamed turn, read to its end."""
    request = urllib.request.Request(
        f"{url}/v1/chat/stream",
        data=json.dumps({"message": message}).encode(),
        headers={"Content-Type": "application/json"},
    )
    events: list[str] = []
    with urllib.request.urlopen(request, timeout=timeout) as response:
        for raw in response:
            line = raw.decode().strip()
            if line.startswith("event: "):
                events.append(line.removeprefix("event: "))
    return events


@dataclass
class Load:
    """Client loops sending chat turns to a URL until stopped; every outcome is counted."""

    url: str
    loops: int = 3
    pause: float = 0.0  # seconds each loop waits between turns
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _run(self, index: int) -> None:
        session: str | None = None
        while not self._stop.is_set():
            body: dict[str, Any] = {"message": f"loop {index} says hello"}
            if session:
                body["session_id"] = session
            try:
                status, answer = post_json(f"{self.url}/v1/chat", body, timeout=30)
            except OSError as err:
                with self._lock:
                    self.failures.append(f"{type(err).__name__}: {err}")
                continue
            with self._lock:
                if status == 200:
                    self.ok += 1
                    session = answer["session_id"]
                else:
                    self.failures.append(f"{status} {answer}")
            self._stop.wait(self.pause)

    def __enter__(self) -> Load:
        for i in range(self.loops):
            thread = threading.Thread(target=self._run, args=(i,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def count(self) -> int:
        with self._lock:
            return self.ok


def probe_counts(cluster: Cluster, pod: str, probe: str) -> dict[str, float]:
    """The kubelet's prober_probe_total for one pod's probe type, by result."""
    text = cluster.kubectl_run(
        "get", "--raw", f"/api/v1/nodes/{NODE_NAME}/proxy/metrics/probes"
    ).stdout
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("prober_probe_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        if labels.get("pod") == pod and labels.get("probe_type") == probe:
            counts[labels["result"]] = counts.get(labels["result"], 0) + float(
                line.rsplit(" ", 1)[1]
            )
    return counts


def wait_rollout(cluster: Cluster, namespace: str, deployment: str) -> None:
    cluster.kubectl_run(
        "rollout", "status", f"deployment/{deployment}", "-n", namespace, "--timeout=240s"
    )


def crictl(cluster: Cluster, *args: str) -> str:
    """crictl against the real node's containerd (CRI socket in the cluster directory)."""
    sock = f"unix://{Path(cluster.kubeconfig).parent / 'node' / 'containerd' / 'containerd.sock'}"
    result = subprocess.run(
        [str(cluster.bin_dir / "crictl"), "--runtime-endpoint", sock, "--image-endpoint", sock,
         "--timeout", "30s", *args],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, f"crictl {' '.join(args)}: {result.stderr}"
    return result.stdout


def container_pid(cluster: Cluster, pod: dict[str, Any]) -> int:
    """The host pid of a pod's first container's main process (crictl inspect)."""
    container_id = pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
    return int(json.loads(crictl(cluster, "inspect", "-o", "json", container_id))["info"]["pid"])


def post_json_with_headers(
    url: str, body: dict[str, Any], headers: dict[str, str], timeout: float = 30
) -> tuple[int, dict[str, Any]]:
    """`post_json` with extra request headers (e.g. an Idempotency-Key for a safe retry)."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


# --- Autoscaling (tests/e2e/test_autoscale_inflight.py, hack/autoscale/bench.py) ---------------


@contextlib.contextmanager
def custom_metrics(cluster: Cluster) -> Iterator[None]:
    """Prometheus and prometheus-adapter as host processes serving custom.metrics.k8s.io.

    Started and stopped with the README's `make autoscale-up` / `make autoscale-down`
    (hack/autoscale/autoscale.sh), for the cluster this session uses.
    """
    require(shutil.which("prometheus") is not None, "prometheus (make apt-deps)")
    built = subprocess.run(
        [str(ROOT / "hack" / "tools" / "build.sh"), "--dir", "prometheus-adapter"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    require(Path(built, "adapter").is_file(), "prometheus-adapter (make prometheus-adapter)")
    env = {**cluster.env, "CLUSTER_DIR": str(cluster.kubeconfig.parent)}
    make = ["make", "-s", "-C", str(ROOT)]
    up = subprocess.run(
        [*make, "autoscale-up"], env=env, capture_output=True, text=True, timeout=300
    )
    try:
        assert up.returncode == 0, f"make autoscale-up failed:\n{up.stdout}\n{up.stderr}"
        yield
    finally:
        down = subprocess.run(
            [*make, "autoscale-down"], env=env, capture_output=True, text=True, timeout=120
        )
        assert down.returncode == 0, f"make autoscale-down failed:\n{down.stderr}"


@dataclass
class Turn:
    """One chat turn of a load: when it started (monotonic), how long it took, how it ended."""

    start: float
    seconds: float
    streamed: bool
    error: str | None = None


def _turn(url: str, body: dict[str, Any], streamed: bool) -> tuple[str | None, str | None]:
    """(session id, error) of one whole or streamed turn; a stream must end with its reply."""
    path = "/v1/chat/stream" if streamed else "/v1/chat"
    request = urllib.request.Request(
        f"{url}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            if not streamed:
                return str(json.loads(response.read())["session_id"]), None
            events: list[str] = []
            session: str | None = None
            for raw in response:
                line = raw.decode().strip()
                if line.startswith("event: "):
                    events.append(line.removeprefix("event: "))
                elif line.startswith("data: ") and events and events[-1] == "reply":
                    session = json.loads(line.removeprefix("data: ")).get("session_id")
            if not events or events[-1] != "reply" or "delta" not in events:
                return None, f"cut stream: events {events[-5:]}"
            return session, None
    except urllib.error.HTTPError as err:
        return None, f"{err.code} {err.read()[:200]!r}"
    except OSError as err:
        return None, f"{type(err).__name__}: {err}"


@dataclass
class RampLoad:
    """A rising, bounded load: `step` client loops more every `every` seconds, up to `loops`.

    Odd loops stream their turns, even loops send whole ones; each loop keeps its session. Every
    turn is recorded; `stop` lets each loop finish the turn it is in, so a cut stream shows.
    """

    url: str
    loops: int
    step: int = 2
    every: float = 8.0
    turns: list[Turn] = field(default_factory=list)
    started: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _loop(self, index: int) -> None:
        session: str | None = None
        streamed = index % 2 == 1
        while not self._stop.is_set():
            body: dict[str, Any] = {"message": f"hello from client {index}"}
            if session:
                body["session_id"] = session
            start = time.monotonic()
            new_session, error = _turn(self.url, body, streamed)
            session = new_session or session
            with self._lock:
                self.turns.append(Turn(start, time.monotonic() - start, streamed, error))
            if error:
                self._stop.wait(0.5)

    def _ramp(self) -> None:
        running = 0
        while running < self.loops and not self._stop.is_set():
            for index in range(running, min(running + self.step, self.loops)):
                thread = threading.Thread(target=self._loop, args=(index,), daemon=True)
                thread.start()
                with self._lock:
                    self._threads.append(thread)
            running = min(running + self.step, self.loops)
            self._stop.wait(self.every)

    def __enter__(self) -> RampLoad:
        self.started = time.monotonic()
        ramp = threading.Thread(target=self._ramp, daemon=True)
        ramp.start()
        self._threads.append(ramp)
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in list(self._threads):
            thread.join(timeout=90)

    def failures(self) -> list[str]:
        with self._lock:
            return [t.error for t in self.turns if t.error]

    def ok(self, streamed: bool) -> int:
        with self._lock:
            return sum(1 for t in self.turns if not t.error and t.streamed == streamed)

    def latencies(self, since: float, until: float) -> list[float]:
        """Seconds of the turns that started in [since, until), sorted."""
        with self._lock:
            return sorted(t.seconds for t in self.turns if since <= t.start < until)


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of sorted values, nearest rank."""
    assert values, "no values"
    return values[min(len(values) - 1, max(0, round(q * len(values) + 0.5) - 1))]


@dataclass
class Sample:
    """One look at an HPA and its Deployment."""

    t: float
    desired: int
    ready: int
    metric: str


@dataclass
class ScaleWatch:
    """Polls an HPA and its Deployment every `interval` seconds, keeping every sample."""

    cluster: Cluster
    namespace: str
    name: str
    interval: float = 1.0
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def look(self) -> Sample:
        out = self.cluster.kubectl_run(
            "get", f"hpa/{self.name}", f"deployment/{self.name}", "-n", self.namespace,
            "-o", "json",
        ).stdout  # fmt: skip
        hpa, deployment = json.loads(out)["items"]
        status = hpa.get("status", {})
        metric = ""
        for current in status.get("currentMetrics") or []:
            if current["type"] == "Pods":
                metric = f"{current['pods']['current']['averageValue']} turns/pod"
            elif current["type"] == "Resource" and current["resource"]["name"] == "cpu":
                metric = f"{current['resource']['current'].get('averageUtilization')}% cpu"
        return Sample(
            time.monotonic(),
            int(status.get("desiredReplicas", 0)),
            int(deployment.get("status", {}).get("readyReplicas", 0)),
            metric,
        )

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(subprocess.SubprocessError, ValueError, KeyError):
                sample = self.look()
                with self._lock:
                    self.samples.append(sample)
            self._stop.wait(self.interval)

    def __enter__(self) -> ScaleWatch:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def last(self) -> Sample | None:
        with self._lock:
            return self.samples[-1] if self.samples else None

    def first(self, since: float, predicate: Callable[[Sample], bool]) -> float | None:
        """Seconds from `since` to the first sample matching `predicate`, if any."""
        with self._lock:
            for sample in self.samples:
                if sample.t >= since and predicate(sample):
                    return sample.t - since
        return None

    def most(self, since: float) -> tuple[int, int]:
        """The largest desired and ready counts seen since `since`."""
        with self._lock:
            seen = [s for s in self.samples if s.t >= since]
        return max((s.desired for s in seen), default=0), max((s.ready for s in seen), default=0)

    def metrics(self, since: float, until: float = float("inf")) -> list[str]:
        """The HPA's readings of its metric in [since, until)."""
        with self._lock:
            return [s.metric for s in self.samples if since <= s.t < until and s.metric]


@dataclass
class PodStreams:
    """One streaming client loop per Ready pod, straight to the pod's address (not the Service).

    Every pod has a stream in flight at almost every moment, so a pod the HPA removes is removed
    mid-stream. A loop ends when its pod, being deleted, no longer takes connections (refused or
    reset before any answer: no turn began); a stream that began and did not end with its reply
    is a failure. `deletions` keeps when each removed pod got SIGTERM (deletion start + drain),
    to the second (deletionTimestamp's precision).
    """

    cluster: Cluster
    namespace: str
    selector: str
    drain_s: float
    turns: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    deletions: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _stream(self, pod: str, url: str) -> None:
        while not self._stop.is_set():
            start = time.time()
            request = urllib.request.Request(
                f"{url}/v1/chat/stream",
                data=json.dumps({"message": f"hello {pod}"}).encode(),
                headers={"Content-Type": "application/json"},
            )
            try:
                response = urllib.request.urlopen(request, timeout=60)
            except urllib.error.HTTPError as err:
                with self._lock:
                    self.failures.append(f"{pod}: {err.code} {err.read()[:200]!r}")
                self._stop.wait(0.5)
                continue
            except OSError as err:
                with self._lock:
                    if pod in self.deletions:
                        return  # refused or reset before any answer: the pod is gone
                    self.failures.append(f"{pod}: {type(err).__name__}: {err}")
                self._stop.wait(0.5)
                continue
            events: list[str] = []
            try:
                with response:
                    for raw in response:
                        line = raw.decode().strip()
                        if line.startswith("event: "):
                            events.append(line.removeprefix("event: "))
            except OSError as err:
                events.append(f"{type(err).__name__}: {err}")
            with self._lock:
                if events[-1:] == ["reply"]:
                    self.turns.setdefault(pod, []).append((start, time.time()))
                else:
                    self.failures.append(f"{pod}: cut stream: {events[-4:]}")

    def _watch(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(subprocess.SubprocessError, ValueError, KeyError):
                for pod in pods(self.cluster, self.namespace, self.selector):
                    meta = pod["metadata"]
                    if meta.get("deletionTimestamp") and meta["name"] not in self.deletions:
                        # deletionTimestamp is the deletion's start plus the grace period; the
                        # kubelet sends SIGTERM when the preStop drain is over.
                        end = datetime.datetime.fromisoformat(meta["deletionTimestamp"])
                        began = end.timestamp() - meta["deletionGracePeriodSeconds"]
                        with self._lock:
                            self.deletions[meta["name"]] = began + self.drain_s
            self._stop.wait(0.5)

    def __enter__(self) -> PodStreams:
        for pod in pods(self.cluster, self.namespace, self.selector):
            if ready(pod) and not pod["metadata"].get("deletionTimestamp"):
                port = pod["spec"]["containers"][0]["ports"][0]["containerPort"]
                url = f"http://{pod['status']['podIP']}:{port}"
                name = pod["metadata"]["name"]
                self._threads.append(threading.Thread(target=self._stream, args=(name, url)))
        self._threads.append(threading.Thread(target=self._watch))
        for thread in self._threads:
            thread.daemon = True
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=90)

    def served_across_sigterm(self, pod: str) -> bool:
        """Whether a stream in flight when the pod's SIGTERM came finished with its reply."""
        with self._lock:
            sigterm = self.deletions[pod]
            return any(start <= sigterm <= end for start, end in self.turns.get(pod, []))
