"""The only module that talks to the jobs stream and the job records; Lua scripts beside it.

Every write that matters goes through one script, so each state change is atomic: submission
(record + entry), the start of an attempt (ownership check + fencing token), the commit (token
check + result + status + XACK + XDEL), and failure.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

from .errors import JobNotFound
from .job import Job, JobState
from .keys import GROUP, Keys
from .settings import Settings
from .transcript import Transcript

__all__ = [
    "Begin",
    "BeginOutcome",
    "Enqueued",
    "Entry",
    "JobStatus",
    "Store",
    "decode_fields",
]

Entry = tuple[str, dict[bytes, bytes]]


def _load_script(redis: Redis, name: str) -> AsyncScript:
    lua = resources.files(__package__).joinpath("lua")
    body = lua.joinpath("lib.lua").read_text() + "\n" + lua.joinpath(f"{name}.lua").read_text()
    return redis.register_script(body)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def decode_fields(raw: Mapping[bytes, bytes]) -> dict[str, str]:
    """Stream fields as text, undecodable bytes replaced (for records and logs, not validation)."""
    return {k.decode(errors="replace"): v.decode(errors="replace")[:4096] for k, v in raw.items()}


@dataclass(frozen=True, slots=True)
class Enqueued:
    """What a submission did: added the job, or found its id taken (by the same job or not)."""

    job_id: str
    created: bool
    state: JobState
    #: Whether the existing job asks for the same thing (False: the id was reused).
    same: bool


class BeginOutcome(StrEnum):
    OK = "ok"
    LOST = "lost"
    DONE = "done"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"


@dataclass(frozen=True, slots=True)
class Begin:
    """What starting an attempt found. `fence` and `attempts` are set when `outcome` is OK."""

    outcome: BeginOutcome
    fence: int = 0
    attempts: int = 0
    deliveries: int = 0
    state: str = ""


@dataclass(frozen=True, slots=True)
class JobStatus:
    """A job's record as stored in `<prefix>:job:<id>`. Times are Unix seconds (server clock)."""

    job_id: str
    state: JobState
    attempts: int
    worker: str
    created_at: float | None
    started_at: float | None
    finished_at: float | None
    reason: str
    error: str
    entry: str
    fields: Mapping[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "state": self.state.value,
            "attempts": self.attempts,
            "worker": self.worker,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "reason": self.reason or None,
            "error": self.error or None,
            "entry": self.entry,
            "fields": dict(self.fields),
        }

    @classmethod
    def from_hash(cls, job_id: str, raw: Mapping[bytes, bytes]) -> JobStatus:
        h = {k.decode(): v.decode(errors="replace") for k, v in raw.items()}

        def when(name: str) -> float | None:
            return float(h[name]) if h.get(name) else None

        try:
            fields = json.loads(h.get("fields") or "{}")
        except ValueError:
            fields = {}
        return cls(
            job_id=job_id,
            state=JobState(h.get("state", "queued")),
            attempts=int(h.get("attempts", 0)),
            worker=h.get("worker", ""),
            created_at=when("created_at"),
            started_at=when("started_at"),
            finished_at=when("finished_at"),
            reason=h.get("reason", ""),
            error=h.get("error", ""),
            entry=h.get("entry", ""),
            fields=fields,
        )


