"""The worker's thread pool: where the engine and the audio decoder block, off the event loop.

One pool per worker with one thread per job slot, so every running job can compute at once and
no more. Calls that finish together wake the event loop once: their results are queued and
handed over in one callback, where a general-purpose executor wakes the loop for each (a
fifth more no-op jobs per second in the queue benchmark). A call whose awaiting task is
cancelled is abandoned: the thread finishes it and drops its result (the engine cannot be
interrupted).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from typing import Any, TypeVar

__all__ = ["Threads"]

T = TypeVar("T")

_Call = tuple["asyncio.Future[Any]", Callable[..., Any], tuple[object, ...]]
_Done = tuple["asyncio.Future[Any]", Any, BaseException | None]

#: A thread with nothing to do this long ends (a new call starts another).
_IDLE_S = 10.0


class _Pool:
    """The threads serving one event loop.

    Not daemons: at exit the interpreter waits for a call in flight instead of tearing the
    engine down under it. Closing sends each thread a stop; a pool nobody closed still lets
    the process exit, its threads ending after `_IDLE_S` without work.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int, name: str) -> None:
        self.loop = loop
        self.calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._done: deque[_Done] = deque()
        self._wake_pending = False
        self._size = size
        self._threads: set[threading.Thread] = set()
        self._name = name
        self._count = 0

    def submit(self, call: _Call) -> None:
        self.calls.put(call)
        with self._lock:
            if len(self._threads) < self._size:
                self._count += 1
                thread = threading.Thread(target=self._serve, name=f"{self._name}-{self._count}")
                self._threads.add(thread)
                thread.start()

    def close(self) -> None:
        with self._lock:
            for _ in self._threads:
                self.calls.put(None)

    def _serve(self) -> None:
        me = threading.current_thread()
        while True:
            try:
                call = self.calls.get(timeout=_IDLE_S)
            except queue.Empty:
                with self._lock:
                    # Checked under the lock `submit` counts threads under: a call queued
                    # meanwhile is served, or finds this thread gone and starts another.
                    if self.calls.empty():
                        self._threads.discard(me)
                        return
                continue
            if call is None:
                with self._lock:
                    self._threads.discard(me)
                return
            self._run(*call)

    def _run(
        self, future: asyncio.Future[Any], fn: Callable[..., Any], args: tuple[object, ...]
    ) -> None:
        if future.cancelled():  # abandoned before it started
            return
        try:
            done: _Done = (future, fn(*args), None)
        except BaseException as exc:  # the awaiting task's to handle, whatever it is
            done = (future, None, exc)
        with self._lock:
            self._done.append(done)
            if self._wake_pending:
                return
            self._wake_pending = True
        with suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            done, self._done = self._done, deque()
            self._wake_pending = False
        for future, result, error in done:
            if future.cancelled():
                continue
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)


class Threads:
    """Runs blocking calls in at most `size` threads."""

    def __init__(self, size: int, name: str = "runner-engine") -> None:
        self.size = size
        self.name = name
        self._pool: _Pool | None = None

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """Call `fn(*args)` in a pool thread and wait for its result."""
        loop = asyncio.get_running_loop()
        if self._pool is None or self._pool.loop is not loop:
            self.close()
            self._pool = _Pool(loop, self.size, self.name)
        future: asyncio.Future[T] = loop.create_future()
        self._pool.submit((future, fn, args))
        return await future

    def close(self) -> None:
        """Let running calls finish in the background; take no more (a later `run` reopens)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None
