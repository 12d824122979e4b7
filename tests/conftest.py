"""Shared fixtures: a private Redis server for the session, a fresh key prefix for each test."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, TypeAlias

import pytest
from redis.asyncio import Redis

from runner.settings import Settings

from .redis_server import RedisServer, find_server_binary

FIXTURES = Path(__file__).parent / "fixtures" / "speech"

#: redis-py types replies as unions of every protocol's shapes; tests read RESP2 bytes.
RedisClient: TypeAlias = Any


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis nobody else uses: a private redis-server, else a container, else $REDIS_URL.

    Tests never flush it; each test works under its own key prefix.
    """
    if find_server_binary() is not None:
        server = RedisServer(tmp_path_factory.mktemp("redis"))
        server.start()
        yield server.url
        server.stop()
        return
    if shutil.which("docker"):
        from testcontainers.redis import RedisContainer

        with RedisContainer("redis:7-alpine") as container:
            host = container.get_container_host_ip()
            port = container.get_exposed_port(6379)
            yield f"redis://{host}:{port}/0"
        return
    url = os.environ.get("REDIS_URL")
    if not url:
        pytest.fail("no redis-server, no Docker and no REDIS_URL: cannot run the suite")
    yield url


@pytest.fixture
def prefix() -> str:
    return f"{{t-{uuid.uuid4().hex[:12]}}}"


@pytest.fixture
def settings(redis_url: str, prefix: str, tmp_path: Path) -> Settings:
    return Settings(
        redis_url=redis_url,
        prefix=prefix,
        audio_roots=(FIXTURES, tmp_path),
        concurrency=2,
        block_ms=200,
        state_dir=tmp_path / "state",
        log_format="json",
    )


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[RedisClient]:
    client = Redis.from_url(redis_url, decode_responses=False, protocol=2)
    yield client
    await client.aclose()


@pytest.fixture
def fast(settings: Settings) -> Settings:
    """Leases short enough to expire within a test."""
    return settings.with_(
        lease_seconds=0.5,
        heartbeat_seconds=0.1,
        reclaim_seconds=0.1,
        block_ms=100,
        checkpoint_seconds=0.05,
    )
