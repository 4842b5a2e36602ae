"""Load-generator building blocks: raw-socket HTTP/1.1 + SSE clients on uvloop.

* `ClientProcess` -- a child process holding many SSE streams (the per-process open-file
  limit is 20,000, so big runs spread over several).  Driven over a pipe by the
  orchestrator (`bench/sse_bench.py`): open N streams and wait for all their headers,
  count deliveries, hand back latencies, close.
* Every bench event's data carries ``~<seq>~<send monotonic ns>~``; a stream finds the
  markers in whatever bytes arrive (chunked or not, JSON-quoted or not), so the same
  reader serves pushsvc, flask-sse, sse-starlette and Nchan.  CLOCK_MONOTONIC is shared
  by all processes of the machine, so send and receive times compare directly.
* `HttpClient` -- keep-alive HTTP/1.1 request/response on one socket (publishing).
* `RedisPublisher` -- pipelined ``PUBLISH`` over a raw socket, replies discarded.
* `/proc` readers for the server's whole process tree: RSS and CPU time.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import re
import time
from array import array
from typing import Any

MARK = re.compile(rb"~(\d+)~(\d+)~")
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# -- /proc ------------------------------------------------------------------------------

def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(b")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(name))
    return children


def process_tree(root: int) -> list[int]:
    children = _children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def tree_cpu_seconds(root: int) -> float:
    user, system = tree_cpu_split(root)
    return user + system


def tree_cpu_split(root: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process tree: the kernel's share is what a write's
    syscall and loopback TCP cost, which no Python-level change removes."""
    user = system = 0
    for pid in process_tree(root):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11])
        system += int(fields[12])
    return user / TICK, system / TICK


def tree_rss_bytes(root: int) -> int:
    total = 0
    for pid in process_tree(root):
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                total += int(f.read().split()[1]) * PAGE
        except OSError:
            continue
    return total


# -- SSE streams ------------------------------------------------------------------------

class Stats:
    def __init__(self) -> None:
        self.seqs = array("q")
        self.lat_ns = array("q")
        self.dups = 0
        self.closed_by_server = 0
        self.headers = 0
        self.reads = 0  # body reads after the headers: about the server's writes, when the client keeps up
        self.bad_status: dict[str, int] = {}
        self.closing = False


class SSEStream(asyncio.Protocol):
    __slots__ = ("buf", "headers_done", "ready", "request", "seen", "stats", "transport")

    def __init__(self, request: bytes, stats: Stats, ready: asyncio.Future[str]) -> None:
        self.request = request
        self.stats = stats
        self.ready = ready
        self.buf = b""
        self.headers_done = False
        self.seen: set[int] = set()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        if not self.headers_done:
            self.buf += data
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = self.buf[9:12].decode("ascii", "replace")
            self.headers_done = True
            data, self.buf = self.buf[end + 4:], b""
            if status == "200":
                self.stats.headers += 1
            else:
                self.stats.bad_status[status] = self.stats.bad_status.get(status, 0) + 1
            if not self.ready.done():
                self.ready.set_result(status)
        self.stats.reads += 1
        buf = self.buf + data if self.buf else data
        cut = buf.rfind(b"\n")
        if cut < 0:
            self.buf = buf
            return
        self.buf = buf[cut + 1:]
        stats = self.stats
        seen = self.seen
        for match in MARK.finditer(buf, 0, cut + 1):
            seq = int(match[1])
            if seq == 0:  # priming event (servers that send headers with the first event)
                continue
            if seq in seen:
                stats.dups += 1
                continue
            seen.add(seq)
            stats.seqs.append(seq)
            stats.lat_ns.append(now - int(match[2]))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_result("closed")
        if not self.stats.closing:
            self.stats.closed_by_server += 1


def stream_request(host: str, port: int, path: str) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n"
            "Cache-Control: no-cache\r\n\r\n").encode()


async def open_streams(host: str, port: int, path: str, count: int, concurrency: int, timeout: float,
                       stats: Stats, streams: list[SSEStream], wait_headers: bool = True,
                       tls: bool = False) -> tuple[int, float]:
    """Open `count` streams; wait for each one's headers unless `wait_headers` is false (then a
    stream counts once its request is written: flask-sse sends headers with the first event).
    `tls`: over TLS (ALPN http/1.1, the certificate not checked: the bench makes its own)."""
    loop = asyncio.get_running_loop()
    ctx = None
    if tls:
        import ssl
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["http/1.1"])
    request = stream_request(host, port, path)
    sem = asyncio.Semaphore(concurrency)
    started = time.monotonic()
    deadline = started + timeout

    async def one() -> None:
        async with sem:
            ready: asyncio.Future[str] = loop.create_future()
            proto = SSEStream(request, stats, ready)
            left = deadline - time.monotonic()
            if left <= 0:
                stats.bad_status["timeout"] = stats.bad_status.get("timeout", 0) + 1
                return
            try:
                async with asyncio.timeout(left):
                    await loop.create_connection(lambda: proto, host, port, ssl=ctx)
                    if wait_headers:
                        await ready
            except (OSError, TimeoutError) as exc:
                key = type(exc).__name__
                stats.bad_status[key] = stats.bad_status.get(key, 0) + 1
                if proto.transport is not None:
                    proto.transport.abort()
                return
            streams.append(proto)

    await asyncio.gather(*[one() for _ in range(count)])
    return (stats.headers if wait_headers else len(streams)), time.monotonic() - started


