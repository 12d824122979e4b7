"""The worker's engine thread pool: results, errors, its size limit, cancellation, reuse."""

from __future__ import annotations

import threading
import time

import anyio
import pytest

from runner.threads import Threads


async def test_results_and_errors_come_back_to_their_callers() -> None:
    threads = Threads(3)
    try:
        results: dict[int, int] = {}

        async def square(n: int) -> None:
            results[n] = await threads.run(lambda: n * n)

        async with anyio.create_task_group() as tg:
            for n in range(200):
                tg.start_soon(square, n)
        assert results == {n: n * n for n in range(200)}

        def boom() -> None:
            raise ValueError("engine says no")

        with pytest.raises(ValueError, match="engine says no"):
            await threads.run(boom)
        assert await threads.run(lambda: "still serving") == "still serving"
    finally:
        threads.close()


async def test_never_more_calls_at_once_than_its_size() -> None:
    threads = Threads(2)
    lock = threading.Lock()
    running, most = 0, 0

    def work() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.02)
        with lock:
            running -= 1

    try:
        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(threads.run, work)
        assert most == 2
    finally:
        threads.close()


async def test_a_cancelled_call_is_abandoned_and_the_pool_goes_on() -> None:
    threads = Threads(1)
    release = threading.Event()
    finished = threading.Event()

    def slow() -> str:
        release.wait(5)
        finished.set()
        return "late"

    try:
        with anyio.move_on_after(0.1) as scope:
            await threads.run(slow)
        assert scope.cancelled_caught  # the caller is free at once
        release.set()
        # The abandoned call ran to its end in its thread; the next call is served after it.
        assert await threads.run(lambda: "next") == "next"
        assert finished.is_set()
    finally:
        threads.close()


def test_reopens_after_close_and_on_another_event_loop() -> None:
    threads = Threads(2)

    def name() -> str:
        return threading.current_thread().name

    async def once() -> str:
        return await threads.run(name)

    first = anyio.run(once)  # a loop of its own; closing is left to the next loop's run
    second = anyio.run(once)
    threads.close()
    third = anyio.run(once)
    threads.close()
    assert all(name.startswith("runner-engine") for name in (first, second, third))


async def test_idle_threads_end_and_come_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pool nobody closes must not keep the process alive: idle threads end on their own,
    and the next call starts one again."""
    import runner.threads

    monkeypatch.setattr(runner.threads, "_IDLE_S", 0.05)
    threads = Threads(2)

    def engine_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith("runner-engine")]

    assert await threads.run(lambda: 1) == 1
    assert engine_threads()
    with anyio.fail_after(5):
        while engine_threads():  # noqa: ASYNC110 (threads, not tasks, to watch)
            await anyio.sleep(0.02)
    assert await threads.run(lambda: 2) == 2
    threads.close()
