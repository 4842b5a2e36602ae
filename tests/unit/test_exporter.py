"""Summing worker snapshots: counters over every worker that ever wrote one (totals never
go backwards when a worker is replaced), gauges over live workers only."""

from __future__ import annotations

import json
import os
import time

from pushsvc.exporter import SnapshotDir, merge
from pushsvc.metrics import LATENCY_BUCKETS, Histogram


def snapshot(pid: int, published: int, streams: int, **extra: object) -> dict[str, object]:
    counts = [0] * (len(LATENCY_BUCKETS) + 1)
    counts[2] = published
    return {"pid": pid, "time": time.time(), "counters": {"events_published": published},
            "gauges": {"open_streams": streams},
            "histograms": {"publish_latency_seconds": {"counts": counts, "sum": 0.001 * published},
                           "gc_pause_seconds:2": {"counts": counts, "sum": 0.0}},
            **extra}


def test_counters_include_exited_workers_and_gauges_only_live_ones():
    own = snapshot(os.getpid(), 5, 2)
    merged = merge(own, [(snapshot(1, 7, 3), True), (snapshot(2, 11, 4), False)])
    assert merged["counters"]["events_published"] == 23
    assert merged["gauges"]["open_streams"] == 5
    assert merged["workers"] == 2
    assert sum(merged["histograms"]["publish_latency_seconds"]["counts"]) == 23
    assert sum(merged["histograms"]["gc_pause_seconds:2"]["counts"]) == 23


def test_snapshot_dir_reads_other_workers_and_tells_dead_or_final_ones(tmp_path):
    snapshots = SnapshotDir(str(tmp_path))
    snapshots.write(snapshot(os.getpid(), 1, 1))
    (tmp_path / "999999999.json").write_text(json.dumps(snapshot(999999999, 4, 9)))  # no such pid
    (tmp_path / "1.json").write_text(json.dumps(snapshot(1, 2, 9, final=True)))  # pid 1 lives; it said final
    (tmp_path / "2.json").write_text("{half a fi")  # being replaced: skipped
    others = sorted(((s["pid"], live) for s, live in snapshots.others()), key=lambda item: int(item[0]))
    assert others == [(1, False), (999999999, False)]


def test_histogram_buckets_are_upper_bounds():
    histogram = Histogram()
    for seconds in (0.0005, 0.0006, 10.0):
        histogram.observe(seconds)
    assert histogram.counts[0] == 1 and histogram.counts[1] == 1 and histogram.counts[-1] == 1
