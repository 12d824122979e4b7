"""The wire format: parsing, validation messages and the round trip of a job's fields."""

from __future__ import annotations

import pytest

from runner.errors import InvalidJob
from runner.job import MAX_FIELD_BYTES, Job, JobState, Task, parse_bool


def parse(**fields: str) -> Job:
    return Job.from_fields(fields, entry_id="1-0")


def reason(**fields: str) -> tuple[str, str]:
    with pytest.raises(InvalidJob) as info:
        parse(**fields)
    return info.value.reason, info.value.message


def test_minimal_job_takes_the_entry_id_and_defaults() -> None:
    """A bare `audio` field is a valid job whose id is the stream entry id."""
    job = parse(audio="/data/a.wav")
    assert job.job_id == "1-0"
    assert (job.task, job.beam_size, job.language, job.model) == (Task.TRANSCRIBE, 5, None, None)
    assert not job.word_timestamps and not job.vad_filter


def test_bytes_fields_parse_like_text() -> None:
    """Fields as redis-py returns them (bytes) parse like text fields."""
    job = Job.from_fields({b"audio": b"/a.wav", b"beam_size": b"3"}, entry_id="2-0")
    assert job.audio == "/a.wav" and job.beam_size == 3


def test_round_trip_keeps_every_option_and_unknown_fields() -> None:
    """to_fields/from_fields is lossless, unknown fields included."""
    job = Job(
        job_id="abc",
        audio="/a.wav",
        language="pt",
        task=Task.TRANSLATE,
        model="small",
        beam_size=2,
        word_timestamps=True,
        vad_filter=True,
        initial_prompt="Glossary: Redis",
        client_id="team-a",
        extra={"note": "keep me"},
    )
    again = Job.from_fields(job.to_fields(), entry_id="9-9")
    assert again == job


@pytest.mark.parametrize(
    ("fields", "code", "words"),
    [
        ({}, "missing_field", "needs 'audio'"),
        ({"audio": "/a", "audio_key": "k"}, "conflicting_fields", "both"),
        ({"audio": "   "}, "invalid_field", "audio is empty"),
        ({"audio": "/a", "beam_size": "-1"}, "invalid_field", "out of range"),
        ({"audio": "/a", "beam_size": "0"}, "invalid_field", "out of range"),
        ({"audio": "/a", "beam_size": "five"}, "invalid_field", "not a whole number"),
        ({"audio": "/a", "beam_size": "100000"}, "invalid_field", "out of range"),
        ({"audio": "/a", "word_timestamps": "maybe"}, "invalid_field", "not a boolean"),
        ({"audio": "/a", "vad_filter": "2"}, "invalid_field", "not a boolean"),
        ({"audio": "/a", "language": "klingon"}, "invalid_field", "not a Whisper code"),
        ({"audio": "/a", "task": "summarise"}, "invalid_field", "'transcribe' or 'translate'"),
        ({"audio": "/a", "job_id": "has space"}, "invalid_field", "job_id="),
        ({"audio": "/a", "model": "../../etc"}, "invalid_field", "not a model name"),
        ({"audio": "/a", "initial_prompt": "x" * 5000}, "invalid_field", "5000 characters"),
        ({"audio": "/a", "client_id": "a b"}, "invalid_field", "client_id"),
    ],
)
def test_invalid_fields_are_refused_precisely(
    fields: dict[str, str], code: str, words: str
) -> None:
    """Each malformed field is named in the error, with a stable reason code."""
    got_code, message = reason(**fields)
    assert got_code == code
    assert words in message


def test_non_utf8_and_huge_values_are_refused() -> None:
    """Values that are not UTF-8, or megabytes long, are job errors, not crashes."""
    with pytest.raises(InvalidJob, match="not UTF-8") as info:
        Job.from_fields({b"audio": b"/a\xff\xfe.wav"}, entry_id="1-0")
    assert info.value.reason == "invalid_encoding"
    with pytest.raises(InvalidJob, match="limit is") as info:
        Job.from_fields({b"audio": b"/a", b"note": b"x" * (MAX_FIELD_BYTES + 1)}, entry_id="1-0")
    assert info.value.reason == "field_too_large"


def test_booleans_accept_common_spellings() -> None:
    """true/false, 1/0, yes/no and on/off, in any case."""
    for raw in ("1", "TRUE", "yes", "On"):
        assert parse_bool("x", raw) is True
    for raw in ("0", "false", "No", "OFF"):
        assert parse_bool("x", raw) is False


def test_language_is_normalised() -> None:
    """Language codes are case-insensitive."""
    assert parse(audio="/a", language=" EN ").language == "en"


def test_digest_ignores_ids_but_not_content() -> None:
    """Two submissions of the same work share a digest; different options do not."""
    a = parse(audio="/a.wav", job_id="x", client_id="c1")
    b = parse(audio="/a.wav", job_id="y", client_id="c2")
    c = parse(audio="/a.wav", job_id="x", beam_size="2")
    assert a.digest() == b.digest() != c.digest()


def test_terminal_states() -> None:
    """Only completed, failed, dead and cancelled are terminal."""
    assert {s for s in JobState if s.terminal} == {
        JobState.COMPLETED,
        JobState.FAILED,
        JobState.DEAD,
        JobState.CANCELLED,
    }
