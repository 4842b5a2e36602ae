"""HTTP/2 fan-out: N streams multiplexed on few TLS connections against the same N streams
over HTTP/1.1, same run, same pushsvc, same events (issue 16).

    python bench/h2_fanout.py                                  # 10,000 streams: h2 (100 x 100), h1 over TLS, h1
    python bench/h2_fanout.py --streams 1000 --events 10       # a quick one
    python bench/h2_fanout.py --modes h2,h1 --per-conn 50

Modes, each against its own fresh `pushsvc serve` (one worker) on a private Redis:

* ``h2`` -- TLS + HTTP/2 (ALPN ``h2``): ``--per-conn`` streams on each connection
  (default 100: 10,000 streams on 100 connections).  The client is the `h2` library on
  asyncio + ssl (`H2Conn`), spread over the same number of processes as the HTTP/1.1
  load generator uses (5,000 streams each).
* ``h1-tls`` -- TLS + HTTP/1.1 (ALPN ``http/1.1``): one connection per stream; separates
  what TLS costs from what HTTP/2 costs.
* ``h1`` -- cleartext HTTP/1.1, one connection per stream (the usual fan-out bench).

The TLS server gets a self-signed certificate made at run time (``openssl``) in a copy of
`bench/hypercorn-bench.toml` with ``certfile``/``keyfile`` and ``h2_max_concurrent_streams``
raised to at least ``--per-conn`` (Hypercorn's default is 100).  Events go through Redis by
pushsvc's publish script (`bench/rate_publisher.py`, one every ``--interval`` s), carrying
the load generator's marker ``~<seq>~<monotonic ns>~``, so latency, loss and duplicates are
measured as in `bench/loadgen.py`.  Reported per mode: connect time until every stream had
its headers, server CPU per stream opened and RSS per open stream (whole process tree),
server CPU per delivery, events per read (h2: per DATA frame), p50/p99/max, loss,
duplicates, streams ended by the server, and the load generator's CPU.  Everything stops
by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import multiprocessing
import os
import platform
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import fixed_rate  # noqa: E402
from loadgen import MARK, ClientProcess, Stats, tree_cpu_seconds, tree_rss_bytes  # noqa: E402
from sse_bench import (  # noqa: E402
    STREAMS_PER_CLIENT,
    Clients,
    Pushsvc,
    loadgen_cpu_seconds,
    percentile,
)

from tests.support.procs import RedisServer  # noqa: E402

WINDOW = 1 << 24  # the client's receive window (per stream and connection): never the limit


# -- the h2 load generator ---------------------------------------------------------------

class H2Conn(asyncio.Protocol):
    """One TLS connection carrying `count` SSE streams (h2 library, client side).  Streams
    are requested once the server's SETTINGS arrived (so its stream limit is known); every
    DATA frame is acknowledged at once (flow control never holds the server back)."""

    def __init__(self, authority: str, path: str, count: int, stats: Stats, ready: asyncio.Future[None]) -> None:
        import h2.config
        import h2.connection

        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.authority, self.path, self.count = authority.encode(), path.encode(), count
        self.stats = stats
        self.ready = ready
        self.bufs: dict[int, bytes] = {}
        self.seen: dict[int, set[int]] = {}
        self.headers_left = count
        self.requested = False
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        from h2.settings import SettingCodes

        self.transport = transport
        self.conn.initiate_connection()
        self.conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: WINDOW, SettingCodes.ENABLE_PUSH: 0})
        self.conn.increment_flow_control_window(WINDOW)
        transport.write(self.conn.data_to_send())

    def _request_streams(self) -> None:
        self.requested = True
        headers = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", self.authority),
                   (b":path", self.path), (b"accept", b"text/event-stream"), (b"cache-control", b"no-cache")]
        for _ in range(self.count):
            sid = self.conn.get_next_available_stream_id()
            self.conn.send_headers(sid, headers, end_stream=True)
            self.bufs[sid] = b""
            self.seen[sid] = set()

    def data_received(self, data: bytes) -> None:
        import h2.events

        now = time.monotonic_ns()
        try:
            events = self.conn.receive_data(data)
        except Exception as exc:  # a protocol error ends this connection's streams
            self.stats.bad_status[type(exc).__name__] = self.stats.bad_status.get(type(exc).__name__, 0) + 1
            self.transport.abort()
            return
        for event in events:
            if isinstance(event, h2.events.DataReceived):
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                self.stats.reads += 1
                self._markers(event.stream_id, event.data, now)
            elif isinstance(event, h2.events.ResponseReceived):
                self._headers(event.headers)
            elif isinstance(event, h2.events.RemoteSettingsChanged) and not self.requested:
                self._request_streams()
            elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                if not self.stats.closing and self.bufs.pop(event.stream_id, None) is not None:
                    self.stats.closed_by_server += 1
        out = self.conn.data_to_send()
        if out:
            self.transport.write(out)

    def _headers(self, headers: list[tuple[bytes, bytes]]) -> None:
        status = dict(headers).get(b":status", b"?").decode()
        if status == "200":
            self.stats.headers += 1
        else:
            self.stats.bad_status[status] = self.stats.bad_status.get(status, 0) + 1
        self.headers_left -= 1
        if self.headers_left <= 0 and not self.ready.done():
            self.ready.set_result(None)

    def _markers(self, sid: int, data: bytes, now: int) -> None:
        buf = self.bufs.get(sid, b"") + data
        cut = buf.rfind(b"\n")
        if cut < 0:
            self.bufs[sid] = buf
            return
        self.bufs[sid] = buf[cut + 1:]
        stats, seen = self.stats, self.seen[sid]
        for match in MARK.finditer(buf, 0, cut + 1):
            seq = int(match[1])
            if seq in seen:
                stats.dups += 1
                continue
            seen.add(seq)
            stats.seqs.append(seq)
            stats.lat_ns.append(now - int(match[2]))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.stats.closing:
            self.stats.closed_by_server += len(self.bufs)
        self.bufs.clear()
        if not self.ready.done():
            self.ready.set_result(None)


def client_tls(alpn: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the bench's own self-signed certificate
    ctx.set_alpn_protocols([alpn])
    return ctx


async def open_h2(host: str, port: int, path: str, count: int, per_conn: int, timeout: float, stats: Stats,
                  conns: list[H2Conn]) -> tuple[int, float]:
    """`count` streams over ceil(count / per_conn) h2 connections; waits for every header."""
    loop = asyncio.get_running_loop()
    ctx = client_tls("h2")
    started = time.monotonic()
    sizes = [per_conn] * (count // per_conn) + ([count % per_conn] if count % per_conn else [])
    sem = asyncio.Semaphore(32)

    async def one(size: int) -> None:
        async with sem:
            ready: asyncio.Future[None] = loop.create_future()
            proto = H2Conn(f"{host}:{port}", path, size, stats, ready)
            try:
                async with asyncio.timeout(max(0.1, started + timeout - time.monotonic())):
                    await loop.create_connection(lambda: proto, host, port, ssl=ctx)
                    conns.append(proto)
                    await ready
            except (OSError, TimeoutError) as exc:
                stats.bad_status[type(exc).__name__] = stats.bad_status.get(type(exc).__name__, 0) + size

    await asyncio.gather(*[one(size) for size in sizes])
    return stats.headers, time.monotonic() - started


def _h2_client_main(conn: Any) -> None:
    """The h2 client process: the same commands and answers as loadgen's `_client_main`."""
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stats = Stats()
        conns: list[H2Conn] = []
        while True:
            cmd = await loop.run_in_executor(None, conn.recv)
            op = cmd[0]
            if op == "open":
                _, host, port, path, count, per_conn, timeout = cmd
                ok, elapsed = await open_h2(host, port, path, count, per_conn, timeout, stats, conns)
                conn.send(("opened", ok, elapsed, dict(stats.bad_status)))
            elif op == "count":
                conn.send(len(stats.seqs))
            elif op == "reads":
                conn.send(stats.reads)
                stats.reads = 0
            elif op == "collect":
                conn.send((stats.seqs.tobytes(), stats.lat_ns.tobytes(), stats.dups, stats.closed_by_server))
                stats.seqs, stats.lat_ns, stats.dups = array("q"), array("q"), 0
                for c in conns:
                    for seen in c.seen.values():
                        seen.clear()
            elif op == "close":
                stats.closing = True
                for c in conns:
                    if c.transport is not None:
                        c.transport.abort()
                conns.clear()
                await asyncio.sleep(0.1)
                conn.send("closed")
                return

    uvloop.run(main())


