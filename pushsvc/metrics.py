"""Process counters kept as plain attributes (cheap on the hot path).

`/metrics` exports them in the Prometheus text format at scrape time.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(slots=True)
class Metrics:
    streams_opened: int = 0
    streams_refused_capacity: int = 0
    events_published: int = 0
    events_received: int = 0
    events_delivered: int = 0
    events_replayed: int = 0
    resets_sent: int = 0
    invalid_messages: int = 0
    slow_consumer_disconnects: int = 0
    catch_up_failures: int = 0
    publish_failures: int = 0

    def snapshot(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
