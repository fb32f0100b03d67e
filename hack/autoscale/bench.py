"""make bench-autoscale: how fast an `inflight` HPA reacts to slow turns, next to a `cpu` HPA.

On the local cluster's real node, two releases of the chart side by side (one namespace each),
identical but for autoscaling.metric, get the same rising, bounded load of concurrent turns
(half streamed) through their Services while the echo model takes BENCH_MODEL_MS per call.
Prometheus and prometheus-adapter run as host processes (hack/autoscale/autoscale.sh) for the
run. Measured from the load's start: the HPA's first decision to add a pod, the first added pod
Ready, all BENCH_MAX pods Ready; p50/p99 turn latency during the ramp; then, after the load
falls, the time back to one pod. Prints the figures and the targets as met / NOT met, writes
$BENCH_OUT/autoscale.json and .md, and puts the figures in docs/benchmarks.md (its autoscale
section). Uses IMAGE_TAG's images (`make image`).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import os
import platform
import re
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.e2e.conftest import (  # noqa: E402
    REAL_PLACEMENT,
    Cluster,
    _paths,
    create_namespace,
    load_image,
)
from tests.e2e.realnode import (  # noqa: E402
    CHART,
    IMAGE_TAG,
    OPERATOR_REPO,
    SERVICE_REPO,
    RampLoad,
    ScaleWatch,
    custom_metrics,
    helm,
    host_redis,
    image_values,
    percentile,
    pods,
    service_url,
)

MAX = int(os.environ.get("BENCH_MAX", "4"))
PER_POD = 2
MODEL_MS = int(os.environ.get("BENCH_MODEL_MS", "2000"))
WINDOW_S = float(os.environ.get("BENCH_WINDOW_S", "180"))  # how long the ramp may take
OUT = Path(os.environ.get("BENCH_OUT", ROOT / "bench-out"))
DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- autoscale -->", "<!-- /autoscale -->"
RELEASE = "agent"
# Targets: one scrape + one HPA sync + a pod's start should be enough to add the first pod.
TARGETS = {
    "first_ready_s": 60.0,
    "all_ready_s": 120.0,
    "p99_ramp_vs_model": 1.5,
}


def cluster() -> Cluster:
    bin_dir, kubeconfig = _paths()
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return Cluster(
        kubeconfig=kubeconfig,
        kubectl=bin_dir / "kubectl",
        helm=bin_dir / "helm",
        helm3=bin_dir / "helm3",
        kind=bin_dir / "kind",
        skaffold=bin_dir / "skaffold",
        bin_dir=bin_dir,
        env=env,
    )


def poll(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(1)
    return True


def install(c: Cluster, namespace: str, metric: str, redis_url: str) -> None:
    values = {
        "autoscaling.enabled": "true",
        "autoscaling.metric": metric,
        "autoscaling.minReplicas": "1",
        "autoscaling.maxReplicas": str(MAX),
        "autoscaling.targetTurnsInFlightPerPod": str(PER_POD),
        "autoscaling.scaleUpStabilizationSeconds": "0",
        "autoscaling.scaleUpPods": str(MAX),
        "autoscaling.scaleDownStabilizationSeconds": "15",
        "autoscaling.scaleDownPods": str(MAX),
        "autoscaling.scaleDownPeriodSeconds": "15",
        "termination.drainDelaySeconds": "3",
        "extraEnv.AGENT_ECHO_LATENCY_MS": str(MODEL_MS),
        "session.url": redis_url,
    }
    sets = [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]
    helm(
        c, "install", RELEASE, str(CHART), "-n", namespace, *image_values(), *sets,
        "--wait", "--timeout", "180s",
    )  # fmt: skip


def seconds(value: float | None, digits: int = 1) -> str:
    return "none" if value is None else f"{value:.{digits}f} s"


def reads_metric(watch: ScaleWatch) -> bool:
    return bool((watch.last() or watch.look()).metric)


def measure(c: Cluster) -> dict[str, Any]:
    suffix = uuid.uuid4().hex[:6]
    namespaces = {"inflight": f"bench-inflight-{suffix}", "cpu": f"bench-cpu-{suffix}"}
    for name in namespaces.values():
        create_namespace(c, name, REAL_PLACEMENT)
    try:
        with host_redis(c) as redis, contextlib.ExitStack() as stack:
            for metric, ns in namespaces.items():
                install(c, ns, metric, redis.url)
            urls = {m: service_url(c, ns, RELEASE) for m, ns in namespaces.items()}
            watches = {
                m: stack.enter_context(ScaleWatch(c, ns, RELEASE)) for m, ns in namespaces.items()
            }
            for metric, watch in watches.items():
                if not poll(functools.partial(reads_metric, watch), 120):
                    raise SystemExit(f"the {metric} HPA never read its metric")
            inflight = watches["inflight"]
            start = time.monotonic()
            with contextlib.ExitStack() as ramp:
                loads = {m: ramp.enter_context(RampLoad(u, MAX * PER_POD)) for m, u in urls.items()}
                poll(lambda: (inflight.last() or inflight.look()).ready >= MAX, WINDOW_S)
                ramp_end = time.monotonic()
            stopped = time.monotonic()
            # The load falls to one whole and one streamed turn at a time on each release.
            with contextlib.ExitStack() as light:
                tails = {m: light.enter_context(RampLoad(u, 2)) for m, u in urls.items()}
                selector = f"app.kubernetes.io/instance={RELEASE}"
                back = poll(
                    lambda: (
                        (inflight.last() or inflight.look()).desired == 1
                        and len(pods(c, namespaces["inflight"], selector)) == 1
                    ),
                    240,
                )
                scaled_back = time.monotonic() - stopped if back else None
        results: dict[str, Any] = {}
        for metric, watch in watches.items():
            latencies = loads[metric].latencies(start, ramp_end)
            results[metric] = {
                "first_decision_s": watch.first(start, lambda s: s.desired > 1),
                "first_ready_s": watch.first(start, lambda s: s.ready > 1),
                "all_ready_s": watch.first(start, lambda s: s.ready >= MAX),
                "most_ready": watch.most(start)[1],
                "turns": len(latencies),
                "p50_s": percentile(latencies, 0.5) if latencies else None,
                "p99_s": percentile(latencies, 0.99) if latencies else None,
                "failures": len(loads[metric].failures()) + len(tails[metric].failures()),
                "metric_readings": watch.metrics(start, ramp_end)[-3:],
            }
        results["inflight"]["scaled_back_s"] = scaled_back
        return {"ramp_s": ramp_end - start, "results": results}
    finally:
        for name in namespaces.values():
            c.kubectl_run("delete", "namespace", name, "--wait=false", check=False)


def verdicts(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows = []
    inflight = results["inflight"]
    for key, what in (
        ("first_ready_s", "first added pod Ready"),
        ("all_ready_s", f"{MAX} pods Ready"),
    ):
        value = inflight[key]
        met = value is not None and value <= TARGETS[key]
        rows.append(
            (
                f"inflight: {what}",
                seconds(value),
                f"<= {TARGETS[key]:g} s",
                "met" if met else "NOT MET",
            )
        )
    cpu_added = results["cpu"]["first_decision_s"]
    rows.append(
        ("cpu: pods added under slow turns", "none" if cpu_added is None else seconds(cpu_added),
         "none (the point)", "met" if cpu_added is None else "NOT MET")
    )  # fmt: skip
    bound = TARGETS["p99_ramp_vs_model"] * MODEL_MS / 1000
    for metric in ("inflight", "cpu"):
        p99 = results[metric]["p99_s"]
        met = p99 is not None and p99 <= bound
        rows.append(
            (
                f"{metric}: p99 turn during the ramp",
                seconds(p99, 2),
                f"<= {bound:g} s",
                "met" if met else "NOT MET",
            )
        )
    return rows


def markdown(run: dict[str, Any]) -> str:
    r = run["results"]
    lines = [
        f"- Date: {run['date']}; machine: {run['machine']}; images `{run['image_tag']}`",
        f"- Load: echo model {MODEL_MS / 1000:g} s per call, 2 → {MAX * PER_POD} client loops "
        f"(+2 every 8 s, half streamed) on each release; HPA min 1, max {MAX}, inflight target "
        f"{PER_POD} turns/pod, cpu target 70 %; scrape 2 s, adapter relist 10 s, HPA sync 15 s",
        "",
        "| metric | HPA adds a pod | first added pod Ready | all pods Ready | most Ready "
        "| turns in ramp | p50 | p99 | failed turns (ramp + after) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for metric in ("inflight", "cpu"):
        m = r[metric]
        lines.append(
            f"| {metric} | {seconds(m['first_decision_s'])} | {seconds(m['first_ready_s'])} "
            f"| {seconds(m['all_ready_s'])} | {m['most_ready']} | {m['turns']} "
            f"| {seconds(m['p50_s'], 2)} | {seconds(m['p99_s'], 2)} | {m['failures']} |"
        )
    lines += [
        "",
        f"Ramp window {run['ramp_s']:.0f} s (until {MAX} inflight pods were Ready); the HPAs' "
        f"last readings in it: inflight {', '.join(r['inflight']['metric_readings'])}; "
        f"cpu {', '.join(r['cpu']['metric_readings'])}. After the load fell to 2 loops (one "
        f"whole, one streamed), back to 1 inflight pod in "
        f"{seconds(r['inflight']['scaled_back_s'])}.",
        "",
        "| target | measured | wanted | verdict |",
        "|---|--:|--:|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in run["verdicts"]]
    return "\n".join(lines) + "\n"


def docs_section(body: str) -> str:
    return f"""{BEGIN}
