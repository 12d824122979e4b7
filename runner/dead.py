"""Dead letters: jobs that ended without a result and may be worth another try.

A job lands in `<prefix>:dead` when its input is bad (on its first delivery: running it again
would fail the same way) or when it ran out of attempts. Each entry keeps the job's original
fields, why it ended (`reason`, `error_class`, `error`), its attempts and their history.
An operator lists them, fixes the cause, and retries them (a fresh job with the same id and
fields) or purges them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from .errors import InvalidJob, JobNotFound
from .job import Job
from .store import Store, load_script

__all__ = ["DeadLetter", "DeadLetters"]

_ENTRY_ID_CHARS = set("0123456789-")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One entry of the dead-letter stream."""

    id: str
    job_id: str
    fields: Mapping[str, str]
    reason: str
    error_class: str
    error: str
    attempts: int
    history: tuple[Mapping[str, Any], ...]
    #: Server time it was filed (Unix seconds).
    time: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "job_id": self.job_id,
            "fields": dict(self.fields),
            "reason": self.reason,
            "error_class": self.error_class,
            "error": self.error,
            "attempts": self.attempts,
            "history": [dict(h) for h in self.history],
            "time": self.time,
        }

    @classmethod
    def from_entry(cls, entry_id: bytes | str, raw: Mapping[bytes, bytes]) -> DeadLetter:
        f = {k.decode(): v.decode(errors="replace") for k, v in raw.items()}
        try:
            fields = json.loads(f.get("fields") or "{}")
            history = json.loads(f.get("history") or "[]")
        except ValueError:
            fields, history = {}, []
        return cls(
            id=entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
            job_id=f.get("job_id", ""),
            fields=fields if isinstance(fields, dict) else {},
            reason=f.get("reason", ""),
            error_class=f.get("error_class", ""),
            error=f.get("error", ""),
            attempts=int(f.get("attempts") or 0),
            history=tuple(history) if isinstance(history, list) else (),
            time=float(f.get("time") or 0.0),
        )


class DeadLetters:
    """List, retry and purge the dead letters of one deployment."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._retry = load_script(store.redis, "retry")
        self._purge = load_script(store.redis, "purge")

    async def entries(self, count: int = 100) -> list[DeadLetter]:
        """The oldest `count` dead letters."""
        entries = await self.store.redis.xrange(self.store.keys.dead, count=count)
        return [DeadLetter.from_entry(i, f) for i, f in entries]

    async def count(self) -> int:
        return int(await self.store.redis.xlen(self.store.keys.dead))

    async def find(self, ref: str) -> DeadLetter:
        """A dead letter by its own id, or the newest one of a job id."""
        keys = self.store.keys
        if ref and set(ref) <= _ENTRY_ID_CHARS and "-" in ref:
            entries = await self.store.redis.xrange(keys.dead, min=ref, max=ref)
            if entries:
                return DeadLetter.from_entry(*entries[0])
        for entry_id, raw in await self.store.redis.xrevrange(keys.dead):
            letter = DeadLetter.from_entry(entry_id, raw)
            if letter.job_id == ref:
                return letter
        raise JobNotFound(ref)

    async def retry(self, ref: str) -> str:
        """Resubmit a dead letter as a fresh job with the same id and fields; returns the id."""
        return await self._resubmit(await self.find(ref), ref)

    async def _resubmit(self, letter: DeadLetter, ref: str) -> str:
        fields = {**letter.fields, "job_id": letter.job_id}
        try:
            digest = Job.from_fields(fields, entry_id=letter.job_id).digest()
        except InvalidJob:
            # Still malformed: it will fail again, but the operator asked.
            text = "\n".join(f"{k}={v}" for k, v in sorted(fields.items()))
            digest = hashlib.sha256(text.encode()).hexdigest()[:32]
        keys = self.store.keys
        flat = [part for pair in fields.items() for part in pair]
        try:
            reply = await self._retry(
                keys=[
                    keys.dead,
                    keys.job(letter.job_id),
                    keys.stream,
                    keys.events,
                    keys.entries,
                    keys.result(letter.job_id),
                ],
                args=[
                    letter.id,
                    letter.job_id,
                    digest,
                    json.dumps(fields, ensure_ascii=False),
                    self.store.settings.events_maxlen,
                    *flat,
                ],
            )
        except ResponseError as exc:
            if not str(exc).startswith("KEYTYPE"):
                raise
            # The job's record name (or a deployment key) holds foreign data: say which.
            why = str(exc).removeprefix("KEYTYPE ")
            raise InvalidJob("key_conflict", f"not retried: {why}") from None
        if isinstance(reply, int) and reply <= 0:
            if reply == 0:
                raise JobNotFound(ref)
            raise InvalidJob(*_REFUSALS[reply](letter))
        return letter.job_id

    async def retry_all(self) -> tuple[list[str], list[tuple[str, str]]]:
        """Retry every dead letter that can be; returns the job ids retried and, for the
        letters left in place, (letter id, why)."""
        retried: list[str] = []
        kept: list[tuple[str, str]] = []
        after = "-"
        while entries := await self.store.redis.xrange(self.store.keys.dead, min=after, count=100):
            letters = [DeadLetter.from_entry(i, f) for i, f in entries]
            for letter in letters:
                try:
                    retried.append(await self._resubmit(letter, letter.id))
                except InvalidJob as exc:
                    kept.append((letter.id, exc.message))
            after = "(" + letters[-1].id
        return retried, kept

    async def purge(self, refs: Sequence[str] = ()) -> int:
        """Delete some dead letters (by id or job id), or all of them, with the uploaded audio
        of their jobs (unless a job was retried and is live again)."""
        keys = self.store.keys
        if refs:
            ids = [(await self.find(ref)).id for ref in refs]
            return int(await self._purge(keys=[keys.dead], args=[keys.prefix, *ids]))
        removed = 0
        while entries := await self.store.redis.xrange(keys.dead, count=100):
            ids = [entry_id.decode() for entry_id, _ in entries]
            removed += int(await self._purge(keys=[keys.dead], args=[keys.prefix, *ids]))
        return removed


# Why retry.lua refused a dead letter, by its reply code: (reason, message).
_REFUSALS: dict[int, Callable[[DeadLetter], tuple[str, str]]] = {
    -1: lambda d: ("job_live", f"job {d.job_id} is queued or running again; not retried"),
    -2: lambda d: (
        "job_completed",
        f"job {d.job_id} completed; its result stands and this dead letter was not retried",
    ),
    -3: lambda d: (
        "job_id_conflict",
        f"this dead letter is not job {d.job_id}'s own (its id belongs to another submission); "
        "resubmit its fields under a new job id",
    ),
    -4: lambda d: (
        "truncated",
        "this dead letter's fields were too many or too large to keep whole; resubmit the job",
    ),
}
