"""When `pushsvc serve` runs a full collection (pushsvc/gcpolicy.py): sized by the garbage
closed streams are likely to have left, never by streams opening."""

from __future__ import annotations

import gc

import pytest

from pushsvc import gcpolicy
from pushsvc.gcpolicy import FIRST_GARBAGE_PER_STREAM, MIN_GARBAGE_OBJECTS, FullCollections


def test_streams_that_stay_open_never_trigger_a_full_collection():
    schedule = FullCollections(live_objects=10_000_000)
    assert not schedule.due(closed_streams=0, now=schedule.last + 60)


def test_enough_closed_streams_trigger_one_sized_by_the_live_heap():
    small = FullCollections(live_objects=1000)
    closed = int(MIN_GARBAGE_OBJECTS / FIRST_GARBAGE_PER_STREAM) + 1
    assert not small.due(closed - 2, now=small.last + 1)
    assert small.due(closed, now=small.last + 1)
    big = FullCollections(live_objects=4_000_000)  # a quarter is 1,000,000 objects of garbage
    assert not big.due(closed, now=big.last + 1)
    assert big.due(int(1_000_000 / FIRST_GARBAGE_PER_STREAM) + 1, now=big.last + 1)


def test_the_estimate_follows_what_the_last_collection_freed(monkeypatch):
    schedule = FullCollections(live_objects=1000)
    monkeypatch.setattr(gc, "collect", lambda *args: 0)  # nothing was garbage
    monkeypatch.setattr(gc, "get_objects", lambda *args: [])  # a small heap, whatever the test process holds
    schedule.run(closed_streams=5000)
    assert schedule.per_stream == gcpolicy.MIN_GARBAGE_PER_STREAM
    assert not schedule.due(5000 + 2000, now=schedule.last + 1)
    assert schedule.due(5000 + MIN_GARBAGE_OBJECTS, now=schedule.last + 1)


def test_a_full_collection_at_least_every_max_interval():
    schedule = FullCollections(live_objects=1000)
    assert not schedule.due(0, now=schedule.last + gcpolicy.FULL_MAX_SECONDS - 1)
    assert schedule.due(0, now=schedule.last + gcpolicy.FULL_MAX_SECONDS + 0.001)  # float-safe


@pytest.mark.parametrize("closed", [0, 10])
def test_on_tick_does_nothing_unless_installed(monkeypatch, closed):
    monkeypatch.setattr(gcpolicy, "_schedule", None)
    monkeypatch.setattr(gc, "collect", lambda *args: pytest.fail("collected"))
    gcpolicy.on_tick(closed)
