"""The worker's thread pool: where the engine and the audio decoder block, off the event loop.

One pool per worker with one thread per job slot, so every running job can compute at once and
no more. A plain executor costs half of anyio's general-purpose thread hop, which matters once
per window and per decoded file. A call whose awaiting task is cancelled is abandoned: the
thread finishes on its own and its result is dropped (the engine cannot be interrupted).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["Threads"]

T = TypeVar("T")


class Threads:
    """Runs blocking calls in at most `size` threads."""

    def __init__(self, size: int, name: str = "runner-engine") -> None:
        self.size = size
        self.name = name
        self._pool: ThreadPoolExecutor | None = None

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """Call `fn(*args)` in a pool thread and wait for its result."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.size, thread_name_prefix=self.name)
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        """Let running calls finish in the background; take no more (a later `run` reopens)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
