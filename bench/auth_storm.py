"""The app's authorisation callback under a reconnect storm, and what it adds to opening a
private stream.  Prints figures, asserts nothing.

* storm: `--streams` private streams (users `--users`, several tabs each) open, all drop,
  and all reconnect at once (concurrency `--concurrency`), against a real `pushsvc serve`
  and the small app server of the tests; the number of callback calls (and calls/s) with
  PUSHSVC_AUTH_CACHE_SECONDS=0 and =60;
* latency: time to the stream's first position for `--samples` sequential opens of a
  private channel through the callback and through a JWT, same run.

    python bench/auth_storm.py --streams 2000 --users 200
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support import jwts
from tests.support.authapp import AuthApp
from tests.support.procs import Service
from tests.support.sse_client import SSEClient, StreamClosed


def _serve_app(ports: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    app = AuthApp().start()
    ports.put(app.port)
    app._thread.join()


class AppProcess:
    """The tests' small app server in its own process (not competing with the bench's
    client loop for the GIL); calls are counted by pushsvc's own /metrics."""

    def __init__(self) -> None:
        ports: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
        self.proc = multiprocessing.Process(target=_serve_app, args=(ports,), daemon=True)
        self.proc.start()
        self.url = f"http://127.0.0.1:{ports.get(timeout=10)}/pushsvc/authorize"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.join(5)


def counter(service: Service, name: str) -> int:
    for line in httpx.get(service.base + "/metrics").text.splitlines():
        if line.startswith(f"pushsvc_{name}_total "):
            return int(float(line.split()[1]))
    return 0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def open_many(port: int, users: list[str], concurrency: int, headers_of: Any) -> list[SSEClient]:
    gate = asyncio.Semaphore(concurrency)

    async def one(user: str) -> SSEClient | None:
        async with gate:
            client = await SSEClient.open(port, [f"user:{user}"], headers=headers_of(user), timeout=30)
            try:
                await client.wait_open(timeout=30)
            except StreamClosed:  # refused for now (the callback did not answer in time)
                await client.close()
                return None
            return client

    return [c for c in await asyncio.gather(*[one(user) for user in users]) if c is not None]


async def storm(streams: int, users: int, concurrency: int, cache_seconds: str) -> dict[str, float]:
    app = AppProcess()
    service = Service({"PUSHSVC_PRIVATE_CHANNELS": "user:*", "PUSHSVC_AUTH_URL": app.url,
                       "PUSHSVC_AUTH_CACHE_SECONDS": cache_seconds, "PUSHSVC_LOG_LEVEL": "WARNING"}).start()
    try:
        who = [str(n % users) for n in range(streams)]
        headers_of = lambda user: {"Cookie": f"session={user}"}  # noqa: E731
        clients = await open_many(service.port, who, concurrency, headers_of)
        first = {name: counter(service, name) for name in ("auth_calls", "auth_errors")}
        first["opened"] = len(clients)
        for client in clients:
            await client.close()
        started = time.perf_counter()
        clients = await open_many(service.port, who, concurrency, headers_of)
        elapsed = time.perf_counter() - started
        for client in clients:
            await client.close()
        return {"first_calls": first["auth_calls"], "first_opened": first["opened"],
                "calls": counter(service, "auth_calls") - first["auth_calls"],
                "errors": counter(service, "auth_errors") - first["auth_errors"],
                "hits": counter(service, "auth_cache_hits"), "opened": len(clients), "elapsed": elapsed}
    finally:
        service.stop()
        app.stop()


async def latency(samples: int) -> dict[str, list[float]]:
    app = AppProcess()
    service = Service({"PUSHSVC_PRIVATE_CHANNELS": "user:*", "PUSHSVC_AUTH_URL": app.url,
                       "PUSHSVC_JWT_SECRET": jwts.SECRET, "PUSHSVC_JWT_AUDIENCE": jwts.AUDIENCE,
                       "PUSHSVC_LOG_LEVEL": "WARNING"}).start()
    token = jwts.hs256(["user:*"], ttl=3600)
    ways = {"callback": {"Cookie": "session=1"}, "jwt": {"Authorization": f"Bearer {token}"}}
    results: dict[str, list[float]] = {way: [] for way in ways}
    try:
        for _ in range(samples):
            for way, headers in ways.items():  # interleaved: both see the same machine load
                started = time.perf_counter()
                client = await SSEClient.open(service.port, ["user:1"], headers=headers)
                await client.wait_open()
                results[way].append((time.perf_counter() - started) * 1000)
                await client.close()
        return results
    finally:
        service.stop()
        app.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    print(f"reconnect storm: {args.streams} streams of {args.users} users, {args.concurrency} opening at once")
    for cache in ("0", "60"):
        r = await storm(args.streams, args.users, args.concurrency, cache)
        print(f"  PUSHSVC_AUTH_CACHE_SECONDS={cache:>2}: first connect {r['first_calls']:.0f} calls "
              f"({r['first_opened']:.0f} opened); reconnect storm {r['calls']:.0f} calls, {r['errors']:.0f} failed, "
              f"{r['opened']:.0f} streams opened in {r['elapsed']:.2f} s ({r['calls'] / r['elapsed']:.0f} calls/s), "
              f"cache hits {r['hits']:.0f}")
    results = await latency(args.samples)
    print(f"time to a private stream's position, {args.samples} sequential opens each (ms):")
    for way, values in results.items():
        print(f"  {way:>8}: median {statistics.median(values):.2f}  p99 {percentile(values, 0.99):.2f}")
    added = statistics.median(results["callback"]) - statistics.median(results["jwt"])
    print(f"  added by the callback: {added:.2f} ms at the median")


if __name__ == "__main__":
    asyncio.run(main())
