"""Transcription throughput: the runner against faster-whisper alone, on the same files.

The batch is every committed sample, twice (a few minutes of audio). The limit is a plain loop
calling faster-whisper directly in its best configuration on this machine: the fastest of
(num_workers, cpu_threads, parallel files) = (1, all cores, 1) and (cores, 1, cores). The runner
is one in-process worker with the automatic choice of concurrency and threads, and, for
comparison, the other choices. Times exclude loading the model; the runner's include decoding,
its Redis round trips and everything else it does per job.
"""

from __future__ import annotations

import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
from redis.asyncio import Redis

from runner.engine import WhisperTranscriber, bundled_model_path
from runner.keys import Keys
from runner.producer import Client
from runner.settings import Settings, auto_concurrency, auto_cpu_threads
from runner.worker import Worker

from .common import FIXTURES, Spread, redis_server


def batch() -> list[Path]:
    files = sorted(FIXTURES.glob("*.wav")) + sorted(FIXTURES.glob("*.ogg"))
    return files * 2


def audio_seconds(files: list[Path]) -> float:
    from runner.audio import decode

    return sum(decode(f, max_seconds=3600).duration for f in files)


def direct(files: list[Path], workers: int, threads: int) -> float:
    """faster-whisper alone: wall seconds for the batch (model already loaded)."""
    from faster_whisper import WhisperModel

    model = WhisperModel(
        str(bundled_model_path()), device="cpu", compute_type="int8",
        num_workers=workers, cpu_threads=threads,
    )  # fmt: skip

    def one(path: Path) -> int:
        segments, _ = model.transcribe(str(path))
        return len(list(segments))

    began = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, files))
    return time.perf_counter() - began


async def through_runner(url: str, files: list[Path], concurrency: int, threads: int) -> float:
    settings = Settings(
        redis_url=url,
        prefix=f"{{tb-{uuid.uuid4().hex[:8]}}}",
        concurrency=concurrency,
        cpu_threads=threads,
        audio_roots=(FIXTURES,),
        rate_limit="0",
        log_level="warning",
    )
    redis: Any = Redis.from_url(url, protocol=2)
    client = Client(redis, settings)
    ids = [await client.submit(f) for f in files]
    worker = Worker(settings, redis, WhisperTranscriber(settings), burst=True)
    await worker.run()
    assert worker.completed == len(files)
    times: dict[bytes, list[float]] = {}
    for _, f in await redis.xrange(Keys(settings.prefix).events):
        kind = f[b"type"]
        if kind in (b"job.started", b"job.completed"):
            times.setdefault(kind, []).append(float(f[b"time"]))
    await redis.aclose()
    del ids
    return float(max(times[b"job.completed"]) - min(times[b"job.started"]))


def run(repetitions: int = 3) -> dict[str, Any]:
    from runner.logs import configure

    configure("json", "warning")
    files = batch()
    seconds = audio_seconds(files)
    cores = len(os.sched_getaffinity(0))
    auto = (auto_concurrency(cores), auto_cpu_threads(auto_concurrency(cores), cores))
    direct_configs = sorted({(1, cores), (cores, 1)})
    runner_configs = sorted({auto, (1, cores), (cores, 1), (2 * cores, 1)})
    results: dict[str, list[float]] = {}
    with redis_server() as server:
        for rep in range(repetitions):
            for w, t in direct_configs:
                results.setdefault(f"direct {w}x{t}", []).append(direct(files, w, t))
            for c, t in runner_configs:
                wall = anyio.run(through_runner, server.url, files, c, t)
                results.setdefault(f"runner {c}x{t}", []).append(wall)
            print(
                f"  rep {rep + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in results.items()),
                flush=True,
            )
    best_direct = min((k for k in results if k.startswith("direct")),
                      key=lambda k: Spread.of(results[k]).median)  # fmt: skip
    return {
        "files": len(files),
        "audio_s": seconds,
        "cores": cores,
        "auto": f"runner {auto[0]}x{auto[1]}",
        "limit": best_direct,
        "wall_s": {k: Spread.of(v).to_dict() for k, v in results.items()},
        "targets": {"vs_direct": 0.97},
    }
