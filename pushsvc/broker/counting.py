"""Cross-process subscriber counts (`count_subscribers`, for ``GET /channels/<name>``).

Every process subscribes to the control channel ``pushsvc:control`` (a classic channel on a
single Redis; a sharded one on a cluster, where it lives on the shard owning its slot and
every process keeps a pub/sub connection to that shard).  The asking process publishes a
query there with a fresh reply key; the publish's answer is how many processes received it
(on a cluster ``SPUBLISH`` counts the subscribers of the owning node, which is where every
process subscribed); each of them (the asker included) RPUSHes ``{"from": <process>,
"count": <local streams>}`` to the reply key (which expires after 10 s), and the asker
BLPOPs that many replies within the timeout, adding its own live count instead of its own
reply.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from . import BrokerUnavailable, Listener
from .pubsub import UNAVAILABLE

log = logging.getLogger("pushsvc.redis")

REPLY_TTL_SECONDS = 10
REPLY_PREFIX = "pushsvc:control:reply:"


class SubscriberCounter:
    """Asks and answers subscriber counts over a control channel.

    `publish(query) -> receivers` sends on the control channel; `client_for(key)` is the
    Redis client holding a reply key.
    """

    def __init__(
        self,
        publish: Callable[[str], Awaitable[Any]],
        client_for: Callable[[str], Any],
        timeout: float,
    ) -> None:
        self._publish = publish
        self._client_for = client_for
        self.timeout = timeout
        self.instance = uuid.uuid4().hex
        self.listener: Listener | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def count(self, channel: str, local: int) -> int:
        reply_key = f"{REPLY_PREFIX}{uuid.uuid4().hex}"
        query = json.dumps({"op": "count", "channel": channel, "reply": reply_key, "from": self.instance})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout * 0.75  # below the socket timeout
        total = local
        try:
            async with asyncio.timeout(self.timeout):
                receivers = int(await self._publish(query))
                client = self._client_for(reply_key)
                for _ in range(receivers):
                    wait = deadline - loop.time()
                    if wait <= 0.01:
                        break
                    popped = await client.blpop([reply_key], timeout=wait)
                    if popped is None:
                        break
                    answer = json.loads(popped[1])
                    if answer.get("from") != self.instance:
                        total += int(answer.get("count", 0))
                else:
                    return total
        except UNAVAILABLE as exc:
            raise BrokerUnavailable(f"redis count failed: {type(exc).__name__}") from exc
        log.warning("not every process answered a subscriber count in time", extra={"channel": channel})
        return total

    def on_query(self, payload: bytes) -> None:
        """A message read on the control channel."""
        try:
            query = json.loads(payload)
            channel, reply_key = str(query["channel"]), str(query["reply"])
        except (ValueError, KeyError, TypeError):
            return
        if query.get("op") != "count" or not reply_key.startswith(REPLY_PREFIX) or self.listener is None:
            return
        count = self.listener.local_subscribers(channel)
        task = asyncio.get_running_loop().create_task(self._answer(reply_key, count))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, reply_key: str, count: int) -> None:
        answer = json.dumps({"from": self.instance, "count": count})
        try:
            async with asyncio.timeout(self.timeout):
                async with self._client_for(reply_key).pipeline(transaction=True) as pipe:
                    pipe.rpush(reply_key, answer)
                    pipe.expire(reply_key, REPLY_TTL_SECONDS)
                    await pipe.execute()
        except UNAVAILABLE as exc:
            log.warning("could not answer a subscriber count", extra={"error": type(exc).__name__})
