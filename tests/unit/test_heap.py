"""shared/heap.py: start-up objects frozen out of the collector, young collections rarer."""

import gc
from collections.abc import Iterator

import pytest

from shared import heap


@pytest.fixture
def restored_collector() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_collector")
def test_settle_freezes_what_exists_and_raises_the_young_threshold() -> None:
    _, middle, oldest = gc.get_threshold()
    gc.unfreeze()
    survivor = [object() for _ in range(10)]
    heap.settle()
    assert gc.get_freeze_count() > len(survivor)
    assert gc.get_threshold() == (heap.YOUNG_THRESHOLD, middle, oldest)
    assert gc.isenabled()
