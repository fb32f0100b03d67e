"""`make cluster-down` leaves the host as the real node found it (after the other e2e tests)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.e2e.conftest import CLUSTER_SH, KUBECONFIG_ENV, NODE_IMAGES, Cluster, load_image
from tests.e2e.realnode import NODE_NAME

CACHE_DIR = Path(os.environ.get("CACHE_DIR", Path.home() / ".cache" / "moorage"))
HOST_BEFORE = CACHE_DIR / "kwok" / "host-before.txt"


def _cluster_sh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLUSTER_SH), *args], capture_output=True, text=True, check=False, timeout=600
    )


def test_a_second_cluster_up_leaves_the_running_node_alone(cluster: Cluster) -> None:
    """`make cluster-up` on a running cluster rewrites no node file: kube-proxy exits when its
    config file changes, and a second `up` once took the Services down that way."""
    assert KUBECONFIG_ENV not in os.environ, "this test runs cluster.sh up on the local cluster"
    node_dir = Path(cluster.kubeconfig).parent / "node"

    def state() -> tuple[dict[str, str], dict[str, tuple[int, int]]]:
        pids = {p.stem: p.read_text().strip() for p in (node_dir / "pids").glob("*.pid")}
        files = {
            str(f.relative_to(node_dir)): (f.stat().st_ino, f.stat().st_mtime_ns)
            for pattern in ("*.yaml", "*.kubeconfig", "Corefile", "containerd/config.toml",
                            "cni/net.d/*")
            for f in node_dir.glob(pattern)
        }  # fmt: skip
        return pids, files

    pids, files = state()
    assert {"kubelet", "containerd", "kube-proxy", "coredns", "metrics-server"} <= set(pids)
    assert "kube-proxy.yaml" in files
    assert "kube-proxy.kubeconfig" in files
    up = _cluster_sh("up")
    assert up.returncode == 0, up.stderr[-4000:]
    assert state() == (pids, files)


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

    # The remaining e2e tests (and the session fixture's own down) find a cluster again, with
    # the images the session fixture loaded at its start (the new node's containerd is empty).
    up = _cluster_sh("up")
    assert up.returncode == 0, up.stderr[-4000:]
    for image in NODE_IMAGES:
        load_image(image)
