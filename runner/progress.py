"""Drawing a job's progress from its events: a live bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from typing import TextIO

from .events import Event

__all__ = ["ProgressView"]

_BAR = 24


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@dataclass
class _Job:
    label: str
    processed: float = 0.0
    total: float = 0.0
    worker: str = ""
    attempt: int = 0
    #: (server time, processed) of the first progress seen in the current attempt, for the rate.
    origin: tuple[float, float] | None = None
    rate: float = 0.0
    note: str = ""


@dataclass
class ProgressView:
    """Renders events of one or more jobs to `out`.

    On a terminal it redraws one line per job; elsewhere it prints a line per change, at most
    every `interval` seconds per job (and always for the outcome).
    """

    out: TextIO
    tty: bool
    interval: float = 1.0
    jobs: dict[str, _Job] = field(default_factory=dict)
    _printed: dict[str, float] = field(default_factory=dict)
    _drawn: int = 0

    def add(self, job_id: str, label: str) -> None:
        self.jobs[job_id] = _Job(label)

    def seed(self, job_id: str, processed: float, total: float, worker: str) -> None:
        job = self.jobs[job_id]
        job.processed, job.total, job.worker = processed, total, worker
        self._show(job_id)

    def __call__(self, event: Event) -> None:
        job = self.jobs.get(event.job_id)
        if job is None:
            return
        data = event.data
        if event.type in ("job.progress", "job.checkpointed"):
            job.processed = float(data.get("processed_s", job.processed))
            job.total = float(data.get("total_s", job.total))
            job.worker = event.worker or job.worker
            if job.origin is None:
                job.origin = (event.time, job.processed)
            elif event.time > job.origin[0]:
                job.rate = (job.processed - job.origin[1]) / (event.time - job.origin[0])
            job.note = ""
        elif event.type == "job.started":
            job.worker, job.attempt = event.worker, int(data.get("attempt", 0))
            job.origin, job.rate = None, 0.0
            job.note = f"attempt {job.attempt} started"
        elif event.type == "job.reclaimed":
            job.note = f"reclaimed from {data.get('from', '?')}"
        elif event.type == "job.released":
            job.note = f"handed back ({data.get('reason', '')})"
            job.origin, job.rate = None, 0.0
        else:
            return
        self._show(event.job_id)

    def line(self, job_id: str) -> str:
        job = self.jobs[job_id]
        pct = 100.0 * job.processed / job.total if job.total else 0.0
        parts = [f"{pct:5.1f}%", f"{job.processed:.1f}/{job.total:.1f} s"]
        if job.rate > 0:
            parts.append(f"{job.rate:.1f}x")
            parts.append(f"ETA {_clock((job.total - job.processed) / job.rate)}")
        if job.worker:
            parts.append(job.worker)
        if job.note:
            parts.append(f"({job.note})")
        text = "  ".join(parts)
        if self.tty:
            filled = int(_BAR * pct / 100)
            text = f"[{'#' * filled}{'-' * (_BAR - filled)}] {text}"
        return f"{job.label}  {text}" if len(self.jobs) > 1 else text

    def _show(self, job_id: str) -> None:
        if self.tty:
            self._redraw()
            return
        now = time.monotonic()
        if now - self._printed.get(job_id, 0.0) >= self.interval:
            self._printed[job_id] = now
            self.out.write(self.line(job_id) + "\n")
            self.out.flush()

    def _redraw(self) -> None:
        width = shutil.get_terminal_size((100, 20)).columns - 1
        if self._drawn:
            self.out.write(f"\x1b[{self._drawn}F")
        for job_id in self.jobs:
            self.out.write("\x1b[2K" + self.line(job_id)[:width] + "\n")
        self._drawn = len(self.jobs)
        self.out.flush()

    def finish(self, job_id: str, outcome: str) -> None:
        """Print a job's outcome (a final line, after its bar)."""
        job = self.jobs[job_id]
        if self.tty and self._drawn:
            self._redraw()
        label = f"{job.label}  " if len(self.jobs) > 1 else ""
        self.out.write(f"{label}{outcome}\n")
        self.out.flush()
