"""The README's bench commands: `BENCH_QUICK=1 make bench` runs every scenario end to end.

The full `make bench` runs the same code for longer (3 rounds of 10 s instead of 1 of 2 s), so
the quick run stands for both here; no figure is asserted, only that each was measured.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
from pathlib import Path

from tests.conftest import require_binary

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs" / "benchmarks.md"
TARGETS = (
    "chat throughput vs floor",
    "chat p99 vs floor",
    "chat throughput vs plain FastAPI",
    "slow model vs ideal",
    "streamed turns, sustained vs ideal",
    "memory per in-flight stream (KiB)",
    "streamed turns with errors",
    "cold start median (s)",
    "idle RSS per worker (MiB)",
)


def _bench_commands() -> list[str]:
    section = README.split("<!-- section: bench -->")[1].split("<!-- /section: bench -->")[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
    return [line.split("#")[0].strip() for b in blocks for line in b.splitlines() if line.strip()]


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def test_the_readme_shows_the_full_and_the_quick_bench() -> None:
    assert _bench_commands() == ["make bench", "BENCH_QUICK=1 make bench"]


def test_quick_make_bench_measures_every_scenario_and_prints_each_target(tmp_path: Path) -> None:
    require_binary("wrk")
    require_binary("redis-server")
    (quick,) = [c for c in _bench_commands() if "BENCH_QUICK=1" in c]
    words = shlex.split(quick)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENT_", "BENCH_"))}
    env.update(w.split("=", 1) for w in words if "=" in w)
    env["BENCH_OUT"] = str(tmp_path / "out")
    docs_before = _digest(DOCS)

    done = subprocess.run(
        [*[w for w in words if "=" not in w], "-C", str(ROOT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for target in TARGETS:
        assert re.search(rf"\| {re.escape(target)} \|.*\| (met|NOT MET) \|", done.stdout), target
    summary = json.loads((tmp_path / "out" / "bench.json").read_text())
    measured = {(row["scenario"], row["subject"]): row for row in summary["table"]}
    assert set(measured) == {
        ("healthz", "service"),
        ("healthz", "floor"),
        ("chat", "service"),
        ("chat", "floor"),
        ("chat", "fastapi"),
        ("slow", "service"),
        ("slow", "floor"),
        ("workers", "w2"),
        ("stream", "service"),
        ("clients", "on"),
        ("clients", "off"),
        ("otel", "on"),
        ("otel", "off"),
    }
    for key, row in measured.items():
        assert row["requests"] > 0, key
    # Every answer was a success: e.g. no 503 when 256 connections burst onto the store.
    for run in summary["runs"]:
        assert run["errors"]["status"] == 0, run
    # The streamed turns ran to their end: a connection's turn each model latency, no timeouts.
    (stream,) = [run for run in summary["runs"] if run["scenario"] == "stream"]
    assert stream["errors"] == dict.fromkeys(stream["errors"], 0), stream
    assert stream["rss_peak_mib"][0] > stream["rss_idle_mib"][0] > 0
    assert len(summary["cold_start_s"]["service"]) == 2
    assert all(v > 0 for v in summary["rss_mib"]["idle_w2"])
    assert len(summary["rss_mib"]["idle_w2"]) == 2
    # Scenarios 8 and 9 print their on / off figures (no target: a price, not a pass mark).
    assert re.search(r"\| 8 API key \+ usage \+ budgets on / off: .*x; .*x; .*x \|", done.stdout)
    assert re.search(r"\| 9 OTLP trace export on / OTEL_\* unset: .*x; .*x; .*x \|", done.stdout)
    assert (tmp_path / "out" / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _digest(DOCS) == docs_before  # a quick run never rewrites the committed page
