"""Failure handling: the circuit breaker in a running worker, a broken model, a Redis outage."""

from __future__ import annotations

import json
import signal
import threading
from collections import Counter
from pathlib import Path

import anyio
import pytest

from runner.engine import EngineRequest
from runner.errors import EngineError
from runner.job import JobState
from runner.keys import GROUP, Keys
from runner.producer import Client
from runner.settings import Settings
from runner.worker import Worker

from .conftest import FIXTURES, RedisClient
from .fakes import FakeTranscriber
from .helpers import burst, runner_env, running, until, worker_process
from .redis_server import RedisServer

HELLO = FIXTURES / "hello.wav"


class Switch:
    """Engine fault injection: broken until fixed; optionally hangs instead of failing."""

    def __init__(self) -> None:
        self.broken = True
        self.hang = False
        self.release = threading.Event()

    def __call__(self, request: EngineRequest, window: int) -> None:
        if self.hang:
            self.release.wait(30)
        if self.broken:
            raise EngineError("CUDA error: out of memory (simulated)")


@pytest.fixture
def breaker_settings(fast: Settings) -> Settings:
    return fast.with_(
        breaker_mode="consecutive",
        breaker_consecutive=2,
        breaker_open_seconds=1.0,
        breaker_probe_seconds=0.5,
        lease_seconds=30.0,
        heartbeat_seconds=1.0,
        concurrency=1,
    )


async def breaker_events(redis: RedisClient, keys: Keys) -> list[str]:
    entries = await redis.xrange(keys.events)
    return [f[b"type"].decode() for _, f in entries if f[b"type"].startswith(b"breaker.")]


async def test_breaker_opens_stops_consuming_and_closes_after_a_good_probe(
    breaker_settings: Settings, redis: RedisClient
) -> None:
    """Engine failures open the breaker: jobs stay queued, uncharged, none dead-lettered;
    after the wait a probe runs, succeeds, and the backlog completes."""
    settings = breaker_settings
    keys = Keys(settings.prefix)
    client = Client(redis, settings)
    ids = [await client.submit(HELLO) for _ in range(5)]
    switch = Switch()
    engine = FakeTranscriber(fail=switch)
    worker = Worker(settings, redis, engine)
    async with running(worker):
        await until(lambda: _has(redis, keys, "breaker.opened"))
        tried = len(engine.requests)
        await anyio.sleep(0.6)  # open for 1 s: nothing more reaches the engine meanwhile
        assert len(engine.requests) == tried == 2
        assert await redis.xlen(keys.stream) == 5
        assert await redis.xlen(keys.dead) == 0
        statuses = [await client.status(i) for i in ids]
        assert all(s.state is JobState.QUEUED or s.state is JobState.RUNNING for s in statuses)
        assert sum(s.attempts for s in statuses) == 0, "engine failures are not charged"
        switch.broken = False
        with anyio.fail_after(20):
            outcomes = await client.wait_all(ids)
    assert all(not isinstance(o, Exception) for o in outcomes.values())
    assert await breaker_events(redis, keys) == [
        "breaker.opened",
        "breaker.half_open",
        "breaker.closed",
    ]
    assert await redis.xlen(keys.dead) == 0
    failed_twice = [await client.status(i) for i in ids]
    assert max(int(s.attempts) for s in failed_twice) == 1


async def test_failed_probe_reopens(breaker_settings: Settings, redis: RedisClient) -> None:
    """A probe that fails opens the breaker for another wait."""
    keys = Keys(breaker_settings.prefix)
    client = Client(redis, breaker_settings)
    for _ in range(3):
        await client.submit(HELLO)
    engine = FakeTranscriber(fail=Switch())
    async with running(Worker(breaker_settings, redis, engine)):
        await until(lambda: _count(redis, keys, "breaker.opened", 2))
    assert (await breaker_events(redis, keys))[:3] == [
        "breaker.opened",
        "breaker.half_open",
        "breaker.opened",
    ]
    assert len(engine.requests) == 3  # two to open it, one probe
    assert await redis.xlen(keys.stream) == 3 and await redis.xlen(keys.dead) == 0


async def test_hung_probe_is_cut_at_its_deadline(
    breaker_settings: Settings, redis: RedisClient
) -> None:
    """A probe that hangs does not keep the breaker half-open: at its deadline it reopens."""
    keys = Keys(breaker_settings.prefix)
    client = Client(redis, breaker_settings)
    for _ in range(3):
        await client.submit(HELLO)
    switch = Switch()
    engine = FakeTranscriber(fail=switch)
    worker = Worker(breaker_settings, redis, engine)
    try:
        async with running(worker):
            await until(lambda: _has(redis, keys, "breaker.opened"))
            switch.hang = True
            await until(lambda: _count(redis, keys, "breaker.opened", 2), within=10)
            entries = await redis.xrange(keys.events)
            reasons = [
                json.loads(f[b"data"])["reason"]
                for _, f in entries
                if f[b"type"] == b"breaker.opened"
            ]
            assert "no verdict in 0.5 s" in reasons[-1]
            switch.release.set()
    finally:
        switch.release.set()


