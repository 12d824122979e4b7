"""Dead letters from the command line: list, fix the cause, retry; purge."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from runner.dead import DeadLetters
from runner.errors import InvalidJob
from runner.job import JobState
from runner.keys import Keys
from runner.producer import Client
from runner.settings import Settings
from runner.store import Store

from .conftest import FIXTURES, RedisClient
from .fakes import FakeTranscriber
from .helpers import burst, run_cli, runner_env


async def test_list_retry_purge(settings: Settings, redis: RedisClient, tmp_path: Path) -> None:
    """A job whose file was missing is listed, retried once the file exists, and completes."""
    env = runner_env(settings)
    client = Client(redis, settings)
    late = tmp_path / "late.wav"
    await client.submit(late, job_id="late-file", client_id="team-a")
    await client.submit(tmp_path / "never.wav", job_id="never")
    await burst(settings, redis, FakeTranscriber())
    listed = run_cli("dead", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "job late-file" in listed.stdout and "job/missing_file" in listed.stdout
    assert "2 dead letters" in listed.stdout
    letters = json.loads(run_cli("dead", "list", "--json", env=env).stdout)
    assert {d["job_id"] for d in letters} == {"late-file", "never"}
    letter = next(d for d in letters if d["job_id"] == "late-file")
    assert letter["fields"]["client_id"] == "team-a"

    shutil.copy(FIXTURES / "hello.wav", late)
    out = run_cli("dead", "retry", "late-file", env=env)
    assert out.returncode == 0 and out.stdout == "retried late-file\n"
    assert (await client.status("late-file")).state is JobState.QUEUED
    await burst(settings, redis, FakeTranscriber())
    assert (await client.result("late-file")).text == "window 0"
    assert (await client.status("late-file")).attempts == 1
    remaining = json.loads(run_cli("dead", "list", "--json", env=env).stdout)
    assert [d["job_id"] for d in remaining] == ["never"]

    assert run_cli("dead", "retry", env=env).returncode == 2
    assert run_cli("dead", "purge", env=env).stdout == "purged 1\n"
    assert await redis.xlen(Keys(settings.prefix).dead) == 0
    missing = run_cli("dead", "retry", "nothing-here", env=env)
    assert missing.returncode == 1 and "no job 'nothing-here'" in missing.stderr


async def test_retry_all(settings: Settings, redis: RedisClient, tmp_path: Path) -> None:
    """`dead retry --all` resubmits every dead letter."""
    client = Client(redis, settings)
    for n in range(3):
        await client.submit(tmp_path / f"x{n}.wav", job_id=f"x{n}")
    await burst(settings, redis, FakeTranscriber())
    for n in range(3):
        shutil.copy(FIXTURES / "hello.wav", tmp_path / f"x{n}.wav")
    out = run_cli("dead", "retry", "--all", env=runner_env(settings))
    assert sorted(out.stdout.split("\n")[:-1]) == [f"retried x{n}" for n in range(3)]
    worker = await burst(settings, redis, FakeTranscriber())
    assert worker.completed == 3


async def test_retry_never_touches_a_completed_job(
    settings: Settings, redis: RedisClient, tmp_path: Path
) -> None:
    """The dead letter of an entry that reused a completed job's id cannot be retried: the job,
    its record and its result stay as they are; purge removes the letter."""
    client = Client(redis, settings)
    keys = Keys(settings.prefix)
    await client.submit(FIXTURES / "hello.wav", job_id="done")
    await burst(settings, redis, FakeTranscriber())
    await redis.xadd(keys.stream, {"audio": str(tmp_path / "other.wav"), "job_id": "done"})
    await burst(settings, redis, FakeTranscriber())
    letters = DeadLetters(Store(redis, settings))
    (letter,) = await letters.entries()
    assert (letter.job_id, letter.reason) == ("done", "job_id_conflict")
    before = await redis.hgetall(keys.job("done")), await redis.get(keys.result("done"))
    with pytest.raises(InvalidJob) as refused:
        await letters.retry(letter.id)
    assert refused.value.reason == "job_completed"
    assert (await redis.hgetall(keys.job("done")), await redis.get(keys.result("done"))) == before
    out = run_cli("dead", "retry", "--all", env=runner_env(settings))
    assert out.returncode == 0 and out.stdout.startswith(f"kept {letter.id}: job done completed")
    assert await letters.count() == 1
    assert await letters.purge() == 1


async def test_dead_letters_do_not_keep_uploads_forever(fast: Settings, redis: RedisClient) -> None:
    """A dead-lettered job's upload expires with its record, and purging its letter deletes
    it at once."""
    settings = fast.with_(max_audio_seconds=0.5, result_ttl=3600)
    client = Client(redis, settings)
    keys = Keys(settings.prefix)
    job_id = await client.submit(audio_bytes=(FIXTURES / "hello.wav").read_bytes())
    await burst(settings, redis, FakeTranscriber())
    assert (await client.status(job_id)).reason == "too_long"
    assert 0 < await redis.ttl(keys.audio(job_id)) <= 3600
    assert await DeadLetters(Store(redis, settings)).purge([job_id]) == 1
    assert not await redis.exists(keys.audio(job_id))


async def test_retry_all_keeps_a_letter_whose_record_name_holds_foreign_data(
    settings: Settings, redis: RedisClient, tmp_path: Path
) -> None:
    """`dead retry --all` keeps (and explains) a letter whose job's record name still holds a
    planted key, and retries the others."""
    keys = Keys(settings.prefix)
    await redis.set(keys.job("planted"), b"not a record")
    await redis.xadd(keys.stream, {"audio": str(FIXTURES / "hello.wav"), "job_id": "planted"})
    client = Client(redis, settings)
    late = tmp_path / "late.wav"
    await client.submit(late, job_id="late")
    await burst(settings, redis, FakeTranscriber())
    shutil.copy(FIXTURES / "hello.wav", late)
    out = run_cli("dead", "retry", "--all", env=runner_env(settings))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "retried late" in lines
    assert any(line.startswith("kept ") and "holds a string" in line for line in lines), lines
    assert (await client.status("late")).state is JobState.QUEUED
