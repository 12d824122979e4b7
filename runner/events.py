"""Lifecycle events: what the scripts publish on `<prefix>:events`, and following them.

Each event is one entry of a capped stream (approximate MAXLEN `RUNNER_EVENTS_MAXLEN`) with
flat fields, in the manner of CloudEvents: the entry id is the event's id, then `type`, `time`
(server clock, Unix seconds), `job_id` (empty for worker events), `worker` and `data` (JSON).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from typing import Any

from .keys import Keys

__all__ = ["EVENT_TYPES", "TERMINAL_EVENTS", "Event", "follow", "newest_id"]

#: Every event type, with what its `data` holds.
EVENT_TYPES: dict[str, str] = {
    "job.queued": "entry: the stream entry id",
    "job.started": "attempt, delivery: an attempt began",
    "job.progress": "processed_s, total_s, segments: a window (not the last) was transcribed",
    "job.checkpointed": "processed_s, total_s, segments: progress saved",
    "job.reclaimed": "from, attempt: the last attempt's worker stopped answering",
    "job.released": "reason, charged: handed back (shutdown, engine error, breaker open, internal)",
    "job.retried": "dead_letter: resubmitted from the dead letters",
    "job.completed": "audio_s, wall_s, attempt, resumed_from",
    "job.failed": "reason, error, error_class: the job's own fault; dead-lettered",
    "job.dead": "reason, error, error_class: out of attempts; dead-lettered",
    "entry.rejected": "reason, error, error_class: an entry whose job_id belongs to another job;"
    " dead-lettered, that job untouched",
    "job.cancelled": "previous: the state it was cancelled in",
    "breaker.opened": "model, reason",
    "breaker.half_open": "model, reason",
    "breaker.closed": "model, reason",
}

TERMINAL_EVENTS = frozenset({"job.completed", "job.failed", "job.dead", "job.cancelled"})


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    type: str
    time: float
    job_id: str
    worker: str
    data: dict[str, Any]

    @classmethod
    def from_entry(cls, entry_id: bytes, raw: dict[bytes, bytes]) -> Event:
        f = {k.decode(): v.decode(errors="replace") for k, v in raw.items()}
        try:
            data = json.loads(f.get("data") or "{}")
        except ValueError:
            data = {}
        return cls(
            id=entry_id.decode(),
            type=f.get("type", ""),
            time=float(f.get("time") or 0.0),
            job_id=f.get("job_id", ""),
            worker=f.get("worker", ""),
            data=data if isinstance(data, dict) else {},
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "time": self.time,
            "job_id": self.job_id,
            "worker": self.worker,
            "data": self.data,
        }


async def newest_id(redis: Any, keys: Keys) -> str:
    """The id of the newest event, to follow from (events after it)."""
    newest = await redis.xrevrange(keys.events, count=1)
    return newest[0][0].decode() if newest else "0-0"


async def follow(
    redis: Any,
    keys: Keys,
    job_ids: Collection[str],
    *,
    after: str,
    block_ms: int = 1000,
) -> AsyncIterator[Event | None]:
    """Events of these jobs after `after`, as they come. Yields None each time `block_ms`
    passes without one, so the caller can re-check state that events may have missed (the
    stream is capped)."""
    cursor = after
    while True:
        reply = await redis.xread({keys.events: cursor}, count=500, block=block_ms)
        if not reply:
            yield None
            continue
        entries = reply[0][1]
        cursor = entries[-1][0]
        for entry_id, raw in entries:
            event = Event.from_entry(entry_id, raw)
            if event.job_id in job_ids:
                yield event
