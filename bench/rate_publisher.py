"""A paced, pipelined publisher for the fixed-rate and h2 fan-out benches: its own process, so
its CPU is measured apart from the orchestrator's and never competes with it.

    python bench/rate_publisher.py script --redis redis://127.0.0.1:6390 --rate 2000 --seconds 10
    python bench/rate_publisher.py http --port 8080 --path '/publish?channel=bench' --rate 2000

* ``script``: pushsvc's native backend path -- what `pushsvc.publisher` does: each event is
  validated and planned by `pushsvc.publisher` (`_calls`: the same publish script, history,
  ids and idempotency token as ``publish()``), then sent as ``EVALSHA`` over one raw
  socket, pipelined (every event due at a tick goes out in one write); replies are parsed
  (hiredis) and counted, errors reported.  ``--root DIR`` imports pushsvc from another
  checkout.
* ``http``: ``POST`` with a text body to a path (Nchan's publish location; the bare app's
  ``/publish`` with ``--json``), pipelined HTTP/1.1 over a few keep-alive connections.

Paced by the clock: every ``--tick`` seconds it sends every event whose time has come
(event k is due at start + k / rate), so a late tick catches up instead of lowering the
rate.  Each event's data carries ``~<seq>~<CLOCK_MONOTONIC ns at send>~`` (the load
generator's marker).  Prints one JSON line: events sent, achieved rate, how far behind the
schedule it ever was, replies and errors, and its own CPU while publishing.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import resource
import sys
import time
from pathlib import Path
from typing import Any

PAD = "x" * 64
STATUS = re.compile(rb"HTTP/1\.[01] (\d{3}) ")


def marker(seq: int) -> str:
    return f"~{seq}~{time.monotonic_ns()}~{PAD}"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def resp(*parts: Any) -> bytes:
    """One Redis command in RESP."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        raw = part if isinstance(part, bytes) else str(part).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


class Tally:
    """Replies counted over every connection, the errors among them, and a wait for a count."""

    def __init__(self) -> None:
        self.count = 0
        self.errors: dict[str, int] = {}
        self.target = 0
        self.reached = asyncio.Event()

    def add(self, error: str | None = None) -> None:
        self.count += 1
        if error is not None:
            self.errors[error] = self.errors.get(error, 0) + 1
        if self.count >= self.target:
            self.reached.set()

    async def until(self, count: int, timeout: float) -> None:
        self.target = count
        if self.count < count:
            self.reached.clear()
            try:
                await asyncio.wait_for(self.reached.wait(), timeout)
            except TimeoutError:
                pass


class Replies(asyncio.Protocol):
    """Counts replies (RESP via hiredis, or HTTP status lines) into a `Tally`."""

    def __init__(self, http: bool, tally: Tally) -> None:
        self.http = http
        self.tally = tally
        self.tail = b""
        self.transport: Any = None
        if not http:
            import hiredis
            self.reader = hiredis.Reader()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.http:
            buf = self.tail + data
            end = 0
            for match in STATUS.finditer(buf):
                end = match.end()
                self.tally.add(None if match[1].startswith(b"2") else match[1].decode())
            # keep what may be the start of a status line split across reads: fewer bytes
            # than a whole one ("HTTP/1.1 200 " is 13), so nothing is counted twice
            self.tail = buf[max(end, len(buf) - 12):]
            return
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            self.tally.add(str(reply)[:60] if isinstance(reply, Exception) else None)


class ScriptSender:
    """pushsvc's publish script, as `pushsvc.publisher` calls it, pipelined over a raw socket."""

    def __init__(self, redis_url: str, channel: str) -> None:
        from pushsvc.broker.scripts import PUBLISH_LUA
        from pushsvc.publisher import AsyncPublisher

        self.publisher = AsyncPublisher(url=redis_url)
        self.channel = channel
        self.script = PUBLISH_LUA.encode()
        self.sha = hashlib.sha1(self.script).hexdigest().encode()
        host_port = redis_url.split("//", 1)[1].split("/", 1)[0]
        self.host, port = host_port.rsplit(":", 1)
        self.port = int(port)
        self.replies = Tally()
        self.transport: Any = None

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_connection(lambda: Replies(False, self.replies), self.host, self.port)
        self.transport.write(resp(b"SCRIPT", b"LOAD", self.script))
        await self.replies.until(1, 10)
        self.replies = Tally()
        self.transport.get_protocol().tally = self.replies

    def send(self, seqs: range) -> None:
        out = []
        for seq in seqs:
            for keys, args in self.publisher._calls(self.channel, marker(seq), None, None, None):
                out.append(resp(b"EVALSHA", self.sha, len(keys), *keys, *args))
        self.transport.write(b"".join(out))

    def close(self) -> None:
        self.transport.close()


