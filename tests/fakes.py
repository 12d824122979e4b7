"""A fake engine behind the `Transcriber` Protocol, for fast tests of the worker's logic."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from runner.audio import Audio
from runner.engine import EngineRequest, Transcription
from runner.errors import EngineError, InvalidJob
from runner.transcript import Segment

WINDOW_S = 30.0


class FakeTranscriber:
    """Transcribes any audio as one segment per 30 s window, with text `window N`.

    `delay` seconds of sleep per window stand in for compute; `fail` is called before each
    window and may raise to inject faults.
    """

    def __init__(
        self,
        *,
        delay: float = 0.0,
        fail: Callable[[EngineRequest, int], None] | None = None,
        multilingual: bool = True,
        knows_window_ends: bool = True,
    ) -> None:
        self.delay = delay
        self.fail = fail
        self.multilingual = multilingual
        self.knows_window_ends = knows_window_ends
        self.requests: list[EngineRequest] = []
        self.windows = 0
        self.loaded: list[str] = []
        self._lock = threading.Lock()

    def resolve(self, model: str | None) -> str:
        if model in (None, "fake"):
            return "fake"
        raise InvalidJob("unknown_model", f"model={model!r} is not served here (serves: fake)")

    def load(self, model: str) -> None:
        self.loaded.append(model)

    def check(self, request: EngineRequest) -> None:
        if not self.multilingual and request.language not in (None, "en"):
            raise InvalidJob("unsupported_language", "English-only")

    def transcribe(self, audio: Audio, request: EngineRequest) -> Transcription:
        with self._lock:
            self.requests.append(request)
        # One segment per window: once it is out, its window is complete.
        position: list[float] = []
        return Transcription(
            language=request.language or "en",
            language_probability=1.0,
            duration=audio.duration,
            segments=self._segments(audio, request, position),
            next_window=(lambda: position[-1] if position else None)
            if self.knows_window_ends
            else None,
        )

    def _segments(
        self, audio: Audio, request: EngineRequest, position: list[float]
    ) -> Iterator[Segment]:
        start = request.clip_start or 0.0
        n = int(start // WINDOW_S)
        while start < audio.duration:
            if self.fail is not None:
                self.fail(request, n)
            if self.delay:
                time.sleep(self.delay)
            with self._lock:
                self.windows += 1
            end = min(start + WINDOW_S, audio.duration)
            position.append(end)
            yield Segment(
                id=n + 1,
                seek=round(start * 100),
                start=start,
                end=end,
                text=f" window {n}",
                tokens=(1000 + n,),
            )
            start = end
            n += 1

    def prompt_tokens(self, model: str, text: str) -> list[int]:
        return [ord(c) for c in text]


def engine_failure(request: EngineRequest, window: int) -> None:
    raise EngineError("simulated engine failure")
