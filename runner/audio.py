"""Audio input: where a job's audio may come from, and decoding it within the configured limits.

Everything here is blocking; the worker calls it in a thread. Every refusal is an `AudioError`
with a precise reason, because a bad file is the job's fault and must never look like an engine
failure.

A job's file is checked and opened once (`open_audio`) and then only ever read through that one
descriptor, so nothing swapped in at the same path afterwards (a symlink to a secret, a FIFO
that never ends) can reach the decoder. Decoding streams, counting bytes, samples and seconds as
it goes, so a small file that unpacks into days of audio is refused before it costs memory.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import io
import itertools
import math
import os
import stat
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import numpy.typing as npt

from .errors import AudioError

if TYPE_CHECKING:
    import av

__all__ = ["SAMPLE_RATE", "Audio", "AudioFile", "decode", "open_audio"]

SAMPLE_RATE = 16_000
# A container that declares more audio than it holds was cut short (an interrupted upload).
_TRUNCATION_TOLERANCE_S = 1.0
_WAV_HEAD_BYTES = 4096
# faster-whisper resamples decoded frames in groups of this many samples; the same grouping
# keeps the samples bit-for-bit identical to its `decode_audio`.
_GROUP_SAMPLES = 500_000
# O_NONBLOCK: opening a FIFO swapped in after the checks returns at once instead of waiting for
# a writer. O_NOFOLLOW: a final component that became a symlink fails instead of being followed.
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
# Linux appends this to /proc/self/fd links of files unlinked since they were opened.
_DELETED = " (deleted)"
_ROOTS_HINT = "set RUNNER_AUDIO_ROOTS on the worker"


@dataclass(frozen=True, slots=True, eq=False)
class Audio:
    """Decoded audio: mono float32 samples at 16 kHz, as faster-whisper takes them."""

    samples: npt.NDArray[np.float32]
    #: Where it came from, for logs (a path or `key:<name>`).
    source: str

    @property
    def duration(self) -> float:
        return len(self.samples) / SAMPLE_RATE


class AudioFile:
    """An audio file held open on one descriptor, checked to be a regular file inside the roots.

    Close it (or use it as a context manager) once decoded.
    """

    __slots__ = ("file", "label", "max_bytes", "path", "size")

    def __init__(
        self, file: BinaryIO, path: Path, size: int, label: str, max_bytes: int | None
    ) -> None:
        self.file = file
        #: The real path it was opened at.
        self.path = path
        #: Its size when opened.
        self.size = size
        #: The path as the job gave it, for messages.
        self.label = label
        #: The size cap it was opened under; `decode` keeps reads within it.
        self.max_bytes = max_bytes

    @property
    def closed(self) -> bool:
        return self.file.closed

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> AudioFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AudioFile({self.label!r}, path={str(self.path)!r}, size={self.size})"


# --- opening ----------------------------------------------------------------------------------


def open_audio(raw: str, roots: Sequence[Path], max_bytes: int) -> AudioFile:
    """Open a job's `audio` path once, refusing anything that is not a regular file in the roots.

    The path is checked lexically before the filesystem is touched, so a job cannot probe for
    files outside the roots; then its real path; then the descriptor actually opened, which is
    what makes a symlink or directory swapped in during the checks harmless.
    """
    _check_syntax(raw)
    given, resolved = _root_forms(roots)
    lexical = os.path.normpath(raw)
    if not _within(lexical, given + resolved):
        where = "is" if lexical == raw else f"normalizes to {lexical!r},"
        raise _outside(f"audio={raw!r} {where} outside the audio roots", given + resolved)
    real = _resolve(raw)
    if not _within(real, resolved):
        raise _outside(f"audio={raw!r} resolves to {real!r}, outside the audio roots", resolved)
    return _hold(real, raw, max_bytes, resolved)


def _open_trusted(path: Path, label: str) -> AudioFile:
    """Open a local file the caller trusts (benchmarks, tests): no roots, no size cap."""
    return _hold(_resolve(str(path)), label, None, None)


def _hold(real: str, label: str, max_bytes: int | None, roots: tuple[str, ...] | None) -> AudioFile:
    """Open `real` once and check what was opened: inside `roots` (None: trusted, unchecked), a
    regular file, not empty, within `max_bytes`."""
    _precheck(real, label)
    fd = _open_descriptor(real, label)
    try:
        if roots is not None:
            _check_held_inside(fd, real, label, roots)
        size = _check_held_file(fd, label, max_bytes)
        # Back to blocking: a regular file never blocks, and Python's readers expect it.
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    # fdopen closes the descriptor itself if it fails.
    return AudioFile(os.fdopen(fd, "rb"), Path(real), size, label, max_bytes)


def _check_syntax(raw: str) -> None:
    if "\0" in raw:
        raise AudioError("invalid_path", f"audio={raw!r} contains a NUL byte")
    try:
        os.fsencode(raw)
    except UnicodeError:
        raise AudioError("invalid_path", f"audio={raw!r} cannot be encoded as a path") from None
    if not PurePath(raw).is_absolute():
        raise AudioError("relative_path", f"audio={raw!r} must be an absolute path")


def _root_forms(roots: Sequence[Path]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Each root as given (made absolute) and resolved: a root may itself be a symlink
    (/data -> /mnt/data) and producers name files under the link."""
    given = tuple(dict.fromkeys(os.path.normpath(_absolute(root)) for root in roots))
    resolved = tuple(dict.fromkeys(os.path.realpath(root) for root in roots))
    return given, resolved


