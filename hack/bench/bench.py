"""`make bench`: the service against its baselines, side by side, in one bounded run.

Starts a local redis-server and real processes of the service and of the baseline apps
(hack/bench/floor.py) on free loopback ports, drives them with wrk, and measures cold start and
memory (scenarios.py, load.py, processes.py, procstat.py). Writes bench.json and bench.png into
the output folder, prints a table with each target met / NOT MET (report.py), and (in a full
run) regenerates docs/benchmarks.md.

Environment: BENCH_QUICK=1 for a smoke run of a few seconds per scenario (docs left alone),
BENCH_OUT for the output folder (default bench-out/), BENCH_ROUNDS, BENCH_DURATION_S,
BENCH_WRK_THREADS, BENCH_DOCS (path of the generated page, empty to skip it), BENCH_PYCACHE
(bytecode cache of the processes started here), BENCH_CANDIDATES (name=git-ref,…: other versions
of the service in the chat scenario).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from processes import ROOT
from report import chart, docs_page, markdown, summarise
from scenarios import FULL, QUICK, candidates_from_env, measure, prerequisites_missing


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """A SIGTERM (e.g. a CI timeout) still stops every process this run started."""

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main() -> int:
    """Pick the profile from the environment, run, print the table and where the files are."""
    quick = os.environ.get("BENCH_QUICK", "") not in ("", "0")
    base = QUICK if quick else FULL
    profile = dataclasses.replace(
        base,
        rounds=int(os.environ.get("BENCH_ROUNDS", base.rounds)),
        duration_s=int(os.environ.get("BENCH_DURATION_S", base.duration_s)),
    )
    out = Path(os.environ.get("BENCH_OUT") or ROOT / "bench-out").resolve()
    docs_env = os.environ.get("BENCH_DOCS")
    if docs_env is None:
        docs: Path | None = None if quick else ROOT / "docs" / "benchmarks.md"
    else:
        docs = Path(docs_env).resolve() if docs_env else None
    if "--render-only" in sys.argv[1:]:
        # Regenerate the page from the last full run's bench.json, e.g. after editing HISTORY.md.
        summary = json.loads((out / "bench.json").read_text())
        if summary["quick"]:
            sys.stderr.write("bench: the last run was a quick one; its figures stay out of docs\n")
            return 2
        target = docs or ROOT / "docs" / "benchmarks.md"
        target.write_text(docs_page(summary))
        print(f"wrote {target}")
        return 0
    missing = prerequisites_missing()
    if missing:
        sys.stderr.write(f"bench: needs {' and '.join(missing)} on PATH (make apt-deps)\n")
        return 2
    candidates = candidates_from_env()
    began = time.monotonic()
    logs = out / "logs"
    shutil.rmtree(logs, ignore_errors=True)  # one run's logs only (a full run writes ~30 MB)
    logs.mkdir(parents=True)
    with sigterm_as_interrupt():
        measured = measure(profile, logs, candidates)
    summary = summarise(measured, profile)
    (out / "bench.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "bench.md").write_text(markdown(summary))
    chart(summary, out / "bench.png")
    if docs is not None:
        docs.write_text(docs_page(summary))
    print(markdown(summary))
    print(f"wrote {out / 'bench.json'}, {out / 'bench.png'}, {out / 'bench.md'}")
    if docs is not None:
        print(f"wrote {docs}")
    print(f"took {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
