"""Roles: the ACL users of deploy/redis/users.conf on a real server. Each does what its component
needs, and each forgery its role does not need is refused by Redis itself."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from redis.asyncio import Redis
from redis.exceptions import NoPermissionError, ResponseError

from runner.checkpoint import Checkpoint, Stage
from runner.connection import open_redis
from runner.dead import DeadLetters
from runner.errors import ConfigError, RateLimited
from runner.job import JobState
from runner.keys import GROUP, Keys
from runner.producer import Client
from runner.settings import Settings
from runner.store import Store, load_script
from runner.transcript import Segment, Transcript
from runner.worker import Worker

from .conftest import FIXTURES, RedisClient
from .fakes import FakeTranscriber
from .helpers import ROOT, burst, run_cli, runner_env, running, until
from .redis_server import RedisServer

USERS = ROOT / "deploy" / "redis" / "users.conf"
SCRIPTS = ROOT / "runner" / "lua"
HELLO = FIXTURES / "hello.wav"
#: The prefix the shipped rules name.
PREFIX = "{runner}"
KEYS = Keys(PREFIX)
#: The per-producer user that users.conf gives as an example (commented out there).
ACME = "runner-producer-acme"
PASSWORDS = {
    "worker": "w0rker-r0le",
    "operator": "0perator-r0le",
    "submitter": "subm1tter-r0le",
    "producer": "pr0ducer-r0le",
    "acme": "acme-r0le",
}
#: A running job, with a checkpoint; its record, entry and keys are what forgeries aim at.
VICTIM = "victim"
#: An upload by another producer, not yet submitted.
UPLOAD = KEYS.audio("other-upload")


def _user(role: str) -> str:
    return ACME if role == "acme" else f"runner-{role}"


def _url(server: RedisServer, role: str) -> str:
    return f"redis://{_user(role)}:{PASSWORDS[role]}@127.0.0.1:{server.port}/0"


def _as(settings: Settings, server: RedisServer, role: str) -> Settings:
    return settings.with_(redis_url=_url(server, role), prefix=PREFIX)


@pytest.fixture
def roles(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server with the shipped users (passwords filled in) and the example per-producer
    user enabled. DEBUG is enabled, so that only the ACL stands in its way."""
    conf = USERS.read_text().replace(f"# user {ACME} ", f"user {ACME} ")
    for role, password in PASSWORDS.items():
        conf = conf.replace(f">CHANGE-ME-{role} ", f">{password} ")
    users = [line for line in conf.splitlines() if line.startswith("user ")]
    assert len(users) == 6 and not any("CHANGE-ME" in line for line in users)
    path = tmp_path / "users.conf"
    path.write_text(conf)
    server = RedisServer(
        tmp_path / "roles", extra=("--include", str(path), "--enable-debug-command", "yes")
    )
    server.start()
    yield server
    server.stop()


@asynccontextmanager
async def _connect(server: RedisServer, role: str) -> AsyncIterator[RedisClient]:
    # A timeout, so that a script that loops forever fails the test instead of hanging it.
    client: RedisClient = Redis.from_url(_url(server, role), protocol=2, socket_timeout=10)
    try:
        yield client
    finally:
        await client.aclose()


async def _seed(server: RedisServer) -> dict[str, str]:
    """A running job with a checkpoint, a finished job's result, a dead letter, an event, another
    producer's upload, and every script loaded (as the worker would). Returns the placeholders
    the forgeries name: the victim's entry id and each script's SHA."""
    found: dict[str, str] = {}
    async with _connect(server, "worker") as worker:
        await worker.xgroup_create(KEYS.stream, GROUP, id="0", mkstream=True)
        entry = (await worker.xadd(KEYS.stream, {"job_id": VICTIM, "audio": str(HELLO)})).decode()
        await worker.xreadgroup(GROUP, "w1", {KEYS.stream: ">"}, count=1)
        record = {"state": "running", "fence": 1, "attempts": 1, "entry": entry, "worker": "w1"}
        await worker.hset(KEYS.job(VICTIM), mapping=record)
        await worker.hset(KEYS.entries, entry, VICTIM)
        header = {"fence": 1, "stage": "transcribing", "resume_at": "30.0", "segments": 1}
        await worker.hset(KEYS.checkpoint(VICTIM), mapping=header)
        await worker.rpush(KEYS.checkpoint_segments(VICTIM), json.dumps({"text": "right"}))
        await worker.set(KEYS.result("done"), json.dumps({"text": "right"}))
        await worker.xadd(KEYS.dead, {"job_id": "gone", "reason": "max_deliveries"})
        await worker.xadd(KEYS.events, {"type": "job.started", "job_id": VICTIM})
        for path in SCRIPTS.glob("*.lua"):
            if path.stem != "lib":
                script = load_script(worker, path.stem)
                await worker.script_load(script.script)
                found[f"SHA:{path.stem}"] = script.sha
        found["ENTRY"] = entry
    async with _connect(server, "producer") as producer:
        await producer.set(UPLOAD, HELLO.read_bytes())
    return found


