"""Checkpoints: how far a job got, and how to resume it exactly where it stopped.

faster-whisper decodes audio in 30-second windows and yields each window's segments together;
`Segment.seek` is the window's start in 10 ms frames. A window is *committed* once a segment of a
later window arrives (or the transcription ends): from then on it can never change. A checkpoint
holds the committed segments, and the resume point is the start of the first window that was not
committed.

Resuming calls faster-whisper with `clip_timestamps=[resume point]` and, as `initial_prompt`,
the token ids it would have been prompting itself with at that window: the tokens of the
committed segments since the last prompt reset. At temperature 0 this reproduces the
uninterrupted transcript exactly, timestamps included. (A text prompt would not: re-encoding the
text loses the timestamp tokens, which on tiny.en shifts every later timestamp.)
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from .transcript import Segment

__all__ = [
    "PROMPT_RESET_TEMPERATURE",
    "Checkpoint",
    "Progress",
    "Stage",
    "Windows",
    "resume_prompt",
]

#: faster-whisper's `prompt_reset_on_temperature` default: a window decoded hotter than this
#: clears the prompt for the windows after it.
PROMPT_RESET_TEMPERATURE = 0.5
_FRAMES_PER_SECOND = 100


class Stage(StrEnum):
    """Where a running job is (the stages of the original service)."""

    PREPROCESSING = "preprocessing"
    MODEL_LOADING = "model_loading"
    TRANSCRIBING = "transcribing"
    POSTPROCESSING = "postprocessing"
    COMPLETED = "completed"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A job's saved progress, as stored in `<prefix>:ckpt:<id>` and `...:segments`."""

    job_id: str
    #: The job's content digest: a checkpoint never resumes a different job under a reused id.
    digest: str
    stage: Stage
    #: Start (seconds) of the first window not committed: where a resumed attempt begins.
    resume_at: float
    processed_s: float
    total_s: float
    language: str
    language_probability: float
    segments: tuple[Segment, ...]
    fence: int = 0
    worker: str = ""
    #: Server time of the last write (Unix seconds).
    updated_at: float = 0.0
    options: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, str] = field(default_factory=dict)

    def header(self) -> dict[str, str]:
        """The hash fields (everything but the segments)."""
        return {
            "digest": self.digest,
            "stage": self.stage.value,
            "resume_at": repr(self.resume_at),
            "processed_s": repr(self.processed_s),
            "total_s": repr(self.total_s),
            "language": self.language,
            "language_probability": repr(self.language_probability),
            "segments": str(len(self.segments)),
            "options": json.dumps(dict(self.options), sort_keys=True),
            "metadata": json.dumps(dict(self.metadata), sort_keys=True),
        }

    @classmethod
    def from_redis(
        cls, job_id: str, raw: Mapping[bytes, bytes], segments: Sequence[bytes]
    ) -> Checkpoint | None:
        """Rebuild a checkpoint; None when it is missing or does not hold together."""
        if not raw:
            return None
        h = {k.decode(): v.decode() for k, v in raw.items()}
        try:
            segs = tuple(Segment.from_dict(json.loads(s)) for s in segments)
            if int(h["segments"]) != len(segs):
                return None
            return cls(
                job_id=job_id,
                digest=h["digest"],
                stage=Stage(h["stage"]),
                resume_at=float(h["resume_at"]),
                processed_s=float(h["processed_s"]),
                total_s=float(h["total_s"]),
                language=h["language"],
                language_probability=float(h["language_probability"]),
                segments=segs,
                fence=int(h.get("fence", 0)),
                worker=h.get("worker", ""),
                updated_at=float(h.get("updated_at", 0.0)),
                options=json.loads(h.get("options", "{}")),
                metadata=json.loads(h.get("metadata", "{}")),
            )
        except (KeyError, ValueError, TypeError):
            return None


@dataclass(frozen=True, slots=True)
class Progress:
    """A checkpoint's header, without its segments: what `runner status` shows."""

    stage: Stage
    processed_s: float
    total_s: float
    segments: int
    worker: str
    #: Server time of the last checkpoint write (Unix seconds).
    updated_at: float

    @property
    def percent(self) -> float:
        return 100.0 * self.processed_s / self.total_s if self.total_s else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage.value,
            "processed_s": self.processed_s,
            "total_s": self.total_s,
            "percent": round(self.percent, 1),
            "segments": self.segments,
            "worker": self.worker,
            "updated_at": self.updated_at,
        }

    @classmethod
    def from_redis(cls, raw: Mapping[bytes, bytes]) -> Progress | None:
        h = {k.decode(): v.decode() for k, v in raw.items()}
        try:
            return cls(
                stage=Stage(h["stage"]),
                processed_s=float(h["processed_s"]),
                total_s=float(h["total_s"]),
                segments=int(h["segments"]),
                worker=h.get("worker", ""),
                updated_at=float(h.get("updated_at", 0.0)),
            )
        except (KeyError, ValueError):
            return None


def resume_prompt(
    segments: Sequence[Segment], initial_prompt: Sequence[int] | None
) -> list[int] | None:
    """The prompt faster-whisper would hold after `segments`, as token ids.

    It starts with the producer's own prompt, gains every segment's tokens, and is cleared after
    any window decoded at a temperature above `PROMPT_RESET_TEMPERATURE`.
    """
    tokens: list[int] = list(initial_prompt or ())
    window_seek: int | None = None
    window_temperature = 0.0
    for seg in segments:
        if seg.seek != window_seek:
            # A new window: the one before it may have cleared the prompt.
            if window_seek is not None and window_temperature > PROMPT_RESET_TEMPERATURE:
                tokens = []
            window_seek, window_temperature = seg.seek, seg.temperature
        tokens.extend(seg.tokens)
    if window_seek is not None and window_temperature > PROMPT_RESET_TEMPERATURE:
        tokens = []
    return tokens or None


class Windows:
    """Sorts segments as they arrive into committed windows and the window still open."""

    def __init__(self, committed: Sequence[Segment] = (), start: float = 0.0) -> None:
        self.committed: list[Segment] = list(committed)
        self.open: list[Segment] = []
        #: The resume point while no window is open: where this attempt started, or where the
        #: window after the last closed one starts.
        self.start = start

    @property
    def resume_at(self) -> float:
        """Where a resumed attempt would start now: the open window, else the next one."""
        if self.open:
            return self.open[0].seek / _FRAMES_PER_SECOND
        return self.start

    def add(self, segment: Segment) -> bool:
        """Take the next segment (renumbered to follow the others). True if a window closed."""
        closed = bool(self.open) and segment.seek != self.open[0].seek
        if closed:
            self.committed.extend(self.open)
            self.open = []
        number = len(self.committed) + len(self.open) + 1
        self.open.append(segment if segment.id == number else replace(segment, id=number))
        return closed

    def close(self, next_start: float) -> None:
        """The open window is complete (the engine said so); the next one starts there."""
        self.committed.extend(self.open)
        self.open = []
        self.start = next_start

    def finish(self) -> list[Segment]:
        """The transcription ended: every window is committed."""
        self.committed.extend(self.open)
        self.open = []
        return self.committed
