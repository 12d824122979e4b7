"""Recovery: what a crash costs a long job, how fast a peer takes over, how fast a handoff is.

Each repetition runs real `runner worker` processes against a private Redis on an 8-minute file
(the two-minute sample four times over):

- baseline: one uninterrupted run (engine time = job.started → job.completed, server clock);
- resume: worker A is SIGKILLed at ~70 %, worker B (already running) reclaims and resumes from
  the checkpoint; cost = (A's time until the kill + B's time) / baseline;
- zero: the same, with the checkpoint deleted at the kill, so B restarts from zero;
- failover: kill → B's job.started (target: lease + 2 s);
- handoff: SIGTERM to A (grace 0) → B's job.started (target: 2 s).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from redis import Redis

from runner.audio import decode
from runner.keys import Keys

from .common import FIXTURES, ROOT, Spread, redis_server, runner_env

LEASE_S = 5.0
SETTINGS = {
    "RUNNER_LEASE_SECONDS": str(LEASE_S),
    "RUNNER_HEARTBEAT_SECONDS": "1",
    "RUNNER_RECLAIM_SECONDS": "0.5",
    "RUNNER_CHECKPOINT_SECONDS": "1",
    "RUNNER_CONCURRENCY": "1",
}


def long_audio(directory: Path, copies: int = 4) -> Path:
    """The long sample `copies` times over, as 16 kHz WAV."""
    audio = decode(FIXTURES / "long.ogg", max_seconds=3600)
    samples = np.tile(audio.samples, copies)
    path = directory / f"long-x{copies}.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16_000)
        out.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


class Bench:
    def __init__(self, url: str, audio: Path, logs: Path) -> None:
        self.url = url
        self.audio = audio
        self.logs = logs
        self.redis: Any = Redis.from_url(url, protocol=2)
        self.prefix = f"{{bench-{uuid.uuid4().hex[:8]}}}"
        self.keys = Keys(self.prefix)
        self.env = runner_env(url, self.prefix, RUNNER_AUDIO_ROOTS=str(audio.parent), **SETTINGS)

    def now(self) -> float:
        seconds, micros = self.redis.time()
        return float(seconds) + float(micros) / 1e6

    @contextmanager
    def worker(self, name: str, **env: str) -> Iterator[subprocess.Popen[bytes]]:
        log = self.logs / f"{name}-{uuid.uuid4().hex[:6]}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "runner", "worker"],
                env={**self.env, **env},
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=out,
            )
            try:
                self._wait(lambda: b"worker.started" in log.read_bytes(), 60)
                yield proc
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait(30)

    def submit(self) -> str:
        job_id = uuid.uuid4().hex
        self.redis.xadd(self.keys.stream, {"audio": str(self.audio), "job_id": job_id})
        return job_id

    def events(self, job_id: str) -> list[dict[str, Any]]:
        out = []
        for _, fields in self.redis.xrange(self.keys.events):
            f = {k.decode(): v.decode() for k, v in fields.items()}
            if f["job_id"] == job_id:
                f["time"] = float(f["time"])
                f["data"] = json.loads(f["data"]) if f["data"] else {}
                out.append(f)
        return out

    def progress(self, job_id: str) -> float:
        h = self.redis.hgetall(self.keys.checkpoint(job_id))
        if not h:
            return 0.0
        return float(h[b"processed_s"]) / float(h[b"total_s"])

    def state(self, job_id: str) -> str:
        raw = self.redis.hget(self.keys.job(job_id), "state")
        return raw.decode() if raw else ""

    @staticmethod
    def _wait(check: Any, within: float) -> None:
        deadline = time.monotonic() + within
        while not check():
            if time.monotonic() > deadline:
                raise TimeoutError("benchmark step took too long")
            time.sleep(0.01)

    def baseline(self) -> float:
        with self.worker("base"):
            job_id = self.submit()
            self._wait(lambda: self.state(job_id) == "completed", 600)
        ev = {e["type"]: e["time"] for e in self.events(job_id)}
        return float(ev["job.completed"] - ev["job.started"])

    def interrupted(self, *, keep_checkpoint: bool, at: float = 0.7) -> dict[str, float]:
        """A runs the job until `at`, is killed; B (already up) finishes it."""
        with self.worker("a") as a:
            job_id = self.submit()
            self._wait(lambda: self.state(job_id) == "running", 60)
            with self.worker("b"):
                self._wait(lambda: self.progress(job_id) >= at, 600)
                a.send_signal(signal.SIGKILL)
                killed = self.now()
                if not keep_checkpoint:
                    self.redis.delete(
                        self.keys.checkpoint(job_id), self.keys.checkpoint_segments(job_id)
                    )
                self._wait(lambda: self.state(job_id) == "completed", 600)
        started = [e["time"] for e in self.events(job_id) if e["type"] == "job.started"]
        completed = next(e for e in self.events(job_id) if e["type"] == "job.completed")
        return {
            "a_s": killed - started[0],
            "b_s": completed["time"] - started[1],
            "failover_s": started[1] - killed,
            "resumed_from": completed["data"].get("resumed_from") or 0.0,
        }

    def handoff(self, at: float = 0.5) -> float:
        """SIGTERM to A with no grace: time until B has started the job."""
        with self.worker("a", RUNNER_SHUTDOWN_GRACE_SECONDS="0") as a:
            job_id = self.submit()
            self._wait(lambda: self.state(job_id) == "running", 60)
            with self.worker("b"):
                self._wait(lambda: self.progress(job_id) >= at, 600)
                a.send_signal(signal.SIGTERM)
                asked = self.now()
                self._wait(lambda: self.state(job_id) == "completed", 600)
                a.wait(60)
        started = [e["time"] for e in self.events(job_id) if e["type"] == "job.started"]
        return float(started[1] - asked)


def run(repetitions: int = 3) -> dict[str, Any]:
    with redis_server() as server, tempfile.TemporaryDirectory() as tmp:
        audio = long_audio(Path(tmp))
        logs = Path(tmp) / "logs"
        logs.mkdir()
        bench = Bench(server.url, audio, logs)
        base, resume, zero, failover, handoff = [], [], [], [], []
        for rep in range(repetitions):
            b = bench.baseline()
            r = bench.interrupted(keep_checkpoint=True)
            z = bench.interrupted(keep_checkpoint=False)
            h = bench.handoff()
            base.append(b)
            resume.append((r["a_s"] + r["b_s"]) / b)
            zero.append((z["a_s"] + z["b_s"]) / b)
            failover.append(r["failover_s"])
            handoff.append(h)
            print(
                f"  rep {rep + 1}: baseline {b:.1f} s, resume x{resume[-1]:.3f} "
                f"(from {r['resumed_from']:.0f} s), zero x{zero[-1]:.3f}, "
                f"failover {r['failover_s']:.2f} s, handoff {h:.2f} s",
                flush=True,
            )
        with wave.open(str(audio)) as w:
            audio_s = w.getnframes() / w.getframerate()
    return {
        "audio_s": audio_s,
        "lease_s": LEASE_S,
        "settings": SETTINGS,
        "baseline_s": Spread.of(base).to_dict(),
        "resume_ratio": Spread.of(resume).to_dict(),
        "restart_ratio": Spread.of(zero).to_dict(),
        "failover_s": Spread.of(failover).to_dict(),
        "handoff_s": Spread.of(handoff).to_dict(),
        "targets": {
            "resume_ratio": 1.15,
            "failover_s": LEASE_S + 2,
            "handoff_s": 2.0,
        },
    }
