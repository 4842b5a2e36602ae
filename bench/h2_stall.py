"""Memory of pushsvc with stalled HTTP/2 streams, with and without pushsvc's correction of
Hypercorn's h2 flow control (pushsvc/h2fix.py), in the same run:

    python bench/h2_stall.py [--streams 50] [--megabytes 20]

One h2c connection opens N streams with a zero flow-control window, ~M MB are published to
their channel, and the process's RSS is sampled.  "uncorrected" runs the same `pushsvc
serve` with the correction switched off in-process (a launcher sets CORRECTED_VERSIONS to
nothing, as if Hypercorn were an unchecked version).  Everything runs on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.h2stall import StalledH2Client
from tests.support.helpers import metric
from tests.support.load import publish_bulk, rss_bytes
from tests.support.procs import RedisServer, Service

UNCORRECTED = ("import sys, pushsvc.h2fix as f; f.CORRECTED_VERSIONS = frozenset(); "
               "from pushsvc.cli import main; sys.exit(main(sys.argv[1:]))")


class UncorrectedService(Service):
    def command(self) -> list[str]:
        return [sys.executable, "-c", UNCORRECTED, *super().command()[3:]]


async def measure(service: Service, streams: int, megabytes: int) -> dict[str, float]:
    assert service.proc is not None
    pid = service.proc.pid
    client = await StalledH2Client.connect(service.port)
    async with httpx.AsyncClient(timeout=30) as http:
        try:
            ids = [await client.open("/stream?channel=stall") for _ in range(streams)]
            await client.wait_for(lambda: len(client.status) == streams, 10)
            before = rss_bytes(pid)
            peak = before

            async def sample() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, rss_bytes(pid))
                    await asyncio.sleep(0.05)

            sampler = asyncio.create_task(sample())
            await publish_bulk(service.base, "stall", megabytes * 1024 * 1024, 10 * 1024)
            with contextlib.suppress(TimeoutError):
                await client.wait_for(lambda: client.reset >= set(ids), 10)
            await asyncio.sleep(1)  # let the last deliveries land before the final sample
            sampler.cancel()
            return {
                "rss_before_mib": before / 2**20, "rss_peak_mib": peak / 2**20,
                "rss_after_mib": rss_bytes(pid) / 2**20,
                "reset_streams": len(client.reset & set(ids)),
                "slow_consumer_cuts": await metric(http, service, "pushsvc_slow_consumer_disconnects_total"),
                "open_streams": await metric(http, service, "pushsvc_open_streams"),
            }
        finally:
            await client.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--megabytes", type=int, default=20)
    args = parser.parse_args()
    redis = RedisServer()
    redis.start()
    try:
        env = {"PUSHSVC_REDIS_URL": redis.url, "PUSHSVC_TCP_USER_TIMEOUT_MS": "0",
               "PUSHSVC_WRITE_TIMEOUT_SECONDS": "0", "PUSHSVC_PUBLISH_TOKENS": "test-publish-token"}
        for name, cls in (("uncorrected", UncorrectedService), ("corrected", Service)):
            service = cls(env).start()
            try:
                figures = await measure(service, args.streams, args.megabytes)
            finally:
                service.stop()
            print(f"{name:12s} " + "  ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                                              for k, v in figures.items()), flush=True)
    finally:
        redis.stop()


if __name__ == "__main__":
    asyncio.run(main())
