"""Hostile input: every kind of bad job is dead-lettered with its reason on first delivery,
while the worker keeps serving the good ones around it."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from redis.asyncio import Redis

from runner.errors import InvalidJob
from runner.job import KNOWN_FIELDS, MAX_FIELD_BYTES, Job, JobState
from runner.keys import GROUP, Keys
from runner.producer import Client
from runner.settings import Settings
from runner.worker import Worker

from .conftest import FIXTURES, RedisClient
from .fakes import FakeTranscriber
from .helpers import burst

HELLO = FIXTURES / "hello.wav"
LONG = FIXTURES / "long.ogg"


def matrix(tmp: Path, prefix: str) -> dict[str, tuple[dict[str, Any], str]]:
    """Job id -> (fields, expected reason). Files are made under `tmp` (an audio root)."""
    (tmp / "empty.wav").write_bytes(b"")
    (tmp / "junk.wav").write_bytes(os.urandom(4096))
    (tmp / "text.wav").write_text("hello, I am not a sound\n" * 100)
    (tmp / "cut.wav").write_bytes(HELLO.read_bytes()[:30_000])
    (tmp / "dir.wav").mkdir()
    (tmp / "escape.wav").symlink_to("/etc/passwd")
    outside = str(FIXTURES / ".." / ".." / "conftest.py")
    keys = Keys(prefix)
    return {
        "no-audio": ({"language": "en"}, "missing_field"),
        "both": ({"audio": str(HELLO), "audio_key": f"{prefix}:x"}, "conflicting_fields"),
        "missing": ({"audio": str(tmp / "nope.wav")}, "missing_file"),
        "directory": ({"audio": str(tmp / "dir.wav")}, "not_a_file"),
        "dotdot": ({"audio": outside}, "outside_roots"),
        "symlink": ({"audio": str(tmp / "escape.wav")}, "outside_roots"),
        "absolute-outside": ({"audio": "/etc/hostname"}, "outside_roots"),
        "relative": ({"audio": "hello.wav"}, "relative_path"),
        "empty": ({"audio": str(tmp / "empty.wav")}, "empty_file"),
        "random-bytes": ({"audio": str(tmp / "junk.wav")}, "undecodable"),
        "text-file": ({"audio": str(tmp / "text.wav")}, "undecodable"),
        "truncated": ({"audio": str(tmp / "cut.wav")}, "truncated"),
        "too-long": ({"audio": str(FIXTURES / "weather.wav")}, "too_long"),
        "too-large": ({"audio": str(LONG)}, "too_large"),
        "key-missing": ({"audio_key": keys.audio("key-missing")}, "missing_key"),
        "key-too-big": ({"audio_key": keys.audio("key-too-big")}, "too_large"),
        "key-wrong-type": ({"audio_key": keys.audio("key-wrong-type")}, "key_conflict"),
        "key-foreign": ({"audio_key": keys.audio("key-too-big")}, "foreign_key"),
        "unknown-model": ({"audio": str(HELLO), "model": "large-v9"}, "unknown_model"),
        "bad-language": ({"audio": str(HELLO), "language": "xx"}, "invalid_field"),
        "beam-negative": ({"audio": str(HELLO), "beam_size": "-3"}, "invalid_field"),
        "beam-zero": ({"audio": str(HELLO), "beam_size": "0"}, "invalid_field"),
        "beam-text": ({"audio": str(HELLO), "beam_size": "lots"}, "invalid_field"),
        "beam-absurd": ({"audio": str(HELLO), "beam_size": "99999999999"}, "invalid_field"),
        "bad-bool": ({"audio": str(HELLO), "word_timestamps": "perhaps"}, "invalid_field"),
        "bad-vad": ({"audio": str(HELLO), "vad_filter": "-1"}, "invalid_field"),
        "bad-task": ({"audio": str(HELLO), "task": "summarize"}, "invalid_field"),
        "non-utf8": ({"audio": b"/data/\xff\xfe\xfd.wav"}, "invalid_encoding"),
        "huge-field": ({"audio": str(HELLO), "note": "x" * (2 << 20)}, "field_too_large"),
        "huge-prompt": ({"audio": str(HELLO), "initial_prompt": "w " * 5000}, "invalid_field"),
        "bad-job-id": ({"audio": str(HELLO), "job_id": "a b\nc"}, "invalid_field"),
        "reused-id": ({"audio": str(LONG), "job_id": "taken"}, "job_id_conflict"),
    }


async def test_hostile_matrix(settings: Settings, redis: RedisClient, tmp_path: Path) -> None:
    """31 kinds of bad job: each dead-lettered at once with its precise reason, attempts 0 or 1,
    and every good job between them completed."""
    keys = Keys(settings.prefix)
    limited = settings.with_(
        max_audio_seconds=4.5, max_audio_bytes=300_000, max_audio_key_bytes=1000
    )
    await redis.set(keys.audio("key-too-big"), b"\0" * 5000)
    await redis.rpush(keys.audio("key-wrong-type"), b"a")
    client = Client(redis, limited)
    await client.submit(HELLO, job_id="taken")
    cases = matrix(tmp_path, settings.prefix)
    entries: dict[str, str] = {}
    good = []
    for name, (fields, _) in cases.items():
        payload = {"job_id": name, **fields}
        entries[name] = (await redis.xadd(keys.stream, payload)).decode()
        good.append(await client.submit(HELLO))
    worker = await burst(limited, redis, FakeTranscriber())
    assert worker.completed == len(good) + 1
    for job_id in good:
        assert (await client.result(job_id)).text == "window 0"
    letters = {}
    for _, raw in await redis.xrange(keys.dead):
        f = {k.decode(): v.decode(errors="replace") for k, v in raw.items()}
        letters[f["entry"]] = f
    assert len(letters) == len(cases) >= 20
    for name, (_, reason) in cases.items():
        letter = letters[entries[name]]
        assert letter["reason"] == reason, (name, letter)
        assert letter["error_class"] == "job" and letter["error"]
        assert int(letter["attempts"]) <= 1
    # Where the job id was usable, its record says why; a reused id leaves the first job alone.
    status = await client.status("too-long")
    assert status.state is JobState.FAILED and "limit is 4.5 s" in status.error
    assert (await client.status("taken")).state is JobState.COMPLETED
    assert (await redis.xpending(keys.stream, GROUP))["pending"] == 0
    assert await redis.xlen(keys.stream) == 0


fields_strategy = st.dictionaries(
    keys=st.one_of(st.sampled_from(KNOWN_FIELDS), st.text(min_size=1, max_size=12)),
    values=st.one_of(
        st.text(max_size=40),
        st.binary(max_size=40),
        st.sampled_from(
            [str(HELLO), "/etc/passwd", "..", "", " ", "true", "0", "-1", "5", "en", "x" * 300]
        ),
    ),
    max_size=6,
)


@given(fields_strategy)
@hsettings(max_examples=300, deadline=None)
def test_validator_never_crashes(fields: dict[str, Any]) -> None:
    """Any map of fields parses into a job or is refused with InvalidJob: nothing else."""
    raw = {
        (k.encode() if isinstance(k, str) else k): (v.encode() if isinstance(v, str) else v)
        for k, v in fields.items()
    }
    try:
        job = Job.from_fields(raw, entry_id="1-0")
    except InvalidJob as exc:
        assert exc.reason and exc.message
    else:
        assert (job.audio is None) != (job.audio_key is None)
        assert Job.from_fields(job.to_fields(), entry_id="1-0") == job


@given(st.lists(fields_strategy, min_size=1, max_size=12))
@hsettings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_worker_survives_random_entries(
    redis_url: str, settings: Settings, maps: list[dict[str, Any]]
) -> None:
    """Random entries thrown at a running worker: it never crashes, and every entry ends
    acknowledged, either completed or dead-lettered (nothing lost, nothing stuck)."""

    async def scenario() -> None:
        local = settings.with_(prefix=f"{{h-{uuid.uuid4().hex[:10]}}}")
        keys = Keys(local.prefix)
        redis: RedisClient = Redis.from_url(redis_url, protocol=2)
        try:
            for fields in maps:
                await redis.xadd(keys.stream, fields or {"empty": ""})
            worker = Worker(local, redis, FakeTranscriber(), burst=True)
            with anyio.fail_after(60):
                await worker.run()
            assert worker.completed + worker.failed == len(maps), json.dumps(
                [{str(k): repr(v) for k, v in m.items()} for m in maps]
            )
            assert await redis.xlen(keys.stream) == 0
            assert (await redis.xpending(keys.stream, GROUP))["pending"] == 0
            assert await redis.xlen(keys.dead) == worker.failed
        finally:
            await redis.aclose()

    anyio.run(scenario)


@pytest.mark.parametrize("size", [MAX_FIELD_BYTES, MAX_FIELD_BYTES + 1])
def test_field_size_limit_is_exact(size: int) -> None:
    """The field size limit is inclusive."""
    fields = {"audio": "/a.wav", "note": "x" * size}
    if size > MAX_FIELD_BYTES:
        with pytest.raises(InvalidJob, match="limit is"):
            Job.from_fields(fields, entry_id="1-0")
    else:
        Job.from_fields(fields, entry_id="1-0")