async def _snapshot(server: RedisServer) -> list[Any]:
    """Everything the forgeries aim at, read as the worker."""
    async with _connect(server, "worker") as worker, worker.pipeline(transaction=False) as pipe:
        pipe.hgetall(KEYS.job(VICTIM))
        pipe.hgetall(KEYS.checkpoint(VICTIM))
        pipe.lrange(KEYS.checkpoint_segments(VICTIM), 0, -1)
        pipe.get(KEYS.result(VICTIM))
        pipe.get(KEYS.result("done"))
        pipe.get(UPLOAD)
        pipe.type(KEYS.stream)
        pipe.xrange(KEYS.stream)
        pipe.xpending(KEYS.stream, GROUP)
        pipe.xinfo_groups(KEYS.stream)
        pipe.xrange(KEYS.dead)
        pipe.xrange(KEYS.events)
        pipe.hgetall(KEYS.entries)
        pipe.hgetall(KEYS.counts)
        pipe.zrange(KEYS.workers, 0, -1)
        return list(await pipe.execute())


def _resolve(command: tuple[str, ...], found: dict[str, str]) -> list[str]:
    return [found.get(part, part) for part in command]


_FORGED = json.dumps({"job_id": VICTIM, "text": "forged"})

#: Forgeries refused to producers and submitters alike.
COMMON: dict[str, tuple[str, ...]] = {
    "set-result": ("SET", KEYS.result(VICTIM), _FORGED),
    "hset-checkpoint-header": ("HSET", KEYS.checkpoint(VICTIM), "resume_at", "600.0"),
    "del-checkpoint-header": ("DEL", KEYS.checkpoint(VICTIM)),
    "rpush-checkpoint-segments": ("RPUSH", KEYS.checkpoint_segments(VICTIM), _FORGED),
    "xadd-dead": ("XADD", KEYS.dead, "*", "job_id", VICTIM, "reason", "forged"),
    "get-upload": ("GET", UPLOAD),
    "getrange-upload": ("GETRANGE", UPLOAD, "0", "-1"),
    "strlen-upload": ("STRLEN", UPLOAD),
    "set-get-upload": ("SET", UPLOAD, "replaced", "GET"),
    "eval-loop": ("EVAL", "while true do end", "0"),
    "eval-harmless": ("EVAL", "return 1", "0"),
    "script-load": ("SCRIPT", "LOAD", "return 1"),
    "script-flush": ("SCRIPT", "FLUSH"),
    "function-load": (
        "FUNCTION",
        "LOAD",
        "#!lua name=forged\nredis.register_function('f', function() return 1 end)",
    ),
    "fcall": ("FCALL", "f", "0"),
    "xreadgroup": (
        "XREADGROUP",
        "GROUP",
        GROUP,
        "thief",
        "COUNT",
        "1",
        "STREAMS",
        KEYS.stream,
        ">",
    ),
    "xack": ("XACK", KEYS.stream, GROUP, "ENTRY"),
    "xdel": ("XDEL", KEYS.stream, "ENTRY"),
    "xclaim": ("XCLAIM", KEYS.stream, GROUP, "thief", "0", "ENTRY"),
    "xautoclaim": ("XAUTOCLAIM", KEYS.stream, GROUP, "thief", "0", "0-0"),
    "xpending": ("XPENDING", KEYS.stream, GROUP),
    "xrange-jobs": ("XRANGE", KEYS.stream, "-", "+"),
    "xtrim-jobs": ("XTRIM", KEYS.stream, "MAXLEN", "0"),
    "xgroup-destroy": ("XGROUP", "DESTROY", KEYS.stream, GROUP),
    "set-over-the-stream": ("SET", KEYS.stream, "gone"),
    "del-record": ("DEL", KEYS.job(VICTIM)),
    "set-record": ("SET", KEYS.job("new"), "x"),
    "xadd-outside-the-jobs-stream": ("XADD", KEYS.job("new"), "*", "a", "b"),
    "del-stream": ("DEL", KEYS.stream),
    "expire-record": ("EXPIRE", KEYS.job(VICTIM), "1"),
    "liveness": ("HSET", KEYS.worker("ghost"), "busy", "0"),
    "zadd-workers": ("ZADD", KEYS.workers, "1", "ghost"),
    "outside-the-prefix": ("SET", "elsewhere", "x"),
    "keys": ("KEYS", "*"),
    "scan": ("SCAN", "0"),
    "flushall": ("FLUSHALL",),
    "flushdb": ("FLUSHDB",),
    "config-get": ("CONFIG", "GET", "*"),
    "config-set": ("CONFIG", "SET", "maxmemory-policy", "allkeys-lru"),
    "debug": ("DEBUG", "SLEEP", "0"),
    "acl-setuser": ("ACL", "SETUSER", "runner-producer", "+@all", "~*"),
    "shutdown": ("SHUTDOWN", "NOSAVE"),
}

