"""The only module that talks to the jobs stream and the job records; Lua scripts beside it.

Every write that matters goes through one script, so each state change is atomic: submission
(record + entry), the start of an attempt (ownership check + fencing token), the commit (token
check + result + status + XACK + XDEL), and failure.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoPermissionError, ResponseError

from .checkpoint import Checkpoint, Progress
from .errors import AudioError, ConfigError, ErrorClass, JobNotFound, RateLimited
from .job import MAX_FIELD_BYTES, MAX_FIELDS, Job, JobState
from .keys import GROUP, Keys
from .settings import Settings
from .transcript import Transcript

__all__ = [
    "ANONYMOUS",
    "Begin",
    "BeginOutcome",
    "Claimed",
    "Commit",
    "Enqueued",
    "Entry",
    "JobStatus",
    "Lease",
    "Store",
    "Taken",
    "decode_fields",
    "load_script",
]

Entry = tuple[str, dict[bytes, bytes]]
#: An entry given to a consumer, with its attempt already started (or None: not yet).
Taken = tuple[str, dict[bytes, bytes], "Begin | None"]

#: The rate-limit bucket of jobs submitted without a `client_id`.
ANONYMOUS = "anonymous"


def load_script(redis: Redis, name: str) -> AsyncScript:
    """A Lua script from runner/lua, with the shared helpers of lib.lua in front."""
    lua = resources.files(__package__).joinpath("lua")
    body = lua.joinpath("lib.lua").read_text() + "\n" + lua.joinpath(f"{name}.lua").read_text()
    return redis.register_script(body)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def decode_fields(raw: Mapping[bytes, bytes]) -> tuple[dict[str, str], bool]:
    """Stream fields as text for records and dead letters (validation is `Job.from_fields`).

    Undecodable bytes are replaced. Values are kept whole up to the wire's own limits (so a
    dead letter can be retried as it came); past them, at most `MAX_FIELDS` fields are kept and
    a larger value is replaced by a note. The flag says whether anything was left out.
    """
    fields: dict[str, str] = {}
    truncated = len(raw) > MAX_FIELDS
    for k, v in itertools.islice(raw.items(), MAX_FIELDS):
        name = k.decode(errors="replace")[:200]
        if len(v) > MAX_FIELD_BYTES:
            fields[name] = f"<{len(v)} bytes, not kept>"
            truncated = True
        else:
            fields[name] = v.decode(errors="replace")
    return fields, truncated


def _hashes(replies: Sequence[Any]) -> list[Any]:
    """HGETALL replies read with `raise_on_error=False`: a key of another type at a record's
    name is no record of ours (empty); any other error (NOPERM, say) is raised."""
    for reply in replies:
        if isinstance(reply, ResponseError) and not str(reply).startswith("WRONGTYPE"):
            raise reply
    return [{} if isinstance(reply, ResponseError) else reply for reply in replies]


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
    DEAD = "dead"
    #: The job could not start and was dead-lettered (`state` holds the reason, `error` why).
    FAILED = "failed"
    #: Starting it raised inside the script (`error` says what): an error of the runner's own.
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Begin:
    """What starting an attempt found. `fence` and `attempts` are set when `outcome` is OK."""

    outcome: BeginOutcome
    fence: int = 0
    attempts: int = 0
    deliveries: int = 0
    state: str = ""
    #: Whether a checkpoint exists to resume from.
    checkpoint: bool = False
    error: str = ""


@dataclass(frozen=True, slots=True)
class Commit:
    """One result to publish: the transcript and the attempt that made it."""

    transcript: Transcript
    fence: int
    entry_id: str
    worker: str
    event: Mapping[str, Any]


def _begin_reply(reply: Any) -> Begin:
    outcome = BeginOutcome(_s(reply[0]))
    if outcome is BeginOutcome.OK:
        return Begin(
            outcome, int(reply[1]), int(reply[2]), int(reply[3]), checkpoint=bool(reply[4])
        )
    if outcome is BeginOutcome.DEAD:
        return Begin(outcome, attempts=int(reply[1]))
    if outcome is BeginOutcome.FAILED:
        return Begin(outcome, state=_s(reply[1]), error=_s(reply[2]))
    if outcome is BeginOutcome.ERROR:
        return Begin(outcome, error=_s(reply[1]))
    return Begin(outcome, state=_s(reply[1]) if len(reply) > 1 else "")


class Lease(IntEnum):
    """What renewing a lease found."""

    LOST = 0
    RENEWED = 1
    #: The token is still ours but the entry left the stream (deleted by hand).
    VANISHED = 2


@dataclass(frozen=True, slots=True)
class Claimed:
    """One reclaim call: entries now ours, entries found deleted, where to continue."""

    entries: list[Entry]
    deleted: list[str]
    cursor: str


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
    #: One record per attempt: attempt, worker, at (server time), delivery, charged.
    history: tuple[Mapping[str, Any], ...] = ()
    #: The latest checkpoint of a running job, if any.
    progress: Progress | None = None

    @property
    def stage(self) -> str:
        """The checkpoint's stage while running; otherwise the state itself."""
        if self.state is JobState.RUNNING and self.progress is not None:
            return self.progress.stage.value
        return self.state.value

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
            "stage": self.stage,
            "checkpoint": None if self.progress is None else self.progress.to_dict(),
            "history": [dict(h) for h in self.history],
        }

    @classmethod
    def from_hash(
        cls,
        job_id: str,
        raw: Mapping[bytes, bytes],
        checkpoint: Mapping[bytes, bytes] | None = None,
    ) -> JobStatus:
        h = {k.decode(): v.decode(errors="replace") for k, v in raw.items()}

        def when(name: str) -> float | None:
            return float(h[name]) if h.get(name) else None

        try:
            fields = json.loads(h.get("fields") or "{}")
            history = json.loads(h.get("history") or "[]")
        except ValueError:
            fields, history = {}, []
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
            # An empty Lua table encodes as {}: no attempts yet.
            history=tuple(history) if isinstance(history, list) else (),
            progress=Progress.from_redis(checkpoint) if checkpoint else None,
        )