def _client_main(conn: Any) -> None:
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stats = Stats()
        streams: list[SSEStream] = []
        while True:
            cmd = await loop.run_in_executor(None, conn.recv)
            op = cmd[0]
            if op == "open":
                _, host, port, path, count, concurrency, timeout, wait_headers, *tls = cmd
                ok, elapsed = await open_streams(host, port, path, count, concurrency, timeout, stats, streams,
                                                 wait_headers, bool(tls and tls[0]))
                conn.send(("opened", ok, elapsed, dict(stats.bad_status)))
            elif op == "headers":
                conn.send((stats.headers, dict(stats.bad_status)))
            elif op == "count":
                conn.send(len(stats.seqs))
            elif op == "reads":
                conn.send(stats.reads)
                stats.reads = 0
            elif op == "collect":
                conn.send((stats.seqs.tobytes(), stats.lat_ns.tobytes(), stats.dups, stats.closed_by_server))
                stats.seqs, stats.lat_ns, stats.dups = array("q"), array("q"), 0
                for s in streams:
                    s.seen.clear()
            elif op == "close":
                stats.closing = True
                for s in streams:
                    if s.transport is not None:
                        s.transport.abort()
                streams.clear()
                await asyncio.sleep(0.1)
                conn.send("closed")
                return

    uvloop.run(main())


class ClientProcess:
    """A child process holding streams; methods are blocking calls over its pipe."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_client_main, args=(child,), daemon=True)
        self.proc.start()

    def send(self, *cmd: Any) -> None:
        self.conn.send(cmd)

    def recv(self, timeout: float = 300) -> Any:
        if not self.conn.poll(timeout):
            raise TimeoutError("client process did not answer")
        return self.conn.recv()

    def collect(self) -> tuple[array[int], array[int], int, int]:
        self.send("collect")
        seqs_b, lat_b, dups, closed = self.recv()
        seqs, lat = array("q"), array("q")
        seqs.frombytes(seqs_b)
        lat.frombytes(lat_b)
        return seqs, lat, dups, closed

    def close(self) -> None:
        try:
            if self.proc.is_alive():
                self.send("close")
                self.recv(30)
        except (OSError, EOFError, TimeoutError):
            pass
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)


# -- publishing -------------------------------------------------------------------------

class HttpClient(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; `request()` sends and awaits the status."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.buf = b""
        self.waiter: asyncio.Future[int] | None = None
        self.need: int | None = None
        self.status = 0

    @classmethod
    async def connect(cls, host: str, port: int) -> HttpClient:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(cls, host, port)
        return proto

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.waiter is not None:
            if self.need is None:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = self.buf[:end].lower()
                self.status = int(self.buf[9:12])
                m = re.search(rb"content-length:\s*(\d+)", head)
                if m:
                    self.need = end + 4 + int(m[1])
                elif b"chunked" in head:
                    term = self.buf.find(b"\r\n0\r\n\r\n", end)
                    if term < 0 and not self.buf[end + 4:].startswith(b"0\r\n\r\n"):
                        return
                    self.need = (term + 7) if term >= 0 else end + 9
                else:
                    self.need = end + 4
            if len(self.buf) < self.need:
                return
            self.buf = self.buf[self.need:]
            self.need = None
            waiter, self.waiter = self.waiter, None
            waiter.set_result(self.status)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection lost"))

    async def request(self, method: str, path: str, body: bytes, headers: str = "") -> int:
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(
            f"{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: {len(body)}\r\n{headers}\r\n".encode()
            + body
        )
        return await self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _Discard(asyncio.Protocol):
    def data_received(self, data: bytes) -> None:
        pass


class RedisPublisher:
    def __init__(self, transport: Any) -> None:
        self.transport = transport

    @classmethod
    async def connect(cls, host: str, port: int) -> RedisPublisher:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_connection(_Discard, host, port)
        return cls(transport)

    def publish(self, channel: bytes, message: bytes) -> None:
        self.transport.write(b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
                             % (len(channel), channel, len(message), message))

    def close(self) -> None:
        self.transport.close()
