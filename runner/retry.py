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
from redis.exceptions import BusyLoadingError, OutOfMemoryError, ReadOnlyError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .errors import TransientError
from .logs import get_logger

__all__ = ["TRANSIENT", "backoff", "is_transient", "is_transient_reply", "retrying"]

T = TypeVar("T")

log = get_logger("runner.retry")

#: Exceptions worth retrying: the server is unreachable, slow, restarting, failing over or out
#: of memory for now.
TRANSIENT: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    BusyLoadingError,
    ReadOnlyError,
    OutOfMemoryError,
    TransientError,
    ConnectionError,
    TimeoutError,
)

# Error replies that redis-py raises as a plain ResponseError but that say "not now": a script
# running too long (BUSY), a replica or cluster in transition, and KEYTYPE, the scripts' refusal
# to write while a deployment-wide key holds another type (an operator must remove it).
_TRANSIENT_REPLIES = (
    "BUSY",
    "MASTERDOWN",
    "NOREPLICAS",
    "CLUSTERDOWN",
    "TRYAGAIN",
    "KEYTYPE",
    "OOM",
    "LOADING",
    "READONLY",
)


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` may go away by itself: worth retrying, never the job's fault."""
    if isinstance(exc, TRANSIENT):
        return True
    return isinstance(exc, ResponseError) and is_transient_reply(str(exc))


def is_transient_reply(text: str) -> bool:
    """Whether an error reply's text says "not now" (a script reports what it caught as text)."""
    return text.startswith(_TRANSIENT_REPLIES)


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
        except Exception as exc:
            if not is_transient(exc):
                raise
            wait = backoff(attempt, base=base, cap=cap)
            if deadline is not None and anyio.current_time() + wait > deadline:
                raise TransientError(f"{what}: gave up after {attempt + 1} tries: {exc}") from exc
            if attempt == 0 or attempt % 10 == 0:
                log.warning("redis.retrying", what=what, error=str(exc) or type(exc).__name__)
            attempt += 1
            await anyio.sleep(wait)
