"""Generate the speech fixtures with espeak-ng (Debian package `espeak-ng`).

    python scripts/make_fixtures.py [--out tests/fixtures/speech]

Writes one audio file per text below and `texts.json` mapping each file to its text. The outputs
are committed, so tests and `make run` never need espeak-ng; rerun this only to change them.
Short samples are 16 kHz mono WAV; the long one is Ogg/Opus to stay small.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import av

SAMPLES: dict[str, str] = {
    "hello.wav": "Hello world. This is a test of the transcription runner.",
    "meeting.wav": "The meeting starts at nine in the morning and ends before noon.",
    "weather.wav": "It will rain tomorrow in the north, so bring an umbrella and a warm coat.",
    "long.ogg": (
        "The old lighthouse stood at the edge of the harbour for more than a hundred years. "
        "Every evening the keeper climbed the narrow stairs and lit the great lamp. "
        "Ships coming home in the dark looked for its light and knew that they were safe. "
        "In the winter the wind was cold and the waves were high. "
        "The keeper wrote down the weather in a small book every morning and every night. "
        "He counted the ships that passed and the birds that rested on the rocks. "
        "One night a storm came from the west and the rain fell for many hours. "
        "A fishing boat lost its way near the rocks and the crew could not see the shore. "
        "The keeper turned the lamp toward the sea and rang the heavy bell. "
        "The sailors heard the bell and followed the light into the quiet water of the bay. "
        "In the morning they walked up the hill to thank him with bread and fresh fish. "
        "Years later the lamp was changed for an electric light that worked by itself. "
        "The keeper moved to a house in the village, near the school and the market. "
        "Children often asked him about the storms and the ships and the long nights. "
        "He told them that the sea is patient, and that a good light must never go out. "
        "Today the lighthouse is a small museum, and visitors climb the same narrow stairs. "
        "From the top they can see the harbour, the village and the islands far away. "
        "On clear evenings the new lamp still turns, and the ships still come home. "
        "The book with the weather is kept in a glass case on the first floor. "
        "Its pages are yellow now, but every line is written in the same careful hand. "
        "Next to it lies the brass key that opened the door at the foot of the tower. "
        "The keeper's coat hangs on a hook, still smelling faintly of salt and smoke. "
        "Once a year the village holds a small festival on the hill in his honour. "
        "People bring lanterns, sing old songs, and watch the light turn over the water. "
        "When the last song ends, they walk home slowly under the stars."
    ),
}

_RATE = 16_000
_WPM = "150"


def speak(text: str) -> bytes:
    """espeak-ng's WAV output (22.05 kHz mono) for `text`."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SystemExit("espeak-ng is not installed (apt-get install espeak-ng)")
    return subprocess.run(
        [exe, "-v", "en-us", "-s", _WPM, "--stdout", text], check=True, capture_output=True
    ).stdout


def convert(wav: bytes, out: Path) -> None:
    """Resample to 16 kHz mono and write WAV (s16) or Ogg/Opus, by the file's extension."""
    codec, fmt, options = (
        ("libopus", "ogg", {"b": "32000"}) if out.suffix == ".ogg" else ("pcm_s16le", "wav", {})
    )
    container_in: Any = av.open(io.BytesIO(wav))
    container_out: Any = av.open(str(out), "w", format=fmt)
    with container_in, container_out:
        rate = 48_000 if codec == "libopus" else _RATE
        stream = container_out.add_stream(codec, rate=rate, options=options)
        stream.layout = "mono"
        resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=rate)
        for frame in container_in.decode(audio=0):
            for piece in resampler.resample(frame):
                container_out.mux(stream.encode(piece))
        for piece in resampler.resample(None):
            container_out.mux(stream.encode(piece))
        container_out.mux(stream.encode(None))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/speech"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in SAMPLES.items():
        convert(speak(text), args.out / name)
        print(f"wrote {args.out / name}")
    (args.out / "texts.json").write_text(json.dumps(SAMPLES, indent=2) + "\n")


if __name__ == "__main__":
    main()