async def test_job_errors_do_not_count_against_the_engine(
    breaker_settings: Settings, redis: RedisClient, tmp_path: Path
) -> None:
    """Many bad files in a row never open the breaker: they are the jobs' fault."""
    keys = Keys(breaker_settings.prefix)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio" * 50)
    for _ in range(6):
        await redis.xadd(keys.stream, {"audio": str(junk)})
    await redis.xadd(keys.stream, {"audio": str(HELLO), "job_id": "good"})
    worker = await burst(breaker_settings, redis, FakeTranscriber())
    assert worker.completed == 1 and worker.failed == 6
    assert await breaker_events(redis, keys) == []
    assert await redis.xlen(keys.dead) == 6


async def test_broken_model_directory_opens_the_breaker(
    settings: Settings, redis: RedisClient, tmp_path: Path
) -> None:
    """A real engine failure: a worker whose model will not load stays up, takes no jobs, and
    dead-letters nothing."""
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    (broken / "model.bin").write_bytes(b"\0" * 1024)
    keys = Keys(settings.prefix)
    client = Client(redis, settings)
    ids = [await client.submit(HELLO) for _ in range(3)]
    env = runner_env(
        settings,
        RUNNER_MODEL=str(broken),
        RUNNER_BREAKER_OPEN_SECONDS="1",
        RUNNER_CONCURRENCY="1",
    )
    log = tmp_path / "worker.log"
    with worker_process(env, log) as proc:
        await until(lambda: _count(redis, keys, "breaker.opened", 2), within=60)
        assert proc.poll() is None, "the worker must stay up"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
    opened = [x for x in lines if x["event"] == "breaker.opened"]
    assert "cannot load model" in opened[0]["reason"]
    assert await redis.xlen(keys.stream) == 3 and await redis.xlen(keys.dead) == 0
    assert (await redis.xpending(keys.stream, GROUP))["pending"] == 0
    for job_id in ids:
        assert (await client.status(job_id)).state is JobState.QUEUED


async def test_redis_outage_is_survived(settings: Settings, tmp_path: Path) -> None:
    """Redis stopped for 10 s mid-run and started again (append-only file on): the worker
    survives and every job completes exactly once."""
    from redis.asyncio import Redis

    server = RedisServer(tmp_path / "aof", appendonly=True)
    server.start()
    try:
        local = settings.with_(redis_url=server.url, concurrency=2)
        redis: RedisClient = Redis.from_url(server.url, protocol=2)
        client = Client(redis, local)
        ids = [await client.submit(HELLO) for _ in range(16)]
        keys = Keys(local.prefix)
        worker = Worker(local, redis, FakeTranscriber(delay=0.3), burst=True)
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            await until(lambda: _completed(worker, 4), within=30)
            await anyio.to_thread.run_sync(server.stop)
            await anyio.sleep(10)
            await anyio.to_thread.run_sync(server.start)
        assert worker.completed == 16
        events = await redis.xrange(keys.events)
        done = Counter(f[b"job_id"].decode() for _, f in events if f[b"type"] == b"job.completed")
        assert done == Counter(ids)
        for job_id in ids:
            assert (await client.result(job_id)).text == "window 0"
        assert await redis.xlen(keys.stream) == 0
        await redis.aclose()
    finally:
        server.stop()


async def test_redis_restarted_empty_is_survived(settings: Settings, tmp_path: Path) -> None:
    """Redis restarted without its data (no persistence): the stream and its group are gone.
    The worker says so, recreates the group and runs what producers submit afterwards."""
    from redis.asyncio import Redis

    server = RedisServer(tmp_path / "empty", appendonly=False)
    server.start()
    try:
        local = settings.with_(redis_url=server.url, concurrency=2, block_ms=200)
        redis: RedisClient = Redis.from_url(server.url, protocol=2)
        try:
            client = Client(redis, local)
            worker = Worker(local, redis, FakeTranscriber(), burst=False)
            async with anyio.create_task_group() as tg:
                tg.start_soon(worker.run)
                await client.submit(HELLO)
                await until(lambda: _completed(worker, 1), within=30)
                await anyio.to_thread.run_sync(server.stop)
                await anyio.to_thread.run_sync(server.start)
                later = [await client.submit(HELLO) for _ in range(3)]
                await until(lambda: _completed(worker, 4), within=30)
                worker.stop()
            for job_id in later:
                assert (await client.status(job_id)).state is JobState.COMPLETED
            assert (await client.result(later[0])).text == "window 0"
            groups = await redis.xinfo_groups(Keys(local.prefix).stream)
            assert [g["name"] for g in groups] == [GROUP.encode()]
        finally:
            await redis.aclose()
    finally:
        server.stop()


