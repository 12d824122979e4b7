"""The exception tree. Every error the runner raises on purpose is a `RunnerError`.

```
RunnerError
├── ConfigError            settings or command-line values that cannot work
├── JobError               the job's own fault: permanent, never retried
│   ├── InvalidJob         a field is missing, malformed or out of range
│   └── AudioError         the audio is missing, outside the roots, undecodable, too long, too big
├── TransientError         worth retrying: Redis unreachable, timeouts
├── EngineError            the transcription engine itself failed (model load, memory, runtime)
├── LeaseLost              this worker no longer holds the job (its fencing token is stale)
├── JobNotFound            no job with that id
├── JobFailed              waited for a job that ended without a result
└── RateLimited            submission refused by the rate limiter, with when to retry
```

The class decides what happens to a job: `JobError` fails it at once, `TransientError` retries,
`EngineError` releases it and counts against the circuit breaker, `LeaseLost` drops it quietly.
Anything else that escapes a job is an error of the runner's own: logged with its traceback, the
job handed back with the attempt charged, and dead-lettered as `internal` past the attempt limit.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "AudioError",
    "ConfigError",
    "EngineError",
    "ErrorClass",
    "InvalidJob",
    "JobError",
    "JobFailed",
    "JobNotFound",
    "LeaseLost",
    "RateLimited",
    "RunnerError",
    "TransientError",
]


class ErrorClass(StrEnum):
    """Who is to blame for a failure; decides retry, dead letter or breaker."""

    JOB = "job"
    TRANSIENT = "transient"
    ENGINE = "engine"
    #: An error of the runner's own (a bug): retried, then dead-lettered past the attempt limit.
    INTERNAL = "internal"


class RunnerError(Exception):
    """Root of every error the runner raises on purpose."""


class ConfigError(RunnerError):
    """A setting or command-line value that cannot work."""


class JobError(RunnerError):
    """The job's own fault. Permanent: retrying the same input fails the same way.

    `reason` is a short machine-readable code (``missing_field``, ``outside_roots``...) and the
    message says precisely what is wrong, for the producer who reads the dead letter.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class InvalidJob(JobError):
    """A job field is missing, malformed or out of range."""


class AudioError(JobError):
    """The audio cannot be used: missing, outside the roots, undecodable, too long, too big."""


class TransientError(RunnerError):
    """A failure that may go away by itself (Redis unreachable, a timeout)."""


class EngineError(RunnerError):
    """The transcription engine failed, not the job: the model would fail any job right now."""


class LeaseLost(RunnerError):
    """This worker's fencing token for a job is no longer current: another attempt owns it."""

    def __init__(self, job_id: str, token: int) -> None:
        super().__init__(f"job {job_id}: fencing token {token} is stale; another worker owns it")
        self.job_id = job_id
        self.token = token


class JobNotFound(RunnerError):
    """No job with this id is known (never submitted, or its record expired)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job {job_id!r}")
        self.job_id = job_id


class JobFailed(RunnerError):
    """A job that was waited for ended without a result."""

    def __init__(self, job_id: str, state: str, error: str) -> None:
        super().__init__(f"job {job_id} {state}: {error}")
        self.job_id = job_id
        self.state = state
        self.error = error


class RateLimited(RunnerError):
    """Submission refused: the client sent more jobs than its window allows."""

    def __init__(self, client_id: str, retry_after: float) -> None:
        super().__init__(
            f"rate limit reached for client {client_id!r}; retry in {retry_after:.1f} s"
        )
        self.client_id = client_id
        self.retry_after = retry_after
