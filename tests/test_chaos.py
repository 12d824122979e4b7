"""Chaos: poison entries among good jobs while workers are killed and frozen and Redis restarts."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from redis.asyncio import Redis
from redis.exceptions import BusyLoadingError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from runner.keys import GROUP, Keys
from runner.producer import Client
from runner.settings import Settings

from .conftest import FIXTURES, RedisClient
from .helpers import runner_env, until, worker_process
from .redis_server import RedisServer
from .wer import wer

pytestmark = [pytest.mark.model, pytest.mark.slow]

TEXTS: dict[str, str] = json.loads((FIXTURES / "texts.json").read_text())
SHORT = ("hello.wav", "meeting.wav", "weather.wav")
HELLO = FIXTURES / "hello.wav"
WEATHER = FIXTURES / "weather.wav"
LEASE_S = 2.5
#: What a Redis being stopped or started looks like to the test's own client.
DOWN = (RedisConnectionError, RedisTimeoutError, BusyLoadingError, ConnectionError)
TERMINAL_EVENTS = (b"job.completed", b"job.failed", b"job.dead", b"entry.rejected")


@dataclass
class Poison:
    """One bad entry, the reason it must be dead-lettered with and its one terminal event."""

    name: str
    fields: dict[str, Any]
    reason: str
    #: `job.failed`, or `entry.rejected` where the id's record is not this entry's job.
    event: str = "job.failed"
    #: Whether the job has a record to say why (not when its record's name holds foreign data).
    recorded: bool = True
    #: Set when it is added: the stream entry id, and the job id it is filed under.
    entry: str = ""
    job_id: str = ""


@dataclass
class Good:
    """One good job: which fixture it transcribes and the id it runs under."""

    fixture: str
    job_id: str = ""


def poisons(tmp: Path, keys: Keys, shadowed: str, reused: str, upload: str) -> list[Poison]:
    """Thirteen kinds of poison. `shadowed`, `reused` and `upload` are good jobs' ids."""
    audio = tmp / "audio"
    audio.mkdir()
    (audio / "notes.wav").write_text("these are meeting notes, not a recording\n" * 50)
    (audio / "cut.wav").write_bytes(HELLO.read_bytes()[:40_000])  # its header says 126 KB
    os.mkfifo(audio / "pipe.wav")
    many = {"audio": str(HELLO), **{f"note{n}": "x" for n in range(39)}}
    return [
        Poison("nul", {"audio": b"/x/a.wav\x00.txt"}, "invalid_field"),
        Poison("non-utf8", {"audio": b"/data/\xff\xfe\xfd.wav"}, "invalid_encoding"),
        Poison(
            "shadow-id",
            {"job_id": f"{shadowed}:segments", "audio": str(audio / "gone.wav")},
            "missing_file",
        ),
        Poison(
            "reused-id",
            {"job_id": reused, "audio": str(WEATHER)},
            "job_id_conflict",
            event="entry.rejected",
        ),
        Poison(
            "planted-key",
            {"job_id": "poison-planted", "audio": str(HELLO)},
            "key_conflict",
            recorded=False,
        ),
        Poison(
            "foreign-key",
            {"job_id": "poison-foreign", "audio_key": keys.audio(upload)},
            "foreign_key",
        ),
        Poison("40-fields", many, "too_many_fields"),
        Poison("70-kb-field", {"audio": str(HELLO), "note": "x" * 70_000}, "field_too_large"),
        Poison("missing-file", {"audio": str(audio / "missing.wav")}, "missing_file"),
        Poison("outside-roots", {"audio": "/etc/hostname"}, "outside_roots"),
        Poison("text-file", {"audio": str(audio / "notes.wav")}, "undecodable"),
        Poison("fifo", {"audio": str(audio / "pipe.wav")}, "not_a_file"),
        Poison("lying-header", {"audio": str(audio / "cut.wav")}, "truncated"),
    ]


async def add_poison(redis: RedisClient, keys: Keys, poison: Poison) -> None:
    poison.entry = (await redis.xadd(keys.stream, poison.fields)).decode()
    given = poison.fields.get("job_id")
    poison.job_id = given if isinstance(given, str) else poison.entry


