"""Several `runner worker` processes on one consumer group: every job done exactly once."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter

import anyio
import pytest

from runner.keys import GROUP, Keys
from runner.producer import Client
from runner.settings import Settings
from runner.transcript import Transcript

from .conftest import FIXTURES, RedisClient
from .helpers import ROOT, runner_env

pytestmark = [pytest.mark.model, pytest.mark.slow]

SAMPLES = sorted(FIXTURES.glob("*.wav"))


def start_worker(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "runner", "worker"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_two_worker_processes_thirty_jobs(settings: Settings, redis: RedisClient) -> None:
    """Two worker processes share 30 jobs: each completes once, nothing stays pending."""
    env = runner_env(settings, RUNNER_CONCURRENCY="1")
    workers = [start_worker(env) for _ in range(2)]
    try:
        client = Client(redis, settings)
        ids = [await client.submit(SAMPLES[n % len(SAMPLES)]) for n in range(30)]
        with anyio.fail_after(240):
            outcomes = await client.wait_all(ids)
    finally:
        for proc in workers:
            proc.send_signal(signal.SIGTERM)
        logs = [proc.communicate(timeout=60)[1] for proc in workers]
    assert all(isinstance(o, Transcript) and o.text for o in outcomes.values())
    assert [proc.returncode for proc in workers] == [0, 0]
    keys = Keys(settings.prefix)
    events = await redis.xrange(keys.events)
    started = Counter(f[b"job_id"].decode() for _, f in events if f[b"type"] == b"job.started")
    completed = Counter(f[b"job_id"].decode() for _, f in events if f[b"type"] == b"job.completed")
    assert started == completed == Counter(ids)
    assert (await redis.xpending(keys.stream, GROUP))["pending"] == 0
    assert await redis.xlen(keys.stream) == 0
    # Both processes took part, under distinct consumer names.
    by_worker = Counter(o.worker for o in outcomes.values() if isinstance(o, Transcript))
    assert len(by_worker) == 2, (by_worker, logs)
