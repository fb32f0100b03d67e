"""The operator image: same hardening as the service, its own entrypoint and dependencies."""

from __future__ import annotations

from pathlib import Path

from tests.image.conftest import Image, run_image, stop


def test_operator_image_runs_as_numeric_non_root(operator_image: Image) -> None:
    user, _, group = operator_image.user.partition(":")
    assert user.isdigit()
    assert int(user) > 0
    assert group.isdigit()
    assert operator_image.config["Entrypoint"] == ["agent-operator"]


def test_operator_code_and_kopf_import_on_a_read_only_root(
    operator_image: Image, tmp_path: Path
) -> None:
    running = run_image(
        operator_image,
        ["python3", "-c", "import agent_operator, kopf, kubernetes; print('ok')"],
        tmp_path,
    )
    assert running.proc.wait(timeout=120) == 0, running.log.read_text()
    assert running.log.read_text().strip().endswith("ok")
    stop(running)


def test_operator_image_carries_no_service_code(operator_image: Image) -> None:
    site = list((operator_image.rootfs / "app" / ".venv" / "lib").glob("python3*/site-packages"))
    assert site
    assert (site[0] / "agent_operator").is_dir()
    assert not (site[0] / "agent_service").exists()
    assert not (site[0] / "fastapi").exists()


def test_each_image_is_labelled_with_its_own_title(
    operator_image: Image, service_image: Image
) -> None:
    assert operator_image.config["Labels"]["org.opencontainers.image.title"] == "moorage-operator"
    assert service_image.config["Labels"]["org.opencontainers.image.title"] == "moorage-service"
