"""A job as it travels: flat string fields on a stream entry, parsed and validated into `Job`."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from .errors import InvalidJob

__all__ = [
    "KNOWN_FIELDS",
    "LANGUAGES",
    "MAX_BEAM_SIZE",
    "MAX_FIELDS",
    "MAX_FIELD_BYTES",
    "MAX_PROMPT_CHARS",
    "Job",
    "JobState",
    "Task",
    "parse_bool",
    "valid_id",
]

#: Any one field value larger than this is refused (a job is a description, not a payload).
MAX_FIELD_BYTES = 64 * 1024
#: Fields per entry at most: the known ones and room for a producer's own notes.
MAX_FIELDS = 32
#: Whisper only ever reads the last 223 prompt tokens; a longer prompt is a mistake.
MAX_PROMPT_CHARS = 2_000
#: Beam sizes past this only burn time: faster-whisper's default is 5.
MAX_BEAM_SIZE = 20
_ID_RE = re.compile(r"[A-Za-z0-9._:@/+=-]{1,200}")
_MODEL_RE = re.compile(r"[A-Za-z0-9._/+-]{1,200}")

# The languages Whisper knows (ISO 639-1 and a few longer codes), as faster-whisper lists them.
_LANGUAGE_CODES = """
af am ar as az ba be bg bn bo br bs ca cs cy da de el en es et eu fa fi fo fr gl gu ha haw he
hi hr ht hu hy id is it ja jw ka kk km kn ko la lb ln lo lt lv mg mi mk ml mn mr ms mt my ne
nl nn no oc pa pl ps pt ro ru sa sd si sk sl sn so sq sr su sv sw ta te tg th tk tl tr tt uk
ur uz vi yi yo zh yue
"""
LANGUAGES = frozenset(_LANGUAGE_CODES.split())

KNOWN_FIELDS = (
    "audio",
    "audio_key",
    "job_id",
    "language",
    "task",
    "model",
    "beam_size",
    "word_timestamps",
    "vad_filter",
    "initial_prompt",
    "client_id",
)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class JobState(StrEnum):
    """Where a job is in its life. Terminal: completed, failed, dead, cancelled."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    DEAD = "dead"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.DEAD, JobState.CANCELLED})


class Task(StrEnum):
    TRANSCRIBE = "transcribe"
    TRANSLATE = "translate"


def valid_id(text: str) -> bool:
    """Whether `text` can be a job or client id (it becomes part of Redis key names)."""
    return bool(_ID_RE.fullmatch(text))


def parse_bool(name: str, raw: str) -> bool:
    """Read a boolean field: 1/0, true/false, yes/no, on/off, in any case."""
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InvalidJob("invalid_field", f"{name}={raw!r} is not a boolean (use true or false)")