def _absolute(root: Path) -> Path:
    # Path.cwd() only when needed: it fails once the working directory has been removed.
    return root if root.is_absolute() else Path.cwd() / root


def _within(path: str, roots: Iterable[str]) -> bool:
    # Component by component: /data2/x is not inside /data.
    candidate = PurePath(path)
    return any(candidate.is_relative_to(root) for root in roots)


def _outside(message: str, roots: Iterable[str]) -> AudioError:
    listed = ", ".join(dict.fromkeys(roots))
    return AudioError("outside_roots", f"{message} ({listed}); {_ROOTS_HINT}")


def _resolve(raw: str) -> str:
    try:
        return os.path.realpath(raw)
    except OSError as exc:
        # Non-strict realpath only fails when a link it saw stops being one as it reads it.
        raise _changed(raw, f"resolving it failed ({exc.strerror})") from None


def _precheck(real: str, raw: str) -> None:
    """Refuse what is plainly not a regular file without opening it: opening a device or FIFO
    can have side effects. The descriptor is checked again after opening."""
    try:
        st = os.lstat(real)
    except OSError as exc:
        raise _open_error(exc, real, raw) from None
    if stat.S_ISLNK(st.st_mode):
        # realpath leaves a link unresolved only when it loops, or when it changed since.
        _check_loop(real, raw)
        raise _changed(raw, f"{real!r} was replaced by a symbolic link")
    if not stat.S_ISREG(st.st_mode):
        raise _not_a_file(raw, st.st_mode)


def _check_loop(real: str, raw: str) -> None:
    try:
        os.path.realpath(real, strict=True)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise AudioError(
                "symlink_loop", f"audio={raw!r} leads to a loop of symbolic links at {real!r}"
            ) from None


def _open_descriptor(real: str, raw: str) -> int:
    try:
        return os.open(real, _OPEN_FLAGS)
    except OSError as exc:
        raise _open_error(exc, real, raw) from None


def _open_error(exc: OSError, real: str, raw: str) -> AudioError:
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return AudioError("missing_file", f"audio file {raw!r} does not exist")
    if exc.errno == errno.ELOOP:
        # The checks saw a regular file; O_NOFOLLOW met a symlink: it was swapped meanwhile.
        return _changed(raw, f"{real!r} was replaced by a symbolic link")
    if exc.errno == errno.ENAMETOOLONG:
        return AudioError("invalid_path", f"audio={raw!r} is too long a path")
    if exc.errno == errno.ENXIO:
        return AudioError("not_a_file", f"audio={raw!r} is not a regular file (a socket)")
    return AudioError(
        "unreadable_file", f"audio file {raw!r} is not readable by the worker ({exc.strerror})"
    )


def _changed(raw: str, how: str) -> AudioError:
    return AudioError(
        "changed_during_check", f"audio file {raw!r} changed while it was being checked: {how}"
    )


def _check_held_inside(fd: int, real: str, raw: str, roots: tuple[str, ...]) -> None:
    """The file actually opened must lie inside the roots, whatever happened to the path since
    it was resolved (a directory on it swapped for a symlink, say)."""
    try:
        link = Path(f"/proc/self/fd/{fd}").readlink()
    except OSError:
        _check_held_identity(fd, real, raw, roots)
        return
    # Unlinked since it was opened (replaced by a rename): where it was is still where it was.
    held = str(link).removesuffix(_DELETED)
    if not _strictly_within(held, roots):
        raise _outside(
            f"audio={raw!r} opened {held!r}, outside the audio roots (the path changed while it "
            "was being checked)",
            roots,
        )


