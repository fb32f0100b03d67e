"""`make dev` on the local cluster, run as the README says, with real containers on the real node.

skaffold (profile `local`) builds both images with buildah, loads them into the node, deploys
the chart and the operator, rebuilds and redeploys when a source file changes, and removes what
it deployed on Ctrl-C. The test works on a copy of the checkout, so its edit never touches the
repository.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, Cluster, wait_until
from tests.e2e.realnode import SERVICE_REPO, post_json, service_url

NAMESPACE = "default"
RELEASE = "agent"
PROVIDERS = Path("service/src/agent_service/providers.py")
ORIGINAL_REPLY = 'ModelReply(f"echo: {prompt}")'
EDITED_REPLY = 'ModelReply(f"echo, edited: {prompt}")'
# Each pass builds both images (a few minutes each with buildah on vfs) and rolls two pods.
BUILD_AND_DEPLOY_S = 1200


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    body = text.split("<!-- section: skaffold-local -->")[1].split("<!-- /section:")[0]
    blocks = re.findall(r"```sh\n(.*?)```", body, re.DOTALL)
    return [line for b in blocks for line in b.splitlines() if line.strip()]


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of the working tree (tracked and new files, nothing ignored)."""
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout.decode()
    copy = tmp_path / "moorage"
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    return copy


def _release_exists(cluster: Cluster) -> bool:
    out = cluster.kubectl_run(
        "get", "deployments", "-n", NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}",
        "-o", "name",
    ).stdout  # fmt: skip
    return bool(out.strip())


@pytest.fixture
def dev_cluster(cluster: Cluster, checkout: Path) -> Iterator[Cluster]:
    """The local cluster without the dev deployment; whatever the test deployed goes after."""
    assert not _release_exists(cluster), f"a release {RELEASE} already runs in {NAMESPACE}"
    try:
        yield cluster
    finally:
        if _release_exists(cluster):
            subprocess.run(
                ["make", "-C", str(checkout), "dev-delete"], env=cluster.env, timeout=300,
                check=False,
            )  # fmt: skip
        # skaffold deletes the operator's manifests with its CRDs; later tests expect them.
        for crd in ("agentdeployments.yaml", "kopf-peering.yaml"):
            cluster.kubectl_run("apply", "-f", str(ROOT / "manifests/crds" / crd))


def _make(checkout: Path, cluster: Cluster, target: str, log: Path) -> None:
    with log.open("ab") as out:
        result = subprocess.run(
            ["make", "-C", str(checkout), target], env=cluster.env, stdout=out,
            stderr=subprocess.STDOUT, timeout=BUILD_AND_DEPLOY_S, check=False,
        )  # fmt: skip
    assert result.returncode == 0, f"make {target} failed:\n{log.read_text()[-4000:]}"


def _reply(url: str, message: str = "hello") -> str:
    try:
        status, body = post_json(f"{url}/v1/chat", {"message": message}, timeout=10)
    except OSError:
        return ""
    return str(body.get("reply", "")) if status == 200 else ""


