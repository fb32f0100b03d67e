"""The README's "Clients, costs, streaming and traces" commands, run as a user would.

The tracing command is run by tests/integration/test_tracing.py, next to its collector.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

from tests.conftest import free_port
from tests.integration.conftest import service_env, wait_until
from tests.integration.test_readme import _blocks, _make_run, _ready, _section, _stop

README_KEYS = "/tmp/agent-keys"


def _client_commands() -> tuple[str, str, str, str]:
    """The keys file line, the `make run` line, the curl of a turn and the curl of a stream."""
    setup, stream = [b.strip().splitlines() for b in _blocks(_section("clients"))[:2]]
    keys, run, turn = setup
    (streamed,) = stream
    return keys, run, turn, streamed


def _sse(text: str) -> list[tuple[str, dict]]:
    """(event, data) of each server-sent event in a stream's text."""
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields["event"], json.loads(fields["data"])))
    return events


def _curl(command: str, port: int) -> str:
    argv = shlex.split(command.replace("127.0.0.1:8080", f"127.0.0.1:{port}"))
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30).stdout


def test_the_readme_runs_a_turn_and_a_stream_with_an_api_key_and_a_budget(tmp_path: Path) -> None:
    keys_line, run_line, turn_line, stream_line = _client_commands()
    keys_file = tmp_path / "agent-keys"
    subprocess.run(["bash", "-c", keys_line.replace(README_KEYS, str(keys_file))], check=True)
    words = shlex.split(run_line)
    assignments = [w for w in words if "=" in w and w.startswith("AGENT_")]
    assert words[len(assignments) :] == ["make", "run"]
    overrides = dict(a.split("=", 1) for a in assignments)
    assert overrides["AGENT_API_KEYS_FILE"] == README_KEYS
    overrides["AGENT_API_KEYS_FILE"] = str(keys_file)
    port = free_port()
    env = service_env(AGENT_PORT=str(port), AGENT_DRAIN_DELAY_S="0", **overrides)
    log = tmp_path / "make-run-clients.log"
    proc = _make_run(env, log)
    try:
        wait_until(lambda: _ready(port), 120, "`make run` with API keys to be ready")
        answer = json.loads(_curl(turn_line, port))
        assert answer["reply"] == "echo: hello"
        usage = answer["usage"]
        assert usage["input_tokens"] > 0
        assert usage["output_tokens"] == 2
        price = json.loads(overrides["AGENT_MODEL_PRICES"])["echo"]
        expected = (usage["input_tokens"] * price["input"] + 2 * price["output"]) / 1e6
        assert abs(usage["cost_usd"] - expected) < 1e-8

        # The same request without its key is refused.
        keyless = turn_line.replace("-H 'Authorization: Bearer change-me-0123456789abcdef'", "")
        assert "Authorization" not in keyless
        refused = json.loads(_curl(keyless, port))
        assert refused["error"] == "unauthorized"

        events = _sse(_curl(stream_line, port))
        assert [name for name, _ in events] == ["session", *["delta"] * 4, "reply"]
        assert [data["content"] for name, data in events if name == "delta"] == [
            "echo: ",
            "hello ",
            "streaming ",
            "world",
        ]
        assert events[-1][1]["usage"]["output_tokens"] == 4
    finally:
        _stop(proc)
    output = log.read_text(errors="replace")
    assert "change-me-0123456789abcdef" not in output
    assert '"client":"team-a"' in output
