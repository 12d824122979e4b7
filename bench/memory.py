"""Memory: a worker's peak resident memory with concurrency 1 and 4 on the same files, and
what Redis holds per queued job and per stored result."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from typing import Any

from redis import Redis

from runner.job import Job
from runner.keys import Keys
from runner.settings import Settings
from runner.store import Store
from runner.transcript import Segment, Transcript

from .common import FIXTURES, ROOT, Spread, redis_server, runner_env

_PEAK = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def peak_rss_mb(url: str, concurrency: int) -> float:
    """Queue the samples (four times over) and run one burst worker; its peak RSS in MB."""
    prefix = f"{{mb-{uuid.uuid4().hex[:8]}}}"
    env = runner_env(url, prefix, RUNNER_AUDIO_ROOTS=str(FIXTURES), RUNNER_RATE_LIMIT="0",
                     RUNNER_CONCURRENCY=str(concurrency), RUNNER_CPU_THREADS="1")  # fmt: skip
    subprocess.run([sys.executable, "-m", "runner", "submit", *_samples()], env=env, cwd=ROOT,
                   check=True, capture_output=True)  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-c", _PEAK, sys.executable, "-m", "runner", "worker", "--burst"],
        env=env, cwd=ROOT, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return int(out.stdout.strip()) / 1024


_ALONE = """
import sys
from concurrent.futures import ThreadPoolExecutor
from faster_whisper import WhisperModel
from runner.engine import bundled_model_path
n, files = int(sys.argv[1]), sys.argv[2:]
model = WhisperModel(str(bundled_model_path()), device="cpu", compute_type="int8",
                     cpu_threads=1, num_workers=n)
def work(path):
    segments, _ = model.transcribe(path, beam_size=5)
    return list(segments)
# A shared queue in submission order, as the worker takes jobs.
with ThreadPoolExecutor(n) as pool:
    list(pool.map(work, files))
"""


# The engine driven as the worker drives it, minus Redis and the event loop: the worker's
# decoder and transcriber, each window a call in one shared pool of engine threads.
_DRIVEN = """
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from runner.attempt import _next_window
from runner.audio import decode
from runner.engine import EngineRequest, WhisperTranscriber
from runner.malloc import limit_malloc_arenas
from runner.settings import Settings
limit_malloc_arenas()
n, files = int(sys.argv[1]), sys.argv[2:]
engine = WhisperTranscriber(Settings(cpu_threads=1, concurrency=n), num_workers=n)
engine.load(engine.default_model)
request = EngineRequest(model=engine.default_model)
threads = ThreadPoolExecutor(n)
def job(path):
    audio = threads.submit(decode, Path(path), max_seconds=1e9).result()
    started = threads.submit(engine.transcribe, audio, request).result()
    while True:
        steps = threads.submit(_next_window, started, audio.duration).result()
        if steps and steps[-1][0] is None:
            return
with ThreadPoolExecutor(n) as jobs:
    list(jobs.map(job, files))
"""


def _samples() -> list[str]:
    return [str(f) for f in sorted(FIXTURES.glob("*.*")) if f.suffix in (".wav", ".ogg")] * 4


def alone_peak_rss_mb(concurrency: int, script: str = _ALONE) -> float:
    """faster-whisper alone on the same files, `concurrency` at a time: the engine's share."""
    env = {**os.environ, "MALLOC_ARENA_MAX": "2"}  # as the worker runs
    # Through the same small parent as the worker: a process started from this one (large by
    # now, if the benchmarks before loaded a model) would report this one's peak as its own.
    command = [sys.executable, "-c", _PEAK, sys.executable, "-c", script, str(concurrency)]
    out = subprocess.run(
        [*command, *_samples()], env=env, cwd=ROOT, check=True, capture_output=True, text=True
    )
    return int(out.stdout.strip()) / 1024


def redis_bytes(url: str) -> dict[str, float]:
    """Bytes of Redis memory per queued job and per stored result."""
    import anyio

    redis = Redis.from_url(url, protocol=2)

    def used() -> int:
        return int(redis.info("memory")["used_memory"])

    settings = Settings(redis_url=url, prefix=f"{{rb-{uuid.uuid4().hex[:8]}}}", rate_limit="0")
    n = 5000

    async def queue_jobs() -> None:
        from redis.asyncio import Redis as AsyncRedis

        client = AsyncRedis.from_url(url, protocol=2)
        store = Store(client, settings)
        jobs = [(Job(job_id=uuid.uuid4().hex, audio="/data/audio/meeting-2026-11-29.wav",
                     language="en", client_id="bench"), b"") for _ in range(n)]  # fmt: skip
        for start in range(0, n, 500):
            await store.enqueue_many(jobs[start : start + 500])
        await client.aclose()

    before = used()
    anyio.run(queue_jobs)
    per_job = (used() - before) / n

    # A result of one minute of speech: about 12 segments of 5 s, 15 words each.
    words = " ".join(["word"] * 15)
    segments = tuple(
        Segment(id=i + 1, seek=(i // 6) * 3000, start=i * 5.0, end=i * 5.0 + 4.8,
                text=f" {words}.", tokens=tuple(range(50_000, 50_020)), temperature=0.0,
                avg_logprob=-0.2, compression_ratio=1.3, no_speech_prob=0.01)
        for i in range(12)
    )  # fmt: skip
    keys = Keys(settings.prefix)
    before = used()
    pipe = redis.pipeline(transaction=False)
    for i in range(n):
        t = Transcript(job_id=f"r{i}", language="en", language_probability=1.0, duration=60.0,
                       segments=segments, model="tiny.en")  # fmt: skip
        pipe.set(keys.result(t.job_id), t.to_json(), ex=3600)
    pipe.execute()
    per_result = (used() - before) / n
    redis.close()
    return {"per_queued_job": per_job, "per_result_minute": per_result}


def run(repetitions: int = 3) -> dict[str, Any]:
    one, four, alone_one, alone_four, driven_one, driven_four = [], [], [], [], [], []
    with redis_server() as server:
        for rep in range(repetitions):
            one.append(peak_rss_mb(server.url, 1))
            four.append(peak_rss_mb(server.url, 4))
            alone_one.append(alone_peak_rss_mb(1))
            alone_four.append(alone_peak_rss_mb(4))
            driven_one.append(alone_peak_rss_mb(1, _DRIVEN))
            driven_four.append(alone_peak_rss_mb(4, _DRIVEN))
            print(f"  rep {rep + 1}: peak RSS c=1 {one[-1]:.0f} MB, c=4 {four[-1]:.0f} MB; "
                  f"faster-whisper alone {alone_one[-1]:.0f} MB, {alone_four[-1]:.0f} MB; "
                  f"driven as the worker {driven_one[-1]:.0f} MB, {driven_four[-1]:.0f} MB",
                  flush=True)  # fmt: skip
        stored = redis_bytes(server.url)
    return {
        "peak_rss_mb": {
            "concurrency_1": Spread.of(one).to_dict(),
            "concurrency_4": Spread.of(four).to_dict(),
            "alone_1": Spread.of(alone_one).to_dict(),
            "alone_4": Spread.of(alone_four).to_dict(),
            "driven_1": Spread.of(driven_one).to_dict(),
            "driven_4": Spread.of(driven_four).to_dict(),
        },
        "ratio": Spread.of([b / a for a, b in zip(one, four, strict=True)]).to_dict(),
        "alone_ratio": Spread.of(
            [b / a for a, b in zip(alone_one, alone_four, strict=True)]
        ).to_dict(),
        "redis_bytes": stored,
        "cpu_count": os.cpu_count(),
        "targets": {"ratio": 1.5},
    }
