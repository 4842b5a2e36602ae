"""Shared fixtures: a private redis-server, pushsvc processes, HTTP helpers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.support.cluster import RedisCluster
from tests.support.helpers import TOKEN
from tests.support.procs import RedisServer, Service


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the session; tests that break it use `private_redis`."""
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    with redis_server.client() as client:
        client.flushall()
    return redis_server.url


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """Six redis-server --cluster-enabled (three masters, one replica each), for the session
    (about 10 s to form); tests that fail over or kill nodes leave it healthy again."""
    cluster = RedisCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def service_factory() -> Iterator[Callable[..., Service]]:
    started: list[Service] = []

    def make(env: dict[str, str] | None = None, start: bool = True, **kwargs: Any) -> Service:
        full_env = {"PUSHSVC_PUBLISH_TOKENS": TOKEN, **(env or {})}
        service = Service(full_env, **kwargs)
        started.append(service)
        return service.start() if start else service

    yield make
    for service in started:
        service.stop()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client