async def _completed(worker: Worker, n: int) -> bool:
    return worker.completed >= n


async def _has(redis: RedisClient, keys: Keys, event: str) -> bool:
    return event in await breaker_events(redis, keys)


async def _count(redis: RedisClient, keys: Keys, event: str, n: int) -> bool:
    return (await breaker_events(redis, keys)).count(event) >= n


def _bug(request: EngineRequest, window: int) -> None:
    raise ValueError("an engine raising what nobody expects")


async def test_unexpected_errors_are_retried_then_dead_lettered_as_internal(
    fast: Settings, redis: RedisClient
) -> None:
    """An exception of no known class is the runner's own: the job is retried with its attempt
    charged, dead-lettered as `internal` past the limit, and the worker serves the next job."""
    settings = fast.with_(max_deliveries=2)
    client = Client(redis, settings)
    keys = Keys(settings.prefix)
    flaky = await client.submit(HELLO, job_id="flaky", language="de")
    good = await client.submit(HELLO, job_id="good")

    def fail_german(request: EngineRequest, window: int) -> None:
        if request.language == "de":
            _bug(request, window)

    async with running(Worker(settings, redis, FakeTranscriber(fail=fail_german))) as worker:
        await until(lambda: _state(client, flaky, JobState.DEAD), within=30)
        assert (await client.wait(good)).text == "window 0"
        assert not worker.stopping
    status = await client.status(flaky)
    assert status.reason == "internal" and "ValueError" in status.error
    assert status.attempts == 2
    letters = [
        {k.decode(): v.decode() for k, v in f.items()} for _, f in await redis.xrange(keys.dead)
    ]
    assert [(d["job_id"], d["reason"], d["error_class"]) for d in letters] == [
        ("flaky", "internal", "internal")
    ]
    types = [f[b"type"] for _, f in await redis.xrange(keys.events) if f[b"job_id"] == b"flaky"]
    assert types.count(b"job.dead") == 1 and b"job.completed" not in types
    assert (await redis.xpending(keys.stream, GROUP))["pending"] == 0


async def _state(client: Client, job_id: str, state: JobState) -> bool:
    return (await client.status(job_id)).state is state


async def test_redis_out_of_memory_is_waited_out(settings: Settings, tmp_path: Path) -> None:
    """Redis refusing writes for lack of memory (OOM) is Redis's fault, not the job's: the
    worker stays up, the job stays queued, and it completes once memory is back."""
    from redis.asyncio import Redis
    from redis.exceptions import OutOfMemoryError

    server = RedisServer(tmp_path / "oom")
    server.start()
    try:
        local = settings.with_(redis_url=server.url)
        redis: RedisClient = Redis.from_url(server.url, protocol=2)
        client = Client(redis, local)
        keys = Keys(local.prefix)
        async with running(Worker(local, redis, FakeTranscriber())) as worker:
            await until(lambda: _live(redis, keys))
            # The worker, blocked on its read, gets the entry; every write after it (starting
            # the attempt, the liveness record) is refused.
            async with redis.pipeline(transaction=True) as pipe:
                pipe.xadd(keys.stream, {"audio": str(HELLO), "job_id": "starved"})
                pipe.config_set("maxmemory", 1)
                await pipe.execute()
            job_id = "starved"
            with pytest.raises(OutOfMemoryError):
                await redis.set("probe", 1)
            await until(lambda: _pending(redis, keys, 1))
            await anyio.sleep(1.5)
            assert await redis.hget(keys.job(job_id), "state") is None  # not started yet
            assert not worker.stopping
            await redis.config_set("maxmemory", 0)
            # A plain XADD has no record before its attempt starts: poll rather than wait.
            await until(lambda: _recorded_state(redis, keys, job_id, b"completed"), within=20)
            assert (await client.result(job_id)).text == "window 0"
            assert (await client.status(job_id)).attempts == 1
        await redis.aclose()
    finally:
        server.stop()


async def _live(redis: RedisClient, keys: Keys) -> bool:
    return bool(await redis.zcard(keys.workers))


async def _pending(redis: RedisClient, keys: Keys, n: int) -> bool:
    return int((await redis.xpending(keys.stream, GROUP))["pending"]) == n


async def _recorded_state(redis: RedisClient, keys: Keys, job_id: str, state: bytes) -> bool:
    return bool(await redis.hget(keys.job(job_id), "state") == state)
