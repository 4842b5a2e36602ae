"""Coalesced writes (PUSHSVC_WRITE_DELAY_MS): server CPU per delivery and latency at a fixed rate.

100 subscribers on one channel; events at --rate per second (2,000) for --seconds (5),
published into a private redis-server by pushsvc's own publish script (what
`pushsvc.publisher` does: history, id, then PUBLISH -- the native path), pipelined over a raw
socket so the publisher stays cheap.  pushsvc runs once per write delay (--delays, default
0, 10 and 50 ms), one after another, then Nchan (HTTP publish, as bench/sse_bench.py feeds
it) in the same run.  Reported per server: CPU per delivery of the server's process tree
(Redis's own CPU beside it), p50/p99/max publish-to-receipt latency, loss, duplicates,
deliveries per write (``pushsvc_stream_writes_total``), and ratios to pushsvc with no delay
and to Nchan.  Everything runs on 127.0.0.1 and stops by itself.

    python bench/write_delay.py                      # 0/10/50 ms and Nchan, 5 s each
    python bench/write_delay.py --delays 0,10 --no-nchan --seconds 3
    python bench/write_delay.py --profile /tmp/wd    # py-spy record (raw) of each pushsvc run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import redis
import uvloop

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.loadgen import tree_cpu_seconds, tree_cpu_split  # noqa: E402
from bench.sse_bench import CHANNEL, Clients, Nchan, Pushsvc, _publish_rate, payload, percentile  # noqa: E402
from pushsvc.broker import new_epoch  # noqa: E402
from pushsvc.broker.scripts import PUBLISH_LUA, calls_for  # noqa: E402
from pushsvc.events import Event  # noqa: E402
from tests.support.procs import RedisServer  # noqa: E402

SUBSCRIBERS = 100


class BareFloor(Pushsvc):
    """bench/bare_asgi.py fed from Redis, coalescing on a ticker every `delay_ms` (0: a
    write per wake-up, as sse_bench's floor): the least Hypercorn allows at that write count."""

    def __init__(self, redis_url: str, delay_ms: int, mode: str = "") -> None:
        super().__init__(redis_url, SUBSCRIBERS, variant="bare", feed_redis=True)
        self.delay_ms = delay_ms
        self.mode = mode
        self.name = f"bare D={delay_ms}ms" + (f" {mode}" if mode else "")

    def env(self) -> dict[str, str]:
        return {**super().env(), "BENCH_WRITE_DELAY_MS": str(self.delay_ms), "BENCH_WRITE_MODE": self.mode}


class DelayedPushsvc(Pushsvc):
    def __init__(self, redis_url: str, delay_ms: int, root: Path | None = None) -> None:
        super().__init__(redis_url, SUBSCRIBERS)
        self.delay_ms = delay_ms
        self.root = root
        self.name = f"pushsvc D={delay_ms}ms" if root is None else f"baseline D={delay_ms}ms"

    def env(self) -> dict[str, str]:
        env = {**super().env(), "PYTHONDONTWRITEBYTECODE": "1"}
        if self.root is None or self.delay_ms:
            env["PUSHSVC_WRITE_DELAY_MS"] = str(self.delay_ms)
        return env

    def cwd(self) -> Path:
        return self.root or super().cwd()  # `python -m pushsvc.cli` imports the package there

    def counters(self) -> dict[str, float]:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5).read().decode()
        out = {}
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name in ("pushsvc_stream_writes_total", "pushsvc_events_delivered_total"):
                out[name] = float(value)
        return out


