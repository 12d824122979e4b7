"""Recovery logic against a real Redis: reclaim, fencing, checkpoints, resume, dead letters.

A "ghost" is a consumer that reads and starts a job, then stops answering, as a killed worker
would; the worker under test must recover the job. Real killed processes are in test_crash.py.
"""

from __future__ import annotations

import json

import anyio

from runner.checkpoint import Checkpoint, Stage, Windows, resume_prompt
from runner.job import Job, JobState
from runner.keys import GROUP, Keys
from runner.producer import Client
from runner.settings import Settings
from runner.store import Begin, BeginOutcome, Commit, Store, decode_fields
from runner.transcript import Segment, Transcript
from runner.worker import Worker

from .conftest import FIXTURES, RedisClient
from .fakes import FakeTranscriber
from .helpers import running, until

LONG = FIXTURES / "long.ogg"
HELLO = FIXTURES / "hello.wav"


async def ghost(store: Store, name: str = "ghost-1-dead") -> tuple[str, Job, Begin]:
    """Read one entry as consumer `name` and start an attempt, then never come back."""
    await store.ensure_group()
    entries = await store.read(name, 1, None)
    if not entries:
        claimed = await store.autoclaim(name, "0-0", 1)
        entries = claimed.entries
    entry_id, raw = entries[0]
    job = Job.from_fields(raw, entry_id)
    begin = await store.begin(
        entry_id, job.job_id, name, digest=job.digest(), fields=decode_fields(raw)[0]
    )
    return entry_id, job, begin


async def state_is(client: Client, job_id: str, state: JobState) -> bool:
    return (await client.status(job_id)).state is state


async def worker_is(client: Client, job_id: str, worker: str) -> bool:
    return (await client.status(job_id)).worker == worker


async def has_segments(redis: RedisClient, keys: Keys, job_id: str, n: int) -> bool:
    return int(await redis.llen(keys.checkpoint_segments(job_id))) >= n


def checkpoint_of(
    job: Job,
    *segments: Segment,
    resume_at: float = 60.0,
    total_s: float = 122.046,
    metadata: dict[str, str] | None = None,
) -> Checkpoint:
    """A checkpoint of `job` at `resume_at` holding `segments`."""
    return Checkpoint(
        job_id=job.job_id,
        digest=job.digest(),
        stage=Stage.TRANSCRIBING,
        resume_at=resume_at,
        processed_s=resume_at,
        total_s=total_s,
        language="en",
        language_probability=0.9,
        segments=segments,
        metadata=metadata or {},
    )


def seg(n: int, seek: int, temperature: float = 0.0) -> Segment:
    return Segment(
        id=n,
        seek=seek,
        start=seek / 100,
        end=seek / 100 + 1,
        text=f" s{n}",
        tokens=(n,),
        temperature=temperature,
    )


def test_resume_prompt_follows_faster_whispers_rules() -> None:
    """The prompt is every committed token since the last hot window, after the user's own."""
    segs = [seg(1, 0), seg(2, 0), seg(3, 3000), seg(4, 6000)]
    assert resume_prompt(segs, [7, 8]) == [7, 8, 1, 2, 3, 4]
    hot = [seg(1, 0), seg(2, 3000, temperature=0.8), seg(3, 6000)]
    assert resume_prompt(hot, [7]) == [3]
    assert resume_prompt([seg(1, 0, temperature=1.0)], [7]) is None
    assert resume_prompt([], None) is None


def test_windows_commit_only_closed_windows() -> None:
    """A window is committed when the next one starts; the resume point is the open window."""
    w = Windows(start=0.0)
    assert w.resume_at == 0.0
    assert not w.add(seg(1, 0)) and not w.add(seg(1, 0))
    assert w.committed == [] and w.resume_at == 0.0
    assert w.add(seg(1, 2950))
    assert [s.id for s in w.committed] == [1, 2] and w.resume_at == 29.5
    assert [s.id for s in w.finish()] == [1, 2, 3]


