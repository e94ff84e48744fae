"""The application factory's own resources."""

from __future__ import annotations

import gc

from router.app import GC_YOUNG_THRESHOLD, steady_gc


def test_steady_gc_applies_while_serving_and_restores_the_process_after() -> None:
    before = gc.get_threshold()
    frozen = gc.get_freeze_count()
    with steady_gc():
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *before[1:])
        assert gc.get_freeze_count() > frozen  # start-up objects left out of collections
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
