"""Coalescing concurrent publishes into few Redis round trips, each request keeping its own
answer.

Every publish request is a list of script calls (`scripts.calls_for`).  `Batcher.submit`
queues a request's calls and waits for their replies; the queued requests go to Redis
together, in one pipeline, as soon as fewer than `in_flight` pipelines are waiting for
Redis.  So a quiet service sends each request at once (the flush is a callback at the end
of the next loop iteration), and a busy one sends one pipeline per Redis round trip with
everything that arrived meanwhile: self-clocked, no timer, no added wait while Redis keeps
up.  Measured with 16 concurrent single-event publishers (`bench/sse_bench.py --only
publish`): about 8 requests per pipeline.  A pipeline leaves through the broker's `Starter`
when a connection is up and idle (no task: its answer comes back through a callback, from
the connection's read), else in a task through its `Sender`.

What each request keeps, whatever shares its pipeline:

* its own replies, in order; a call answered with an error fails its request only
  (`OutcomeUnknown`: a script that failed half-way may have stored part of it);
* at most ``max_copies`` event copies (events x channels) per pipeline, so that a pipeline
  is stored within the Redis timeout (a request that would overflow one starts the next);
* `BrokerUnavailable` (nothing stored) when the pipeline could not be sent -- also when
  it waited a whole Redis timeout for the pipelines ahead of it -- and `OutcomeUnknown`
  when it was sent and its answer was lost, as the sender reports it;
* the bound on waiting: a request is answered within about the Redis timeout, queued or not.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from . import BrokerUnavailable, OutcomeUnknown
from .scripts import Call

#: Sends one pipeline of script calls within a time budget (seconds): the replies in order
#: (an exception instance for a call Redis answered with an error), or raises
#: BrokerUnavailable (nothing sent) or OutcomeUnknown (sent, answer lost).
Sender = Callable[[list[Call], float], Awaitable[list[Any]]]
#: What a `Starter` hands back when the pipeline's answer comes: the replies, or the verdict
#: (BrokerUnavailable, OutcomeUnknown; CancelledError when the sender was stopped).
Landed = Callable[[list[Any] | BaseException], None]
#: Sends one pipeline at once, without a task, if it can (a connection is up and idle):
#: True, and `Landed` is called later -- never from within the call; False, having sent
#: nothing, and the pipeline goes to the `Sender`.
Starter = Callable[[list[Call], float, Landed], bool]


#: One request: its calls, and the future of their replies.
_Request = tuple[list[Call], asyncio.Future[list[Any]]]


def _fail(requests: list[_Request], failure: BaseException) -> None:
    for _, done in requests:
        if not done.done():
            done.set_exception(failure)


class _Batch:
    """Requests that will share one pipeline."""

    __slots__ = ("copies", "requests", "since")

    def __init__(self, since: float) -> None:
        self.requests: list[_Request] = []
        self.copies = 0
        self.since = since  # loop time of its first request: its deadline starts there


class Batcher:
    """See the module docstring."""

    def __init__(
        self, send: Sender, *, max_copies: int, timeout: float, in_flight: int = 1, start: Starter | None = None
    ) -> None:
        self._send = send
        self._start = start
        self._flying: set[_Batch] = set()  # sent by `start`, its answer not in yet
        self.max_copies = max_copies
        self.timeout = timeout
        self.in_flight = in_flight
        self._queue: deque[_Batch] = deque()  # the last one is still filling
        self._sending = 0
        self._scheduled = False
        #: The loop of its callers (`bind`); else asked for at each request.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        #: Pipelines sent and requests they carried (for tests and the bench).
        self.pipelines = 0
        self.requests = 0

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Every request comes from `loop` (the broker's, from its start): `submit` need not
        ask for the running loop, which costs a system call (getpid) in CPython 3.11."""
        self._loop = loop

    def submit(self, calls: list[Call], copies: int) -> asyncio.Future[list[Any]]:
        """Queues `calls` (one request): a future of their replies, in order, or of
        BrokerUnavailable or OutcomeUnknown.  (A future, not a coroutine: one frame less
        for the request's task to resume through when the replies come.)"""
        loop = self._loop or asyncio.get_running_loop()
        done: asyncio.Future[list[Any]] = loop.create_future()
        batch = self._queue[-1] if self._queue else None
        if batch is None or (batch.requests and batch.copies + copies > self.max_copies):
            batch = _Batch(loop.time())
            self._queue.append(batch)
        batch.requests.append((calls, done))
        batch.copies += copies
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(loop.call_soon, self._flush)  # see `_flush`
        return done

    def _flush(self) -> None:
        """Send queued batches while fewer than `in_flight` pipelines wait for Redis.

        Scheduled two callbacks away from the first request of a batch (one more loop
        iteration): the requests whose bytes arrived in the next read of the sockets reach
        the broker then and leave in the same pipeline.  Measured with 16 concurrent
        publishers: 8 requests per pipeline instead of 6, and 8% less CPU per request."""
        self._scheduled = False
        loop = asyncio.get_running_loop()
        while self._queue and self._sending < self.in_flight:
            batch = self._queue.popleft()
            self._sending += 1
            if self._start is not None and self._started(batch, loop):
                continue
            task = loop.create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _live(self, batch: _Batch, now: float) -> tuple[list[_Request], float, list[Call]] | None:
        """`batch`'s requests still waiting, what is left of its budget, and their calls in
        order; None when none is waiting."""
        requests = [(calls, done) for calls, done in batch.requests if not done.done()]
        if not requests:
            return None
        calls = requests[0][0] if len(requests) == 1 else [call for mine, _ in requests for call in mine]
        return requests, self.timeout - (now - batch.since), calls

    def _started(self, batch: _Batch, loop: asyncio.AbstractEventLoop) -> bool:
        """`batch` sent by the `Starter` (its answer comes to `_landed`), or nothing to send;
        False: it goes to a task (no connection ready, or its budget is spent)."""
        assert self._start is not None
        live = self._live(batch, loop.time())
        if live is None:
            self._finished(batch)
            return True
        requests, budget, calls = live
        if budget <= 0 or not self._start(calls, budget, lambda result: self._landed(batch, requests, result)):
            return False
        self._flying.add(batch)
        return True

    def _landed(self, batch: _Batch, requests: list[_Request], result: list[Any] | BaseException) -> None:
        self._flying.discard(batch)
        try:
            if not isinstance(result, BaseException):
                self._answer(requests, result)
            elif not isinstance(result, asyncio.CancelledError):  # (cancelled: by `_finished`)
                _fail(requests, result)
        finally:
            self._finished(batch)

    def _finished(self, batch: _Batch) -> None:
        """`batch` is done with: a request still waiting is cancelled (stop: its caller is
        cancelled with it), and the next pipeline leaves as this one's answer arrives."""
        for _, done in batch.requests:
            if not done.done():
                done.cancel()
        self._sending -= 1
        if self._queue and not self._scheduled:
            self._flush()

    async def _run(self, batch: _Batch) -> None:
        try:
            await self._deliver(batch)
        finally:
            self._finished(batch)

    async def _deliver(self, batch: _Batch) -> None:
        live = self._live(batch, asyncio.get_running_loop().time())
        if live is None:
            return
        requests, budget, calls = live
        try:
            if budget <= 0:
                raise BrokerUnavailable(
                    "redis did not take the publish within the timeout (the publishes before it "
                    "are still waiting for redis)"
                )
            replies = await self._send(calls, budget)
        except BrokerUnavailable as failure:
            _fail(requests, failure)
            return
        self._answer(requests, replies)

    def _answer(self, requests: list[_Request], replies: list[Any]) -> None:
        """Each request its own replies; a request with an error reply fails alone."""
        self.pipelines += 1
        self.requests += len(requests)
        start = 0
        for request_calls, done in requests:
            end = start + len(request_calls)
            if not done.done():
                mine = replies[start:end]
                for reply in mine:
                    if isinstance(reply, Exception):
                        done.set_exception(OutcomeUnknown(f"redis answered the publish with an error: {reply}"))
                        break
                else:
                    done.set_result(mine)
            start = end

    def cancel(self) -> None:
        """Stop: every pipeline still being sent is cancelled (its requests with it)."""
        for task in list(self._tasks):
            task.cancel()
        for batch in self._flying:
            for _, done in batch.requests:
                done.cancel()
        for batch in self._queue:
            for _, done in batch.requests:
                done.cancel()
        self._queue.clear()
