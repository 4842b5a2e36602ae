"""`GET /metrics`: the process counters in the Prometheus text format, summed over workers.

The hot path only bumps plain ints (`pushsvc.metrics.Metrics`); a custom prometheus-client
collector reads them at scrape time, so scraping costs nothing between scrapes.

Several workers (``pushsvc serve --workers N``: N processes accept on one socket, so a
scrape reaches any one of them): each worker writes a snapshot of its values to
``<PUSHSVC_METRICS_DIR>/<pid>.json`` every second (write + rename, so a reader never sees
half a file), and the worker that answers a scrape reports its own live values plus the
other workers' files:

* counters and the histogram are summed over **every** file, including workers that have
  exited, so totals never go backwards when the supervisor restarts a worker;
* gauges (open streams, subscribed channels, resident memory, open descriptors) are summed
  over live workers only (pid alive and snapshot younger than 5 s); ``pushsvc_workers``
  says how many that was.

Besides the app's counters: the event loop's lag (how late the hub's one-second ticker
woke up), the garbage collector's pauses, collections and freed objects by generation
(`pushsvc.gcpolicy` times them), the workers' resident memory and open descriptors, and
prometheus-client's standard ``process_*`` metrics of the worker that answered.

So a scrape is at most about a second behind for the other workers.  ``pushsvc serve``
creates a private directory per run (removed at exit) when ``--workers`` > 1 and
``PUSHSVC_METRICS_DIR`` is unset.  No label carries a channel name: cardinality is fixed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from . import gcpolicy
from .metrics import GC, LATENCY_BUCKETS, Histogram
from .runtime import Runtime

log = logging.getLogger("pushsvc.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
WRITE_INTERVAL_SECONDS = 1.0
LIVE_SECONDS = 5.0

COUNTER_HELP = {
    "streams_opened": "Streams opened.",
    "streams_refused_capacity": "Streams refused (retry hint) because the process was full or draining.",
    "events_published": "Events accepted by POST /publish.",
    "events_received": "Events received from the broker (once per process, before fan-out).",
    "events_delivered": "Events written to streams.",
    "events_replayed": "Events replayed from history on resume or after a gap.",
    "stream_writes": "Stream body chunks handed to the server (deliveries per write: the coalescing "
                     "of PUSHSVC_WRITE_DELAY_MS and of queues under load).",
    "resets_sent": "pushsvc.reset events sent (id too old, history lost, unreadable id).",
    "invalid_messages": "Broker messages dropped because they could not be parsed.",
    "slow_consumer_disconnects": "Streams ended because their queue overflowed.",
    "catch_up_failures": "Streams ended because history could not be read.",
    "write_timeouts": "Streams ended because a write stayed pending for PUSHSVC_WRITE_TIMEOUT_SECONDS.",
    "publish_failures": "POST /publish answered 503 because the broker was unavailable.",
    "redis_reconnects": "Times the Redis pub/sub connection was lost and re-established.",
    "redis_publish_pipelines": "Pipelines of publish script calls sent to Redis (concurrent publishes share one).",
    "redis_publish_pipeline_requests": "Publish requests those pipelines carried.",
    "redis_shard_messages": "Redis Cluster: messages read on the shard's sharded pub/sub connection.",
    "redis_shard_reconnects": "Redis Cluster: times the shard's pub/sub connection was lost and re-established.",
    "redis_shard_resubscriptions": "Redis Cluster: channels moved to this shard (failover, slot moved).",
    "redis_shard_failovers_proven": "Redis Cluster: failovers to this shard proven lossless (channels kept their ids).",
    "redis_shard_failovers_unproven": "Redis Cluster: master changes to this shard not proven lossless (resets).",
    "auth_calls": "Calls to the app's authorisation callback (PUSHSVC_AUTH_URL).",
    "auth_denials": "Subscriptions the app refused (401/403, or a channel left out).",
    "auth_errors": "Callback calls that failed (unreachable, timeout, unexpected answer): refused for now.",
    "auth_cache_hits": "Subscriptions allowed from the cache without calling the app.",
    "gc_collections": "Garbage collections, by generation.",
    "gc_collected_objects": "Objects freed by garbage collections (unreachable cycles), by generation.",
    "gc_scheduled_full_collections": "Full collections run by the ticker (pushsvc serve's GC policy).",
}
GAUGE_HELP = {
    "open_streams": "Streams open now.",
    "subscribed_channels": "Channels with a broker subscription now.",
    "resident_memory_bytes": "Resident memory (RSS) of the worker processes.",
    "open_fds": "Open file descriptors of the worker processes.",
}
#: name -> (help, label name or "", one Histogram per label value); summed over every file.
HISTOGRAM_HELP = {
    "publish_latency_seconds": "POST /publish: time to store and publish in the broker.",
    "event_loop_lag_seconds": "How late the hub's one-second ticker woke up (event loop stalls).",
    "gc_pause_seconds": "Garbage collection pauses, by generation (2: full collections).",
}
GENERATIONS = ("0", "1", "2")


def _histograms(rt: Runtime) -> dict[str, Histogram | list[Histogram]]:
    return {"publish_latency_seconds": rt.metrics.publish_latency,
            "event_loop_lag_seconds": rt.metrics.loop_lag,
            "gc_pause_seconds": GC.pause}


def _encode(histogram: Histogram) -> dict[str, Any]:
    return {"counts": list(histogram.counts), "sum": histogram.sum}


def process_usage() -> tuple[int, int]:
    """(resident memory in bytes, open descriptors) of this process, from /proc."""
    try:
        with open("/proc/self/statm") as statm:
            rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        fds = len(os.listdir("/proc/self/fd"))
    except (OSError, ValueError, IndexError):  # not Linux
        return 0, 0
    return rss, fds


def local_snapshot(rt: Runtime) -> dict[str, Any]:
    """This process's values, as written to the snapshot file."""
    counters = rt.metrics.snapshot()
    counters["redis_reconnects"] = int(getattr(rt.broker, "reconnects", 0))
    batcher = getattr(rt.broker, "batcher", None)  # single Redis: its publish pipelines
    if batcher is not None:
        counters["redis_publish_pipelines"] = batcher.pipelines
        counters["redis_publish_pipeline_requests"] = batcher.requests
    shards = getattr(rt.broker, "shards", None)  # Redis Cluster: per shard (a fixed, small set)
    if callable(shards):
        for address, figures in shards().items():
            for figure, value in figures.items():
                counters[f"redis_shard_{figure}|shard|{address}"] = int(value)
    counters["gc_scheduled_full_collections"] = GC.scheduled_full
    for generation in GENERATIONS:
        counters[f"gc_collections:{generation}"] = GC.collections[int(generation)]
        counters[f"gc_collected_objects:{generation}"] = GC.collected[int(generation)]
    histograms: dict[str, Any] = {}
    for name, value in _histograms(rt).items():
        if isinstance(value, list):
            for generation, histogram in zip(GENERATIONS, value, strict=True):
                histograms[f"{name}:{generation}"] = _encode(histogram)
        else:
            histograms[name] = _encode(value)
    rss, fds = process_usage()
    return {
        "pid": os.getpid(),
        "time": time.time(),
        "counters": counters,
        "gauges": {"open_streams": rt.hub.stream_count, "subscribed_channels": rt.hub.channel_count,
                   "resident_memory_bytes": rss, "open_fds": fds},
        "histograms": histograms,
    }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SnapshotDir:
    """The shared directory of worker snapshots."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.own = self.path / f"{os.getpid()}.json"

    def write(self, snapshot: dict[str, Any]) -> None:
        temporary = self.path / f".{os.getpid()}.tmp"
        temporary.write_text(json.dumps(snapshot))
        temporary.replace(self.own)

    def others(self) -> Iterator[tuple[dict[str, Any], bool]]:
        """(snapshot, live) of every other worker that has written one."""
        now = time.time()
        for file in self.path.glob("*.json"):
            if file == self.own:
                continue
            try:
                snapshot = json.loads(file.read_text())
            except (OSError, ValueError):
                continue  # vanished or being replaced; the next scrape sees it
            live = _alive(int(snapshot.get("pid", 0))) and now - float(snapshot.get("time", 0)) < LIVE_SECONDS
            yield snapshot, live and not snapshot.get("final")


def merge(own: dict[str, Any], others: list[tuple[dict[str, Any], bool]]) -> dict[str, Any]:
    counters = dict(own["counters"])
    gauges = dict(own["gauges"])
    histograms: dict[str, dict[str, Any]] = {
        name: {"counts": list(h["counts"]), "sum": float(h["sum"])} for name, h in own["histograms"].items()
    }
    workers = 1
    for snapshot, live in others:
        for name, value in snapshot.get("counters", {}).items():
            counters[name] = counters.get(name, 0) + int(value)
        if live:
            workers += 1
            for name, value in snapshot.get("gauges", {}).items():
                gauges[name] = gauges.get(name, 0) + int(value)
        for name, other in (snapshot.get("histograms") or {}).items():
            mine = histograms.get(name)
            if mine is not None and len(other.get("counts", ())) == len(mine["counts"]):
                mine["counts"] = [a + int(b) for a, b in zip(mine["counts"], other["counts"], strict=True)]
                mine["sum"] += float(other.get("sum", 0.0))
    return {"counters": counters, "gauges": gauges, "workers": workers, "histograms": histograms}


def _split(name: str) -> tuple[str, dict[str, str]]:
    """``gc_collections:1`` -> (``gc_collections``, {"generation": "1"});
    ``redis_shard_messages|shard|10.0.0.1:7000`` -> (``redis_shard_messages``, {"shard": ...})."""
    if "|" in name:
        base, label, value = name.split("|", 2)
        return base, {label: value}
    base, _, generation = name.partition(":")
    return base, ({"generation": generation} if generation else {})


def _cumulative(counts: list[int]) -> list[tuple[str, float]]:
    buckets: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip([*map(str, LATENCY_BUCKETS), "+Inf"], counts, strict=True):
        running += count
        buckets.append((bound, running))
    return buckets


class PushsvcCollector(Collector):
    def __init__(self, rt: Runtime, snapshots: SnapshotDir | None) -> None:
        self.rt = rt
        self.snapshots = snapshots

    def collect(self) -> Iterator[Metric]:
        own = local_snapshot(self.rt)
        others = list(self.snapshots.others()) if self.snapshots is not None else []
        values = merge(own, others)
        for name, value in values["gauges"].items():
            yield GaugeMetricFamily(f"pushsvc_{name}", GAUGE_HELP.get(name, name), value=value)
        yield GaugeMetricFamily("pushsvc_workers", "Worker processes whose values this scrape includes.",
                                value=values["workers"])
        families: dict[str, Metric] = {}
        for key, value in values["counters"].items():
            name, labels = _split(key)
            family = families.get(name)
            if family is None:
                family = families[name] = CounterMetricFamily(
                    f"pushsvc_{name}", COUNTER_HELP.get(name, name), labels=list(labels))
            assert isinstance(family, CounterMetricFamily)
            family.add_metric(list(labels.values()), value)
        yield from families.values()
        histograms: dict[str, HistogramMetricFamily] = {}
        for key, histogram in values["histograms"].items():
            name, labels = _split(key)
            if name not in HISTOGRAM_HELP:
                continue
            if name not in histograms:
                histograms[name] = HistogramMetricFamily(f"pushsvc_{name}", HISTOGRAM_HELP[name], labels=list(labels))
            histograms[name].add_metric(list(labels.values()), _cumulative(histogram["counts"]), histogram["sum"])
        yield from histograms.values()


class Exporter:
    """Owns the registry of one app and, with a snapshot dir, the writer task."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        path = rt.settings.metrics_dir
        self.snapshots = SnapshotDir(path) if path else None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(PushsvcCollector(rt, self.snapshots))
        ProcessCollector(registry=self.registry)  # process_*: the worker that answered
        gcpolicy.watch()
        self._task: asyncio.Task[None] | None = None

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def start(self) -> None:
        if self.snapshots is not None:
            self._task = asyncio.get_running_loop().create_task(self._write_forever(), name="pushsvc-metrics")

    async def stop(self) -> None:
        if self._task is None or self.snapshots is None:
            return
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None
        final = local_snapshot(self.rt)
        final["final"] = True
        self._write(final)

    def _write(self, snapshot: dict[str, Any]) -> None:
        assert self.snapshots is not None
        try:
            self.snapshots.write(snapshot)
        except OSError as exc:
            log.warning("could not write the metrics snapshot", extra={"error": str(exc)})

    async def _write_forever(self) -> None:
        while True:
            self._write(local_snapshot(self.rt))
            await asyncio.sleep(WRITE_INTERVAL_SECONDS)
