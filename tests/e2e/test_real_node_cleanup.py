"""`make cluster-down` leaves the host as the real node found it (after the other e2e tests)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.e2e.conftest import CLUSTER_SH, KUBECONFIG_ENV, Cluster
from tests.e2e.realnode import NODE_NAME

CACHE_DIR = Path(os.environ.get("CACHE_DIR", Path.home() / ".cache" / "moorage"))
HOST_BEFORE = CACHE_DIR / "kwok" / "host-before.txt"


def _cluster_sh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLUSTER_SH), *args], capture_output=True, text=True, check=False, timeout=600
    )


def test_cluster_down_restores_sysctls_iptables_mounts_cgroups_links_and_paths(
    cluster: Cluster,
) -> None:
    assert KUBECONFIG_ENV not in os.environ, "this test deletes the local cluster"
    node = cluster.kubectl_run("get", "node", NODE_NAME, "-o", "name").stdout.strip()
    assert node == f"node/{NODE_NAME}"
    before = HOST_BEFORE.read_text()
    running = _cluster_sh("node", "host-state").stdout
    # The node did change the host while it ran (else this test would prove nothing).
    assert running != before
    assert "running kubelet" in running
    assert "moorage0" in running

    down = _cluster_sh("down")
    assert down.returncode == 0, down.stderr[-4000:]
    after = _cluster_sh("node", "host-state").stdout
    assert after == before
    for process in ("kubelet", "containerd", "kube-proxy", "coredns", "metrics-server"):
        assert f"running {process}" not in after

    # The remaining e2e tests (and the session fixture's own down) find a cluster again.
    up = _cluster_sh("up")
    assert up.returncode == 0, up.stderr[-4000:]