async def add_good(client: Client, redis: RedisClient, keys: Keys, n: int, **kw: Any) -> Good:
    """Good job number `n`: every third one by plain XADD, the others through `Client`."""
    good = Good(SHORT[n % len(SHORT)])
    path = FIXTURES / good.fixture
    if n % 3 == 2 and not kw:
        good.job_id = (await redis.xadd(keys.stream, {"audio": str(path)})).decode()
    else:
        good.job_id = await client.submit(path, language="en" if n % 2 else None, **kw)
    return good


async def held_by(redis: RedisClient, keys: Keys, pid: int) -> list[str]:
    """The stream entries pending for the worker process `pid` (its consumer is host-pid-xxxx)."""
    mine = f"{socket.gethostname()}-{pid}-"
    try:
        consumers = await redis.xinfo_consumers(keys.stream, GROUP)
    except ResponseError:  # no group yet
        return []
    held = []
    for consumer in consumers:
        name = consumer["name"].decode()
        if name.startswith(mine) and int(consumer["pending"]):
            rows = await redis.xpending_range(
                keys.stream, GROUP, min="-", max="+", count=100, consumername=name
            )
            held += [row["message_id"].decode() for row in rows]
    return held


async def up(check: Callable[[], Awaitable[bool]]) -> bool:
    """`check`, read as False while Redis is down or loading."""
    try:
        return await check()
    except DOWN:
        return False


@dataclass
class Victim:
    """A worker stopped while a good job ran on it: its consumer, that job, its entries."""

    consumer: str
    job_id: str
    entries: list[str]


async def running_on(redis: RedisClient, keys: Keys, pid: int, ids: list[str]) -> Victim | None:
    """A job among `ids` that runs on the worker process `pid` now, if any."""
    mine = f"{socket.gethostname()}-{pid}-"
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hmget(keys.job(job_id), "state", "worker")
        replies = await pipe.execute(raise_on_error=False)
    for job_id, reply in zip(ids, replies, strict=True):
        if isinstance(reply, list) and reply[0] == b"running" and reply[1]:
            worker = reply[1].decode()
            if worker.startswith(mine):
                return Victim(worker, job_id, [])
    return None


async def stop_running(
    redis: RedisClient,
    keys: Keys,
    proc: subprocess.Popen[bytes],
    ids: list[str],
    within: float = 60,
) -> Victim:
    """SIGSTOP `proc` at a moment a good job runs on it; says which (read while stopped)."""
    deadline = anyio.current_time() + within

    async def runs() -> bool:
        return await running_on(redis, keys, proc.pid, ids) is not None

    while True:
        await until(lambda: up(runs), within=max(deadline - anyio.current_time(), 0.1))
        proc.send_signal(signal.SIGSTOP)
        victim = await running_on(redis, keys, proc.pid, ids)
        if victim is not None:
            victim.entries = await held_by(redis, keys, proc.pid)
            return victim
        proc.send_signal(signal.SIGCONT)  # it finished just now: try again


async def restart(server: RedisServer, meanwhile: Callable[[], object] = lambda: None) -> None:
    """Stop Redis (it writes its append-only file), call `meanwhile`, and start it again on the
    same port."""
    await anyio.to_thread.run_sync(server.stop)
    meanwhile()
    await anyio.sleep(0.5)
    await anyio.to_thread.run_sync(server.start)


async def started_up(log: Path) -> bool:
    """Whether the worker logging to `log` is connected and has loaded its model."""
    return '"event": "worker.started"' in await anyio.Path(log).read_text(errors="replace")


def json_lines(log: Path) -> list[dict[str, Any]]:
    lines = log.read_text(errors="replace").splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def log_problems(log: Path) -> list[str]:
    """Lines of a worker's log that show a traceback or an exception logged with one."""
    problems = []
    for line in log.read_text(errors="replace").splitlines():
        if "Traceback" in line:
            problems.append(line)
            continue
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                problems.append(line)
                continue
            if "exception" in record or "exc_info" in record:
                problems.append(line)
    return problems


def tails(logs: list[Path], lines: int = 40) -> str:
    out = []
    for log in logs:
        text = log.read_text(errors="replace").splitlines() if log.exists() else []
        out.append(f"--- {log.name} (last {lines} of {len(text)} lines)")
        out += text[-lines:]
    return "\n".join(out)


