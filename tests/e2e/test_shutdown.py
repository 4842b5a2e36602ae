"""SIGTERM with thousands of open streams: every response completes, exit 0, no traceback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time

import pytest

from pushsvc.server import MAX_FAST_CRASHES
from tests.support.sse_client import SSEClient

pytestmark = pytest.mark.e2e

STREAMS = 2000


async def test_sigterm_with_2000_open_streams_ends_every_stream_cleanly(service_factory, redis_url):
    service = service_factory({"PUSHSVC_REDIS_URL": redis_url})
    clients: list[SSEClient] = []
    for start in range(0, STREAMS, 250):
        clients += await asyncio.gather(
            *[SSEClient.open(service.port, [f"room-{i % 50}"], timeout=20) for i in range(start, start + 250)]
        )
    try:
        await asyncio.gather(*[c.wait_open(30) for c in clients])
        assert service.proc is not None
        started = time.monotonic()
        service.proc.send_signal(signal.SIGTERM)
        await asyncio.gather(*[c.until_end(timeout=15) for c in clients])
        elapsed = time.monotonic() - started  # every stream ended by the drain, not cut later
        code = await asyncio.to_thread(service.proc.wait, 15)
    finally:
        await asyncio.gather(*[c.close() for c in clients])
    assert code == 0, service.log()[-4000:]
    assert all(c.completed for c in clients), sum(not c.completed for c in clients)
    retries = {c.parser.retry for c in clients}
    assert len(retries) > 1 and all(2400 <= r <= 3600 for r in retries)  # jittered retry hints
    log = service.log()
    assert "Traceback" not in log and "CancelledError" not in log
    assert "drained streams for shutdown" in log
    assert elapsed < 5  # within Hypercorn's graceful_timeout (hypercorn.toml): drained, not cancelled


async def test_sigterm_with_two_workers_drains_both(service_factory, redis_url):
    service = service_factory({"PUSHSVC_REDIS_URL": redis_url}, workers=2)
    clients = await asyncio.gather(*[SSEClient.open(service.port, ["w"]) for _ in range(200)])
    try:
        await asyncio.gather(*[c.wait_open(15) for c in clients])
        assert service.proc is not None
        service.proc.send_signal(signal.SIGTERM)
        await asyncio.gather(*[c.until_end(timeout=15) for c in clients])
        code = await asyncio.to_thread(service.proc.wait, 15)
    finally:
        await asyncio.gather(*[c.close() for c in clients])
    assert code == 0, service.log()[-4000:]
    assert all(c.completed for c in clients)
    log = service.log()
    assert log.count("drained streams for shutdown") == 2  # each worker drained its own streams
    assert "Traceback" not in log


async def test_embedded_broker_with_two_workers_is_refused(service_factory):
    service = service_factory(workers=2, start=False)
    with pytest.raises(RuntimeError, match="PUSHSVC_REDIS_URL"):
        service.start()


async def test_embedded_broker_under_plain_hypercorn_with_two_workers_is_refused(service_factory):
    service = service_factory(workers=2, mode="hypercorn", start=False)
    with contextlib.suppress(RuntimeError):  # one worker may answer before the other refuses
        service.start()
    assert service.proc is not None
    await asyncio.to_thread(service.proc.wait, 20)  # the server stops (Hypercorn exits 0 here)
    assert "works in one process only" in service.log()


async def test_sigterm_while_workers_are_still_starting_exits_cleanly(service_factory, redis_url):
    service = service_factory({"PUSHSVC_REDIS_URL": redis_url}, workers=2, start=False)
    service.start(log_line="workers started")
    assert service.proc is not None
    service.proc.send_signal(signal.SIGTERM)  # while the workers are still importing
    code = await asyncio.to_thread(service.proc.wait, 20)
    assert code == 0, service.log()[-4000:]


def _workers(pid: int) -> set[int]:
    """The worker processes of a supervisor (its spawned children, not the resource tracker)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            children = [int(p) for p in handle.read().split()]
    except FileNotFoundError:
        return set()
    workers = set()
    for child in children:
        with contextlib.suppress(FileNotFoundError), open(f"/proc/{child}/cmdline", "rb") as handle:
            if b"spawn_main" in handle.read():
                workers.add(child)
    return workers


async def test_a_worker_that_keeps_crashing_is_restarted_with_backoff_then_the_server_gives_up(
    service_factory, redis_url
):
    service = service_factory({"PUSHSVC_REDIS_URL": redis_url}, workers=2)
    assert service.proc is not None
    supervisor = service.proc.pid
    original = _workers(supervisor)
    assert len(original) == 2
    # Kill the first worker, then every worker started in its place as soon as it appears:
    # each restart is a fast crash; after MAX_FAST_CRASHES the supervisor must exit non-zero.
    pending = {min(original)}
    killed: list[int] = []
    deadline = time.monotonic() + 60
    while service.proc.poll() is None:
        assert time.monotonic() < deadline, "the supervisor never gave up:\n" + service.log()[-3000:]
        for pid in pending:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        pending = _workers(supervisor) - original - set(killed)
        await asyncio.sleep(0.02)
    code = await asyncio.to_thread(service.proc.wait, 15)
    log = service.log()
    assert code != 0, log[-3000:]
    assert "giving up" in log, log[-3000:]
    assert len(killed) == MAX_FAST_CRASHES
    delays = [float(m) for m in re.findall(r'delay_seconds[=": ]+([0-9.]+)', log)]
    assert delays == [0.5, 1.0, 2.0, 4.0][: MAX_FAST_CRASHES - 1], log[-3000:]
