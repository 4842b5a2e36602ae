"""The process's garbage-collection policy and the collector's cost, by generation.

`install` (called by `pushsvc serve` once the app is built) freezes the start-up objects,
sets the young generations' thresholds and turns the automatic full collection off; the
hub's one-second ticker then calls `on_tick`, which runs the full collections this
module schedules.  `watch` (always on) times every collection into `pushsvc.metrics.GC`.

Why (figures in docs/performance.md, "Soak" and "Garbage collection"):

* Young thresholds stay raised (200,000 allocations, 50 young collections): in a
  10,000-stream fan-out every event wakes every stream, transient objects alive at a young
  collection are promoted, and with Python's defaults the collector was a third of the
  CPU (py-spy --native: ``gc_collect_main`` 36% of samples).
* But a closed connection leaves objects in reference cycles that only the collector
  frees: pushsvc's own are broken at the source (see `pushsvc.asgi`), Hypercorn's are not
  ours to break (``TCPServer`` -> ``ProtocolWrapper`` -> ``H11Protocol`` -> the bound
  ``TCPServer.protocol_send``; werkzeug's recursive ``_match`` closure per Quart request),
  and everything a connection owned (socket, transport, h11 state, buffers, ~35 objects)
  hangs off them.  A stream that lives through a young collection is promoted, so under
  churn that garbage reaches the oldest generation, which the raised thresholds (and
  CPython's "25% more long-lived objects" rule) practically never collected: +0.7 MB/s
  at 220 reconnects/s, for ever.
* So full collections run here, from the ticker -- never in the middle of a fan-out loop,
  where an allocation-triggered one would land -- when enough streams were opened since
  the last one to make a collection worth its cost: `FULL_MIN_STREAMS`, or a quarter of
  the streams open now (a full collection's pause grows with the live heap, so with many
  open streams it runs less often and the garbage it may find stays a bounded fraction
  of the live heap, like CPython's own rule but counted in streams), and at least every
  `FULL_MAX_SECONDS` for garbage from anything else.  Its pause is in
  ``pushsvc_gc_pause_seconds{generation="2"}``.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from .metrics import GC

#: Young generation thresholds (generation 0 allocations, generation 1 collections).
YOUNG_THRESHOLDS = (200_000, 50)
#: Generation 2's threshold: automatic full collections practically never happen.
NO_AUTOMATIC_FULL = 1_000_000_000
#: A full collection once this many streams were opened since the last one...
FULL_MIN_STREAMS = 1000
#: ... or this fraction of the streams open now, whichever is larger ...
FULL_OPEN_FRACTION = 0.25
#: ... and at least this often, for garbage that is not a stream's.
FULL_MAX_SECONDS = 300.0


class FullCollections:
    """When to run a full collection (see the module docstring)."""

    def __init__(self) -> None:
        self.opened_at_last = 0
        self.last = time.monotonic()

    def due(self, streams_opened: int, open_streams: int, now: float) -> bool:
        opened = streams_opened - self.opened_at_last
        if opened < 0:  # a new app (and counter) in this process
            self.opened_at_last = streams_opened
            opened = 0
        return opened >= max(FULL_MIN_STREAMS, open_streams * FULL_OPEN_FRACTION) or now - self.last >= FULL_MAX_SECONDS

    def run(self, streams_opened: int, now: float) -> None:
        self.opened_at_last = streams_opened
        self.last = now
        GC.scheduled_full += 1
        gc.collect()


_schedule: FullCollections | None = None


def install() -> None:
    """Freeze what start-up made, raise the young thresholds, schedule full collections."""
    global _schedule
    gc.collect()
    gc.freeze()
    gc.set_threshold(*YOUNG_THRESHOLDS, NO_AUTOMATIC_FULL)
    _schedule = FullCollections()


def on_tick(streams_opened: int, open_streams: int) -> None:
    """The ticker's hook: a full collection when one is due (no-op unless `install`ed)."""
    schedule = _schedule
    if schedule is not None:
        now = time.monotonic()
        if schedule.due(streams_opened, open_streams, now):
            schedule.run(streams_opened, now)


_started = [0.0]


def _on_collection(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
        return
    generation = info["generation"]
    GC.pause[generation].observe(time.perf_counter() - _started[0])
    GC.collections[generation] += 1
    GC.collected[generation] += info["collected"]


def watch() -> None:
    """Time every collection (idempotent)."""
    if _on_collection not in gc.callbacks:
        gc.callbacks.append(_on_collection)
