"""Redis Cluster figures (prints, asserts nothing): publish throughput through 1 shard vs 3
shards vs a single Redis, Redis CPU per 1,000 events on each, and the longest delivery gap on
a channel whose master fails over (CLUSTER FAILOVER) or is killed (kill -9).

    python bench/cluster_bench.py [--seconds 5] [--clients 2] [--concurrency 32]

Starts its own six-node cluster and single redis-server on free loopback ports (tests'
fixtures), and pushsvc's brokers in `--clients` processes; about a minute in all.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pushsvc.broker.cluster import ClusterBroker
from pushsvc.broker.redis import RedisBroker
from pushsvc.events import Event
from tests.support.cluster import RedisCluster
from tests.support.procs import RedisServer


class Quiet:
    def __init__(self) -> None:
        self.arrivals: list[float] = []
        self.latencies: list[float] = []

    def on_message(self, channel: str, payload: bytes, trusted: bool = True) -> None:
        now = time.time()
        self.arrivals.append(time.monotonic())
        data = json.loads(payload).get("data")
        if isinstance(data, dict) and "t" in data:
            self.latencies.append(now - data["t"])

    def on_subscribed(self, channel: str) -> None:
        pass

    def local_subscribers(self, channel: str) -> int:
        return 0


def make_broker(target: str) -> Any:
    if target.startswith("cluster:"):
        return ClusterBroker(target[8:].split(","))
    return RedisBroker(target)


async def _publish_for(target: str, channels: list[str], seconds: float, concurrency: int) -> int:
    broker = make_broker(target)
    await broker.start(Quiet())
    if isinstance(broker, ClusterBroker):
        await broker.refresh()
    done = 0
    deadline = time.monotonic() + seconds

    async def worker(k: int) -> None:
        nonlocal done
        i = k
        while time.monotonic() < deadline:
            await broker.publish([Event((channels[i % len(channels)],), {"n": i})])
            done += 1
            i += concurrency

    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    await broker.stop()
    return done


def _client(args: tuple[str, list[str], float, int]) -> int:
    return asyncio.run(_publish_for(*args))


def cpu_seconds(ports: list[int]) -> float:
    import redis

    total = 0.0
    for port in ports:
        with redis.Redis(port=port) as client:
            info = client.info("cpu")
            total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return total


def throughput(label: str, target: str, channels: list[str], ports: list[int], opts: argparse.Namespace) -> None:
    before = cpu_seconds(ports)
    started = time.monotonic()
    with multiprocessing.Pool(opts.clients) as pool:
        counts = pool.map(_client, [(target, channels, opts.seconds, opts.concurrency)] * opts.clients)
    elapsed = time.monotonic() - started
    used = cpu_seconds(ports) - before
    events = sum(counts)
    print(f"{label:28s} {events / opts.seconds:9.0f} events/s   redis CPU {1000 * used / max(events, 1):6.3f} s"
          f" per 1,000 events over {len(ports)} server(s) ({elapsed:.1f} s wall)")


async def longest_gap(cluster: RedisCluster, fault: str) -> None:
    channel = "gap-probe"
    broker = ClusterBroker(cluster.seeds.split(","))
    listener = Quiet()
    await broker.start(listener)
    await broker.refresh()
    broker.subscribe(channel)
    await asyncio.sleep(1.0)
    stop = asyncio.Event()
    sent = 0

    async def publisher() -> None:
        nonlocal sent
        while not stop.is_set():
            try:
                await broker.publish([Event((channel,), {"n": sent, "t": time.time()})])
                sent += 1
            except Exception:
                pass
            await asyncio.sleep(0.005)

    task = asyncio.ensure_future(publisher())
    await asyncio.sleep(1.0)
    master = cluster.owner(channel)
    t0 = time.monotonic()
    if fault == "failover":
        await asyncio.to_thread(cluster.failover, master)
    else:
        await asyncio.to_thread(cluster.kill_master, master)
    await asyncio.sleep(3.0)
    stop.set()
    await task
    arrivals = [t for t in listener.arrivals if t > t0 - 1]
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    latencies = sorted(listener.latencies)
    p99 = latencies[int(len(latencies) * 0.99)] if latencies else float("nan")
    print(f"{fault:28s} longest gap in live delivery {max(gaps) * 1000:7.0f} ms, "
          f"p99 publish-to-delivery {p99 * 1000:.0f} ms ({len(listener.arrivals)} live deliveries of {sent} "
          "accepted publishes)")
    await broker.stop()
    if fault == "kill":
        await asyncio.to_thread(cluster.restart, master)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=2, help="publishing processes")
    parser.add_argument("--concurrency", type=int, default=32, help="publishes in flight per process")
    opts = parser.parse_args()
    cluster = RedisCluster()
    single = RedisServer()
    try:
        cluster.start()
        single.start()
        seeds = "cluster:" + cluster.seeds
        names = [f"ch-{i}" for i in range(300)]
        first = cluster.masters()[0]
        one_shard = [n for n in names if cluster.owner(n).port == first.port][:60]
        spread = names[:180]
        print(f"publish-bound: {opts.clients} processes x {opts.concurrency} in flight, 1-event requests, "
              f"{opts.seconds:.0f} s each")
        throughput("single redis", single.url, spread, [single.port], opts)
        throughput("cluster, 1 shard's channels", seeds, one_shard, [first.port], opts)
        throughput("cluster, 3 shards' channels", seeds, spread, [m.port for m in cluster.masters()], opts)
        asyncio.run(longest_gap(cluster, "failover"))
        asyncio.run(longest_gap(cluster, "kill"))
    finally:
        cluster.stop()
        single.stop()


if __name__ == "__main__":
    main()
