"""The floor under Hypercorn: the least an SSE stream can cost, served by a bare ASGI
callable under the same Hypercorn, the same config and the same uvloop as pushsvc.

The bench's `bare` variant (`sse_bench.py --variants bare`).  No Quart, no Redis, no
history, no ids, no heartbeats, no limits: `GET /stream` sends its headers and one comment,
then waits on a future and writes whatever `POST /publish` fanned out to it, one
``http.response.body`` per wake-up.  The publish is a local fan-out of one pre-encoded
frame (a list append and a future per stream, as pushsvc's hub does).  It does not even
watch ``receive()`` for disconnects (a stream whose client left is only dropped when a
write to it fails), so it is cheaper than any correct server: whatever it costs per stream
and per delivery is Hypercorn's (and asyncio's) share, which no app running under Hypercorn
can go below.  The same garbage-collector settings as `pushsvc serve`.

Fed from Redis when ``BENCH_FEED_REDIS`` (a ``redis://host:port`` URL) and
``BENCH_FEED_CHANNEL`` (a pub/sub channel) are set: one raw-socket subscriber (hiredis
parser) frames each message as it is, ``data: <message>`` -- no JSON parse, no id -- and fans
it out.  That is how the fixed-rate bench feeds it the same messages, through the same
publish script, as pushsvc (``pushsvc:{bench}:live``), so the two differ only in what the
app does with them.

With ``BENCH_WRITE_DELAY_MS`` (> 0) it is the floor of coalesced writes: the fan-out only
appends, and one ticker, every that many milliseconds, wakes each stream that has frames,
which writes them all at once -- at most one write per stream per delay, as pushsvc's
``PUSHSVC_WRITE_DELAY_MS``, without pushsvc's per-stream cooling clock, ids or history.
``BENCH_WRITE_MODE=direct`` has the ticker itself write every stream's frames, one after
another in its own task, so no stream's task wakes at all (a write that would block stalls
the others: a floor for the measurement, not a server).

    hypercorn --config bench/hypercorn-bench.toml --bind 127.0.0.1:8000 bench.bare_asgi:app
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
from typing import Any

gc.collect()
gc.freeze()
gc.set_threshold(200_000, 50, 1000)  # pushsvc.gcpolicy.YOUNG_THRESHOLDS (full collections: never)

_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


WRITE_DELAY = int(os.environ.get("BENCH_WRITE_DELAY_MS", "0") or 0) / 1000
DIRECT = os.environ.get("BENCH_WRITE_MODE", "") == "direct"


class _Stream:
    __slots__ = ("frames", "send", "waiter")

    def __init__(self, send: Any) -> None:
        self.frames: list[bytes] = []
        self.send = send
        self.waiter: asyncio.Future[None] | None = None


STREAMS: set[_Stream] = set()
TICKER: list[asyncio.Task[None]] = []


def _fan_out(frame: bytes) -> None:
    if WRITE_DELAY:
        for stream in STREAMS:
            stream.frames.append(frame)
        return
    for stream in STREAMS:
        stream.frames.append(frame)
        waiter = stream.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


async def _stream(send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": b": ok\n\n", "more_body": True})
    stream = _Stream(send)
    STREAMS.add(stream)
    loop = asyncio.get_running_loop()
    try:
        if DIRECT and WRITE_DELAY:
            await loop.create_future()  # the ticker writes; this only holds the response open
        while True:
            if not stream.frames:
                stream.waiter = loop.create_future()
                await stream.waiter
            chunk = b"".join(stream.frames) if len(stream.frames) > 1 else stream.frames[0]
            stream.frames.clear()
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    finally:
        STREAMS.discard(stream)


async def _ticker() -> None:
    """Every WRITE_DELAY: wake (or, DIRECT, write) each stream that has frames."""
    while True:
        await asyncio.sleep(WRITE_DELAY)
        for stream in list(STREAMS):
            if not stream.frames:
                continue
            if DIRECT:
                chunk = b"".join(stream.frames)
                stream.frames.clear()
                try:
                    await stream.send({"type": "http.response.body", "body": chunk, "more_body": True})
                except Exception:  # the client left
                    STREAMS.discard(stream)
                continue
            waiter = stream.waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)


class _RedisFeed(asyncio.Protocol):
    """SUBSCRIBE to one channel; every ``message`` push becomes one frame for all streams."""

    def __init__(self, channel: bytes) -> None:
        import hiredis

        self.channel = channel
        self.reader = hiredis.Reader()

    def connection_made(self, transport: Any) -> None:
        transport.write(b"*2\r\n$9\r\nSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(self.channel), self.channel))

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            if isinstance(reply, list) and reply[0] == b"message":
                _fan_out(b"data: " + reply[2] + b"\n\n")


async def _start_feed() -> None:
    url, channel = os.environ.get("BENCH_FEED_REDIS", ""), os.environ.get("BENCH_FEED_CHANNEL", "")
    if not (url and channel):
        return
    host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    await asyncio.get_running_loop().create_connection(lambda: _RedisFeed(channel.encode()), host, int(port))


async def _publish(receive: Any, send: Any) -> None:
    body = b""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    event = json.loads(body)
    _fan_out(b"data: " + json.dumps(event["data"]).encode() + b"\n\n")
    answer = b'{"published":1}'
    await send({"type": "http.response.start", "status": 202,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]})
    await send({"type": "http.response.body", "body": answer, "more_body": False})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await _start_feed()
                if WRITE_DELAY:
                    TICKER.append(asyncio.get_running_loop().create_task(_ticker()))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/stream" and scope["method"] == "GET":
        await _stream(send)
    elif scope["path"] == "/publish" and scope["method"] == "POST":
        await _publish(receive, send)
    else:
        await send({"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
