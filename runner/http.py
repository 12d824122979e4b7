"""A small HTTP endpoint for orchestrators and Prometheus: /metrics, /healthz, /readyz.

It runs as a task in the worker's task group (no thread, no framework): each request is one
short-lived connection answered from state the worker already keeps.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import anyio
from anyio.abc import SocketStream, TaskStatus

from .logs import get_logger

__all__ = ["Response", "serve"]

log = get_logger("runner.http")

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"

    @classmethod
    def json(cls, status: int, doc: object) -> Response:
        return cls(status, json.dumps(doc).encode() + b"\n")


Handler = Callable[[str], Response]


async def serve(
    host: str,
    port: int,
    handler: Handler,
    *,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Answer GET requests on host:port until cancelled; reports the bound port when started."""
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port, reuse_port=False)
    bound = listener.extra(anyio.abc.SocketAttribute.local_port)
    log.info("http.listening", host=host, port=bound)
    task_status.started(bound)

    async def answer(stream: SocketStream) -> None:
        async with stream:
            try:
                with anyio.fail_after(5):
                    request = await _read_head(stream)
                    method, _, rest = request.partition(" ")
                    path = rest.split(" ", 1)[0].split("?", 1)[0]
                    if method not in ("GET", "HEAD"):
                        response = Response.json(405, {"error": "GET only"})
                    else:
                        response = handler(path)
                    head = (
                        f"HTTP/1.1 {response.status} {_REASONS.get(response.status, '')}\r\n"
                        f"Content-Type: {response.content_type}\r\n"
                        f"Content-Length: {len(response.body)}\r\n"
                        "Connection: close\r\n\r\n"
                    ).encode()
                    await stream.send(head + (b"" if method == "HEAD" else response.body))
            except (TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                pass

    async with listener:
        await listener.serve(answer)


async def _read_head(stream: SocketStream) -> str:
    data = b""
    while b"\r\n\r\n" not in data and b"\n\n" not in data and len(data) < 16_384:
        data += await stream.receive()
    return data.split(b"\n", 1)[0].decode("latin-1").strip()
