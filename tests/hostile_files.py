"""Builders of hostile audio files for tests/test_hostile.py: containers whose headers lie,
compressed bombs, special files, and paths that change while a worker reads them."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import av
import numpy as np

__all__ = [
    "RATE",
    "WAV_HEADER_BYTES",
    "char_device",
    "flac_silence",
    "flipping",
    "growing",
    "shrinking",
    "sparse_wav",
    "streaming_wav",
    "video_only",
    "wav_bytes",
    "wav_claiming",
]

#: Sample rate of the files built here (the rate Whisper takes, so nothing is resampled).
RATE = 16_000
#: A canonical PCM WAV header: RIFF, fmt (16 bytes of format), then the data chunk's header.
WAV_HEADER_BYTES = 44


def wav_bytes(seconds: float, *, rate: int = RATE, channels: int = 1) -> bytes:
    """A well-formed 16-bit PCM WAV file holding `seconds` of silence."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(bytes(int(seconds * rate) * 2 * channels))
    return buf.getvalue()


def wav_claiming(held_s: float, declared_s: float, *, rate: int = RATE) -> bytes:
    """A WAV holding `held_s` seconds whose data chunk says it holds `declared_s` seconds."""
    data = bytearray(wav_bytes(held_s, rate=rate))
    data[40:44] = int(declared_s * rate * 2).to_bytes(4, "little")
    return bytes(data)


def streaming_wav(seconds: float, *, claimed_rate_factor: int = 1) -> bytes:
    """A WAV as a streaming writer leaves it (RIFF and data sizes 0xFFFFFFFF: unknown), holding
    `seconds`; a `claimed_rate_factor` above 1 makes its byte rate lie, so that the header
    suggests that much less audio than the file holds."""
    data = bytearray(wav_bytes(seconds))
    data[4:8] = data[40:44] = (0xFFFFFFFF).to_bytes(4, "little")
    if claimed_rate_factor != 1:
        data[28:32] = (RATE * 2 * claimed_rate_factor).to_bytes(4, "little")
    return bytes(data)


@cache
def _flac_silence(seconds: int) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="flac") as container:
        stream: Any = container.add_stream("flac", rate=RATE, layout="mono")
        block = 10 * RATE
        chunk = np.zeros((1, block), dtype=np.int16)
        for i in range(seconds // 10):
            frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="mono")
            frame.sample_rate, frame.pts = RATE, i * block
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buf.getvalue()


def flac_silence(seconds: int, declared_samples: int | None = None) -> bytes:
    """FLAC holding `seconds` (a multiple of 10) of silence: a few hundred bytes per minute.

    `declared_samples` rewrites the sample count its STREAMINFO declares (0: unknown), so that
    the header can hide how much audio the file unpacks into. Built once per length.
    """
    data = bytearray(_flac_silence(seconds))
    if declared_samples is not None:
        # STREAMINFO starts at byte 8; its bytes 10..17 end with the 36-bit total sample count.
        packed = int.from_bytes(data[18:26], "big")
        packed = (packed & ~((1 << 36) - 1)) | declared_samples
        data[18:26] = packed.to_bytes(8, "big")
    return bytes(data)


def video_only() -> bytes:
    """A Matroska file with two frames of video and no audio stream at all."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as container:
        stream: Any = container.add_stream("ffv1", rate=1)
        stream.width = stream.height = 16
        stream.pix_fmt = "yuv420p"
        for pts in range(2):
            frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), dtype=np.uint8), "rgb24")
            frame = frame.reformat(format="yuv420p")
            frame.pts = pts
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buf.getvalue()


def sparse_wav(path: Path, size: int) -> None:
    """A file of `size` bytes that costs no disk: a WAV header claiming all of it, then holes."""
    header = bytearray(wav_bytes(0))
    header[4:8] = min(size - 8, 0xFFFFFFFF).to_bytes(4, "little")
    header[40:44] = min(size - WAV_HEADER_BYTES, 0xFFFFFFFF).to_bytes(4, "little")
    with open(path, "wb") as out:
        out.write(header)
        out.truncate(size)


def char_device(path: Path, major: int, minor: int) -> bool:
    """Make a character device node (1, 5 is /dev/zero); False where that needs privileges."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(major, minor))
    except PermissionError:
        return False
    return True


@contextmanager
def growing(path: Path, *, chunk: int, every_s: float, until_bytes: int) -> Iterator[None]:
    """A thread appending `chunk` zero bytes to `path` every `every_s` seconds (an upload still
    being written) until the file holds `until_bytes`, or the block ends."""
    stop = threading.Event()

    def append() -> None:
        with open(path, "ab") as out:
            while not stop.is_set() and out.tell() < until_bytes:
                out.write(bytes(chunk))
                out.flush()
                stop.wait(every_s)

    thread = threading.Thread(target=append, name="grow", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


# Flips `target` between a hard link to the good file and each symlink in turn, every state put
# in place by an atomic rename (so the path never goes missing) and held for about 0.1 ms: long
# enough for a check to see one state whole, short enough for many checks to see a change.
_FLIP = """
import os, sys, time
target, good, *links = sys.argv[1:]
print("ready", flush=True)
while True:
    for n, link in enumerate(links):
        os.link(good, target + ".good")
        os.replace(target + ".good", target)
        time.sleep(0.0001)
        os.symlink(link, target + f".evil{n}")
        os.replace(target + f".evil{n}", target)
        time.sleep(0.0001)
"""


@contextmanager
def flipping(target: Path, good: Path, *links: Path) -> Iterator[None]:
    """While the block runs, another process flips `target` between a hard link to `good` (half
    of the time) and symlinks to each of `links`. A process, not a thread: under the GIL a
    thread would flip only between the worker's own bytecodes, hiding the races it provokes."""
    process = subprocess.Popen(
        [sys.executable, "-c", _FLIP, str(target), str(good), *map(str, links)],
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None and process.stdout.readline() == b"ready\n"
        deadline = time.monotonic() + 10
        while not os.path.lexists(target):
            assert time.monotonic() < deadline, "the flipping process never made the path"
            time.sleep(0.001)
        yield
    finally:
        process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


@contextmanager
def shrinking(path: Path, keep: int, *, every_s: float = 0.002) -> Iterator[None]:
    """A thread cutting `path` down to its first `keep` bytes and writing it back whole, again
    and again, while the block runs (a file rewritten in place while a worker reads it)."""
    whole = path.read_bytes()
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            os.truncate(path, keep)
            stop.wait(every_s)
            with open(path, "r+b") as out:
                out.write(whole)
            stop.wait(every_s)

    thread = threading.Thread(target=churn, name="shrink", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)
