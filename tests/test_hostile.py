"""Hostile input: whatever arrives, each entry's trouble stays its own. A job's fault ends that
job once, on its first delivery, with its precise reason, while the worker stays up and serves
the good job queued right behind it as fast as it serves one alone.

Four levels of hostility:

1. wire: bytes, sizes and counts in every field, NUL and non-UTF-8 in every known field and in
   field names, ids that look like other jobs' keys, ids reused for other work;
2. files: headers that lie, compressed bombs, FIFOs and devices, symlinks out of the roots,
   paths swapped while the worker checks them, files growing or shrinking while read;
3. keys: a key of the wrong type planted at every name the runner uses, for one job (that job
   fails with `key_conflict`) or for the whole deployment (the scripts refuse, the worker says
   so, keeps its heartbeat and resumes once the key is gone); `audio_key` aimed anywhere;
4. roles: what each ACL user may not forge is refused by Redis itself; that lives in
   tests/test_roles.py and is not repeated here.

Levels 1 to 3 are tables of cases, each level run against one in-process worker (`running`,
not burst) that must live through all of its cases; each case is a subtest of its own. For every
case: the worker is alive and never raised an alarm in the logs (`worker.read_failed`,
`job.internal_error`, anything at error level), the entry is acknowledged and deleted, the job
has one terminal state and one terminal event, its dead letter names the real reason, nothing
is left pending, and a good job queued right behind it completes within a second of the time
a good job takes alone (measured first, by the same worker). A planted deployment-wide key holds
every job back instead; once it is deleted, the worker must resume within its retry backoff's
cap. A property-based test then throws generated entries at a running worker with the same
invariants.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import threading
import tracemalloc
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    Mapping,
    MutableMapping,
    Sequence,
)
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from redis.asyncio import Redis
from redis.exceptions import ResponseError
from structlog.testing import capture_logs

from runner.audio import Audio, decode
from runner.engine import EngineRequest, Transcription
from runner.errors import InvalidJob
from runner.job import KNOWN_FIELDS, MAX_FIELD_BYTES, MAX_FIELDS, Job, valid_id
from runner.keys import GROUP, Keys
from runner.producer import Client
from runner.settings import Settings
from runner.store import decode_fields
from runner.worker import Worker

from .conftest import FIXTURES, RedisClient
from .fakes import FakeTranscriber
from .helpers import running, until
from .hostile_files import (
    RATE,
    char_device,
    flac_silence,
    flipping,
    growing,
    shrinking,
    sparse_wav,
    streaming_wav,
    video_only,
    wav_bytes,
    wav_claiming,
)

HELLO = FIXTURES / "hello.wav"
HELLO_S = str(HELLO)
MB = 1 << 20
#: What a good job's transcript reads (FakeTranscriber: one 30 s window).
GOOD_TEXT = "window 0"
#: How much longer than alone a good job queued behind a hostile one may take.
SLACK_S = 1.0
#: Longest wait of the worker's retries (runner/retry.py's backoff cap): a worker that met a
#: planted deployment-wide key may sleep this long before it sees the key gone.
BACKOFF_CAP_S = 5.0

#: Outcomes besides the failure reasons.
COMPLETED = "completed"
DUPLICATE = "duplicate"
TERMINAL_JOB_EVENTS = frozenset({"job.completed", "job.failed", "job.dead", "job.cancelled"})
TERMINAL_EVENTS = TERMINAL_JOB_EVENTS | {"entry.rejected"}
#: Log events that must never follow a job's own fault (nor anything logged at error level).
ALARMS = frozenset(
    [
        "worker.read_failed",
        "job.internal_error",
        "job.internal_error_unhandled",
        "entry.parse_failed",
        "entries.begin_failed",
        "job.abandoned",
        "entries.abandoned",
        "redis.retrying",
        "worker.redis_unavailable",
    ]
)
#: Every reason a job may fail for by its own fault (docs/failures.md).
REASONS = frozenset(
    [
        "missing_field",
        "conflicting_fields",
        "invalid_field",
        "invalid_encoding",
        "field_too_large",
        "too_many_fields",
        "relative_path",
        "invalid_path",
        "no_audio_roots",
        "outside_roots",
        "changed_during_check",
        "symlink_loop",
        "missing_file",
        "not_a_file",
        "unreadable_file",
        "empty_file",
        "foreign_key",
        "missing_key",
        "invalid_key",
        "key_conflict",
        "too_large",
        "too_long",
        "decode_timeout",
        "undecodable",
        "no_audio_stream",
        "empty_audio",
        "truncated",
        "unknown_model",
        "unsupported_language",
        "unsupported_task",
        "job_id_conflict",
    ]
)

Pairs = list[tuple[bytes, bytes]]
Log = MutableMapping[str, Any]


def _b(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def raw(*pairs: tuple[str | bytes, str | bytes]) -> Pairs:
    """An entry's fields, in order, as the wire carries them (names may repeat)."""
    return [(_b(k), _b(v)) for k, v in pairs]


def job(job_id: str, *pairs: tuple[str | bytes, str | bytes]) -> Pairs:
    """An entry with its own `job_id` first, then `pairs`."""
    return raw(("job_id", job_id), *pairs)


def text(h: Mapping[bytes, bytes]) -> dict[str, str]:
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in h.items()}


def samples_digest(audio: Audio) -> str:
    return hashlib.sha256(audio.samples.tobytes()).hexdigest()