#: Forgeries refused to producers, which a submitter's script needs (or its waiting does).
PRODUCER_ONLY: dict[str, tuple[str, ...]] = {
    "hset-record-state": ("HSET", KEYS.job(VICTIM), "state", "completed"),
    "hset-record-fence": ("HSET", KEYS.job(VICTIM), "fence", "99"),
    "hgetall-record": ("HGETALL", KEYS.job(VICTIM)),
    "hgetall-checkpoint": ("HGETALL", KEYS.checkpoint(VICTIM)),
    "get-result": ("GET", KEYS.result("done")),
    "xadd-events": ("XADD", KEYS.events, "*", "type", "job.completed", "job_id", VICTIM),
    "xread-events": ("XREAD", "STREAMS", KEYS.events, "0-0"),
    "xrevrange-events": ("XREVRANGE", KEYS.events, "+", "-"),
    "hset-entries": ("HSET", KEYS.entries, "0-1", VICTIM),
    "hincrby-counts": ("HINCRBY", KEYS.counts, "completed", "1"),
    "zadd-rate-limit": ("ZADD", KEYS.rate("someone"), "1", "x"),
    "evalsha-enqueue": ("EVALSHA", "SHA:enqueue", "0"),
    "evalsha-commit": (
        "EVALSHA",
        "SHA:commit",
        "4",
        KEYS.stream,
        KEYS.events,
        KEYS.entries,
        KEYS.counts,
        GROUP,
        "60",
        "100",
        PREFIX,
        "1",
        "ENTRY",
        VICTIM,
        "thief",
        _FORGED,
        "{}",
    ),
    "evalsha-event": (
        "EVALSHA",
        "SHA:event",
        "1",
        KEYS.events,
        "100",
        "job.completed",
        VICTIM,
        "thief",
        "{}",
    ),
}

PRODUCER_FORGERIES = {**COMMON, **PRODUCER_ONLY}


@pytest.mark.parametrize("command", list(PRODUCER_FORGERIES.values()), ids=list(PRODUCER_FORGERIES))
async def test_producer_forgeries_are_refused(roles: RedisServer, command: tuple[str, ...]) -> None:
    """The untrusted producer's forgery is refused with NOPERM and changes nothing."""
    found = await _seed(roles)
    before = await _snapshot(roles)
    async with _connect(roles, "producer") as producer:
        with pytest.raises(NoPermissionError):
            await producer.execute_command(*_resolve(command, found))
    assert await _snapshot(roles) == before


@pytest.mark.parametrize("command", list(COMMON.values()), ids=list(COMMON))
async def test_submitter_forgeries_are_refused(
    roles: RedisServer, command: tuple[str, ...]
) -> None:
    """A submitter's forgery that needs no script-level trust is refused and changes nothing."""
    found = await _seed(roles)
    before = await _snapshot(roles)
    async with _connect(roles, "submitter") as submitter:
        with pytest.raises(NoPermissionError):
            await submitter.execute_command(*_resolve(command, found))
    assert await _snapshot(roles) == before


