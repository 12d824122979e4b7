"""The worker: one task group that reads jobs, runs several at once and commits their results.

Long-lived tasks (consumer, signal watcher) live in one task group; each job runs in a second
group so that stopping can first stop reading, then let running jobs finish within the grace.
The engine runs in worker threads under a `CapacityLimiter`, one window per call, so the event
loop stays free for Redis while every core transcribes.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
import structlog
from anyio.abc import TaskGroup
from redis.asyncio import Redis

from .audio import Audio, decode, resolve_path
from .engine import EngineRequest, Transcriber
from .errors import AudioError, EngineError, InvalidJob, JobError, TransientError
from .job import Job, valid_id
from .logs import get_logger
from .settings import Settings
from .store import BeginOutcome, Entry, Store, decode_fields
from .transcript import Segment, Transcript

__all__ = ["Attempt", "Worker", "consumer_name"]

log = get_logger("runner.worker")


def consumer_name() -> str:
    """`host-pid-xxxx`: unique per process, even where every container's pid is 1."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


@dataclass(slots=True)
class Attempt:
    """One attempt at one job on this worker: what the heartbeat and the job loop share."""

    job: Job
    entry_id: str
    fence: int
    attempts: int
    started: float = field(default_factory=time.monotonic)
    #: Set when this worker finds it no longer owns the job; the job loop stops at the next window.
    lost: bool = False


