"""Process counters kept as plain attributes (cheap on the hot path): the app's `Metrics`,
and `GC`, the garbage collector's cost in this process (filled by `pushsvc.gcpolicy`).

Nothing here talks to prometheus-client: the code bumps ints, and `pushsvc.exporter`
turns them into the Prometheus format at scrape time (with several workers, summed over
the workers' snapshot files).
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field, fields

#: Upper bounds (seconds) of every histogram's buckets (publish latency, event loop lag,
#: garbage collection pauses).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(slots=True)
class Histogram:
    """Fixed buckets as plain ints: `counts[i]` events fell at or below `LATENCY_BUCKETS[i]`
    and above the previous bound (the last slot is +Inf); not cumulative."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    sum: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.sum += seconds


@dataclass(slots=True)
class Metrics:
    streams_opened: int = 0
    streams_refused_capacity: int = 0
    events_published: int = 0
    events_received: int = 0
    events_delivered: int = 0
    events_replayed: int = 0
    stream_writes: int = 0  # body chunks handed to the server (one transport write each)
    resets_sent: int = 0
    invalid_messages: int = 0
    slow_consumer_disconnects: int = 0
    catch_up_failures: int = 0
    write_timeouts: int = 0
    publish_failures: int = 0
    # -- the app's authorisation callback (pushsvc.appauth) --
    auth_calls: int = 0
    auth_denials: int = 0
    auth_errors: int = 0
    auth_cache_hits: int = 0
    publish_latency: Histogram = field(default_factory=Histogram)
    loop_lag: Histogram = field(default_factory=Histogram)  # how late the hub's ticker woke up

    def snapshot(self) -> dict[str, int]:
        """Every int counter by name."""
        return {f.name: value for f in fields(self) if isinstance(value := getattr(self, f.name), int)}


@dataclass(slots=True)
class GcStats:
    """Per generation (0, 1, 2): collections, objects they freed, and their pauses."""

    collections: list[int] = field(default_factory=lambda: [0, 0, 0])
    collected: list[int] = field(default_factory=lambda: [0, 0, 0])
    pause: list[Histogram] = field(default_factory=lambda: [Histogram(), Histogram(), Histogram()])
    scheduled_full: int = 0  # full collections run by `pushsvc.gcpolicy` (off the hot path)


#: The collector is one per process, whatever the number of apps in it.
GC = GcStats()
