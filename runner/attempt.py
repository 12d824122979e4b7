"""One attempt at one job: decode, (resume and) transcribe window by window, checkpoint.

The engine runs in worker threads, one `next()` per call, so between windows this code is back
on the event loop: it checks that the lease is still held, writes checkpoints when they are due,
and can stop cleanly. Nothing here acknowledges anything; the worker commits or fails the job.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from .audio import Audio, decode, open_audio
from .breaker import Permit
from .checkpoint import Checkpoint, Stage, Windows, resume_prompt
from .engine import EngineRequest, Transcriber, Transcription
from .errors import AudioError, JobError, LeaseLost
from .job import Job
from .logs import get_logger
from .metrics import Metrics
from .retry import is_transient, retrying
from .settings import Settings
from .store import Store
from .threads import Threads
from .transcript import Segment, Transcript

__all__ = ["Attempt", "Executor"]

log = get_logger("runner.attempt")

# How long past the decode time limit a decoder that never returns to check it is given.
_DECODE_GRACE_S = 5.0


@dataclass(slots=True, eq=False)
class Attempt:
    """One attempt at one job on this worker: shared by the job's task and the heartbeat."""

    job: Job
    entry_id: str
    fence: int
    attempts: int
    digest: str
    started: float = field(default_factory=time.monotonic)
    stage: Stage = Stage.PREPROCESSING
    #: Set by the heartbeat when another attempt owns the job; the job stops at the next window.
    lost: bool = False
    #: Set by the heartbeat when the entry was deleted from the stream under us.
    vanished: bool = False
    windows: Windows = field(default_factory=Windows)
    total_s: float = 0.0
    language: str = ""
    language_probability: float = 0.0
    #: Segments already in the stored checkpoint.
    saved: int = 0
    last_save: float = field(default_factory=time.monotonic)
    resumed_from: float | None = None
    #: The model this attempt runs: the job's `model`, resolved by the worker (which picks the
    #: model's circuit breaker from it), or the worker's default.
    model: str = ""

    @property
    def job_id(self) -> str:
        return self.job.job_id

    @property
    def processed_s(self) -> float:
        return self.windows.resume_at

    def check(self) -> None:
        """Raise if this attempt may not go on."""
        if self.lost:
            raise LeaseLost(self.job_id, self.fence)
        if self.vanished:
            raise JobError("entry_deleted", "the job's stream entry was deleted while it ran")


#: One segment and, if the engine knows its window is complete with it, the next window's start;
#: a None segment means the transcription ended.
Step = tuple[Segment | None, float | None]


def _next_window(started: Transcription, duration: float) -> list[Step]:
    """Pull segments (in a worker thread) until a window is known complete or the end.

    Without the engine's word on window ends, a window is known complete when a segment of the
    next one arrives; that segment ends the batch.
    """
    steps: list[Step] = []
    first_seek: int | None = None
    while True:
        segment = next(started.segments, None)
        if segment is None:
            steps.append((None, None))
            return steps
        next_start = started.next_window() if started.next_window else None
        steps.append((segment, next_start))
        # After the last window, pulling once more only confirms the end: no computation.
        if next_start is not None and next_start < duration - 0.02:
            return steps
        if next_start is None and first_seek is not None and segment.seek != first_seek:
            return steps
        if first_seek is None:
            first_seek = segment.seek