class Store:
    """Jobs, their records and results in one Redis deployment (one prefix)."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        # redis-py's reply types are unions of every protocol's shapes; we read RESP2 bytes.
        self.redis: Any = redis
        self.settings = settings
        self.keys = Keys(settings.prefix)
        self._enqueue = _load_script(redis, "enqueue")
        self._begin = _load_script(redis, "begin")
        self._commit = _load_script(redis, "commit")
        self._fail = _load_script(redis, "fail")

    async def ensure_group(self) -> None:
        """Create the consumer group if missing, from id 0 so earlier entries are read too."""
        try:
            await self.redis.xgroup_create(self.keys.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def enqueue(self, job: Job, audio: bytes = b"") -> Enqueued:
        """Add a job unless its id exists; `audio` is stored under the job's audio key."""
        fields = job.to_fields()
        flat = [part for pair in fields.items() for part in pair]
        reply = await self._enqueue(
            keys=[
                self.keys.job(job.job_id),
                self.keys.stream,
                self.keys.events,
                self.keys.audio(job.job_id),
            ],
            args=[
                job.job_id,
                job.digest(),
                self.settings.events_maxlen,
                json.dumps(fields, ensure_ascii=False),
                audio,
                *flat,
            ],
        )
        created = int(reply[0]) == 1
        return Enqueued(
            job_id=job.job_id,
            created=created,
            state=JobState.QUEUED if created else JobState(_s(reply[1])),
            same=_s(reply[2]) == job.digest(),
        )

    async def read(self, consumer: str, count: int, block_ms: int | None) -> list[Entry]:
        """New entries for this consumer: at most `count`, waiting up to `block_ms` (None: not)."""
        reply = await self.redis.xreadgroup(
            GROUP, consumer, {self.keys.stream: ">"}, count=count, block=block_ms
        )
        if not reply:
            return []
        _, entries = reply[0]
        return [(_s(entry_id), fields or {}) for entry_id, fields in entries]

    async def begin(
        self,
        entry_id: str,
        job_id: str,
        consumer: str,
        *,
        digest: str,
        fields: Mapping[str, str],
        count_attempt: bool = True,
    ) -> Begin:
        reply = await self._begin(
            keys=[self.keys.job(job_id), self.keys.stream, self.keys.events],
            args=[
                entry_id,
                job_id,
                consumer,
                GROUP,
                digest,
                json.dumps(dict(fields), ensure_ascii=False),
                self.settings.events_maxlen,
                1 if count_attempt else 0,
            ],
        )
        outcome = BeginOutcome(_s(reply[0]))
        if outcome is BeginOutcome.OK:
            return Begin(outcome, int(reply[1]), int(reply[2]), int(reply[3]))
        return Begin(outcome, state=_s(reply[1]) if len(reply) > 1 else "")

    async def commit(
        self,
        transcript: Transcript,
        *,
        fence: int,
        entry_id: str,
        worker: str,
        event: Mapping[str, Any],
    ) -> bool:
        """Store the result and acknowledge the entry, if `fence` is still current."""
        job_id = transcript.job_id
        ok = await self._commit(
            keys=[
                self.keys.job(job_id),
                self.keys.result(job_id),
                self.keys.stream,
                self.keys.events,
                self.keys.checkpoint(job_id),
                self.keys.checkpoint_segments(job_id),
                self.keys.audio(job_id),
            ],
            args=[
                fence,
                entry_id,
                GROUP,
                transcript.to_json(),
                self.settings.result_ttl,
                job_id,
                worker,
                self.settings.events_maxlen,
                json.dumps(dict(event)),
            ],
        )
        return bool(ok)

    async def fail(
        self,
        job_id: str,
        *,
        entry_id: str,
        fence: int | None,
        reason: str,
        error: str,
        worker: str,
        fields: Mapping[str, str],
        state: JobState = JobState.FAILED,
        record: bool = True,
    ) -> bool:
        """End a job without a result and acknowledge its entry (fenced when `fence` is given)."""
        ok = await self._fail(
            keys=[
                self.keys.job(job_id),
                self.keys.stream,
                self.keys.events,
                self.keys.checkpoint(job_id),
                self.keys.checkpoint_segments(job_id),
                self.keys.audio(job_id),
            ],
            args=[
                "" if fence is None else fence,
                entry_id,
                GROUP,
                state.value,
                reason,
                error,
                self.settings.result_ttl,
                job_id,
                worker,
                self.settings.events_maxlen,
                json.dumps(dict(fields), ensure_ascii=False),
                1 if record else 0,
            ],
        )
        return bool(ok)

    async def status(self, job_id: str) -> JobStatus:
        raw = await self.redis.hgetall(self.keys.job(job_id))
        if not raw:
            raise JobNotFound(job_id)
        return JobStatus.from_hash(job_id, raw)

    async def statuses(self, job_ids: Sequence[str]) -> dict[str, JobStatus | None]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(self.keys.job(job_id))
            replies = await pipe.execute()
        return {
            job_id: JobStatus.from_hash(job_id, raw) if raw else None
            for job_id, raw in zip(job_ids, replies, strict=True)
        }

    async def result(self, job_id: str) -> Transcript | None:
        raw = await self.redis.get(self.keys.result(job_id))
        return None if raw is None else Transcript.from_json(raw)
