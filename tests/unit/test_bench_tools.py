"""The bench's own counting (bench/rate_publisher.py, bench/fixed_rate.py,
bench/profile_summary.py, bench/h2_fanout.py): a figure is only as good as the count
behind it, and these counts are read from byte streams cut at arbitrary places."""

from __future__ import annotations

import asyncio
from array import array
from pathlib import Path

import hiredis
import pytest

from bench import fixed_rate, profile_summary
from bench.loadgen import Stats
from bench.rate_publisher import Replies, Tally, resp

NCHAN_ANSWER = (b"HTTP/1.1 202 Accepted\r\nServer: nginx\r\nContent-Type: text/plain\r\nContent-Length: 60\r\n\r\n"
                b"queued messages: 1\r\nlast requested: 0 sec. ago\r\nsubscribers: 100\r\n")


def _feed_in_pieces(proto: Replies, data: bytes, size: int) -> None:
    for i in range(0, len(data), size):
        proto.data_received(data[i:i + size])


@pytest.mark.parametrize("size", [1, 2, 5, 7, 13, 64, 1000])
def test_http_answers_are_counted_once_wherever_the_reads_cut_them(size: int) -> None:
    tally = Tally()
    answers = NCHAN_ANSWER * 20 + b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n" + NCHAN_ANSWER
    _feed_in_pieces(Replies(True, tally), answers, size)
    assert tally.count == 22
    assert tally.errors == {"503": 1}


@pytest.mark.parametrize("size", [1, 3, 1000])
def test_redis_replies_are_counted_and_errors_kept(size: int) -> None:
    tally = Tally()
    replies = b"*2\r\n:0\r\n$5\r\nab-12\r\n" * 3 + b"-NOSCRIPT No matching script\r\n" + b":1\r\n"
    _feed_in_pieces(Replies(False, tally), replies, size)
    assert tally.count == 5
    assert list(tally.errors.values()) == [1]
    assert next(iter(tally.errors)).startswith("NOSCRIPT")


def test_a_command_is_valid_resp() -> None:
    reader = hiredis.Reader()
    reader.feed(resp(b"EVALSHA", b"abc", 2, "pushsvc:{bench}:meta", b"x\r\ny", 7))
    assert reader.gets() == [b"EVALSHA", b"abc", b"2", b"pushsvc:{bench}:meta", b"x\r\ny", b"7"]


async def test_waiting_for_replies_ends_when_the_count_is_reached_or_the_time_is_up() -> None:
    tally = Tally()
    asyncio.get_running_loop().call_later(0.01, lambda: [tally.add() for _ in range(3)])
    await asyncio.wait_for(tally.until(3, 5), 2)
    assert tally.count == 3
    await tally.until(10, 0.05)  # never reached: returns after its timeout
    assert tally.count == 3


def _step(rate: int, cpu: float, p99: float, loss: int) -> dict[str, float]:
    return {"rate": rate, "achieved_rate": rate, "cpu_per_delivery_us": cpu, "redis_cpu_per_event_us": 1.0,
            "p50_ms": 1.0, "p99_ms": p99, "max_ms": p99 + 1, "max_behind_ms": 1.0, "subscribers_cpu_pct": 1.0,
            "publisher_cpu_pct": 1.0, "loadgen_cpu_pct": 2.0, "server_cpu_pct": 1.0, "redis_cpu_pct": 1.0,
            "events_per_read": 1.0, "loss": loss, "dups": 0, "closed": 0, "expected": 10, "deliveries": 10 - loss,
            "sent": 10}


def test_repeated_runs_give_medians_with_the_worst_p99_and_all_the_loss() -> None:
    runs = [{"subscribers": 100, "steps": [_step(2000, cpu, p99, loss)]}
            for cpu, p99, loss in ((1.0, 10.0, 0), (5.0, 90.0, 2), (2.0, 20.0, 0))]
    (step,) = fixed_rate.aggregate(runs)["steps"]
    assert step["cpu_per_delivery_us"] == 2.0
    assert step["cpu_range_us"] == [1.0, 5.0]
    assert step["p99_ms"] == 20.0 and step["p99_worst_ms"] == 90.0
    assert step["loss"] == 2


