"""The worker: one task group that reads and reclaims jobs, renews their leases, and runs them.

Long-lived tasks (consumer, heartbeat, signal watcher) live in one task group; each job runs in a
second group, so that stopping can first stop reading, then let running jobs finish within the
grace, then hand the rest back. The engine runs in a pool of one thread per job slot, one window
per call, so the event loop stays free to renew leases while every core transcribes.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import closing, suppress
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

import anyio
import structlog
from anyio.abc import TaskGroup
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from .attempt import Attempt, Executor
from .audio import Audio
from .breaker import BreakerState, CircuitBreaker, Permit
from .checkpoint import Stage
from .engine import Transcriber
from .errors import EngineError, ErrorClass, InvalidJob, JobError, LeaseLost, TransientError
from .http import Response, serve
from .job import Job, JobState, valid_id
from .logs import get_logger
from .metrics import BREAKER_VALUES, CONTENT_TYPE, Metrics
from .retry import TRANSIENT, backoff, is_transient, is_transient_reply, retrying
from .settings import Settings
from .stats import forget_worker, host_identity, liveness_ttl, publish_liveness, queue_depth
from .store import Begin, BeginOutcome, Commit, Lease, Store, Taken, decode_fields
from .threads import Threads

__all__ = ["Worker", "consumer_name"]

T = TypeVar("T")

log = get_logger("runner.worker")

# Consumers idle this long with nothing pending belong to workers that are gone.
_CONSUMER_IDLE_S = 3600.0
# Results published in one round trip at most.
_COMMIT_BATCH = 64
_PRUNE_EVERY_S = 600.0


@dataclass(slots=True)
class _Prepared:
    """An entry read and parsed, with its attempt started (or the reason it is not a job)."""

    entry_id: str
    fields: dict[str, str]
    job: Job | InvalidJob
    digest: str
    begin: Begin | None = None
    #: Whether `fields` leaves out some of the entry (too many or too large to keep).
    truncated: bool = False
    #: The attempt, once one started on this worker.
    attempt: Attempt | None = None


class _BeginFailed(Exception):
    """Starting an attempt raised inside the script: an error of the runner's own."""


@dataclass(slots=True)
class _PendingCommit:
    commit: Commit
    done: anyio.Event = field(default_factory=anyio.Event)
    ok: bool = False
    error: BaseException | None = None


def _version() -> str:
    from . import __version__

    return __version__


