"""Property-based testing of the service against its own OpenAPI document."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.integration.conftest import Redis


def test_schemathesis_finds_no_server_error_and_no_response_breaking_the_schema(
    start_service, redis_server: Redis, tmp_path: Path
) -> None:
    service = start_service(AGENT_SESSION_URL=redis_server.url, AGENT_LOG_LEVEL="warning")
    service.wait_ready()
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    assert st is not None, "schemathesis is a dev dependency"
    result = subprocess.run(
        [
            st, "run", service.url + "/openapi.json",
            "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
            "response_schema_conformance",
            "--phases", "examples,coverage,fuzzing",
            "--max-examples", "40",
            "--workers", "2",
            "--seed", "20261126",
            "--report-dir", str(tmp_path),
        ],
        capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    cases = [int(n) for n in re.findall(r"(\d+) passed", result.stdout)]
    assert sum(cases) >= 50, result.stdout[-3000:]  # it really generated and sent cases