async def test_dead_workers_job_restarts_from_zero(fast: Settings, redis: RedisClient) -> None:
    """With no checkpoint, a reclaimed job starts over, and its result says it took 2 attempts."""
    client = Client(redis, fast)
    job_id = await client.submit(HELLO)
    store = Store(redis, fast)
    await ghost(store)
    engine = FakeTranscriber()
    async with running(Worker(fast, redis, engine)):
        with anyio.fail_after(20):
            result = await client.wait(job_id)
    assert result.attempts == 2 and result.resumed_from is None
    assert engine.requests[0].clip_start is None
    events = await redis.xrange(Keys(fast.prefix).events)
    reclaimed = [json.loads(f[b"data"]) for _, f in events if f[b"type"] == b"job.reclaimed"]
    assert reclaimed == [{"from": "ghost-1-dead", "attempt": 1}]
    status = await client.status(job_id)
    assert status.history[0]["worker"] == "ghost-1-dead"
    assert [h["attempt"] for h in status.history] == [1, 2]


async def test_resume_from_checkpoint(fast: Settings, redis: RedisClient) -> None:
    """A reclaimed job restarts at its checkpoint, prompted with the committed tokens."""
    client = Client(redis, fast)
    job_id = await client.submit(LONG)
    store = Store(redis, fast)
    _, job, begin = await ghost(store)
    checkpoint = checkpoint_of(job, seg(1, 0), seg(2, 3000))
    saved = await store.save_checkpoint(
        checkpoint, fence=begin.fence, base=0, worker="ghost-1-dead", event={}
    )
    assert saved == 1
    status = await client.status(job_id)
    assert status.stage == "transcribing" and status.progress is not None
    assert round(status.progress.percent) == 49
    engine = FakeTranscriber()
    async with running(Worker(fast, redis, engine)):
        with anyio.fail_after(20):
            result = await client.wait(job_id)
    request = engine.requests[0]
    assert request.clip_start == 60.0
    assert request.initial_prompt == [1, 2] and request.language == "en"
    assert [s.text for s in result.segments] == [
        " s1",
        " s2",
        " window 2",
        " window 3",
        " window 4",
    ]
    assert [s.id for s in result.segments] == [1, 2, 3, 4, 5]
    assert result.resumed_from == 60.0 and result.attempts == 2
    keys = Keys(fast.prefix)
    assert not await redis.exists(keys.checkpoint(job_id), keys.checkpoint_segments(job_id))


async def test_stale_token_cannot_write(fast: Settings, redis: RedisClient) -> None:
    """Once another attempt started, the old one's checkpoint and commit are rejected."""
    client = Client(redis, fast)
    job_id = await client.submit(HELLO)
    store = Store(redis, fast)
    entry_id, job, old = await ghost(store, "ghost-old")
    await anyio.sleep(0.6)
    _, _, new = await ghost(store, "ghost-new")
    assert new.outcome is BeginOutcome.OK and new.fence > old.fence
    checkpoint = checkpoint_of(job, seg(1, 0), resume_at=0.0, total_s=4.0)
    assert (
        await store.save_checkpoint(checkpoint, fence=old.fence, base=0, worker="x", event={}) == 0
    )
    result = Transcript(
        job_id=job_id, language="en", language_probability=1.0, duration=4.0, segments=(), model="m"
    )
    assert not await store.commit(result, fence=old.fence, entry_id=entry_id, worker="x", event={})
    assert await store.result(job_id) is None
    # Renewing the old lease reports it lost; the new one is renewed.
    leases = await store.renew("ghost-old", [(job_id, entry_id, old.fence)])
    assert [int(x) for x in leases] == [0]
    leases = await store.renew("ghost-new", [(job_id, entry_id, new.fence)])
    assert [int(x) for x in leases] == [1]
    assert await store.commit(result, fence=new.fence, entry_id=entry_id, worker="x", event={})
    assert (await client.status(job_id)).state is JobState.COMPLETED
    # A heartbeat racing the commit finds the job ended (a terminal job renews nothing), never
    # the entry vanished; the worker says nothing of it for a job it has just committed.
    leases = await store.renew("ghost-new", [(job_id, entry_id, new.fence)])
    assert [int(x) for x in leases] == [0]
    # The commit, retried after a lost reply, is answered as done and changes nothing.
    assert await store.commit(result, fence=new.fence, entry_id=entry_id, worker="x", event={})


