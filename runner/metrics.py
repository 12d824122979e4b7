"""Prometheus metrics of one worker process, in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .breaker import BreakerState

__all__ = ["BREAKER_VALUES", "CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
BREAKER_VALUES = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


class Metrics:
    """Everything `--metrics-port` serves. Names are listed in docs/operations.md."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.jobs = Counter(
            "runner_jobs",
            "Jobs this worker ended, by outcome (completed, failed, dead, released, lost)",
            ["outcome"],
            registry=r,
        )
        self.attempts = Counter("runner_attempts", "Attempts this worker started", registry=r)
        self.reclaims = Counter(
            "runner_reclaims", "Entries this worker reclaimed from dead or frozen workers",
            registry=r,
        )  # fmt: skip
        self.checkpoints = Counter(
            "runner_checkpoint_writes", "Checkpoints this worker wrote", registry=r
        )
        self.audio_seconds = Counter(
            "runner_audio_seconds", "Seconds of audio this worker transcribed", registry=r
        )
        self.breaker = Gauge(
            "runner_breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open", ["model"],
            registry=r,
        )  # fmt: skip
        self.rtf = Histogram(
            "runner_real_time_factor",
            "Wall time over audio duration, per completed job (lower is faster)",
            buckets=(0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0),
            registry=r,
        )
        self.duration = Histogram(
            "runner_job_duration_seconds",
            "Wall time of completed jobs, final attempt",
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200),
            registry=r,
        )
        self.slots = Gauge("runner_slots", "Jobs this worker may run at once", registry=r)
        self.slots_busy = Gauge("runner_slots_busy", "Jobs this worker is running", registry=r)
        self.pending = Gauge(
            "runner_queue_pending", "Entries delivered and not yet acknowledged (all workers)",
            registry=r,
        )  # fmt: skip
        self.lag = Gauge("runner_queue_lag", "Entries not yet delivered to any worker", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
