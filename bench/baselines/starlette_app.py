"""sse-starlette baseline (run under uvicorn): a redis.asyncio pub/sub per client, the common pattern.

The connection pool is sized for the load (redis-py caps a pool at 100 by default, which
would starve a per-client pub/sub app): BENCH_POOL_SIZE, blocking with a timeout.
"""

import json
import os

import redis.asyncio as aioredis
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

pool = aioredis.BlockingConnectionPool.from_url(
    os.environ["BENCH_REDIS_URL"], max_connections=int(os.environ.get("BENCH_POOL_SIZE", "20000")), timeout=30
)
client = aioredis.Redis(connection_pool=pool)


async def stream(request: Request) -> EventSourceResponse:
    channel = request.query_params.get("channel", "sse")

    async def events():
        async with client.pubsub() as pubsub:
            await pubsub.subscribe(channel)
            async for message in pubsub.listen():
                if message["type"] == "message":
                    payload = json.loads(message["data"])
                    yield {"data": payload["data"]}

    return EventSourceResponse(events())


async def publish(request: Request) -> JSONResponse:
    body = await request.json()
    await client.publish(body.get("channel", "sse"), json.dumps({"data": body["data"]}))
    return JSONResponse({"ok": True}, status_code=202)


app = Starlette(routes=[Route("/stream", stream), Route("/publish", publish, methods=["POST"])])
