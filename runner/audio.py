"""Audio input: where a job's audio may come from, and decoding it within the configured limits.

Everything here is blocking; the worker calls it in a thread. Every refusal is an `AudioError`
with a precise reason, because a bad file is the job's fault and must never look like an engine
failure.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

from .errors import AudioError

__all__ = ["SAMPLE_RATE", "Audio", "decode", "resolve_path"]

SAMPLE_RATE = 16_000
# A container that declares more audio than it holds was cut short (an interrupted upload).
_TRUNCATION_TOLERANCE_S = 1.0
_WAV_HEAD_BYTES = 4096


@dataclass(frozen=True, slots=True, eq=False)
class Audio:
    """Decoded audio: mono float32 samples at 16 kHz, as faster-whisper takes them."""

    samples: npt.NDArray[np.float32]
    #: Where it came from, for logs (a path or `key:<name>`).
    source: str

    @property
    def duration(self) -> float:
        return len(self.samples) / SAMPLE_RATE


def resolve_path(raw: str, roots: Sequence[Path], max_bytes: int) -> Path:
    """The real path of a job's `audio` field, checked against the roots and the size cap.

    Symlinks and `..` are resolved first, so a link inside a root that points outside is refused.
    Containment is checked before existence, so a job cannot probe for files outside the roots.
    """
    path = Path(raw)
    if not path.is_absolute():
        raise AudioError("relative_path", f"audio={raw!r} must be an absolute path")
    real = path.resolve()
    if not any(real.is_relative_to(root) for root in roots):
        listed = ", ".join(str(r) for r in roots)
        raise AudioError(
            "outside_roots",
            f"audio={raw!r} resolves to {str(real)!r}, outside the audio roots ({listed}); "
            "set RUNNER_AUDIO_ROOTS on the worker",
        )
    try:
        st = real.stat()
    except FileNotFoundError:
        raise AudioError("missing_file", f"audio file {raw!r} does not exist") from None
    except OSError as exc:
        raise AudioError("unreadable_file", f"audio file {raw!r}: {exc.strerror}") from None
    if not real.is_file():
        raise AudioError("not_a_file", f"audio={raw!r} is not a regular file")
    if st.st_size == 0:
        raise AudioError("empty_file", f"audio file {raw!r} is empty")
    if st.st_size > max_bytes:
        raise AudioError(
            "too_large", f"audio file {raw!r} is {st.st_size} bytes; the limit is {max_bytes}"
        )
    if not os.access(real, os.R_OK):
        raise AudioError("unreadable_file", f"audio file {raw!r} is not readable by the worker")
    return real


def decode(source: Path | bytes, *, max_seconds: float, label: str = "") -> Audio:
    """Decode a file or in-memory bytes to 16 kHz mono, refusing audio longer than `max_seconds`.

    The declared duration is checked before decoding, so a three-day file costs nothing; the
    decoded length is checked again because headers can lie.
    """
    # faster-whisper's own decoder, so the runner hears exactly what faster-whisper alone would.
    import av
    from faster_whisper import decode_audio

    label = label or str(source if isinstance(source, Path) else "<bytes>")
    _check_wav_length(source, label)
    declared = _declared_seconds(source, label)
    if declared is not None and declared > max_seconds:
        raise AudioError(
            "too_long", f"{label}: {declared:.1f} s of audio; the limit is {max_seconds:g} s"
        )
    try:
        samples = decode_audio(_open(source))
    except (av.FFmpegError, ValueError, IndexError) as exc:
        raise AudioError("undecodable", f"{label}: cannot decode audio ({exc})") from None
    audio = Audio(samples=np.asarray(samples, dtype=np.float32), source=label)
    if audio.samples.size == 0:
        raise AudioError("empty_audio", f"{label}: the file holds no audio samples")
    if audio.duration > max_seconds:
        raise AudioError(
            "too_long", f"{label}: {audio.duration:.1f} s of audio; the limit is {max_seconds:g} s"
        )
    if declared is not None and declared - audio.duration > _TRUNCATION_TOLERANCE_S:
        raise AudioError(
            "truncated",
            f"{label}: the header declares {declared:.1f} s but only {audio.duration:.1f} s "
            "could be decoded (the file was cut short)",
        )
    return audio


def _check_wav_length(source: Path | bytes, label: str) -> None:
    """Refuse a WAV file whose data chunk is shorter than its header says (an upload cut short).

    Decoders play such files up to where they stop, so nothing else would notice.
    """
    if isinstance(source, Path):
        with open(source, "rb") as fh:
            head = fh.read(_WAV_HEAD_BYTES)
        total = source.stat().st_size
    else:
        head, total = source[:_WAV_HEAD_BYTES], len(source)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return
    offset = 12
    while offset + 8 <= len(head):
        chunk, size = (
            head[offset : offset + 4],
            int.from_bytes(head[offset + 4 : offset + 8], "little"),
        )
        if chunk == b"data":
            held = total - offset - 8
            # 0 and 0xFFFFFFFF are what streaming writers put before they know the length.
            if size not in (0, 0xFFFFFFFF) and size > held:
                raise AudioError(
                    "truncated",
                    f"{label}: the WAV header declares {size} bytes of audio but the file holds "
                    f"{held} (the file was cut short)",
                )
            return
        offset += 8 + size + (size & 1)


def _open(source: Path | bytes) -> str | BinaryIO:
    return str(source) if isinstance(source, Path) else io.BytesIO(source)


def _declared_seconds(source: Path | bytes, label: str) -> float | None:
    """The duration the container declares, or None when it does not say."""
    import av

    try:
        container: Any = av.open(_open(source), mode="r", metadata_errors="ignore")
    except (av.FFmpegError, ValueError) as exc:
        raise AudioError("undecodable", f"{label}: not an audio file ({exc})") from None
    with container:
        streams = container.streams.audio
        if not streams:
            raise AudioError("no_audio_stream", f"{label}: the file has no audio stream")
        stream = streams[0]
        if stream.duration is not None and stream.time_base is not None:
            seconds = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            seconds = container.duration / 1_000_000
        else:
            return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None
