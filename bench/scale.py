"""Scale: submitting 100,000 jobs, and what a reclaim pass costs as the stream grows."""

from __future__ import annotations

import time
import uuid
from typing import Any

import anyio
from redis.asyncio import Redis

from runner.job import Job
from runner.keys import GROUP, Keys
from runner.settings import Settings
from runner.store import Store

from .common import Spread, redis_server

SUBMIT = 100_000
PENDING = 1_000


async def submission_rate(url: str, n: int) -> float:
    settings = Settings(redis_url=url, prefix=f"{{sb-{uuid.uuid4().hex[:8]}}}", rate_limit="0")
    redis: Any = Redis.from_url(url, protocol=2)
    store = Store(redis, settings)
    jobs = [(Job(job_id=f"j{i}", audio="/data/a.wav", language="en"), b"") for i in range(n)]
    began = time.perf_counter()
    for start in range(0, n, 1000):
        await store.enqueue_many(jobs[start : start + 1000])
    elapsed = time.perf_counter() - began
    await redis.delete(*[k async for k in redis.scan_iter(match=f"{settings.prefix}:*")])
    await redis.aclose()
    return n / elapsed


async def reclaim_pass(url: str, stream_length: int, pending: int) -> float:
    """Seconds for one full reclaim pass (cursor followed to the end) that claims `pending`
    entries out of a stream of `stream_length`."""
    settings = Settings(redis_url=url, prefix=f"{{rc-{uuid.uuid4().hex[:8]}}}", lease_seconds=60.0)
    redis: Any = Redis.from_url(url, protocol=2)
    store = Store(redis, settings)
    keys = Keys(settings.prefix)
    await store.ensure_group()
    for start in range(0, stream_length, 5000):
        async with redis.pipeline(transaction=False) as pipe:
            for i in range(start, min(stream_length, start + 5000)):
                pipe.xadd(keys.stream, {"audio": "/data/a.wav", "job_id": f"j{i}"})
            await pipe.execute()
    # A dead worker holds `pending` entries, idle past the lease.
    await redis.xreadgroup(GROUP, "dead-worker", {keys.stream: ">"}, count=pending)
    ids = [p["message_id"] for p in await redis.xpending_range(
        keys.stream, GROUP, min="-", max="+", count=pending)]  # fmt: skip
    await redis.xclaim(keys.stream, GROUP, "dead-worker", 0, ids, idle=120_000, justid=True)
    began = time.perf_counter()
    cursor, claimed = "0-0", 0
    while True:
        got = await store.autoclaim("rescuer", cursor, 100)
        claimed += len(got.entries)
        cursor = got.cursor
        if cursor == "0-0":
            break
    elapsed = time.perf_counter() - began
    assert claimed == pending, claimed
    await redis.delete(keys.stream)
    await redis.aclose()
    return elapsed


def run(repetitions: int = 3) -> dict[str, Any]:
    rates, small, large = [], [], []
    with redis_server() as server:
        for rep in range(repetitions):
            rates.append(anyio.run(submission_rate, server.url, SUBMIT))
            small.append(anyio.run(reclaim_pass, server.url, 10_000, PENDING))
            large.append(anyio.run(reclaim_pass, server.url, 100_000, PENDING))
            print(f"  rep {rep + 1}: submit {rates[-1]:.0f}/s, reclaim pass "
                  f"{small[-1] * 1000:.1f} ms (10k) vs {large[-1] * 1000:.1f} ms (100k)",
                  flush=True)  # fmt: skip
    return {
        "submit_jobs": SUBMIT,
        "submit_per_s": Spread.of(rates).to_dict(),
        "pending": PENDING,
        "reclaim_ms_10k": Spread.of([x * 1000 for x in small]).to_dict(),
        "reclaim_ms_100k": Spread.of([x * 1000 for x in large]).to_dict(),
        "ratio": Spread.of([b / a for a, b in zip(small, large, strict=True)]).to_dict(),
    }