def _check_held_identity(fd: int, real: str, raw: str, roots: tuple[str, ...]) -> None:
    """Without /proc: the file held must be the one now found at a real path inside the roots."""
    now = os.path.realpath(real)
    try:
        found = Path(now).lstat()
    except OSError:
        found = None
    held = os.fstat(fd)
    if (
        not _within(now, roots)
        or found is None
        or (found.st_dev, found.st_ino) != (held.st_dev, held.st_ino)
    ):
        raise _changed(raw, f"the file opened is no longer the one at {real!r}")


def _strictly_within(path: str, roots: Iterable[str]) -> bool:
    # A file is never a root itself; this also keeps "<root> (deleted)" from passing.
    candidate = PurePath(path)
    return any(PurePath(root) in candidate.parents for root in roots)


def _check_held_file(fd: int, raw: str, max_bytes: int | None) -> int:
    """The size of the regular file on `fd`, refusing anything else, empty or too large."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise _not_a_file(raw, st.st_mode)
    if st.st_size == 0:
        raise AudioError("empty_file", f"audio file {raw!r} is empty")
    if max_bytes is not None and st.st_size > max_bytes:
        raise AudioError(
            "too_large", f"audio file {raw!r} is {st.st_size} bytes; the limit is {max_bytes}"
        )
    return st.st_size


def _not_a_file(raw: str, mode: int) -> AudioError:
    return AudioError("not_a_file", f"audio={raw!r} is not a regular file (a {_kind(mode)})")


def _kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "named pipe"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISLNK, "symbolic link"),
    )
    return next((name for test, name in kinds if test(mode)), "special file")


# --- decoding ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Limits:
    label: str
    max_seconds: float
    max_bytes: int | None
    timeout: float | None
    #: time.monotonic() past which decoding gives up; None: never.
    deadline: float | None

    def check_time(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise AudioError(
                "decode_timeout",
                f"{self.label}: decoding took longer than {self.timeout:g} s; gave up",
            )

    def check_size(self, size: int) -> None:
        if self.max_bytes is not None and size > self.max_bytes:
            raise AudioError(
                "too_large", f"{self.label}: {size} bytes of audio; the limit is {self.max_bytes}"
            )


def decode(
    source: AudioFile | Path | bytes,
    *,
    max_seconds: float,
    max_bytes: int | None = None,
    timeout: float | None = None,
    label: str = "",
) -> Audio:
    """Decode to 16 kHz mono, refusing audio longer than `max_seconds` or bigger than `max_bytes`.

    An `AudioFile` is read through its one descriptor and keeps the size cap it was opened
    under unless `max_bytes` is given; a `Path` is opened directly (trusted local use only);
    `bytes` are checked against `max_bytes` up front. The declared duration is checked before
    decoding; the decoded length is counted while decoding, because headers can lie. `timeout`
    is wall time in seconds, checked between frames and reads.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    if isinstance(source, bytes):
        limits = _Limits(label or "<bytes>", max_seconds, max_bytes, timeout, deadline)
        limits.check_size(len(source))
        return _decode_stream(io.BytesIO(source), len(source), limits)
    if isinstance(source, Path):
        with _open_trusted(source, label or str(source)) as held:
            limits = _Limits(held.label, max_seconds, max_bytes, timeout, deadline)
            return _decode_held(held, limits)
    cap = source.max_bytes if max_bytes is None else max_bytes
    return _decode_held(source, _Limits(label or source.label, max_seconds, cap, timeout, deadline))


def _decode_held(held: AudioFile, limits: _Limits) -> Audio:
    # The size now, not at open: the file may have grown or shrunk since.
    size = os.fstat(held.file.fileno()).st_size
    limits.check_size(size)
    return _decode_stream(held.file, size, limits)


