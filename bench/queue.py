"""Queue overhead: no-op jobs through the runner, against a raw redis-py Streams loop and peers.

Throughput: a backlog of BACKLOG jobs is queued first, then one consumer process drains it with
CONCURRENCY jobs at once; jobs/s = BACKLOG / drain time. Latency: LATENCY_JOBS jobs sent one at
a time to an idle consumer; submit-to-completed = the time the system records the job done
(runner: the commit's server time; raw loop and peers: when the no-op returns) minus the time
just before the submit call. All systems use the same private Redis, one after another.
"""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Any

import anyio
from redis.asyncio import Redis

from runner.keys import GROUP, Keys
from runner.producer import Client
from runner.settings import Settings
from runner.worker import Worker

from .common import Spread, redis_server
from .noop import NoopTranscriber, noop_audio

BACKLOG = 20_000
CONCURRENCY = 32
LATENCY_JOBS = 300


def _settings(url: str) -> Settings:
    return Settings(
        redis_url=url,
        prefix=f"{{qb-{uuid.uuid4().hex[:8]}}}",
        concurrency=CONCURRENCY,
        rate_limit="0",
        block_ms=1000,
        log_level="warning",
    )


async def _runner_throughput(url: str, backlog: int) -> float:
    settings = _settings(url)
    redis: Any = Redis.from_url(url, protocol=2)
    client = Client(redis, settings)
    async with anyio.create_task_group() as tg:
        limiter = anyio.Semaphore(64)

        async def one(n: int) -> None:
            async with limiter:
                await client.submit("/x.wav", job_id=f"j{n}")

        for n in range(backlog):
            tg.start_soon(one, n)
    worker = Worker(settings, redis, NoopTranscriber(), burst=True, load_audio=noop_audio)
    began = time.perf_counter()
    await worker.run()
    elapsed = time.perf_counter() - began
    assert worker.completed == backlog, worker.completed
    await redis.aclose()
    return backlog / elapsed


async def _runner_latency(url: str, jobs: int) -> list[float]:
    settings = _settings(url)
    redis: Any = Redis.from_url(url, protocol=2)
    client = Client(redis, settings)
    keys = Keys(settings.prefix)
    worker = Worker(settings, redis, NoopTranscriber(), load_audio=noop_audio)
    sent: dict[str, float] = {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        await anyio.sleep(0.5)
        for n in range(jobs):
            job_id = f"l{n}"
            sent[job_id] = time.time()
            await client.submit("/x.wav", job_id=job_id)
            # Polling on purpose: the same tight loop for every system measured.
            while (await redis.hget(keys.job(job_id), "state")) != b"completed":  # noqa: ASYNC110
                await anyio.sleep(0.0005)
        worker.stop()
    done = {}
    for _, f in await redis.xrange(keys.events):
        if f[b"type"] == b"job.completed":
            done[f[b"job_id"].decode()] = float(f[b"time"])
    await redis.aclose()
    return [(done[j] - t) * 1000 for j, t in sent.items()]


async def _raw_throughput(url: str, backlog: int) -> float:
    redis: Any = Redis.from_url(url, protocol=2)
    stream = f"raw-{uuid.uuid4().hex[:8]}"
    await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    async with redis.pipeline(transaction=False) as pipe:
        for n in range(backlog):
            pipe.xadd(stream, {"audio": "/x.wav", "job_id": f"j{n}"})
        await pipe.execute()
    done = 0
    began = time.perf_counter()
    while done < backlog:
        reply = await redis.xreadgroup(GROUP, "c", {stream: ">"}, count=CONCURRENCY, block=100)
        entries = reply[0][1] if reply else []

        async def ack(entry_id: bytes) -> None:
            await redis.xack(stream, GROUP, entry_id)

        async with anyio.create_task_group() as tg:
            for entry_id, _ in entries:
                tg.start_soon(ack, entry_id)
        done += len(entries)
    elapsed = time.perf_counter() - began
    await redis.delete(stream)
    await redis.aclose()
    return backlog / elapsed


async def _raw_latency(url: str, jobs: int) -> list[float]:
    redis: Any = Redis.from_url(url, protocol=2)
    consumer_redis: Any = Redis.from_url(url, protocol=2)
    stream = f"raw-{uuid.uuid4().hex[:8]}"
    await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    sent: dict[bytes, float] = {}
    done: dict[bytes, float] = {}

    async def consume() -> None:
        while len(done) < jobs:
            reply = await consumer_redis.xreadgroup(GROUP, "c", {stream: ">"}, count=1, block=100)
            for entry_id, fields in reply[0][1] if reply else []:
                await consumer_redis.xack(stream, GROUP, entry_id)
                done[fields[b"job_id"]] = time.time()

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        for n in range(jobs):
            job_id = f"l{n}".encode()
            sent[job_id] = time.time()
            await redis.xadd(stream, {"audio": "/x.wav", "job_id": job_id})
            while job_id not in done:  # noqa: ASYNC110
                await anyio.sleep(0.0005)
    await redis.delete(stream)
    await redis.aclose()
    await consumer_redis.aclose()
    return [(done[j] - t) * 1000 for j, t in sent.items()]


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def _peer(name: str, url: str, mode: str, n: int) -> dict[str, Any] | None:
    """Run one peer's script in its own virtual environment; None if it cannot be set up."""
    from .peers import run_peer

    return run_peer(name, url, mode, n, CONCURRENCY)


def run(repetitions: int = 3, *, backlog: int = BACKLOG, latency_jobs: int = LATENCY_JOBS,
        peers: tuple[str, ...] = ("arq", "saq", "taskiq", "streaq")) -> dict[str, Any]:  # fmt: skip
    systems: dict[str, dict[str, list[float]]] = {}

    def record(name: str, key: str, value: float | list[float]) -> None:
        entry = systems.setdefault(name, {"jobs_per_s": [], "p50_ms": [], "p99_ms": []})
        if isinstance(value, list):
            entry["p50_ms"].append(statistics.median(value))
            entry["p99_ms"].append(_percentile(value, 99))
        else:
            entry[key].append(value)

    with redis_server() as server:
        for rep in range(repetitions):
            raw = "raw redis-py loop"
            record(raw, "jobs_per_s", anyio.run(_raw_throughput, server.url, backlog))
            record(raw, "", anyio.run(_raw_latency, server.url, latency_jobs))
            record("runner", "jobs_per_s", anyio.run(_runner_throughput, server.url, backlog))
            record("runner", "", anyio.run(_runner_latency, server.url, latency_jobs))
            for peer in peers:
                got = _peer(peer, server.url, "throughput", backlog)
                if got is not None:
                    record(peer, "jobs_per_s", got["jobs_per_s"])
                got = _peer(peer, server.url, "latency", latency_jobs)
                if got is not None:
                    record(peer, "", got["latencies_ms"])
            line = ", ".join(
                f"{name} {v['jobs_per_s'][-1]:.0f}/s p50 {v['p50_ms'][-1]:.2f} ms"
                for name, v in systems.items()
                if v["jobs_per_s"] and v["p50_ms"]
            )
            print(f"  rep {rep + 1}: {line}", flush=True)
        redis_version = server.version
    return {
        "backlog": backlog,
        "concurrency": CONCURRENCY,
        "latency_jobs": latency_jobs,
        "redis": redis_version,
        "systems": {
            name: {k: Spread.of(v).to_dict() for k, v in values.items() if v}
            for name, values in systems.items()
        },
        "targets": {"vs_fastest_peer": 1.5, "vs_raw": 0.6, "p50_ms": 2.0},
    }
