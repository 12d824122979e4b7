"""End to end with the real tiny.en model: right words, and exactly faster-whisper's answer."""

from __future__ import annotations

import json
from typing import Any

import pytest

from runner.engine import WhisperTranscriber, bundled_model_path
from runner.producer import Client
from runner.settings import Settings

from .conftest import FIXTURES, RedisClient
from .helpers import burst
from .wer import wer

pytestmark = pytest.mark.model

TEXTS: dict[str, str] = json.loads((FIXTURES / "texts.json").read_text())
SHORT = sorted(name for name in TEXTS if name.endswith(".wav"))


def test_wer_helper() -> None:
    """The WER helper counts substitutions, insertions and deletions per reference word."""
    assert wer("the cat sat", "The cat sat!") == 0
    assert wer("the cat sat", "the bat sat down") == pytest.approx(2 / 3)
    assert wer("a b", "") == 1


def direct(path: str, **options: Any) -> list[tuple[float, float, str, tuple[int, ...]]]:
    """faster-whisper alone, as a user would call it, with its defaults."""
    from faster_whisper import WhisperModel

    model = WhisperModel(str(bundled_model_path()), device="cpu", compute_type="int8")
    segments, _ = model.transcribe(path, **options)
    return [(s.start, s.end, s.text, tuple(s.tokens)) for s in segments]


async def test_samples_are_transcribed_like_faster_whisper(
    settings: Settings, redis: RedisClient
) -> None:
    """Each sample's transcript has WER < 20% and matches faster-whisper's own exactly."""
    client = Client(redis, settings)
    ids = {name: await client.submit(FIXTURES / name) for name in SHORT}
    worker = await burst(settings, redis, WhisperTranscriber(settings))
    assert worker.completed == len(SHORT)
    for name, job_id in ids.items():
        result = await client.result(job_id)
        assert wer(TEXTS[name], result.text) < 0.2, (name, result.text)
        ours = [(s.start, s.end, s.text, s.tokens) for s in result.segments]
        assert ours == direct(str(FIXTURES / name)), name
        assert result.options["beam_size"] == 5
        assert result.model == "tiny.en"


async def test_options_reach_the_engine(settings: Settings, redis: RedisClient) -> None:
    """Word timestamps and beam size are passed through and match faster-whisper's output."""
    client = Client(redis, settings)
    path = FIXTURES / "weather.wav"
    job_id = await client.submit(path, word_timestamps=True, beam_size=2, language="en")
    await burst(settings, redis, WhisperTranscriber(settings))
    result = await client.result(job_id)
    expected = direct(str(path), word_timestamps=True, beam_size=2, language="en")
    assert [(s.start, s.end, s.text, s.tokens) for s in result.segments] == expected
    words = [w for s in result.segments for w in s.words or ()]
    assert len(words) >= 10 and all(w.end >= w.start for w in words)


async def test_english_only_model_refuses_other_languages(
    settings: Settings, redis: RedisClient
) -> None:
    """Asking tiny.en for Portuguese fails the job with a precise reason instead of guessing."""
    client = Client(redis, settings)
    job_id = await client.submit(FIXTURES / "hello.wav", language="pt")
    await burst(settings, redis, WhisperTranscriber(settings))
    status = await client.status(job_id)
    assert status.reason == "unsupported_language"


def test_engine_knows_when_a_window_is_complete(settings: Settings) -> None:
    """After a window's last segment the engine names the next window's start, never earlier."""
    from runner.audio import decode
    from runner.engine import EngineRequest

    engine = WhisperTranscriber(settings)
    audio = decode(FIXTURES / "long.ogg", max_seconds=600)
    started = engine.transcribe(audio, EngineRequest(model="tiny.en"))
    assert started.next_window is not None
    marks = [(seg.seek, started.next_window()) for seg in started.segments]
    seeks = sorted({seek for seek, _ in marks})
    assert len(seeks) >= 4
    for n, seek in enumerate(seeks):
        ends = [end for s, end in marks if s == seek]
        assert ends[:-1] == [None] * (len(ends) - 1)
        following = seeks[n + 1] / 100 if n + 1 < len(seeks) else None
        if following is not None:
            assert ends[-1] == following
        else:
            assert ends[-1] is not None and abs(ends[-1] - audio.duration) < 0.05


def test_block_features_are_faster_whispers_bit_for_bit() -> None:
    """The block-wise spectrogram equals faster-whisper's whole-file one exactly, at every
    length around the block edges, and the engine installs it on the models it loads."""
    import numpy as np
    from faster_whisper.audio import decode_audio
    from faster_whisper.feature_extractor import FeatureExtractor

    from runner.features import BLOCK_FRAMES, BlockFeatureExtractor

    whole, blocks = FeatureExtractor(), BlockFeatureExtractor()
    rng = np.random.default_rng(7)
    edge = BLOCK_FRAMES * 160
    lengths = [1, 399, 400, 401, 16_000, edge - 160, edge, edge + 1, 2 * edge + 321, 1_234_567]
    waves = [(rng.standard_normal(n) * 0.1).astype(np.float32) for n in lengths]
    waves.append(decode_audio(str(FIXTURES / "long.ogg")))
    for wave in waves:
        expected, got = whole(wave), blocks(wave)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert np.array_equal(got, expected), len(wave)


def test_engine_uses_block_features(settings: Settings) -> None:
    from runner.features import BlockFeatureExtractor

    transcriber = WhisperTranscriber(settings)
    transcriber.load(transcriber.default_model)
    model = transcriber._model(transcriber.default_model)
    assert isinstance(model.feature_extractor, BlockFeatureExtractor)
    assert model.feature_extractor.n_fft == 400 and model.feature_extractor.hop_length == 160