async def test_deleted_pending_entry_is_cleaned_up(fast: Settings, redis: RedisClient) -> None:
    """An entry deleted while pending ends its job; nothing stays stuck; the worker goes on."""
    client = Client(redis, fast)
    job_id = await client.submit(HELLO)
    store = Store(redis, fast)
    entry_id, _, _ = await ghost(store)
    keys = Keys(fast.prefix)
    await redis.xdel(keys.stream, entry_id)
    async with running(Worker(fast, redis, FakeTranscriber())):
        await until(lambda: state_is(client, job_id, JobState.FAILED))
        other = await client.submit(HELLO)
        with anyio.fail_after(10):
            assert (await client.wait(other)).text == "window 0"
    status = await client.status(job_id)
    assert status.reason == "entry_deleted"
    assert (await redis.xpending(keys.stream, GROUP))["pending"] == 0
    assert not await redis.hget(keys.entries, entry_id)


async def test_out_of_attempts_goes_to_dead_letters(fast: Settings, redis: RedisClient) -> None:
    """After max deliveries of attempts that never finish, the job is dead-lettered with history."""
    settings = fast.with_(max_deliveries=2)
    client = Client(redis, settings)
    job_id = await client.submit(HELLO, client_id="team-a")
    store = Store(redis, settings)
    await ghost(store, "ghost-a")
    await anyio.sleep(0.6)
    await ghost(store, "ghost-b")
    engine = FakeTranscriber()
    async with running(Worker(settings, redis, engine)):
        await until(lambda: state_is(client, job_id, JobState.DEAD))
    assert engine.requests == []
    keys = Keys(settings.prefix)
    dead = await redis.xrange(keys.dead)
    assert len(dead) == 1
    entry = {k.decode(): v.decode() for k, v in dead[0][1].items()}
    assert entry["job_id"] == job_id and entry["reason"] == "max_deliveries"
    assert entry["attempts"] == "2"
    assert "attempt 2 on ghost-b did not finish" in entry["error"]
    assert json.loads(entry["fields"])["client_id"] == "team-a"
    assert [h["worker"] for h in json.loads(entry["history"])] == ["ghost-a", "ghost-b"]
    assert (await redis.xpending(keys.stream, GROUP))["pending"] == 0
    assert await redis.xlen(keys.stream) == 0


async def test_checkpoints_expire(fast: Settings, redis: RedisClient) -> None:
    """A checkpoint nobody refreshes is gone after its TTL."""
    settings = fast.with_(checkpoint_ttl=1)
    client = Client(redis, settings)
    job_id = await client.submit(LONG)
    store = Store(redis, settings)
    _, job, begin = await ghost(store)
    checkpoint = checkpoint_of(job, seg(1, 0), resume_at=30.0, total_s=122.0)
    await store.save_checkpoint(checkpoint, fence=begin.fence, base=0, worker="g", event={})
    keys = Keys(settings.prefix)
    assert 0 < await redis.ttl(keys.checkpoint(job_id)) <= 1
    assert 0 < await redis.ttl(keys.checkpoint_segments(job_id)) <= 1
    await anyio.sleep(1.3)
    assert not await redis.exists(keys.checkpoint(job_id), keys.checkpoint_segments(job_id))
    assert await store.load_checkpoint(job_id) is None


async def test_checkpoints_written_incrementally_and_removed(
    fast: Settings, redis: RedisClient
) -> None:
    """A checkpoint is written as each window closes (not after the last one: the commit
    follows at once) and is deleted on completion.

    When the engine says a window is complete, it closes at once; otherwise when the next
    window's first segment arrives.
    """
    keys = Keys(fast.prefix)
    client = Client(redis, fast)
    for knows, expected in ((True, [1, 2, 3, 4]), (False, [1, 2, 3])):
        job_id = await client.submit(LONG, job_id=f"knows-{knows}")
        engine = FakeTranscriber(delay=0.1, knows_window_ends=knows)
        every_window = fast.with_(checkpoint_seconds=1e-6)
        async with running(Worker(every_window, redis, engine)):
            with anyio.fail_after(20):
                await client.wait(job_id)
        events = await redis.xrange(keys.events)
        saved = [
            json.loads(f[b"data"])
            for _, f in events
            if f[b"type"] == b"job.checkpointed" and f[b"job_id"] == job_id.encode()
        ]
        assert [s["segments"] for s in saved] == expected
        assert [s["processed_s"] for s in saved][:2] == [30.0, 60.0]
    assert not await redis.exists(keys.checkpoint(job_id), keys.checkpoint_segments(job_id))


