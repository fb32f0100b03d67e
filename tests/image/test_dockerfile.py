"""The Dockerfile itself: hadolint clean, and the properties the images rely on."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def test_dockerfile_is_hadolint_clean() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint), str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_image_defaults_to_a_pinned_official_slim_python_311() -> None:
    match = re.search(r"^ARG BASE_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert match
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", match.group(1))


def test_service_is_the_default_target_and_operator_a_named_one() -> None:
    stages = re.findall(r"^FROM \S+ AS (\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert stages[-1] == "service"
    assert "operator" in stages


def test_dependencies_install_from_the_lock_before_the_code_is_copied() -> None:
    text = DOCKERFILE.read_text()
    for package in ("moorage-service", "moorage-operator"):
        deps = text.index(f"--package {package} --no-install-workspace")
        code = text.index(f"COPY {package.removeprefix('moorage-')}/src")
        assert deps < code
        assert "uv sync --frozen --no-dev" in text[deps - 60 : deps]
