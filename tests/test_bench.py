"""A smoke run of the benchmark code with tiny sizes (no figures are asserted)."""

from __future__ import annotations

import anyio
import pytest

from bench.common import redis_server
from bench.queue import _raw_throughput, _runner_latency, _runner_throughput
from bench.report import memory_section, queue_section
from bench.scale import reclaim_pass, submission_rate


def test_queue_and_scale_benchmarks_run() -> None:
    """The queue and scale benchmarks complete on tiny sizes and produce a report section."""
    with redis_server() as server:
        assert anyio.run(_runner_throughput, server.url, 50) > 0
        assert anyio.run(_raw_throughput, server.url, 50) > 0
        latencies = anyio.run(_runner_latency, server.url, 5)
        assert len(latencies) == 5 and all(x > 0 for x in latencies)
        assert anyio.run(submission_rate, server.url, 200) > 0
        assert anyio.run(reclaim_pass, server.url, 300, 20) > 0
    spread = {"median": 1.0, "low": 1.0, "high": 1.0, "n": 1}
    fake = {
        "when": "today",
        "machine": {"cpu": "x", "cores": 2, "memory_gb": 1, "os": "x", "python": "3",
                    "versions": dict.fromkeys(VERSIONS, "1")},
        "redis": "7",
        "backlog": 50,
        "concurrency": 32,
        "latency_jobs": 5,
        "systems": {n: {"jobs_per_s": spread, "p50_ms": spread, "p99_ms": spread}
                    for n in ("runner", "raw redis-py loop", "arq")},
        "targets": {"vs_fastest_peer": 1.5, "vs_raw": 0.6, "p50_ms": 2.0},
    }  # fmt: skip
    text = "\n".join(queue_section(fake))
    assert "fastest peer (arq)" in text
    peaks = ("concurrency_1", "concurrency_4", "alone_1", "alone_4", "driven_1", "driven_4")
    memory = {
        "when": "today",
        "machine": fake["machine"],
        "peak_rss_mb": dict.fromkeys(peaks, spread),
        "ratio": spread,
        "alone_ratio": spread,
        "redis_bytes": {"per_queued_job": 1.0, "per_result_minute": 1.0},
        "targets": {"ratio": 1.5},
    }
    assert "faster-whisper alone" in "\n".join(memory_section(memory))


pytestmark = pytest.mark.slow
VERSIONS = ("runner", "faster-whisper", "ctranslate2", "redis")
