"""The job lifecycle as a model: a hypothesis state machine plays workers, producers, operators
and a crashing Redis against the real Lua scripts (through `Store` and `DeadLetters`, on a
private redis-server), and checks the runner's promises after every step.

Each step reads what Redis holds before and after, predicts from the state before what the
scripts must do (start, refuse, end, hand back...) and checks that they did exactly that; the
invariants then check what must hold whatever happened: terminal states stay terminal, one
completion per generation, fencing tokens only rise (through crashes, dead retries and records
recreated), completed results stand, the stream and the records agree, and at the end every
entry plays through to a terminal state.

A worker frozen past its lease is two things here: its entry ages past the lease (`XCLAIM ...
IDLE`, in `freeze_worker` and `reclaim`), and it never forgets an attempt, so any later write of
its (`wake`, and every attempt rule now and then) may carry a stale token. Leases are long (30 s)
so that nothing expires by itself: an entry is past its lease only when a rule says so, or when
`release` hands it back. That keeps every example deterministic, so hypothesis can shrink a
failure to its shortest sequence.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from redis.asyncio import Redis

from runner.dead import DeadLetters
from runner.errors import InvalidJob, JobNotFound
from runner.job import Job, JobState
from runner.keys import GROUP, Keys
from runner.producer import Client
from runner.settings import Settings
from runner.store import Begin, BeginOutcome, Commit, Lease, Store, decode_fields
from runner.transcript import Transcript

from .conftest import RedisClient
from .redis_server import RedisServer, find_server_binary
from .test_recovery import checkpoint_of, seg

T = TypeVar("T")

WORKERS = ("w1", "w2", "w3")
#: The worker that plays every remaining entry through at the end.
DRAINER = "w1"
MAX_DELIVERIES = 2
LEASE_S = 30.0
LEASE_MS = int(LEASE_S * 1000)
AUDIOS = ("/audio/a.wav", "/audio/b.wav")
#: Whether an attempt rule picks an attempt holding the current token (when there is one):
#: mostly for the writes that keep a job running, less for those that end it.
OFTEN = st.sampled_from((True, True, True, False))
SOMETIMES = st.sampled_from((True, False, False))
TERMINAL = frozenset({"completed", "failed", "dead", "cancelled"})
LIVE = frozenset({"queued", "running"})
#: Events that start a job id's next generation (a retried dead letter, a record created anew).
NEW_GENERATION = frozenset({"job.retried", "job.queued"})

pytestmark = pytest.mark.skipif(find_server_binary() is None, reason="needs a redis-server")


def model_settings(url: str, prefix: str, **changes: Any) -> Settings:
    """Settings for driving the scripts by hand: long leases, few attempts, no rate limit."""
    base = Settings(
        redis_url=url,
        prefix=prefix,
        lease_seconds=LEASE_S,
        heartbeat_seconds=1.0,
        max_deliveries=MAX_DELIVERIES,
        rate_limit="0",
    )
    return base.with_(**changes)


def restart_after_crash(server: RedisServer) -> None:
    """SIGKILL the server (nothing is saved on the way down) and start it again on the same
    port: it loads its last SAVE, so every write made since is lost."""
    process = server.process
    assert process is not None
    process.kill()
    process.wait()
    server.process = None
    server.start()


async def freeze(redis: RedisClient, keys: Keys, entry_id: str) -> None:
    """Back-date a pending entry past the lease, keeping its owner and delivery count: what a
    worker frozen (SIGSTOP, GC, VM migration) past its lease leaves behind."""
    pending = await redis.xpending_range(keys.stream, GROUP, min=entry_id, max=entry_id, count=1)
    assert pending, f"entry {entry_id} is not pending"
    owner = pending[0]["consumer"]
    await redis.xclaim(keys.stream, GROUP, owner, 0, [entry_id], idle=LEASE_MS + 1, justid=True)


def transcript_of(job_id: str, fence: int) -> Transcript:
    """A result that names the attempt that made it (so a replaced result shows)."""
    return Transcript(
        job_id=job_id,
        language="en",
        language_probability=1.0,
        duration=1.0,
        segments=(),
        model=f"fake-{fence}",
    )


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, sequence = entry_id.partition("-")
    return int(ms), int(sequence or 0)


def _text(raw: Mapping[bytes, bytes]) -> dict[str, str]:
    return {_s(k): _s(v) for k, v in raw.items()}


@dataclass(frozen=True)
class Expected:
    """What a begin must answer for one entry."""

    outcome: str
    attempts: int = 0
    #: The same call again (same consumer, same delivery): the attempt it started, unchanged.
    again: bool = False


@dataclass(frozen=True)
class Attempt:
    """An attempt a worker started and believes it still owns: it never forgets one."""

    job_id: str
    entry_id: str
    fence: int
    fields: Mapping[str, str]


@dataclass(frozen=True)
class JobView:
    """One job's keys as Redis holds them."""

    record: dict[str, str]
    result: str | None
    checkpoint: dict[str, str]
    segments: list[str]

    @property
    def state(self) -> str:
        return self.record.get("state", "")

    @property
    def fence(self) -> int:
        return int(self.record.get("fence") or 0)


@dataclass(frozen=True)
class World:
    """Everything of one deployment the model looks at, read in one MULTI."""

    #: entry id -> fields, in stream order
    stream: dict[str, dict[str, str]]
    #: pending entry id -> (owner, times delivered), in id order
    pending: dict[str, tuple[str, int]]
    dead: list[tuple[str, dict[str, str]]]
    #: (event id, type, job id)
    events: list[tuple[str, str, str]]
    index: dict[str, str]
    counts: dict[str, str]
    last_delivered: str
    jobs: dict[str, JobView]
    #: pending entry id -> idle ms (left out of comparisons: time moves on by itself)
    idle: dict[str, int] = field(compare=False)

    def new_events(self, before: World) -> list[str]:
        return [etype for _, etype, _ in self.events[len(before.events) :]]

    def undelivered(self) -> list[str]:
        """Entries no consumer has read yet, in order."""
        return [e for e in self.stream if _id(e) > _id(self.last_delivered)]

    def expired(self) -> list[str]:
        """Pending entries idle past the lease, in id order."""
        return [e for e in self.pending if self.idle[e] >= LEASE_MS]

    def new_letters(self, before: World) -> list[dict[str, str]]:
        old = {letter_id for letter_id, _ in before.dead}
        return [fields for letter_id, fields in self.dead if letter_id not in old]


