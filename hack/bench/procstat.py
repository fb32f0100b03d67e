"""What a process costs, read from /proc: resident memory, CPU time, its children and workers.

Shared by `make bench` (the service's workers) and `make bench-operator` (the operator under
`uv run`). A process that ended meanwhile counts for nothing rather than failing the run.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path


def _read(pid: int, name: str) -> str:
    try:
        return Path(f"/proc/{pid}/{name}").read_text()
    except OSError:
        return ""


def process_tree(pid: int) -> Iterator[int]:
    """`pid` and its live descendants (e.g. uv run → python)."""
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            # Every thread's children: uv spawns the interpreter from a worker thread.
            children = [
                int(child)
                for task in Path(f"/proc/{current}/task").iterdir()
                for child in (task / "children").read_text().split()
            ]
        except OSError:
            continue
        yield current
        pending.extend(children)


def worker_pids(pid: int) -> list[int]:
    """The uvicorn worker processes of a server: its spawned children, or itself with one."""
    workers = [
        child
        for child in process_tree(pid)
        # multiprocessing's spawn also starts a resource tracker; only spawn_main runs a worker.
        if child != pid and b"spawn_main" in _cmdline(child)
    ]
    return sorted(workers) or [pid]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def rss_kib(pids: Iterable[int]) -> int:
    """Resident set of the given processes together, in KiB."""
    return sum(
        int(line.split()[1])
        for pid in pids
        for line in _read(pid, "status").splitlines()
        if line.startswith("VmRSS:")
    )


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU time the given processes have used so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        stat = _read(pid, "stat")
        if stat:
            fields = stat.rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


class RssSampler:
    """The peak RSS (KiB) of each of `pids` (with its descendants if `tree`) while a block runs."""

    def __init__(self, pids: list[int], interval_s: float = 0.25, tree: bool = False) -> None:
        self.pids = pids
        self.interval_s = interval_s
        self.tree = tree
        self.peak = dict.fromkeys(pids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            for pid in self.pids:
                now = rss_kib(process_tree(pid) if self.tree else [pid])
                self.peak[pid] = max(self.peak[pid], now)