def _as_in_a_terminal() -> None:
    """SIGINT as a terminal's foreground job has it. A runner that starts the suite in the
    background without job control (`cmd &` in a script) passes SIGINT ignored to its children,
    and a shell cannot trap a signal ignored at its start: Ctrl-C would reach no one."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _service_exists(cluster: Cluster) -> bool:
    got = cluster.kubectl_run("get", "service", RELEASE, "-n", NAMESPACE, check=False)
    return got.returncode == 0


def _service_image(cluster: Cluster) -> str:
    return cluster.kubectl_run(
        "get", "deployment", RELEASE, "-n", NAMESPACE,
        "-o", "jsonpath={.spec.template.spec.containers[0].image}",
    ).stdout  # fmt: skip


def _operator_image(cluster: Cluster) -> str:
    return cluster.kubectl_run(
        "get", "deployment", "moorage-operator", "-n", "moorage-system",
        "-o", "jsonpath={.spec.template.spec.containers[0].image}",
    ).stdout  # fmt: skip


# Three builds of an image and three rollouts, each bounded by BUILD_AND_DEPLOY_S.
@pytest.mark.timeout(3 * BUILD_AND_DEPLOY_S + 600)
def test_readme_dev_loop_builds_deploys_redeploys_on_edit_and_cleans_up(
    dev_cluster: Cluster, checkout: Path, tmp_path: Path
) -> None:
    cluster = dev_cluster
    commands = readme_commands()
    assert commands == ["make cluster-up", "make dev-run", "make dev-delete", "make dev"]
    log = tmp_path / "make.log"

    # make cluster-up: a no-op on the running cluster. make dev-run: build, load, deploy once.
    _make(checkout, cluster, "cluster-up", log)
    _make(checkout, cluster, "dev-run", log)
    image = _service_image(cluster)
    assert image.startswith(f"{SERVICE_REPO}:"), image
    url = service_url(cluster, NAMESPACE, RELEASE)
    assert _reply(url) == "echo: hello"
    # The operator in the cluster runs the image skaffold built beside the service's.
    cluster.kubectl_run(
        "rollout", "status", "deployment/moorage-operator", "-n", "moorage-system", "--timeout=300s"
    )

    # make dev-delete: everything dev-run deployed is gone.
    _make(checkout, cluster, "dev-delete", log)
    wait_until(lambda: not _release_exists(cluster), "dev-run's deployment to go", timeout=120)

    # make dev: deploy, then redeploy when a source file changes; Ctrl-C cleans up.
    with (tmp_path / "dev.log").open("wb") as out:
        dev = subprocess.Popen(
            ["make", "-C", str(checkout), "dev"], env=cluster.env, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_as_in_a_terminal,
        )  # fmt: skip
    try:

        def serving(expected: str) -> bool:
            assert dev.poll() is None, (tmp_path / "dev.log").read_text()[-4000:]
            # The release is recorded before helm creates its objects: wait for the Service.
            if not _release_exists(cluster) or not _service_exists(cluster):
                return False
            return _reply(service_url(cluster, NAMESPACE, RELEASE)) == expected

        wait_until(lambda: serving("echo: hello"), "make dev to serve", timeout=BUILD_AND_DEPLOY_S)
        first = _service_image(cluster)
        # skaffold takes its baseline of the sources after the deploy: an edit before this line
        # is part of the baseline and triggers nothing.
        wait_until(
            lambda: "Watching for changes..." in (tmp_path / "dev.log").read_text(),
            "skaffold to watch the sources",
            timeout=120,
        )
        # The whole deploy is done by now (skaffold deploys the chart first, then the manifests).
        operator_image = _operator_image(cluster)

        source = checkout / PROVIDERS
        text = source.read_text()
        assert text.count(ORIGINAL_REPLY) == 1
        source.write_text(text.replace(ORIGINAL_REPLY, EDITED_REPLY))
        wait_until(
            lambda: serving("echo, edited: hello"),
            "make dev to rebuild and redeploy the edited service",
            timeout=BUILD_AND_DEPLOY_S,
        )
        assert _service_image(cluster) != first
        # Only the artifact whose inputs changed was rebuilt (its own dependency paths).
        assert _operator_image(cluster) == operator_image

        # Ctrl-C, as in a terminal: the whole foreground process group gets SIGINT.
        os.killpg(dev.pid, signal.SIGINT)
        dev.wait(timeout=300)
    finally:
        if dev.poll() is None:  # a failure above: SIGTERM is forwarded to skaffold too
            os.killpg(dev.pid, signal.SIGTERM)
            try:
                dev.wait(timeout=300)
            except subprocess.TimeoutExpired:
                os.killpg(dev.pid, signal.SIGKILL)
                dev.wait(timeout=30)
    log_text = (tmp_path / "dev.log").read_text()
    assert not _release_exists(cluster), log_text[-4000:]
    # hack/dev/skaffold.sh stopped the podman it started and removed its socket directory.
    (run_dir,) = set(re.findall(r"Docker API for skaffold: unix://(\S+)/docker\.sock", log_text))
    assert not Path(run_dir).exists()
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert run_dir not in ps, ps
