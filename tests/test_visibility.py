"""Producers and visibility: rate limiting, events, watch, stats, metrics, cancel."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from runner.errors import RateLimited
from runner.job import JobState
from runner.keys import GROUP, Keys
from runner.producer import Client
from runner.settings import Settings
from runner.store import Store
from runner.worker import Worker

from .conftest import FIXTURES, RedisClient
from .fakes import FakeTranscriber
from .helpers import ROOT, burst, run_cli, runner_env, running, until
from .redis_server import free_port
from .test_recovery import ghost

HELLO = FIXTURES / "hello.wav"
LONG = FIXTURES / "long.ogg"

SUBMITTER = """
import anyio, json, sys
from runner import Client, RateLimited

async def main():
    accepted, retry = 0, []
    async with Client.open() as client:
        for n in range(int(sys.argv[1])):
            try:
                await client.submit(sys.argv[2], client_id="shared")
                accepted += 1
            except RateLimited as exc:
                retry.append(exc.retry_after)
    print(json.dumps({"accepted": accepted, "retry": retry}))

anyio.run(main)
"""


def submit_from_processes(env: dict[str, str], processes: int, each: int) -> list[dict[str, Any]]:
    """Start `processes` submitters at once; each reports what got in and the retry times."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SUBMITTER, str(each), str(HELLO)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    return [json.loads(p.communicate(timeout=120)[0]) for p in procs]


async def test_rate_limit_across_processes(settings: Settings, redis: RedisClient) -> None:
    """Four processes submit 160 jobs at once against 100 per window: exactly 100 get in, the
    rest are told when to retry; once the window slides, submissions get in again."""
    env = runner_env(settings, RUNNER_RATE_LIMIT="100/10")
    results = await anyio.to_thread.run_sync(submit_from_processes, env, 4, 40)
    assert sum(r["accepted"] for r in results) == 100
    retries = [t for r in results for t in r["retry"]]
    assert len(retries) == 60 and all(0 < t <= 10 for t in retries)
    assert await redis.xlen(Keys(settings.prefix).stream) == 100
    limited = settings.with_(rate_limit="100/10")
    client = Client(redis, limited)
    with pytest.raises(RateLimited) as info:
        await client.submit(HELLO, client_id="shared")
    await anyio.sleep(info.value.retry_after + 0.05)
    await client.submit(HELLO, client_id="shared")  # the window slid
    await client.submit(HELLO, client_id="other")  # another client has its own window
    # The command line says when, with its own exit code.
    out = run_cli("submit", str(HELLO), "--client-id", "shared", env=env)
    if out.returncode != 0:
        assert out.returncode == 75 and "retry in" in out.stderr


async def test_rate_limit_off_and_idempotent_resubmission(
    settings: Settings, redis: RedisClient
) -> None:
    """Resubmitting an existing job id is free; `0` turns the limit off."""
    client = Client(redis, settings.with_(rate_limit="2/60"))
    await client.submit(HELLO, job_id="a")
    await client.submit(HELLO, job_id="b")
    for _ in range(5):
        await client.submit(HELLO, job_id="a")
    with pytest.raises(RateLimited):
        await client.submit(HELLO, job_id="c")
    free = Client(redis, settings.with_(rate_limit="0"))
    for n in range(10):
        await free.submit(HELLO, job_id=f"free-{n}")


async def test_events_in_order_across_a_reclaim(fast: Settings, redis: RedisClient) -> None:
    """A job's events come in lifecycle order, across a worker that died mid-job."""
    client = Client(redis, fast)
    job_id = await client.submit(LONG)
    await ghost(Store(redis, fast), "ghost-dead")
    async with running(Worker(fast, redis, FakeTranscriber(delay=0.05), name="rescuer")):
        with anyio.fail_after(20):
            await client.wait(job_id)
    entries = await redis.xrange(Keys(fast.prefix).events)
    mine = [(f[b"type"].decode(), f[b"worker"].decode()) for _, f in entries
            if f[b"job_id"] == job_id.encode()]  # fmt: skip
    types = [t for t, _ in mine]
    assert types[:4] == ["job.queued", "job.started", "job.reclaimed", "job.started"]
    assert types[-1] == "job.completed"
    # A progress event per window but the last (the completion follows at once).
    assert types.count("job.progress") == 4 and "job.checkpointed" in types
    assert mine[1][1] == "ghost-dead" and mine[3][1] == "rescuer"
    times = [float(f[b"time"]) for _, f in entries if f[b"job_id"] == job_id.encode()]
    assert times == sorted(times)


async def test_stats_json_against_a_known_state(
    settings: Settings, redis: RedisClient, tmp_path: Path
) -> None:
    """Two workers busy, two jobs waiting, one dead letter: `stats --json` says exactly so."""
    local = settings.with_(concurrency=1, heartbeat_seconds=0.2)
    client = Client(redis, local)
    await client.submit(tmp_path / "missing.wav", job_id="bad")
    await burst(local, redis, FakeTranscriber())
    ids = [await client.submit(LONG, job_id=f"long-{n}") for n in range(4)]
    engine = FakeTranscriber(delay=2.0)
    w1, w2 = Worker(local, redis, engine, name="w1"), Worker(local, redis, engine, name="w2")
    async with running(w1), running(w2):
        await until(lambda: _running(client, ids, 2))
        await anyio.sleep(0.5)
        out = run_cli("stats", "--json", env=runner_env(local))
        human = run_cli("stats", env=runner_env(local))
        for job_id in ids:
            await client.cancel(job_id)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["stream_length"] == 4 and doc["pending"] == 2 and doc["lag"] == 2
    assert doc["dead_letters"] == 1
    assert doc["jobs"]["queued"] == 2 and doc["jobs"]["running"] == 2
    assert doc["jobs"]["failed"] == 1 and doc["jobs"]["submitted"] == 5
    assert sorted(w["name"] for w in doc["workers"]) == ["w1", "w2"]
    assert all(w["busy"] == 1 and w["slots"] == 1 and w["breaker"] == "closed"
               for w in doc["workers"])  # fmt: skip
    consumers = {c["name"]: c["pending"] for c in doc["consumers"]}
    assert consumers["w1"] == 1 and consumers["w2"] == 1
    assert "2 live" in human.stdout and "2 waiting, 2 pending" in human.stdout


