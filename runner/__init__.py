"""runner: crash-safe speech transcription jobs on Redis Streams with faster-whisper.

Producers submit jobs (`Client.submit`, `runner submit`, or a plain `XADD`); `runner worker`
processes read them through one consumer group, transcribe them and store the results.
"""

from importlib.metadata import PackageNotFoundError, version

from .engine import EngineRequest, Transcriber, Transcription, WhisperTranscriber
from .errors import (
    AudioError,
    ConfigError,
    EngineError,
    ErrorClass,
    InvalidJob,
    JobError,
    JobFailed,
    JobNotFound,
    LeaseLost,
    RateLimited,
    RunnerError,
    TransientError,
)
from .formats import render
from .job import Job, JobState, Task
from .keys import Keys
from .producer import Client, submit
from .settings import Settings
from .store import JobStatus
from .transcript import Segment, Transcript, Word
from .worker import Worker

try:
    __version__ = version("runner")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "AudioError",
    "Client",
    "ConfigError",
    "EngineError",
    "EngineRequest",
    "ErrorClass",
    "InvalidJob",
    "Job",
    "JobError",
    "JobFailed",
    "JobNotFound",
    "JobState",
    "JobStatus",
    "Keys",
    "LeaseLost",
    "RateLimited",
    "RunnerError",
    "Segment",
    "Settings",
    "Task",
    "Transcriber",
    "Transcript",
    "Transcription",
    "TransientError",
    "WhisperTranscriber",
    "Word",
    "Worker",
    "__version__",
    "render",
    "submit",
]