async def read_world(redis: RedisClient, keys: Keys, job_ids: Sequence[str]) -> World:
    """Read the deployment's shared keys and the keys of `job_ids` at one instant."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.xrange(keys.stream)
        pipe.xpending_range(keys.stream, GROUP, min="-", max="+", count=100_000)
        pipe.xrange(keys.dead)
        pipe.xrange(keys.events)
        pipe.hgetall(keys.entries)
        pipe.hgetall(keys.counts)
        pipe.xinfo_groups(keys.stream)
        for job_id in job_ids:
            pipe.hgetall(keys.job(job_id))
            pipe.get(keys.result(job_id))
            pipe.hgetall(keys.checkpoint(job_id))
            pipe.lrange(keys.checkpoint_segments(job_id), 0, -1)
        replies = await pipe.execute()
    stream, pending, dead, events, index, counts, groups = replies[:7]
    jobs = {}
    for n, job_id in enumerate(job_ids):
        record, result, checkpoint, segments = replies[7 + 4 * n : 11 + 4 * n]
        jobs[job_id] = JobView(
            record=_text(record),
            result=None if result is None else _s(result),
            checkpoint=_text(checkpoint),
            segments=[_s(s) for s in segments],
        )
    [group] = [g for g in groups if _s(g["name"]) == GROUP]
    return World(
        stream={_s(i): _text(f) for i, f in stream},
        pending={
            _s(p["message_id"]): (_s(p["consumer"]), int(p["times_delivered"])) for p in pending
        },
        dead=[(_s(i), _text(f)) for i, f in dead],
        events=[(_s(i), _s(f[b"type"]), _s(f[b"job_id"])) for i, f in events],
        index=_text(index),
        counts=_text(counts),
        last_delivered=_s(group["last-delivered-id"]),
        jobs=jobs,
        idle={_s(p["message_id"]): int(p["time_since_delivered"]) for p in pending},
    )


class LifecycleMachine(RuleBasedStateMachine):
    """Workers, producers, an operator and a crashing Redis, against the real scripts."""

    #: The private redis-server, set by the test that runs the machine.
    server: ClassVar[RedisServer | None] = None

    def __init__(self) -> None:
        super().__init__()
        server = type(self).server
        assert server is not None, "run through test_lifecycle_model"
        self.redis_server = server
        self.loop = asyncio.new_event_loop()
        self.broken = False
        self.settings = model_settings(server.url, f"{{m-{uuid.uuid4().hex[:12]}}}")
        self.keys = Keys(self.settings.prefix)
        self._open()
        self.counter = 0
        #: Every job id ever used, and those submitted whose submission was not lost (in a
        #: crash) and whose record did not expire: each must end terminal.
        self.jobs: set[str] = set()
        self.live: set[str] = set()
        self.held: dict[str, list[Attempt]] = {w: [] for w in WORKERS}
        #: Entries read or reclaimed, not yet begun.
        self.unstarted: dict[str, list[tuple[str, dict[str, str]]]] = {w: [] for w in WORKERS}
        #: Per job: the highest token ever seen (records, begins), over the whole run.
        self.max_token: dict[str, int] = {}
        self.issued: dict[str, set[int]] = {}
        #: Per job, the last event id when its record expired: a new generation starts after.
        self.expired_after: dict[str, list[tuple[int, int]]] = {}
        #: What the invariants saw after the last step, and what they see after this one.
        self.prev: dict[str, JobView] = {}
        self.seen: World | None = None
        #: Jobs this step may take out of a terminal state (retry, expiry) or set back.
        self.excused: set[str] = set()
        self.crashed = False
        self.saved = False
        self.crashes = 0
        self.drained = False
        self.snapshots = 0

    # -- plumbing ---------------------------------------------------------------------------

    def _open(self) -> None:
        url = self.redis_server.url
        self.redis: RedisClient = Redis.from_url(url, decode_responses=False, protocol=2)
        self.store = Store(self.redis, self.settings)
        self.client = Client(self.redis, self.settings)
        self.letters = DeadLetters(self.store)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            return self.loop.run_until_complete(coro)
        except BaseException:
            self.broken = True
            raise

    def _step(self) -> None:
        """Start a rule: what the invariants saw after the last one becomes the baseline."""
        if self.seen is not None:
            for job_id, view in self.seen.jobs.items():
                self.prev[job_id] = view
                self.max_token[job_id] = max(self.max_token.get(job_id, 0), view.fence)
        self.seen = None
        self.excused = set()
        self.crashed = False

    async def _world(self) -> World:
        return await read_world(self.redis, self.keys, sorted(self.jobs))

    def _observed(self) -> World:
        if self.seen is None:
            self.seen = self.run(self._world())
        return self.seen

    def _issue(self, job_id: str, fence: int) -> None:
        """A begin handed out `fence`: above every token of the job ever seen, never twice."""
        top = self.max_token.get(job_id, 0)
        assert fence > top, f"attempt token {fence} of {job_id} is not above {top}, seen before"
        assert fence not in self.issued.setdefault(job_id, set())
        self.issued[job_id].add(fence)
        self.max_token[job_id] = fence

    def _took_token(self, job_id: str, fence: int, what: str) -> None:
        """A transition that takes a new token (end, release, retry) took one above all."""
        top = self.max_token.get(job_id, 0)
        assert fence > top, f"{what} of {job_id} left token {fence}, not above {top}"
        self.max_token[job_id] = fence

    def _pick(self, pick: int, current: bool, pre: World) -> tuple[str, Attempt] | None:
        """An attempt some worker holds: preferably one holding (or not) the current token."""
        held = [(w, a) for w in WORKERS for a in self.held[w]]
        if not held:
            return None

        def holds(a: Attempt) -> bool:
            view = pre.jobs[a.job_id]
            return view.state == "running" and view.fence == a.fence

        pool = [(w, a) for w, a in held if holds(a) == current] or held
        if current and pick % 3 == 1:
            # The current token, its entry reclaimed by a peer that has not begun it yet.
            pool = [(w, a) for w, a in pool if pre.pending.get(a.entry_id, ("", 0))[0] != w] or pool
        if not current and pick % 3:
            # The stale attempts that matter most: of a job running now on a newer token, and
            # above all those whose worker still owns the entry (it began it again).
            running = [(w, a) for w, a in pool if pre.jobs[a.job_id].state == "running"]
            owned = [(w, a) for w, a in running if pre.pending.get(a.entry_id, ("", 0))[0] == w]
            pool = (owned if pick % 3 == 1 else []) or running or pool
        return pool[pick % len(pool)]

    def _add_unstarted(self, worker: str, entries: Sequence[tuple[str, dict[str, str]]]) -> None:
        for entry in entries:
            if entry not in self.unstarted[worker]:
                self.unstarted[worker].append(entry)

    def _expect_begin(
        self,
        sim: dict[str, dict[str, str]],
        job_id: str,
        entry: str,
        digest: str,
        worker: str,
        deliveries: int,
    ) -> Expected:
        """What begin_attempt must answer for a consumer that holds `entry` (delivered
        `deliveries` times), from the record as the batch left it so far (updated here)."""
        rec = sim.get(job_id) or {}
        if rec.get("state"):
            if rec.get("entry") != entry:
                return Expected("conflict" if rec.get("digest") != digest else "duplicate")
            if rec["state"] in TERMINAL:
                return Expected("done")
        else:
            rec = {"entry": entry, "digest": digest, "attempts": "0"}
        attempts = int(rec.get("attempts") or 0)
        history = json.loads(rec.get("history") or "[]") or []
        last = history[-1] if history else {}
        if (
            rec.get("state") == "running"
            and rec.get("worker") == worker
            and last.get("worker") == worker
            and last.get("delivery") == deliveries
        ):
            # This delivery was begun already by this consumer: a call retried after its reply
            # was lost gets the attempt it started, not another one to charge.
            return Expected("ok", attempts, again=True)
        if attempts >= MAX_DELIVERIES:
            sim[job_id] = {**rec, "state": "dead", "worker": ""}
            return Expected("dead", attempts)
        history.append({"worker": worker, "delivery": deliveries})
        sim[job_id] = {
            **rec,
            "state": "running",
            "attempts": str(attempts + 1),
            "worker": worker,
            "history": json.dumps(history),
        }
        return Expected("ok", attempts + 1)

    # -- the operations, each checked against what the state before says ---------------------

    async def _submit(self, job_id: str, kind: str, audio: str) -> None:
        self.jobs.add(job_id)
        pre = await self._world()
        job = Job.from_fields({"job_id": job_id, "audio": audio}, job_id)
        record = pre.jobs[job_id].record
        if kind == "plain":
            entry = _s(await self.redis.xadd(self.keys.stream, {"audio": audio, "job_id": job_id}))
            post = await self._world()
            assert list(post.stream)[-1] == entry and post.jobs == pre.jobs
            self.live.add(job_id)
            return
        if record and record.get("digest") != job.digest():
            with pytest.raises(InvalidJob) as refused:
                await self.client.submit(audio, job_id=job_id)
            assert refused.value.reason == "job_id_conflict"
            assert await self._world() == pre, "a refused submission changed something"
            return
        assert await self.client.submit(audio, job_id=job_id) == job_id
        post = await self._world()
        if record:
            assert post == pre, "submitting an existing job again changed something"
            return
        rec = post.jobs[job_id].record
        entry = rec["entry"]
        assert (rec["state"], rec["fence"], rec["attempts"]) == ("queued", "0", "0")
        assert list(post.stream)[-1] == entry and post.index[entry] == job_id
        assert post.new_events(pre) == ["job.queued"]
        # A record recreated after its expiry starts over at fence 0; begin's tokens still rise.
        self.excused.add(job_id)
        self.live.add(job_id)

    def _check_begun(
        self,
        worker: str,
        pre: World,
        post: World,
        items: Sequence[tuple[str, str, Begin, Expected]],
    ) -> list[Attempt]:
        """Check the attempts a take or begin started (or refused) and remember them."""
        started: list[Attempt] = []
        last_ok: dict[str, int] = {}
        written = set()
        for entry, job_id, begun, expected in items:
            outcome = begun.outcome
            if outcome is BeginOutcome.OK:
                assert begun.attempts == expected.attempts
                assert begun.checkpoint == bool(pre.jobs[job_id].checkpoint)
                attempt = Attempt(job_id, entry, begun.fence, post.stream[entry])
                started.append(attempt)
                if expected.again:
                    # The attempt this consumer started before, its token unchanged.
                    assert begun.fence == pre.jobs[job_id].fence
                    assert begun.fence in self.issued.get(job_id, set())
                    assert attempt in self.held[worker]
                    continue
                self._issue(job_id, begun.fence)
                self.held[worker].append(attempt)
                last_ok[job_id] = begun.fence
                written.add(job_id)
            elif outcome is BeginOutcome.DEAD:
                assert begun.attempts == expected.attempts
                view = post.jobs[job_id]
                assert view.state == "dead" and view.record["worker"] == ""
                self._took_token(job_id, view.fence, "dead-lettering")
                assert {"job_id": job_id, "entry": entry} in [
                    {"job_id": f["job_id"], "entry": f["entry"]} for f in post.new_letters(pre)
                ]
                written.add(job_id)
            if outcome in (BeginOutcome.DEAD, BeginOutcome.DONE, BeginOutcome.DUPLICATE):
                assert entry not in post.stream and entry not in post.pending
                assert entry not in post.index
        for job_id, fence in last_ok.items():
            rec = post.jobs[job_id].record
            assert (rec["state"], rec["fence"], rec["worker"]) == ("running", str(fence), worker)
        for job_id, view in pre.jobs.items():
            if job_id not in written:
                assert post.jobs[job_id] == view, f"{job_id} changed though no attempt began"
        events = post.new_events(pre)
        assert events.count("job.started") == len(last_ok)
        dead = [b for _, _, b, _ in items if b.outcome is BeginOutcome.DEAD]
        assert events.count("job.dead") == len(dead)
        return started

    async def _take(self, worker: str, count: int) -> list[Attempt]:
        pre = await self._world()
        fresh = pre.undelivered()[:count]
        sim = {job_id: dict(view.record) for job_id, view in pre.jobs.items()}
        expected = []
        for entry in fresh:
            job_id = pre.stream[entry].get("job_id", "")
            if sim.get(job_id, {}).get("entry") == entry:
                expected.append(self._expect_begin(sim, job_id, entry, "", worker, 1))
            else:
                expected.append(Expected("new"))
        taken = await self.store.take(worker, count)
        assert [entry for entry, _, _ in taken] == fresh
        outcomes = ["new" if b is None else b.outcome.value for _, _, b in taken]
        assert outcomes == [e.outcome for e in expected]
        post = await self._world()
        items = []
        for (entry, raw, begun), expect in zip(taken, expected, strict=True):
            assert entry not in post.stream or post.pending.get(entry) == (worker, 1)
            if begun is None:
                self._add_unstarted(worker, [(entry, decode_fields(raw)[0])])
            else:
                assert begun.deliveries == 1
                items.append((entry, pre.stream[entry]["job_id"], begun, expect))
        return self._check_begun(worker, pre, post, items)

    async def _begin(
        self, worker: str, entries: Sequence[tuple[str, dict[str, str]]]
    ) -> list[Attempt]:
        if not entries:
            return []
        pre = await self._world()
        sim = {job_id: dict(view.record) for job_id, view in pre.jobs.items()}
        owners = {entry: owner for entry, (owner, _) in pre.pending.items()}
        batch = []
        expected: list[Expected] = []
        for entry, fields in entries:
            job = Job.from_fields(fields, entry)
            batch.append((entry, job.job_id, job.digest(), fields))
            if owners.get(entry) != worker:
                expected.append(Expected("lost"))
                continue
            deliveries = pre.pending[entry][1]
            expect = self._expect_begin(sim, job.job_id, entry, job.digest(), worker, deliveries)
            if expect.outcome in ("dead", "done", "duplicate"):
                owners.pop(entry)
            expected.append(expect)
        begins = await self.store.begin_many(worker, batch)
        assert [b.outcome.value for b in begins] == [e.outcome for e in expected], batch
        conflicts = []
        for (entry, job_id, _, fields), begun in zip(batch, begins, strict=True):
            if begun.outcome is BeginOutcome.CONFLICT:
                # As the worker does: the id is another submission's; reject this entry. The
                # call is sent twice, as after a lost reply: the second must change nothing.
                conflicts.append((entry, job_id))
                for _ in range(2):
                    assert await self.store.fail(
                        job_id,
                        entry_id=entry,
                        fence=None,
                        reason="job_id_conflict",
                        error=f"job_id={job_id!r} is already used by a different job",
                        worker=worker,
                        fields=fields,
                        record=False,
                    )
        post = await self._world()
        letters = [(f["job_id"], f["entry"], f["reason"]) for f in post.new_letters(pre)]
        for entry, job_id in conflicts:
            assert letters.count((job_id, entry, "job_id_conflict")) == 1
            assert entry not in post.stream and entry not in post.pending
        assert post.new_events(pre).count("entry.rejected") == len(conflicts)
        items = [
            (entry, job_id, begun, expect)
            for (entry, job_id, _, _), begun, expect in zip(batch, begins, expected, strict=True)
        ]
        return self._check_begun(worker, pre, post, items)

    async def _reclaim(self, worker: str, count: int, begin_now: bool) -> list[Attempt]:
        pre = await self._world()
        expired = pre.expired()[:count]
        got: list[tuple[str, dict[bytes, bytes]]] = []
        cursor = "0-0"
        while len(got) < count:
            claimed = await self.store.autoclaim(worker, cursor, count - len(got))
            assert claimed.deleted == [], "a pending entry was deleted without being acked"
            got += claimed.entries
            cursor = claimed.cursor
            if cursor == "0-0":
                break
        assert [e for e, _ in got] == expired
        post = await self._world()
        for entry in expired:
            assert post.pending[entry] == (worker, pre.pending[entry][1] + 1)
        assert (post.jobs, post.stream, post.events) == (pre.jobs, pre.stream, pre.events)
        entries = [(e, decode_fields(raw)[0]) for e, raw in got]
        if begin_now:
            return await self._begin(worker, entries)
        self._add_unstarted(worker, entries)
        return []

    async def _renew(self, worker: str, attempts: Sequence[Attempt]) -> None:
        """A heartbeat: one call renews every lease the worker believes it holds."""
        pre = await self._world()
        expected = []
        for attempt in attempts:
            view = pre.jobs[attempt.job_id]
            current = view.state == "running" and view.fence == attempt.fence
            owner = pre.pending.get(attempt.entry_id, ("", 0))[0]
            if current and owner == worker:
                expected.append(Lease.RENEWED)
            elif current and not owner:
                expected.append(Lease.VANISHED)
            else:
                expected.append(Lease.LOST)
        leases = [(a.job_id, a.entry_id, a.fence) for a in attempts]
        assert await self.store.renew(worker, leases) == expected
        post = await self._world()
        assert post == pre, "renewing leases changed more than their idle time"
        for attempt, lease in zip(attempts, expected, strict=True):
            if lease is Lease.RENEWED:
                assert post.idle[attempt.entry_id] < LEASE_MS

    async def _checkpoint(self, worker: str, attempt: Attempt, incremental: bool) -> None:
        pre = await self._world()
        view = pre.jobs[attempt.job_id]
        current = view.state == "running" and view.fence == attempt.fence
        base = len(view.segments) if incremental else 0
        n = base + 1
        checkpoint = checkpoint_of(
            Job.from_fields(attempt.fields, attempt.entry_id),
            *(seg(i, 3000 * (i - 1)) for i in range(1, n + 1)),
            resume_at=30.0 * n,
            total_s=30.0 * (n + 1),
        )
        saved = await self.store.save_checkpoint(
            checkpoint, fence=attempt.fence, base=base, worker=worker, event={"n": n}
        )
        post = await self._world()
        if not current:
            assert saved == 0 and post == pre, "a stale checkpoint was written"
            return
        assert saved == 1
        after = post.jobs[attempt.job_id]
        assert after.checkpoint["fence"] == str(attempt.fence)
        assert after.checkpoint["worker"] == worker and len(after.segments) == n
        assert after.record == view.record
        assert post.new_events(pre) == ["job.checkpointed"]

    async def _commit(self, worker: str, attempt: Attempt, twice: bool) -> bool:
        pre = await self._world()
        job_id = attempt.job_id
        rec = pre.jobs[job_id].record
        fresh = rec.get("state") == "running" and rec.get("fence") == str(attempt.fence)
        again = rec.get("state") == "completed" and rec.get("ended_fence") == str(attempt.fence)
        transcript = transcript_of(job_id, attempt.fence)
        commit = Commit(transcript, attempt.fence, attempt.entry_id, worker, {"by": worker})
        [ok] = await self.store.commit_many([commit])
        post = await self._world()
        if not fresh:
            # Refused; or this attempt's own commit, retried: success again, nothing done twice.
            assert ok == again
            assert post == pre, "a stale or repeated commit changed something"
        else:
            assert ok, "the attempt holding the current token could not commit"
            assert rec["entry"] == attempt.entry_id
            after = post.jobs[job_id]
            assert after.state == "completed" and after.record["ended_fence"] == str(attempt.fence)
            self._took_token(job_id, after.fence, "commit")
            assert after.result == transcript.to_json()
            assert not after.checkpoint and not after.segments
            entry = attempt.entry_id
            assert entry not in post.stream and entry not in post.pending
            assert entry not in post.index
            assert post.new_events(pre) == ["job.completed"]
        if twice:
            [repeated] = await self.store.commit_many([commit])
            assert repeated == ok
            assert await self._world() == post, "a repeated commit changed something"
        return ok

    async def _fail(self, worker: str, attempt: Attempt, state: JobState, twice: bool) -> None:
        pre = await self._world()
        job_id = attempt.job_id
        rec = pre.jobs[job_id].record
        ours = rec.get("entry", attempt.entry_id) == attempt.entry_id
        # A retried call after its success answers success again (end_job's `ended_fence`):
        # whatever ended the job with this token (a fail, or a commit: see the report).
        again = (
            ours
            and rec.get("state", "") in TERMINAL
            and rec.get("ended_fence") == str(attempt.fence)
        )
        fresh = ours and rec.get("state") == "running" and rec.get("fence") == str(attempt.fence)

        async def fail() -> bool:
            return await self.store.fail(
                job_id,
                entry_id=attempt.entry_id,
                fence=attempt.fence,
                reason="undecodable",
                error="the audio could not be decoded",
                worker=worker,
                fields=attempt.fields,
                state=state,
            )

        ok = await fail()
        post = await self._world()
        if not fresh:
            assert ok == again
            assert post == pre, "a stale or repeated fail changed something"
        else:
            assert ok, "the attempt holding the current token could not fail its job"
            after = post.jobs[job_id]
            assert after.state == state.value
            assert after.record["ended_fence"] == str(attempt.fence)
            self._took_token(job_id, after.fence, "fail")
            assert not after.checkpoint and not after.segments
            [letter] = post.new_letters(pre)
            assert (letter["job_id"], letter["entry"], letter["reason"]) == (
                job_id,
                attempt.entry_id,
                "undecodable",
            )
            entry = attempt.entry_id
            assert entry not in post.stream and entry not in post.pending
            assert entry not in post.index
            assert post.new_events(pre) == [f"job.{state.value}"]
        if twice:
            assert await fail() == ok
            assert await self._world() == post, "a repeated fail changed something"

    async def _release(self, worker: str, attempt: Attempt, charge: bool, delay: float) -> None:
        pre = await self._world()
        job_id = attempt.job_id
        rec = pre.jobs[job_id].record
        owner = pre.pending.get(attempt.entry_id, ("", 0))
        fresh = (
            rec.get("state") == "running"
            and rec.get("fence") == str(attempt.fence)
            and owner[0] == worker
        )
        released = await self.store.release(
            job_id,
            entry_id=attempt.entry_id,
            fence=attempt.fence,
            consumer=worker,
            charge=charge,
            reason="shutdown",
            delay=delay,
        )
        post = await self._world()
        if not fresh:
            assert not released and post == pre, "a stale release changed something"
            return
        assert released
        after = post.jobs[job_id]
        assert (after.state, after.record["worker"]) == ("queued", "")
        self._took_token(job_id, after.fence, "release")
        attempts = int(rec["attempts"])
        assert int(after.record["attempts"]) == (attempts if charge else max(attempts - 1, 0))
        assert post.pending[attempt.entry_id] == owner
        idle = post.idle[attempt.entry_id]
        assert idle > LEASE_MS - delay * 1000
        assert delay == 0 or idle < LEASE_MS
        assert post.new_events(pre) == ["job.released"]

    async def _cancel(self, job_id: str) -> None:
        pre = await self._world()
        view = pre.jobs[job_id]
        if not view.record:
            with pytest.raises(JobNotFound):
                await self.store.cancel(job_id)
            assert await self._world() == pre
            return
        outcome = await self.store.cancel(job_id)
        post = await self._world()
        if view.state in TERMINAL:
            assert outcome == ("ended", view.state) and post == pre
            return
        assert outcome == ("cancelled", view.state)
        after = post.jobs[job_id]
        assert after.state == "cancelled"
        self._took_token(job_id, after.fence, "cancel")
        entry = view.record["entry"]
        assert entry not in post.stream and entry not in post.pending
        assert entry not in post.index
        assert not after.checkpoint and not after.segments
        assert post.new_events(pre) == ["job.cancelled"]

    async def _retry(self, pick: int) -> None:
        pre = await self._world()
        if not pre.dead:
            return
        letter_id, letter = pre.dead[pick % len(pre.dead)]
        job_id, entry = letter["job_id"], letter["entry"]
        view = pre.jobs[job_id]
        refusal = ""
        if view.state == "completed" or view.result is not None:
            refusal = "job_completed"
        elif view.state and view.record.get("entry") != entry:
            refusal = "job_id_conflict"
        elif view.state and view.state not in TERMINAL:
            refusal = "job_live"
        elif letter.get("truncated") == "1":
            refusal = "truncated"
        if refusal:
            with pytest.raises(InvalidJob) as refused:
                await self.letters.retry(letter_id)
            assert refused.value.reason == refusal
            assert await self._world() == pre, "a refused dead retry changed something"
            return
        assert await self.letters.retry(letter_id) == job_id
        post = await self._world()
        [new] = [e for e in post.stream if e not in pre.stream]
        assert post.stream[new] == {**json.loads(letter["fields"]), "job_id": job_id}
        after = post.jobs[job_id]
        rec = after.record
        assert (rec["state"], rec["entry"], rec["attempts"]) == ("queued", new, "0")
        assert rec["retried_from"] == letter_id
        assert rec["generation"] == str(int(view.record.get("generation") or 0) + 1)
        self._took_token(job_id, after.fence, "dead retry")
        assert letter_id not in [i for i, _ in post.dead] and post.index[new] == job_id
        assert post.new_events(pre) == ["job.retried"]
        self.excused.add(job_id)
        self.live.add(job_id)

    async def _freeze(self, pick: int) -> None:
        pre = await self._world()
        if not pre.pending:
            return
        entry = list(pre.pending)[pick % len(pre.pending)]
        await freeze(self.redis, self.keys, entry)
        post = await self._world()
        assert post == pre and post.idle[entry] > LEASE_MS

    async def _expire(self, pick: int) -> None:
        pre = await self._world()
        ended = sorted(j for j, v in pre.jobs.items() if v.state in TERMINAL)
        if not ended:
            return
        job_id = ended[pick % len(ended)]
        # What the record's and the result's TTL do, at once.
        await self.redis.delete(self.keys.job(job_id), self.keys.result(job_id))
        last = pre.events[-1][0] if pre.events else "0-0"
        self.expired_after.setdefault(job_id, []).append(_id(last))
        self.excused.add(job_id)
        self.live.discard(job_id)

    async def _drain(self) -> None:
        """Play every remaining entry through to its end: nothing else runs meanwhile."""
        for _ in range(5):
            pre = await self._world()
            if not pre.stream and not pre.pending:
                break
            # Every pending entry past its lease, reclaimed and run; then every entry never read.
            for entry in pre.pending:
                await freeze(self.redis, self.keys, entry)
            for attempt in await self._reclaim(DRAINER, 1000, begin_now=True):
                assert await self._commit(DRAINER, attempt, twice=False)
            self.unstarted[DRAINER] = []
            for attempt in await self._take(DRAINER, 1000):
                assert await self._commit(DRAINER, attempt, twice=False)
            unstarted, self.unstarted[DRAINER] = self.unstarted[DRAINER], []
            for attempt in await self._begin(DRAINER, unstarted):
                assert await self._commit(DRAINER, attempt, twice=False)
        end = await self._world()
        assert not end.stream, f"entries left in the stream: {end.stream}"
        assert not end.pending, f"entries left pending: {end.pending}"
        assert not end.index, f"entries left in the index: {end.index}"
        for job_id, view in end.jobs.items():
            assert not view.record or view.state in TERMINAL, f"{job_id} is {view.state}"
        for job_id in self.live:
            assert end.jobs[job_id].record, f"submitted job {job_id} has no record"

    # -- rules ------------------------------------------------------------------------------

    @initialize(
        jobs=st.lists(
            st.tuples(st.sampled_from(("client", "plain")), st.sampled_from(AUDIOS)),
            min_size=2,
            max_size=6,
        )
    )
    def start(self, jobs: list[tuple[str, str]]) -> None:
        """The group exists and a few jobs are waiting."""
        self.run(self.store.ensure_group())
        for kind, audio in jobs:
            self._step()
            self.counter += 1
            self.run(self._submit(f"j{self.counter}", kind, audio))

    @rule(kind=st.sampled_from(("client", "plain")), audio=st.sampled_from(AUDIOS))
    def submit(self, kind: str, audio: str) -> None:
        """A new job: through `Client` (its record filed at once) or a plain XADD."""
        self._step()
        self.counter += 1
        self.run(self._submit(f"j{self.counter}", kind, audio))

    @precondition(lambda self: bool(self.jobs))
    @rule(
        pick=st.integers(0, 999),
        kind=st.sampled_from(("client", "plain")),
        audio=st.sampled_from(AUDIOS),
    )
    def submit_again(self, pick: int, kind: str, audio: str) -> None:
        """The same id again: the same job, or another one reusing its id."""
        self._step()
        ids = sorted(self.jobs)
        self.run(self._submit(ids[pick % len(ids)], kind, audio))

    @precondition(lambda self: bool(self._observed().undelivered()))
    @rule(worker=st.sampled_from(WORKERS), count=st.integers(1, 3))
    def take(self, worker: str, count: int) -> None:
        """A worker reads new entries and starts the attempts of `Client`'s jobs at once."""
        self._step()
        self.run(self._take(worker, count))

    @precondition(lambda self: any(self.unstarted.values()) or any(self.held.values()))
    @rule(
        worker=st.sampled_from(WORKERS),
        picks=st.lists(st.integers(0, 999), min_size=1, max_size=3),
        again=st.booleans(),
    )
    def begin(self, worker: str, picks: list[int], again: bool) -> None:
        """Begin entries the worker read or reclaimed, or (again) an entry of an attempt it
        holds, as a worker that believes it still owns it."""
        self._step()
        waiting = self.unstarted[worker]
        chosen: list[tuple[str, dict[str, str]]] = []
        if waiting and not again:
            for p in picks:
                if waiting:
                    chosen.append(waiting.pop(p % len(waiting)))
        elif self.held[worker]:
            held = self.held[worker]
            for p in picks:
                attempt = held[p % len(held)]
                if attempt.entry_id not in [e for e, _ in chosen]:
                    chosen.append((attempt.entry_id, dict(attempt.fields)))
        self.run(self._begin(worker, chosen))

    @precondition(lambda self: bool(self._observed().pending))
    @rule(
        worker=st.sampled_from(WORKERS),
        count=st.integers(1, 3),
        begin_now=OFTEN,
        own=st.booleans(),
        frozen=st.none() | st.integers(0, 999),
    )
    def reclaim(
        self, worker: str, count: int, begin_now: bool, own: bool, frozen: int | None
    ) -> None:
        """A worker claims the entries past their lease and begins them (now, or later).

        `frozen`: first, the worker holding one of the pending entries froze past its lease.
        `own`: that worker, awake again, is the one that claims it.
        """
        self._step()
        world = self.run(self._world())
        if frozen is not None:
            entry = list(world.pending)[frozen % len(world.pending)]
            self.run(freeze(self.redis, self.keys, entry))
            world = self.run(self._world())
        if own and (expired := world.expired()):
            worker = world.pending[expired[0]][0]
        self.run(self._reclaim(worker, count, begin_now))

    @precondition(lambda self: bool(self._observed().pending))
    @rule(pick=st.integers(0, 999))
    def freeze_worker(self, pick: int) -> None:
        """A worker freezes past its lease: its entry is idle long enough to be reclaimed."""
        self._step()
        self.run(self._freeze(pick))

    def _held(self, pick: int, current: bool) -> tuple[str, Attempt] | None:
        return self._pick(pick, current, self.run(self._world()))

    def _woken(self) -> list[tuple[str, Attempt]]:
        """Attempts whose job runs on now under a newer token: their workers froze."""
        world = self._observed()
        return [
            (w, a)
            for w in WORKERS
            for a in self.held[w]
            if world.jobs[a.job_id].state == "running" and world.jobs[a.job_id].fence != a.fence
        ]

    @precondition(lambda self: bool(self._woken()))
    @rule(
        pick=st.integers(0, 999),
        write=st.sampled_from(("renew", "checkpoint", "commit", "fail", "release")),
    )
    def wake(self, pick: int, write: str) -> None:
        """A worker that froze past its lease wakes up while a peer runs its job on a newer
        token, and carries on with its old one: every write must be refused."""
        woken = self._woken()
        self._step()
        worker, attempt = woken[pick % len(woken)]
        if write == "renew":
            self.run(self._renew(worker, [attempt]))
        elif write == "checkpoint":
            self.run(self._checkpoint(worker, attempt, incremental=True))
        elif write == "commit":
            self.run(self._commit(worker, attempt, twice=False))
        elif write == "fail":
            self.run(self._fail(worker, attempt, JobState.FAILED, twice=False))
        else:
            self.run(self._release(worker, attempt, charge=False, delay=0.0))

    @precondition(lambda self: any(self.held.values()))
    @rule(worker=st.sampled_from(WORKERS))
    def renew(self, worker: str) -> None:
        """A worker's heartbeat renews its leases: every attempt it holds, stale ones too."""
        self._step()
        # The latest few: enough to hold every live one, and older stale ones besides.
        if held := self.held[worker][-6:]:
            self.run(self._renew(worker, held))

    @precondition(lambda self: any(self.held.values()))
    @rule(pick=st.integers(0, 999), current=OFTEN, incremental=st.booleans())
    def checkpoint(self, pick: int, current: bool, incremental: bool) -> None:
        """An attempt saves its progress: the new segments, or all of them again."""
        self._step()
        if held := self._held(pick, current):
            self.run(self._checkpoint(*held, incremental))

    @precondition(lambda self: any(self.held.values()))
    @rule(pick=st.integers(0, 999), current=SOMETIMES, twice=st.booleans())
    def commit(self, pick: int, current: bool, twice: bool) -> None:
        """An attempt publishes its result (twice: the call is retried after a lost reply)."""
        self._step()
        if held := self._held(pick, current):
            self.run(self._commit(*held, twice))

    @precondition(lambda self: any(self.held.values()))
    @rule(
        pick=st.integers(0, 999),
        current=SOMETIMES,
        state=st.sampled_from((JobState.FAILED, JobState.DEAD)),
        twice=st.booleans(),
    )
    def fail(self, pick: int, current: bool, state: JobState, twice: bool) -> None:
        """The job's own error ends it (failed, or dead-lettered as such)."""
        self._step()
        if held := self._held(pick, current):
            self.run(self._fail(*held, state, twice))

    @precondition(lambda self: any(self.held.values()))
    @rule(
        pick=st.integers(0, 999),
        current=OFTEN,
        charge=st.booleans(),
        delay=st.sampled_from((0.0, 15.0)),
    )
    def release(self, pick: int, current: bool, charge: bool, delay: float) -> None:
        """A worker hands a job back, at once or later, charged or not."""
        self._step()
        if held := self._held(pick, current):
            self.run(self._release(*held, charge, delay))

    @precondition(lambda self: any(v.state in LIVE for v in self._observed().jobs.values()))
    @rule(pick=st.integers(0, 999))
    def cancel(self, pick: int) -> None:
        """A producer cancels a job: queued, running, or already over."""
        self._step()
        jobs = self.run(self._world()).jobs
        live = sorted(j for j, v in jobs.items() if v.state in LIVE)
        # Mostly a job still live; now and then one already over.
        ids = live if live and pick % 4 else sorted(jobs)
        self.run(self._cancel(ids[pick % len(ids)]))

    @precondition(lambda self: bool(self._observed().dead))
    @rule(pick=st.integers(0, 999))
    def dead_retry(self, pick: int) -> None:
        """The operator retries one of the dead letters: maybe one that must be refused."""
        self._step()
        self.run(self._retry(pick))

    @precondition(lambda self: any(v.state in TERMINAL for v in self._observed().jobs.values()))
    @rule(pick=st.integers(0, 999))
    def expire(self, pick: int) -> None:
        """A finished job's record and result reach their TTL."""
        self._step()
        self.run(self._expire(pick))

    @precondition(lambda self: self.snapshots < 3)
    @rule()
    def snapshot(self) -> None:
        """Redis saves a snapshot: what a crash rolls back to."""
        self._step()
        self.run(self.redis.save())
        self.saved = True
        self.snapshots += 1

    @precondition(lambda self: self.saved and self.crashes < 3)
    @rule()
    def crash(self) -> None:
        """Redis dies (SIGKILL) and comes back from the last snapshot: later writes are lost."""
        self._step()
        self.run(self.redis.aclose())
        restart_after_crash(self.redis_server)
        self._open()
        self.crashes += 1
        self.crashed = True
        world = self.run(self._world())
        named = {f.get("job_id") for f in world.stream.values()}
        self.live = {j for j in self.live if world.jobs[j].record or j in named}

    @precondition(lambda self: not self.drained)
    @rule()
    def drain(self) -> None:
        """Everything plays through to its end (once mid-run; again at teardown)."""
        self._step()
        self.drained = True
        self.run(self._drain())

    # -- invariants -------------------------------------------------------------------------

    @invariant()
    def terminal_states_are_left_only_by_a_retry(self) -> None:
        """A terminal record never changes, short of a dead retry, its expiry or a crash."""
        world = self._observed()
        if self.crashed:
            return
        for job_id, before in self.prev.items():
            if before.state in TERMINAL and job_id not in self.excused:
                assert world.jobs[job_id].record == before.record, f"{job_id} left {before.state}"

    @invariant()
    def one_completion_per_generation(self) -> None:
        """The events stream holds at most one job.completed per generation of a job."""
        generation: dict[str, int] = {}
        completed: set[tuple[str, int, int]] = set()
        for event_id, etype, job_id in self._observed().events:
            if etype in NEW_GENERATION:
                generation[job_id] = generation.get(job_id, 0) + 1
            elif etype == "job.completed":
                expired = sum(1 for e in self.expired_after.get(job_id, ()) if e < _id(event_id))
                key = (job_id, generation.get(job_id, 0), expired)
                assert key not in completed, f"{job_id} completed twice in one generation"
                completed.add(key)

    @invariant()
    def tokens_never_go_back(self) -> None:
        """A record's token never decreases, short of a crash or a record made anew."""
        world = self._observed()
        if self.crashed:
            return
        for job_id, before in self.prev.items():
            if job_id not in self.excused:
                assert world.jobs[job_id].fence >= before.fence, f"{job_id}'s token went back"

    @invariant()
    def results_stand(self) -> None:
        """A completed job has its result, and that result is never replaced."""
        world = self._observed()
        for job_id, view in world.jobs.items():
            if view.state == "completed":
                assert view.result is not None, f"{job_id} completed without a result"
            before = self.prev.get(job_id)
            if before is None or before.state != "completed" or self.crashed:
                continue
            if job_id not in self.excused:
                assert view.result == before.result, f"{job_id}'s result was replaced"

    @invariant()
    def stream_and_records_agree(self) -> None:
        """Pending entries exist; a live job's entry is queued (and pending if it runs)."""
        world = self._observed()
        for entry in world.pending:
            assert entry in world.stream, f"pending entry {entry} is not in the stream"
        for entry, job_id in world.index.items():
            assert world.stream.get(entry, {}).get("job_id") == job_id, f"index: {entry}"
        for job_id, view in world.jobs.items():
            if not view.record:
                continue
            if view.state in TERMINAL:
                assert not view.checkpoint and not view.segments, f"{job_id} kept its checkpoint"
                continue
            entry = view.record["entry"]
            assert entry in world.stream, f"{view.state} job {job_id} lost its entry"
            assert world.index.get(entry) == job_id
            if view.state == "running":
                assert entry in world.pending, f"running job {job_id}'s entry is not pending"

    def teardown(self) -> None:
        try:
            if not self.broken:
                self._step()
                self.run(self._drain())
        finally:
            try:
                self.loop.run_until_complete(self.redis.flushall())
                self.loop.run_until_complete(self.redis.aclose())
            finally:
                self.loop.close()