class Recording(FakeTranscriber):
    """FakeTranscriber that also keeps a fingerprint of every audio it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.heard: list[tuple[float, str]] = []
        self._heard_lock = threading.Lock()

    def transcribe(self, audio: Audio, request: EngineRequest) -> Transcription:
        with self._heard_lock:
            self.heard.append((audio.duration, samples_digest(audio)))
        return super().transcribe(audio, request)


class Tracked(Worker):
    """A worker that says whether its `run` has returned."""

    exited = False

    async def run(self) -> None:
        try:
            await super().run()
        finally:
            self.exited = True


@dataclass
class Case:
    """One hostile entry and what must come of it."""

    id: str
    pairs: Pairs
    #: Acceptable outcomes: failure reasons, COMPLETED or DUPLICATE.
    expect: frozenset[str]
    #: Whether the job's record is its own hash, which must say the outcome. False: the record
    #: name holds something else (planted data, another job's record), to be left as it was.
    record: bool = True
    #: Run first (plant keys, make files, queue a first job); may return the entry's fields.
    setup: Callable[[Harness], Awaitable[Pairs | None]] | None = None
    #: Held open while the entry is processed (a thread or process changing its file).
    during: Callable[[], AbstractContextManager[object]] | None = None
    #: Extra checks once the case is done.
    check: Callable[[Harness, Outcome], Awaitable[None]] | None = None
    #: Log events this case may raise besides a job's own (a planted liveness key, say).
    allowed_logs: frozenset[str] = frozenset()
    #: Why this case cannot run here (it is reported as skipped).
    skip: str | None = None


def case(
    id: str,
    expect: str | set[str],
    pairs: Pairs,
    **kw: Any,
) -> Case:
    wanted = frozenset({expect} if isinstance(expect, str) else expect)
    assert wanted <= REASONS | {COMPLETED, DUPLICATE}, wanted
    return Case(id, pairs, wanted, **kw)


@dataclass
class Outcome:
    """What became of one hostile entry."""

    entry: str
    #: The id its record and events live under: its valid job_id, else the entry id.
    job_id: str
    outcome: str
    letter: dict[str, str] | None
    #: Terminal events of `job_id` published while the case ran.
    events: list[dict[str, str]]
    latency: float


@dataclass
class Harness:
    """One running worker and what a test needs to judge the cases thrown at it."""

    redis: RedisClient
    settings: Settings
    worker: Tracked
    transcriber: Recording
    logs: list[Log]
    baseline: float = 0.0
    seq: int = 0
    done: list[tuple[Case, Outcome]] = field(default_factory=list)

    @property
    def keys(self) -> Keys:
        return Keys(self.settings.prefix)

    def client(self) -> Client:
        return Client(self.redis, self.settings)

    async def xadd(self, pairs: Pairs) -> str:
        flat = [part for pair in pairs for part in pair]
        entry = await self.redis.execute_command("XADD", self.keys.stream, "*", *flat)
        return str(entry.decode())

    async def good(self) -> str:
        """Queue a good job (hello.wav) by a plain XADD; returns its id."""
        self.seq += 1
        job_id = f"good-{self.seq}"
        await self.xadd(job(job_id, ("audio", HELLO_S)))
        return job_id

    async def state(self, job_id: str) -> str | None:
        if await self.redis.type(self.keys.job(job_id)) != b"hash":
            return None
        state = await self.redis.hget(self.keys.job(job_id), "state")
        return None if state is None else str(state.decode())

    async def completes(self, job_id: str, within: float = 30.0) -> None:
        """Wait for a good job to complete, and check its transcript."""

        async def ended() -> bool:
            return await self.state(job_id) in ("completed", "failed", "dead", "cancelled")

        await until(ended, within)
        assert await self.state(job_id) == "completed", await self.record(job_id)
        assert (await self.client().result(job_id)).text == GOOD_TEXT

    async def measure_baseline(self) -> None:
        """How long a good job takes alone, from XADD to completed (the first one warms up)."""
        times = []
        for _ in range(4):
            start = anyio.current_time()
            await self.completes(await self.good())
            times.append(anyio.current_time() - start)
        self.baseline = statistics.median(times[1:])

    async def record(self, job_id: str) -> dict[str, str]:
        if await self.redis.type(self.keys.job(job_id)) != b"hash":
            return {}
        return text(await self.redis.hgetall(self.keys.job(job_id)))

    async def last_event(self) -> str:
        newest = await self.redis.xrevrange(self.keys.events, count=1)
        return newest[0][0].decode() if newest else "0-0"

    async def terminal_events(self, job_id: str, after: str = "0-0") -> list[dict[str, str]]:
        if await self.redis.type(self.keys.events) != b"stream":
            return []
        events = await self.redis.xrange(self.keys.events, min=f"({after}")
        found = [text(f) for _, f in events]
        return [e for e in found if e["job_id"] == job_id and e["type"] in TERMINAL_EVENTS]

    async def letters(self, entry: str) -> list[dict[str, str]]:
        if await self.redis.type(self.keys.dead) != b"stream":
            return []
        found = [text(f) for _, f in await self.redis.xrange(self.keys.dead)]
        return [f for f in found if f["entry"] == entry]

    async def gone(self, entry: str) -> bool:
        """Whether an entry is acknowledged and deleted."""
        in_stream = await self.redis.xrange(self.keys.stream, min=entry, max=entry)
        pending = await self.redis.xpending_range(
            self.keys.stream, GROUP, min=entry, max=entry, count=1
        )
        return not in_stream and not pending

    def alarms(self, since: int, allowed: frozenset[str] = frozenset()) -> list[Log]:
        return [
            log
            for log in self.logs[since:]
            if log["event"] not in allowed
            and (log["event"] in ALARMS or log.get("log_level") in ("error", "critical"))
        ]

    def assert_alive(self) -> None:
        alive, doc = self.worker.health()
        assert alive and not self.worker.exited and not self.worker.stopping, doc

    async def assert_nothing_pending(self) -> None:
        summary = await self.redis.xpending(self.keys.stream, GROUP)
        assert summary["pending"] == 0, summary

    def record_id(self, pairs: Pairs, entry: str) -> str:
        """The id the worker files an entry under: its job_id when valid, else the entry id."""
        fields, _ = decode_fields(dict(pairs))
        job_id = fields.get("job_id", "")
        return job_id if valid_id(job_id) else entry

    async def run(self, c: Case) -> Outcome:
        """Queue a case's entry and a good job right behind it; check every invariant."""
        since = len(self.logs)
        pairs = c.pairs
        if c.setup is not None:
            pairs = await c.setup(self) or pairs
        mark = await self.last_event()
        with c.during() if c.during is not None else nullcontext():
            start = anyio.current_time()
            entry = await self.xadd(pairs)
            good = await self.good()
            await self.completes(good)
            latency = anyio.current_time() - start
        job_id = self.record_id(pairs, entry)

        async def settled() -> bool:
            return await self.gone(entry)

        await until(settled, within=5)
        outcome = await self.outcome(entry, job_id, mark, latency, since)
        self.check_outcome(c, outcome)
        if c.record:
            await self.check_record(outcome)
        alarms = self.alarms(since, c.allowed_logs)
        assert not alarms, f"alarms in the worker's logs: {alarms}"
        self.assert_alive()
        await self.assert_nothing_pending()
        assert latency < self.baseline + SLACK_S, (
            f"the good job behind it took {latency:.2f} s; alone {self.baseline:.2f} s"
        )
        if c.check is not None:
            await c.check(self, outcome)
        self.done.append((c, outcome))
        return outcome

    async def outcome(
        self, entry: str, job_id: str, mark: str, latency: float, since: int
    ) -> Outcome:
        letters = await self.letters(entry)
        assert len(letters) <= 1, letters
        letter = letters[0] if letters else None
        events = await self.terminal_events(job_id, after=mark)
        record = await self.record(job_id)
        if letter is not None:
            found = letter["reason"]
        elif record.get("entry") == entry and record.get("state") == "completed":
            found = COMPLETED
        elif any(
            log["event"] == "job.skipped"
            and log.get("entry") == entry
            and log.get("outcome") == "duplicate"
            for log in self.logs[since:]
        ):
            found = DUPLICATE
        else:
            found = f"nothing: record {record}, events {events}"
        return Outcome(entry, job_id, found, letter, events, latency)

    def check_outcome(self, c: Case, o: Outcome) -> None:
        assert o.outcome in c.expect, f"{o.outcome}, expected {sorted(c.expect)}: {o.letter}"
        types = [e["type"] for e in o.events]
        if o.outcome == COMPLETED:
            assert types == ["job.completed"], o.events
        elif o.outcome == DUPLICATE:
            assert types == [], o.events
        else:
            assert o.letter is not None
            assert o.letter["error_class"] == "job" and o.letter["error"], o.letter
            # A conflicting id is no terminal event of the job that owns the id.
            wanted = "entry.rejected" if o.outcome == "job_id_conflict" else "job.failed"
            assert types == [wanted], o.events
            assert json.loads(o.events[0]["data"])["reason"] == o.outcome, o.events

    async def check_record(self, o: Outcome) -> None:
        record = await self.record(o.job_id)
        if o.outcome == DUPLICATE:
            return
        assert record.get("entry") == o.entry, record
        assert int(record.get("attempts", "0")) <= 1, record
        if o.outcome == COMPLETED:
            assert record["state"] == "completed", record
        else:
            assert record["state"] == "failed" and record["reason"] == o.outcome, record

    async def recheck(self) -> None:
        """At the end: every case's outcome still stands, with no second terminal event."""
        await self.assert_nothing_pending()
        assert await self.redis.xlen(self.keys.stream) == 0
        for c, o in self.done:
            events = await self.terminal_events(o.job_id)
            mine = [e for e in events if e in o.events]
            assert mine == o.events, (c.id, events, o.events)
            job_events = [e for e in events if e["type"] in TERMINAL_JOB_EVENTS]
            assert len(job_events) <= 1, (c.id, job_events)
            assert len(await self.letters(o.entry)) == (o.letter is not None), c.id
        self.assert_alive()