## Autoscaling: turns in flight vs CPU

Generated by `make bench-autoscale` (hack/autoscale/bench.py) on the local cluster's real node:
two releases of the chart, identical but for `autoscaling.metric`, under the same rising load
of slow turns; seconds are from the load's start. p99 latency is the model's either way: the
service has no concurrency cap, so one pod overlaps all of these turns; what `inflight` buys is
a bounded number of turns per pod (its memory, and the turns a lost pod takes with it).

{body}{END}
"""


def main() -> None:
    c = cluster()
    for image in (f"{SERVICE_REPO}:{IMAGE_TAG}", f"{OPERATOR_REPO}:{IMAGE_TAG}"):
        load_image(image)
    with custom_metrics(c):
        run = measure(c)
    run["verdicts"] = verdicts(run["results"])
    run["date"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    run["machine"] = f"{os.cpu_count()} cores, Linux {platform.release()}"
    run["image_tag"] = IMAGE_TAG
    body = markdown(run)
    print(body)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "autoscale.json").write_text(json.dumps(run, indent=2) + "\n")
    (OUT / "autoscale.md").write_text(body)
    page = DOCS.read_text()
    section = docs_section(body)
    if BEGIN in page:
        page = re.sub(f"{BEGIN}.*?{END}\n", lambda _: section, page, flags=re.S)
    else:
        page = page.rstrip("\n") + "\n\n" + section
    DOCS.write_text(page)
    print(f"wrote {OUT / 'autoscale.json'}, {OUT / 'autoscale.md'} and {DOCS}")


if __name__ == "__main__":
    main()
