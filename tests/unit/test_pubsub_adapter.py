"""The pub/sub reader drives redis-py's `Connection` by hand: fail loudly when a new
redis-py changes what it calls, and check the subscription bookkeeping alone."""

from __future__ import annotations

import pytest
from redis.asyncio.connection import Connection

from pushsvc.broker import pubsub
from pushsvc.broker.pubsub import Subscriptions, check_redis_py


def test_the_installed_redis_py_offers_what_the_pubsub_adapter_calls():
    check_redis_py()


def test_a_redis_py_without_read_responses_keywords_is_refused(monkeypatch: pytest.MonkeyPatch):
    async def read_response(self: Connection, timeout: float | None = None) -> None:
        return None

    monkeypatch.setattr(Connection, "read_response", read_response)
    with pytest.raises(RuntimeError, match="disconnect_on_error"):
        check_redis_py()
    monkeypatch.setattr(Connection, "send_command", None)
    with pytest.raises(RuntimeError, match="send_command"):
        pubsub.check_redis_py()


def test_a_name_dropped_and_added_again_is_confirmed_by_the_second_reply_only():
    subs = Subscriptions()
    subs.desired.add("a")
    assert subs.changes() == (["a"], [])
    subs.desired.discard("a")
    assert subs.changes() == ([], ["a"])
    subs.desired.add("a")
    assert subs.changes() == (["a"], [])
    assert not subs.on_subscribe_reply("a")  # the first SUBSCRIBE's answer
    assert not subs.on_unsubscribe_reply("a")  # our own UNSUBSCRIBE: not an eviction
    assert subs.on_subscribe_reply("a")
    assert subs.confirmed == {"a"}


def test_an_unprompted_unsubscribe_is_an_eviction():
    subs = Subscriptions()
    subs.desired.add("a")
    subs.changes()
    subs.on_subscribe_reply("a")
    assert subs.on_unsubscribe_reply("a")
    assert "a" not in subs.desired and "a" not in subs.confirmed
