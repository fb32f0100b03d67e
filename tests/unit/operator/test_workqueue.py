"""The keyed work queue: one worker per key, and a change while busy is processed once after."""

from __future__ import annotations

import threading

from agent_operator.workqueue import FULL, KeyedQueue, Pending, Resyncer

TIMEOUT = 10


class Recorder:
    """A queue pass that records calls and can be held inside a pass."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.inside = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.lock = threading.Lock()
        self.active: dict[str, int] = {}
        self.overlap = False

    def __call__(self, key: str) -> None:
        with self.lock:
            self.active[key] = self.active.get(key, 0) + 1
            self.overlap |= self.active[key] > 1
            self.calls.append(key)
        self.inside.set()
        assert self.release.wait(TIMEOUT)
        with self.lock:
            self.active[key] -= 1


def _hold(queue: KeyedQueue[str], recorder: Recorder, key: str) -> threading.Thread:
    """Start a pass on `key` in another thread and wait until it is inside it."""
    recorder.release.clear()
    recorder.inside.clear()
    thread = threading.Thread(target=queue.add, args=(key,))
    thread.start()
    assert recorder.inside.wait(TIMEOUT)
    return thread


def test_an_idle_key_is_processed_by_the_thread_that_adds_it() -> None:
    recorder = Recorder()
    queue = KeyedQueue(recorder)
    assert queue.add("a")
    assert recorder.calls == ["a"]
    assert queue.busy() == set()


def test_adds_while_busy_are_coalesced_into_one_more_pass_after() -> None:
    recorder = Recorder()
    queue = KeyedQueue(recorder)
    holder = _hold(queue, recorder, "a")
    assert not queue.add("a")
    assert not queue.add("a")
    assert not queue.add("a")
    recorder.release.set()
    holder.join(TIMEOUT)
    assert recorder.calls == ["a", "a"]
    assert queue.busy() == set()


def test_other_keys_are_not_held_up_by_a_busy_one() -> None:
    recorder = Recorder()
    queue = KeyedQueue(recorder)
    holder = _hold(queue, recorder, "a")
    done = threading.Thread(target=queue.add, args=("b",), kwargs={"work": lambda: None})
    done.start()
    done.join(TIMEOUT)
    assert not done.is_alive()
    recorder.release.set()
    holder.join(TIMEOUT)


def test_no_change_is_lost_and_no_key_has_two_workers_under_contention() -> None:
    # Each adder bumps the version, then adds; the last pass must have seen the last version.
    versions = {"v": 0}
    seen: list[int] = []
    guard = threading.Lock()
    active = {"n": 0, "max": 0}

    def process(_key: str) -> None:
        with guard:
            active["n"] += 1
            active["max"] = max(active["max"], active["n"])
            current = versions["v"]
        seen.append(current)
        with guard:
            active["n"] -= 1

    queue = KeyedQueue(process)

    def adder() -> None:
        for _ in range(300):
            with guard:
                versions["v"] += 1
            queue.add("k")

    threads = [threading.Thread(target=adder) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT * 3)
    assert active["max"] == 1
    assert seen[-1] == versions["v"] == 2400
    assert queue.busy() == set()


def test_an_exclusive_holder_waits_for_the_current_pass_and_then_repairs_what_came_meanwhile() -> (
    None
):
    recorder = Recorder()
    queue = KeyedQueue(recorder)
    holder = _hold(queue, recorder, "a")
    passes_running_at_entry: list[int] = []

    def spec_handler() -> None:
        with queue.exclusive("a"):
            with recorder.lock:
                passes_running_at_entry.append(recorder.active.get("a", 0))
            # A child event while the spec handler holds the key: deferred, not lost.
            assert not queue.add("a")

    thread = threading.Thread(target=spec_handler)
    thread.start()
    recorder.release.set()
    thread.join(TIMEOUT)
    holder.join(TIMEOUT)
    assert passes_running_at_entry == [0]  # it waited for the first pass to end
    assert recorder.calls == ["a", "a"]
    assert not recorder.overlap


def test_a_failing_dirty_pass_does_not_leave_the_key_busy() -> None:
    calls: list[str] = []

    def process(key: str) -> None:
        calls.append(key)
        raise RuntimeError("boom")

    queue = KeyedQueue(process)
    with queue.exclusive("a"):
        assert not queue.add("a")
    assert calls == ["a"]
    assert queue.busy() == set()


def test_a_retry_runs_once_after_its_delay_however_often_it_was_asked() -> None:
    processed: list[str] = []
    done = threading.Event()

    def process(key: str) -> None:
        processed.append(key)
        done.set()

    resyncer = Resyncer(KeyedQueue(process), list_keys=list, interval=0, active=lambda: True)
    resyncer.start()
    try:
        resyncer.later("a", 0.05)
        resyncer.later("a", 0.05)
        assert done.wait(TIMEOUT)
        done.clear()
        resyncer.later("b", 0.05)
        assert done.wait(TIMEOUT)
    finally:
        resyncer.stop()
    assert processed == ["a", "b"]


def test_the_periodic_pass_processes_every_listed_key() -> None:
    processed: list[str] = []
    done = threading.Event()

    def process(key: str) -> None:
        processed.append(key)
        if len(processed) >= 3:
            done.set()

    resyncer = Resyncer(
        KeyedQueue(process), list_keys=lambda: ["a", "b", "c"], interval=0.05, active=lambda: True
    )
    resyncer.start()
    try:
        assert done.wait(TIMEOUT)
    finally:
        resyncer.stop()
    assert processed[:3] == ["a", "b", "c"]


def test_nothing_is_resynced_while_another_instance_is_active() -> None:
    processed: list[str] = []
    asked = threading.Semaphore(0)

    def active() -> bool:
        asked.release()
        return False

    resyncer = Resyncer(
        KeyedQueue(processed.append), list_keys=lambda: ["a"], interval=0.02, active=active
    )
    resyncer.start()
    try:
        # Two ticks came and went (each asked whether to act) and processed nothing.
        assert asked.acquire(timeout=TIMEOUT)
        assert asked.acquire(timeout=TIMEOUT)
    finally:
        resyncer.stop()
    assert processed == []


def test_a_resync_asks_for_a_full_pass_before_it_adds_a_key() -> None:
    pending: Pending[str, str, dict] = Pending()
    pending.note("a", "configmaps", {"data": {}})
    seen: list[object] = []
    done = threading.Event()

    def process(key: str) -> None:
        seen.append(pending.take(key))
        done.set()

    resyncer = Resyncer(
        KeyedQueue(process),
        list_keys=lambda: ["a"],
        interval=0.02,
        active=lambda: True,
        mark=pending.want_full,
    )
    resyncer.start()
    try:
        assert done.wait(TIMEOUT)
    finally:
        resyncer.stop()
    assert seen[0] is FULL


def test_pending_keeps_the_latest_body_of_each_part_until_a_pass_takes_it() -> None:
    pending: Pending[str, str, int | None] = Pending()
    pending.note("a", "deployments", 1)
    pending.note("a", "services", 7)
    pending.note("a", "deployments", 2)
    pending.note("a", "services", None)  # deleted
    assert pending.take("a") == {"deployments": 2, "services": None}
    assert pending.take("a") is None  # taken: a second pass has nothing to do


def test_a_full_pass_asked_for_is_not_narrowed_by_a_later_child_event() -> None:
    pending: Pending[str, str, int] = Pending()
    pending.note("a", "services", 1)
    pending.want_full("a")
    pending.note("a", "deployments", 2)
    assert pending.take("a") is FULL
    assert pending.take("b") is None