class HttpSender:
    """Pipelined HTTP/1.1 POSTs over `conns` keep-alive connections, round-robin per tick."""

    def __init__(self, port: int, path: str, conns: int, as_json: bool, channel: str, headers: str) -> None:
        self.port, self.path, self.conns, self.as_json, self.channel = port, path, conns, as_json, channel
        self.headers = headers
        self.replies = Tally()
        self.protos = [Replies(True, self.replies) for _ in range(conns)]
        self.next = 0

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        for proto in self.protos:
            await loop.create_connection(lambda p=proto: p, "127.0.0.1", self.port)  # type: ignore[misc]

    def request(self, seq: int) -> bytes:
        data = marker(seq)
        if self.as_json:
            body = json.dumps({"channel": self.channel, "data": data}).encode()
            kind = "application/json"
        else:
            body, kind = data.encode(), "text/plain"
        return (f"POST {self.path} HTTP/1.1\r\nHost: bench\r\nContent-Type: {kind}\r\n{self.headers}"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    def send(self, seqs: range) -> None:
        proto = self.protos[self.next % self.conns]
        self.next += 1
        proto.transport.write(b"".join(self.request(seq) for seq in seqs))

    def close(self) -> None:
        for proto in self.protos:
            proto.transport.close()


async def run(sender: ScriptSender | HttpSender, first_seq: int, rate: float, seconds: float,
              tick: float) -> dict[str, Any]:
    await sender.connect()
    total = max(1, int(rate * seconds))
    cpu0 = cpu_seconds()
    start = time.monotonic()
    sent = 0
    behind = 0.0
    while sent < total:
        now = time.monotonic()
        behind = max(behind, now - (start + sent / rate))
        due = min(total, int((now - start) * rate) + 1)
        if due > sent:
            sender.send(range(first_seq + sent, first_seq + due))
            sent = due
        await asyncio.sleep(tick)
    took = time.monotonic() - start
    await sender.replies.until(sent, 30)
    cpu = cpu_seconds() - cpu0
    replies = sender.replies
    sender.close()
    return {"sent": sent, "seconds": took, "achieved_rate": sent / max(took, seconds),
            "max_behind_ms": behind * 1000, "replies": replies.count, "errors": replies.errors,
            "cpu_s": cpu, "cpu_share": cpu / max(took, 1e-9)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["script", "http"])
    parser.add_argument("--redis", default="", help="script: Redis URL")
    parser.add_argument("--root", default="", help="script: import pushsvc from this checkout")
    parser.add_argument("--port", type=int, default=0, help="http: server port on 127.0.0.1")
    parser.add_argument("--path", default="/publish", help="http: request path")
    parser.add_argument("--json", action="store_true", help="http: body {channel, data} (else text/plain)")
    parser.add_argument("--header", default="", help="http: one extra header line, e.g. 'Authorization: Bearer t'")
    parser.add_argument("--conns", type=int, default=4, help="http: keep-alive connections")
    parser.add_argument("--channel", default="bench")
    parser.add_argument("--rate", type=float, required=True, help="events per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--first-seq", type=int, default=1)
    parser.add_argument("--tick", type=float, default=0.001, help="seconds between pacing ticks")
    args = parser.parse_args()
    if args.root:
        sys.path.insert(0, str(Path(args.root).resolve()))
    sender: ScriptSender | HttpSender
    if args.mode == "script":
        sender = ScriptSender(args.redis, args.channel)
    else:
        header = f"{args.header}\r\n" if args.header else ""
        sender = HttpSender(args.port, args.path, args.conns, args.json, args.channel, header)
    try:
        import uvloop
        result = uvloop.run(run(sender, args.first_seq, args.rate, args.seconds, args.tick))
    except ImportError:
        result = asyncio.run(run(sender, args.first_seq, args.rate, args.seconds, args.tick))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