async def test_checkpoint_sends_only_new_segments(fast: Settings, redis: RedisClient) -> None:
    """A checkpoint write costs O(new segments): earlier ones are not sent again."""
    client = Client(redis, fast)
    job_id = await client.submit(LONG)
    store = Store(redis, fast)
    _, job, begin = await ghost(store)

    def at(*segments: Segment) -> Checkpoint:
        return Checkpoint(
            job_id=job_id,
            digest=job.digest(),
            stage=Stage.TRANSCRIBING,
            resume_at=90.0,
            processed_s=90.0,
            total_s=122.0,
            language="en",
            language_probability=1.0,
            segments=segments,
        )

    assert await store.save_checkpoint(
        at(seg(1, 0), seg(2, 0)), fence=begin.fence, base=0, worker="g", event={}
    )
    # Different first two segments with base=2: only the third may travel and be stored.
    assert await store.save_checkpoint(
        at(seg(8, 0), seg(9, 0), seg(3, 3000)), fence=begin.fence, base=2, worker="g", event={}
    )
    loaded = await store.load_checkpoint(job_id)
    assert loaded is not None and [s.text for s in loaded.segments] == [" s1", " s2", " s3"]
    # A base larger than what is stored is refused, so nothing is silently lost.
    assert (
        await store.save_checkpoint(at(seg(1, 0)), fence=begin.fence, base=5, worker="g", event={})
        == -1
    )


async def test_live_slow_job_is_never_reclaimed(fast: Settings, redis: RedisClient) -> None:
    """A job running for many lease periods keeps its lease; a peer never takes it."""
    client = Client(redis, fast)
    job_id = await client.submit(LONG)
    owner = Worker(fast, redis, FakeTranscriber(delay=0.7), name="owner")
    peer = Worker(fast, redis, FakeTranscriber(), name="peer")
    started = anyio.current_time()
    async with running(owner):
        await until(lambda: worker_is(client, job_id, "owner"))
        async with running(peer):
            with anyio.fail_after(30):
                result = await client.wait(job_id)
    assert anyio.current_time() - started > 5 * fast.lease_seconds
    assert result.worker == "owner" and result.attempts == 1
    status = await client.status(job_id)
    assert [h["delivery"] for h in status.history] == [1]
    assert peer.reclaimed == 0


async def test_stop_hands_jobs_back_without_charging_them(
    fast: Settings, redis: RedisClient
) -> None:
    """A stopping worker checkpoints its job and releases it; a peer resumes it at once."""
    settings = fast.with_(lease_seconds=30.0, heartbeat_seconds=1.0, shutdown_grace_seconds=0.0)
    client = Client(redis, settings)
    job_id = await client.submit(LONG)
    first = Worker(settings, redis, FakeTranscriber(delay=0.2), name="first")
    peer_engine = FakeTranscriber()
    async with anyio.create_task_group() as tg:
        tg.start_soon(first.run)
        keys = Keys(settings.prefix)
        await until(lambda: has_segments(redis, keys, job_id, 2))
        first.stop()
    released_at = anyio.current_time()
    async with running(Worker(settings, redis, peer_engine, name="peer")):
        with anyio.fail_after(10):
            result = await client.wait(job_id)
    # Resumed long before the 30 s lease could have expired: handed back, not reclaimed.
    assert anyio.current_time() - released_at < settings.lease_seconds / 3
    assert result.worker == "peer" and result.attempts == 1
    assert result.resumed_from is not None and result.resumed_from >= 60.0
    assert peer_engine.requests[0].clip_start == result.resumed_from
    assert [s.text for s in result.segments] == [f" window {n}" for n in range(5)]
    status = await client.status(job_id)
    assert status.attempts == 1
    assert [(h["attempt"], h["worker"]) for h in status.history] == [(1, "first"), (1, "peer")]
    assert status.history[0]["released"] == "shutdown"


async def test_checkpoint_of_another_model_is_not_resumed(
    fast: Settings, redis: RedisClient
) -> None:
    """A checkpoint made by a different model (an upgrade changed it) is ignored: start over."""
    client = Client(redis, fast)
    job_id = await client.submit(LONG)
    store = Store(redis, fast)
    _, job, begin = await ghost(store)
    checkpoint = checkpoint_of(
        job,
        seg(1, 0),
        seg(2, 3000),
        resume_at=60.0,
        total_s=122.046,
        metadata={"model": "large-v3"},
    )
    await store.save_checkpoint(checkpoint, fence=begin.fence, base=0, worker="g", event={})
    engine = FakeTranscriber()
    async with running(Worker(fast, redis, engine)):
        with anyio.fail_after(20):
            result = await client.wait(job_id)
    assert result.resumed_from is None and engine.requests[0].clip_start is None
    assert [s.text for s in result.segments] == [f" window {n}" for n in range(5)]


