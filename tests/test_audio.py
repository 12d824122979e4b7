"""Hostile audio files: every path and container trick is refused with its reason, promptly and
within bounded memory, and good files decode to exactly what faster-whisper alone would hear."""

from __future__ import annotations

import io
import itertools
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
import tracemalloc
import wave
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import av
import numpy as np
import pytest
from faster_whisper import decode_audio

from runner.audio import SAMPLE_RATE, AudioFile, decode, open_audio
from runner.errors import AudioError

from .conftest import FIXTURES

T = TypeVar("T")
HELLO = FIXTURES / "hello.wav"
LONG = FIXTURES / "long.ogg"
SPEECH = sorted(p for p in FIXTURES.iterdir() if p.suffix in (".wav", ".ogg"))
MB = 1 << 20
REFUSED_RACE = {"outside_roots", "changed_during_check"}


# --- helpers ----------------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An audio root, with a sibling directory outside it."""
    (tmp_path / "outside").mkdir()
    path = tmp_path / "root"
    path.mkdir()
    return path


def promptly(fn: Callable[[], T], seconds: float = 5.0) -> T:
    """`fn()`, failing the test if it has not returned within `seconds` (it may block forever)."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def call() -> None:
        try:
            outcome.append(fn())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still blocked after {seconds} s"
    if failure:
        raise failure[0]
    return outcome[0]


def refusal(fn: Callable[[], object]) -> AudioError:
    """The AudioError `fn()` raises, within a few seconds."""
    with pytest.raises(AudioError) as info:
        promptly(fn)
    return info.value


def open_refusal(raw: str, roots: list[Path], max_bytes: int = 10 * MB) -> AudioError:
    return refusal(lambda: open_audio(raw, roots, max_bytes))


def wav_bytes(seconds: float, rate: int = 8000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(np.zeros(int(seconds * rate), dtype=np.int16).tobytes())
    return buf.getvalue()


def flac_silence(seconds: int, declared_samples: int) -> bytes:
    """FLAC holding `seconds` of silence whose STREAMINFO claims `declared_samples` (0: unknown)."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="flac") as container:
        stream: Any = container.add_stream("flac", rate=SAMPLE_RATE, layout="mono")
        second = np.zeros((1, SAMPLE_RATE), dtype=np.int16)
        for i in range(seconds):
            frame = av.AudioFrame.from_ndarray(second, format="s16", layout="mono")
            frame.sample_rate, frame.pts = SAMPLE_RATE, i * SAMPLE_RATE
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    data = bytearray(buf.getvalue())
    # STREAMINFO starts at byte 8; its bytes 10..17 end with the 36-bit total sample count.
    packed = int.from_bytes(data[18:26], "big")
    packed = (packed & ~((1 << 36) - 1)) | declared_samples
    data[18:26] = packed.to_bytes(8, "big")
    return bytes(data)


def open_fds() -> set[Path]:
    return set(Path("/proc/self/fd").iterdir())


