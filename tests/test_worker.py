"""The worker against a real Redis with a fake engine: the job lifecycle and its edge cases."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest

from runner import attempt as attempt_module
from runner import audio as audio_module
from runner.job import JobState
from runner.keys import GROUP, Keys
from runner.producer import Client
from runner.settings import Settings
from runner.worker import Worker

from .conftest import FIXTURES, RedisClient
from .fakes import FakeTranscriber
from .helpers import burst, running, until

HELLO = FIXTURES / "hello.wav"
LONG = FIXTURES / "long.ogg"


async def pending(redis: RedisClient, keys: Keys) -> int:
    info = await redis.xpending(keys.stream, GROUP)
    return int(info["pending"])


async def test_submit_process_result(settings: Settings, redis: RedisClient) -> None:
    """A submitted job is transcribed, its result stored, its entry acked and deleted."""
    client = Client(redis, settings)
    job_id = await client.submit(HELLO, language="en")
    worker = await burst(settings, redis, FakeTranscriber())
    assert worker.completed == 1
    result = await client.result(job_id)
    assert result.text == "window 0"
    assert result.language == "en" and result.attempts == 1
    assert abs(result.duration - 3.96) < 0.05
    status = await client.status(job_id)
    assert status.state is JobState.COMPLETED and status.attempts == 1
    assert status.worker == worker.name
    keys = Keys(settings.prefix)
    assert await pending(redis, keys) == 0
    assert await redis.xlen(keys.stream) == 0
    assert await redis.ttl(keys.result(job_id)) > 6 * 86400


async def test_wait_returns_when_a_running_worker_finishes(
    settings: Settings, redis: RedisClient
) -> None:
    """`Client.wait` wakes on the completion event of a job run by a live worker."""
    client = Client(redis, settings)
    async with running(Worker(settings, redis, FakeTranscriber(delay=0.2))):
        job_id = await client.submit(LONG)
        with anyio.fail_after(30):
            result = await client.wait(job_id)
    assert [s.text for s in result.segments] == [f" window {n}" for n in range(5)]


async def test_same_job_id_twice_is_one_job(settings: Settings, redis: RedisClient) -> None:
    """Submitting an existing job id queues nothing; reusing it for other content is refused."""
    client = Client(redis, settings)
    first = await client.submit(HELLO, job_id="meeting-42")
    again = await client.submit(HELLO, job_id="meeting-42")
    assert first == again == "meeting-42"
    keys = Keys(settings.prefix)
    assert await redis.xlen(keys.stream) == 1
    with pytest.raises(Exception, match="already used by a different job"):
        await client.submit(HELLO, job_id="meeting-42", beam_size=2)
    await burst(settings, redis, FakeTranscriber())
    # Once done, resubmitting is still a no-op: the result is not recomputed.
    assert await client.submit(HELLO, job_id="meeting-42") == "meeting-42"
    assert await redis.xlen(keys.stream) == 0
    assert (await client.status("meeting-42")).attempts == 1


async def test_plain_xadd_job_is_processed(settings: Settings, redis: RedisClient) -> None:
    """A job added with a bare XADD (as redis-cli would) is processed; its id is the entry id."""
    keys = Keys(settings.prefix)
    entry = (await redis.xadd(keys.stream, {"audio": str(HELLO), "language": "en"})).decode()
    await burst(settings, redis, FakeTranscriber())
    client = Client(redis, settings)
    assert (await client.result(entry)).text == "window 0"
    fields = (await client.status(entry)).fields
    assert fields == {"audio": str(HELLO), "language": "en"}


async def test_jobs_queued_before_any_worker_existed(
    settings: Settings, redis: RedisClient
) -> None:
    """The group starts at id 0, so entries added before it was created are processed."""
    keys = Keys(settings.prefix)
    assert not await redis.exists(keys.stream)
    await redis.xadd(keys.stream, {"audio": str(HELLO)})
    worker = await burst(settings, redis, FakeTranscriber())
    assert worker.completed == 1


async def test_duplicate_entries_with_one_job_id(settings: Settings, redis: RedisClient) -> None:
    """Two raw entries with the same job_id: the job runs once, the copy is dropped."""
    keys = Keys(settings.prefix)
    for _ in range(2):
        await redis.xadd(keys.stream, {"audio": str(HELLO), "job_id": "dup"})
    engine = FakeTranscriber()
    worker = await burst(settings, redis, engine, concurrency=1)
    assert worker.completed == 1
    assert len(engine.requests) == 1
    assert await pending(redis, keys) == 0 and await redis.xlen(keys.stream) == 0


async def test_reused_job_id_with_other_content(settings: Settings, redis: RedisClient) -> None:
    """A raw entry reusing a job id for different work fails alone; the first job is untouched."""
    keys = Keys(settings.prefix)
    client = Client(redis, settings)
    await client.submit(HELLO, job_id="taken")
    await redis.xadd(keys.stream, {"audio": str(LONG), "job_id": "taken"})
    await burst(settings, redis, FakeTranscriber(), concurrency=1)
    status = await client.status("taken")
    assert status.state is JobState.COMPLETED
    assert (await client.result("taken")).text == "window 0"
    assert await pending(redis, keys) == 0


async def test_invalid_jobs_fail_with_reason_and_the_worker_goes_on(
    settings: Settings, redis: RedisClient, tmp_path: Path
) -> None:
    """Bad entries are failed with a precise reason and acked; good ones around them complete."""
    keys = Keys(settings.prefix)
    outside = Path("/etc/hostname")
    link = tmp_path / "link.wav"
    link.symlink_to(outside)
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "junk.wav").write_bytes(b"this is not audio at all" * 100)
    bad = {
        "b1": {"language": "en"},
        "b2": {"audio": str(HELLO), "beam_size": "zero"},
        "b3": {"audio": str(tmp_path / "missing.wav")},
        "b4": {"audio": str(outside)},
        "b5": {"audio": str(link)},
        "b6": {"audio": str(tmp_path / "empty.wav")},
        "b7": {"audio": str(tmp_path / "junk.wav")},
        "b8": {"audio": str(FIXTURES / ".." / ".." / "conftest.py")},
        "b9": {"audio": str(tmp_path)},
        "b10": {"audio": "relative.wav"},
        "b11": {"audio_key": f"{settings.prefix}:audio:b11"},
        "b12": {"audio": str(HELLO), "model": "large-v9"},
    }
    good = []
    for job_id, fields in bad.items():
        await redis.xadd(keys.stream, {**fields, "job_id": job_id})
        good.append(await redis.xadd(keys.stream, {"audio": str(HELLO)}))
    worker = await burst(settings, redis, FakeTranscriber())
    assert worker.completed == len(good)
    client = Client(redis, settings)
    reasons = {job_id: (await client.status(job_id)).reason for job_id in bad}
    assert reasons == {
        "b1": "missing_field",
        "b2": "invalid_field",
        "b3": "missing_file",
        "b4": "outside_roots",
        "b5": "outside_roots",
        "b6": "empty_file",
        "b7": "undecodable",
        "b8": "outside_roots",
        "b9": "not_a_file",
        "b10": "relative_path",
        "b11": "missing_key",
        "b12": "unknown_model",
    }
    for job_id in bad:
        status = await client.status(job_id)
        assert status.state is JobState.FAILED and status.error
    assert await pending(redis, keys) == 0 and await redis.xlen(keys.stream) == 0


async def test_uploaded_audio_is_transcribed_and_removed(
    settings: Settings, redis: RedisClient
) -> None:
    """Audio sent as bytes travels in a Redis key that is deleted once the job completes."""
    client = Client(redis, settings)
    job_id = await client.submit(audio_bytes=HELLO.read_bytes())
    keys = Keys(settings.prefix)
    assert await redis.exists(keys.audio(job_id))
    await burst(settings, redis, FakeTranscriber())
    assert (await client.result(job_id)).text == "window 0"
    assert not await redis.exists(keys.audio(job_id))


async def test_audio_key_over_the_cap_is_refused(settings: Settings, redis: RedisClient) -> None:
    """An audio key larger than the configured cap fails the job without reading it whole."""
    keys = Keys(settings.prefix)
    key = keys.audio("big")
    await redis.set(key, b"\0" * 2048)
    await redis.xadd(keys.stream, {"audio_key": key, "job_id": "big"})
    small = settings.with_(max_audio_key_bytes=1024)
    await burst(small, redis, FakeTranscriber())
    status = await Client(redis, settings).status("big")
    assert status.reason == "too_large" and "more than 1024 bytes" in status.error


async def test_burst_reads_no_more_than_free_slots(settings: Settings, redis: RedisClient) -> None:
    """With concurrency 2, no more than two entries are ever pending for the worker."""
    keys = Keys(settings.prefix)
    client = Client(redis, settings)
    for _ in range(6):
        await client.submit(HELLO)
    seen: list[int] = []

    async def watch() -> None:
        while True:
            seen.append(await pending(redis, keys))
            await anyio.sleep(0.01)

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        worker = await burst(settings, redis, FakeTranscriber(delay=0.1), concurrency=2)
        tg.cancel_scope.cancel()
    assert worker.completed == 6
    assert max(seen) <= 2


async def test_events_trace_the_lifecycle(settings: Settings, redis: RedisClient) -> None:
    """Queued, started and completed events are published with flat fields."""
    client = Client(redis, settings)
    job_id = await client.submit(HELLO)
    await burst(settings, redis, FakeTranscriber())
    entries = await redis.xrange(Keys(settings.prefix).events)
    mine = [f for _, f in entries if f[b"job_id"].decode() == job_id]
    # One window: its progress is the completion itself.
    assert [f[b"type"] for f in mine] == [b"job.queued", b"job.started", b"job.completed"]
    data = json.loads(mine[-1][b"data"])
    assert data["audio_s"] > 3


async def test_audio_limits_and_truncation(
    settings: Settings, redis: RedisClient, tmp_path: Path
) -> None:
    """Audio over the duration or size cap, or cut short, fails with its own reason."""
    keys = Keys(settings.prefix)
    cut = tmp_path / "cut.wav"
    cut.write_bytes(HELLO.read_bytes()[: HELLO.stat().st_size // 2])
    jobs = {"long": FIXTURES / "weather.wav", "big": LONG, "cut": cut, "ok": HELLO}
    for job_id, path in jobs.items():
        await redis.xadd(keys.stream, {"audio": str(path), "job_id": job_id})
    limited = settings.with_(max_audio_seconds=4.5, max_audio_bytes=300_000)
    worker = await burst(limited, redis, FakeTranscriber())
    assert worker.completed == 1
    client = Client(redis, settings)
    long, big, truncated = [await client.status(j) for j in ("long", "big", "cut")]
    assert long.reason == "too_long" and "limit is 4.5 s" in long.error
    assert big.reason == "too_large" and "limit is 300000" in big.error
    assert truncated.reason == "truncated" and "cut short" in truncated.error


async def test_submit_many_in_one_round_trip(settings: Settings, redis: RedisClient) -> None:
    """`submit_many` queues a batch (ids in order, idempotent like `submit`)."""
    client = Client(redis, settings)
    specs = [{"audio": HELLO, "job_id": f"batch-{n}", "language": "en"} for n in range(20)]
    ids = await client.submit_many(specs)
    assert ids == [f"batch-{n}" for n in range(20)]
    assert await client.submit_many(specs[:3]) == ids[:3]  # resubmission: nothing new
    assert await redis.xlen(Keys(settings.prefix).stream) == 20
    with pytest.raises(Exception, match="already used by a different job"):
        await client.submit_many([{"audio": LONG, "job_id": "batch-0"}])
    worker = await burst(settings, redis, FakeTranscriber())
    assert worker.completed == 20


async def test_a_decoder_that_never_returns_fails_the_job(
    settings: Settings, redis: RedisClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decode blocked inside the decoder (it never gets back to check its own time limit)
    fails its job with `decode_timeout` instead of holding its lease forever; the next job runs."""
    release = threading.Event()
    real_open = audio_module.open_audio

    def hanging_open(raw: str, *args: Any) -> Any:
        if raw.endswith("hang.wav"):
            release.wait(30)
        return real_open(raw, *args)

    monkeypatch.setattr(attempt_module, "open_audio", hanging_open)
    monkeypatch.setattr(attempt_module, "_DECODE_GRACE_S", 0.1)
    quick = settings.with_(decode_timeout_seconds=0.2)
    client = Client(redis, quick)
    hang = await client.submit(FIXTURES / "hang.wav", job_id="hang")
    ok = await client.submit(HELLO)
    try:
        async with running(Worker(quick, redis, FakeTranscriber())):
            with anyio.fail_after(20):
                assert (await client.wait(ok)).text == "window 0"
                await until(lambda: _ended(client, hang))
    finally:
        release.set()
    status = await client.status(hang)
    assert (status.state, status.reason) == (JobState.FAILED, "decode_timeout")


async def _ended(client: Client, job_id: str) -> bool:
    return (await client.status(job_id)).state.terminal