class Executor:
    """Runs attempts for one worker: audio, engine, checkpoints."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        transcriber: Transcriber,
        threads: Threads,
        worker: str,
        metrics: Metrics,
        load_audio: Callable[[Job], Awaitable[Audio]] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.transcriber = transcriber
        self.threads = threads
        self.worker = worker
        self.metrics = metrics
        #: Decodes a job's audio; replaceable (benchmarks measure the queue without decoding).
        self.load_audio = load_audio or self._load_audio
        self._loaded: set[str] = set()

    async def transcribe(
        self, attempt: Attempt, has_checkpoint: bool, permit: Permit | None = None
    ) -> Transcript:
        """Run the attempt to the end and build its transcript (not yet committed).

        `permit` (from the model's circuit breaker) is told the engine works as soon as it
        produces a window; engine failures are the caller's to report.
        """
        job = attempt.job
        model = attempt.model
        audio = await self.load_audio(job)
        decoded = time.monotonic()
        attempt.total_s = audio.duration
        checkpoint = await self._checkpoint_to_resume(attempt) if has_checkpoint else None
        prompt: str | list[int] | None = job.initial_prompt
        language = job.language
        if checkpoint is not None:
            attempt.windows = Windows(checkpoint.segments, start=checkpoint.resume_at)
            attempt.saved = len(checkpoint.segments)
            attempt.resumed_from = checkpoint.resume_at
            language = checkpoint.language
            own = None
            if job.initial_prompt:
                own = await anyio.to_thread.run_sync(
                    self.transcriber.prompt_tokens, model, job.initial_prompt
                )
            prompt = resume_prompt(checkpoint.segments, own)
            log.info(
                "job.resumed",
                from_s=round(checkpoint.resume_at, 2),
                segments=len(checkpoint.segments),
                checkpoint_worker=checkpoint.worker,
            )
        attempt.stage = Stage.MODEL_LOADING
        if model not in self._loaded:
            await anyio.to_thread.run_sync(self.transcriber.load, model)
            self._loaded.add(model)
        request = EngineRequest(
            model=model,
            language=language,
            task=job.task.value,
            beam_size=job.beam_size,
            word_timestamps=job.word_timestamps,
            vad_filter=job.vad_filter,
            initial_prompt=prompt,
            clip_start=attempt.resumed_from,
        )
        self.transcriber.check(request)  # cheap once the model is loaded
        attempt.stage = Stage.TRANSCRIBING
        transcribe = self.transcriber.transcribe

        def start() -> tuple[Transcription, list[Step]]:
            started = transcribe(audio, request)
            return started, _next_window(started, audio.duration)

        # One thread hop per window: the engine's own pace, and the loop is free meanwhile.
        started, steps = await self.threads.run(start)
        attempt.language = checkpoint.language if checkpoint else started.language
        attempt.language_probability = (
            checkpoint.language_probability if checkpoint else started.language_probability
        )
        while True:
            attempt.check()
            if permit is not None:
                permit.success()
            finished = bool(steps) and steps[-1][0] is None
            for segment, next_start in steps:
                if segment is None:
                    break
                closed = attempt.windows.add(segment)
                if next_start is not None:
                    attempt.windows.close(next_start)
                    closed = True
                if closed and not finished:
                    await self._progress(attempt)
                    if self._checkpoint_due(attempt):
                        await self.checkpoint(attempt)
            if finished:
                break
            steps = await self.threads.run(_next_window, started, audio.duration)
        segments = attempt.windows.finish()
        attempt.stage = Stage.POSTPROCESSING
        done = time.monotonic()
        return Transcript(
            job_id=job.job_id,
            language=attempt.language,
            language_probability=attempt.language_probability,
            duration=audio.duration,
            segments=tuple(segments),
            model=model,
            options=self._options(job, attempt),
            timings={
                "decode_s": round(decoded - attempt.started, 4),
                "transcribe_s": round(done - decoded, 4),
                "wall_s": round(done - attempt.started, 4),
            },
            attempts=attempt.attempts,
            resumed_from=attempt.resumed_from,
            worker=self.worker,
        )

    def _options(self, job: Job, attempt: Attempt) -> dict[str, Any]:
        options: dict[str, Any] = {
            "task": job.task.value,
            "language": job.language,
            "beam_size": job.beam_size,
            "word_timestamps": job.word_timestamps,
            "vad_filter": job.vad_filter,
            "initial_prompt": job.initial_prompt,
        }
        if attempt.resumed_from is not None and job.vad_filter:
            # faster-whisper ignores the VAD filter when it is given a start point.
            options["vad_filter_after_resume"] = False
        return options

    async def _progress(self, attempt: Attempt) -> None:
        """Publish `job.progress` for a completed window (lost quietly if Redis is away)."""
        try:
            await self.store.publish(
                "job.progress",
                job_id=attempt.job_id,
                worker=self.worker,
                data={
                    "processed_s": round(attempt.processed_s, 3),
                    "total_s": round(attempt.total_s, 3),
                    "segments": len(attempt.windows.committed),
                    "attempt": attempt.attempts,
                },
            )
        except Exception as exc:  # progress is news, not state: never worth failing a job for
            report = log.debug if is_transient(exc) else log.warning
            report("event.lost", event_type="job.progress", error=str(exc) or type(exc).__name__)

    def _checkpoint_due(self, attempt: Attempt) -> bool:
        return time.monotonic() - attempt.last_save >= self.settings.checkpoint_seconds

    async def checkpoint(self, attempt: Attempt) -> None:
        """Save the committed windows. Raises `LeaseLost` when another attempt owns the job."""
        checkpoint = Checkpoint(
            job_id=attempt.job_id,
            digest=attempt.digest,
            stage=attempt.stage,
            resume_at=attempt.windows.resume_at,
            processed_s=attempt.processed_s,
            total_s=attempt.total_s,
            language=attempt.language,
            language_probability=attempt.language_probability,
            segments=tuple(attempt.windows.committed),
            options=self._options(attempt.job, attempt),
            metadata={"attempt": str(attempt.attempts), "model": attempt.model},
        )
        event = {
            "processed_s": round(checkpoint.processed_s, 3),
            "total_s": round(checkpoint.total_s, 3),
            "segments": len(checkpoint.segments),
        }
        saved = await retrying(
            "checkpoint",
            lambda: self.store.save_checkpoint(
                checkpoint, fence=attempt.fence, base=attempt.saved, worker=self.worker, event=event
            ),
            within=self.settings.retry_seconds,
        )
        if saved == -1:
            # The stored segments are fewer than we thought (expired?): write them all again.
            saved = await retrying(
                "checkpoint",
                lambda: self.store.save_checkpoint(
                    checkpoint, fence=attempt.fence, base=0, worker=self.worker, event=event
                ),
                within=self.settings.retry_seconds,
            )
        if saved == 0:
            log.warning("job.fenced", fence=attempt.fence, stage="checkpoint")
            raise LeaseLost(attempt.job_id, attempt.fence)
        attempt.saved = len(checkpoint.segments)
        attempt.last_save = time.monotonic()
        self.metrics.checkpoints.inc()
        log.debug("job.checkpointed", **event)

    async def _checkpoint_to_resume(self, attempt: Attempt) -> Checkpoint | None:
        checkpoint = await retrying(
            "load checkpoint",
            lambda: self.store.load_checkpoint(attempt.job_id),
            within=self.settings.retry_seconds,
        )
        if checkpoint is None:
            log.warning("job.checkpoint_unusable", reason="missing or inconsistent")
            return None
        if checkpoint.digest != attempt.digest:
            log.warning("job.checkpoint_unusable", reason="belongs to different content")
            return None
        if checkpoint.total_s and abs(checkpoint.total_s - attempt.total_s) > 0.01:
            log.warning("job.checkpoint_unusable", reason="audio changed since")
            return None
        if checkpoint.metadata.get("model", attempt.model) != attempt.model:
            # Another model would not continue the same transcript: start over.
            log.warning("job.checkpoint_unusable", reason="made by another model")
            return None
        return checkpoint

    async def _load_audio(self, job: Job) -> Audio:
        limit = self.settings.max_audio_seconds
        timeout = self.settings.decode_timeout_seconds
        if job.audio is not None:
            # As configured, not resolved: a root may be a link (/data -> /mnt/data) and
            # producers name files by the configured spelling; open_audio checks both.
            roots = self.settings.audio_roots
            if not roots:
                raise AudioError(
                    "no_audio_roots",
                    f"audio={job.audio!r}: this worker reads no files, only uploaded audio "
                    "(audio_key); set RUNNER_AUDIO_ROOTS on the worker to allow paths",
                )
            raw, cap = job.audio, self.settings.max_audio_bytes

            def load() -> Audio:
                # Opened once and decoded from that one descriptor, in one thread call, so
                # nothing can be swapped in between and the descriptor never leaks.
                with open_audio(raw, roots, cap) as held:
                    return decode(held, max_seconds=limit, timeout=timeout)

            return await self._decoding(load, raw)
        assert job.audio_key is not None
        own = self.store.keys.audio(job.job_id)
        if job.audio_key != own:
            # Uploads are confined to the job's own upload key: never another producer's
            # upload, nor any other key of the deployment or beyond it.
            raise AudioError(
                "foreign_key", f"audio_key={job.audio_key[:200]!r} must be this job's {own!r}"
            )
        cap = self.settings.max_audio_key_bytes
        data = await retrying(
            "read audio",
            lambda: self.store.read_upload(job.job_id, cap),
            within=self.settings.retry_seconds,
        )
        label = f"key:{own}"
        return await self._decoding(
            lambda: decode(data, max_seconds=limit, timeout=timeout, label=label), label
        )

    async def _decoding(self, load: Callable[[], Audio], label: str) -> Audio:
        """Run a decode in the pool, failing the job if it outlives its time limit.

        The decoder checks the limit between frames itself; this is for a call that blocks
        inside the decoder and never returns to check. Its thread is abandoned (it holds one
        slot's thread until the call ends), but the job ends now instead of holding its
        lease forever.
        """
        limit = self.settings.decode_timeout_seconds
        with anyio.move_on_after(limit + _DECODE_GRACE_S):
            return await self.threads.run(load)
        log.error("job.decoder_hung", source=label, limit_s=limit)
        raise AudioError("decode_timeout", f"{label}: decoding did not end within {limit:g} s")