def consumer_name() -> str:
    """`host-pid-xxxx`: unique per process, even where every container's pid is 1."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


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
        load_audio: Callable[[Job], Awaitable[Audio]] | None = None,
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
        self.reclaimed = 0
        self.breakers: dict[str, CircuitBreaker] = {}
        self.default_model = transcriber.resolve(None)
        self._loaded: set[str] = set()
        self.metrics = Metrics()
        self.metrics.slots.set(self.concurrency)
        self._started_at = time.time()
        self._version = _version()
        self._last_beat = time.monotonic()
        self._redis_ok = False
        self._threads = Threads(self.concurrency)
        self._executor = Executor(
            settings, self.store, transcriber, self._threads, self.name, self.metrics, load_audio
        )
        self._stopping = anyio.Event()
        self._slot_freed = anyio.Event()
        self._busy = 0
        self._tg: TaskGroup | None = None

    def stop(self) -> None:
        """Stop reading; let running jobs finish within the grace, then hand them back."""
        self._stopping.set()
        # Wakes the consumer if it waits for a free slot: a handoff starts now, not a read
        # timeout later.
        self._slot_freed.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def breaker(self, model: str) -> CircuitBreaker:
        """The circuit breaker of one model (created on first use)."""
        if model not in self.breakers:
            self.breakers[model] = CircuitBreaker(
                model, self.settings.breaker(), on_change=self._breaker_changed
            )
        return self.breakers[model]

    def _breaker_changed(self, breaker: CircuitBreaker, state: BreakerState, reason: str) -> None:
        self.metrics.breaker.labels(breaker.name).set(BREAKER_VALUES[state])
        event = "breaker.opened" if state is BreakerState.OPEN else f"breaker.{state.value}"
        report = log.error if state is BreakerState.OPEN else log.warning
        report(event, model=breaker.name, reason=reason, open_s=self.settings.breaker_open_seconds)
        if self._tg is not None:
            self._tg.start_soon(self._publish, event, {"model": breaker.name, "reason": reason})

    async def _publish(self, event: str, data: dict[str, str]) -> None:
        try:
            await self.store.publish(event, worker=self.name, data=data)
        except Exception as exc:  # a task of the worker's own: nothing here may end it
            log.warning("event.lost", event_type=event, error=_why(exc))

    async def run(self) -> None:
        """Run until stopped (or, in burst mode, until nothing is left for this worker)."""
        structlog.contextvars.bind_contextvars(worker=self.name)
        await retrying("create group", self.store.ensure_group, within=self.settings.retry_seconds)
        self._commit_send, self._commit_receive = anyio.create_memory_object_stream[_PendingCommit](
            max_buffer_size=math.inf
        )
        with (
            self._commit_send,
            self._commit_receive,
            closing(self._threads),
            anyio.CancelScope() as hard_stop,
        ):
            async with anyio.create_task_group() as tg:
                self._tg = tg
                await self._load_default_model()
                log.info(
                    "worker.started",
                    concurrency=self.concurrency,
                    model=self.default_model,
                    burst=self.burst,
                    stream=self.store.keys.stream,
                    lease_s=self.settings.lease_seconds,
                )
                if self.handle_signals:
                    tg.start_soon(self._watch_signals, hard_stop)
                for port in self.http_ports:
                    await tg.start(serve, self.settings.http_host, port, self.http_response)
                await self._beat()
                tg.start_soon(self._heartbeat)
                tg.start_soon(self._committer)
                async with anyio.create_task_group() as jobs:
                    await self._consume(jobs)
                    await self._drain(jobs)
                tg.cancel_scope.cancel()
            self._tg = None
            # Pruned later by a peer if Redis is away now.
            with anyio.CancelScope(shield=True), anyio.move_on_after(5), suppress(*TRANSIENT):
                await forget_worker(self.store.redis, self.store.keys, self.name)
                await self.store.prune_consumers([self.name])
        log.info(
            "worker.stopped",
            completed=self.completed,
            failed=self.failed,
            reclaimed=self.reclaimed,
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

    # -- reading and reclaiming ---------------------------------------------------------------

    async def _load_default_model(self) -> bool:
        """Load the default model; a failure opens its breaker instead of ending the worker."""
        breaker = self.breaker(self.default_model)
        permit = breaker.allow() if breaker.state is BreakerState.HALF_OPEN else None
        try:
            await anyio.to_thread.run_sync(self.transcriber.load, self.default_model)
        except EngineError as exc:
            if permit is not None:
                permit.failure(str(exc))
            else:
                breaker.trip(str(exc))
            return False
        if permit is not None:
            permit.success()
        self._loaded.add(self.default_model)
        return True

    async def _consume(self, jobs: TaskGroup) -> None:
        block_ms = min(self.settings.block_ms, 100) if self.burst else self.settings.block_ms
        reclaim_every = self.settings.reclaim_seconds
        next_reclaim = 0.0
        failures = 0
        reclaimable = -1  # unknown until the first reclaim pass
        breaker = self.breaker(self.default_model)
        while not self.stopping:
            free = self.concurrency - self._busy
            if free <= 0:
                await self._wait_slot()
                continue
            allowed = breaker.available()
            if allowed == 0:
                if self.burst and self._busy == 0:
                    log.warning("worker.drained", reason="breaker open")
                    return
                await self._wait_breaker(breaker)
                continue
            if self.default_model not in self._loaded:
                await self._load_default_model()  # the probe of a model that would not load
                continue
            count = free if allowed is None else min(free, allowed)
            try:
                if anyio.current_time() >= next_reclaim:
                    next_reclaim = anyio.current_time() + reclaim_every
                    reclaimable = await self._reclaim(jobs, count, breaker)
                    if reclaimable:
                        continue
                    count = min(count, self.concurrency - self._busy)
                # Under load, entries wait: read and start them in one call. Otherwise block.
                taken = await self.store.take(self.name, count)
                if taken:
                    failures = 0
                    await self._start_batch(jobs, taken, breaker)
                    continue
                wait_ms = max(1, int((next_reclaim - anyio.current_time()) * 1000))
                entries = await self.store.read(self.name, count, min(block_ms, wait_ms))
                failures = 0
            except Exception as exc:
                if isinstance(exc, ResponseError) and str(exc).startswith("NOGROUP"):
                    # Redis came back empty (no persistence), or the stream was deleted by
                    # hand: recreate the group and read what producers add from now on.
                    log.error("worker.group_missing", stream=self.store.keys.stream)
                    with suppress(Exception):
                        await self.store.ensure_group()
                elif is_transient(exc):
                    if failures == 0:
                        log.warning("worker.redis_unavailable", error=_why(exc))
                else:
                    # Nothing read or reclaimed may end the worker: say what failed, and wait.
                    log.exception("worker.read_failed", error=_why(exc))
                await anyio.sleep(backoff(failures))
                failures += 1
                continue
            if not entries:
                # Burst: nothing new, nothing running, and the last reclaim pass found nothing.
                if self.burst and self._busy == 0 and reclaimable == 0:
                    log.info("worker.drained")
                    return
                if self.burst and self._busy:
                    await self._wait_slot()
                continue
            await self._start_batch(jobs, [(e, f, None) for e, f in entries], breaker)

    async def _wait_breaker(self, breaker: CircuitBreaker) -> None:
        """Wait while the breaker admits nothing (open, or its probes all out)."""
        wait = breaker.seconds_until_probe() or 0.2
        with anyio.move_on_after(min(wait, 1.0)):
            await self._stopping.wait()

    async def _start_batch(
        self, jobs: TaskGroup, entries: Sequence[Taken], breaker: CircuitBreaker
    ) -> None:
        """Parse the entries, start the attempts not yet started in one call, then run each.

        Never raises: what fails for one entry is that entry's (see `_run_entry`).
        """
        self._busy += len(entries)
        prepared: list[_Prepared] = []
        for entry_id, raw, begun in entries:
            fields, truncated = decode_fields(raw)
            if begun is not None and _refused_for_now(begun):
                begun = None  # Redis refused to start it (OOM, say): started again below
            p = _Prepared(entry_id, fields, InvalidJob("internal", "not parsed"), "", begun)
            p.truncated = truncated
            try:
                p.job = Job.from_fields(raw, entry_id)
                p.digest = p.job.digest()
            except InvalidJob as exc:
                p.job = exc
            except Exception as exc:
                log.exception("entry.parse_failed", entry=entry_id)
                p.begin = Begin(BeginOutcome.ERROR, error=f"parsing the entry raised {exc!r}")
            prepared.append(p)
        waiting = [p for p in prepared if isinstance(p.job, Job) and p.begin is None]
        if waiting:
            await self._begin(waiting)
        for p in prepared:
            if isinstance(p.job, Job) and p.begin is None:
                # Left pending: the lease brings it back once Redis takes writes again.
                self._busy -= 1
                self._slot_freed.set()
                continue
            jobs.start_soon(self._run_entry, p, breaker.allow())

    async def _begin(self, waiting: list[_Prepared]) -> None:
        """Start the attempts of these entries in one call, retrying those Redis refused for
        now (a connection lost, OOM, BUSY) with backoff; each entry's `begin` is set when it
        gets an answer of its own, and left None when Redis stayed away too long."""

        async def attempt() -> None:
            todo = [p for p in waiting if p.begin is None]
            items = [(p.entry_id, _job_id_of(p), p.digest, p.fields) for p in todo]
            for p, begun in zip(todo, await self.store.begin_many(self.name, items), strict=True):
                if not _refused_for_now(begun):
                    p.begin = begun
            if any(p.begin is None for p in waiting):
                raise TransientError("starting attempts: Redis refused writes for now")

        try:
            await self._redis("begin", attempt)
        except TransientError as exc:
            left = sum(p.begin is None for p in waiting)
            log.error("entries.abandoned", entries=left, error=str(exc))
        except Exception as exc:
            log.exception("entries.begin_failed", entries=len(waiting))
            failed = Begin(BeginOutcome.ERROR, error=f"starting the attempt raised {exc!r}")
            for p in waiting:
                if p.begin is None:
                    p.begin = failed

    async def _reclaim(self, jobs: TaskGroup, free: int, breaker: CircuitBreaker) -> int:
        """Claim entries idle past the lease (their workers died or froze); returns how many."""
        cursor, taken = "0-0", 0
        while free > taken:
            claimed = await self.store.autoclaim(self.name, cursor, free - taken)
            if claimed.deleted:
                await self._reap(claimed.deleted)
            for entry in claimed.entries:
                log.info("entry.reclaimed", entry=entry[0])
            if claimed.entries:
                await self._start_batch(jobs, [(e, f, None) for e, f in claimed.entries], breaker)
            taken += len(claimed.entries)
            self.metrics.reclaims.inc(len(claimed.entries))
            cursor = claimed.cursor
            if cursor == "0-0":
                break
        self.reclaimed += taken
        return taken

    async def _reap(self, entry_ids: list[str]) -> None:
        """Entries deleted from the stream while pending: end their jobs, keep nothing stuck."""
        known = await self.store.jobs_of_entries(entry_ids)
        for entry_id in entry_ids:
            job_id = known.get(entry_id)
            log.warning("entry.deleted", entry=entry_id, job_id=job_id)
            if job_id is not None:
                await self._redis(
                    "fail",
                    partial(
                        self.store.fail,
                        job_id,
                        entry_id=entry_id,
                        fence=None,
                        reason="entry_deleted",
                        error="the job's stream entry was deleted while it was pending",
                        worker=self.name,
                        fields={},
                        dead_letter=False,
                    ),
                )

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
            log.info("worker.handing_back", running=sorted(self.running))
            jobs.cancel_scope.cancel()

    # -- leases -------------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        """Renew every running job's lease; flag the ones this worker has lost."""
        next_prune = anyio.current_time() + _PRUNE_EVERY_S
        while True:
            await anyio.sleep(self.settings.heartbeat_seconds)
            for breaker in self.breakers.values():
                _ = breaker.state  # cuts probes past their deadline, even with every slot busy
            await self._beat()
            if anyio.current_time() >= next_prune:
                next_prune = anyio.current_time() + _PRUNE_EVERY_S
                await self._prune_consumers()
            try:
                await self._renew()
            except Exception as exc:
                # A lease not renewed now is renewed at the next beat, or reclaimed: no reason
                # to stop the worker.
                _report("lease.renew_failed", exc)

    async def _renew(self) -> None:
        attempts = list(self.running.values())
        if not attempts:
            return
        leases = [(a.job_id, a.entry_id, a.fence) for a in attempts]
        results = await self.store.renew(self.name, leases)
        for attempt, lease in zip(attempts, results, strict=True):
            if lease is Lease.LOST and not attempt.lost:
                attempt.lost = True
                # A job whose commit is in flight ends with a new token: no news.
                if attempt.stage not in (Stage.POSTPROCESSING, Stage.COMPLETED):
                    log.warning("job.lost", job_id=attempt.job_id, fence=attempt.fence)
            elif lease is Lease.VANISHED and not attempt.vanished:
                attempt.vanished = True
                log.warning("job.entry_vanished", job_id=attempt.job_id)

    async def _beat(self) -> None:
        """Publish this worker's liveness record and refresh the queue gauges."""
        self._last_beat = time.monotonic()
        breaker = self.breaker(self.default_model)
        info: dict[str, str | int | float] = {
            "name": self.name,
            **host_identity(),
            "version": self._version,
            "model": self.default_model,
            "slots": self.concurrency,
            "busy": self._busy,
            "breaker": breaker.state.value,
            "completed": self.completed,
            "failed": self.failed,
            "started_at": self._started_at,
            "jobs": json.dumps(sorted(self.running)),
        }
        self.metrics.slots_busy.set(self._busy)
        self.metrics.breaker.labels(breaker.name).set(BREAKER_VALUES[breaker.state])
        try:
            ttl = liveness_ttl(self.settings.heartbeat_seconds)
            await publish_liveness(self.store.redis, self.store.keys, ttl=ttl, info=info)
            await self.store.load_submission_script()
            _, pending, lag = await queue_depth(self.store.redis, self.store.keys)
        except Exception as exc:
            self._redis_ok = False
            _report("worker.liveness_failed", exc)
            return
        self._redis_ok = True
        self.metrics.pending.set(pending)
        self.metrics.lag.set(lag)

    @property
    def http_ports(self) -> list[int]:
        ports = {self.settings.metrics_port, self.settings.health_port} - {0}
        return sorted(ports)

    def health(self) -> tuple[bool, dict[str, object]]:
        """Liveness: the event loop and heartbeat are turning."""
        quiet = time.monotonic() - self._last_beat
        alive = quiet < 3 * self.settings.heartbeat_seconds + 5
        return alive, {"alive": alive, "heartbeat_age_s": round(quiet, 2)}

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """Readiness: Redis answers, the model is loaded, the breaker is not open."""
        state = self.breaker(self.default_model).state
        loaded = self.default_model in self._loaded
        ready = self._redis_ok and loaded and state is not BreakerState.OPEN and not self.stopping
        return ready, {
            "ready": ready,
            "redis": self._redis_ok,
            "model_loaded": loaded,
            "breaker": state.value,
            "stopping": self.stopping,
            "busy": self._busy,
            "slots": self.concurrency,
        }

    def http_response(self, path: str) -> Response:
        if path == "/metrics":
            return Response(200, self.metrics.render(), CONTENT_TYPE)
        if path in ("/healthz", "/livez"):
            ok, doc = self.health()
            return Response.json(200 if ok else 503, doc)
        if path == "/readyz":
            ok, doc = self.readiness()
            return Response.json(200 if ok else 503, doc)
        return Response.json(404, {"error": "try /metrics, /healthz or /readyz"})

    async def _prune_consumers(self) -> None:
        """Forget consumers of workers long gone; their pending entries were reclaimed."""
        try:
            idle = await self.store.idle_consumers(_CONSUMER_IDLE_S)
            removed = await self.store.prune_consumers([n for n in idle if n != self.name])
        except Exception as exc:
            log.warning("consumers.prune_failed", error=_why(exc))
            return
        if removed:
            log.info("consumers.pruned", removed=removed)

    # -- one job ------------------------------------------------------------------------------

    async def _run_entry(self, prepared: _Prepared, permit: Permit | None) -> None:
        # Each job runs in a task of its own, with its own copy of the logging context.
        structlog.contextvars.bind_contextvars(entry=prepared.entry_id)
        try:
            await self._process(prepared, permit)
        except Exception as exc:
            if is_transient(exc):
                # Redis stayed away longer than the retries: the lease brings the job back.
                log.error("job.abandoned", entry=prepared.entry_id, error=str(exc))
            else:
                # Whatever else escapes is ours (a bug, an engine raising the unexpected): the
                # job is tried again later, and dead-lettered as `internal` past the limit.
                log.exception("job.internal_error", error=_why(exc))
                await self._internal(prepared, exc)
        finally:
            if permit is not None:
                permit.release()
            self._busy -= 1
            self._slot_freed.set()

    async def _redis(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        return await retrying(what, op, within=self.settings.retry_seconds)

    async def _process(self, prepared: _Prepared, permit: Permit | None) -> None:
        entry_id, fields, job = prepared.entry_id, prepared.fields, prepared.job
        begin = prepared.begin
        if begin is not None and begin.outcome is BeginOutcome.ERROR:
            raise _BeginFailed(begin.error)
        if isinstance(job, InvalidJob):
            await self._reject(prepared, _job_id_of(prepared), job)
            return
        structlog.contextvars.bind_contextvars(job_id=job.job_id)
        digest = prepared.digest
        assert begin is not None
        if begin.outcome is BeginOutcome.CONFLICT:
            error = InvalidJob(
                "job_id_conflict",
                f"job_id={job.job_id!r} is already used by a different job ({begin.state})",
            )
            await self._reject(prepared, job.job_id, error, record=False)
            return
        if begin.outcome is BeginOutcome.DEAD:
            self.failed += 1
            self.metrics.jobs.labels("dead").inc()
            log.error("job.dead", reason="max_deliveries", attempts=begin.attempts)
            return
        if begin.outcome is BeginOutcome.FAILED:
            self.failed += 1
            self.metrics.jobs.labels("failed").inc()
            log.warning("job.failed", reason=begin.state, error=begin.error)
            return
        if begin.outcome is not BeginOutcome.OK:
            log.info("job.skipped", outcome=begin.outcome.value, state=begin.state)
            return
        attempt = prepared.attempt = Attempt(job, entry_id, begin.fence, begin.attempts, digest)
        self.metrics.attempts.inc()
        try:
            model = attempt.model = self.transcriber.resolve(job.model)
        except JobError as exc:
            await self._fail(attempt, exc, fields)
            return
        if model != self.default_model:
            if permit is not None:
                permit.release()
            permit = self.breaker(model).allow()
        if permit is None:
            # The model's breaker is open: hand the job to a worker whose engine works, or
            # back to this one once its breaker probes (not round and round meanwhile).
            delay = self.breaker(model).seconds_until_probe()
            await self._release(attempt, charge=False, reason="breaker_open", delay=delay)
            return
        self.running[job.job_id] = attempt
        try:
            await self._attempt(attempt, fields, begin.checkpoint, permit)
        finally:
            self.running.pop(job.job_id, None)

    async def _attempt(
        self, attempt: Attempt, fields: dict[str, str], resume: bool, permit: Permit
    ) -> None:
        try:
            transcript = await self._executor.transcribe(attempt, resume, permit)
        except JobError as exc:
            permit.release()
            await self._fail(attempt, exc, fields)
            return
        except EngineError as exc:
            permit.failure(str(exc))
            self.metrics.jobs.labels("released").inc()
            log.error("job.engine_failed", error=str(exc), attempt=attempt.attempts)
            # Not the job's fault: it goes back uncharged for a healthy engine to take.
            await self._release(attempt, charge=False, reason="engine_error", error=str(exc))
            return
        except LeaseLost:
            self.metrics.jobs.labels("lost").inc()
            log.warning("job.dropped", reason="lease lost", fence=attempt.fence)
            return
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self._hand_back(attempt)
            raise
        wall = time.monotonic() - attempt.started
        ok = await self._commit(
            Commit(
                transcript,
                fence=attempt.fence,
                entry_id=attempt.entry_id,
                worker=self.name,
                event={
                    "audio_s": round(transcript.duration, 3),
                    "wall_s": round(wall, 3),
                    "attempt": attempt.attempts,
                    "resumed_from": transcript.resumed_from,
                },
            )
        )
        if not ok:
            log.warning("job.fenced", fence=attempt.fence, stage="commit")
            return
        attempt.stage = Stage.COMPLETED
        self.completed += 1
        self.metrics.jobs.labels("completed").inc()
        self.metrics.audio_seconds.inc(transcript.duration)
        self.metrics.duration.observe(wall)
        if transcript.duration:
            self.metrics.rtf.observe(wall / transcript.duration)
        log.info(
            "job.completed",
            audio_s=round(transcript.duration, 2),
            wall_s=round(wall, 2),
            rtf=round(wall / transcript.duration, 3) if transcript.duration else None,
            attempt=attempt.attempts,
            resumed_from=transcript.resumed_from,
            segments=len(transcript.segments),
        )

    async def _commit(self, commit: Commit) -> bool:
        """Hand a result to the committer task and wait for its verdict."""
        pending = _PendingCommit(commit)
        self._commit_send.send_nowait(pending)
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.ok

    async def _committer(self) -> None:
        """Publish results in batches: all that finished meanwhile go in one round trip."""
        async for first in self._commit_receive:
            # One pass of the event loop first: jobs whose engine calls returned together
            # join this batch instead of waiting for the next round trip.
            await anyio.lowlevel.checkpoint()
            batch = [first]
            while len(batch) < _COMMIT_BATCH:
                try:
                    batch.append(self._commit_receive.receive_nowait())
                except anyio.WouldBlock:
                    break
            commits = [p.commit for p in batch]
            try:
                results = await self._redis("commit", partial(self.store.commit_many, commits))
            except Exception as exc:
                for p in batch:
                    p.error = exc
            else:
                for p, ok in zip(batch, results, strict=True):
                    p.ok = ok
            for p in batch:
                p.done.set()

    async def _release(
        self, attempt: Attempt, *, charge: bool, reason: str, error: str = "", delay: float = 0.0
    ) -> bool:
        return await self._redis(
            "release",
            lambda: self.store.release(
                attempt.job_id,
                entry_id=attempt.entry_id,
                fence=attempt.fence,
                consumer=self.name,
                charge=charge,
                reason=reason,
                error=error,
                delay=delay,
            ),
        )

    async def _fail(self, attempt: Attempt, exc: JobError, fields: dict[str, str]) -> None:
        ok = await self._redis(
            "fail",
            lambda: self.store.fail(
                attempt.job_id,
                entry_id=attempt.entry_id,
                fence=attempt.fence,
                reason=exc.reason,
                error=exc.message,
                worker=self.name,
                fields=fields,
            ),
        )
        self.failed += ok
        self.metrics.jobs.labels("failed").inc()
        log.warning("job.failed", reason=exc.reason, error=exc.message, recorded=ok)

    async def _hand_back(self, attempt: Attempt) -> None:
        """Stopping: save what the job has done and release it for a peer to resume now."""
        try:
            if attempt.stage is Stage.TRANSCRIBING and attempt.windows.committed:
                await self._executor.checkpoint(attempt)
            released = await self.store.release(
                attempt.job_id,
                entry_id=attempt.entry_id,
                fence=attempt.fence,
                consumer=self.name,
                charge=False,
                reason="shutdown",
            )
            log.info(
                "job.handed_back",
                released=released,
                processed_s=round(attempt.processed_s, 2),
                segments=len(attempt.windows.committed),
            )
        except LeaseLost:
            log.info("job.dropped", reason="lease lost while stopping")
        except Exception as exc:  # the lease still protects the job; say why it waits
            log.warning("job.hand_back_failed", error=str(exc))

    async def _reject(
        self,
        prepared: _Prepared,
        job_id: str,
        error: JobError,
        *,
        record: bool = True,
    ) -> None:
        """Fail and dead-letter an entry that never became an attempt (it could not be parsed,
        or its job id belongs to another job)."""
        await self._end_entry(prepared, job_id, error.reason, error.message, record=record)
        self.failed += 1
        self.metrics.jobs.labels("failed").inc()
        log.warning("job.failed", job_id=job_id, reason=error.reason, error=error.message)

    async def _end_entry(
        self,
        prepared: _Prepared,
        job_id: str,
        reason: str,
        error: str,
        *,
        state: JobState = JobState.FAILED,
        record: bool = True,
        error_class: ErrorClass = ErrorClass.JOB,
    ) -> None:
        """End an entry that has no attempt (so no token): dead-letter it and acknowledge it."""
        await self._redis(
            "fail",
            partial(
                self.store.fail,
                job_id,
                entry_id=prepared.entry_id,
                fence=None,
                reason=reason,
                error=error,
                worker=self.name,
                fields=prepared.fields,
                state=state,
                record=record,
                error_class=error_class,
                truncated=prepared.truncated,
            ),
        )

    async def _internal(self, prepared: _Prepared, exc: BaseException) -> None:
        """An entry failed for a reason of the runner's own: try it again after a pause, and
        dead-letter it as `internal` once it has had its attempts. Other entries go on."""
        error = f"{type(exc).__name__}: {exc}"[:2000]
        limit = self.settings.max_deliveries
        attempt = prepared.attempt
        try:
            if attempt is not None:
                tries = attempt.attempts
                if tries < limit:
                    await self._release(
                        attempt, charge=True, reason="internal", error=error, delay=_pause(tries)
                    )
                    return
                await self._redis(
                    "fail",
                    lambda: self.store.fail(
                        attempt.job_id,
                        entry_id=attempt.entry_id,
                        fence=attempt.fence,
                        reason="internal",
                        error=f"gave up after {tries} attempts; last: {error}",
                        worker=self.name,
                        fields=prepared.fields,
                        state=JobState.DEAD,
                        error_class=ErrorClass.INTERNAL,
                        truncated=prepared.truncated,
                    ),
                )
            else:
                tries = await self._redis(
                    "deliveries", lambda: self.store.deliveries(prepared.entry_id)
                )
                if tries < limit:
                    await self._redis(
                        "defer",
                        lambda: self.store.defer(self.name, prepared.entry_id, _pause(tries)),
                    )
                    return
                await self._bury(prepared, f"gave up after {tries} deliveries; last: {error}")
        except Exception as again:
            # The lease still brings the entry back; nothing more to do here.
            log.exception("job.internal_error_unhandled", error=str(again))
            return
        self.failed += 1
        self.metrics.jobs.labels("dead").inc()
        log.error("job.dead", reason="internal", attempts=tries)

    async def _bury(self, prepared: _Prepared, error: str) -> None:
        """Dead-letter an entry that keeps failing before its attempt starts: through its
        record if that works, else touching nothing of the job's (its keys may be the cause)."""
        job_id = _job_id_of(prepared)
        for record in (True, False):
            try:
                await self._end_entry(
                    prepared,
                    job_id,
                    "internal",
                    error,
                    state=JobState.DEAD,
                    record=record,
                    error_class=ErrorClass.INTERNAL,
                )
                return
            except TransientError:
                raise
            except Exception:
                if not record:
                    raise
                log.exception("job.bury_failed", job_id=job_id)


def _why(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _report(event: str, exc: BaseException) -> None:
    """Log a failure of the worker's own housekeeping: Redis away is a warning; anything else
    comes with its traceback."""
    if is_transient(exc):
        log.warning(event, error=_why(exc))
    else:
        log.exception(event, error=_why(exc))


def _job_id_of(prepared: _Prepared) -> str:
    """The job id an entry's record lives under: its own if usable, else the entry id."""
    if isinstance(prepared.job, Job):
        return prepared.job.job_id
    job_id = prepared.fields.get("job_id", "")
    return job_id if valid_id(job_id) else prepared.entry_id


def _refused_for_now(begun: Begin) -> bool:
    """Whether starting an attempt failed inside the script because Redis refused a write for
    now (OOM, say): worth trying again, never the job's fault."""
    return begun.outcome is BeginOutcome.ERROR and is_transient_reply(begun.error)


def _pause(tries: int) -> float:
    """Seconds before an entry that failed for an internal reason is tried again."""
    return min(60.0, 2.0**tries)
