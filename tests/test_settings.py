"""Settings from the environment, and the public surface of the package."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

import runner
from runner.errors import ConfigError
from runner.settings import Settings, auto_concurrency, auto_cpu_threads


def test_defaults_match_the_documented_ones() -> None:
    """An empty environment gives the documented defaults."""
    s = Settings.from_env({})
    assert s.redis_url is None and s.prefix == "{runner}" and s.model == "tiny.en"
    assert (s.lease_seconds, s.heartbeat_seconds, s.checkpoint_seconds) == (60, 10, 15)
    assert (s.checkpoint_ttl, s.max_deliveries, s.result_ttl) == (86400, 5, 7 * 86400)


def test_environment_overrides() -> None:
    """Each RUNNER_* variable sets its field, parsed to the field's type."""
    s = Settings.from_env(
        {
            "RUNNER_REDIS_URL": "redis://h:1/2",
            "RUNNER_PREFIX": "{x}",
            "RUNNER_CONCURRENCY": "3",
            "RUNNER_LEASE_SECONDS": "30.5",
            "RUNNER_AUDIO_ROOTS": "/a:/b",
            "RUNNER_MODELS": "small, big=/models/big",
            "RUNNER_STATE_DIR": "/tmp/st",
        }
    )
    assert s.redis_url == "redis://h:1/2" and s.prefix == "{x}"
    assert s.concurrency == 3 and s.lease_seconds == 30.5
    assert s.audio_roots == (Path("/a"), Path("/b"))
    assert s.models == ("small", "big=/models/big")
    assert s.state_dir == Path("/tmp/st")


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"RUNNER_CONCURRENCY": "many"}, "RUNNER_CONCURRENCY='many'"),
        ({"RUNNER_LEASE_SECONDS": "0"}, "must be positive"),
        ({"RUNNER_LEASE_SECONDS": "10", "RUNNER_HEARTBEAT_SECONDS": "10"}, "shorter than"),
        ({"RUNNER_MAX_DELIVERIES": "0"}, "at least 1"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], words: str) -> None:
    """A value that cannot work is refused at start-up, naming the variable."""
    with pytest.raises(ConfigError, match=words):
        Settings.from_env(env)


def test_automatic_concurrency_shares_the_cores() -> None:
    """Two jobs per core up to eight; threads per job fill the cores."""
    assert auto_concurrency(1) == 2 and auto_concurrency(2) == 4 and auto_concurrency(64) == 8
    assert auto_cpu_threads(2, cores=2) == 1 and auto_cpu_threads(8, cores=64) == 8
    assert auto_cpu_threads(4, cores=2) == 1


def test_public_surface_is_listed() -> None:
    """Every public module lists its names in __all__, and each listed name exists."""
    modules = [
        "audio", "cli", "connection", "embedded", "engine", "errors", "formats", "job", "keys",
        "logs", "producer", "settings", "store", "transcript", "worker",
    ]  # fmt: skip
    for name in modules:
        module = importlib.import_module(f"runner.{name}")
        exported = module.__all__
        assert exported, name
        for item in exported:
            assert hasattr(module, item), f"runner.{name}.{item}"
    assert sorted(runner.__all__) == runner.__all__
    for item in runner.__all__:
        assert hasattr(runner, item), item
    assert runner.__version__ == "0.1.0"


def test_every_error_is_a_runner_error() -> None:
    """One exception tree: everything exported from errors derives from RunnerError."""
    from runner import errors

    for name in errors.__all__:
        obj = getattr(errors, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, errors.RunnerError), name


_ARENAS = """
import ctypes, sys, threading
import numpy as np
from runner.malloc import limit_malloc_arenas
took = limit_malloc_arenas() if sys.argv[1] == "limit" else None
barrier = threading.Barrier(8)
def churn():
    barrier.wait()
    for _ in range(300):
        blocks = [np.ones(5000) for _ in range(20)]
        del blocks
threads = [threading.Thread(target=churn) for _ in range(8)]
[t.start() for t in threads]
[t.join() for t in threads]
print(took, flush=True)
ctypes.CDLL(None).malloc_stats()
"""


def test_worker_caps_malloc_arenas_unless_told_otherwise() -> None:
    """Eight threads allocating at once get their own arenas, unless the worker capped them;
    MALLOC_ARENA_MAX in the environment is left to glibc."""
    import os
    import subprocess
    import sys

    def arenas(mode: str, **env: str) -> tuple[str, int]:
        base = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
        out = subprocess.run(
            [sys.executable, "-c", _ARENAS, mode], env={**base, **env},
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        return out.stdout.strip(), out.stderr.count("Arena ")

    assert arenas("limit") == ("True", 2)
    assert arenas("none")[1] > 2
    assert arenas("limit", MALLOC_ARENA_MAX="3") == ("False", 3)