def test_the_write_delay_target_is_judged_on_the_worst_p99() -> None:
    fixed = {"pushsvc-d10": {"steps": [{**_step(2000, 1.0, 50.0, 0), "p99_worst_ms": 150.0}]},
             "nchan": {"steps": [_step(2000, 4.0, 10.0, 0)]}}
    (line,) = [x for x in fixed_rate.targets(fixed, 2000, "nchan") if "write delay 10" in x]
    assert "0.25x Nchan" in line and "not met" in line


def test_profile_samples_fall_in_the_first_part_of_the_path_that_matches(tmp_path: Path) -> None:
    root = 'process 1:"python -m pushsvc.cli serve";run (uvloop/__init__.py:92);Runner.run (asyncio/runners.py:118)'
    stream = f"{root};_handle (hypercorn/asyncio/task_group.py:28);pump (pushsvc/core/streams.py:128)"
    send = f"{stream};HTTPStream.app_send (hypercorn/protocol/http_stream.py:180)"
    raw = tmp_path / "p.txt"
    raw.write_text("\n".join([
        f"{send};TCPServer.protocol_send (hypercorn/asyncio/tcp_server.py:90)"
        ";StreamWriter.write (asyncio/streams.py:5) 6",
        f"{send};H11Protocol.stream_send (hypercorn/protocol/h11.py:140) 3",
        f"{stream};Cursor.take_live (pushsvc/cursor.py:50) 2",
        f"{root};PubSubLoop._read (pushsvc/broker/pubsub.py:382) 4",
        f"{root} 1",
    ]) + "\n")
    total, where = profile_summary.buckets(raw)
    assert total == 16
    assert [where[name] for name, _ in profile_summary.BUCKETS[:5]] == [6, 3, 2, 4, 1]
    _, own, inclusive = profile_summary.read(raw)
    assert own["StreamWriter.write (asyncio/streams.py)"] == 6
    assert inclusive["pump (pushsvc/core/streams.py)"] == 11


async def test_h2_markers_split_across_data_frames_are_counted_once() -> None:
    from bench.h2_fanout import H2Conn

    stats = Stats()
    conn = H2Conn("127.0.0.1:1", "/stream", 1, stats, asyncio.get_running_loop().create_future())
    conn.bufs[1], conn.seen[1] = b"", set()
    frames = [b"data: ~1~100~xx\n\ndata: ~2~", b"200~xx\n", b"\ndata: ~1~100~xx\n\n"]
    for frame in frames:
        conn._markers(1, frame, 1000)
    assert list(stats.seqs) == [1, 2]
    assert stats.lat_ns == array("q", [900, 800])
    assert stats.dups == 1


def test_the_together_table_pools_all_cpu_over_all_requests() -> None:
    from bench.sse_bench import pool, publish_together_lines

    slices = [  # pushsvc, bare: CPU seconds and requests
        {"requests": [1000, 1000], "cpu_s": [0.25, 0.20], "cpu_per_request_us": [250.0, 200.0], "ratio": 1.25},
        {"requests": [3000, 1000], "cpu_s": [0.60, 0.20], "cpu_per_request_us": [200.0, 200.0], "ratio": 1.0},
    ]
    pooled = pool(slices)
    assert pooled["pooled_cpu_per_request_us"] == pytest.approx([212.5, 200.0])  # not the mean of 250 and 200
    assert pooled["pooled_ratio"] == pytest.approx(1.0625) and pooled["median_ratio"] == pytest.approx(1.125)
    lines = publish_together_lines({"publish_together": {"slices": slices, **pooled}})
    assert lines[-1] == "| pooled | 212 | 200 | **1.06** (slices 1.00-1.25, median 1.12) |"
    assert publish_together_lines({}) == []
