"""pushsvc's per-event cost on the Redis -> hub path, without Hypercorn or sockets to clients:
CPU per event of the pub/sub reader (`pushsvc.broker.pubsub`), the routing, `Hub.on_message`
(parse, fan-out, channel log) and the streams' pump into a ``send`` that does nothing,
compared with another checkout in the same run.

A private redis-server; each checkout runs in its own process (``--child`` from that root)
with a `RedisBroker` hub, --streams one-channel streams and a write delay of --delay-ms (10),
while this process publishes --events events at --rate per second through pushsvc's publish
script (pipelined over a raw socket: its CPU is not counted).  The child's CPU from the first
event to the last, per event: with --streams 1 almost all of it is the per-event path.
Interleaved --repeat times; the table gives the median and the spread.

    git archive main | tar -x -C /tmp/main
    python bench/reader_path.py --baseline-root /tmp/main
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CHANNEL = "reader"


async def measure(url: str, streams: int, events: int, delay_ms: float) -> dict[str, float]:
    from pushsvc.broker.redis import RedisBroker
    from pushsvc.core.streams import pump
    from pushsvc.hub import Hub
    from pushsvc.metrics import Metrics
    from pushsvc.session import StreamSession

    broker = RedisBroker(url)
    hub = Hub(broker, Metrics(), write_delay_seconds=delay_ms / 1000)
    await hub.start()

    async def send(message: dict[str, Any]) -> None:
        pass

    sessions = [StreamSession(hub, hub.metrics, (CHANNEL,), None, False, 3000, queue_size=100_000,
                              queue_bytes=64 << 20) for _ in range(streams)]
    tasks = [asyncio.create_task(pump(s, send)) for s in sessions]
    async with asyncio.timeout(30):
        while not all(s.cursor.synced[0] for s in sessions):  # noqa: ASYNC110 - polls on purpose
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    print("ready", flush=True)
    metrics = hub.metrics
    async with asyncio.timeout(60):
        while metrics.events_received == 0:  # noqa: ASYNC110 - polls on purpose
            await asyncio.sleep(0.001)
    cpu0 = time.process_time()
    seen0 = metrics.events_received
    async with asyncio.timeout(120):
        while metrics.events_received < events or metrics.events_delivered < events * streams:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
    cpu = time.process_time() - cpu0
    counted = metrics.events_received - seen0
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await hub.stop()
    return {"cpu_per_event_us": cpu / counted * 1e6, "invalid": metrics.invalid_messages}


def child(args: argparse.Namespace) -> None:
    import uvloop

    print(json.dumps(uvloop.run(measure(args.url, args.streams, args.events, args.delay_ms))), flush=True)


def run(root: Path, args: argparse.Namespace, url: str, sha: bytes) -> dict[str, float]:
    import redis
    import uvloop

    from bench.write_delay import publish_native

    with redis.Redis.from_url(url) as client:
        client.delete(f"pushsvc:{{{CHANNEL}}}:history", f"pushsvc:{{{CHANNEL}}}:meta")
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "reader_path.py"), "--child", "--url", url, "--events", str(args.events),
         "--streams", str(args.streams), "--delay-ms", str(args.delay_ms)],
        cwd=root, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(root)},
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"child did not start: {line!r}")
        import bench.write_delay as wd

        wd.CHANNEL = CHANNEL  # publish_native publishes on the module's CHANNEL
        spy = wd.profiler(proc.pid, args.profile) if args.profile else None
        uvloop.run(publish_native(url, sha, 1, args.rate, args.events / args.rate))
        out, _ = proc.communicate(timeout=180)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return dict(json.loads(out.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-root", default="", help="the other checkout")
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=2000.0, help="events per second")
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--delay-ms", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--profile", default="", help="a file: py-spy record (raw) of the last child run")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    sys.path.insert(0, str(HERE.parent))
    import redis

    from pushsvc.broker.scripts import PUBLISH_LUA
    from tests.support.procs import RedisServer

    here = HERE.parent
    variants: list[tuple[str, Path]] = []
    if args.baseline_root:
        variants.append(("baseline", Path(args.baseline_root).resolve()))
    variants.append(("this checkout", here))
    server = RedisServer()
    server.start()
    try:
        with redis.Redis.from_url(server.url) as client:
            sha = client.script_load(PUBLISH_LUA).encode()
        results: dict[str, list[float]] = {name: [] for name, _ in variants}
        for _ in range(args.repeat):
            for name, root in variants:
                row = run(root, args, server.url, sha)
                results[name].append(row["cpu_per_event_us"])
                print(f"    {name}: {row['cpu_per_event_us']:.2f} µs/event (load {os.getloadavg()[0]:.2f})",
                      flush=True)
    finally:
        server.stop()
    print(f"\n{args.streams} stream(s), write delay {args.delay_ms:g} ms, {args.events:,} events at "
          f"{args.rate:,.0f}/s; median of {args.repeat} interleaved runs")
    print("| variant | CPU/event µs (median) | runs | vs first |")
    print("|---|---|---|---|")
    first = statistics.median(results[variants[0][0]])
    for name, _ in variants:
        med = statistics.median(results[name])
        runs = ", ".join(f"{v:.1f}" for v in results[name])
        print(f"| {name} | {med:.2f} | {runs} | {med / first:.3f}x |")


if __name__ == "__main__":
    main()
