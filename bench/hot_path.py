"""pushsvc's own hot path, without Hypercorn or sockets: CPU per delivery of the hub's
fan-out plus the stream pump, compared with another checkout in the same run.

100 streams on one channel of the embedded broker, each pumped by `pushsvc.core.streams.pump`
into a ``send`` that does nothing; events published in batches of --batch (1: every event
its own write, as on an idle server; 20: what a loaded server's queues gather), with the
event loop run between batches until every stream has written.  Without Hypercorn's
per-write cost and the kernel's, pushsvc's own share is magnified: a regression shows here
first.  Each checkout runs in its own process (``python bench/hot_path.py --child`` from
that root), interleaved --repeat times; the figure is the minimum (the least disturbed run).

    git archive main | tar -x -C /tmp/main
    python bench/hot_path.py --baseline-root /tmp/main
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
STREAMS = 100


async def measure(events: int, batch: int) -> dict[str, float]:
    from pushsvc.broker.memory import MemoryBroker
    from pushsvc.core.streams import pump
    from pushsvc.events import Event
    from pushsvc.hub import Hub
    from pushsvc.metrics import Metrics
    from pushsvc.session import StreamSession

    broker = MemoryBroker(history_size=10)
    hub = Hub(broker, Metrics())
    await hub.start()
    writes = 0

    async def send(message: dict[str, Any]) -> None:
        nonlocal writes
        writes += 1

    await broker.publish([Event(("hot",), "first")])
    sessions = [StreamSession(hub, hub.metrics, ("hot",), None, False, 3000, queue_size=10_000,
                              queue_bytes=16 << 20) for _ in range(STREAMS)]
    tasks = [asyncio.create_task(pump(s, send)) for s in sessions]
    while not all(s.cursor.synced[0] for s in sessions):  # noqa: ASYNC110 - polls the loop on purpose
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # every opening written
    data = "~1~2~" + "x" * 64
    batches = [[Event(("hot",), data) for _ in range(batch)] for _ in range(events // batch)]
    delivered0, writes0 = hub.metrics.events_delivered, writes
    cpu0 = time.process_time()
    sent = 0
    for events_batch in batches:
        await broker.publish(events_batch)
        sent += len(events_batch)
        while hub.metrics.events_delivered - delivered0 < sent * STREAMS:  # noqa: ASYNC110 - every stream wrote it
            await asyncio.sleep(0)
    cpu = time.process_time() - cpu0
    delivered = hub.metrics.events_delivered - delivered0
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await hub.stop()
    return {"cpu_per_delivery_us": cpu / delivered * 1e6, "deliveries_per_write": delivered / (writes - writes0)}


def child(args: argparse.Namespace) -> None:
    import uvloop

    print(json.dumps(uvloop.run(measure(args.events, args.batch))))


def run(root: Path, args: argparse.Namespace, batch: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, str(HERE / "hot_path.py"), "--child", "--events", str(args.events), "--batch", str(batch)],
        cwd=root, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(root)},
        capture_output=True, text=True, check=True, timeout=600,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-root", required=False, default="", help="the other checkout")
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=0, help="one batch size only (default: 1 and 20)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    here = HERE.parent
    variants: list[tuple[str, Path]] = []
    if args.baseline_root:
        variants.append(("baseline", Path(args.baseline_root).resolve()))
    variants.append(("this checkout", here))
    print(f"{STREAMS} streams, {args.events:,} events, no-op send; min of {args.repeat} interleaved runs")
    print("| batch | variant | CPU/delivery µs | vs first | deliveries/write |")
    print("|---|---|---|---|---|")
    for batch in [args.batch] if args.batch else [1, 20]:
        results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in variants}
        for _ in range(args.repeat):
            for name, root in variants:
                results[name].append(run(root, args, batch))
        first = min(r["cpu_per_delivery_us"] for r in results[variants[0][0]])
        for name, _ in variants:
            best = min(results[name], key=lambda r: r["cpu_per_delivery_us"])
            print(f"| {batch} | {name} | {best['cpu_per_delivery_us']:.3f} | "
                  f"{best['cpu_per_delivery_us'] / first:.3f}x | {best['deliveries_per_write']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
