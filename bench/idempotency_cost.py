"""The cost of idempotency on publish, in one run.

Starts a private redis-server on a free loopback port and one `pushsvc serve` on it, then:
* POST /publish, one ~200-byte event per request, C concurrent clients, alternating rounds
  without a key (the service still sends its internal retry token) and with a fresh
  ``Idempotency-Key`` per request -- and prints requests/s and Redis CPU per publish
  (``INFO cpu`` used_cpu_sys + used_cpu_user of the redis-server) for both, and the ratios;
* the publish script alone (a pipeline of EVALSHA from one client, no HTTP): Redis CPU per
  event for the previous release's script (no idempotency record), this script without a
  key, and with a key.

    python bench/idempotency_cost.py [--requests 4000] [--concurrency 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

import httpx
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pushsvc.broker import new_epoch
from pushsvc.broker.scripts import PUBLISH_LUA, Idempotency, calls_for
from pushsvc.events import Event
from tests.support.legacy import OLD_PUBLISH_LUA
from tests.support.procs import RedisServer, Service

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-token"
PAYLOAD = {"question": "which programming is the best?", "value": "x" * 120, "who": "allen", "n": 0}


def redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def http_round(base: str, requests: int, concurrency: int, keyed: bool) -> float:
    """requests/s of POST /publish."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    per_task = requests // concurrency
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:

        async def worker(w: int) -> None:
            for i in range(per_task):
                extra = {"Idempotency-Key": uuid.uuid4().hex} if keyed else {}
                body = {"channel": f"bench-{w % 8}", "data": {**PAYLOAD, "n": i}}
                response = await client.post("/publish", json=body, headers={**headers, **extra})
                if response.status_code != 202:
                    raise RuntimeError(response.text)

        started = time.perf_counter()
        await asyncio.gather(*[worker(w) for w in range(concurrency)])
        return per_task * concurrency / (time.perf_counter() - started)


def script_cpu_per_event(client: redis.Redis, mode: str, events: int) -> float:
    """Redis CPU seconds per event for one script variant (pipelines of 100 calls; at this
    rate the idle redis-server's own timers are negligible)."""
    old_sha = client.script_load(OLD_PUBLISH_LUA)
    new_sha = client.script_load(PUBLISH_LUA)
    before = redis_cpu(client)
    for start in range(0, events, 100):
        pipe = client.pipeline(transaction=False)
        batch = [Event((f"s-{mode}-{(start + i) % 8}",), {**PAYLOAD, "n": start + i}) for i in range(100)]
        if mode == "old":
            for event in batch:
                channel = event.channels[0]
                pipe.evalsha(old_sha, 2, f"pushsvc:{{{channel}}}:meta", f"pushsvc:{{{channel}}}:history",
                             channel, event.message_prefix(), 1000, 3600, new_epoch())
        else:
            for event in batch:  # one request per event, as a single-event POST /publish
                idem = Idempotency("bench", uuid.uuid4().hex, 300) if mode == "key" else None
                ((keys, args),) = calls_for([event], idem, 1000, 3600, new_epoch)
                pipe.evalsha(new_sha, len(keys), *keys, *args)
        pipe.execute()
    return (redis_cpu(client) - before) / events


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--script-events", type=int, default=20000)
    args = parser.parse_args()
    server = RedisServer()
    server.start()
    service = Service({"PUSHSVC_REDIS_URL": server.url, "PUSHSVC_PUBLISH_TOKENS": TOKEN,
                       "PUSHSVC_LOG_LEVEL": "WARNING"}, config=ROOT / "bench" / "hypercorn-bench.toml")
    rates: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    evalsha: dict[bool, list[float]] = {False: [], True: []}
    try:
        service.start()
        with server.client() as client:
            await http_round(service.base, 500, args.concurrency, False)  # warm-up
            before = redis_cpu(client)
            await asyncio.sleep(2)  # measuring the idle redis-server (its timers), subtracted below
            idle_per_s = (redis_cpu(client) - before) / 2
            for _ in range(args.rounds):
                for keyed in (False, True):
                    client.config_resetstat()
                    before, started = redis_cpu(client), time.perf_counter()
                    rates[keyed].append(await http_round(service.base, args.requests, args.concurrency, keyed))
                    busy = redis_cpu(client) - before - idle_per_s * (time.perf_counter() - started)
                    cpu[keyed].append(busy / args.requests)
                    evalsha[keyed].append(float(client.info("commandstats")["cmdstat_evalsha"]["usec_per_call"]))
            script = {mode: script_cpu_per_event(client, mode, args.script_events) for mode in ("old", "none", "key")}
            records = sum(1 for _ in client.scan_iter("pushsvc:*:idem:*", count=1000))
            record_bytes = next((client.memory_usage(k, samples=0) for k in client.scan_iter("pushsvc:*:idem:b*")), 0)
    finally:
        service.stop()
        server.stop()
    plain, keyed = statistics.median(rates[False]), statistics.median(rates[True])
    plain_cpu, keyed_cpu = statistics.median(cpu[False]) * 1e6, statistics.median(cpu[True]) * 1e6

    def rounds(values: list[float]) -> str:
        return ", ".join(f"{v:,.0f}" for v in values)

    print(f"POST /publish requests/s without a key: {plain:,.0f}  (rounds: {rounds(rates[False])})")
    print(f"POST /publish requests/s with a key:    {keyed:,.0f}  (rounds: {rounds(rates[True])})")
    print(f"ratio with/without key (requests/s): {keyed / plain:.2f}")
    print(f"redis CPU per publish (INFO cpu, idle {idle_per_s * 1e3:.1f} ms/s subtracted): {plain_cpu:.1f} us "
          f"without a key, {keyed_cpu:.1f} us with a key (ratio {keyed_cpu / plain_cpu:.2f})")
    plain_us, keyed_us = statistics.median(evalsha[False]), statistics.median(evalsha[True])
    print(f"redis time inside the publish script (commandstats evalsha usec_per_call): {plain_us:.1f} us "
          f"without a key, {keyed_us:.1f} us with a key (ratio {keyed_us / plain_us:.2f})")
    print("publish script alone, redis CPU per event: "
          f"previous release (no record) {script['old'] * 1e6:.1f} us, this release without a key "
          f"{script['none'] * 1e6:.1f} us, with a key {script['key'] * 1e6:.1f} us")
    print(f"idempotency records alive at the end: {records:,} (one {record_bytes} bytes)")


if __name__ == "__main__":
    asyncio.run(main())