async def test_poison_among_good_jobs_survives_kills_freezes_and_redis_restarts(
    settings: Settings, tmp_path: Path
) -> None:
    """Thirteen kinds of poison mixed with twenty good jobs, while one worker is SIGKILLed and
    restarted, one is frozen past its lease and Redis restarts twice: every good job completes
    once with the right words, every poison entry is dead-lettered once with its real reason,
    nothing stays queued or pending, and no worker dies or logs a traceback."""
    server = RedisServer(tmp_path / "redis", appendonly=True)
    server.start()
    local = settings.with_(redis_url=server.url)
    keys = Keys(local.prefix)
    env = runner_env(
        local,
        RUNNER_LEASE_SECONDS=str(LEASE_S),
        RUNNER_HEARTBEAT_SECONDS="0.5",
        RUNNER_RECLAIM_SECONDS="0.5",
        RUNNER_MAX_DELIVERIES="10",
        RUNNER_CONCURRENCY="2",
        RUNNER_CPU_THREADS="1",
        RUNNER_BLOCK_MS="200",
        RUNNER_SHUTDOWN_GRACE_SECONDS="5",
    )
    logs = [tmp_path / f"{name}.log" for name in ("a", "b", "c", "a2")]
    redis: RedisClient = Redis.from_url(server.url, protocol=2)
    client = Client(redis, local)
    started = time.monotonic()
    marks: dict[str, float] = {}
    try:
        with ExitStack() as stack:
            a, b, c = (stack.enter_context(worker_process(env, log)) for log in logs[:3])
            workers = {"b": b, "c": c}

            async def alive() -> None:
                for name, proc in workers.items():
                    assert proc.poll() is None, f"worker {name} exited by itself: {proc.returncode}"

            # Wave 1: ten good jobs, seven poison entries among them.
            good = [await add_good(client, redis, keys, n) for n in range(5)]
            upload = await client.submit(audio_bytes=HELLO.read_bytes(), job_id="good-upload")
            good.append(Good("hello.wav", upload))
            good.append(await add_good(client, redis, keys, 5, job_id="good-shadowed"))
            await redis.rpush(keys.job("poison-planted"), b"not a job", b"of ours")
            bad = poisons(tmp_path, keys, "good-shadowed", good[0].job_id, upload)
            for n, poison in enumerate(bad[:7]):
                await add_poison(redis, keys, poison)
                if n % 3 == 0:
                    good.append(await add_good(client, redis, keys, 6 + n // 3))
            marks["wave 1 queued"] = time.monotonic() - started

            # A is SIGKILLed while a good job runs on it, then Redis restarts.
            killed = await stop_running(redis, keys, a, [g.job_id for g in good], within=90)
            a.kill()
            a.wait(30)
            marks["a killed"] = time.monotonic() - started
            # The replacement starts while Redis is down: it waits for it, and does not exit.
            await restart(
                server,
                lambda: workers.__setitem__(
                    "a2", stack.enter_context(worker_process(env, logs[3]))
                ),
            )
            marks["redis restarted"] = time.monotonic() - started

            # Wave 2: ten good jobs more, the six other poison entries among them.
            for n, poison in enumerate(bad[7:]):
                await add_poison(redis, keys, poison)
                good.append(await add_good(client, redis, keys, 9 + n))
            good += [await add_good(client, redis, keys, n) for n in range(15, 19)]
            assert len(good) == 20 and len(bad) == 13
            ids = [g.job_id for g in good]
            await alive()

            # B is frozen while a good job runs on it, past its lease and through a second
            # Redis restart; a peer takes its entries, then B thaws.
            await until(lambda: started_up(logs[3]), within=60)
            frozen = await stop_running(redis, keys, b, ids)
            marks["b frozen"] = time.monotonic() - started
            await restart(server)

            async def reclaimed() -> bool:
                await alive()
                return not set(frozen.entries) & set(await held_by(redis, keys, b.pid))

            await until(lambda: up(reclaimed), within=30)
            b.send_signal(signal.SIGCONT)
            marks["b thawed"] = time.monotonic() - started

            async def settled() -> bool:
                await alive()
                states = [await redis.hget(keys.job(i), "state") for i in ids]
                return (
                    all(s == b"completed" for s in states)
                    and await redis.xlen(keys.stream) == 0
                    and (await redis.xpending(keys.stream, GROUP))["pending"] == 0
                    and await redis.xlen(keys.dead) >= len(bad)
                )

            await until(lambda: up(settled), within=150)
            marks["settled"] = time.monotonic() - started
            await anyio.sleep(LEASE_S)  # a late duplicate would show up by now
            await alive()
            for proc in workers.values():
                proc.send_signal(signal.SIGTERM)
            for name, proc in workers.items():
                code = await anyio.to_thread.run_sync(proc.wait, 30)
                assert code == 0, f"worker {name} exited {code} on SIGTERM"
        marks["stopped"] = time.monotonic() - started

        await check_outcome(redis, keys, good, bad, [killed, frozen])
        assert not [
            e
            for e in json_lines(logs[1])
            if e.get("job_id") == frozen.job_id and e["event"] == "job.completed"
        ], "the thawed worker believes it completed a job a peer took over"
        for log in logs:
            assert not log_problems(log), (log.name, log_problems(log))
    except BaseException:
        print(f"timeline: {marks}")
        print(tails(logs))
        raise
    finally:
        await redis.aclose()
        server.stop()
    print(f"timeline: {marks}; killed {killed}; frozen {frozen}")


async def check_outcome(
    redis: RedisClient,
    keys: Keys,
    good: list[Good],
    bad: list[Poison],
    victims: list[Victim],
) -> None:
    """What must hold once the workers are stopped."""
    events = await redis.xrange(keys.events)
    ended = Counter(
        (f[b"job_id"].decode(), f[b"type"].decode())
        for _, f in events
        if f[b"type"] in TERMINAL_EVENTS
    )
    for victim in victims:
        # The job that ran on the killed or frozen worker was taken over and finished by
        # another worker, on a later attempt.
        of_job = [f for _, f in events if f[b"job_id"].decode() == victim.job_id]
        taken = [json.loads(f[b"data"]) for f in of_job if f[b"type"] == b"job.reclaimed"]
        assert victim.consumer in [t["from"] for t in taken], (victim, taken)
        [done] = [f for f in of_job if f[b"type"] == b"job.completed"]
        assert done[b"worker"].decode() != victim.consumer, victim
        assert int(await redis.hget(keys.job(victim.job_id), "attempts")) >= 2, victim

    texts: dict[str, set[str]] = {}
    for g in good:
        assert await redis.hget(keys.job(g.job_id), "state") == b"completed", g
        assert ended[(g.job_id, "job.completed")] == 1, (g, ended)
        assert ended[(g.job_id, "job.failed")] == ended[(g.job_id, "job.dead")] == 0, g
        raw = await redis.get(keys.result(g.job_id))
        assert raw is not None, g
        text = json.loads(raw)["text"]
        assert wer(TEXTS[g.fixture], text) < 0.2, (g, text)
        assert json.loads(await redis.get(keys.result(g.job_id)))["text"] == text
        texts.setdefault(g.fixture, set()).add(text)
    assert all(len(seen) == 1 for seen in texts.values()), texts

    letters: dict[str, list[dict[str, str]]] = {}
    for _, raw_letter in await redis.xrange(keys.dead):
        letter = {k.decode(): v.decode(errors="replace") for k, v in raw_letter.items()}
        letters.setdefault(letter["entry"], []).append(letter)
    assert sorted(letters) == sorted(p.entry for p in bad), letters.keys()
    for p in bad:
        [letter] = letters[p.entry]  # exactly one
        assert (letter["reason"], letter["job_id"]) == (p.reason, p.job_id), (p.name, letter)
        assert letter["error_class"] == "job" and letter["error"], (p.name, letter)
        own = Counter({t: n for (j, t), n in ended.items() if j == p.job_id})
        own.pop("job.completed", None)  # the good job whose id a rejected entry reused
        assert own == Counter({p.event: 1}), (p.name, own)
        if p.event == "job.failed" and p.recorded:
            record = await redis.hgetall(keys.job(p.job_id))
            assert record[b"state"] == b"failed", (p.name, record)
            assert record[b"reason"].decode() == p.reason, (p.name, record)
    assert letters[bad[6].entry][0]["truncated"] == "1", "40 fields cannot all be kept"
    # Foreign data at a job's key names is left as it was; the reused id's job is unharmed.
    assert await redis.lrange(keys.job("poison-planted"), 0, -1) == [b"not a job", b"of ours"]
    assert await redis.hget(keys.job(bad[3].job_id), "state") == b"completed"
    assert await redis.xlen(keys.stream) == 0
    assert (await redis.xpending(keys.stream, GROUP))["pending"] == 0
