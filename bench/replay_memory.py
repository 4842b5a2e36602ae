"""Memory of a process while stalled streams resume from an old id (issue 12 "Resume replay").

    python bench/replay_memory.py [--streams 10] [--events 1000] [--event-bytes 65536]
                                  [--publish-mb 20] [--root DIR]

A channel holds `--events` events of `--event-bytes`; `--streams` clients resume from its
first id and never read while `--publish-mb` more are published to the channel.  Prints
the process's RSS before they open and the peak meanwhile, and the slow-consumer cuts.
`--root` runs the pushsvc of another checkout (e.g. `git archive main | tar -x -C /tmp/base`)
for a before/after in the same command line.  Everything runs on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from tests.support import procs
from tests.support.helpers import TOKEN, metric
from tests.support.load import publish_bulk
from tests.support.replay_load import fill_history, stalled_replays


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=10)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--event-bytes", type=int, default=64 * 1024)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--publish-mb", type=int, default=20)
    parser.add_argument("--root", type=Path, default=procs.ROOT)
    args = parser.parse_args()
    procs.ROOT = args.root.resolve()
    redis_server = procs.RedisServer()
    redis_server.start()
    service = procs.Service({"PUSHSVC_REDIS_URL": redis_server.url, "PUSHSVC_PUBLISH_TOKENS": TOKEN,
                             "PUSHSVC_HISTORY_SIZE": str(args.events), "PYTHONDONTWRITEBYTECODE": "1"})
    try:
        service.start()
        first_id = await fill_history(service, "big", args.events, args.event_bytes)
        live_bytes = args.publish_mb * 1024 * 1024
        live = asyncio.create_task(publish_bulk(service.base, "big", live_bytes, args.event_bytes - 200, batch=10))
        before, peak, socks = await stalled_replays(service, "big", first_id, args.streams, args.seconds)
        await live
        async with httpx.AsyncClient() as http:
            cuts = await metric(http, service, "pushsvc_slow_consumer_disconnects_total")
        for sock in socks:
            sock.close()
        mib = 1024 * 1024
        print(f"{procs.ROOT}: {args.streams} stalled streams resuming over {args.events} x {args.event_bytes} B "
              f"while {args.publish_mb} MB are published: RSS {before / mib:.0f} MiB before, peak {peak / mib:.0f} MiB "
              f"(+{(peak - before) / mib:.0f} MiB); slow-consumer cuts {cuts:.0f}")
    finally:
        service.stop()
        redis_server.stop()


if __name__ == "__main__":
    asyncio.run(main())