def _decode_stream(stream: BinaryIO, size: int, limits: _Limits) -> Audio:
    stream.seek(0)
    end = _check_wav_length(stream.read(_WAV_HEAD_BYTES), size, limits.label)
    stream.seek(0)
    samples, declared = _decode_samples(_CappedReader(stream, limits, end), limits)
    audio = Audio(samples=samples, source=limits.label)
    if audio.samples.size == 0:
        raise AudioError("empty_audio", f"{limits.label}: the file holds no audio samples")
    if declared is not None and declared - audio.duration > _TRUNCATION_TOLERANCE_S:
        raise AudioError(
            "truncated",
            f"{limits.label}: the header declares {declared:.1f} s but only "
            f"{audio.duration:.1f} s could be decoded (the file was cut short)",
        )
    return audio


def _check_wav_length(head: bytes, total: int, label: str) -> int | None:
    """Refuse a WAV file whose data chunk is shorter than its header says (an upload cut short).

    Decoders play such files up to where they stop, so nothing else would notice. Returns where
    the data chunk ends, when its header says: nothing past it is audio, and a demuxer walking
    megabytes of trailing bytes would take minutes over two seconds of sound.
    """
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
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
            return None if size in (0, 0xFFFFFFFF) else offset + 8 + size
        offset += 8 + size + (size & 1)
    return None


class _CappedReader:
    """What PyAV reads through: refuses bytes past the size cap (a file that grew after it was
    checked), stops at the deadline, and never closes the file it reads (its owner does)."""

    def __init__(self, stream: BinaryIO, limits: _Limits, end: int | None = None) -> None:
        self._stream = stream
        self._limits = limits
        #: Where the audio ends, if known: the reader shows a file that stops there.
        self._end = end
        #: The refusal raised from inside PyAV, which may swallow it as a read error.
        self.failure: AudioError | None = None

    def read(self, n: int = -1) -> bytes:
        if self.failure is not None:
            return b""  # The end, for FFmpeg; the failure is raised once it returns.
        try:
            return self._read(n)
        except AudioError as exc:
            self.failure = exc
            raise

    def _read(self, n: int) -> bytes:
        self._limits.check_time()
        if self._end is not None:
            left = max(self._end - self._stream.tell(), 0)
            n = left if n < 0 else min(n, left)
        cap = self._limits.max_bytes
        if cap is None:
            return self._stream.read(n)
        start = self._stream.tell()
        # One byte beyond the cap is enough to know the file holds more than it may.
        room = max(cap - start, 0) + 1
        data = self._stream.read(room if n < 0 else min(n, room))
        if start + len(data) > cap:
            raise AudioError(
                "too_large",
                f"{self._limits.label}: the file grew past the limit of {cap} bytes while being "
                "read",
            )
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_END and self._end is not None:
            return self._stream.seek(self._end + offset, io.SEEK_SET)
        return self._stream.seek(offset, whence)

    def tell(self) -> int:
        return self._stream.tell()

    def seekable(self) -> bool:
        return True


def _decode_samples(
    reader: _CappedReader, limits: _Limits
) -> tuple[npt.NDArray[np.float32], float | None]:
    """The samples, as faster-whisper's `decode_audio` makes them, and the declared duration."""
    import av

    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    try:
        with _open_container(reader, limits.label) as container:
            declared = _declared_seconds(container, limits)
            chunks, count = _collect(_resampled(container, resampler, limits), declared, limits)
    except (av.FFmpegError, ValueError, IndexError) as exc:
        raise reader.failure or _undecodable(limits.label, exc) from None
    finally:
        # PyAV stashes exceptions raised in read callbacks per thread and raises them from the
        # next call into it: take any left over so a later job on this thread never sees it.
        _drop_stashed_error()
        # faster-whisper's workaround: resampler objects leak unless the collector runs
        # (SYSTRAN/faster-whisper#390).
        del resampler
        gc.collect()
    if reader.failure is not None:
        # FFmpeg took the refused read for the end of the file.
        raise reader.failure
    return _to_float(chunks, count), declared


# FFmpeg picks a demuxer by the content it is given, and some demuxers open other files
# themselves: a ten-line "ffconcat" playlist in a .wav file (or an upload) would have the
# worker read audio outside the roots, relative to its working directory. Only audio and
# media containers are allowed, and nothing may open a resource of its own (no protocol is on
# the list: the one input is the descriptor the runner opened and checked).
AUDIO_CONTAINERS = (
    "wav,w64,rf64,mp3,ogg,flac,mov,matroska,aac,aiff,caf,amr,wv,ape,asf,avi,mpegts,mpeg,flv,"
    "au,ac3,eac3,dts,tta,voc,mpc,mpc8,truehd,mlp,loas,xwma,dsf,sox,ircam,oma"
)
_DEMUXER_OPTIONS = {"format_whitelist": AUDIO_CONTAINERS, "protocol_whitelist": "none"}