class Store:
    """Jobs, their records and results in one Redis deployment (one prefix)."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        # redis-py's reply types are unions of every protocol's shapes; we read RESP2 bytes.
        self.redis: Any = redis
        self.settings = settings
        self.keys = Keys(settings.prefix)
        self._enqueue = load_script(redis, "enqueue")
        self._begin = load_script(redis, "begin")
        self._take = load_script(redis, "take")
        self._commit = load_script(redis, "commit")
        self._fail = load_script(redis, "fail")
        self._renew = load_script(redis, "renew")
        self._checkpoint = load_script(redis, "checkpoint")
        self._release = load_script(redis, "release")
        self._prune = load_script(redis, "prune")
        self._event = load_script(redis, "event")
        self._cancel = load_script(redis, "cancel")
        self._defer = load_script(redis, "defer")

    async def ensure_group(self) -> None:
        """Create the consumer group if missing, from id 0 so earlier entries are read too."""
        try:
            await self.redis.xgroup_create(self.keys.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def load_submission_script(self) -> None:
        """Load the submission script into Redis's cache, so that producers allowed only to run
        it (EVALSHA, not SCRIPT LOAD) can submit; a restarted Redis forgets it."""
        await self.redis.script_load(self._enqueue.script)

    async def enqueue_many(self, jobs: Sequence[tuple[Job, bytes]]) -> list[Enqueued]:
        """Add jobs unless their ids exist, in one script call; each job's bytes, if any, go
        under its audio key.

        Resubmitting an existing id is never counted against the rate limit. When any client
        (`client_id`, else `anonymous`) would pass its limit, `RateLimited` is raised and none
        of the call's jobs is queued.
        """
        if not jobs:
            return []
        limit, window = self.settings.rate
        k = self.keys
        keys = [k.stream, k.events, k.entries, k.counts]
        args: list[Any] = [self.settings.events_maxlen, limit, int(window * 1000)]
        digests = []
        for job, audio in jobs:
            digest = job.digest()
            digests.append(digest)
            fields = job.to_fields()
            keys += [k.job(job.job_id), k.audio(job.job_id), k.rate(job.client_id or ANONYMOUS)]
            args += [
                job.job_id,
                digest,
                json.dumps(fields, ensure_ascii=False),
                audio,
                len(fields),
                *(part for pair in fields.items() for part in pair),
            ]
        try:
            replies = await self._enqueue(keys=keys, args=args)
        except NoPermissionError as exc:
            if "script" not in str(exc).lower():
                raise
            raise ConfigError(
                "this Redis user may not load the submission script; a running worker loads it "
                f"(or grant SCRIPT LOAD): {exc}"
            ) from exc
        if replies and int(replies[0][0]) == -1:
            job = jobs[int(replies[0][2]) - 1][0]
            raise RateLimited(job.client_id or ANONYMOUS, int(replies[0][1]) / 1000)
        out = []
        for (job, _), digest, reply in zip(jobs, digests, replies, strict=True):
            created = int(reply[0]) == 1
            out.append(
                Enqueued(
                    job_id=job.job_id,
                    created=created,
                    state=JobState.QUEUED if created else JobState(_s(reply[1])),
                    same=_s(reply[2]) == digest,
                )
            )
        return out

    async def read(self, consumer: str, count: int, block_ms: int | None) -> list[Entry]:
        """New entries for this consumer: at most `count`, waiting up to `block_ms` (None: not)."""
        reply = await self.redis.xreadgroup(
            GROUP, consumer, {self.keys.stream: ">"}, count=count, block=block_ms
        )
        if not reply:
            return []
        _, entries = reply[0]
        return [(_s(entry_id), fields or {}) for entry_id, fields in entries]

    async def take(self, consumer: str, count: int) -> list[Taken]:
        """Read up to `count` new entries (without waiting) and start their attempts, in one
        call. Each comes with its `Begin`, or None when the worker must parse it and call
        `begin_many` itself (it was not submitted through `Client`, or is not a job at all).
        """
        keys = self._batch_keys()
        args = [*self._batch_args(consumer), count]
        replies = await self._take(keys=keys, args=args)
        out = []
        for entry_id, flat, reply in replies:
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            begun = None if reply[0] == b"new" else _begin_reply(reply)
            out.append((_s(entry_id), fields, begun))
        return out

    def _batch_keys(self) -> list[str]:
        k = self.keys
        return [k.stream, k.events, k.dead, k.entries, k.counts]

    def _batch_args(self, consumer: str) -> list[Any]:
        s = self.settings
        return [consumer, GROUP, s.events_maxlen, s.max_deliveries, s.result_ttl, s.prefix]

    async def begin(
        self,
        entry_id: str,
        job_id: str,
        consumer: str,
        *,
        digest: str,
        fields: Mapping[str, str],
    ) -> Begin:
        """Start an attempt: ownership check, attempt count, new fencing token (one script)."""
        return (await self.begin_many(consumer, [(entry_id, job_id, digest, fields)]))[0]

    async def begin_many(
        self, consumer: str, items: Sequence[tuple[str, str, str, Mapping[str, str]]]
    ) -> list[Begin]:
        """`begin` for (entry_id, job_id, digest, fields) items, in one script call.

        Each job's start is decided on its own; one call for a read's entries saves a round
        trip and the packing of a command per job.
        """
        if not items:
            return []
        keys = self._batch_keys()
        args = self._batch_args(consumer)
        for entry_id, job_id, digest, fields in items:
            args += [entry_id, job_id, digest, json.dumps(dict(fields), ensure_ascii=False)]
        replies = await self._begin(keys=keys, args=args)
        return [_begin_reply(reply) for reply in replies]

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
        return (await self.commit_many([Commit(transcript, fence, entry_id, worker, event)]))[0]

    async def commit_many(self, commits: Sequence[Commit]) -> list[bool]:
        """`commit` for several jobs in one script call; each job is fenced on its own."""
        if not commits:
            return []
        k, s = self.keys, self.settings
        keys = [k.stream, k.events, k.entries, k.counts]
        args: list[Any] = [GROUP, s.result_ttl, s.events_maxlen, s.prefix]
        for c in commits:
            args += [
                c.fence,
                c.entry_id,
                c.transcript.job_id,
                c.worker,
                c.transcript.to_json(),
                json.dumps(dict(c.event), separators=(",", ":")),
            ]
        return [bool(r) for r in await self._commit(keys=keys, args=args)]

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
        dead_letter: bool = True,
        error_class: ErrorClass = ErrorClass.JOB,
        truncated: bool = False,
    ) -> bool:
        """End a job without a result and acknowledge its entry (fenced when `fence` is given).

        `record=False` leaves the job's record alone (the id belongs to another job);
        `dead_letter` also files the entry in the dead-letter stream; `truncated` marks a
        letter whose fields were not all kept (it cannot be retried as it is).
        """
        args = self._batch_args(worker)
        args += [
            "" if fence is None else fence,
            entry_id,
            job_id,
            state.value,
            reason,
            error,
            error_class.value,
            json.dumps(dict(fields), ensure_ascii=False),
            1 if record else 0,
            1 if dead_letter else 0,
            "",  # deliveries: known to the scripts that start attempts, not here
            1 if truncated else 0,
        ]
        return bool(await self._fail(keys=self._batch_keys(), args=args))

    async def renew(self, consumer: str, leases: Sequence[tuple[str, str, int]]) -> list[Lease]:
        """Renew (job_id, entry_id, fence) leases, saying for each whether it is still ours."""
        if not leases:
            return []
        args: list[Any] = [GROUP, consumer]
        for _, entry_id, fence in leases:
            args += [entry_id, fence]
        reply = await self._renew(
            keys=[self.keys.stream, *(self.keys.job(job_id) for job_id, _, _ in leases)],
            args=args,
        )
        return [Lease(int(x)) for x in reply]

    async def autoclaim(self, consumer: str, cursor: str, count: int) -> Claimed:
        """XAUTOCLAIM entries idle past the lease. Deleted entries are reported, not returned.

        Redis 7 lists deleted entries in a third reply element and drops them from the PEL;
        Redis 6.2 returns them as nil entries and keeps them pending: those are found by their
        absence and acknowledged here.
        """
        lease_ms = int(self.settings.lease_seconds * 1000)
        reply = await self.redis.xautoclaim(
            self.keys.stream, GROUP, consumer, lease_ms, start_id=cursor, count=count
        )
        entries = [(_s(i), f or {}) for i, f in reply[1] if i is not None and f is not None]
        deleted = [_s(i) for i in reply[2]] if len(reply) > 2 else []
        if len(reply[1]) > len(entries) and len(reply) <= 2:
            deleted += await self._orphans(consumer, {e for e, _ in entries})
        return Claimed(entries=entries, deleted=deleted, cursor=_s(reply[0]))

    async def _orphans(self, consumer: str, keep: set[str]) -> list[str]:
        """Redis 6.2: pending entries of ours whose stream entries are gone."""
        pending = await self.redis.xpending_range(
            self.keys.stream, GROUP, min="-", max="+", count=1000, consumername=consumer
        )
        ids = [_s(p["message_id"]) for p in pending]
        candidates = [i for i in ids if i not in keep]
        gone = []
        for entry_id in candidates:
            if not await self.redis.xrange(self.keys.stream, min=entry_id, max=entry_id):
                gone.append(entry_id)
        if gone:
            await self.redis.xack(self.keys.stream, GROUP, *gone)
        return gone

    async def jobs_of_entries(self, entry_ids: Sequence[str]) -> dict[str, str]:
        """The job ids of stream entries, where known."""
        if not entry_ids:
            return {}
        found = await self.redis.hmget(self.keys.entries, list(entry_ids))
        return {e: _s(j) for e, j in zip(entry_ids, found, strict=True) if j is not None}

    async def save_checkpoint(
        self,
        checkpoint: Checkpoint,
        *,
        fence: int,
        base: int,
        worker: str,
        event: Mapping[str, Any],
    ) -> int:
        """Write the header and the segments after the first `base` (fenced).

        Returns 1 when saved, 0 when fenced off, -1 when fewer than `base` segments are stored.
        """
        job_id = checkpoint.job_id
        header = checkpoint.header()
        pairs = [part for pair in header.items() for part in pair]
        new = [json.dumps(s.to_dict(), ensure_ascii=False) for s in checkpoint.segments[base:]]
        reply = await self._checkpoint(
            keys=[
                self.keys.job(job_id),
                self.keys.checkpoint(job_id),
                self.keys.checkpoint_segments(job_id),
                self.keys.events,
            ],
            args=[
                fence,
                base,
                self.settings.checkpoint_ttl,
                worker,
                job_id,
                self.settings.events_maxlen,
                json.dumps(dict(event)),
                len(header),
                *pairs,
                *new,
            ],
        )
        return int(reply)

    async def load_checkpoint(self, job_id: str) -> Checkpoint | None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(self.keys.checkpoint(job_id))
            pipe.lrange(self.keys.checkpoint_segments(job_id), 0, -1)
            header, segments = await pipe.execute()
        return Checkpoint.from_redis(job_id, header, segments)

    async def release(
        self,
        job_id: str,
        *,
        entry_id: str,
        fence: int,
        consumer: str,
        charge: bool,
        reason: str,
        error: str = "",
        delay: float = 0.0,
    ) -> bool:
        """Hand a job back for any worker to take, at once or after `delay` seconds;
        `charge=False` refunds the attempt."""
        idle_ms = self._idle_ms(delay)
        reply = await self._release(
            keys=[self.keys.job(job_id), self.keys.stream, self.keys.events],
            args=[
                fence,
                entry_id,
                GROUP,
                consumer,
                idle_ms,
                1 if charge else 0,
                reason,
                self.settings.events_maxlen,
                job_id,
                error,
            ],
        )
        return bool(reply)

    async def defer(self, consumer: str, entry_id: str, delay: float) -> bool:
        """Leave an entry this consumer could not start for a reclaim to take after `delay`
        seconds (counting a delivery then); False when it is not ours."""
        reply = await self._defer(
            keys=[self.keys.stream], args=[GROUP, consumer, entry_id, self._idle_ms(delay)]
        )
        return bool(reply)

    def _idle_ms(self, delay: float) -> int:
        """The idle time that makes a reclaim take an entry `delay` seconds from now."""
        return max(0, int((self.settings.lease_seconds - delay) * 1000) + 1)

    async def deliveries(self, entry_id: str) -> int:
        """How many times a pending entry was delivered (0: not pending)."""
        pending = await self.redis.xpending_range(
            self.keys.stream, GROUP, min=entry_id, max=entry_id, count=1
        )
        return int(pending[0]["times_delivered"]) if pending else 0

    async def read_upload(self, job_id: str, cap: int) -> bytes:
        """A job's uploaded audio, read in one bounded command: at most `cap` + 1 bytes, so a
        larger upload is seen as too large without being read whole. Raises `AudioError`."""
        key = self.keys.audio(job_id)
        try:
            data = bytes(await self.redis.getrange(key, 0, cap))
        except ResponseError as exc:
            if "WRONGTYPE" not in str(exc):
                raise
            raise AudioError(
                "invalid_key", f"audio_key={key!r} does not hold audio bytes"
            ) from None
        if not data:
            raise AudioError("missing_key", f"audio_key={key!r} holds no audio (missing or empty)")
        if len(data) > cap:
            raise AudioError("too_large", f"audio_key={key!r} holds more than {cap} bytes")
        return data

    async def cancel(self, job_id: str) -> tuple[str, str]:
        """Cancel a job. Returns (outcome, state): `cancelled` with the state it had, or
        `ended` with its final state. Raises `JobNotFound`."""
        reply = await self._cancel(
            keys=[
                self.keys.job(job_id),
                self.keys.stream,
                self.keys.events,
                self.keys.entries,
                self.keys.checkpoint(job_id),
                self.keys.checkpoint_segments(job_id),
                self.keys.audio(job_id),
                self.keys.counts,
            ],
            args=[job_id, GROUP, self.settings.events_maxlen, self.settings.result_ttl],
        )
        outcome = _s(reply[0])
        if outcome == "missing":
            raise JobNotFound(job_id)
        return outcome, _s(reply[1])

    async def publish(
        self, event: str, *, job_id: str = "", worker: str = "", data: Mapping[str, Any]
    ) -> None:
        """Publish an event that goes with no job state change."""
        await self._event(
            keys=[self.keys.events],
            args=[self.settings.events_maxlen, event, job_id, worker, json.dumps(dict(data))],
        )

    async def prune_consumers(self, names: Sequence[str]) -> int:
        """Delete these consumers from the group if they hold no pending entries."""
        if not names:
            return 0
        return int(await self._prune(keys=[self.keys.stream], args=[GROUP, *names]))

    async def idle_consumers(self, idle_seconds: float) -> list[str]:
        """Consumers without pending entries that have not read for `idle_seconds`."""
        try:
            consumers = await self.redis.xinfo_consumers(self.keys.stream, GROUP)
        except ResponseError:  # no stream or group yet
            return []
        limit = idle_seconds * 1000
        return [
            _s(c["name"]) for c in consumers if int(c["pending"]) == 0 and int(c["idle"]) > limit
        ]

    async def status(self, job_id: str) -> JobStatus:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.job(job_id))
            pipe.hgetall(self.keys.checkpoint(job_id))
            raw, checkpoint = _hashes(await pipe.execute(raise_on_error=False))
        if not raw:
            raise JobNotFound(job_id)
        return JobStatus.from_hash(job_id, raw, checkpoint)

    async def statuses(self, job_ids: Sequence[str]) -> dict[str, JobStatus | None]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(self.keys.job(job_id))
            replies = _hashes(await pipe.execute(raise_on_error=False))
        return {
            job_id: JobStatus.from_hash(job_id, raw) if raw else None
            for job_id, raw in zip(job_ids, replies, strict=True)
        }

    async def result(self, job_id: str) -> Transcript | None:
        raw = await self.redis.get(self.keys.result(job_id))
        return None if raw is None else Transcript.from_json(raw)