def test_lifecycle_model(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Random sequences of every lifecycle operation, stale workers and Redis crashes keep
    every promise of the job lifecycle."""
    server = RedisServer(tmp_path_factory.mktemp("model-redis"))
    server.start()
    LifecycleMachine.server = server
    try:
        run_state_machine_as_test(
            LifecycleMachine,
            settings=hsettings(
                max_examples=60,
                stateful_step_count=80,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            ),
        )
    finally:
        LifecycleMachine.server = None
        server.stop()


# -- the most important scenarios, step by step --------------------------------------------


async def started(store: Store, worker: str, entry_id: str) -> Begin:
    """Begin an attempt at an entry `worker` holds (read or reclaimed), as a worker does."""
    [(_, raw)] = await store.redis.xrange(store.keys.stream, min=entry_id, max=entry_id)
    job = Job.from_fields(raw, entry_id)
    fields = decode_fields(raw)[0]
    return await store.begin(entry_id, job.job_id, worker, digest=job.digest(), fields=fields)


async def reclaimed(store: Store, worker: str, entry_id: str) -> Begin:
    """The entry's worker froze past its lease; `worker` reclaims the entry and begins it."""
    await freeze(store.redis, store.keys, entry_id)
    claimed = await store.autoclaim(worker, "0-0", 10)
    assert [e for e, _ in claimed.entries] == [entry_id]
    return await started(store, worker, entry_id)


async def record(redis: RedisClient, keys: Keys, job_id: str) -> dict[str, str]:
    return _text(await redis.hgetall(keys.job(job_id)))


async def test_frozen_last_attempt_is_dead_lettered_and_fenced(
    redis_url: str, prefix: str, redis: RedisClient
) -> None:
    """A worker frozen on a job's last attempt is fenced off once another worker's begin
    dead-letters the job, and a dead retry starts a generation whose tokens are above its own."""
    settings = model_settings(redis_url, prefix, max_deliveries=2)
    store, keys = Store(redis, settings), Keys(prefix)
    await store.ensure_group()
    job_id = await Client(redis, settings).submit(AUDIOS[0], job_id="frozen")
    [(entry, _, first)] = await store.take("w1", 1)
    assert first is not None and first.outcome is BeginOutcome.OK
    await freeze(redis, keys, entry)
    assert [e for e, _ in (await store.autoclaim("w2", "0-0", 10)).entries] == [entry]
    # w1 still holds the current token but no longer the entry: it can neither renew nor
    # hand the job back.
    assert await store.renew("w1", [(job_id, entry, first.fence)]) == [Lease.LOST]
    assert not await store.release(
        job_id, entry_id=entry, fence=first.fence, consumer="w1", charge=False, reason="stop"
    )
    second = await started(store, "w2", entry)
    assert second.outcome is BeginOutcome.OK and second.attempts == 2
    assert second.fence > first.fence
    # w2 freezes on the last allowed attempt; w3 finds the entry past its lease.
    third = await reclaimed(store, "w3", entry)
    assert third.outcome is BeginOutcome.DEAD and third.attempts == 2
    dead = await record(redis, keys, job_id)
    assert dead["state"] == "dead" and int(dead["fence"]) > second.fence
    # w2 wakes up: every write it tries is refused, and nothing changes.
    transcript = transcript_of(job_id, second.fence)
    assert not await store.commit(
        transcript, fence=second.fence, entry_id=entry, worker="w2", event={}
    )
    assert await store.renew("w2", [(job_id, entry, second.fence)]) == [Lease.LOST]
    assert not await store.fail(
        job_id,
        entry_id=entry,
        fence=second.fence,
        reason="undecodable",
        error="late",
        worker="w2",
        fields={},
    )
    assert await record(redis, keys, job_id) == dead
    assert await store.result(job_id) is None
    events = [_s(f[b"type"]) for _, f in await redis.xrange(keys.events)]
    assert [e for e in events if e in {f"job.{s}" for s in TERMINAL}] == ["job.dead"]
    # The operator retries it: a new generation, its first token above the stale one.
    [letter] = await DeadLetters(store).entries()
    assert await DeadLetters(store).retry(letter.id) == job_id
    [(new_entry, _, fourth)] = await store.take("w1", 1)
    assert fourth is not None and fourth.outcome is BeginOutcome.OK and fourth.attempts == 1
    assert fourth.fence > int(dead["fence"]) > second.fence
    assert not await store.commit(
        transcript, fence=second.fence, entry_id=entry, worker="w2", event={}
    )
    assert await store.commit(
        transcript_of(job_id, fourth.fence),
        fence=fourth.fence,
        entry_id=new_entry,
        worker="w1",
        event={},
    )
    assert (await store.status(job_id)).state is JobState.COMPLETED


async def test_retry_of_a_conflict_letter_is_refused(
    redis_url: str, prefix: str, redis: RedisClient
) -> None:
    """A dead letter filed for an entry that reused a job's id cannot be retried, and the real
    job's record and result stay exactly as they were."""
    settings = model_settings(redis_url, prefix)
    store, keys = Store(redis, settings), Keys(prefix)
    letters = DeadLetters(store)
    await store.ensure_group()
    job_id = await Client(redis, settings).submit(AUDIOS[0], job_id="real")
    [(entry, _, begun)] = await store.take("w1", 1)
    assert begun is not None and begun.outcome is BeginOutcome.OK
    # Another producer reuses the id for other audio, with a plain XADD.
    other = _s(await redis.xadd(keys.stream, {"audio": AUDIOS[1], "job_id": job_id}))
    [(_, raw, unstarted)] = await store.take("w2", 1)
    assert unstarted is None
    conflict = await started(store, "w2", other)
    assert conflict.outcome is BeginOutcome.CONFLICT
    assert await store.fail(
        job_id,
        entry_id=other,
        fence=None,
        reason="job_id_conflict",
        error="the id is taken",
        worker="w2",
        fields=decode_fields(raw)[0],
        record=False,
    )
    [letter] = await letters.entries()
    assert letter.job_id == job_id and letter.fields["audio"] == AUDIOS[1]
    before = await record(redis, keys, job_id)
    with pytest.raises(InvalidJob) as refused:
        await letters.retry(letter.id)
    assert refused.value.reason == "job_id_conflict"
    assert await record(redis, keys, job_id) == before
    assert [_s(e) for e, _ in await redis.xrange(keys.stream)] == [entry]
    # Once the real job completed, the letter is refused for that reason, and nothing moves.
    result = transcript_of(job_id, begun.fence)
    assert await store.commit(result, fence=begun.fence, entry_id=entry, worker="w1", event={})
    completed = await record(redis, keys, job_id)
    with pytest.raises(InvalidJob) as refused:
        await letters.retry(letter.id)
    assert refused.value.reason == "job_completed"
    assert await record(redis, keys, job_id) == completed
    assert await redis.get(keys.result(job_id)) == result.to_json().encode()
    assert [d.id for d in await letters.entries()] == [letter.id]
    assert await redis.xlen(keys.stream) == 0


async def test_recreated_record_restarts_no_tokens(
    redis_url: str, prefix: str, redis: RedisClient
) -> None:
    """A record made anew (after its expiry, or deleted while the job ran) hands out tokens
    above every earlier one, so no earlier attempt can write to the new one."""
    settings = model_settings(redis_url, prefix)
    store, keys = Store(redis, settings), Keys(prefix)
    client = Client(redis, settings)
    await store.ensure_group()
    await client.submit(AUDIOS[0], job_id="again")
    [(first_entry, _, first)] = await store.take("w1", 1)
    assert first is not None and first.outcome is BeginOutcome.OK
    result = transcript_of("again", first.fence)
    assert await store.commit(
        result, fence=first.fence, entry_id=first_entry, worker="w1", event={}
    )
    ended = int((await record(redis, keys, "again"))["fence"])
    # The record and the result reach their TTL; the producer submits the job again.
    await redis.delete(keys.job("again"), keys.result("again"))
    await client.submit(AUDIOS[0], job_id="again")
    assert (await record(redis, keys, "again"))["fence"] == "0"
    [(second_entry, _, second)] = await store.take("w2", 1)
    assert second is not None and second.outcome is BeginOutcome.OK and second.attempts == 1
    assert second.fence > ended > first.fence
    # A retried commit of the first generation does not land on the second.
    assert not await store.commit(
        result, fence=first.fence, entry_id=first_entry, worker="w1", event={}
    )
    # The record is deleted by hand while w2 runs the job, and the job submitted again.
    await redis.delete(keys.job("again"))
    await client.submit(AUDIOS[0], job_id="again")
    [(third_entry, _, third)] = await store.take("w3", 1)
    assert third is not None and third.outcome is BeginOutcome.OK
    assert third.fence > second.fence
    late = transcript_of("again", second.fence)
    assert not await store.commit(
        late, fence=second.fence, entry_id=second_entry, worker="w2", event={}
    )
    assert await store.renew("w2", [("again", second_entry, second.fence)]) == [Lease.LOST]
    # w2's entry comes back to a peer: the same job, already queued again, so it is dropped.
    duplicate = await reclaimed(store, "w1", second_entry)
    assert duplicate.outcome is BeginOutcome.DUPLICATE
    assert [_s(e) for e, _ in await redis.xrange(keys.stream)] == [third_entry]
    done = transcript_of("again", third.fence)
    assert await store.commit(done, fence=third.fence, entry_id=third_entry, worker="w3", event={})
    assert await redis.get(keys.result("again")) == done.to_json().encode()


async def test_restart_from_an_older_snapshot_keeps_tokens_rising(tmp_path: Path) -> None:
    """After Redis restarts from a snapshot taken before a job's last begin, the next begin's
    token is above the one handed out before the crash, and the lost attempt stays fenced."""
    server = RedisServer(tmp_path / "redis")
    await asyncio.to_thread(server.start)
    redis: RedisClient = Redis.from_url(server.url, protocol=2)
    try:
        settings = model_settings(server.url, "{restart}")
        store = Store(redis, settings)
        await store.ensure_group()
        job_id = await Client(redis, settings).submit(AUDIOS[0], job_id="crashed")
        [(entry, _, first)] = await store.take("w1", 1)
        assert first is not None and first.outcome is BeginOutcome.OK
        await redis.save()
        # After the snapshot: w1 freezes, w2 begins the job; then Redis is killed.
        lost = await reclaimed(store, "w2", entry)
        assert lost.outcome is BeginOutcome.OK and lost.fence > first.fence
        await redis.aclose()
        await asyncio.to_thread(restart_after_crash, server)
        redis = Redis.from_url(server.url, protocol=2)
        store = Store(redis, settings)
        # The snapshot's state is back: w1's attempt, its token current again.
        rolled_back = await record(redis, store.keys, job_id)
        assert (rolled_back["worker"], rolled_back["fence"]) == ("w1", str(first.fence))
        after = await reclaimed(store, "w3", entry)
        assert after.outcome is BeginOutcome.OK and after.attempts == 2
        assert after.fence > lost.fence > first.fence
        for fence, worker in ((lost.fence, "w2"), (first.fence, "w1")):
            stale = transcript_of(job_id, fence)
            assert not await store.commit(
                stale, fence=fence, entry_id=entry, worker=worker, event={}
            )
        result = transcript_of(job_id, after.fence)
        assert await store.commit(result, fence=after.fence, entry_id=entry, worker="w3", event={})
    finally:
        await redis.aclose()
        await asyncio.to_thread(server.stop)


# -- two defects the model found, fixed since: their sequences, step by step ----------------


async def test_duplicate_entry_leaves_no_index_entry(
    redis_url: str, prefix: str, redis: RedisClient
) -> None:
    """An entry dropped as a duplicate of a job submitted again leaves nothing in the index."""
    settings = model_settings(redis_url, prefix)
    store, keys = Store(redis, settings), Keys(prefix)
    client = Client(redis, settings)
    await store.ensure_group()
    await client.submit(AUDIOS[0], job_id="dup")
    [(first, _, begun)] = await store.take("w1", 1)
    assert begun is not None and begun.outcome is BeginOutcome.OK
    await redis.delete(keys.job("dup"))  # lost while running (deleted by hand, evicted)
    await client.submit(AUDIOS[0], job_id="dup")
    duplicate = await reclaimed(store, "w2", first)
    assert duplicate.outcome is BeginOutcome.DUPLICATE
    assert not await redis.xrange(keys.stream, min=first, max=first)
    # The duplicate branch of begin_attempt once acked and deleted the entry but kept it in
    # `:entries`, for good.
    assert await redis.hget(keys.entries, first) is None


async def test_begin_retried_after_a_lost_reply_keeps_the_job(
    redis_url: str, prefix: str, redis: RedisClient
) -> None:
    """A begin sent again after its reply was lost gets the attempt it started, uncharged,
    instead of dead-lettering a job on its last attempt."""
    settings = model_settings(redis_url, prefix, max_deliveries=2)
    store, keys = Store(redis, settings), Keys(prefix)
    await store.ensure_group()
    await Client(redis, settings).submit(AUDIOS[0], job_id="retried")
    [(entry, _, first)] = await store.take("w1", 1)
    assert first is not None and first.outcome is BeginOutcome.OK
    last = await reclaimed(store, "w2", entry)
    assert last.outcome is BeginOutcome.OK and last.attempts == 2
    before = await record(redis, keys, "retried")
    events = await redis.xlen(keys.events)
    # The reply to w2's begin is lost; the worker's retrying() sends the same call again
    # (same consumer, same entry, same delivery count: nobody reclaimed it in between).
    again = await started(store, "w2", entry)
    assert (again.outcome, again.fence, again.attempts) == (BeginOutcome.OK, last.fence, 2)
    assert await record(redis, keys, "retried") == before
    assert await redis.xlen(keys.events) == events
    # A delivery of its own that the same worker reclaims is a new attempt, though.
    assert (await reclaimed(store, "w2", entry)).outcome is BeginOutcome.DEAD