class Worker:
    """Reads jobs from the consumer group and runs up to `concurrency` of them at once."""

    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        transcriber: Transcriber,
        *,
        burst: bool = False,
        name: str | None = None,
        concurrency: int | None = None,
        handle_signals: bool = False,
    ) -> None:
        self.settings = settings
        self.store = Store(redis, settings)
        self.transcriber = transcriber
        self.burst = burst
        self.name = name or consumer_name()
        self.concurrency = concurrency or settings.effective_concurrency
        self.handle_signals = handle_signals
        self.running: dict[str, Attempt] = {}
        self.completed = 0
        self.failed = 0
        self._limiter = anyio.CapacityLimiter(self.concurrency)
        self._stopping = anyio.Event()
        self._slot_freed = anyio.Event()
        self._busy = 0

    def stop(self) -> None:
        """Ask the worker to stop reading and finish (or hand back) what it runs."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def run(self) -> None:
        """Run until stopped (or, in burst mode, until nothing is left to read)."""
        structlog.contextvars.bind_contextvars(worker=self.name)
        await self.store.ensure_group()
        default = self.transcriber.resolve(None)
        await anyio.to_thread.run_sync(self.transcriber.load, default)
        log.info(
            "worker.started",
            concurrency=self.concurrency,
            model=default,
            burst=self.burst,
            stream=self.store.keys.stream,
        )
        with anyio.CancelScope() as hard_stop:
            async with anyio.create_task_group() as tg:
                if self.handle_signals:
                    tg.start_soon(self._watch_signals, hard_stop)
                async with anyio.create_task_group() as jobs:
                    await self._consume(jobs)
                    await self._drain(jobs)
                tg.cancel_scope.cancel()
        log.info(
            "worker.stopped",
            completed=self.completed,
            failed=self.failed,
            abandoned=len(self.running),
        )

    async def _watch_signals(self, hard_stop: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                if not self.stopping:
                    log.info("worker.stopping", signal=signal.Signals(signum).name)
                    self.stop()
                else:
                    # Leases and reclaim protect whatever is still running.
                    log.warning("worker.exit_now", signal=signal.Signals(signum).name)
                    hard_stop.cancel()
                    return

    async def _consume(self, jobs: TaskGroup) -> None:
        block_ms = min(self.settings.block_ms, 100) if self.burst else self.settings.block_ms
        while not self.stopping:
            free = self.concurrency - self._busy
            if free <= 0:
                await self._wait_slot()
                continue
            try:
                entries = await self.store.read(self.name, free, block_ms)
            except TransientError as exc:  # pragma: no cover - reconnects come with retries
                log.warning("worker.read_failed", error=str(exc))
                await anyio.sleep(1)
                continue
            if not entries:
                if self.burst and self._busy == 0:
                    log.info("worker.drained")
                    return
                if self.burst:
                    await self._wait_slot()
                continue
            for entry in entries:
                self._busy += 1
                jobs.start_soon(self._run_entry, entry)

    async def _wait_slot(self) -> None:
        with anyio.move_on_after(self.settings.block_ms / 1000):
            await self._slot_freed.wait()
        self._slot_freed = anyio.Event()

    async def _drain(self, jobs: TaskGroup) -> None:
        if self._busy == 0:
            return
        grace = self.settings.shutdown_grace_seconds
        log.info("worker.draining", running=self._busy, grace_s=grace)
        with anyio.move_on_after(grace):
            while self._busy:
                await self._wait_slot()
        if self._busy:
            log.warning("worker.grace_expired", running=sorted(self.running))
            jobs.cancel_scope.cancel()

    async def _run_entry(self, entry: Entry) -> None:
        entry_id, raw = entry
        try:
            with structlog.contextvars.bound_contextvars(entry=entry_id):
                await self._process(entry_id, raw)
        finally:
            self._busy -= 1
            self._slot_freed.set()

    async def _process(self, entry_id: str, raw: dict[bytes, bytes]) -> None:
        fields = decode_fields(raw)
        try:
            job = Job.from_fields(raw, entry_id)
        except InvalidJob as exc:
            job_id = fields.get("job_id", "")
            await self._reject(entry_id, job_id if valid_id(job_id) else entry_id, exc, fields)
            return
        structlog.contextvars.bind_contextvars(job_id=job.job_id)
        begin = await self.store.begin(
            entry_id, job.job_id, self.name, digest=job.digest(), fields=fields
        )
        if begin.outcome is BeginOutcome.CONFLICT:
            error = InvalidJob(
                "job_id_conflict",
                f"job_id={job.job_id!r} is already used by a different job ({begin.state})",
            )
            await self._reject(entry_id, job.job_id, error, fields, record=False)
            return
        if begin.outcome is not BeginOutcome.OK:
            log.info("job.skipped", outcome=begin.outcome.value, state=begin.state)
            return
        attempt = Attempt(job, entry_id, begin.fence, begin.attempts)
        self.running[job.job_id] = attempt
        try:
            await self._attempt(attempt, fields)
        finally:
            self.running.pop(job.job_id, None)

    async def _attempt(self, attempt: Attempt, fields: dict[str, str]) -> None:
        job = attempt.job
        try:
            transcript = await self._transcribe(attempt)
        except JobError as exc:
            ok = await self.store.fail(
                job.job_id,
                entry_id=attempt.entry_id,
                fence=attempt.fence,
                reason=exc.reason,
                error=exc.message,
                worker=self.name,
                fields=fields,
            )
            self.failed += ok
            log.warning("job.failed", reason=exc.reason, error=exc.message, recorded=ok)
            return
        except EngineError as exc:
            # Left pending: another attempt (here or elsewhere) picks it up after the lease.
            log.error("job.engine_failed", error=str(exc), attempt=attempt.attempts)
            return
        wall = time.monotonic() - attempt.started
        ok = await self.store.commit(
            transcript,
            fence=attempt.fence,
            entry_id=attempt.entry_id,
            worker=self.name,
            event={"audio_s": round(transcript.duration, 3), "wall_s": round(wall, 3)},
        )
        if not ok:
            log.warning("job.fenced", fence=attempt.fence, stage="commit")
            return
        self.completed += 1
        log.info(
            "job.completed",
            audio_s=round(transcript.duration, 2),
            wall_s=round(wall, 2),
            rtf=round(wall / transcript.duration, 3) if transcript.duration else None,
            attempt=attempt.attempts,
            segments=len(transcript.segments),
        )

    async def _reject(
        self,
        entry_id: str,
        job_id: str,
        error: JobError,
        fields: dict[str, str],
        *,
        record: bool = True,
    ) -> None:
        """Fail an entry that never became an attempt (it could not even be parsed)."""
        await self.store.fail(
            job_id,
            entry_id=entry_id,
            fence=None,
            reason=error.reason,
            error=error.message,
            worker=self.name,
            fields=fields,
            record=record,
        )
        self.failed += 1
        log.warning("job.failed", job_id=job_id, reason=error.reason, error=error.message)

    async def _load_audio(self, job: Job) -> Audio:
        limit = self.settings.max_audio_seconds
        if job.audio is not None:
            path = await anyio.to_thread.run_sync(
                resolve_path, job.audio, self.settings.effective_audio_roots,
                self.settings.max_audio_bytes,
            )  # fmt: skip
            return await anyio.to_thread.run_sync(
                lambda: decode(path, max_seconds=limit, label=str(job.audio)),
                limiter=self._limiter,
            )
        assert job.audio_key is not None
        data = await self._audio_bytes(job.audio_key)
        label = f"key:{job.audio_key}"
        return await anyio.to_thread.run_sync(
            lambda: decode(data, max_seconds=limit, label=label), limiter=self._limiter
        )

    async def _audio_bytes(self, key: str) -> bytes:
        cap = self.settings.max_audio_key_bytes
        redis: Any = self.store.redis
        kind = (await redis.type(key)).decode()
        if kind == "none":
            raise AudioError("missing_key", f"audio_key={key!r} does not exist")
        if kind != "string":
            raise AudioError("invalid_key", f"audio_key={key!r} holds a {kind}, not bytes")
        size = int(await redis.strlen(key))
        if size == 0:
            raise AudioError("empty_file", f"audio_key={key!r} is empty")
        if size > cap:
            raise AudioError(
                "too_large", f"audio_key={key!r} holds {size} bytes; the limit is {cap}"
            )
        data = await redis.get(key)
        if data is None:
            raise AudioError("missing_key", f"audio_key={key!r} disappeared while being read")
        return bytes(data)

    async def _transcribe(self, attempt: Attempt) -> Transcript:
        job = attempt.job
        model = self.transcriber.resolve(job.model)
        t0 = time.monotonic()
        audio = await self._load_audio(job)
        decoded = time.monotonic()
        request = EngineRequest(
            model=model,
            language=job.language,
            task=job.task.value,
            beam_size=job.beam_size,
            word_timestamps=job.word_timestamps,
            vad_filter=job.vad_filter,
            initial_prompt=job.initial_prompt,
        )
        await anyio.to_thread.run_sync(self.transcriber.check, request)
        started = await anyio.to_thread.run_sync(
            self.transcriber.transcribe, audio, request, limiter=self._limiter
        )
        segments: list[Segment] = []
        while True:
            segment: Segment | None = await anyio.to_thread.run_sync(
                next, started.segments, None, limiter=self._limiter, abandon_on_cancel=True
            )
            if segment is None:
                break
            segments.append(segment)
        done = time.monotonic()
        return Transcript(
            job_id=job.job_id,
            language=started.language,
            language_probability=started.language_probability,
            duration=audio.duration,
            segments=tuple(segments),
            model=model,
            options=request.options(),
            timings={
                "decode_s": round(decoded - t0, 4),
                "transcribe_s": round(done - decoded, 4),
                "wall_s": round(done - attempt.started, 4),
            },
            attempts=attempt.attempts,
            worker=self.name,
        )