@dataclass(frozen=True, slots=True)
class Job:
    """One transcription job. Exactly one of `audio` and `audio_key` is set.

    Options left unset take faster-whisper's defaults, so a job transcribes exactly as
    faster-whisper alone would.
    """

    #: The producer's id, or the stream entry id when the producer gave none.
    job_id: str
    #: Path of the audio file (must resolve inside an audio root).
    audio: str | None = None
    #: Redis key holding the audio bytes, for producers without shared storage.
    audio_key: str | None = None
    #: Spoken language code; None detects it.
    language: str | None = None
    task: Task = Task.TRANSCRIBE
    #: Model name; None: the worker's default model.
    model: str | None = None
    beam_size: int = 5
    word_timestamps: bool = False
    vad_filter: bool = False
    initial_prompt: str | None = None
    #: Who submitted it (rate limiting, stats).
    client_id: str | None = None
    #: Fields the runner does not know, kept as they came.
    extra: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.audio is None and self.audio_key is None:
            raise InvalidJob(
                "missing_field",
                "a job needs 'audio' (a file path) or 'audio_key' (a Redis key holding the audio)",
            )
        if self.audio is not None and self.audio_key is not None:
            raise InvalidJob(
                "conflicting_fields", "a job has both 'audio' and 'audio_key'; give exactly one"
            )

    def to_fields(self) -> dict[str, str]:
        """The wire form: flat string fields, defaults left out."""
        out: dict[str, str] = {"job_id": self.job_id}
        if self.audio is not None:
            out["audio"] = self.audio
        if self.audio_key is not None:
            out["audio_key"] = self.audio_key
        if self.language is not None:
            out["language"] = self.language
        if self.task is not Task.TRANSCRIBE:
            out["task"] = self.task.value
        if self.model is not None:
            out["model"] = self.model
        if self.beam_size != 5:
            out["beam_size"] = str(self.beam_size)
        if self.word_timestamps:
            out["word_timestamps"] = "true"
        if self.vad_filter:
            out["vad_filter"] = "true"
        if self.initial_prompt is not None:
            out["initial_prompt"] = self.initial_prompt
        if self.client_id is not None:
            out["client_id"] = self.client_id
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out

    def digest(self) -> str:
        """Fingerprint of what the job asks for, to tell a resubmission from a reused id."""
        content = self.to_fields()
        for name in ("job_id", "client_id", *self.extra):
            content.pop(name, None)
        text = "\n".join(f"{k}={v}" for k, v in sorted(content.items()))
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    @classmethod
    def from_fields(cls, raw: Mapping[bytes, bytes] | Mapping[str, str], entry_id: str) -> Job:
        """Parse and validate a stream entry's fields. Raises `InvalidJob` with a precise reason."""
        if len(raw) > MAX_FIELDS:
            raise InvalidJob(
                "too_many_fields", f"the entry has {len(raw)} fields; the limit is {MAX_FIELDS}"
            )
        fields = _decode(raw)
        job_id = fields.get("job_id") or entry_id
        if not _ID_RE.fullmatch(job_id):
            raise InvalidJob(
                "invalid_field",
                f"job_id={job_id[:80]!r} must be 1-200 characters of letters, digits and ._:@/+=-",
            )

        def text(name: str) -> str | None:
            value = fields.get(name)
            if value is None:
                return None
            if not value.strip():
                raise InvalidJob("invalid_field", f"{name} is empty")
            if "\0" in value:
                raise InvalidJob("invalid_field", f"{name} holds a NUL character")
            return value

        language = text("language")
        if language is not None:
            language = language.strip().lower()
            if language not in LANGUAGES:
                raise InvalidJob("invalid_field", f"language={language!r} is not a Whisper code")
        task_raw = (text("task") or "transcribe").strip().lower()
        try:
            task = Task(task_raw)
        except ValueError:
            raise InvalidJob(
                "invalid_field", f"task={task_raw!r} must be 'transcribe' or 'translate'"
            ) from None
        model = text("model")
        if model is not None and (not _MODEL_RE.fullmatch(model) or ".." in model):
            raise InvalidJob("invalid_field", f"model={model[:80]!r} is not a model name")
        beam_size = _parse_beam(text("beam_size"))
        prompt = fields.get("initial_prompt")
        if prompt is not None and "\0" in prompt:
            raise InvalidJob("invalid_field", "initial_prompt holds a NUL character")
        if prompt is not None and len(prompt) > MAX_PROMPT_CHARS:
            raise InvalidJob(
                "invalid_field",
                f"initial_prompt is {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}",
            )
        client_id = text("client_id")
        if client_id is not None and not _ID_RE.fullmatch(client_id):
            raise InvalidJob("invalid_field", f"client_id={client_id[:80]!r} is not a valid id")
        word_ts = fields.get("word_timestamps")
        vad = fields.get("vad_filter")
        return cls(
            job_id=job_id,
            audio=text("audio"),
            audio_key=text("audio_key"),
            language=language,
            task=task,
            model=model,
            beam_size=beam_size,
            word_timestamps=parse_bool("word_timestamps", word_ts) if word_ts else False,
            vad_filter=parse_bool("vad_filter", vad) if vad else False,
            initial_prompt=prompt or None,
            client_id=client_id,
            extra={k: v for k, v in fields.items() if k not in KNOWN_FIELDS},
        )


def _parse_beam(raw: str | None) -> int:
    if raw is None:
        return 5
    try:
        value = int(raw.strip())
    except ValueError:
        raise InvalidJob("invalid_field", f"beam_size={raw[:40]!r} is not a whole number") from None
    if not 1 <= value <= MAX_BEAM_SIZE:
        raise InvalidJob(
            "invalid_field", f"beam_size={value} is out of range (1 to {MAX_BEAM_SIZE})"
        )
    return value


def _decode(raw: Mapping[bytes, bytes] | Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in raw.items():
        try:
            name = key.decode() if isinstance(key, bytes) else key
        except UnicodeDecodeError:
            raise InvalidJob("invalid_encoding", f"field name {key[:40]!r} is not UTF-8") from None
        size = len(value) if isinstance(value, bytes) else len(value.encode())
        if size > MAX_FIELD_BYTES:
            raise InvalidJob(
                "field_too_large",
                f"field {name[:40]!r} is {size} bytes; the limit is {MAX_FIELD_BYTES}",
            )
        try:
            out[name] = value.decode() if isinstance(value, bytes) else value
        except UnicodeDecodeError:
            raise InvalidJob("invalid_encoding", f"field {name[:40]!r} is not UTF-8") from None
    return out
