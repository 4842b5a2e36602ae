"""Figures for faults: recovery after a Redis restart, shutdown with open streams, and
slow consumers (RSS and healthy clients' latency, compared with a run without them).

    python bench/faults.py [--streams 2000] [--rounds 3]

Everything runs on 127.0.0.1: a private redis-server and pushsvc processes on free ports.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.helpers import TOKEN
from tests.support.load import publish_bulk, read_like_a_browser, rss_bytes, stalled_reader
from tests.support.procs import RedisServer, Service
from tests.support.sse_client import SSEClient
from tests.support.whatwg import Event


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def recovery_seconds(rounds: int) -> list[float]:
    """Time from Redis accepting connections again to the first event delivered."""
    results = []
    redis_server = RedisServer()
    redis_server.start()
    service = Service({"PUSHSVC_REDIS_URL": redis_server.url, "PUSHSVC_PUBLISH_TOKENS": TOKEN}).start()
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            for _ in range(rounds):
                client = await SSEClient.open(service.port, ["recover"])
                await client.wait_open()
                redis_server.kill()
                await asyncio.sleep(1.0)  # an outage
                redis_server.start()  # returns once Redis answers PING
                up = time.monotonic()

                async def keep_publishing() -> None:  # every 10 ms, as a busy backend would
                    while True:
                        await http.post(service.base + "/publish", json={"channel": "recover", "data": 1},
                                        headers={"Authorization": f"Bearer {TOKEN}"})
                        await asyncio.sleep(0.01)

                publisher = asyncio.create_task(keep_publishing())
                while (await client.next_event(timeout=30)).type != "message":
                    pass
                publisher.cancel()
                results.append(time.monotonic() - up)
                await client.close()
    finally:
        service.stop()
        redis_server.stop()
    return results


async def shutdown_seconds(streams: int, redis_url: str) -> tuple[float, int, int]:
    service = Service({"PUSHSVC_REDIS_URL": redis_url, "PUSHSVC_PUBLISH_TOKENS": TOKEN}).start()
    clients: list[SSEClient] = []
    try:
        for start in range(0, streams, 250):
            batch = range(start, min(streams, start + 250))
            clients += await asyncio.gather(*[SSEClient.open(service.port, [f"s{i % 50}"], timeout=30) for i in batch])
        await asyncio.gather(*[c.wait_open(30) for c in clients])
        assert service.proc is not None
        started = time.monotonic()
        service.proc.send_signal(signal.SIGTERM)
        await asyncio.gather(*[c.until_end(30) for c in clients])
        code = await asyncio.to_thread(service.proc.wait, 30)
        elapsed = time.monotonic() - started
        completed = sum(c.completed for c in clients)
    finally:
        await asyncio.gather(*[c.close() for c in clients])
        service.stop()
    return elapsed, completed, code


async def slow_consumer_run(redis_url: str, slow: int, megabytes: int) -> tuple[float, float, float]:
    """(healthy p50 ms, healthy p99 ms, RSS growth MiB) publishing `megabytes` of 10 KB events."""
    service = Service({"PUSHSVC_REDIS_URL": redis_url, "PUSHSVC_PUBLISH_TOKENS": TOKEN,
                       "PUSHSVC_TCP_USER_TIMEOUT_MS": "2000"}).start()
    try:
        assert service.proc is not None
        healthy = [await SSEClient.open(service.port, ["fire"]) for _ in range(5)]
        await asyncio.gather(*[c.wait_open() for c in healthy])
        stalled = [await asyncio.to_thread(stalled_reader, service.port, "fire") for _ in range(slow)]
        before = peak = rss_bytes(service.proc.pid)
        latencies: list[float] = []

        def record(event: Event) -> None:
            latencies.append(time.time() - json.loads(event.data)["t"])

        count = megabytes * 1024 // 10
        readers = [asyncio.create_task(read_like_a_browser(service.port, "fire", c, count, record)) for c in healthy]

        async def sample() -> None:
            nonlocal peak
            while True:
                peak = max(peak, rss_bytes(service.proc.pid))  # type: ignore[union-attr]
                await asyncio.sleep(0.05)

        sampler = asyncio.create_task(sample())
        await publish_bulk(service.base, "fire", megabytes * 1024 * 1024, 10 * 1024)
        await asyncio.gather(*readers)
        sampler.cancel()
        for sock in stalled:
            sock.close()
        await asyncio.gather(*[c.close() for c in healthy])
    finally:
        service.stop()
    return percentile(latencies, 0.5) * 1000, percentile(latencies, 0.99) * 1000, (peak - before) / 2**20


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--megabytes", type=int, default=20)
    args = parser.parse_args()

    recovery = await recovery_seconds(args.rounds)
    print(f"recovery after a Redis restart (Redis up -> first event delivered): "
          f"median {statistics.median(recovery) * 1000:.0f} ms, max {max(recovery) * 1000:.0f} ms "
          f"({', '.join(f'{r * 1000:.0f}' for r in recovery)})")

    redis_server = RedisServer()
    redis_server.start()
    try:
        elapsed, completed, code = await shutdown_seconds(args.streams, redis_server.url)
        print(f"SIGTERM with {args.streams} open streams: exit {code} after {elapsed:.2f} s, "
              f"{completed}/{args.streams} responses completed cleanly")
        base = await slow_consumer_run(redis_server.url, 0, args.megabytes)
        slow = await slow_consumer_run(redis_server.url, 50, args.megabytes)
    finally:
        redis_server.stop()
    print(f"{args.megabytes} MB published, 5 healthy clients, no slow clients: p50 {base[0]:.1f} ms, "
          f"p99 {base[1]:.1f} ms, RSS growth {base[2]:.1f} MiB")
    print(f"{args.megabytes} MB published, 5 healthy clients, 50 stalled readers: p50 {slow[0]:.1f} ms, "
          f"p99 {slow[1]:.1f} ms, RSS growth {slow[2]:.1f} MiB")
    print(f"healthy latency ratio with/without stalled readers: p50 {slow[0] / base[0]:.2f}x, "
          f"p99 {slow[1] / base[1]:.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