_SEGMENT = Segment(id=1, seek=0, start=0.0, end=30.0, text=" forged", tokens=(1,))
_TRANSCRIPT = Transcript(VICTIM, "en", 1.0, 30.0, (_SEGMENT,), model="fake")
_CHECKPOINT = Checkpoint(VICTIM, "digest", Stage.TRANSCRIBING, 30.0, 30.0, 60.0, "en", 1.0,
                         (_SEGMENT,))  # fmt: skip

#: The worker's and the operator's scripts, called through the store as they call them.
SCRIPT_CALLS: dict[str, Callable[[Store, str], Awaitable[object]]] = {
    "commit": lambda s, e: s.commit(_TRANSCRIPT, fence=1, entry_id=e, worker="w", event={}),
    "renew": lambda s, e: s.renew("w1", [(VICTIM, e, 1)]),
    "release": lambda s, e: s.release(
        VICTIM, entry_id=e, fence=1, consumer="w1", charge=False, reason="forged"
    ),
    "checkpoint": lambda s, e: s.save_checkpoint(
        _CHECKPOINT, fence=1, base=1, worker="w1", event={}
    ),
    "begin": lambda s, e: s.begin_many("w1", [(e, VICTIM, "digest", {})]),
    "take": lambda s, e: s.take("thief", 1),
    "fail": lambda s, e: s.fail(
        VICTIM, entry_id=e, fence=None, reason="forged", error="forged", worker="w", fields={}
    ),
    "cancel": lambda s, e: s.cancel(VICTIM),
    "prune": lambda s, e: s.prune_consumers(["w1"]),
    "dead-retry": lambda s, e: DeadLetters(s).retry("gone"),
    "dead-purge": lambda s, e: DeadLetters(s).purge(["gone"]),
}


@pytest.mark.parametrize("call", list(SCRIPT_CALLS.values()), ids=list(SCRIPT_CALLS))
async def test_worker_and_operator_scripts_are_refused_to_submitters(
    roles: RedisServer, settings: Settings, call: Callable[[Store, str], Awaitable[object]]
) -> None:
    """A script of the worker's or the operator's, run by a submitter, is refused (at the call
    or at the first command the submitter lacks) before it writes anything."""
    found = await _seed(roles)
    before = await _snapshot(roles)
    async with _connect(roles, "submitter") as submitter:
        store = Store(submitter, _as(settings, roles, "submitter"))
        with pytest.raises(ResponseError, match=r"no permissions|can't (run|access)"):
            await call(store, found["ENTRY"])
    assert await _snapshot(roles) == before


@pytest.mark.parametrize("role", ["worker", "operator", "acme"])
async def test_no_role_administers_the_server(roles: RedisServer, role: str) -> None:
    """Not even the trusted users may flush, reconfigure, list keys or touch other prefixes."""
    refused = {
        name: COMMON[name]
        for name in ("keys", "scan", "flushall", "flushdb", "config-get", "config-set", "debug",
                     "acl-setuser", "script-flush", "shutdown", "outside-the-prefix")
    }  # fmt: skip
    allowed = []
    async with _connect(roles, role) as client:
        for name, command in refused.items():
            try:
                await client.execute_command(*command)
            except NoPermissionError:
                continue
            allowed.append(name)
    assert allowed == []


async def test_operators_cannot_do_a_workers_work(roles: RedisServer) -> None:
    """The operator cannot read jobs off the group, claim entries or write results."""
    found = await _seed(roles)
    before = await _snapshot(roles)
    async with _connect(roles, "operator") as operator:
        for name in ("xreadgroup", "xclaim", "xautoclaim", "set-result",
                     "rpush-checkpoint-segments", "eval-harmless", "function-load"):  # fmt: skip
            with pytest.raises(NoPermissionError):
                await operator.execute_command(*_resolve(COMMON[name], found))
    assert await _snapshot(roles) == before


