"""What a deployment is doing: the queue, the workers, the totals (`runner stats`).

Workers publish a small liveness record every heartbeat (`<prefix>:worker:<name>`, expiring
after three heartbeats, indexed in the `<prefix>:workers` sorted set by last-seen time); a worker
whose record has expired is gone. Queue figures come from the stream and its consumer group;
totals from counters the scripts keep.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from redis.exceptions import ResponseError

from .keys import GROUP, Keys

__all__ = [
    "Stats",
    "WorkerInfo",
    "collect",
    "forget_worker",
    "host_identity",
    "liveness_ttl",
    "publish_liveness",
    "queue_depth",
]


def liveness_ttl(heartbeat_seconds: float) -> int:
    """Seconds a liveness record outlives its last heartbeat."""
    return max(5, int(3 * heartbeat_seconds + 1))


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """One live worker, as it last described itself."""

    name: str
    host: str
    pid: int
    version: str
    model: str
    slots: int
    busy: int
    breaker: str
    completed: int
    failed: int
    started_at: float
    last_seen: float
    jobs: list[str] = field(default_factory=list)

    @classmethod
    def from_hash(cls, raw: Mapping[bytes, bytes]) -> WorkerInfo:
        h = {k.decode(): v.decode() for k, v in raw.items()}
        return cls(
            name=h.get("name", ""),
            host=h.get("host", ""),
            pid=int(h.get("pid") or 0),
            version=h.get("version", ""),
            model=h.get("model", ""),
            slots=int(h.get("slots") or 0),
            busy=int(h.get("busy") or 0),
            breaker=h.get("breaker", ""),
            completed=int(h.get("completed") or 0),
            failed=int(h.get("failed") or 0),
            started_at=float(h.get("started_at") or 0),
            last_seen=float(h.get("last_seen") or 0),
            jobs=json.loads(h.get("jobs") or "[]"),
        )


async def publish_liveness(
    redis: Any, keys: Keys, *, ttl: int, info: Mapping[str, str | int | float]
) -> None:
    """Write one worker's liveness record and index it (called every heartbeat)."""
    name = str(info["name"])
    now = time.time()
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hset(keys.worker(name), mapping={**info, "last_seen": now})
        pipe.expire(keys.worker(name), ttl)
        pipe.zadd(keys.workers, {name: now})
        pipe.zremrangebyscore(keys.workers, "-inf", now - 24 * 3600)
        await pipe.execute()


async def forget_worker(redis: Any, keys: Keys, name: str) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        pipe.delete(keys.worker(name))
        pipe.zrem(keys.workers, name)
        await pipe.execute()


def host_identity() -> dict[str, str | int]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


@dataclass(frozen=True, slots=True)
class Stats:
    stream_length: int
    #: Entries delivered to a worker and not yet acknowledged (running, or held by a dead worker).
    pending: int
    #: Entries not yet delivered to any worker.
    lag: int
    consumers: list[dict[str, Any]]
    workers: list[WorkerInfo]
    dead_letters: int
    #: queued and running from the stream; the rest are totals since the deployment began.
    jobs: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["workers"] = [asdict(w) for w in self.workers]
        return out


async def queue_depth(redis: Any, keys: Keys) -> tuple[int, int, int]:
    """(stream length, pending, lag) of the jobs stream."""
    length = int(await redis.xlen(keys.stream))
    try:
        groups = await redis.xinfo_groups(keys.stream)
    except ResponseError:  # no stream yet
        return length, 0, 0
    group = next((g for g in groups if _text(g["name"]) == GROUP), None)
    if group is None:
        return length, 0, length
    pending = int(group["pending"])
    lag = group.get("lag")
    if lag is None:
        # Redis 6.2 has no `lag`: count what lies after the last delivered id.
        last = _text(group["last-delivered-id"])
        after = await redis.xrange(keys.stream, min=f"({last}", max="+", count=100_000)
        lag = len(after)
    return length, pending, int(lag)


async def collect(redis: Any, keys: Keys, *, heartbeat_seconds: float) -> Stats:
    length, pending, lag = await queue_depth(redis, keys)
    try:
        raw_consumers = await redis.xinfo_consumers(keys.stream, GROUP)
    except ResponseError:
        raw_consumers = []
    consumers = [
        {
            "name": _text(c["name"]),
            "pending": int(c["pending"]),
            "idle_s": round(int(c["idle"]) / 1000, 1),
        }
        for c in raw_consumers
    ]
    cutoff = time.time() - liveness_ttl(heartbeat_seconds)
    names = await redis.zrangebyscore(keys.workers, cutoff, "+inf")
    workers = []
    for name in names:
        raw = await redis.hgetall(keys.worker(_text(name)))
        if raw:
            workers.append(WorkerInfo.from_hash(raw))
    counts = {_text(k): int(v) for k, v in (await redis.hgetall(keys.counts)).items()}
    jobs = {
        "queued": lag,
        "running": pending,
        "completed": counts.get("completed", 0),
        "failed": counts.get("failed", 0),
        "dead": counts.get("dead", 0),
        "cancelled": counts.get("cancelled", 0),
        "submitted": counts.get("submitted", 0),
    }
    return Stats(
        stream_length=length,
        pending=pending,
        lag=lag,
        consumers=consumers,
        workers=workers,
        dead_letters=int(await redis.xlen(keys.dead)),
        jobs=jobs,
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
