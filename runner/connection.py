"""Opening the Redis connection, from a URL or the embedded server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .embedded import EmbeddedRedis
from .errors import ConfigError, TransientError
from .retry import retrying
from .settings import Settings

__all__ = ["connection_options", "open_redis", "redacted", "resolve_url"]


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


def connection_options(settings: Settings, url: str) -> dict[str, Any]:
    """Keyword arguments for redis-py besides what the URL says (TLS files, keepalive)."""
    # RESP2 on purpose: the reply shapes are the same on every redis-py and server version.
    options: dict[str, Any] = {
        "health_check_interval": 30,
        "socket_connect_timeout": 10,
        "protocol": 2,
    }
    if not url.startswith("unix:"):
        options["socket_keepalive"] = True
    if url.startswith("rediss:"):
        files = {
            "ssl_ca_certs": settings.redis_ca_file,
            "ssl_certfile": settings.redis_cert_file,
            "ssl_keyfile": settings.redis_key_file,
        }
        for name, path in files.items():
            if path is not None:
                if not path.is_file():
                    raise ConfigError(f"TLS file {path} does not exist")
                options[name] = str(path)
    return options


@asynccontextmanager
async def open_redis(
    settings: Settings, url: str | None = None, *, wait: bool = False
) -> AsyncIterator[Redis]:
    """A connected client (bytes in, bytes out). Fails fast with a clear error if unreachable,
    or with `wait`, waits for Redis with backoff (a worker started while Redis restarts);
    refused credentials fail at once either way."""
    url = url or resolve_url(settings)
    client = Redis.from_url(url, decode_responses=False, **connection_options(settings, url))

    async def ping() -> None:
        try:
            await client.ping()
        except AuthenticationError as exc:  # a ConnectionError to redis-py: never worth a retry
            raise ConfigError(f"Redis at {redacted(url)} refused the credentials: {exc}") from exc

    try:
        try:
            if wait:
                await retrying(f"connect to {redacted(url)}", ping, within=None)
            else:
                await ping()
        except ResponseError as exc:
            if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc) or "NOPERM" in str(exc):
                raise ConfigError(f"Redis at {redacted(url)} refused access: {exc}") from exc
            raise
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise TransientError(f"cannot reach Redis at {redacted(url)}: {exc}") from exc
        yield client
    finally:
        await client.aclose()