def one_shot_stale_realpath(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    """Make the next resolution of `raw` return it unresolved, as a resolution made just before
    one of its directories was swapped for a symlink would."""
    real_realpath = os.path.realpath
    stale = [raw]

    def realpath(path: Any, *, strict: bool = False) -> str:
        if stale and os.fspath(path) == raw:
            return stale.pop()
        return str(real_realpath(path, strict=strict))

    monkeypatch.setattr(os.path, "realpath", realpath)


SWAP_FILE = """
import os, sys
target, good, secret = sys.argv[1:4]
while True:
    os.link(good, target + ".good")
    os.replace(target + ".good", target)
    os.symlink(secret, target + ".evil")
    os.replace(target + ".evil", target)
"""

# RENAME_EXCHANGE swaps a directory and a symlink atomically, so the path never goes missing.
SWAP_DIR = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
a, b = (p.encode() for p in sys.argv[1:3])
while libc.renameat2(-100, a, -100, b, 2) == 0:
    pass
sys.exit(ctypes.get_errno())
"""


def swapping(script: str, *args: Path) -> subprocess.Popen[bytes]:
    """A separate process running `script`: true parallelism, unlike a thread under the GIL."""
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)])


def stop(process: subprocess.Popen[bytes]) -> None:
    process.kill()
    process.wait()


def hammer(raw: str, roots: list[Path], good: bytes, tries: int = 300) -> Counter[str]:
    """Open `raw` again and again while another process swaps it: every open must hold `good`."""
    seen: Counter[str] = Counter()
    deadline = time.monotonic() + 5
    for i in itertools.count():
        try:
            with open_audio(raw, roots, MB) as held:
                assert held.file.read() == good
            seen["opened"] += 1
        except AudioError as exc:
            assert exc.reason in REFUSED_RACE, exc.message
            seen[exc.reason] += 1
        both = seen["opened"] and seen.total() > seen["opened"]
        if i >= tries and (both or time.monotonic() > deadline):
            return seen
    raise AssertionError("unreachable")


# --- decoding good files ----------------------------------------------------------------------


@pytest.mark.parametrize("path", SPEECH, ids=lambda p: p.name)
def test_samples_identical_to_faster_whisper(path: Path) -> None:
    """Each fixture decodes to the very samples faster-whisper's decode_audio gives."""
    expected = decode_audio(str(path))
    with open_audio(str(path), [FIXTURES], 10 * MB) as held:
        audio = decode(held, max_seconds=3600)
    assert audio.samples.dtype == np.float32 and np.array_equal(audio.samples, expected)
    assert np.array_equal(decode(path, max_seconds=3600).samples, expected)
    assert np.array_equal(decode(path.read_bytes(), max_seconds=3600).samples, expected)


def test_audio_file_labels_and_closes(root: Path) -> None:
    """An opened file carries its real path, size and label, and the context manager closes it."""
    shutil.copy(HELLO, root / "a.wav")
    with open_audio(str(root / "a.wav"), [root], MB) as held:
        assert isinstance(held, AudioFile)
        assert held.path == (root / "a.wav").resolve() and held.size == HELLO.stat().st_size
        audio = decode(held, max_seconds=60)
    assert held.closed and audio.source == str(root / "a.wav")


# --- containers that lie ----------------------------------------------------------------------


@pytest.mark.parametrize("declared", [0, 2 * SAMPLE_RATE], ids=["no-duration", "claims-2s"])
def test_flac_bomb_refused_while_streaming_in_bounded_memory(declared: int) -> None:
    """A ~100 KB FLAC holding 600 s of silence is refused as too_long mid-decode, using a few MB."""
    bomb = flac_silence(600, declared)
    assert len(bomb) < 300_000
    tracemalloc.start()
    try:
        error = refusal(lambda: decode(bomb, max_seconds=30))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert error.reason == "too_long" and "decoded" in error.message
    # Decoding it all would take 600 s * 16 kHz * 4 bytes = 38 MB of float32 alone.
    assert peak < 8 * MB, peak


def test_declared_duration_refused_before_decoding() -> None:
    """A header declaring more than the limit is refused without decoding."""
    error = refusal(lambda: decode(FIXTURES / "weather.wav", max_seconds=4.5))
    assert error.reason == "too_long" and "limit is 4.5 s" in error.message
    assert "decoded" not in error.message


def test_wav_data_size_beyond_file_is_truncated(root: Path) -> None:
    """A WAV whose data chunk claims more bytes than the file holds is refused as truncated."""
    data = bytearray(wav_bytes(2.0))
    data[40:44] = (len(data) * 4).to_bytes(4, "little")
    error = refusal(lambda: decode(bytes(data), max_seconds=60))
    assert error.reason == "truncated"


def test_cut_short_flac_is_truncated() -> None:
    """A FLAC cut short declares more than it holds: truncated."""
    whole = flac_silence(60, 60 * SAMPLE_RATE)
    cut = whole[: len(whole) // 2]
    assert refusal(lambda: decode(cut, max_seconds=3600)).reason == "truncated"


@pytest.mark.parametrize("lying_rate", [False, True], ids=["honest-rate", "lying-rate"])
def test_streaming_wav_header_holding_too_much(lying_rate: bool) -> None:
    """A WAV with 0xFFFFFFFF sizes (a streaming writer's) holding 20 s is refused as too_long,
    while streaming when its byte rate lies so the header suggests 0.2 s."""
    data = bytearray(wav_bytes(20.0))
    data[4:8] = data[40:44] = (0xFFFFFFFF).to_bytes(4, "little")
    if lying_rate:
        data[28:32] = (16_000 * 100).to_bytes(4, "little")
    error = refusal(lambda: decode(bytes(data), max_seconds=5))
    assert error.reason == "too_long"
    assert ("decoded" in error.message) == lying_rate


def test_wav_without_samples_is_empty_audio() -> None:
    """A well-formed WAV with no frames is refused as empty_audio."""
    assert refusal(lambda: decode(wav_bytes(0), max_seconds=60)).reason == "empty_audio"


def test_random_bytes_are_undecodable() -> None:
    """Bytes that are no audio container are refused as undecodable."""
    noise = np.random.default_rng(7).bytes(4096)
    assert refusal(lambda: decode(noise, max_seconds=60)).reason == "undecodable"


def test_bytes_over_the_cap_are_too_large() -> None:
    """In-memory audio bigger than max_bytes is refused before decoding."""
    error = refusal(lambda: decode(HELLO.read_bytes(), max_seconds=60, max_bytes=1000))
    assert error.reason == "too_large"


def test_decode_timeout() -> None:
    """Decoding that runs past its wall-time budget stops with decode_timeout."""
    error = refusal(lambda: decode(LONG, max_seconds=3600, timeout=1e-6))
    assert error.reason == "decode_timeout"


# --- the path -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reason"),
    [("/a\0b.wav", "invalid_path"), ("/a\ud800.wav", "invalid_path"), ("a.wav", "relative_path")],
    ids=["nul", "unencodable", "relative"],
)
def test_unusable_paths(root: Path, raw: str, reason: str) -> None:
    """NUL bytes, unencodable text and relative paths are refused before anything else."""
    assert open_refusal(raw, [root]).reason == reason


def test_dotdot_escape_refused_without_touching_the_filesystem(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `..` leaving the root is outside_roots (not missing_file), and the target is never
    looked up, so jobs cannot probe for files outside the roots."""
    raw = f"{root}/../outside/nowhere/secret.wav"
    looked_up: list[str] = []
    for name in ("lstat", "stat", "open"):
        real = getattr(os, name)

        def spy(path: Any, *args: Any, _real: Any = real, **kwargs: Any) -> Any:
            looked_up.append(os.fsdecode(path))
            return _real(path, *args, **kwargs)

        monkeypatch.setattr(os, name, spy)
    error = open_refusal(raw, [root])
    assert error.reason == "outside_roots" and "set RUNNER_AUDIO_ROOTS" in error.message
    outside = str(root.parent / "outside")
    assert looked_up and not [p for p in looked_up if p.startswith(outside) or "nowhere" in p]


def test_roots_compare_components_not_prefixes(root: Path) -> None:
    """/x/root2/a.wav is not inside /x/root."""
    sibling = root.with_name(root.name + "2")
    sibling.mkdir()
    shutil.copy(HELLO, sibling / "a.wav")
    assert open_refusal(str(sibling / "a.wav"), [root]).reason == "outside_roots"


def test_symlinked_root_accepts_both_spellings(root: Path, tmp_path: Path) -> None:
    """A root that is itself a symlink (/data -> /mnt/data) accepts paths under either name."""
    shutil.copy(HELLO, root / "a.wav")
    link = tmp_path / "data"
    link.symlink_to(root, target_is_directory=True)
    for raw in (link / "a.wav", root / "a.wav"):
        with open_audio(str(raw), [link], MB) as held:
            assert held.path == (root / "a.wav").resolve()


def test_symlink_pointing_outside(root: Path, tmp_path: Path) -> None:
    """A link inside the root to a file outside is outside_roots, naming where it resolves."""
    secret = tmp_path / "outside" / "secret.wav"
    shutil.copy(HELLO, secret)
    (root / "escape.wav").symlink_to(secret)
    (root / "dangling.wav").symlink_to(tmp_path / "outside" / "nowhere.wav")
    error = open_refusal(str(root / "escape.wav"), [root])
    assert error.reason == "outside_roots" and str(secret.resolve()) in error.message
    assert "set RUNNER_AUDIO_ROOTS on the worker" in error.message
    assert open_refusal(str(root / "dangling.wav"), [root]).reason == "outside_roots"


def test_symlink_pointing_inside(root: Path) -> None:
    """A link inside the root to a file inside it is followed."""
    (root / "sub").mkdir()
    shutil.copy(HELLO, root / "sub" / "a.wav")
    (root / "link.wav").symlink_to(root / "sub" / "a.wav")
    with open_audio(str(root / "link.wav"), [root], MB) as held:
        assert held.path == (root / "sub" / "a.wav").resolve()
        assert held.file.read() == HELLO.read_bytes()


def test_symlink_loop(root: Path) -> None:
    """A loop of links is refused as symlink_loop."""
    (root / "a.wav").symlink_to(root / "b.wav")
    (root / "b.wav").symlink_to(root / "a.wav")
    assert open_refusal(str(root / "a.wav"), [root]).reason == "symlink_loop"


def test_device_via_symlink_is_never_opened(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Links to /dev/null and /dev/zero are outside_roots, and the device is never opened."""
    opened: list[str] = []
    real_open = os.open

    def spy(path: Any, *args: Any, **kwargs: Any) -> int:
        opened.append(os.fsdecode(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    for device in ("/dev/null", "/dev/zero"):
        (root / "dev.wav").unlink(missing_ok=True)
        (root / "dev.wav").symlink_to(device)
        assert open_refusal(str(root / "dev.wav"), [root]).reason == "outside_roots"
    assert not [p for p in opened if p.startswith("/dev")]


def test_device_node_inside_root_is_not_a_file(root: Path) -> None:
    """A character device inside the root is refused as not_a_file."""
    try:
        os.mknod(root / "null.wav", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("creating device nodes needs privileges")
    error = open_refusal(str(root / "null.wav"), [root])
    assert error.reason == "not_a_file" and "character device" in error.message


def test_fifo_is_not_a_file_and_never_blocks(root: Path) -> None:
    """A named pipe in the root is refused as not_a_file at once."""
    os.mkfifo(root / "pipe.wav")
    error = open_refusal(str(root / "pipe.wav"), [root])
    assert error.reason == "not_a_file" and "named pipe" in error.message


def test_fifo_swapped_in_after_the_checks_never_blocks(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A FIFO that passed the pre-open check as a file is opened without blocking and refused."""
    os.mkfifo(root / "pipe.wav")
    regular = HELLO.stat()
    real_lstat = os.lstat

    def lstat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if os.fspath(path).endswith("pipe.wav"):
            return regular
        return real_lstat(path, *args, **kwargs)

    monkeypatch.setattr(os, "lstat", lstat)
    assert open_refusal(str(root / "pipe.wav"), [root]).reason == "not_a_file"


@pytest.mark.parametrize(
    ("name", "reason"),
    [("nope.wav", "missing_file"), ("dir.wav", "not_a_file"), ("empty.wav", "empty_file")],
)
def test_plain_refusals(root: Path, name: str, reason: str) -> None:
    """Missing files, directories and empty files are refused with their reasons."""
    (root / "dir.wav").mkdir()
    (root / "empty.wav").write_bytes(b"")
    assert open_refusal(str(root / name), [root]).reason == reason


def test_too_large_at_open(root: Path) -> None:
    """A file bigger than the cap is refused before reading."""
    shutil.copy(HELLO, root / "a.wav")
    assert open_refusal(str(root / "a.wav"), [root], max_bytes=1000).reason == "too_large"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(root: Path) -> None:
    """A file the worker may not read is refused as unreadable_file."""
    shutil.copy(HELLO, root / "a.wav")
    (root / "a.wav").chmod(0)
    assert open_refusal(str(root / "a.wav"), [root]).reason == "unreadable_file"


# --- races ----------------------------------------------------------------------------------


def test_file_swap_race_never_reads_outside(root: Path, tmp_path: Path) -> None:
    """While another process swaps the path between a good file and a link to a secret outside
    the root, every successful open holds the good file, never the secret."""
    good, secret = root / "good.wav", tmp_path / "outside" / "secret.wav"
    shutil.copy(HELLO, good)
    shutil.copy(FIXTURES / "weather.wav", secret)
    target = root / "target.wav"
    process = swapping(SWAP_FILE, target, good, secret)
    try:
        while not target.exists():
            time.sleep(0.001)
        seen = hammer(str(target), [root], HELLO.read_bytes())
    finally:
        stop(process)
    assert seen["opened"] > 0 and seen.total() > seen["opened"], seen


def test_directory_swap_race_never_reads_outside(root: Path, tmp_path: Path) -> None:
    """While another process swaps a directory on the path with a link to a directory outside,
    every successful open holds the good file, never the secret."""
    (root / "dir").mkdir()
    shutil.copy(HELLO, root / "dir" / "a.wav")
    shutil.copy(FIXTURES / "weather.wav", tmp_path / "outside" / "a.wav")
    (root / "swap").symlink_to(tmp_path / "outside", target_is_directory=True)
    process = swapping(SWAP_DIR, root / "dir", root / "swap")
    try:
        time.sleep(0.05)
        if process.poll() is not None:
            pytest.skip(f"renameat2(RENAME_EXCHANGE) unavailable here (errno {process.returncode})")
        seen = hammer(str(root / "dir" / "a.wav"), [root], HELLO.read_bytes())
    finally:
        stop(process)
    assert seen["opened"] > 0, seen


def test_descriptor_check_catches_a_swapped_directory(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A path resolved just before a directory on it became a link outside is refused by the
    check of the descriptor actually opened."""
    secret = tmp_path / "outside" / "a.wav"
    shutil.copy(HELLO, secret)
    (root / "dir").symlink_to(tmp_path / "outside", target_is_directory=True)
    raw = str(root / "dir" / "a.wav")
    one_shot_stale_realpath(monkeypatch, raw)
    error = open_refusal(raw, [root])
    assert error.reason == "outside_roots" and f"opened {str(secret.resolve())!r}" in error.message


def test_without_proc_the_descriptor_is_checked_by_identity(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where /proc is missing, the same race is caught by comparing device and inode."""
    real_readlink = Path.readlink

    def readlink(self: Path) -> Path:
        if str(self).startswith("/proc/self/fd/"):
            raise FileNotFoundError(str(self))
        return real_readlink(self)

    monkeypatch.setattr(Path, "readlink", readlink)
    shutil.copy(HELLO, root / "good.wav")
    with open_audio(str(root / "good.wav"), [root], MB) as held:
        assert held.file.read() == HELLO.read_bytes()
    shutil.copy(HELLO, tmp_path / "outside" / "a.wav")
    (root / "dir").symlink_to(tmp_path / "outside", target_is_directory=True)
    raw = str(root / "dir" / "a.wav")
    one_shot_stale_realpath(monkeypatch, raw)
    assert open_refusal(raw, [root]).reason == "changed_during_check"


def test_file_grown_after_open_is_too_large(root: Path) -> None:
    """A file that grows past the cap after it was opened is refused as too_large."""
    shutil.copy(HELLO, root / "a.wav")
    size = HELLO.stat().st_size
    with open_audio(str(root / "a.wav"), [root], size) as held:
        with open(root / "a.wav", "ab") as grow:
            grow.write(b"\0" * 100_000)
        assert refusal(lambda: decode(held, max_seconds=60)).reason == "too_large"


def test_wav_reads_stop_at_its_data_chunk(root: Path) -> None:
    """Bytes appended past a WAV file's data chunk are never read: the same samples come out,
    and megabytes of trailing junk cost nothing."""
    shutil.copy(HELLO, root / "grown.wav")
    with open(root / "grown.wav", "ab") as grow:
        grow.write(b"\0" * (16 * MB))
    with open_audio(str(root / "grown.wav"), [root], 17 * MB) as held:
        grown = decode(held, max_seconds=60, timeout=2)
    assert np.array_equal(grown.samples, decode(HELLO, max_seconds=60).samples)


@pytest.mark.parametrize("name", ["long.ogg"])
def test_file_growing_while_read_is_too_large(
    root: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Growth that the size check misses is caught by the capped reader, and leaves nothing
    behind in PyAV: the next decode on the same thread succeeds."""
    shutil.copy(FIXTURES / name, root / name)
    size = (root / name).stat().st_size
    with open_audio(str(root / name), [root], size) as held:
        with open(root / name, "ab") as grow:
            grow.write(b"\0" * 200_000)
        real_fstat = os.fstat

        def fstat(fd: int) -> Any:
            # The size as it was: the file grows only once decoding has started.
            st = real_fstat(fd)
            return os.stat_result((*st[:6], size, *st[7:10]))

        monkeypatch.setattr(os, "fstat", fstat)
        error = refusal(lambda: decode(held, max_seconds=3600))
        monkeypatch.undo()
    assert error.reason == "too_large" and "grew past" in error.message
    assert decode(HELLO, max_seconds=60).duration > 1


@pytest.mark.parametrize("keep", [0.5, 0.001])
@pytest.mark.parametrize("kind", ["wav", "flac"])
def test_file_truncated_after_open(root: Path, kind: str, keep: float) -> None:
    """A file cut short after it was opened is refused (truncated or undecodable), never hangs."""
    path = root / f"a.{kind}"
    path.write_bytes(HELLO.read_bytes() if kind == "wav" else flac_silence(60, 60 * SAMPLE_RATE))
    with open_audio(str(path), [root], MB) as held:
        os.truncate(path, int(held.size * keep))
        error = refusal(lambda: decode(held, max_seconds=3600))
    assert error.reason in {"truncated", "undecodable"}


def test_every_refusal_closes_its_descriptor(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No refusal after the file was opened leaves its descriptor open."""
    (root / "empty.wav").write_bytes(b"")
    shutil.copy(HELLO, root / "a.wav")
    (root / "junk.wav").write_bytes(b"\1" * 5000)
    shutil.copy(HELLO, tmp_path / "outside" / "a.wav")
    (root / "dir").symlink_to(tmp_path / "outside", target_is_directory=True)
    swapped = str(root / "dir" / "a.wav")
    before = open_fds()
    for raw, cap in [(root / "empty.wav", MB), (root / "a.wav", 1000), (root / "nope.wav", MB)]:
        open_refusal(str(raw), [root], cap)
    one_shot_stale_realpath(monkeypatch, swapped)
    assert open_refusal(swapped, [root]).reason == "outside_roots"
    with open_audio(str(root / "junk.wav"), [root], MB) as held:
        refusal(lambda: decode(held, max_seconds=60))
    assert open_fds() == before


@pytest.mark.parametrize("how", ["file", "bytes"])
def test_playlists_never_open_other_files(
    root: Path, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ffconcat playlist (a demuxer that opens files by itself) is not audio: refused as
    undecodable, as a file in the roots or as uploaded bytes, and the file it names is never
    read, although it sits in the worker's working directory."""
    monkeypatch.chdir(root.parent / "outside")
    shutil.copy(HELLO, root.parent / "outside" / "secret.wav")
    playlist = b"ffconcat version 1.0\nfile secret.wav\n"
    if how == "bytes":
        error = refusal(lambda: decode(playlist, max_seconds=60))
    else:
        (root / "list.wav").write_bytes(playlist)
        with open_audio(str(root / "list.wav"), [root], MB) as held:
            error = refusal(lambda: decode(held, max_seconds=60))
    assert error.reason == "undecodable"


def _encoded(container: str, codec: str, rate: int) -> bytes:
    samples = decode(HELLO, max_seconds=60).samples
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream: Any = out.add_stream(codec, rate=rate)
        frame = av.AudioFrame.from_ndarray(
            (samples * 32767).astype(np.int16).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = SAMPLE_RATE
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("container", "codec", "rate"),
    [
        ("mp3", "libmp3lame", 16000),
        ("mp4", "aac", 16000),
        ("adts", "aac", 16000),
        ("ogg", "libopus", 48000),
        ("webm", "libopus", 48000),
        ("flac", "flac", 16000),
        ("aiff", "pcm_s16be", 16000),
        ("caf", "pcm_s16le", 16000),
        ("wv", "wavpack", 16000),
    ],
)
def test_common_audio_formats_decode(container: str, codec: str, rate: int) -> None:
    """The containers people send audio in are all on the demuxer allow-list."""
    audio = decode(_encoded(container, codec, rate), max_seconds=60)
    assert abs(audio.duration - 3.96) < 0.1