@asynccontextmanager
async def serving(settings: Settings, redis: RedisClient) -> AsyncIterator[Harness]:
    """One worker (one slot, so a good job really waits behind the hostile one), its logs
    captured with their bound context (job_id, entry), and its baseline measured."""
    transcriber = Recording()
    worker = Tracked(settings, redis, transcriber)
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        async with running(worker):
            h = Harness(redis, settings, worker, transcriber, logs)
            await h.measure_baseline()
            yield h
            h.assert_alive()


def hostile(settings: Settings, **limits: Any) -> Settings:
    """One slot, short reads and leases: an entry wrongly left pending is reclaimed (and shows
    as a second terminal event) while the test still runs."""
    defaults: dict[str, Any] = {
        "concurrency": 1,
        "block_ms": 50,
        "heartbeat_seconds": 0.5,
        "lease_seconds": 3.0,
        "reclaim_seconds": 0.25,
    }
    return settings.with_(**{**defaults, **limits})


async def run_table(h: Harness, cases: Sequence[Case], subtests: pytest.Subtests) -> None:
    ids = [c.id for c in cases]
    assert len(set(ids)) == len(ids), "case ids must be unique"
    for c in cases:
        with subtests.test(msg=c.id):
            if c.skip is not None:
                pytest.skip(c.skip)
            await h.run(c)


# --- level 1: the wire ------------------------------------------------------------------------

#: A valid value of every known field (audio_key: see `valid_value`).
VALID = {
    "audio": HELLO_S,
    "language": "en",
    "task": "transcribe",
    "model": "fake",
    "beam_size": "5",
    "word_timestamps": "true",
    "vad_filter": "false",
    "initial_prompt": "hello",
    "client_id": "acme",
}


def with_field(job_id: str, name: str, value: str | bytes) -> Pairs:
    """A good entry with one known field set to `value` (audio_key replaces audio)."""
    if name == "job_id":
        return raw(("job_id", value), ("audio", HELLO_S))
    if name == "audio_key":
        return job(job_id, ("audio_key", value))
    if name == "audio":
        return job(job_id, ("audio", value))
    return job(job_id, ("audio", HELLO_S), (name, value))


def valid_value(name: str, job_id: str, keys: Keys) -> str:
    if name == "job_id":
        return job_id
    if name == "audio_key":
        return keys.audio(job_id)
    return VALID[name]


