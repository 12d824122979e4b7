"""Logging: structlog configured once; console on a terminal, JSON lines otherwise.

Logs go to stderr so that commands whose output is data (`runner result`, `--json`) keep stdout
clean for pipes.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

__all__ = ["configure", "get_logger"]


def configure(fmt: str = "auto", level: str = "info") -> None:
    """Set up structlog and the standard library's logging. `fmt`: auto, console or json."""
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    console = sys.stderr.isatty() if fmt == "auto" else fmt == "console"
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=True)
        if console
        else structlog.processors.JSONRenderer()
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if not console:
        shared.append(structlog.processors.dict_tracebacks)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # faster-whisper logs every file it opens at INFO; keep the libraries to warnings.
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr, force=True)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
