"""Retrying what may go away by itself: Redis connection loss, timeouts, a server still loading.

Exponential backoff with full jitter (AWS's "Exponential Backoff and Jitter"): the n-th wait is
uniform in [0, min(cap, base * 2**n)], so many workers reconnecting to a restarted Redis do not
arrive together.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
from redis.exceptions import BusyLoadingError, ReadOnlyError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .errors import TransientError
from .logs import get_logger

__all__ = ["TRANSIENT", "backoff", "retrying"]

T = TypeVar("T")

log = get_logger("runner.retry")

#: Exceptions worth retrying: the server is unreachable, slow, restarting or failing over.
TRANSIENT: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    BusyLoadingError,
    ReadOnlyError,
    TransientError,
    ConnectionError,
    TimeoutError,
)


def backoff(attempt: int, *, base: float = 0.1, cap: float = 5.0) -> float:
    """Seconds to wait before retry number `attempt` (0-based): full jitter."""
    return random.uniform(0, min(cap, base * 2**attempt))


async def retrying(
    what: str,
    op: Callable[[], Awaitable[T]],
    *,
    within: float | None = 60.0,
    base: float = 0.1,
    cap: float = 5.0,
) -> T:
    """Run `op`, retrying transient failures with backoff for up to `within` seconds.

    `within=None` retries until it succeeds (or the task is cancelled). Gives up with
    `TransientError`; other exceptions propagate at once.
    """
    deadline = None if within is None else anyio.current_time() + within
    attempt = 0
    while True:
        try:
            return await op()
        except TRANSIENT as exc:
            wait = backoff(attempt, base=base, cap=cap)
            if deadline is not None and anyio.current_time() + wait > deadline:
                raise TransientError(f"{what}: gave up after {attempt + 1} tries: {exc}") from exc
            if attempt == 0 or attempt % 10 == 0:
                log.warning("redis.retrying", what=what, error=str(exc) or type(exc).__name__)
            attempt += 1
            await anyio.sleep(wait)
