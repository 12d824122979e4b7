"""Render a transcript as plain text, SubRip (SRT), WebVTT or JSON."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable

from .transcript import Segment, Transcript

__all__ = ["FORMATS", "render", "srt_timestamp", "vtt_timestamp"]

_BLANK_LINES = re.compile(r"\n\s*\n+")


def _millis(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def _clock(seconds: float, sep: str) -> str:
    ms = _millis(seconds)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{sep}{ms:03d}"


def srt_timestamp(seconds: float) -> str:
    """`HH:MM:SS,mmm`, as SubRip wants it (hours grow past two digits when needed)."""
    return _clock(seconds, ",")


def vtt_timestamp(seconds: float) -> str:
    """`HH:MM:SS.mmm`, as WebVTT wants it."""
    return _clock(seconds, ".")


def _cues(segments: Iterable[Segment]) -> Iterable[tuple[float, float, str]]:
    """Segments with text, times clamped so that no cue ends before it starts."""
    for seg in segments:
        # A blank line ends a cue in both formats, so text may not contain one.
        text = _BLANK_LINES.sub("\n", seg.text.strip())
        if not text:
            continue
        start = max(0.0, seg.start)
        end = max(start, seg.end)
        if _millis(end) == _millis(start):
            end = start + 0.001
        yield start, end, text


def to_txt(transcript: Transcript) -> str:
    """One line per segment."""
    return "".join(f"{seg.text.strip()}\n" for seg in transcript.segments if seg.text.strip())


def to_srt(transcript: Transcript) -> str:
    blocks = [
        f"{n}\n{srt_timestamp(start)} --> {srt_timestamp(end)}\n{text}\n"
        for n, (start, end, text) in enumerate(_cues(transcript.segments), start=1)
    ]
    return "\n".join(blocks)


def _vtt_escape(text: str) -> str:
    # "-->" may not appear in a cue's text; the escapes keep "<" from opening a tag.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_vtt(transcript: Transcript) -> str:
    blocks = [
        f"{vtt_timestamp(start)} --> {vtt_timestamp(end)}\n{_vtt_escape(text)}\n"
        for start, end, text in _cues(transcript.segments)
    ]
    return "WEBVTT\n\n" + "\n".join(blocks)


def to_json(transcript: Transcript) -> str:
    return json.dumps(transcript.to_dict(), ensure_ascii=False, indent=2) + "\n"


FORMATS: dict[str, Callable[[Transcript], str]] = {
    "txt": to_txt,
    "srt": to_srt,
    "vtt": to_vtt,
    "json": to_json,
}


def render(transcript: Transcript, fmt: str) -> str:
    """Render in one of `FORMATS`; raises ValueError for any other name."""
    try:
        return FORMATS[fmt](transcript)
    except KeyError:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}") from None
