"""What a job produces: segments, words and the transcript around them, and their JSON form."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Segment", "Transcript", "Word"]


@dataclass(frozen=True, slots=True)
class Word:
    """One word with its timing (only when the job asked for word timestamps)."""

    start: float
    end: float
    word: str
    probability: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "end": self.end,
            "word": self.word,
            "probability": self.probability,
        }


@dataclass(frozen=True, slots=True)
class Segment:
    """One segment as faster-whisper yields it. Times are seconds from the start of the audio.

    `seek` (the start of the 30 s window that produced it, in 10 ms frames), `tokens` and
    `temperature` are what a checkpoint needs to resume exactly where the engine stopped.
    """

    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: tuple[int, ...] = ()
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0
    words: tuple[Word, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        # Spelled out: dataclasses.asdict deep-copies every value, and results are hot.
        return {
            "id": self.id,
            "seek": self.seek,
            "start": self.start,
            "end": self.end,
            "text": self.text,
            "tokens": list(self.tokens),
            "temperature": self.temperature,
            "avg_logprob": self.avg_logprob,
            "compression_ratio": self.compression_ratio,
            "no_speech_prob": self.no_speech_prob,
            "words": None if self.words is None else [w.to_dict() for w in self.words],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Segment:
        words = data.get("words")
        return cls(
            id=int(data["id"]),
            seek=int(data.get("seek", 0)),
            start=float(data["start"]),
            end=float(data["end"]),
            text=str(data["text"]),
            tokens=tuple(int(t) for t in data.get("tokens", ())),
            temperature=float(data.get("temperature", 0.0)),
            avg_logprob=float(data.get("avg_logprob", 0.0)),
            compression_ratio=float(data.get("compression_ratio", 0.0)),
            no_speech_prob=float(data.get("no_speech_prob", 0.0)),
            words=None if words is None else tuple(Word(**w) for w in words),
        )


@dataclass(frozen=True, slots=True)
class Transcript:
    """A finished job's result, as stored under `<prefix>:result:<job_id>`."""

    job_id: str
    language: str
    language_probability: float
    #: Audio duration in seconds.
    duration: float
    segments: tuple[Segment, ...]
    model: str
    #: The options the engine ran with (task, beam_size, word_timestamps, vad_filter...).
    options: Mapping[str, Any] = field(default_factory=dict)
    #: Seconds spent decoding audio, transcribing and overall for the final attempt.
    timings: Mapping[str, float] = field(default_factory=dict)
    #: Attempts it took (1 when nothing went wrong).
    attempts: int = 1
    #: Audio second the final attempt resumed from, or None when it ran from the start.
    resumed_from: float | None = None
    worker: str = ""

    @property
    def text(self) -> str:
        """The whole transcript as one string, segments joined as Whisper spaced them."""
        return "".join(s.text for s in self.segments).strip()

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "text": self.text,
            "language": self.language,
            "language_probability": self.language_probability,
            "duration": self.duration,
            "model": self.model,
            "options": dict(self.options),
            "timings": dict(self.timings),
            "attempts": self.attempts,
            "resumed_from": self.resumed_from,
            "worker": self.worker,
            "segments": [s.to_dict() for s in self.segments],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Transcript:
        segments: Sequence[Mapping[str, Any]] = data.get("segments", ())
        resumed = data.get("resumed_from")
        return cls(
            job_id=str(data["job_id"]),
            language=str(data.get("language", "")),
            language_probability=float(data.get("language_probability", 0.0)),
            duration=float(data.get("duration", 0.0)),
            segments=tuple(Segment.from_dict(s) for s in segments),
            model=str(data.get("model", "")),
            options=dict(data.get("options", {})),
            timings={k: float(v) for k, v in data.get("timings", {}).items()},
            attempts=int(data.get("attempts", 1)),
            resumed_from=None if resumed is None else float(resumed),
            worker=str(data.get("worker", "")),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Transcript:
        return cls.from_dict(json.loads(text))
