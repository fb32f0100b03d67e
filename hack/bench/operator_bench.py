"""Operator benchmark: time from `kubectl apply` to Ready for 1 and 50 AgentDeployments, and RSS.

Runs the real operator (`uv run agent-operator`, as its ServiceAccount) against the local
cluster (hack/cluster/cluster.sh) or MOORAGE_E2E_KUBECONFIG, prints the figures and writes JSON.
Not a test: nothing here asserts; the numbers are for the notes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import yaml
from procstat import RssSampler, cpu_seconds, process_tree, rss_kib

ROOT = Path(__file__).resolve().parents[2]
OPERATOR_NS = "moorage-system"
OPERATOR_SA = "moorage-operator"


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

    def __call__(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        """Run kubectl; stdout as text."""
        return subprocess.run(
            [self.binary, *args],
            env=self.env,
            input=stdin,
            text=True,
            capture_output=True,
            check=check,
            timeout=300,
        ).stdout


def agent_manifest(name: str, image: str) -> dict[str, Any]:
    """A minimal AgentDeployment."""
    return {
        "apiVersion": "moorage.dev/v1beta1",
        "kind": "AgentDeployment",
        "metadata": {"name": name},
        "spec": {"image": image, "replicas": 1},
    }


def run_round(kubectl: Kubectl, namespace: str, count: int) -> dict[str, Any]:
    """Apply `count` AgentDeployments at once; seconds until each, and all, report Ready."""
    names = [f"bench-{count}-{i:03d}" for i in range(count)]
    items = [agent_manifest(n, "localhost/moorage/agent-service:dev") for n in names]
    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
    start = time.monotonic()
    # Server-side apply: one request per object, so the clock measures the operator, not kubectl.
    kubectl("apply", "--server-side", "-n", namespace, "-f", "-", stdin=body)
    applied = time.monotonic() - start
    ready_at: dict[str, float] = {}
    deadline = start + 600
    while len(ready_at) < count and time.monotonic() < deadline:
        listed = json.loads(kubectl("get", "agentdeployments", "-n", namespace, "-o", "json"))
        now = time.monotonic() - start
        for obj in listed["items"]:
            status = obj.get("status") or {}
            name = obj["metadata"]["name"]
            if name in names and status.get("state") == "Ready" and name not in ready_at:
                ready_at[name] = now
        time.sleep(0.2)
    times = sorted(ready_at.values())
    result: dict[str, Any] = {
        "count": count,
        "ready": len(times),
        "apply_seconds": round(applied, 3),
        "all_ready_seconds": round(times[-1], 3) if len(times) == count else None,
    }
    if times:
        result["p50_seconds"] = round(statistics.median(times), 3)
        result["p95_seconds"] = round(times[max(0, int(len(times) * 0.95) - 1)], 3)
        result["first_seconds"] = round(times[0], 3)
    # Per object, from the server's own timestamps (1 s resolution): creation → Ready=True.
    listed = json.loads(kubectl("get", "agentdeployments", "-n", namespace, "-o", "json"))
    latencies = sorted(
        _stamp(cond["lastTransitionTime"]) - _stamp(obj["metadata"]["creationTimestamp"])
        for obj in listed["items"]
        for cond in (obj.get("status") or {}).get("conditions") or ()
        if cond["type"] == "Ready" and cond["status"] == "True"
    )
    if latencies:
        result["server_create_to_ready_seconds"] = {
            "p50": statistics.median(latencies),
            "p95": latencies[max(0, int(len(latencies) * 0.95) - 1)],
            "max": latencies[-1],
        }
    kubectl("delete", "agentdeployments", "--all", "-n", namespace, "--wait=true")
    return result


def _stamp(value: str) -> float:
    return datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").timestamp()


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


def main() -> int:
    """Run the benchmark and write its JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "operator.json")
    parser.add_argument("--counts", default="1,50")
    parser.add_argument("--uv", default=os.environ.get("UV", "uv"))
    args = parser.parse_args()

    bin_dir, kubeconfig = cluster_paths()
    kubectl = Kubectl(bin_dir, kubeconfig)
    kubectl("apply", "-k", str(ROOT / "manifests" / "crds"))
    kubectl("wait", "--for=condition=Established", "crd", "-l", "app.kubernetes.io/part-of=moorage")
    kubectl("apply", "-k", str(ROOT / "manifests" / "operator"))
    kubectl("scale", "-n", OPERATOR_NS, "deployment/moorage-operator", "--replicas=0")
    namespace = f"bench-operator-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", namespace)

    workdir = Path(tempfile.mkdtemp(prefix="operator-bench-"))
    op_kubeconfig = workdir / "kubeconfig"
    service_account_kubeconfig(kubectl, op_kubeconfig)
    port = 18080 + os.getpid() % 1000
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_")}
    env.update(
        KUBECONFIG=str(op_kubeconfig),
        AGENT_OPERATOR_LIVENESS=f"http://127.0.0.1:{port}/healthz",
        AGENT_OPERATOR_LOG_LEVEL="warning",
    )
    log_path = workdir / "operator.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [args.uv, "run", "--frozen", "agent-operator"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    rounds = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        time.sleep(2)
        idle_rss = rss_kib(process_tree(proc.pid))
        with RssSampler([proc.pid], interval_s=0.1, tree=True) as sampler:
            for count in (int(c) for c in args.counts.split(",")):
                cpu_before = cpu_seconds(process_tree(proc.pid))
                rounds.append(run_round(kubectl, namespace, count))
                cpu_used = cpu_seconds(process_tree(proc.pid)) - cpu_before
                rounds[-1]["operator_cpu_seconds"] = round(cpu_used, 2)
                print(json.dumps(rounds[-1]))
        after_rss = rss_kib(process_tree(proc.pid))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)

    report = {
        "benchmark": "operator apply-to-Ready",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            # Shared machine: the load says how much else competed for the CPUs meanwhile.
            "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        },
        "cluster": "kwokctl binary runtime (fake kwok nodes: pods Ready without running)",
        "rounds": rounds,
        "operator_rss_kib": {"idle": idle_rss, "peak": sampler.peak[proc.pid], "after": after_rss},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for r in rounds:
        print(
            f"{r['count']:>3} AgentDeployments: all Ready in {r['all_ready_seconds']} s "
            f"(p50 {r.get('p50_seconds')} s, p95 {r.get('p95_seconds')} s), "
            f"operator CPU {r['operator_cpu_seconds']} s; per object create→Ready "
            f"(server clock, 1 s steps) {r.get('server_create_to_ready_seconds')}"
        )
    mib = {k: round(v / 1024, 1) for k, v in report["operator_rss_kib"].items()}
    print(f"operator RSS MiB: idle {mib['idle']}, peak {mib['peak']}, after {mib['after']}")
    print(f"load average (1/5/15 min): {report['machine']['loadavg_1_5_15']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