class H2ClientProcess(ClientProcess):
    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_h2_client_main, args=(child,), daemon=True)
        self.proc.start()


class H2Clients(Clients):
    """`Clients` whose processes speak h2: `per_conn` streams per TLS connection."""

    def __init__(self, n: int, per_conn: int) -> None:
        self.per_conn = per_conn
        procs = max(1, math.ceil(n / STREAMS_PER_CLIENT))
        self.procs = [H2ClientProcess() for _ in range(procs)]

    def open(self, server: Any, n: int, timeout: float) -> dict[str, Any]:
        self.expected = n
        # whole connections per process
        conns = math.ceil(n / self.per_conn)
        per_proc = [conns // len(self.procs) + (1 if i < conns % len(self.procs) else 0)
                    for i in range(len(self.procs))]
        left = n
        for proc, k in zip(self.procs, per_proc, strict=True):
            share = min(left, k * self.per_conn)
            left -= share
            proc.send("open", "127.0.0.1", server.port, server.stream_path, share, self.per_conn, timeout)
        return self._answers(timeout)

    def _answers(self, timeout: float) -> dict[str, Any]:
        ok, elapsed, errors = self._opened(timeout)
        return {"connected": ok, "connect_s": elapsed, "errors": errors}


class TlsClients(H2Clients):
    """The HTTP/1.1 load generator over TLS (ALPN http/1.1), one connection per stream."""

    def __init__(self, n: int) -> None:
        self.procs = [ClientProcess() for _ in range(max(1, math.ceil(n / STREAMS_PER_CLIENT)))]

    def open(self, server: Any, n: int, timeout: float) -> dict[str, Any]:
        self.expected = n
        shares = [n // len(self.procs) + (1 if i < n % len(self.procs) else 0) for i in range(len(self.procs))]
        for proc, share in zip(self.procs, shares, strict=True):
            proc.send("open", "127.0.0.1", server.port, server.stream_path, share, 256, timeout, True, True)
        return self._answers(timeout)


# -- the TLS server ------------------------------------------------------------------------

def tls_config(workdir: Path, per_conn: int) -> Path:
    """bench/hypercorn-bench.toml plus a self-signed certificate made now, and room for
    `per_conn` concurrent streams per h2 connection."""
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    text = (HERE / "hypercorn-bench.toml").read_text()
    text += (f'\ncertfile = "{cert}"\nkeyfile = "{key}"\n'
             f"h2_max_concurrent_streams = {max(100, per_conn)}\n")
    path = workdir / "hypercorn-tls.toml"
    path.write_text(text)
    return path


# -- the phase -------------------------------------------------------------------------------

def run_mode(mode: str, args: argparse.Namespace, redis: RedisServer, config: Path) -> dict[str, Any]:
    n = args.streams
    server = Pushsvc(redis.url, n, label=f"pushsvc-{mode}", config=config if mode != "h1" else None)
    clients: Clients = (H2Clients(n, args.per_conn) if mode == "h2" else TlsClients(n) if mode == "h1-tls"
                        else Clients(n))
    try:
        server.start()
        time.sleep(0.5)
        rss0, cpu0 = tree_rss_bytes(server.pid), tree_cpu_seconds(server.pid)
        opened = clients.open(server, n, args.connect_timeout)
        time.sleep(1.0)
        cpu1, rss1 = tree_cpu_seconds(server.pid), tree_rss_bytes(server.pid)
        connected = opened["connected"]
        clients.reads()
        lcpu0 = loadgen_cpu_seconds(clients)
        started = time.monotonic()
        pub = fixed_rate.run_publisher("script", 1 / args.interval, args.events * args.interval, 1,
                                       redis_url=redis.url)
        expected = pub["sent"] * connected
        got = clients.wait_quiet(expected, limit=60)
        elapsed = time.monotonic() - started
        cpu2, lcpu = tree_cpu_seconds(server.pid), loadgen_cpu_seconds(clients) - lcpu0
        seqs, lat, dups, closed = clients.collect()
        reads = clients.reads()
        lat_ms = [v / 1e6 for v in lat]
        return {
            "mode": mode, "streams": n, "connections": math.ceil(n / args.per_conn) if mode == "h2" else n,
            **opened, "delivered": got, "expected": expected, "loss": expected - len(seqs), "dups": dups,
            "closed_by_server": closed, "events": pub["sent"],
            "cpu_per_open_us": (cpu1 - cpu0) / max(connected, 1) * 1e6,
            "rss_per_stream_kb": (rss1 - rss0) / max(connected, 1) / 1024, "rss_mb": rss1 / 2**20,
            "cpu_per_delivery_us": (cpu2 - cpu1) / max(len(seqs), 1) * 1e6,
            "events_per_read": len(seqs) / max(reads, 1),
            "p50_ms": percentile(lat_ms, 0.5), "p99_ms": percentile(lat_ms, 0.99),
            "max_ms": max(lat_ms) if lat_ms else math.nan,
            "server_cpu_pct": (cpu2 - cpu1) / elapsed * 100,
            "loadgen_cpu_pct": (lcpu + pub["cpu_s"]) / elapsed * 100,
            "loadgen_cpu_per_delivery_us": lcpu / max(len(seqs), 1) * 1e6,
        }
    except Exception as exc:
        return {"mode": mode, "streams": n, "error": f"{type(exc).__name__}: {exc}"}
    finally:
        clients.close()
        server.stop()


def fmt(v: Any, spec: str = ",.1f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def markdown(report: dict[str, Any]) -> str:
    s, e = report["loadavg"], report["loadavg_end"]
    lines = [f"Run {report['date']} on {report['machine']}; command `{report['argv']}`; load average "
             f"{s[0]:.2f} / {s[1]:.2f} / {s[2]:.2f} at the start, {e[0]:.2f} / {e[1]:.2f} / {e[2]:.2f} at the end.",
             "", f"### HTTP/2 against HTTP/1.1: {report['args']['streams']:,} streams on one channel, "
             f"{report['args']['events']} events, one every {report['args']['interval']} s (same run)", "",
             "| mode | connections | connected | connect s | CPU/stream opened µs | RSS/stream KB | CPU/delivery µs "
             "| x h1 | events per read | p50 ms | p99 ms | max ms | loss | dups | ended by server "
             "| load generator CPU % of a core (µs/delivery) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    ok = [r for r in report["modes"] if "error" not in r]
    repeated = report["args"].get("repeat", 1) > 1
    for r in report["modes"]:
        if "error" in r:
            lines.append(f"| {r['mode']} | failed: {r['error'][:100].splitlines()[0]} |||||||||||||||")
            continue
        h1 = next((x for x in ok if x["mode"] == "h1" and x.get("round") == r.get("round")), None)
        ratio = f"{r['cpu_per_delivery_us'] / h1['cpu_per_delivery_us']:.2f}" if h1 else "-"
        errors = ", ".join(f"{k}: {v}" for k, v in r["errors"].items())
        lines.append(
            f"| {r['mode']} | {r['connections']:,} | {r['connected']:,}{' (' + errors + ')' if errors else ''} "
            f"| {r['connect_s']:.1f} | {fmt(r['cpu_per_open_us'], ',.0f')} | {fmt(r['rss_per_stream_kb'])} "
            f"| {fmt(r['cpu_per_delivery_us'])} | {ratio} | {fmt(r.get('events_per_read'), '.2f')} "
            f"| {fmt(r['p50_ms'], ',.0f')} | {fmt(r['p99_ms'], ',.0f')} "
            f"| {fmt(r['max_ms'], ',.0f')} | {r['loss']:,} | {r['dups']} | {r['closed_by_server']} "
            f"| {fmt(r['loadgen_cpu_pct'], '.0f')} ({fmt(r['loadgen_cpu_per_delivery_us'])}) |")
    if repeated:
        lines += ["", "Medians over the runs (the modes took turns):", "",
                  "| mode | CPU/stream opened µs | RSS/stream KB | CPU/delivery µs | x h1 | p99 ms | loss | dups |",
                  "|---|---|---|---|---|---|---|---|"]
        h1_cpu = [x["cpu_per_delivery_us"] for x in ok if x["mode"] == "h1"]
        for mode in dict.fromkeys(x["mode"] for x in ok):
            runs = [x for x in ok if x["mode"] == mode]
            cpu = statistics.median(x["cpu_per_delivery_us"] for x in runs)
            ratio = f"**{cpu / statistics.median(h1_cpu):.2f}**" if h1_cpu else "-"
            lines.append(f"| {mode} | {statistics.median(x['cpu_per_open_us'] for x in runs):,.0f} "
                         f"| {statistics.median(x['rss_per_stream_kb'] for x in runs):.1f} | {cpu:.1f} | {ratio} "
                         f"| {statistics.median(x['p99_ms'] for x in runs):,.0f} | {sum(x['loss'] for x in runs):,} "
                         f"| {sum(x['dups'] for x in runs)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--per-conn", type=int, default=100, help="h2: streams per connection")
    parser.add_argument("--modes", default="h2,h1-tls,h1")
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between events")
    parser.add_argument("--connect-timeout", type=float, default=90.0)
    parser.add_argument("--repeat", type=int, default=1, help="run the modes this many times in turn (medians)")
    args = parser.parse_args()
    if args.streams > 10_000:
        parser.error("at most 10,000 streams")
    report: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.node()} ({os.cpu_count()} cores, Linux {platform.release()}, "
                   f"Python {platform.python_version()})",
        "argv": " ".join(["python bench/h2_fanout.py", *sys.argv[1:]]), "args": vars(args),
        "loadavg": os.getloadavg(), "modes": [],
    }
    redis = RedisServer()
    redis.start()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-h2-") as tmp:
            config = tls_config(Path(tmp), args.per_conn)
            for round_ in range(1, args.repeat + 1):
                for mode in [m for m in args.modes.split(",") if m]:
                    print(f"== {mode}: {args.streams:,} streams, run {round_} (load {os.getloadavg()[0]:.2f})",
                          flush=True)
                    result = {**run_mode(mode, args, redis, config), "round": round_}
                    report["modes"].append(result)
                print("   ", {k: (round(v, 2) if isinstance(v, float) else v) for k, v in result.items()}, flush=True)
    finally:
        redis.stop()
    report["loadavg_end"] = os.getloadavg()
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    text = markdown(report)
    (out / f"h2-{stamp}.json").write_text(json.dumps(report, indent=1))
    (out / f"h2-{stamp}.md").write_text(text)
    print()
    print(text)


if __name__ == "__main__":
    main()