def _resp(*parts: bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def _arg(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


class _Discard(asyncio.Protocol):
    def data_received(self, data: bytes) -> None:
        pass


async def publish_native(redis_url: str, sha: bytes, first_seq: int, rate: float, seconds: float) -> float:
    """`rate` events/s for `seconds` through pushsvc's publish script (EVALSHA, pipelined,
    replies discarded); returns the achieved rate."""
    host, port = redis_url.split("//")[1].split("/")[0].split(":")
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_connection(_Discard, host, int(port))
    total = int(rate * seconds)
    sent = 0
    start = loop.time()
    while sent < total:
        due = min(total, int((loop.time() - start) * rate) + 1)
        batch = []
        while sent < due:
            event = Event((CHANNEL,), payload(first_seq + sent))
            for keys, args in calls_for([event], None, 1000, 3600, new_epoch):
                batch.append(_resp(b"EVALSHA", sha, b"%d" % len(keys), *map(_arg, keys), *map(_arg, args)))
            sent += 1
        transport.write(b"".join(batch))
        await asyncio.sleep(0.002)
    took = loop.time() - start
    transport.close()
    return sent / max(took, seconds)


def profiler(pid: int, out: str) -> subprocess.Popen[bytes] | None:
    spy = shutil.which("py-spy")
    if spy is None:
        print("    (py-spy not found: no profile)")
        return None
    return subprocess.Popen([spy, "record", "--format", "raw", "--pid", str(pid), "--subprocesses",
                             "--rate", "200", "--output", out, "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


#: Where a delivery's CPU goes, from py-spy's raw stacks: (label, frame name that marks it,
#: self time only).  A sample counts in every category whose frame is on its stack.
PROFILE_PARTS = (
    ("writes: pump -> Hypercorn -> transport", "HTTPStream.app_send", False),
    ("  of which the socket write (kernel)", "StreamWriter.write", True),
    ("fan-out: Hub.on_message", "Hub.on_message", False),
    ("  of which StreamQueue.push", "StreamQueue.push", False),
    ("  of which parse + encode, once per event", "parse_message", False),
    ("stream's next chunk (take, cursor)", "StreamSession.next_chunk", False),
    ("cooling: Hub.cool, flush instants, channel log", "Hub.cool|Hub._flush_due|ChannelLog.", False),
    ("event loop itself (uvloop, C)", "Runner.run", True),
)


def profile_summary(path: str) -> list[tuple[str, float]]:
    """Share of py-spy's samples (raw format) per `PROFILE_PARTS` category."""
    total = 0
    counts = [0] * len(PROFILE_PARTS)
    with open(path) as raw:
        for line in raw:
            stack, _, n = line.rstrip().rpartition(" ")
            if not stack:
                continue
            samples = int(n)
            total += samples
            frames = [f.split(" (", 1)[0] for f in stack.split(";")]
            for k, (_, marks, self_only) in enumerate(PROFILE_PARTS):
                names = marks.split("|")
                hit = ([frames[-1]] if self_only else frames)
                if any(f == m or (m.endswith(".") and f.startswith(m)) for f in hit for m in names):
                    counts[k] += samples
    return [(label, 100 * c / max(total, 1)) for (label, _, _), c in zip(PROFILE_PARTS, counts, strict=True)]


def run_one(server: Any, args: argparse.Namespace, redis: RedisServer, redis_pid: int, sha: bytes,
            profile: str | None) -> dict[str, Any]:
    clients = Clients(SUBSCRIBERS)
    try:
        server.start()
        opened = clients.open(server, SUBSCRIBERS, 30)
        time.sleep(1.0)
        before = server.counters() if isinstance(server, DelayedPushsvc) else {}
        spy = profiler(server.pid, profile) if profile else None
        cpu0, rcpu0 = tree_cpu_seconds(server.pid), tree_cpu_seconds(redis_pid)
        sys0 = tree_cpu_split(server.pid)[1]
        if isinstance(server, (DelayedPushsvc, BareFloor)):
            achieved = uvloop.run(publish_native(redis.url, sha, 1, args.rate, args.seconds))
        else:
            achieved = uvloop.run(_publish_rate(server, redis.url, 1, args.rate, args.seconds))
        expected = int(args.rate * args.seconds) * opened["connected"]
        clients.wait_quiet(expected, limit=30, quiet=2.0)
        cpu1, rcpu1 = tree_cpu_seconds(server.pid), tree_cpu_seconds(redis_pid)
        sys1 = tree_cpu_split(server.pid)[1]
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            spy.wait(30)
        after = server.counters() if isinstance(server, DelayedPushsvc) else {}
        seqs, lat, dups, closed = clients.collect()
    finally:
        clients.close()
        server.stop()
    lat_ms = [v / 1e6 for v in lat]
    deliveries = len(seqs)
    writes = after.get("pushsvc_stream_writes_total", 0) - before.get("pushsvc_stream_writes_total", 0)
    return {
        "server": server.name, "subscribers": opened["connected"], "achieved_rate": achieved,
        "deliveries": deliveries, "loss": expected - deliveries, "dups": dups, "closed": closed,
        "cpu_per_delivery_us": (cpu1 - cpu0) / max(deliveries, 1) * 1e6,
        "kernel_share": (sys1 - sys0) / max(cpu1 - cpu0, 1e-9),
        "redis_cpu_per_delivery_us": (rcpu1 - rcpu0) / max(deliveries, 1) * 1e6,
        "server_cpu_share": (cpu1 - cpu0) / args.seconds,
        "p50_ms": percentile(lat_ms, 0.5), "p99_ms": percentile(lat_ms, 0.99), "max_ms": max(lat_ms, default=0.0),
        "deliveries_per_write": deliveries / writes if writes else None,
        "p50_ms_by_second": [round(percentile([v / 1e6 for s, v in zip(seqs, lat, strict=True)
                                               if int(s // args.rate) == k], 0.5), 1)
                             for k in range(int(args.seconds))],
    }


def per_run(rows: list[dict[str, Any]]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for r in rows:
        out.setdefault(r["server"], []).append(r["cpu_per_delivery_us"])
    return out


def medians(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per server: the median of each number over its runs (loss and dups: summed)."""
    out = []
    for name in dict.fromkeys(r["server"] for r in rows):
        runs = [r for r in rows if r["server"] == name]
        row: dict[str, Any] = {"server": name}
        for key, value in runs[0].items():
            if key in ("loss", "dups", "closed"):
                row[key] = sum(r[key] for r in runs)
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                row[key] = statistics.median(r[key] for r in runs)
            elif key not in row:
                row[key] = value
        out.append(row)
    return out


def table(rows: list[dict[str, Any]], rate: float, seconds: float) -> str:
    base = next((r for r in rows if r["server"] == "baseline D=0ms"),
                next((r for r in rows if r["server"] == "pushsvc D=0ms"), None))
    nchan = next((r for r in rows if r["server"] == "nchan"), None)
    lines = [
        f"{SUBSCRIBERS} subscribers, {rate:,.0f} events/s for {seconds:g} s (server CPU: its process tree; "
        "Redis's beside it)", "",
        "| server | CPU/delivery µs | vs baseline | vs Nchan | Redis CPU/delivery µs | p50 ms | p99 ms | max ms "
        "| loss | dups | deliveries/write |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cpu = r["cpu_per_delivery_us"]
        vs0 = f"{cpu / base['cpu_per_delivery_us']:.2f}x" if base else "-"
        vsn = f"{cpu / nchan['cpu_per_delivery_us']:.2f}x" if nchan else "-"
        dpw = f"{r['deliveries_per_write']:.1f}" if r.get("deliveries_per_write") else "-"
        lines.append(f"| {r['server']} | {cpu:.2f} | {vs0} | {vsn} | {r['redis_cpu_per_delivery_us']:.2f} | "
                     f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} | {r['loss']} | {r['dups']} | {dpw} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--delays", default="0,10,50", help="write delays (ms) to run pushsvc with")
    parser.add_argument("--rate", type=float, default=2000.0, help="events per second")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--no-nchan", action="store_true")
    parser.add_argument("--bare-delays", default="",
                        help="write delays (ms) to run the bare-Hypercorn floor (bench/bare_asgi.py) with: "
                             "the least any app under Hypercorn can cost at that write count")
    parser.add_argument("--bare-direct", action="store_true",
                        help="also run each --bare-delays floor with its ticker writing every stream itself "
                             "(no stream task wakes)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run the whole list this many times, interleaved; the table gives medians")
    parser.add_argument("--profile", default="", help="directory: py-spy record (raw) of each pushsvc run")
    parser.add_argument("--baseline-root", default="",
                        help="another checkout (e.g. `git archive main | tar -x -C /tmp/main`): run its "
                             "pushsvc first, with no delay, as the baseline of the D=0 figures")
    parser.add_argument("--baseline-delays", default="0",
                        help="write delays (ms) to run the --baseline-root checkout with (e.g. 0,10: "
                             "compare each delay's CPU per delivery before and after a change)")
    args = parser.parse_args()
    delays = [int(d) for d in args.delays.split(",") if d]
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
    redis_server = RedisServer()
    redis_server.start()
    try:
        assert redis_server.proc is not None
        with redis.Redis.from_url(redis_server.url) as client:
            sha = client.script_load(PUBLISH_LUA).encode()
        rows = []
        servers: list[Any] = [DelayedPushsvc(redis_server.url, d) for d in delays]
        if args.baseline_root:
            servers[:0] = [DelayedPushsvc(redis_server.url, int(d), Path(args.baseline_root))
                           for d in args.baseline_delays.split(",") if d]
        for d in (int(d) for d in args.bare_delays.split(",") if d):
            servers.append(BareFloor(redis_server.url, d))
            if args.bare_direct and d:
                servers.append(BareFloor(redis_server.url, d, "direct"))
        if not args.no_nchan and shutil.which("nginx"):
            servers.append(Nchan(redis_server.url, SUBSCRIBERS))
        for server in [s for _ in range(args.repeat) for s in servers]:
            with redis.Redis.from_url(redis_server.url) as client:
                client.delete(f"pushsvc:{{{CHANNEL}}}:history", f"pushsvc:{{{CHANNEL}}}:meta")
            print(f"== {server.name} (load {os.getloadavg()[0]:.2f})", flush=True)
            profile = (f"{args.profile}/{server.name.replace(' ', '_').replace('=', '')}.txt"
                       if args.profile and isinstance(server, DelayedPushsvc) else None)
            row = run_one(server, args, redis_server, redis_server.proc.pid, sha, profile)
            if profile and os.path.exists(profile):
                row["profile"] = profile_summary(profile)
                for label, share in row["profile"]:
                    print(f"    {share:5.1f}%  {label}")
            print("   ", json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}),
                  flush=True)
            rows.append(row)
    finally:
        redis_server.stop()
    print()
    print(table(medians(rows), args.rate, args.seconds))
    if args.repeat > 1:
        print(f"\n(medians of {args.repeat} interleaved runs; CPU/delivery per run: "
              + "; ".join(f"{name}: {', '.join(f'{r:.2f}' for r in runs)}" for name, runs in per_run(rows).items())
              + ")")


if __name__ == "__main__":
    main()
