"""Output formats: SRT and WebVTT valid for players, JSON lossless, text plain."""

from __future__ import annotations

import json
import re

import pytest

from runner.formats import FORMATS, render, srt_timestamp, vtt_timestamp
from runner.transcript import Segment, Transcript, Word


def transcript(*segments: Segment) -> Transcript:
    return Transcript(
        job_id="j",
        language="en",
        language_probability=0.99,
        duration=10.0,
        segments=segments,
        model="tiny.en",
        options={"beam_size": 5},
        timings={"wall_s": 1.5},
    )


SEGS = (
    Segment(id=1, seek=0, start=0.0, end=2.5, text=" Hello there.", tokens=(1, 2)),
    Segment(id=2, seek=0, start=2.5, end=4.0, text=" <b> & -->", tokens=(3,)),
    Segment(id=3, seek=3000, start=3599.9996, end=3725.25, text=" Late.\n\nLine", tokens=(4,)),
)


@pytest.mark.parametrize(
    ("seconds", "srt", "vtt"),
    [
        (0.0, "00:00:00,000", "00:00:00.000"),
        (-1.0, "00:00:00,000", "00:00:00.000"),
        (1.0005, "00:00:01,000", "00:00:01.000"),
        (59.9996, "00:01:00,000", "00:01:00.000"),
        (3599.9996, "01:00:00,000", "01:00:00.000"),
        (360000.5, "100:00:00,500", "100:00:00.500"),
    ],
)
def test_timestamps(seconds: float, srt: str, vtt: str) -> None:
    """Rounding carries into minutes and hours; negatives clamp to zero; hours grow."""
    assert srt_timestamp(seconds) == srt
    assert vtt_timestamp(seconds) == vtt


def test_srt_structure() -> None:
    """Numbered cues from 1, `-->` timing lines, one blank line between cues, none inside."""
    out = render(transcript(*SEGS), "srt")
    blocks = out.strip("\n").split("\n\n")
    assert len(blocks) == 3
    pattern = re.compile(r"^\d{2,}:\d{2}:\d{2},\d{3} --> \d{2,}:\d{2}:\d{2},\d{3}$")
    for n, block in enumerate(blocks, start=1):
        lines = block.split("\n")
        assert lines[0] == str(n)
        assert pattern.match(lines[1])
        assert all(line.strip() for line in lines[2:])
    assert blocks[2].split("\n")[2:] == ["Late.", "Line"]


def test_vtt_structure_and_escaping() -> None:
    """A WEBVTT header, cue timings with dots, and text that cannot open tags or fake arrows."""
    out = render(transcript(*SEGS), "vtt")
    assert out.startswith("WEBVTT\n\n")
    cues = out[len("WEBVTT\n\n") :].strip("\n").split("\n\n")
    assert len(cues) == 3
    assert cues[0] == "00:00:00.000 --> 00:00:02.500\nHello there."
    assert cues[1].split("\n")[1] == "&lt;b&gt; &amp; --&gt;"
    assert "-->" not in cues[1].split("\n")[1]


def test_empty_and_zero_length_segments() -> None:
    """Blank segments are left out; a zero-length cue still ends after it starts."""
    segs = (
        Segment(id=1, seek=0, start=1.0, end=1.0, text=" Blip"),
        Segment(id=2, seek=0, start=2.0, end=3.0, text="   "),
    )
    srt = render(transcript(*segs), "srt")
    assert srt == "1\n00:00:01,000 --> 00:00:01,001\nBlip\n"
    assert render(transcript(), "srt") == ""
    assert render(transcript(), "vtt") == "WEBVTT\n\n"


def test_json_round_trip() -> None:
    """The JSON form restores the same transcript, words included."""
    words = (Word(0.0, 0.5, " Hello", 0.9), Word(0.5, 1.0, " there.", 0.8))
    seg = Segment(id=1, seek=0, start=0.0, end=1.0, text=" Hello there.", tokens=(5,), words=words)
    t = transcript(seg)
    doc = json.loads(render(t, "json"))
    assert doc["text"] == "Hello there."
    assert Transcript.from_dict(doc) == t
    assert Transcript.from_json(t.to_json()) == t


def test_txt_is_one_line_per_segment() -> None:
    """Plain text keeps each segment on its own line."""
    assert render(transcript(*SEGS[:1]), "txt") == "Hello there.\n"


def test_unknown_format() -> None:
    """Asking for a format that does not exist names the ones that do."""
    with pytest.raises(ValueError, match="txt, srt, vtt, json"):
        render(transcript(), "docx")
    assert set(FORMATS) == {"txt", "srt", "vtt", "json"}
