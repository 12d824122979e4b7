"""No-op stand-ins for the engine and the audio decoder: what is left is the queue's own cost."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from runner.audio import Audio
from runner.engine import EngineRequest, Transcription
from runner.job import Job
from runner.transcript import Segment

_SILENCE = np.zeros(16_000, dtype=np.float32)


class NoopTranscriber:
    """Returns one empty-ish segment at once."""

    def resolve(self, model: str | None) -> str:
        return "noop"

    def load(self, model: str) -> None:
        pass

    def check(self, request: EngineRequest) -> None:
        pass

    def transcribe(self, audio: Audio, request: EngineRequest) -> Transcription:
        return Transcription(
            language="en", language_probability=1.0, duration=1.0, segments=self._one()
        )

    def _one(self) -> Iterator[Segment]:
        yield Segment(id=1, seek=0, start=0.0, end=1.0, text=" ok", tokens=(1,))

    def prompt_tokens(self, model: str, text: str) -> list[int]:
        return []


async def noop_audio(job: Job) -> Audio:
    return Audio(samples=_SILENCE, source=job.audio or "")
