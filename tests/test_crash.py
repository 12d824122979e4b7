"""Real worker processes killed, frozen and starved, with the real model: nothing lost."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest

from runner.audio import Audio
from runner.engine import EngineRequest, Transcription, WhisperTranscriber
from runner.job import JobState
from runner.keys import Keys
from runner.producer import Client
from runner.settings import Settings
from runner.store import Store
from runner.worker import Worker

from .conftest import FIXTURES, RedisClient
from .helpers import runner_env, running, until
from .helpers import worker_process as run_worker_process
from .test_model import direct

pytestmark = [pytest.mark.model, pytest.mark.slow]

LONG = FIXTURES / "long.ogg"
HELLO = FIXTURES / "hello.wav"


@pytest.fixture
def quick(settings: Settings) -> Settings:
    return settings.with_(
        lease_seconds=2.0,
        heartbeat_seconds=0.5,
        reclaim_seconds=0.2,
        checkpoint_seconds=1.0,
        concurrency=1,
    )


def env_of(settings: Settings) -> dict[str, str]:
    return runner_env(
        settings,
        RUNNER_LEASE_SECONDS=str(settings.lease_seconds),
        RUNNER_HEARTBEAT_SECONDS=str(settings.heartbeat_seconds),
        RUNNER_RECLAIM_SECONDS=str(settings.reclaim_seconds),
        RUNNER_CHECKPOINT_SECONDS=str(settings.checkpoint_seconds),
        RUNNER_CONCURRENCY=str(settings.concurrency),
        RUNNER_MAX_DELIVERIES=str(settings.max_deliveries),
        RUNNER_SHUTDOWN_GRACE_SECONDS=str(settings.shutdown_grace_seconds),
    )


@contextmanager
def worker_process(settings: Settings, log: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """A `runner worker` process with these settings, logging JSON to `log`."""
    with run_worker_process(env_of(settings), log, *args) as proc:
        yield proc


@contextmanager
def cpu_burners(n: int) -> Iterator[None]:
    """`n` processes spinning on the CPU, so that transcription competes for every core."""
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()


def events_in(log: Path) -> list[dict[str, object]]:
    lines = log.read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


class Spy:
    """The real engine, recording every request it gets."""

    def __init__(self, inner: WhisperTranscriber) -> None:
        self.inner = inner
        self.requests: list[EngineRequest] = []

    def resolve(self, model: str | None) -> str:
        return self.inner.resolve(model)

    def load(self, model: str) -> None:
        self.inner.load(model)

    def check(self, request: EngineRequest) -> None:
        self.inner.check(request)

    def transcribe(self, audio: Audio, request: EngineRequest) -> Transcription:
        self.requests.append(request)
        return self.inner.transcribe(audio, request)

    def prompt_tokens(self, model: str, text: str) -> list[int]:
        return self.inner.prompt_tokens(model, text)


async def checkpointed(redis: RedisClient, keys: Keys, job_id: str) -> bool:
    return int(await redis.llen(keys.checkpoint_segments(job_id))) >= 1


async def test_sigkill_resumes_from_checkpoint_identically(
    quick: Settings, redis: RedisClient, tmp_path: Path
) -> None:
    """SIGKILL mid-job: a peer resumes at the checkpoint and the transcript is unchanged."""
    client = Client(redis, quick)
    keys = Keys(quick.prefix)
    job_id = await client.submit(LONG)
    with worker_process(quick, tmp_path / "a.log") as proc:
        await until(lambda: checkpointed(redis, keys, job_id), within=90)
        proc.kill()
    checkpoint = await Store(redis, quick).load_checkpoint(job_id)
    assert checkpoint is not None and 0 < checkpoint.resume_at < 122
    spy = Spy(WhisperTranscriber(quick))
    async with running(Worker(quick, redis, spy, name="rescuer")):
        with anyio.fail_after(120):
            result = await client.wait(job_id)
    assert spy.requests[0].clip_start == checkpoint.resume_at
    assert result.resumed_from == checkpoint.resume_at
    assert result.attempts == 2 and result.worker == "rescuer"
    ours = [(s.start, s.end, s.text, s.tokens) for s in result.segments]
    assert ours == direct(str(LONG))
    assert [s.id for s in result.segments] == list(range(1, len(ours) + 1))


async def test_frozen_worker_is_fenced_off(
    quick: Settings, redis: RedisClient, tmp_path: Path
) -> None:
    """SIGSTOP past the lease: a peer finishes the job; the thawed worker's writes are refused."""
    client = Client(redis, quick)
    keys = Keys(quick.prefix)
    job_id = await client.submit(LONG)
    log = tmp_path / "frozen.log"
    with worker_process(quick, log) as proc:
        await until(lambda: checkpointed(redis, keys, job_id), within=90)
        proc.send_signal(signal.SIGSTOP)
        async with running(Worker(quick, redis, WhisperTranscriber(quick), name="rescuer")):
            with anyio.fail_after(120):
                result = await client.wait(job_id)
        proc.send_signal(signal.SIGCONT)
        await until(lambda: _rejected(log), within=60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    assert result.worker == "rescuer"
    events = await redis.xrange(keys.events)
    completions = [f for _, f in events if f[b"type"] == b"job.completed"]
    assert [f[b"worker"] for f in completions] == [b"rescuer"]
    frozen = [e for e in events_in(log) if e.get("job_id") == job_id]
    assert not any(e["event"] == "job.completed" for e in frozen)
    assert (await client.status(job_id)).state is JobState.COMPLETED


async def _rejected(log: Path) -> bool:
    names = {e["event"] for e in events_in(log)}
    return bool(names & {"job.fenced", "job.lost", "job.dropped"})


async def test_busy_worker_keeps_its_lease_under_full_cpu(
    quick: Settings, redis: RedisClient, tmp_path: Path
) -> None:
    """Jobs running for many leases on a CPU-saturated worker are never reclaimed."""
    settings = quick.with_(lease_seconds=1.0, heartbeat_seconds=0.2, concurrency=2)
    client = Client(redis, settings)
    ids = [await client.submit(LONG, job_id=f"long-{n}") for n in range(2)]
    with cpu_burners(2):
        started = anyio.current_time()
        owner = Worker(settings, redis, WhisperTranscriber(settings), name="owner")
        async with running(owner):
            for job_id in ids:
                await until(lambda j=job_id: _runs_on(client, j, "owner"), within=60)  # type: ignore[misc]
            with worker_process(settings, tmp_path / "peer.log"):
                with anyio.fail_after(300):
                    outcomes = await client.wait_all(ids)
        elapsed = anyio.current_time() - started
    assert elapsed > 5 * settings.lease_seconds, "the premise: jobs outlived five leases"
    for job_id in ids:
        result = outcomes[job_id]
        assert not isinstance(result, Exception)
        assert result.worker == "owner" and result.attempts == 1
        status = await client.status(job_id)
        assert [h["delivery"] for h in status.history] == [1]
    events = await redis.xrange(Keys(settings.prefix).events)
    assert not [f for _, f in events if f[b"type"] == b"job.reclaimed"]


async def _runs_on(client: Client, job_id: str, worker: str) -> bool:
    status = await client.status(job_id)
    return status.state is JobState.RUNNING and status.worker == worker


async def test_job_that_keeps_killing_workers_is_dead_lettered(
    quick: Settings, redis: RedisClient, tmp_path: Path
) -> None:
    """Each attempt's worker dies; after max deliveries the job lands in the dead letters."""
    settings = quick.with_(max_deliveries=2, lease_seconds=1.0, heartbeat_seconds=0.2)
    client = Client(redis, settings)
    keys = Keys(settings.prefix)
    job_id = await client.submit(LONG)
    for attempt in (1, 2):
        with worker_process(settings, tmp_path / f"w{attempt}.log") as proc:
            await until(lambda a=attempt: _attempts_at(client, job_id, a), within=90)  # type: ignore[misc]
            proc.kill()
    with worker_process(settings, tmp_path / "w3.log"):
        await until(lambda: _state(client, job_id, JobState.DEAD), within=60)
    dead = await redis.xrange(keys.dead)
    assert len(dead) == 1
    entry = {k.decode(): v.decode() for k, v in dead[0][1].items()}
    assert entry["reason"] == "max_deliveries" and entry["attempts"] == "2"
    history = json.loads(entry["history"])
    assert [h["attempt"] for h in history] == [1, 2]
    assert len({h["worker"] for h in history}) == 2
    assert json.loads(entry["fields"])["audio"] == str(LONG)
    assert await redis.xlen(keys.stream) == 0


async def _attempts_at(client: Client, job_id: str, n: int) -> bool:
    status = await client.status(job_id)
    return status.state is JobState.RUNNING and status.attempts == n


async def _state(client: Client, job_id: str, state: JobState) -> bool:
    return (await client.status(job_id)).state is state


async def test_sigterm_hands_the_job_to_a_peer_at_once(
    quick: Settings, redis: RedisClient, tmp_path: Path
) -> None:
    """SIGTERM mid-job with a peer running: the first worker exits 0 within its grace, the peer
    resumes from the checkpoint within 2 s of the handoff (the lease is 30 s), the attempt count
    is unchanged and the transcript identical to an uninterrupted run."""
    settings = quick.with_(lease_seconds=30.0, shutdown_grace_seconds=1.0)
    client = Client(redis, settings)
    keys = Keys(settings.prefix)
    job_id = await client.submit(LONG)
    log = tmp_path / "first.log"
    spy = Spy(WhisperTranscriber(settings))
    with worker_process(settings, log) as first:
        await until(lambda: checkpointed(redis, keys, job_id), within=90)
        async with running(Worker(settings, redis, spy, name="peer")):
            asked = anyio.current_time()
            first.send_signal(signal.SIGTERM)
            code = await anyio.to_thread.run_sync(first.wait, 30)
            exited = anyio.current_time() - asked
            with anyio.fail_after(120):
                result = await client.wait(job_id)
    assert code == 0 and exited < settings.shutdown_grace_seconds + 10
    events = {
        f[b"type"].decode(): float(f[b"time"])
        for _, f in await redis.xrange(keys.events)
        if f[b"job_id"] == job_id.encode() and f[b"type"] in (b"job.released", b"job.started")
    }
    # The dict keeps the last job.started: the peer's.
    assert events["job.started"] - events["job.released"] < 2.0
    assert result.worker == "peer" and result.attempts == 1
    assert result.resumed_from is not None and result.resumed_from > 0
    assert spy.requests[0].clip_start == result.resumed_from
    assert [(s.start, s.end, s.text, s.tokens) for s in result.segments] == direct(str(LONG))
    assert (await client.status(job_id)).attempts == 1
    lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
    assert any(x["event"] == "job.handed_back" and x["released"] for x in lines)