async def test_plain_xadd_producer_jobs_complete(roles: RedisServer, settings: Settings) -> None:
    """The untrusted producer's plain XADDs, one naming a file and one its own upload, are
    completed by a worker; the shared producer reads nothing back."""
    worker_settings = _as(settings, roles, "worker")
    upload = KEYS.audio("up-1")
    async with _connect(roles, "producer") as producer:
        by_path = (await producer.xadd(KEYS.stream, {"audio": str(HELLO)})).decode()
        assert await producer.set(upload, HELLO.read_bytes())
        await producer.xadd(KEYS.stream, {"job_id": "up-1", "audio_key": upload})
        async with open_redis(worker_settings) as redis:
            worker = await burst(worker_settings, redis, FakeTranscriber())
            assert (worker.completed, worker.failed) == (2, 0)
            store = Store(redis, worker_settings)
            for job_id in (by_path, "up-1"):
                assert (await store.status(job_id)).state is JobState.COMPLETED
                result = await store.result(job_id)
                assert result is not None and result.text == "window 0"
            assert not await redis.exists(upload)  # deleted with the job
        with pytest.raises(NoPermissionError):
            await producer.hgetall(KEYS.job("up-1"))
        with pytest.raises(NoPermissionError):
            await producer.get(KEYS.result("up-1"))


async def test_a_producer_user_reads_its_own_jobs_only(
    roles: RedisServer, settings: Settings
) -> None:
    """The example per-producer user uploads and reads back under its own name only."""
    worker_settings = _as(settings, roles, "worker")
    async with _connect(roles, "acme") as acme, _connect(roles, "producer") as producer:
        await acme.set(KEYS.audio("acme-1"), HELLO.read_bytes())
        await acme.xadd(KEYS.stream, {"job_id": "acme-1", "audio_key": KEYS.audio("acme-1")})
        with pytest.raises(NoPermissionError):
            await acme.set(KEYS.audio("other-1"), b"overwritten")
        await producer.set(KEYS.audio("other-1"), HELLO.read_bytes())
        await producer.xadd(KEYS.stream, {"job_id": "other-1", "audio_key": KEYS.audio("other-1")})
        async with open_redis(worker_settings) as redis:
            worker = await burst(worker_settings, redis, FakeTranscriber())
            assert (worker.completed, worker.failed) == (2, 0)
        client = Client(acme, _as(settings, roles, "acme"))
        assert (await client.status("acme-1")).state is JobState.COMPLETED
        assert (await client.result("acme-1")).text == "window 0"
        with pytest.raises(NoPermissionError):
            await acme.hgetall(KEYS.job("other-1"))
        with pytest.raises(NoPermissionError):
            await acme.get(KEYS.result("other-1"))
    env = runner_env(_as(settings, roles, "acme"))
    out = run_cli("status", "acme-1", env=env)
    assert out.returncode == 0 and "completed" in out.stdout, out.stderr
    out = run_cli("result", "acme-1", env=env)
    assert out.returncode == 0 and out.stdout.strip() == "window 0", out.stderr


async def test_a_submitter_cannot_submit_before_a_worker_loads_the_script(
    roles: RedisServer, settings: Settings
) -> None:
    """Before any worker has loaded the submission script, a submission fails with a clear error
    (the submitter may not load it) and queues nothing."""
    submitter_settings = _as(settings, roles, "submitter")
    async with open_redis(submitter_settings) as redis:
        client = Client(redis, submitter_settings)
        with pytest.raises(ConfigError, match="may not load the submission script") as refused:
            await client.submit(HELLO)
        assert isinstance(refused.value.__cause__, NoPermissionError)
    out = run_cli("submit", str(HELLO), env=runner_env(submitter_settings))
    assert out.returncode == 2 and "may not load the submission script" in out.stderr
    async with _connect(roles, "worker") as worker:
        assert not await worker.exists(KEYS.stream)


async def test_a_submitter_submits_and_waits(roles: RedisServer, settings: Settings) -> None:
    """With a worker running, a submitter submits (file, upload, CLI), is rate-limited, and
    waits for the results."""
    worker_settings = _as(settings, roles, "worker")
    submitter_settings = _as(settings, roles, "submitter").with_(rate_limit="3/60")
    async with (
        open_redis(worker_settings) as worker_redis,
        open_redis(submitter_settings) as redis,
    ):
        client = Client(redis, submitter_settings)
        worker = Worker(worker_settings, worker_redis, FakeTranscriber())
        enqueue = load_script(redis, "enqueue").sha
        async with running(worker):
            # Submitters may not load scripts: the worker loads the submission script for them.
            await until(lambda: _loaded(worker_redis, enqueue))
            by_path = await client.submit(HELLO, client_id="acme")
            by_upload = await client.submit(audio_bytes=HELLO.read_bytes(), client_id="acme")
            # Resubmitting an id is not counted against the limit.
            assert await client.submit(HELLO, job_id=by_path, client_id="acme") == by_path
            with anyio.fail_after(30):
                outcomes = await client.wait_all([by_path, by_upload])
            assert {o.text for o in outcomes.values()} == {"window 0"}  # type: ignore[union-attr]
            env = runner_env(submitter_settings, RUNNER_RATE_LIMIT="3/60")
            cli = partial(run_cli, "submit", "--upload", "--wait", "--timeout", "60",
                          "--client-id", "acme", str(HELLO), env=env)  # fmt: skip
            out = await anyio.to_thread.run_sync(cli)
            assert out.returncode == 0, out.stderr
            assert out.stdout.strip() == "window 0"
            with pytest.raises(RateLimited):
                await client.submit(HELLO, client_id="acme")
        assert (await client.status(by_upload)).state is JobState.COMPLETED
        assert not await worker_redis.exists(KEYS.audio(by_upload))


