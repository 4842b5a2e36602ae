"""Soak: connection churn for a given time against `pushsvc serve`, then whether memory
stayed flat and every reconnect chain got its channel exactly once, in order.

    python bench/soak.py                                  # 10 minutes, 600 streams, 100 events/s
    python bench/soak.py --seconds 120 --streams 300      # a short one
    python bench/soak.py --compare-gc --compare-seconds 240
                        # first the same soak with main's old collector settings (before
                        # issue 18: no full collection ever, Hypercorn's connection cycle
                        # kept), then the shipped ones: a before/after table in one run

What runs (everything on loopback, stopped at the end): a private `redis-server` on a free
port (never :6379) and one `pushsvc serve` process (bench/hypercorn-bench.toml, one worker).
`--streams` chains each hold one stream on one of `--channels` channels: a stream lives a
random 0.5-5 s, then the client drops it and the chain reconnects at once with its
``Last-Event-ID`` (about 220 new streams a second with 600 chains).  A publisher puts
`--rate` events a second, round-robin over the channels, into Redis with pushsvc's own
publish step (`pushsvc.publisher`), each event's data its send time.

Printed: every `--sample-seconds` the server's RSS (whole process tree), its open
descriptors, streams opened, deliveries and the p99 of live deliveries (publish ->
receive; replays after a reconnect are not latency) in that window; at the end, per chain,
whether the sequence numbers it received across all its reconnects were gapless and
without duplicates (and resets, which would mean history did not cover a reconnect), the
RSS drift from minute 2 to the end in %, and the server's own figures from /metrics
(full collections and their longest pause, event loop lag).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import uvloop  # noqa: E402
from loadgen import tree_rss_bytes  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from pushsvc.publisher import AsyncPublisher  # noqa: E402
from tests.support.procs import RedisServer, free_port  # noqa: E402

EVENT = re.compile(rb"(?:^|(?<=\n))id: ([^\n]*)\n(?:event: ([^\n]*)\n)?(?:data: ([^\n]*)\n)?\n")

#: `pushsvc serve` with the collector settings of main before issue 18 (the baseline).
OLD_GC = """
import gc, sys
sys.path.insert(0, {root!r})
import pushsvc.gcpolicy as policy
def install():
    gc.collect(); gc.freeze(); gc.set_threshold(200_000, 50, 1000)
