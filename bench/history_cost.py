"""The cost of history on publish, and Redis memory per 1000 stored events.

Starts a private redis-server on a free loopback port, then in one run:
* publishes N events (~200-byte payloads) through the service's publish path
  (`RedisBroker.publish`, the Lua script) with history on (PUSHSVC_HISTORY_SIZE=1000)
  and off (0), alternating rounds, C concurrent publishers -- and prints publishes/s and
  the on/off ratio;
* stores 1000 events of ~200 bytes in one channel and prints `MEMORY USAGE` of its
  history stream and meta hash.

    python bench/history_cost.py [--events 20000] [--concurrency 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pushsvc.broker.redis import RedisBroker
from pushsvc.events import Event
from tests.support.procs import RedisServer

PAYLOAD = {"question": "which programming is the best?", "value": "x" * 120, "who": "allen", "n": 0}


class _Quiet:
    def on_message(self, channel: str, payload: bytes) -> None: ...

    def on_subscribed(self, channel: str) -> None: ...


def script_usec(server: RedisServer) -> float:
    with server.client() as client:
        stats = client.info("commandstats")
        client.config_resetstat()
    return float(stats.get("cmdstat_evalsha", {}).get("usec_per_call", 0.0))


async def rate(url: str, history_size: int, events: int, concurrency: int) -> float:
    broker = RedisBroker(url, history_size=history_size, history_ttl_seconds=3600)
    per_task = events // concurrency

    async def worker(w: int) -> None:
        for i in range(per_task):
            await broker.publish([Event((f"bench-{w % 8}",), {**PAYLOAD, "n": i})])

    started = time.perf_counter()
    await asyncio.gather(*[worker(w) for w in range(concurrency)])
    elapsed = time.perf_counter() - started
    await broker.stop()
    return per_task * concurrency / elapsed


async def memory(url: str, server: RedisServer) -> tuple[int, int, int]:
    broker = RedisBroker(url, history_size=1000, history_ttl_seconds=3600)
    events = [Event(("mem",), {**PAYLOAD, "n": i}) for i in range(1000)]
    await broker.publish(events)
    await broker.stop()
    with server.client() as client:
        entry = client.xrange("pushsvc:{mem}:history", count=1)[0][1][b"m"]
        history = client.memory_usage("pushsvc:{mem}:history", samples=0)
        meta = client.memory_usage("pushsvc:{mem}:meta", samples=0)
    return len(entry), int(history or 0), int(meta or 0)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    server = RedisServer()
    server.start()
    try:
        on, off, on_usec, off_usec = [], [], [], []
        script_usec(server)
        for _ in range(args.rounds):
            on.append(await rate(server.url, 1000, args.events, args.concurrency))
            on_usec.append(script_usec(server))
            off.append(await rate(server.url, 0, args.events, args.concurrency))
            off_usec.append(script_usec(server))
        size, history, meta = await memory(server.url, server)
    finally:
        server.stop()
    on_rate, off_rate = statistics.median(on), statistics.median(off)
    print(f"publishes/s with history (size 1000): {on_rate:,.0f}  (rounds: {', '.join(f'{r:,.0f}' for r in on)})")
    print(f"publishes/s without history (size 0): {off_rate:,.0f}  (rounds: {', '.join(f'{r:,.0f}' for r in off)})")
    print(f"ratio with/without history: {on_rate / off_rate:.2f}")
    on_us, off_us = statistics.median(on_usec), statistics.median(off_usec)
    print(f"redis CPU per publish script: {on_us:.1f} us with history, {off_us:.1f} us without "
          f"(ratio {on_us / off_us:.2f})")
    print(f"1000 stored events of {size} bytes each: history stream {history / 1024:,.1f} KiB "
          f"({history / 1000:,.0f} bytes/event), meta hash {meta} bytes")


if __name__ == "__main__":
    asyncio.run(main())
