"""settle_heap: the young threshold is set, start-up's heap frozen, later cycles still freed."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest
from tenantry_common.heap import settle_heap

pytestmark = pytest.mark.unit


class Node:
    """An object that can be part of a cycle and be watched through a weak reference."""

    ref: object = None


@pytest.fixture(autouse=True)
def restored_collector() -> Iterator[None]:
    before = gc.get_threshold()
    gc.unfreeze()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_the_young_threshold_is_set_and_what_exists_is_frozen() -> None:
    _, middle, oldest = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    settle_heap(12_345)
    assert gc.get_threshold() == (12_345, middle, oldest)
    assert gc.get_freeze_count() > 0


def test_a_cycle_made_after_start_up_is_still_freed() -> None:
    settle_heap(12_345)
    node = Node()
    node.ref = node
    watch = weakref.ref(node)
    del node
    gc.collect()
    assert watch() is None
