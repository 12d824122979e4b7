"""Settings: one frozen value, read from the environment only by `Settings.from_env()`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .breaker import BreakerConfig
from .errors import ConfigError

__all__ = ["DEFAULT_MODEL", "ENV_PREFIX", "Settings", "auto_concurrency", "auto_cpu_threads"]

ENV_PREFIX = "RUNNER_"
DEFAULT_MODEL = "tiny.en"


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def auto_concurrency(cores: int | None = None) -> int:
    """Jobs per process when none is configured: two per core, at most eight.

    Replicas with one thread each beat fewer replicas with more threads on small models, and a
    second job per core keeps the engine busy while the other decodes audio or talks to Redis
    (both measured in docs/benchmarks.md). Past eight, the memory each running job holds costs
    more than the extra replicas gain.
    """
    return max(1, min(2 * (cores or _cores()), 8))


def auto_cpu_threads(concurrency: int, cores: int | None = None) -> int:
    """Threads per CTranslate2 replica: the cores shared out between the concurrent jobs."""
    return max(1, (cores or _cores()) // max(1, concurrency))


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a worker or producer needs to know. Times are seconds unless named otherwise.

    Each field maps to an environment variable: `RUNNER_` plus the field name in capitals
    (`lease_seconds` ← `RUNNER_LEASE_SECONDS`). The README's table lists them all.
    """

    #: Redis URL (`redis://`, `rediss://`, `unix://`). None: an embedded Redis (see `embedded`).
    redis_url: str | None = None
    #: TLS (`rediss://`): the CA bundle to trust, and the client certificate and key to present.
    redis_ca_file: Path | None = None
    redis_cert_file: Path | None = None
    redis_key_file: Path | None = None
    #: Key prefix. The braces make it a Redis Cluster hash tag: all keys in one slot.
    prefix: str = "{runner}"
    #: Default model: a name (`tiny.en` is bundled) or a CTranslate2 model directory.
    model: str = DEFAULT_MODEL
    #: Further models a job may ask for by name, as `name` or `name=directory`.
    models: tuple[str, ...] = ()
    #: `cpu`, `cuda` or `auto`.
    device: str = "cpu"
    #: CTranslate2 compute type (`int8`, `float16`, `default`...).
    compute_type: str = "int8"
    #: Directories that audio paths must resolve into (after symlinks). Empty: no paths at all,
    #: only uploaded audio (`audio_key`); `runner transcribe` allows its files' own folders.
    audio_roots: tuple[Path, ...] = ()
    #: Jobs run at once per worker process. 0: automatic (`auto_concurrency`).
    concurrency: int = 0
    #: Threads per model replica. 0: automatic (`auto_cpu_threads`).
    cpu_threads: int = 0
    #: A pending entry idle this long belongs to a dead or frozen worker and is reclaimed.
    lease_seconds: float = 60.0
    #: How often a worker renews the leases of its running jobs.
    heartbeat_seconds: float = 10.0
    #: How often a worker with free slots looks for entries to reclaim (handed back or expired).
    reclaim_seconds: float = 1.0
    #: Wall time between checkpoints of a running job.
    checkpoint_seconds: float = 15.0
    #: Checkpoint lifetime, refreshed on each write.
    checkpoint_ttl: int = 86_400
    #: Deliveries after which an entry is dead-lettered.
    max_deliveries: int = 5
    #: Lifetime of a stored result and of a finished job's status.
    result_ttl: int = 7 * 86_400
    #: Longest audio accepted, in seconds.
    max_audio_seconds: float = 3 * 3600.0
    #: Largest audio file accepted, in bytes.
    max_audio_bytes: int = 1 << 30
    #: Largest audio held in a Redis key (`audio_key`), in bytes.
    max_audio_key_bytes: int = 64 << 20
    #: Wall time allowed to decode one job's audio; past it the job fails (`decode_timeout`).
    decode_timeout_seconds: float = 600.0
    #: How long one XREADGROUP blocks waiting for new entries, in milliseconds.
    block_ms: int = 2_000
    #: Approximate cap on the events stream.
    events_maxlen: int = 100_000
    #: Submissions allowed per client: `jobs/seconds` (sliding window), or `0` for no limit.
    rate_limit: str = "100/60"
    #: Time a stopping worker gives running jobs before handing them back.
    shutdown_grace_seconds: float = 30.0
    #: How long a job's Redis writes are retried through an outage before the attempt is left
    #: to the lease (and reclaimed later).
    retry_seconds: float = 120.0
    #: Circuit breaker (one per model and process): `rate` or `consecutive`.
    breaker_mode: str = "rate"
    #: rate mode: the share of engine failures among the last `breaker_window` jobs that opens it.
    breaker_failure_rate: float = 0.5
    breaker_window: int = 20
    #: rate mode: no verdict on fewer jobs than this.
    breaker_min_calls: int = 5
    #: consecutive mode: engine failures in a row that open it.
    breaker_consecutive: int = 5
    #: Seconds the breaker stays open before probing.
    breaker_open_seconds: float = 60.0
    #: Jobs admitted at once as probes while half-open.
    breaker_probes: int = 1
    #: A probe without a verdict (its first window) after this long counts as a failure.
    breaker_probe_seconds: float = 120.0
    #: Port for Prometheus metrics (and health); 0: none.
    metrics_port: int = 0
    #: Port for /healthz and /readyz (and metrics); 0: none.
    health_port: int = 0
    #: Address the metrics and health endpoints listen on.
    http_host: str = "0.0.0.0"
    #: Where the embedded Redis keeps its socket and data when no URL is set.
    state_dir: Path = field(default_factory=lambda: _default_state_dir(os.environ))
    #: `auto` (console on a terminal, JSON otherwise), `console` or `json`.
    log_format: str = "auto"
    #: Log level name.
    log_level: str = "info"

    def __post_init__(self) -> None:
        positive = ("lease_seconds", "heartbeat_seconds", "reclaim_seconds", "checkpoint_seconds")
        for name in (*positive, "block_ms"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{ENV_PREFIX}{name.upper()} must be positive")
        if self.concurrency < 0 or self.cpu_threads < 0:
            raise ConfigError("concurrency and cpu_threads must be 0 (automatic) or positive")
        if self.max_deliveries < 1:
            raise ConfigError(f"{ENV_PREFIX}MAX_DELIVERIES must be at least 1")
        if self.heartbeat_seconds >= self.lease_seconds:
            raise ConfigError(
                f"{ENV_PREFIX}HEARTBEAT_SECONDS ({self.heartbeat_seconds:g}) must be shorter than "
                f"{ENV_PREFIX}LEASE_SECONDS ({self.lease_seconds:g}), or live jobs get reclaimed"
            )
        if not self.prefix:
            raise ConfigError(f"{ENV_PREFIX}PREFIX must not be empty")
        self.breaker()  # refuses impossible breaker settings at start-up
        _ = self.rate

    def breaker(self) -> BreakerConfig:
        return BreakerConfig(
            mode=self.breaker_mode,
            failure_rate=self.breaker_failure_rate,
            window=self.breaker_window,
            min_calls=self.breaker_min_calls,
            consecutive=self.breaker_consecutive,
            open_seconds=self.breaker_open_seconds,
            probes=self.breaker_probes,
            probe_seconds=self.breaker_probe_seconds,
        )

    @property
    def rate(self) -> tuple[int, float]:
        """The rate limit as (jobs, window seconds); (0, 0) when off."""
        text = self.rate_limit.strip()
        if text in ("", "0", "off"):
            return 0, 0.0
        jobs, sep, seconds = text.partition("/")
        try:
            limit, window = int(jobs), float(seconds) if sep else 60.0
        except ValueError:
            raise ConfigError(
                f"{ENV_PREFIX}RATE_LIMIT={text!r} must look like 100/60 (jobs/seconds), or 0"
            ) from None
        if limit < 0 or window <= 0:
            raise ConfigError(f"{ENV_PREFIX}RATE_LIMIT={text!r} must be positive")
        return limit, window

    @property
    def effective_concurrency(self) -> int:
        return self.concurrency or auto_concurrency()

    @property
    def effective_cpu_threads(self) -> int:
        return self.cpu_threads or auto_cpu_threads(self.effective_concurrency)

    def with_(self, **changes: Any) -> Settings:
        """A copy with some fields changed (command-line flags over the environment)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read `RUNNER_*` variables; unset or empty ones keep their defaults."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper(), "").strip()
            if not raw:
                continue
            values[f.name] = _parse(f.name, str(f.type), raw)
        if "state_dir" not in values:
            values["state_dir"] = _default_state_dir(env)
        return cls(**values)


def _default_state_dir(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "runner"


def _parse(name: str, type_name: str, raw: str) -> Any:
    var = ENV_PREFIX + name.upper()
    try:
        if type_name == "int":
            return int(raw)
        if type_name == "float":
            return float(raw)
        if type_name in ("Path", "Path | None"):
            return Path(raw).expanduser()
        if type_name == "tuple[Path, ...]":
            return tuple(Path(p).expanduser() for p in raw.split(os.pathsep) if p)
        if type_name == "tuple[str, ...]":
            return tuple(p.strip() for p in raw.split(",") if p.strip())
    except ValueError:
        raise ConfigError(f"{var}={raw!r} is not a valid {type_name}") from None
    return raw
