"""The process's garbage-collection policy, and the collector's cost by generation.

`install` (called by `pushsvc serve` once the app is built) frees closed connections by
reference counting (`release_closed_connections`), freezes the start-up objects, keeps
the young generations' thresholds raised and turns the automatic full collection off;
the hub's one-second ticker then calls `on_tick`, which runs the full collections this
module schedules.  `watch` (always on) times every collection into `pushsvc.metrics.GC`.

Why (measured on this 2-core machine; figures in docs/performance.md):

* A full collection pauses the whole process for every tracked object: ~0.5 us each
  here, and an open stream holds ~120 of them (connection, h11, asyncio, session), so
  ~0.2 ms per open stream: 250 ms with 1,000 streams open, ~1 s with 5,000.  Python's
  default thresholds run such collections whenever the long-lived objects grew by 25%,
  wherever the allocation that triggers one happens (often in a fan-out loop).
* Young thresholds stay raised (200,000 allocations, 50 young collections): in a
  10,000-stream fan-out every event wakes every stream and with the defaults the
  collector was a third of the CPU (py-spy --native: ``gc_collect_main`` 36% of samples).
* The old policy never ran a full collection, which was only safe if nothing long-lived
  became cyclic garbage.  But every closed connection did: pushsvc's scope held Hypercorn's
  ``send`` (fixed in `pushsvc.asgi`), and Hypercorn's ``TCPServer`` -> ``ProtocolWrapper``
  -> ``H11Protocol`` -> bound ``TCPServer.protocol_send`` cycle kept the whole connection
  (socket, transport, h11 state, buffers: ~35 objects, ~3 KB) -- promoted to the oldest
  generation by any young collection during the stream's life, so never freed: +0.7 MB/s
  at 220 reconnects/s.  Both cycles are broken, so a closed stream on the fast door is
  freed at once by reference counting; what remains in cycles is werkzeug's recursive
  ``_match`` closure of each Quart request (~8 objects) and whatever a future version adds.
* So full collections stay, for that residue, but rare and off the hot path: from the
  ticker, when the garbage they would find -- estimated as the streams closed since the
  last one times the objects the last one freed per closed stream (at least
  `MIN_GARBAGE_PER_STREAM`) -- reaches a quarter of the objects alive after the last one
  (CPython's own rule, but counting likely garbage instead of every promoted object, so
  that thousands of long-lived streams opening never trigger one) and at least
  `MIN_GARBAGE_OBJECTS`; and in any case every `FULL_MAX_SECONDS`.  Their pauses are in
  ``pushsvc_gc_pause_seconds{generation="2"}``.
"""

from __future__ import annotations

import gc
import logging
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from .metrics import GC

log = logging.getLogger("pushsvc.server")

#: Young generation thresholds (generation 0 allocations, generation 1 collections).
YOUNG_THRESHOLDS = (200_000, 50)
#: Generation 2's threshold: no automatic full collection (the ticker runs them).
NO_AUTOMATIC_FULL = 1_000_000_000
#: A full collection when the garbage it would find reaches this share of the live objects...
GARBAGE_FRACTION = 0.25
#: ... and at least this many objects.
MIN_GARBAGE_OBJECTS = 50_000
#: Objects a closed stream is assumed to leave in cycles, at least (the first estimate: the
#: Quart route's share is ~8, a stream without the Hypercorn correction ~35).
MIN_GARBAGE_PER_STREAM = 1.0
FIRST_GARBAGE_PER_STREAM = 35.0
#: In any case a full collection at least this often.
FULL_MAX_SECONDS = 3600.0


class FullCollections:
    """When to run a full collection (see the module docstring)."""

    def __init__(self, live_objects: int) -> None:
        self.closed_at_last = 0
        self.last = time.monotonic()
        self.live = live_objects
        self.per_stream = FIRST_GARBAGE_PER_STREAM

    def expected_garbage(self, closed_streams: int) -> float:
        return max(0, closed_streams - self.closed_at_last) * self.per_stream

    def due(self, closed_streams: int, now: float) -> bool:
        if closed_streams < self.closed_at_last:  # a new app (and counter) in this process
            self.closed_at_last = closed_streams
        threshold = max(MIN_GARBAGE_OBJECTS, self.live * GARBAGE_FRACTION)
        return self.expected_garbage(closed_streams) >= threshold or now - self.last >= FULL_MAX_SECONDS

    def run(self, closed_streams: int) -> None:
        closed = closed_streams - self.closed_at_last
        GC.scheduled_full += 1
        freed = gc.collect()
        self.live = len(gc.get_objects())  # ~5% of the collection's own cost
        if closed > 0:
            self.per_stream = max(MIN_GARBAGE_PER_STREAM, freed / closed)
        self.closed_at_last = closed_streams
        self.last = time.monotonic()


_schedule: FullCollections | None = None


def install() -> None:
    """The policy of a served process (see the module docstring)."""
    global _schedule
    release_closed_connections()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*YOUNG_THRESHOLDS, NO_AUTOMATIC_FULL)
    _schedule = FullCollections(len(gc.get_objects()))


def on_tick(closed_streams: int) -> None:
    """The ticker's hook: a full collection when one is due (no-op unless `install`ed)."""
    schedule = _schedule
    if schedule is not None and schedule.due(closed_streams, time.monotonic()):
        schedule.run(closed_streams)


def release_closed_connections() -> bool:
    """Make Hypercorn's connection object drop its protocol once the connection is over.

    A narrowly scoped, version-checked correction (DESIGN.md allows one where Hypercorn
    breaks a promise pushsvc makes; here: flat memory without full-collection pauses).
    Hypercorn 0.17-0.18's ``TCPServer`` keeps ``self.protocol``, whose ``send`` is the bound
    ``self.protocol_send``: a reference cycle holding every object of the connection after
    ``run()`` returned (nothing uses ``protocol`` then: the connection's task group has
    exited and the socket is closed).  Dropping the attribute there lets reference counting
    free the connection at once.  Checked by tests/e2e/test_memory_churn.py.
    """
    try:
        hypercorn_version = version("hypercorn")
    except PackageNotFoundError:  # pragma: no cover - a dependency
        return False
    from hypercorn.asyncio.tcp_server import TCPServer

    run = TCPServer.run
    if getattr(run, "_pushsvc_releases", False):
        return True
    if not hypercorn_version.startswith(("0.17.", "0.18.")):
        log.warning("closed connections are left to full collections (Hypercorn version not checked)",
                    extra={"hypercorn": hypercorn_version})
        return False

    async def run_then_release(self: Any) -> None:
        try:
            await run(self)
        finally:
            self.__dict__.pop("protocol", None)
            self.__dict__.pop("_task_group", None)

    run_then_release._pushsvc_releases = True  # type: ignore[attr-defined]
    TCPServer.run = run_then_release  # type: ignore[method-assign]
    return True


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