def _open_container(reader: _CappedReader, label: str) -> Any:
    import av

    try:
        return av.open(reader, mode="r", metadata_errors="ignore", options=_DEMUXER_OPTIONS)
    except (av.FFmpegError, ValueError) as exc:
        raise reader.failure or AudioError(
            "undecodable", f"{label}: not an audio file ({_why(exc)})"
        ) from None


def _undecodable(label: str, exc: BaseException) -> AudioError:
    return AudioError("undecodable", f"{label}: cannot decode audio ({_why(exc)})")


def _why(exc: BaseException) -> str:
    # FFmpeg's own words, without the errno and the '<none>' name PyAV gives a file object.
    strerror = getattr(exc, "strerror", None)
    return strerror if isinstance(strerror, str) and strerror else str(exc)


def _drop_stashed_error() -> None:
    import av.error

    # Only ever one of ours, already raised or recorded in the reader.
    with contextlib.suppress(Exception):
        av.error.err_check(0)


def _declared_seconds(container: Any, limits: _Limits) -> float | None:
    """The duration the container declares, refused at once if over the limit; None when it
    does not say."""
    streams = container.streams.audio
    if not streams:
        raise AudioError("no_audio_stream", f"{limits.label}: the file has no audio stream")
    stream = streams[0]
    if stream.duration is not None and stream.time_base is not None:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        seconds = container.duration / 1_000_000
    else:
        return None
    if not math.isfinite(seconds) or seconds <= 0:
        return None
    if seconds > limits.max_seconds:
        raise AudioError(
            "too_long",
            f"{limits.label}: {seconds:.1f} s of audio; the limit is {limits.max_seconds:g} s",
        )
    return seconds


def _resampled(
    container: Any, resampler: av.AudioResampler, limits: _Limits
) -> Iterator[av.AudioFrame]:
    """16 kHz mono s16 frames, grouped and resampled exactly as faster-whisper does."""
    frames = itertools.chain(_grouped(_decoded(container, limits)), [None])
    for frame in frames:
        yield from resampler.resample(frame)


def _decoded(container: Any, limits: _Limits) -> Iterator[av.AudioFrame]:
    import av.error

    frames = container.decode(audio=0)
    while True:
        limits.check_time()
        try:
            frame = next(frames)
        except StopIteration:
            return
        except av.error.InvalidDataError:
            # As faster-whisper does: skip it (the generator then usually ends there).
            continue
        yield frame


def _grouped(frames: Iterator[av.AudioFrame]) -> Iterator[av.AudioFrame]:
    import av

    fifo = av.AudioFifo()
    for frame in frames:
        frame.pts = None  # Ignore timestamp check, as faster-whisper does.
        fifo.write(frame)
        if fifo.samples >= _GROUP_SAMPLES and (group := fifo.read()) is not None:
            yield group
    if fifo.samples > 0 and (rest := fifo.read()) is not None:
        yield rest


def _collect(
    frames: Iterator[av.AudioFrame], declared: float | None, limits: _Limits
) -> tuple[list[npt.NDArray[np.int16]], int]:
    """The s16 samples in chunks and their count, refused as soon as they pass the limit."""
    most = math.floor(limits.max_seconds * SAMPLE_RATE)
    chunks: list[npt.NDArray[np.int16]] = []
    count = 0
    for frame in frames:
        # Resampled to s16 mono: one row of int16.
        chunk = np.asarray(frame.to_ndarray(), dtype=np.int16).reshape(-1)
        count += chunk.size
        if count > most:
            said = "no duration" if declared is None else f"{declared:.1f} s"
            raise AudioError(
                "too_long",
                f"{limits.label}: more than {limits.max_seconds:g} s of audio decoded (the "
                f"header declares {said}); the limit is {limits.max_seconds:g} s",
            )
        chunks.append(chunk)
    return chunks, count


def _to_float(chunks: list[npt.NDArray[np.int16]], count: int) -> npt.NDArray[np.float32]:
    samples = np.empty(count, dtype=np.float32)
    start = 0
    for chunk in chunks:
        samples[start : start + chunk.size] = chunk
        start += chunk.size
    # s16 back to float32, as faster-whisper does (exact: the divisor is a power of two).
    samples /= 32768.0
    return samples