async def _loaded(redis: RedisClient, sha: str) -> bool:
    return bool((await redis.script_exists(sha))[0])


async def test_an_operator_retries_cancels_and_purges_dead_letters(
    roles: RedisServer, settings: Settings, tmp_path: Path
) -> None:
    """An operator lists dead letters, retries one once its cause is fixed, retries and cancels
    another, purges the third, and reads status, results and stats, with its own user."""
    worker_settings = _as(settings, roles, "worker")
    operator_settings = _as(settings, roles, "operator")
    env = runner_env(operator_settings)
    late = tmp_path / "late.wav"
    async with _connect(roles, "producer") as producer:
        await producer.xadd(KEYS.stream, {"job_id": "fix-me", "audio": str(late)})
        await producer.xadd(KEYS.stream, {"job_id": "drop-me", "audio": str(tmp_path / "no.wav")})
        await producer.set(KEYS.audio("purge-me"), b"not audio")
        await producer.xadd(
            KEYS.stream, {"job_id": "purge-me", "audio_key": KEYS.audio("purge-me")}
        )
    async with open_redis(worker_settings) as worker_redis:
        assert (await burst(worker_settings, worker_redis, FakeTranscriber())).failed == 3
        out = run_cli("dead", "list", env=env)
        assert out.returncode == 0 and "3 dead letters" in out.stdout, out.stderr
        late.write_bytes(HELLO.read_bytes())
        async with open_redis(operator_settings) as redis:
            letters = DeadLetters(Store(redis, operator_settings))
            found = sorted(d.job_id for d in await letters.entries())
            assert found == ["drop-me", "fix-me", "purge-me"]
            assert await letters.retry("fix-me") == "fix-me"
        out = run_cli("dead", "retry", "drop-me", env=env)
        assert out.returncode == 0 and out.stdout == "retried drop-me\n", out.stderr
        out = run_cli("cancel", "drop-me", env=env)
        assert out.returncode == 0 and out.stdout == "cancelled\n", out.stderr
        worker = await burst(worker_settings, worker_redis, FakeTranscriber())
        assert (worker.completed, worker.failed) == (1, 0)
        out = run_cli("result", "fix-me", env=env)
        assert out.returncode == 0 and out.stdout.strip() == "window 0", out.stderr
        out = run_cli("watch", "fix-me", env=env)
        assert out.returncode == 0 and "completed" in out.stdout, out.stderr
        out = run_cli("status", "drop-me", "--json", env=env)
        assert out.returncode == 0 and json.loads(out.stdout)["state"] == "cancelled", out.stderr
        out = run_cli("stats", "--json", env=env)
        assert out.returncode == 0, out.stderr
        jobs = json.loads(out.stdout)["jobs"]
        assert (jobs["completed"], jobs["cancelled"]) == (1, 1)
        out = run_cli("dead", "purge", env=env)
        assert out.returncode == 0 and out.stdout == "purged 1\n", out.stderr
        assert not await worker_redis.exists(KEYS.audio("purge-me"))
        assert await worker_redis.xlen(KEYS.dead) == 0


def test_the_file_ships_four_roles_and_the_default_user_off() -> None:
    """users.conf defines the default user (off) and the four roles, and nothing else."""
    users = {
        m.group(1): m.group(2)
        for m in re.finditer(r"^user (\S+) (\S+)", USERS.read_text(), flags=re.MULTILINE)
    }
    assert users == {
        "default": "off",
        "runner-worker": "on",
        "runner-operator": "on",
        "runner-submitter": "on",
        "runner-producer": "on",
    }
