"""Helpers for running workers inside a test's body (never across a fixture's yield)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
from redis.asyncio import Redis

from runner.engine import Transcriber
from runner.settings import Settings
from runner.worker import Worker

ROOT = Path(__file__).resolve().parent.parent


@asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[Worker]:
    """Run `worker` in the background for the body of the `async with`, then stop it."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        yield worker
        worker.stop()


async def burst(settings: Settings, redis: Redis, transcriber: Transcriber, **kw: Any) -> Worker:
    """Run a worker in burst mode until the stream is drained; returns it for its counters."""
    worker = Worker(settings, redis, transcriber, burst=True, **kw)
    with anyio.fail_after(60):
        await worker.run()
    return worker


async def until(check: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    """Poll `check` until it holds; fail after `within` seconds."""
    with anyio.fail_after(within):
        # Polling is right here: the state lives in Redis or another process, not in an Event.
        while not await check():  # noqa: ASYNC110
            await anyio.sleep(0.02)


def runner_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment for a `runner` subprocess that talks to the test's Redis and prefix."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNNER_")}
    env.update(
        RUNNER_REDIS_URL=settings.redis_url or "",
        RUNNER_PREFIX=settings.prefix,
        RUNNER_AUDIO_ROOTS=os.pathsep.join(str(r) for r in settings.audio_roots),
        RUNNER_LOG_FORMAT="json",
        RUNNER_STATE_DIR=str(settings.state_dir),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


@contextmanager
def worker_process(
    env: Mapping[str, str], log: Path, *args: str
) -> Iterator[subprocess.Popen[bytes]]:
    """A `runner worker` process logging to `log`; killed (even if stopped) if still alive."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runner", "worker", *args],
            env=dict(env),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=out,
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
            proc.wait(30)


def run_cli(
    *args: str, env: Mapping[str, str], timeout: float = 120, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        cwd=ROOT,
    )
