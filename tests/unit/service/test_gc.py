"""Served processes keep the garbage collector off the start-up heap (see server.settle_gc)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from agent_service.server import GC_GEN0_THRESHOLD, settle_gc


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_gc")
def test_settling_freezes_the_heap_built_so_far_and_raises_the_young_threshold() -> None:
    gc.unfreeze()
    settle_gc()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold()[0] == GC_GEN0_THRESHOLD > 700