async def _running(client: Client, ids: list[str], n: int) -> bool:
    states = [(await client.status(i)).state for i in ids]
    return states.count(JobState.RUNNING) == n


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def test_metrics_and_health(settings: Settings, redis: RedisClient, tmp_path: Path) -> None:
    """A Prometheus scrape, parsed with its own parser, agrees with the work done."""
    port = free_port()
    local = settings.with_(metrics_port=port, heartbeat_seconds=0.2)
    client = Client(redis, local)
    ids = [await client.submit(HELLO) for _ in range(3)]
    await client.submit(tmp_path / "missing.wav")
    worker = Worker(local, redis, FakeTranscriber())
    async with running(worker):
        with anyio.fail_after(20):
            await client.wait_all(ids)
        done = time.monotonic()
        await until(lambda: _beat_since(worker, done))
        status, text = await anyio.to_thread.run_sync(_get, f"http://127.0.0.1:{port}/metrics")
        health = await anyio.to_thread.run_sync(_get, f"http://127.0.0.1:{port}/healthz")
        ready = await anyio.to_thread.run_sync(_get, f"http://127.0.0.1:{port}/readyz")
        missing = await anyio.to_thread.run_sync(_get, f"http://127.0.0.1:{port}/nope")
    assert status == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("runner_jobs_total", (("outcome", "completed"),))] == 3
    assert samples[("runner_jobs_total", (("outcome", "failed"),))] == 1
    assert samples[("runner_attempts_total", ())] == 4
    assert samples[("runner_audio_seconds_total", ())] == pytest.approx(3 * 3.96, abs=0.1)
    assert samples[("runner_real_time_factor_count", ())] == 3
    assert samples[("runner_job_duration_seconds_count", ())] == 3
    assert samples[("runner_slots", ())] == 2
    assert samples[("runner_slots_busy", ())] == 0
    assert samples[("runner_breaker_state", (("model", "fake"),))] == 0
    assert samples[("runner_queue_pending", ())] == 0
    assert samples[("runner_queue_lag", ())] == 0
    assert samples[("runner_reclaims_total", ())] == 0
    assert health[0] == 200 and json.loads(health[1])["alive"]
    assert ready[0] == 200 and json.loads(ready[1])["model_loaded"]
    assert missing[0] == 404


async def _beat_since(worker: Worker, moment: float) -> bool:
    """A heartbeat (which refreshes the gauges) ran after `moment`, and Redis answered it."""
    return worker._last_beat > moment + 0.05 and worker._redis_ok


async def test_cancel_queued_and_running(settings: Settings, redis: RedisClient) -> None:
    """A cancelled queued job never starts; a running one stops at its next window; both end
    `cancelled`, acknowledged, with an event."""
    local = settings.with_(concurrency=1, heartbeat_seconds=0.2)
    keys = Keys(local.prefix)
    client = Client(redis, local)
    running_id = await client.submit(LONG, job_id="running")
    queued_id = await client.submit(HELLO, job_id="queued")
    engine = FakeTranscriber(delay=0.5)
    async with running(Worker(local, redis, engine)):
        await until(lambda: _state(client, running_id, JobState.RUNNING))
        assert await client.cancel(queued_id)
        assert await client.cancel(running_id)
        assert not await client.cancel(running_id)  # already ended
        await anyio.sleep(1.5)
    assert [r.clip_start for r in engine.requests] == [None]  # only the running one started
    assert engine.windows <= 3, "the running job stopped at its next window"
    for job_id in (running_id, queued_id):
        assert (await client.status(job_id)).state is JobState.CANCELLED
        assert await client.store.result(job_id) is None
    assert await redis.xlen(keys.stream) == 0
    assert (await redis.xpending(keys.stream, GROUP))["pending"] == 0
    entries = await redis.xrange(keys.events)
    cancelled = [f[b"job_id"] for _, f in entries if f[b"type"] == b"job.cancelled"]
    assert sorted(cancelled) == [b"queued", b"running"]
    out = run_cli("cancel", "queued", env=runner_env(local))
    assert out.stdout == "already cancelled\n"


async def _state(client: Client, job_id: str, state: JobState) -> bool:
    return (await client.status(job_id)).state is state


async def test_submit_many_is_all_or_nothing_under_the_rate_limit(
    settings: Settings, redis: RedisClient
) -> None:
    """A batch that would take any of its clients past the limit queues none of its jobs, not
    even other clients'; a batch within every limit is queued whole."""
    client = Client(redis, settings.with_(rate_limit="3/60"))
    stream = Keys(settings.prefix).stream
    await client.submit(HELLO, client_id="a")
    batch = [{"audio": HELLO, "client_id": c} for c in ("b", "a", "a", "a", "c")]
    with pytest.raises(RateLimited) as info:
        await client.submit_many(batch)
    assert info.value.client_id == "a" and 0 < info.value.retry_after <= 60
    assert await redis.xlen(stream) == 1
    ids = await client.submit_many(batch[:3])
    assert await redis.xlen(stream) == 4
    assert [(await client.status(i)).state for i in ids] == [JobState.QUEUED] * 3
