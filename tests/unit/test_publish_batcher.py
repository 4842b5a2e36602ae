"""The publish batcher (`pushsvc/broker/batcher.py`) with a scripted sender, no Redis: each
request keeps its own replies and failures, pipelines are self-clocked, bounded in event
copies, and a request never waits past the Redis timeout for the ones ahead of it.

Every test runs three ways, as a pipeline can leave: in a task through the `Sender`
(``task``), through a `Starter` that takes it without a task and answers through its
callback (``start``), and through a `Starter` that declines it (``declined``: no connection
ready), so the task takes it after all."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pushsvc.broker import BrokerUnavailable, OutcomeUnknown
from pushsvc.broker.batcher import Batcher, Landed
from pushsvc.broker.scripts import Call


def call(tag: str) -> Call:
    return [tag], []


class Sender:
    """Answers each call with its tag (or with `errors[tag]`), records every pipeline, and
    holds a pipeline while `gate` is clear."""

    def __init__(self) -> None:
        self.pipelines: list[list[str]] = []
        self.budgets: list[float] = []
        self.errors: dict[str, Exception] = {}
        self.gate = asyncio.Event()
        self.gate.set()
        self.failure: Exception | None = None

    async def __call__(self, calls: list[Call], budget: float) -> list[Any]:
        tags = [keys[0] for keys, _ in calls]
        self.pipelines.append(tags)
        self.budgets.append(budget)
        await self.gate.wait()
        if self.failure is not None:
            raise self.failure
        return [self.errors.get(tag, f"reply:{tag}") for tag in tags]


class Starter:
    """A `Starter` over a `Sender`: takes the pipeline (``accept``) and hands the sender's
    outcome to `landed` when it is in (never from within the call), or declines it."""

    def __init__(self, sender: Sender, accept: bool) -> None:
        self.sender = sender
        self.accept = accept
        self.started = self.declined = 0
        self.tasks: set[asyncio.Task[list[Any]]] = set()

    def __call__(self, calls: list[Call], budget: float, landed: Landed) -> bool:
        if not self.accept:
            self.declined += 1
            return False
        self.started += 1
        task = asyncio.ensure_future(self.sender(calls, budget))
        self.tasks.add(task)

        def done(task: asyncio.Task[list[Any]]) -> None:
            self.tasks.discard(task)
            landed(asyncio.CancelledError() if task.cancelled() else task.exception() or task.result())

        task.add_done_callback(done)
        return True


@pytest.fixture(params=["task", "start", "declined"])
def batcher(request: pytest.FixtureRequest) -> Iterator[Callable[..., Batcher]]:
    """Makes a Batcher over a `Sender`, its pipelines leaving the fixture's way; checks at
    the end that they did leave that way."""
    made: list[Batcher] = []
    starters: list[Starter] = []

    def make(sender: Sender, max_copies: int = 100, timeout: float = 5.0) -> Batcher:
        starter = None if request.param == "task" else Starter(sender, accept=request.param == "start")
        if starter is not None:
            starters.append(starter)
        made.append(Batcher(sender, max_copies=max_copies, timeout=timeout, start=starter))
        return made[-1]

    yield make
    for starter in starters:
        if request.param == "start":
            assert starter.started and not starter.declined
        else:
            assert starter.declined and not starter.started


async def test_concurrent_requests_share_one_pipeline_and_each_gets_its_own_replies(batcher):
    sender = Sender()
    b = batcher(sender)
    requests = [[call(f"r{n}-e{e}") for e in range(n % 3 + 1)] for n in range(8)]
    replies = await asyncio.wait_for(asyncio.gather(*[b.submit(r, len(r)) for r in requests]), 5)
    assert len(sender.pipelines) == 1
    for request, got in zip(requests, replies, strict=True):
        assert got == [f"reply:{keys[0]}" for keys, _ in request]
    assert (b.pipelines, b.requests) == (1, 8)


async def test_an_error_reply_fails_its_request_only(batcher):
    sender = Sender()
    sender.errors["bad-1"] = RuntimeError("WRONGTYPE Operation against a key holding the wrong kind of value")
    b = batcher(sender)
    results = await asyncio.wait_for(asyncio.gather(
        b.submit([call("ok-0")], 1), b.submit([call("bad-0"), call("bad-1")], 2), b.submit([call("ok-1")], 1),
        return_exceptions=True,
    ), 5)
    assert len(sender.pipelines) == 1
    assert results[0] == ["reply:ok-0"] and results[2] == ["reply:ok-1"]
    assert isinstance(results[1], OutcomeUnknown) and "WRONGTYPE" in str(results[1])


async def test_a_failed_pipeline_fails_each_of_its_requests_with_the_senders_verdict_and_the_next_one_works(batcher):
    sender = Sender()
    b = batcher(sender)
    for failure in (BrokerUnavailable("cannot connect"), OutcomeUnknown("answer lost")):
        sender.failure = failure
        results = await asyncio.wait_for(asyncio.gather(
            *[b.submit([call(f"{n}")], 1) for n in range(3)], return_exceptions=True), 5)
        assert all(type(r) is type(failure) for r in results), results
    sender.failure = None
    assert await asyncio.wait_for(b.submit([call("after")], 1), 5) == ["reply:after"]


async def test_while_a_pipeline_waits_for_redis_the_next_requests_gather_into_one_pipeline(batcher):
    sender = Sender()
    b = batcher(sender)
    sender.gate.clear()
    first = asyncio.ensure_future(b.submit([call("first")], 1))
    while not sender.pipelines:
        await asyncio.sleep(0)
    later = []
    for n in range(5):  # arriving over several loop iterations while "first" is in flight
        later.append(asyncio.ensure_future(b.submit([call(f"later-{n}")], 1)))
        await asyncio.sleep(0)
    assert sender.pipelines == [["first"]]  # nothing else left: one pipeline in flight
    sender.gate.set()
    await asyncio.wait_for(asyncio.gather(first, *later), 5)
    assert sender.pipelines == [["first"], [f"later-{n}" for n in range(5)]]


async def test_a_pipeline_holds_at_most_max_copies_event_copies(batcher):
    sender = Sender()
    b = batcher(sender, max_copies=10)
    sizes = [4, 4, 4, 10, 1, 6]
    replies = await asyncio.wait_for(asyncio.gather(
        *[b.submit([call(f"r{n}")], size) for n, size in enumerate(sizes)]), 5)
    assert replies == [[f"reply:r{n}"] for n in range(len(sizes))]
    by_tag = dict((f"r{n}", size) for n, size in enumerate(sizes))
    assert all(sum(by_tag[tag] for tag in pipeline) <= 10 for pipeline in sender.pipelines)
    assert [tag for pipeline in sender.pipelines for tag in pipeline] == list(by_tag)  # in order
    assert sender.pipelines == [["r0", "r1"], ["r2"], ["r3"], ["r4", "r5"]]


async def test_a_request_queued_for_a_whole_timeout_is_refused_unsent(batcher):
    sender = Sender()
    b = batcher(sender, timeout=0.2)
    sender.gate.clear()
    stuck = asyncio.ensure_future(b.submit([call("stuck")], 1))  # Redis never answers it...
    while not sender.pipelines:
        await asyncio.sleep(0)
    queued = asyncio.ensure_future(b.submit([call("queued")], 1))
    await asyncio.sleep(0.3)  # ... until after the queued request's whole timeout
    sender.gate.set()
    with pytest.raises(BrokerUnavailable) as refused:
        await asyncio.wait_for(queued, 5)
    assert type(refused.value) is BrokerUnavailable  # nothing was sent: not OutcomeUnknown
    assert sender.pipelines == [["stuck"]]
    assert await stuck == ["reply:stuck"]


async def test_a_queued_request_is_sent_with_what_is_left_of_its_timeout(batcher):
    sender = Sender()
    b = batcher(sender, timeout=5.0)
    sender.gate.clear()
    first = asyncio.ensure_future(b.submit([call("first")], 1))
    while not sender.pipelines:
        await asyncio.sleep(0)
    second = asyncio.ensure_future(b.submit([call("second")], 1))
    await asyncio.sleep(0.2)
    sender.gate.set()
    await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert sender.budgets[0] == pytest.approx(5.0, abs=0.05)
    assert 4.0 < sender.budgets[1] < 4.85


async def test_cancel_cancels_the_waiting_callers(batcher):
    sender = Sender()
    b = batcher(sender)
    sender.gate.clear()
    sent = asyncio.ensure_future(b.submit([call("sent")], 1))
    while not sender.pipelines:
        await asyncio.sleep(0)
    queued = asyncio.ensure_future(b.submit([call("queued")], 1))
    await asyncio.sleep(0)
    b.cancel()
    for waiter in (sent, queued):
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(waiter, 5)


async def test_a_request_that_reaches_the_broker_one_loop_iteration_later_joins_the_pipeline(batcher):
    sender = Sender()
    b = batcher(sender)
    first = asyncio.ensure_future(b.submit([call("first")], 1))
    await asyncio.sleep(0)  # "first" is queued; its bytes were read in the previous poll
    second = asyncio.ensure_future(b.submit([call("second")], 1))  # read in this one
    await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert sender.pipelines == [["first", "second"]]
