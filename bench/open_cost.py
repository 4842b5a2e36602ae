"""CPU per stream opened and per delivery of the app's own code, in process and without
sockets: N ``GET /stream`` requests through what Hypercorn would serve (`server.asgi_app`),
each until its opening chunk, then K events fanned out to all of them.  Runs on whatever
tree it is started from, so two trees can be compared one right after the other:

    python bench/open_cost.py [--streams 2000] [--events 20] [--rounds 5]

Prints the median over rounds of µs of CPU per stream opened and per delivery.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pushsvc.app import create_app
from pushsvc.config import Settings
from pushsvc.events import Event
from pushsvc.server import asgi_app


async def one_round(streams: int, events: int) -> tuple[float, float]:
    app = create_app(Settings(max_streams=streams + 10, queue_size=1000, log_level="WARNING"))
    served = asgi_app(app)
    rt = app.extensions["pushsvc"]
    async with app.test_app():
        leave = asyncio.Event()
        opened = 0
        delivered = 0
        all_open = asyncio.Event()
        all_delivered = asyncio.Event()

        async def client() -> None:
            requested = False
            first = True

            async def receive() -> dict[str, Any]:
                nonlocal requested
                if not requested:
                    requested = True
                    return {"type": "http.request", "body": b"", "more_body": False}
                await leave.wait()
                return {"type": "http.disconnect"}

            async def send(message: dict[str, Any]) -> None:
                nonlocal opened, delivered, first
                if message["type"] != "http.response.body":
                    return
                if first:
                    first = False
                    opened += 1
                    if opened == streams:
                        all_open.set()
                else:
                    delivered += message["body"].count(b"\ndata: ")
                    if delivered >= streams * events:
                        all_delivered.set()

            scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                     "scheme": "http", "path": "/stream", "raw_path": b"/stream",
                     "query_string": b"channel=bench", "root_path": "", "headers": [(b"host", b"x")],
                     "client": ("127.0.0.1", 1), "server": ("x", 80), "extensions": {}}
            await served(scope, receive, send)

        gc.collect()
        started = time.process_time()
        tasks = [asyncio.create_task(client()) for _ in range(streams)]
        await asyncio.wait_for(all_open.wait(), 60)
        open_cpu = time.process_time() - started
        await asyncio.sleep(0.3)  # every stream synced
        started = time.process_time()
        for n in range(events):
            await rt.broker.publish([Event(channels=("bench",), data=n)])
            await asyncio.sleep(0)
        await asyncio.wait_for(all_delivered.wait(), 60)
        deliver_cpu = time.process_time() - started
        leave.set()
        await asyncio.gather(*tasks)
    return open_cpu / streams * 1e6, deliver_cpu / (streams * events) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    results = [asyncio.run(one_round(args.streams, args.events)) for _ in range(args.rounds)]
    print(f"CPU/stream opened µs {statistics.median(r[0] for r in results):.1f}  "
          f"CPU/delivery µs {statistics.median(r[1] for r in results):.2f}  "
          f"(rounds: {', '.join(f'{a:.0f}/{b:.2f}' for a, b in results)})")


if __name__ == "__main__":
    main()