policy.install = install
from pushsvc.cli import main
sys.exit(main())
"""


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Chain:
    channel: str
    last_id: str | None = None
    epoch: str | None = None
    seq: int | None = None  # the position: the last sequence number received (or stated)
    delivered: int = 0
    gaps: int = 0
    duplicates: int = 0
    resets: int = 0
    connections: int = 0


@dataclass
class Window:
    opened: int = 0
    deliveries: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: int = 0


class Soak:
    def __init__(self, port: int, args: argparse.Namespace) -> None:
        self.port = port
        self.args = args
        self.channels = [f"soak-{i}" for i in range(args.channels)]
        self.chains = [Chain(self.channels[i % len(self.channels)]) for i in range(args.streams)]
        self.window = Window()
        self.stop = asyncio.Event()
        self.published = 0

    async def run_chain(self, chain: Chain) -> None:
        while not self.stop.is_set():
            try:
                await self.one_stream(chain, random.uniform(0.5, 5.0))
            except (OSError, asyncio.IncompleteReadError, ValueError):
                self.window.errors += 1
                await asyncio.sleep(0.1)

    async def one_stream(self, chain: Chain, lifetime: float) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        opened_ns = time.monotonic_ns()
        chain.connections += 1
        self.window.opened += 1
        # HTTP/1.0: the body is the bare SSE stream (no chunk framing), ended by the close.
        resume = f"Last-Event-ID: {chain.last_id}\r\n" if chain.last_id else ""
        writer.write(f"GET /stream?channel={chain.channel} HTTP/1.0\r\nHost: soak\r\n{resume}\r\n".encode())
        buffer = b""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            if not head.startswith(b"HTTP/1.1 200") and not head.startswith(b"HTTP/1.0 200"):
                raise ValueError(head[:40])
            deadline = time.monotonic() + lifetime
            while (left := deadline - time.monotonic()) > 0 and not self.stop.is_set():
                try:
                    data = await asyncio.wait_for(reader.read(65536), left)
                except TimeoutError:
                    break
                if not data:
                    break
                buffer = self.parse(chain, buffer + data, opened_ns)
        finally:
            writer.transport.abort()

    def parse(self, chain: Chain, buffer: bytes, opened_ns: int) -> bytes:
        now = time.monotonic_ns()
        end = 0
        for match in EVENT.finditer(buffer):
            end = match.end()
            stream_id, event_type, data = match.group(1).decode(), match.group(2), match.group(3)
            epoch, _, seq_text = stream_id.rpartition("-")
            chain.last_id = stream_id
            if event_type == b"pushsvc.reset":
                chain.resets += 1
                chain.epoch, chain.seq = epoch, int(seq_text)
                continue
            if data is None:  # a position statement (`id:` alone)
                if chain.seq is None or chain.epoch != epoch:
                    chain.epoch, chain.seq = epoch, int(seq_text)
                continue
            seq = int(seq_text)
            if chain.seq is not None and chain.epoch == epoch:
                if seq <= chain.seq:
                    chain.duplicates += 1
                    continue
                if seq != chain.seq + 1:
                    chain.gaps += 1
                    if os.environ.get("SOAK_DEBUG"):
                        print("GAP", chain.channel, chain.seq, "->", seq, "connection", chain.connections,
                              "fresh" if sent_after(data, opened_ns) else "replay", buffer[:300])
            chain.epoch, chain.seq = epoch, seq
            chain.delivered += 1
            self.window.deliveries += 1
            sent = int(data)
            if sent >= opened_ns:  # live, not a replay
                self.window.latencies.append((now - sent) / 1e6)
        return buffer[end:]

    async def publish(self, redis_url: str) -> None:
        publisher = AsyncPublisher(url=redis_url)
        interval = 1.0 / self.args.rate
        next_at = time.monotonic()
        try:
            while not self.stop.is_set():
                channel = self.channels[self.published % len(self.channels)]
                await publisher.publish(channel, str(time.monotonic_ns()))
                self.published += 1
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
        finally:
            await publisher.aclose()


def sent_after(data: bytes, opened_ns: int) -> bool:
    return int(data) >= opened_ns


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def scrape(port: int) -> dict[str, float]:
    import httpx

    samples: dict[str, float] = {}
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    except httpx.HTTPError:
        return samples
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return samples


def bucket_quantile(samples: dict[str, float], name: str, labels: str, q: float) -> float:
    """The upper bound of the bucket holding quantile `q` of a scraped histogram."""
    prefix = f"{name}_bucket{{" + (labels + "," if labels else "")
    buckets = sorted(
        (float("inf") if key[len(prefix):-1].split("=")[1] == "+Inf" else float(key[len(prefix):-1].split("=")[1]), v)
        for key, v in samples.items() if key.startswith(prefix)
    )
    if not buckets or buckets[-1][1] == 0:
        return 0.0
    target = q * buckets[-1][1]
    return next(bound for bound, count in buckets if count >= target)


def start_server(redis_url: str, old_gc: bool) -> tuple[subprocess.Popen[bytes], int, Any]:
    port = free_port()
    entry = ["-c", OLD_GC.format(root=str(ROOT))] if old_gc else ["-m", "pushsvc.cli"]
    env = {**os.environ, "PUSHSVC_REDIS_URL": redis_url, "PUSHSVC_PUBLISH_TOKENS": "soak",
           "PUSHSVC_LOG_LEVEL": "WARNING", "PUSHSVC_MAX_STREAMS": "20000"}
    log = tempfile.NamedTemporaryFile(prefix="soak-pushsvc-", suffix=".log", delete=False)
    proc = subprocess.Popen([sys.executable, *entry, "serve", "--bind", f"127.0.0.1:{port}",
                             "--config", str(HERE / "hypercorn-bench.toml")],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    import httpx

    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"pushsvc exited: {Path(log.name).read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("pushsvc did not become ready")
        time.sleep(0.2)
    return proc, port, log


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


async def soak(redis_url: str, args: argparse.Namespace, seconds: float, label: str) -> dict[str, Any]:
    proc, port, log = start_server(redis_url, old_gc=label == "old GC")
    soak = Soak(port, args)
    rows: list[dict[str, Any]] = []
    print(f"\n== {label}: {seconds:.0f} s, {args.streams} streams, {args.rate:g} events/s over "
          f"{args.channels} channels (pushsvc pid {proc.pid}, log {log.name})", flush=True)
    print(f"{'t s':>6} {'RSS MB':>8} {'fds':>6} {'opened':>8} {'delivered':>10} {'p99 ms':>8} {'errors':>7}",
          flush=True)
    tasks = [asyncio.create_task(soak.run_chain(chain)) for chain in soak.chains]
    tasks.append(asyncio.create_task(soak.publish(redis_url)))
    started = time.monotonic()
    try:
        rows.append({"t": 0, "rss": tree_rss_bytes(proc.pid), "fds": open_fds(proc.pid)})
        while (elapsed := time.monotonic() - started) < seconds:
            await asyncio.sleep(min(args.sample_seconds, seconds - elapsed))
            window, soak.window = soak.window, Window()
            row = {"t": round(time.monotonic() - started), "rss": tree_rss_bytes(proc.pid),
                   "fds": open_fds(proc.pid), "opened": window.opened, "delivered": window.deliveries,
                   "p99": percentile(window.latencies, 0.99), "errors": window.errors}
            rows.append(row)
            print(f"{row['t']:>6} {row['rss'] / 2**20:>8.1f} {row['fds']:>6} {row['opened']:>8} "
                  f"{row['delivered']:>10} {row['p99']:>8.1f} {row['errors']:>7}", flush=True)
    finally:
        soak.stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    metrics = await asyncio.to_thread(scrape, port)
    stop_server(proc)
    chains = soak.chains
    result = {
        "label": label, "seconds": seconds, "rows": rows, "published": soak.published,
        "connections": sum(c.connections for c in chains),
        "delivered": sum(c.delivered for c in chains),
        "clean_chains": sum(1 for c in chains if not (c.gaps or c.duplicates or c.resets)),
        "chains": len(chains), "gaps": sum(c.gaps for c in chains),
        "duplicates": sum(c.duplicates for c in chains), "resets": sum(c.resets for c in chains),
        "full_collections": metrics.get('pushsvc_gc_collections_total{generation=2}', 0.0),
        "full_pause_p99_s": bucket_quantile(metrics, "pushsvc_gc_pause_seconds", "generation=2", 0.99),
        "full_pause_sum_s": metrics.get('pushsvc_gc_pause_seconds_sum{generation=2}', 0.0),
        "loop_lag_p99_s": bucket_quantile(metrics, "pushsvc_event_loop_lag_seconds", "", 0.99),
        "rss_drift_pct": drift(rows),
    }
    print(f"chains: {result['clean_chains']}/{result['chains']} gapless and duplicate-free across "
          f"{result['connections']:,} streams ({result['gaps']} gaps, {result['duplicates']} duplicates, "
          f"{result['resets']} resets); {result['delivered']:,} deliveries of {result['published']:,} events")
    print(f"RSS drift from minute 2 to the end: {result['rss_drift_pct']:+.1f}%; "
          f"full collections {result['full_collections']:.0f} (pause sum {result['full_pause_sum_s']:.2f} s, "
          f"p99 <= {result['full_pause_p99_s']} s); event loop lag p99 <= {result['loop_lag_p99_s']} s", flush=True)
    return result


def drift(rows: list[dict[str, Any]]) -> float:
    """RSS growth in % from the first sample at or after 120 s (else the first) to the last."""
    after = [row for row in rows if row["t"] >= 120] or rows
    first, last = after[0]["rss"], rows[-1]["rss"]
    return (last - first) / first * 100 if first else 0.0


def markdown(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [f"`python bench/soak.py {' '.join(sys.argv[1:])}` -- {args.streams} streams living 0.5-5 s "
             f"(reconnecting with Last-Event-ID), {args.rate:g} events/s over {args.channels} channels.", ""]
    header = "| t (min) | " + " | ".join(f"{r['label']}: RSS MB | p99 ms" for r in results) + " |"
    lines += [header, "|---|" + "---|---|" * len(results)]
    last = max(row["t"] for r in results for row in r["rows"])
    for minute in range(0, int(last + args.sample_seconds / 2) // 60 + 1):
        cells = []
        for r in results:
            # the sample nearest to the minute (samples drift by a second or so)
            near = [row for row in r["rows"] if abs(row["t"] - minute * 60) <= args.sample_seconds / 2]
            row = min(near, key=lambda row: abs(row["t"] - minute * 60)) if near else None
            cells.append(f"{row['rss'] / 2**20:.0f} | {row.get('p99', float('nan')):.0f}" if row else " | ")
        lines.append(f"| {minute} | " + " | ".join(cells) + " |")
    lines += ["", "| | " + " | ".join(r["label"] for r in results) + " |", "|---|" + "---|" * len(results)]
    for name, key, spec in [
        ("seconds", "seconds", ".0f"), ("streams opened", "connections", ",.0f"),
        ("events published", "published", ",.0f"), ("deliveries", "delivered", ",.0f"),
        ("clean chains", "clean_chains", ",.0f"), ("gaps / duplicates / resets", None, ""),
        ("RSS drift minute 2 -> end %", "rss_drift_pct", "+.1f"),
        ("full collections", "full_collections", ".0f"), ("full collection pauses, sum s", "full_pause_sum_s", ".2f"),
        ("full collection pause p99 <= s", "full_pause_p99_s", "g"), ("event loop lag p99 <= s", "loop_lag_p99_s", "g"),
    ]:
        if key is None:
            cells = [f"{r['gaps']} / {r['duplicates']} / {r['resets']}" for r in results]
        else:
            cells = [format(r[key], spec) for r in results]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--streams", type=int, default=600)
    parser.add_argument("--rate", type=float, default=100.0, help="events per second, over all channels")
    parser.add_argument("--channels", type=int, default=20)
    parser.add_argument("--sample-seconds", type=float, default=30.0)
    parser.add_argument("--compare-gc", action="store_true",
                        help="first a soak with main's old collector settings (the baseline)")
    parser.add_argument("--compare-seconds", type=float, default=0.0,
                        help="length of the baseline soak (default: --seconds)")
    parser.add_argument("--output", default="", help="also write the markdown table to this file")
    args = parser.parse_args()
    redis = RedisServer()
    redis.start()
    results = []
    try:
        if args.compare_gc:
            results.append(uvloop.run(soak(redis.url, args, args.compare_seconds or args.seconds, "old GC")))
            with redis.client() as client:
                client.flushall()
        results.append(uvloop.run(soak(redis.url, args, args.seconds, "pushsvc")))
    finally:
        redis.stop()
    table = markdown(results, args)
    print("\n" + table)
    if args.output:
        Path(args.output).write_text(table)
        Path(args.output).with_suffix(".json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
