"""The producer's API: submit jobs, read their status and results, wait for them."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from redis.asyncio import Redis

from .connection import open_redis
from .errors import InvalidJob, JobFailed, JobNotFound, RunnerError
from .events import TERMINAL_EVENTS, Event, follow, newest_id
from .job import Job, JobState, Task
from .settings import Settings
from .store import Enqueued, JobStatus, Store
from .transcript import Transcript

__all__ = ["Client", "submit"]

# Events are the fast path; this re-reads the records anyway, in case an event was trimmed away.
_RECHECK_S = 5.0


class Client:
    """Submits jobs and reads their outcome. Open one with `Client.open()`."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.settings = settings
        self.store = Store(redis, settings)

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings | None = None) -> AsyncIterator[Client]:
        """Connect as configured (`Settings.from_env()` by default)."""
        settings = settings or Settings.from_env()
        async with open_redis(settings) as redis:
            yield cls(redis, settings)

    async def submit(
        self,
        audio: str | os.PathLike[str] | None = None,
        *,
        audio_bytes: bytes | None = None,
        job_id: str | None = None,
        language: str | None = None,
        task: str = "transcribe",
        model: str | None = None,
        beam_size: int = 5,
        word_timestamps: bool = False,
        vad_filter: bool = False,
        initial_prompt: str | None = None,
        client_id: str | None = None,
    ) -> str:
        """Queue a job and return its id.

        Give `audio`, a path as the workers see it (relative paths are made absolute here), or
        `audio_bytes` for workers that share no storage with this process. Submitting a
        `job_id` that exists returns it without queueing anything; submitting it for different
        content raises `InvalidJob`.
        """
        job = self._job(
            audio,
            audio_bytes=audio_bytes,
            job_id=job_id,
            language=language,
            task=task,
            model=model,
            beam_size=beam_size,
            word_timestamps=word_timestamps,
            vad_filter=vad_filter,
            initial_prompt=initial_prompt,
            client_id=client_id,
        )
        done = (await self.store.enqueue_many([(job, audio_bytes or b"")]))[0]
        self._check_reuse(done)
        return job.job_id

    async def submit_many(self, jobs: Sequence[Mapping[str, Any]]) -> list[str]:
        """Queue many jobs in one round trip; each mapping takes `submit`'s keyword arguments
        (`audio` included). Returns their ids in order."""
        built = [
            (self._job(spec.get("audio"), **{k: v for k, v in spec.items() if k != "audio"}),
             spec.get("audio_bytes") or b"")
            for spec in jobs
        ]  # fmt: skip
        for done in await self.store.enqueue_many(built):
            self._check_reuse(done)
        return [job.job_id for job, _ in built]

    @staticmethod
    def _check_reuse(done: Enqueued) -> None:
        if not done.created and not done.same:
            raise InvalidJob(
                "job_id_conflict",
                f"job_id={done.job_id!r} is already used by a different job ({done.state})",
            )

    def _job(
        self,
        audio: str | os.PathLike[str] | None = None,
        *,
        audio_bytes: bytes | None = None,
        job_id: str | None = None,
        language: str | None = None,
        task: str = "transcribe",
        model: str | None = None,
        beam_size: int = 5,
        word_timestamps: bool = False,
        vad_filter: bool = False,
        initial_prompt: str | None = None,
        client_id: str | None = None,
    ) -> Job:
        if (audio is None) == (audio_bytes is None):
            raise InvalidJob("missing_field", "give exactly one of audio and audio_bytes")
        job_id = job_id or uuid.uuid4().hex
        cap = self.settings.max_audio_key_bytes
        if audio_bytes is not None and len(audio_bytes) > cap:
            raise InvalidJob(
                "too_large", f"audio_bytes is {len(audio_bytes)} bytes; the limit is {cap}"
            )
        draft = Job(
            job_id=job_id,
            audio=None if audio is None else _absolute(audio),
            audio_key=None if audio_bytes is None else self.store.keys.audio(job_id),
            language=language,
            task=Task(task),
            model=model,
            beam_size=beam_size,
            word_timestamps=word_timestamps,
            vad_filter=vad_filter,
            initial_prompt=initial_prompt,
            client_id=client_id,
        )
        # The worker parses the wire form; parsing it here gives the producer the same errors.
        return Job.from_fields(draft.to_fields(), entry_id=job_id)

    async def status(self, job_id: str) -> JobStatus:
        """The job's record. Raises `JobNotFound`."""
        return await self.store.status(job_id)

    async def result(self, job_id: str) -> Transcript:
        """The result of a completed job. Raises `JobNotFound`, or `JobFailed` if it ended badly."""
        status = await self.store.status(job_id)
        return await self._outcome(status)

    async def _outcome(self, status: JobStatus) -> Transcript:
        if status.state is JobState.COMPLETED:
            transcript = await self.store.result(status.job_id)
            if transcript is None:
                raise JobNotFound(status.job_id)
            return transcript
        if status.state.terminal:
            raise JobFailed(status.job_id, status.state.value, status.error or status.reason)
        raise RunnerError(f"job {status.job_id} is {status.state.value}, not finished")

    async def wait(self, job_id: str) -> Transcript:
        """Wait for one job and return its transcript; raises `JobFailed` if it fails.

        Bound the wait with your own deadline (`anyio.fail_after`, `asyncio.timeout`).
        """
        outcome = (await self.wait_all([job_id]))[job_id]
        if isinstance(outcome, RunnerError):
            raise outcome
        return outcome

    async def wait_all(
        self,
        job_ids: Sequence[str],
        on_event: Callable[[Event], None] | None = None,
    ) -> dict[str, Transcript | RunnerError]:
        """Wait until every job has ended; each maps to its transcript or its error.

        `on_event` sees each of their events as it comes (progress, for one). Bound the wait
        with your own deadline (`anyio.fail_after`, `asyncio.timeout`).
        """
        outcomes: dict[str, Transcript | RunnerError] = {}
        waiting = set(job_ids)
        after = await newest_id(self.store.redis, self.store.keys)
        await self._settle(waiting, outcomes)
        checked = anyio.current_time()
        async for event in follow(self.store.redis, self.store.keys, waiting, after=after):
            if event is not None and on_event is not None:
                on_event(event)
            ended = event is not None and event.type in TERMINAL_EVENTS
            if ended or anyio.current_time() - checked >= _RECHECK_S:
                await self._settle(waiting, outcomes)
                checked = anyio.current_time()
            if not waiting:
                break
        return outcomes

    async def _settle(
        self, waiting: set[str], outcomes: dict[str, Transcript | RunnerError]
    ) -> None:
        """Move the jobs that have ended from `waiting` to `outcomes`."""
        for job_id, status in (await self.store.statuses(sorted(waiting))).items():
            if status is None:
                outcomes[job_id] = JobNotFound(job_id)
            elif status.state.terminal:
                try:
                    outcomes[job_id] = await self._outcome(status)
                except RunnerError as exc:
                    outcomes[job_id] = exc
            else:
                continue
            waiting.discard(job_id)

    async def cancel(self, job_id: str) -> bool:
        """Cancel a job: True if it was queued or running, False if it had already ended.

        A queued job never starts; a running one stops at its next window and publishes nothing.
        """
        outcome, _ = await self.store.cancel(job_id)
        return outcome == "cancelled"


def _absolute(path: str | os.PathLike[str]) -> str:
    # Not resolved: symlinks are the workers' to resolve, on their own filesystem.
    return str(Path.cwd() / Path(path).expanduser())


async def submit(audio: str | Path, **options: Any) -> str:
    """Submit one job with settings from the environment; see `Client.submit`."""
    async with Client.open() as client:
        return await client.submit(audio, **options)