async def test_take_starts_submitted_jobs_and_leaves_the_rest(
    fast: Settings, redis: RedisClient
) -> None:
    """The read-and-start fast path starts what `Client` submitted; a plain XADD and a
    malformed entry come back unstarted, for the worker to parse and begin (or reject)."""
    client = Client(redis, fast)
    store = Store(redis, fast)
    await store.ensure_group()
    submitted = await client.submit(str(HELLO), job_id="taken-1")
    plain = await redis.xadd(store.keys.stream, {"audio": str(HELLO), "job_id": "plain-1"})
    junk = await redis.xadd(store.keys.stream, {"nothing": "here"})
    taken = await store.take("w-1", 10)
    assert [entry for entry, _, _ in taken] == [
        (await client.status(submitted)).entry,
        plain.decode(),
        junk.decode(),
    ]
    (_, fields, begun), (_, _, plain_begun), (_, _, junk_begun) = taken
    assert fields[b"job_id"] == b"taken-1"
    assert begun is not None and begun.outcome is BeginOutcome.OK
    assert begun.fence > 0
    assert (begun.attempts, begun.deliveries, begun.checkpoint) == (1, 1, False)
    assert plain_begun is None and junk_begun is None
    status = await client.status(submitted)
    assert status.state is JobState.RUNNING and status.worker == "w-1"
    # The plain entry is this consumer's now: the batch begin starts it and files its record.
    job = Job.from_fields(taken[1][1], plain.decode())
    [started] = await store.begin_many(
        "w-1", [(plain.decode(), job.job_id, job.digest(), decode_fields(taken[1][1])[0])]
    )
    assert started.outcome is BeginOutcome.OK
    assert (await client.status("plain-1")).state is JobState.RUNNING
    assert await store.take("w-1", 10) == []


async def test_batched_commits_are_fenced_one_by_one(fast: Settings, redis: RedisClient) -> None:
    client = Client(redis, fast)
    store = Store(redis, fast)
    await store.ensure_group()
    ids = [await client.submit(str(HELLO), job_id=f"batch-{n}") for n in range(3)]
    taken = await store.take("w-1", 10)
    commits = []
    for (entry_id, _, begun), job_id in zip(taken, ids, strict=True):
        assert begun is not None
        result = Transcript(
            job_id=job_id, language="en", language_probability=1.0, duration=1.0, segments=(),
            model="m",
        )  # fmt: skip
        # The second one's token is stale: only it must be refused.
        fence = begun.fence + (1 if job_id == "batch-1" else 0)
        commits.append(Commit(result, fence, entry_id, "w-1", {}))
    assert await store.commit_many(commits) == [True, False, True]
    states = [(await client.status(j)).state for j in ids]
    assert states == [JobState.COMPLETED, JobState.RUNNING, JobState.COMPLETED]
    assert await store.result("batch-1") is None
    assert [r.job_id for r in [await store.result(j) for j in ("batch-0", "batch-2")] if r] == [
        "batch-0",
        "batch-2",
    ]


async def test_release_with_a_delay_is_not_reclaimed_before_it(
    fast: Settings, redis: RedisClient
) -> None:
    """A job handed back with a delay (its model's breaker is open) is reclaimed once the delay
    has passed, not at once and round and round meanwhile."""
    client = Client(redis, fast)
    job_id = await client.submit(HELLO)
    store = Store(redis, fast)
    entry_id, _, begun = await ghost(store, "w-open")
    assert await store.release(
        job_id, entry_id=entry_id, fence=begun.fence, consumer="w-open", charge=False,
        reason="breaker_open", delay=0.4,
    )  # fmt: skip
    assert (await store.autoclaim("w-other", "0-0", 10)).entries == []
    await anyio.sleep(0.5)
    assert [e for e, _ in (await store.autoclaim("w-other", "0-0", 10)).entries] == [entry_id]
    assert (await client.status(job_id)).attempts == 0
