"""Opening the Redis connection, from a URL or the embedded server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .embedded import EmbeddedRedis
from .errors import TransientError
from .settings import Settings

__all__ = ["open_redis", "redacted", "resolve_url"]


def redacted(url: str) -> str:
    """The URL with its password replaced, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def resolve_url(settings: Settings) -> str:
    """The configured URL, or the shared embedded server's (started if need be)."""
    if settings.redis_url:
        return settings.redis_url
    return EmbeddedRedis(settings.state_dir).start()


@asynccontextmanager
async def open_redis(settings: Settings, url: str | None = None) -> AsyncIterator[Redis]:
    """A connected client (bytes in, bytes out). Fails fast with a clear error if unreachable."""
    url = url or resolve_url(settings)
    options: dict[str, Any] = {"health_check_interval": 30, "socket_connect_timeout": 10}
    if not url.startswith("unix:"):
        options["socket_keepalive"] = True
    client = Redis.from_url(url, decode_responses=False, **options)
    try:
        try:
            await client.ping()
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise TransientError(f"cannot reach Redis at {redacted(url)}: {exc}") from exc
        yield client
    finally:
        await client.aclose()