def long_path(root: Path, size: int) -> str:
    """An absolute path inside `root`, `size` bytes long, of short components."""
    head = f"{root}/"
    body = "a/" * ((size - len(head)) // 2)
    path = head + body + "b" * (size - len(head) - len(body))
    assert len(path) == size
    return path


async def fields_kept(h: Harness, o: Outcome, names: Sequence[str]) -> None:
    fields = json.loads((await h.record(o.job_id))["fields"])
    assert set(names) <= set(fields), fields


def wire_cases(tmp: Path, keys: Keys) -> list[Case]:
    a = ("audio", HELLO_S)
    cases = [
        case("empty-audio", "invalid_field", job("empty-audio", ("audio", ""))),
        case("whitespace-audio", "invalid_field", job("whitespace-audio", ("audio", " \t\r\n"))),
        case("whitespace-job-id", "invalid_field", raw(("job_id", " "), a)),
        case("empty-language", "invalid_field", job("empty-language", a, ("language", ""))),
        case("no-audio", "missing_field", job("no-audio", ("language", "en"))),
        case(
            "audio-and-audio-key",
            "conflicting_fields",
            job("audio-and-audio-key", a, ("audio_key", keys.audio("audio-and-audio-key"))),
        ),
        case(
            "field-64KiB-exactly",
            COMPLETED,
            job("field-64KiB-exactly", a, ("note", "x" * MAX_FIELD_BYTES)),
            check=lambda h, o: fields_kept(h, o, ["note"]),
        ),
        case(
            "field-64KiB-plus-one",
            "field_too_large",
            job("field-64KiB-plus-one", a, ("note", "x" * (MAX_FIELD_BYTES + 1))),
        ),
        case(
            "audio-64KiB-plus-one",
            "field_too_large",
            job("audio-64KiB-plus-one", ("audio", "/" + "a" * MAX_FIELD_BYTES)),
        ),
        case(
            "audio-path-64KiB-exactly",
            "invalid_path",
            job("audio-path-64KiB-exactly", ("audio", long_path(tmp, MAX_FIELD_BYTES))),
        ),
        case(
            "value-2MB",
            "field_too_large",
            job("value-2MB", a, ("initial_prompt", "w " * MB)),
        ),
        case(
            "job-id-64KiB-plus-one",
            "field_too_large",
            raw(("job_id", "j" * (MAX_FIELD_BYTES + 1)), a),
        ),
        case(
            f"{MAX_FIELDS}-fields",
            COMPLETED,
            job(f"{MAX_FIELDS}-fields", a, *[(f"x{i}", "v") for i in range(MAX_FIELDS - 2)]),
        ),
        case(
            f"{MAX_FIELDS + 1}-fields",
            "too_many_fields",
            job(f"{MAX_FIELDS + 1}-fields", a, *[(f"x{i}", "v") for i in range(MAX_FIELDS - 1)]),
        ),
        case(
            "20000-fields",
            "too_many_fields",
            job("20000-fields", a, *[(f"x{i}", "v") for i in range(20_000 - 2)]),
            check=letter_truncated,
        ),
        case(
            "all-known-fields-valid",
            COMPLETED,
            job("all-known-fields-valid", *VALID.items()),
        ),
        case(
            "nul-in-unknown-field-name",
            COMPLETED,
            job("nul-in-unknown-field-name", a, ("no\0te", "x")),
        ),
        case(
            "nul-in-known-field-name",
            COMPLETED,
            job("nul-in-known-field-name", a, ("audio\0", "/etc/passwd")),
        ),
        case(
            "nul-in-unknown-field-value",
            COMPLETED,
            job("nul-in-unknown-field-value", a, ("note", "a\0b")),
        ),
        case(
            "non-utf8-field-name",
            "invalid_encoding",
            job("non-utf8-field-name", a, (b"n\xffme", "x")),
        ),
        case(
            "non-utf8-unknown-field-value",
            "invalid_encoding",
            job("non-utf8-unknown-field-value", a, ("note", b"\xc3\x28")),
        ),
        case("job-id-200-chars", COMPLETED, raw(("job_id", "i" * 200), a)),
        case("job-id-201-chars", "invalid_field", raw(("job_id", "i" * 201), a)),
        case("job-id-with-newline", "invalid_field", raw(("job_id", "a b\nc"), a)),
        case(
            "job-id-with-braces",
            "invalid_field",
            raw(("job_id", "{other}:x"), a),
        ),
        case(
            "unknown-fields-kept",
            COMPLETED,
            job("unknown-fields-kept", a, ("colour", "blue"), ("x-request-id", "42")),
            check=lambda h, o: fields_kept(h, o, ["colour", "x-request-id"]),
        ),
        case(
            "duplicate-field-names",
            {COMPLETED, "invalid_field"},
            job("duplicate-field-names", ("audio", "/etc/passwd"), a),
        ),
        case("bad-language", "invalid_field", job("bad-language", a, ("language", "xx"))),
        case("bad-task", "invalid_field", job("bad-task", a, ("task", "summarize"))),
        case("unknown-model", "unknown_model", job("unknown-model", a, ("model", "large-v9"))),
        case("model-traversal", "invalid_field", job("model-traversal", a, ("model", "../x"))),
        case("beam-negative", "invalid_field", job("beam-negative", a, ("beam_size", "-3"))),
        case("beam-zero", "invalid_field", job("beam-zero", a, ("beam_size", "0"))),
        case("beam-text", "invalid_field", job("beam-text", a, ("beam_size", "lots"))),
        case("beam-absurd", "invalid_field", job("beam-absurd", a, ("beam_size", "9" * 4000))),
        case("bad-bool", "invalid_field", job("bad-bool", a, ("word_timestamps", "perhaps"))),
        case("bad-vad", "invalid_field", job("bad-vad", a, ("vad_filter", "-1"))),
        case(
            "prompt-2001-chars",
            "invalid_field",
            job("prompt-2001-chars", a, ("initial_prompt", "w" * 2001)),
        ),
        case("bad-client-id", "invalid_field", job("bad-client-id", a, ("client_id", "a b"))),
    ]
    for name in KNOWN_FIELDS:
        nul_id, utf_id = f"nul-in-{name}", f"non-utf8-in-{name}"
        good = valid_value(name, nul_id, keys)
        cases.append(case(nul_id, "invalid_field", with_field(nul_id, name, good + "\0x")))
        good = valid_value(name, utf_id, keys)
        bad = good.encode() + b"\xff\xfe"
        cases.append(case(utf_id, "invalid_encoding", with_field(utf_id, name, bad)))
    # Ids that look like another job's keys: each is a job of its own, and job X is untouched.
    for suffix in (":segments", ":ckpt", ":audio:Y", ":job:Y", ":result"):
        cases.append(
            case(f"X{suffix}", COMPLETED, job(f"X{suffix}", a), setup=job_x, check=x_untouched)
        )
    cases += [
        case(
            "id-reused-for-other-work",
            "job_id_conflict",
            job("taken", ("audio", str(FIXTURES / "meeting.wav"))),
            record=False,
            setup=taken_job,
            check=taken_untouched,
        ),
        case(
            "same-job-replayed",
            DUPLICATE,
            job("taken", ("audio", HELLO_S)),
            setup=taken_job,
            check=taken_untouched,
        ),
        case(
            "entry-id-reused-as-job-id",
            "job_id_conflict",
            [],  # the setup gives them: a finished plain-XADD job's id (its entry id), reused
            record=False,
            setup=entry_id_job,
            check=entry_id_job_untouched,
        ),
    ]
    return cases


async def letter_truncated(h: Harness, o: Outcome) -> None:
    assert o.letter is not None and o.letter["truncated"] == "1", o.letter
    assert len(json.loads(o.letter["fields"])) <= MAX_FIELDS


async def job_x(h: Harness) -> None:
    if await h.state("X") is None:
        await h.xadd(job("X", ("audio", HELLO_S)))
        await h.completes("X")


async def x_untouched(h: Harness, o: Outcome) -> None:
    assert await h.state("X") == "completed"
    assert (await h.client().result("X")).text == GOOD_TEXT
    assert [e["type"] for e in await h.terminal_events("X")] == ["job.completed"]


async def taken_job(h: Harness) -> None:
    if await h.state("taken") is None:
        await h.xadd(job("taken", ("audio", HELLO_S)))
        await h.completes("taken")


async def taken_untouched(h: Harness, o: Outcome) -> None:
    record = await h.record("taken")
    assert record["state"] == "completed" and record["entry"] != o.entry, record
    assert (await h.client().result("taken")).text == GOOD_TEXT
    assert [
        e["type"] for e in await h.terminal_events("taken") if e["type"] != "entry.rejected"
    ] == ["job.completed"]


async def entry_id_job(h: Harness) -> Pairs:
    # A plain XADD job without job_id is known by its entry id: reuse that id for other work.
    entry = await h.xadd(raw(("audio", HELLO_S)))
    await h.completes(entry)
    return job(entry, ("audio", str(FIXTURES / "weather.wav")))


async def entry_id_job_untouched(h: Harness, o: Outcome) -> None:
    record = await h.record(o.job_id)
    assert record["state"] == "completed" and record["entry"] == o.job_id != o.entry, record
    assert [e["type"] for e in await h.terminal_events(o.job_id)] == [
        "job.completed",
        "entry.rejected",
    ]


async def test_wire(
    settings: Settings, redis: RedisClient, tmp_path: Path, subtests: pytest.Subtests
) -> None:
    """Every wire-level trick (sizes, counts, NUL, non-UTF-8, colliding and reused ids) ends its
    job once with its precise reason, or runs it when it is harmless, and the worker goes on."""
    local = hostile(settings)
    async with serving(local, redis) as h:
        cases = wire_cases(tmp_path, h.keys)
        assert len(cases) >= 40
        await run_table(h, cases, subtests)
        await h.recheck()


# --- level 2: files ---------------------------------------------------------------------------

#: Level 2 limits: two minutes of audio, 8 MB of file, 30 s of decoding.
FILE_SECONDS = 120.0
FILE_BYTES = 8 * MB
FILE_DECODE_S = 30.0


@contextmanager
def peak_memory_below(limit: int) -> Iterator[None]:
    """Fail if the memory Python and NumPy allocate while the block runs peaks above `limit`
    bytes over what was in use before it."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    try:
        yield
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        if started:
            tracemalloc.stop()
    assert peak < limit, f"{peak / MB:.1f} MB allocated at the peak"


async def error_says(h: Harness, o: Outcome, *words: str, absent: Sequence[str] = ()) -> None:
    assert o.letter is not None
    for word in words:
        assert word in o.letter["error"], o.letter["error"]
    for word in absent:
        assert word not in o.letter["error"], o.letter["error"]


async def lasts(h: Harness, o: Outcome, at_most: float, exactly: float | None = None) -> None:
    """A completed hostile job heard no more audio than it may."""
    if o.outcome != COMPLETED:
        return
    duration = (await h.client().result(o.job_id)).duration
    assert duration <= at_most, duration
    if exactly is not None:
        assert duration == pytest.approx(exactly), duration


def file_cases(root: Path, outside: Path) -> list[Case]:
    """Hostile files under `root` (an audio root); `outside` is a directory outside the roots."""
    files: dict[str, bytes] = {
        "lying-size.wav": wav_claiming(2, 20),
        "2s-header-600s-data.wav": wav_claiming(600, 2, rate=4000),
        "streaming-lying-rate.wav": streaming_wav(200, claimed_rate_factor=100),
        "streaming-honest.wav": streaming_wav(200),
        "too-long.wav": wav_bytes(200, rate=4000),
        "bomb-claims-2s.flac": flac_silence(3600, 2 * RATE),
        "bomb-no-duration.flac": flac_silence(3600, 0),
        "cut.flac": flac_silence(60, 60 * RATE)[: len(flac_silence(60)) // 2],
        "cut.wav": HELLO.read_bytes()[:30_000],
        "empty.wav": b"",
        "random.wav": os.urandom(64 * 1024),
        "text.wav": b"hello, I am not a sound\n" * 1000,
        "no-channels.wav": wav_bytes(2)[:22] + bytes(2) + wav_bytes(2)[24:],
        "no-samples.wav": wav_bytes(0),
        "video-only.mkv": video_only(),
        "new\nline.wav": HELLO.read_bytes(),
        "grow.wav": streaming_wav(1),
        "shrink.wav": wav_bytes(60),
        "good.wav": HELLO.read_bytes(),
    }
    for name, content in files.items():
        (root / name).write_bytes(content)
    secret = outside / "secret.wav"
    shutil.copy(FIXTURES / "weather.wav", secret)
    sparse_wav(root / "cap-plus-one.wav", FILE_BYTES + 1)
    sparse_wav(root / "sparse-10GB.wav", 10 << 30)
    os.mkfifo(root / "fifo.wav")
    (root / "dev-zero.wav").symlink_to("/dev/zero")
    device = char_device(root / "zero-node.wav", 1, 5)
    (root / "escape.wav").symlink_to(secret)
    (root / "dangling.wav").symlink_to(outside / "nowhere.wav")
    (root / "loop-a.wav").symlink_to(root / "loop-b.wav")
    (root / "loop-b.wav").symlink_to(root / "loop-a.wav")
    (root / "inside.wav").symlink_to(root / "good.wav")
    (root / "dir.wav").mkdir()
    unreadable = root / "unreadable.wav"
    shutil.copy(HELLO, unreadable)
    unreadable.chmod(0)

    def at(cid: str, expect: str | set[str], path: str | Path, **kw: Any) -> Case:
        return case(cid, expect, job(cid, ("audio", str(path))), **kw)

    return [
        at("wav-data-size-beyond-file", "truncated", root / "lying-size.wav"),
        at(
            "wav-header-2s-over-600s",
            {COMPLETED, "decode_timeout"},
            root / "2s-header-600s-data.wav",
            check=lambda h, o: lasts(h, o, 2.0, exactly=2.0),
        ),
        at(
            "wav-streaming-lying-rate",
            "too_long",
            root / "streaming-lying-rate.wav",
            check=lambda h, o: error_says(h, o, "decoded"),
        ),
        at("wav-streaming-too-long", "too_long", root / "streaming-honest.wav"),
        at(
            "wav-too-long",
            "too_long",
            root / "too-long.wav",
            check=lambda h, o: error_says(h, o, "limit is 120 s", absent=["decoded"]),
        ),
        at(
            "flac-bomb-hour-claims-2s",
            "too_long",
            root / "bomb-claims-2s.flac",
            during=lambda: peak_memory_below(32 * MB),
            check=lambda h, o: error_says(h, o, "decoded"),
        ),
        at(
            "flac-bomb-hour-no-duration",
            "too_long",
            root / "bomb-no-duration.flac",
            during=lambda: peak_memory_below(32 * MB),
        ),
        at("flac-cut-short", "truncated", root / "cut.flac"),
        at("wav-cut-short", "truncated", root / "cut.wav"),
        at("one-byte-over-the-cap", "too_large", root / "cap-plus-one.wav"),
        at("sparse-10GB", "too_large", root / "sparse-10GB.wav"),
        at("fifo", "not_a_file", root / "fifo.wav"),
        at("link-to-dev-zero", "outside_roots", root / "dev-zero.wav"),
        at("dev-null", "outside_roots", "/dev/null"),
        at(
            "device-node-in-root",
            "not_a_file",
            root / "zero-node.wav",
            skip=None if device else "creating a device node needs privileges",
        ),
        at(
            "symlink-to-outside",
            "outside_roots",
            root / "escape.wav",
            check=lambda h, o: error_says(h, o, str(secret.resolve())),
        ),
        at("dangling-symlink-to-outside", "outside_roots", root / "dangling.wav"),
        at("symlink-loop", "symlink_loop", root / "loop-a.wav"),
        at("symlink-inside", COMPLETED, root / "inside.wav"),
        at("directory", "not_a_file", root / "dir.wav"),
        at("the-root-itself", "not_a_file", root),
        at(
            "unreadable",
            "unreadable_file",
            unreadable,
            # root reads any file whatever its mode; nothing short of dropping capabilities in
            # the worker's threads would make one unreadable to it.
            skip="running as root, which reads files of any mode" if os.geteuid() == 0 else None,
        ),
        at("zero-length", "empty_file", root / "empty.wav"),
        at("random-bytes", "undecodable", root / "random.wav"),
        at("text-file", "undecodable", root / "text.wav"),
        at("wav-no-channels", "undecodable", root / "no-channels.wav"),
        at("wav-no-samples", "empty_audio", root / "no-samples.wav"),
        at("video-without-audio", "no_audio_stream", root / "video-only.mkv"),
        at("missing", "missing_file", root / "nope.wav"),
        at("relative", "relative_path", "hello.wav"),
        at("dotdot-out-of-the-root", "outside_roots", f"{root}/../../../../etc/passwd"),
        at("component-too-long", "invalid_path", root / ("n" * 300 + ".wav")),
        at("newline-in-name", COMPLETED, root / "new\nline.wav"),
        at(
            "growing-while-read",
            {COMPLETED, "too_large", "too_long", "undecodable", "truncated"},
            root / "grow.wav",
            during=lambda: growing(
                root / "grow.wav", chunk=64 * 1024, every_s=0.001, until_bytes=3 * FILE_BYTES
            ),
            check=lambda h, o: lasts(h, o, FILE_SECONDS),
        ),
        at(
            "shrinking-while-read",
            {COMPLETED, "truncated", "undecodable", "empty_audio"},
            root / "shrink.wav",
            during=lambda: shrinking(root / "shrink.wav", 4096),
            check=lambda h, o: lasts(h, o, 60.0),
        ),
    ]


async def swap_race(h: Harness, root: Path, outside: Path, jobs: int = 40) -> None:
    """Jobs on a path another process flips between a good file, a link to /etc/passwd and a
    link to audio outside the roots: each completes with the good file's transcript or is
    refused, and the engine never hears anything but the good file."""
    secret = outside / "secret.wav"
    good, target = root / "good.wav", root / "swapped.wav"
    hello = samples_digest(decode(HELLO, max_seconds=60))
    assert samples_digest(decode(secret, max_seconds=60)) != hello
    heard = len(h.transcriber.heard)
    since = len(h.logs)
    with flipping(target, good, Path("/etc/passwd"), secret):
        entries = [await h.xadd(job(f"swap-{i}", ("audio", str(target)))) for i in range(jobs)]
        after = await h.good()
        await h.completes(after, within=60)
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        assert await h.gone(entry)
        letters = await h.letters(entry)
        events = [e["type"] for e in await h.terminal_events(f"swap-{i}")]
        if letters:
            reason = letters[0]["reason"]
            assert len(letters) == 1 and reason in {"outside_roots", "changed_during_check"}, (
                letters
            )
            assert events == ["job.failed"], events
        else:
            reason = COMPLETED
            assert events == ["job.completed"], events
            assert (await h.client().result(f"swap-{i}")).text == GOOD_TEXT
        seen[reason] = seen.get(reason, 0) + 1
    digests = {digest for _, digest in h.transcriber.heard[heard:]}
    assert digests == {hello}, "the engine heard a file other than the good one"
    assert seen.get(COMPLETED) and len(seen) > 1, seen
    assert not h.alarms(since)
    h.assert_alive()
    await h.assert_nothing_pending()


async def test_files(
    settings: Settings,
    redis: RedisClient,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    subtests: pytest.Subtests,
) -> None:
    """Every hostile file (lying headers, bombs, FIFOs, devices, links out, swaps, growth) is
    refused with its precise reason or read within the limits, never hangs, never reads outside
    the roots, and the worker goes on."""
    local = hostile(
        settings,
        max_audio_seconds=FILE_SECONDS,
        max_audio_bytes=FILE_BYTES,
        decode_timeout_seconds=FILE_DECODE_S,
    )
    root, outside = tmp_path, tmp_path_factory.mktemp("outside")
    cases = file_cases(root, outside)
    assert len(cases) >= 30
    async with serving(local, redis) as h:
        await run_table(h, cases, subtests)
        with subtests.test(msg="link-swapped-during-check"):
            await swap_race(h, root, outside)
        await h.recheck()


# --- level 3: keys ----------------------------------------------------------------------------

#: Level 3 limit on uploaded audio (hello.wav is 127 KB).
KEY_BYTES = 200_000


async def plant(redis: RedisClient, key: str, kind: str) -> None:
    """Put a key of type `kind` holding `planted` at `key`, where nothing was."""
    await redis.delete(key)
    if kind == "string":
        await redis.set(key, "planted")
    elif kind == "list":
        await redis.rpush(key, "planted")
    elif kind == "hash":
        await redis.hset(key, "planted", "planted")
    elif kind == "zset":
        await redis.zadd(key, {"planted": 1})
    elif kind == "set":
        await redis.sadd(key, "planted")
    else:
        assert kind == "stream"
        await redis.xadd(key, {"planted": "planted"})


async def still_planted(redis: RedisClient, key: str, kind: str) -> None:
    """The key is exactly as `plant` left it: the runner destroyed nothing it did not write."""
    assert (await redis.type(key)).decode() == kind, key
    if kind == "string":
        assert await redis.get(key) == b"planted"
    elif kind == "list":
        assert await redis.lrange(key, 0, -1) == [b"planted"]
    elif kind == "hash":
        assert await redis.hgetall(key) == {b"planted": b"planted"}
    elif kind == "zset":
        assert await redis.zrange(key, 0, -1) == [b"planted"]
    elif kind == "set":
        assert await redis.smembers(key) == {b"planted"}
    else:
        assert [f for _, f in await redis.xrange(key)] == [{b"planted": b"planted"}]


def key_cases(keys: Keys) -> list[Case]:
    """A key of the wrong type at each of one job's key names, and `audio_key` aimed anywhere."""
    hello = HELLO.read_bytes()
    cases: list[Case] = []
    planted = [
        ("job", "string", False),
        ("job", "list", False),
        ("job", "zset", False),
        ("job", "stream", False),
        ("ckpt", "string", True),
        ("ckpt", "list", True),
        ("segs", "hash", True),
        ("segs", "string", True),
        ("audio", "list", True),
        ("audio", "hash", True),
    ]
    for kind, type_, own_record in planted:
        cid = f"{kind}-as-{type_}"
        key = f"{keys.prefix}:{kind}:{cid}"
        # An upload job for the audio key, a file job for the others.
        pairs = job(cid, ("audio_key", key) if kind == "audio" else ("audio", HELLO_S))
        cases.append(
            case(
                cid,
                "key_conflict",
                pairs,
                record=own_record,
                setup=lambda h, key=key, type_=type_: plant(h.redis, key, type_),
                check=lambda h, o, key=key, type_=type_: still_planted(h.redis, key, type_),
            )
        )
    for type_ in ("list", "hash"):
        cid = f"result-as-{type_}"
        cases.append(
            case(
                cid,
                COMPLETED,
                job(cid, ("audio", HELLO_S)),
                setup=lambda h, cid=cid, type_=type_: plant(h.redis, keys.result(cid), type_),
            )
        )

    async def upload(h: Harness, key: str, data: bytes) -> None:
        await h.redis.set(key, data)

    async def upload_kept(h: Harness, key: str, data: bytes) -> None:
        assert await h.redis.get(key) == data, key

    foreign = {
        "another-jobs-upload": keys.audio("someone-else"),
        "outside-the-prefix": "elsewhere:audio:secret",
        "another-deployment": "{other}:audio:key-outside-prefix",
        "own-key-with-a-space": keys.audio("own-key-with-a-space") + " ",
    }
    for cid, key in foreign.items():
        cases.append(
            case(
                cid,
                "foreign_key",
                job(cid, ("audio_key", key)),
                setup=lambda h, key=key: upload(h, key, hello),
                check=lambda h, o, key=key: upload_kept(h, key, hello),
            )
        )
    cases += [
        case(
            "audio-key-is-the-stream",
            "foreign_key",
            job("audio-key-is-the-stream", ("audio_key", keys.stream)),
        ),
        case(
            "audio-key-of-another-type",
            "foreign_key",
            job("audio-key-of-another-type", ("audio_key", keys.audio("hashy"))),
            setup=lambda h: plant(h.redis, keys.audio("hashy"), "hash"),
            check=lambda h, o: still_planted(h.redis, keys.audio("hashy"), "hash"),
        ),
        case(
            "own-upload-missing",
            "missing_key",
            job("own-upload-missing", ("audio_key", keys.audio("own-upload-missing"))),
        ),
    ]
    uploads = {
        "own-upload-empty": ("missing_key", b""),
        "own-upload-too-large": ("too_large", b"\0" * (KEY_BYTES + 1)),
        "own-upload-garbage": ("undecodable", os.urandom(4096)),
        "own-upload-good": (COMPLETED, hello),
    }
    for cid, (expect, data) in uploads.items():
        cases.append(
            case(
                cid,
                expect,
                job(cid, ("audio_key", keys.audio(cid))),
                setup=lambda h, cid=cid, data=data: upload(h, keys.audio(cid), data),
            )
        )
    return cases


async def test_job_keys(settings: Settings, redis: RedisClient, subtests: pytest.Subtests) -> None:
    """A job whose own keys hold planted data fails with key_conflict, leaving the data alone; a
    planted result is overwritten; an audio_key other than the job's own upload is refused."""
    local = hostile(settings, max_audio_key_bytes=KEY_BYTES)
    async with serving(local, redis) as h:
        cases = key_cases(h.keys)
        await run_table(h, cases, subtests)
        # Completed uploads are deleted with their jobs; planted results are results now.
        assert not await redis.exists(h.keys.audio("own-upload-good"))
        for type_ in ("list", "hash"):
            assert (await h.client().result(f"result-as-{type_}")).text == GOOD_TEXT
        await h.recheck()


async def outage(h: Harness, label: str, key: str, type_: str) -> None:
    """Plant a deployment-wide key of the wrong type with a bad and a good job queued: nothing
    is processed while it stays, the worker says why and keeps beating; once it is deleted, both
    jobs end as they should."""
    since = len(h.logs)
    await plant(h.redis, key, type_)
    bad = await h.xadd(job(f"during-{label}", ("audio", "relative.wav")))
    good = await h.good()

    async def refused() -> bool:
        return any(
            "KEYTYPE" in str(log.get("error", "")) and key in str(log.get("error", ""))
            for log in h.logs[since:]
        )

    await until(refused)
    name = h.keys.worker(h.worker.name)
    beat = await h.redis.hget(name, "last_seen")

    async def beats() -> bool:
        return bool(await h.redis.hget(name, "last_seen") != beat)

    await until(beats)
    assert await h.state(good) in (None, "queued", "running")
    assert not await h.gone(bad)
    h.assert_alive()
    alarms = h.alarms(since, frozenset({"redis.retrying", "worker.redis_unavailable"}))
    assert not alarms, alarms
    await h.redis.delete(key)
    start = anyio.current_time()
    await h.completes(good, within=BACKOFF_CAP_S + 10)
    resumed = anyio.current_time() - start
    assert resumed < BACKOFF_CAP_S + h.baseline + SLACK_S, resumed

    async def settled() -> bool:
        return await h.gone(bad)

    await until(settled)
    letters = await h.letters(bad)
    assert [x["reason"] for x in letters] == ["relative_path"], letters
    events = await h.terminal_events(f"during-{label}")
    assert [e["type"] for e in events] == ["job.failed"], events
    assert (await h.record(f"during-{label}"))["state"] == "failed"
    await h.assert_nothing_pending()
    h.assert_alive()


async def liveness_outage(h: Harness, label: str, key: str) -> None:
    """A liveness key of the wrong type: the worker says so every beat, jobs go on, and its
    liveness record is back once the key is deleted."""
    since = len(h.logs)
    await plant(h.redis, key, "string")

    async def complained() -> bool:
        return any(log["event"] == "worker.liveness_failed" for log in h.logs[since:])

    await until(complained)
    allowed = frozenset({"worker.liveness_failed"})
    poison = job(f"while-{label}", ("audio", "relative.wav"))
    await h.run(case(f"while-{label}", "relative_path", poison, allowed_logs=allowed))
    await h.redis.delete(key)
    name = h.worker.name

    async def back() -> bool:
        record = await h.redis.type(h.keys.worker(name)) == b"hash"
        return bool(record and await h.redis.zscore(h.keys.workers, name) is not None)

    await until(back)
    h.assert_alive()


async def test_deployment_keys(
    settings: Settings, redis: RedisClient, subtests: pytest.Subtests
) -> None:
    """A deployment-wide key of the wrong type stops no worker: it says why, keeps its
    heartbeat, and resumes once the key is deleted; a submission fails with a clear error."""
    local = hostile(settings)
    async with serving(local, redis) as h:
        keys = h.keys
        for name, key in [
            ("events", keys.events),
            ("dead", keys.dead),
            ("entries", keys.entries),
            ("counts", keys.counts),
        ]:
            for type_ in ("string", "list" if name != "entries" else "set"):
                label = f"{name}-as-{type_}"
                with subtests.test(msg=label):
                    await outage(h, label, key, type_)
        with subtests.test(msg="workers-as-string"):
            await liveness_outage(h, "workers-as-string", keys.workers)
        with subtests.test(msg="own-liveness-as-string"):
            await liveness_outage(h, "own-liveness-as-string", keys.worker(h.worker.name))
        with subtests.test(msg="rate-limit-log-as-string"):
            await plant(redis, keys.rate("acme"), "string")
            with pytest.raises(ResponseError, match=r"KEYTYPE .*:rl:acme holds a string"):
                await h.client().submit(HELLO, client_id="acme")
            assert await redis.xlen(keys.stream) == 0
            poison = job("while-rl-planted", ("audio", "relative.wav"))
            await h.run(case("job-while-rl-planted", "relative_path", poison))
            await redis.delete(keys.rate("acme"))
            await h.completes(await h.client().submit(HELLO, client_id="acme"))
        h.assert_alive()
        await h.assert_nothing_pending()


# --- generated entries ------------------------------------------------------------------------

#: Ids that look like each other's keys, so that generated entries collide.
IDS = ["X", "X:segments", "X:ckpt", "a:audio:b", "Y"]
_values = st.one_of(
    st.text(max_size=20),
    st.binary(max_size=20),
    st.sampled_from(
        [HELLO_S, "/etc/passwd", "hello.wav", "", " ", "a\0b", "true", "5", "en", "fake", *IDS]
    ),
    st.just("x" * (MAX_FIELD_BYTES + 1)),
)
_names = st.one_of(
    st.sampled_from(KNOWN_FIELDS), st.text(min_size=1, max_size=8), st.binary(max_size=4)
)
_valid = st.fixed_dictionaries(
    {"audio": st.just(HELLO_S)},
    optional={
        "job_id": st.sampled_from(IDS),
        "language": st.sampled_from(["en", "EN", "xx"]),
        "beam_size": st.sampled_from(["1", "5", "21"]),
        "note": _values,
    },
)
_crowded = st.integers(MAX_FIELDS - 1, MAX_FIELDS + 2).map(
    lambda n: {"audio": HELLO_S, **{f"x{i}": "v" for i in range(n - 1)}}
)
entries_strategy = st.lists(
    st.one_of(_valid, st.dictionaries(_names, _values, min_size=1, max_size=6), _crowded),
    min_size=1,
    max_size=5,
)


def to_pairs(fields: Mapping[str | bytes, str | bytes]) -> Pairs:
    return raw(*fields.items())


@given(entries_strategy)
@hsettings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_generated_entries(
    redis_url: str, settings: Settings, entries: list[dict[str | bytes, str | bytes]]
) -> None:
    """Generated entries (valid, NUL, non-UTF-8, huge, crowded, colliding ids) thrown at a
    running worker: each ends exactly once, nothing is left pending, no alarm is raised, and a
    good job behind them is served as fast as alone."""

    async def scenario() -> None:
        local = hostile(settings, prefix=f"{{h-{os.urandom(5).hex()}}}", concurrency=2)
        redis: RedisClient = Redis.from_url(redis_url, protocol=2)
        try:
            async with serving(local, redis) as h:
                await throw(h, [to_pairs(e) for e in entries])
        finally:
            await redis.aclose()

    anyio.run(scenario)


async def throw(h: Harness, entries: list[Pairs]) -> None:
    since = len(h.logs)
    mark = await h.last_event()
    start = anyio.current_time()
    ids = [await h.xadd(pairs) for pairs in entries]
    await h.completes(await h.good())
    latency = anyio.current_time() - start

    async def settled() -> bool:
        return all([await h.gone(entry) for entry in ids])

    await until(settled)
    job_ids = set()
    outcomes = 0
    for entry, pairs in zip(ids, entries, strict=True):
        job_id = h.record_id(pairs, entry)
        job_ids.add(job_id)
        letters = await h.letters(entry)
        record = await h.record(job_id)
        completed = record.get("entry") == entry and record.get("state") == "completed"
        skipped = any(
            log["event"] == "job.skipped" and log.get("entry") == entry for log in h.logs[since:]
        )
        assert len(letters) + completed + skipped == 1, (pairs[:5], letters, record)
        for letter in letters:
            assert letter["reason"] in REASONS and letter["error_class"] == "job", letter
        outcomes += len(letters) + completed
    # One terminal event per entry that ended (a replayed job's entry publishes none), and at
    # most one job.* event per job: the others are entries rejected for an id not theirs.
    published = 0
    for job_id in job_ids:
        events = await h.terminal_events(job_id, after=mark)
        assert len([e for e in events if e["type"] in TERMINAL_JOB_EVENTS]) <= 1, events
        published += len(events)
    assert published == outcomes, entries
    assert not h.alarms(since), h.alarms(since)
    h.assert_alive()
    await h.assert_nothing_pending()
    assert latency < h.baseline + SLACK_S, (
        f"the good job behind them took {latency:.2f} s; alone {h.baseline:.2f} s"
    )


# --- the validator alone ----------------------------------------------------------------------

fields_strategy = st.dictionaries(
    keys=st.one_of(st.sampled_from(KNOWN_FIELDS), st.text(min_size=1, max_size=12)),
    values=st.one_of(
        st.text(max_size=40),
        st.binary(max_size=40),
        st.sampled_from(
            [HELLO_S, "/etc/passwd", "..", "", " ", "true", "0", "-1", "5", "en", "x" * 300]
        ),
    ),
    max_size=6,
)


@given(fields_strategy)
@hsettings(max_examples=300, deadline=None)
def test_validator_never_crashes(fields: dict[str, Any]) -> None:
    """Any map of fields parses into a job or is refused with InvalidJob: nothing else."""
    wire = {
        (k.encode() if isinstance(k, str) else k): (v.encode() if isinstance(v, str) else v)
        for k, v in fields.items()
    }
    try:
        parsed = Job.from_fields(wire, entry_id="1-0")
    except InvalidJob as exc:
        assert exc.reason and exc.message
    else:
        assert (parsed.audio is None) != (parsed.audio_key is None)
        assert Job.from_fields(parsed.to_fields(), entry_id="1-0") == parsed


@pytest.mark.parametrize("size", [MAX_FIELD_BYTES, MAX_FIELD_BYTES + 1])
def test_field_size_limit_is_exact(size: int) -> None:
    """The field size limit is inclusive."""
    fields = {"audio": "/a.wav", "note": "x" * size}
    if size > MAX_FIELD_BYTES:
        with pytest.raises(InvalidJob, match="limit is"):
            Job.from_fields(fields, entry_id="1-0")
    else:
        Job.from_fields(fields, entry_id="1-0")
