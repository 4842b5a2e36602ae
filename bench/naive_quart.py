"""The issue's reference point, rebuilt so that it runs in the same run as everything else:
a naive Quart app on pushsvc's stack (the bench's `naive` variant, `--variants naive`).

One shared redis.asyncio pub/sub subscriber per process, one `asyncio.Queue` per client,
one `yield` per event, the frame encoded once per event, Quart's streaming response with
its timeout off -- what a competent first version looks like.  Under the same Hypercorn,
config and uvloop as pushsvc:

    BENCH_REDIS_URL=redis://127.0.0.1:6390 hypercorn --config bench/hypercorn-bench.toml \
        --bind 127.0.0.1:8000 bench.naive_quart:app

Issue 6 states its targets as absolute figures measured against this app on another day
("about 33 KB RSS per stream, about 85 µs of server CPU per delivery"); the bench reports
every server's figures relative to this app's in the same run too, so that a slower or
busier machine does not move the goal posts.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncGenerator
from typing import Any

from quart import Quart, make_response, request
from redis.asyncio import Redis

CHANNEL = os.environ.get("BENCH_CHANNEL", "bench")

app = Quart(__name__)
queues: set[asyncio.Queue[str]] = set()
state: dict[str, Any] = {}


async def _reader(redis: Redis) -> None:
    pubsub = redis.pubsub()
    await pubsub.subscribe(CHANNEL)
    async for message in pubsub.listen():
        if message["type"] != "message":
            continue
        event = json.loads(message["data"])
        frame = f"data: {json.dumps(event['data'])}\n\n"
        for queue in queues:
            queue.put_nowait(frame)


@app.before_serving
async def _start() -> None:
    state["redis"] = Redis.from_url(os.environ["BENCH_REDIS_URL"])
    app.add_background_task(_reader, state["redis"])


@app.get("/stream")
async def stream() -> Any:
    queue: asyncio.Queue[str] = asyncio.Queue()
    queues.add(queue)

    async def events() -> AsyncGenerator[str, None]:
        try:
            yield ": ok\n\n"
            while True:
                yield await queue.get()
        finally:
            queues.discard(queue)

    response = await make_response(events(), {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    response.timeout = None
    return response


@app.post("/publish")
async def publish() -> Any:
    body = await request.get_json()
    await state["redis"].publish(body["channel"], json.dumps({"data": body["data"]}))
    return {"published": 1}, 202
