"""The `runner` command. Settings come from `RUNNER_*` variables; flags override them.

Exit codes: 0 success; 1 a job failed or was not found; 2 bad usage or settings;
69 Redis unreachable; 75 refused by the rate limiter (retry later).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from . import __version__
from .connection import open_redis, resolve_url
from .embedded import EmbeddedRedis
from .errors import (
    ConfigError,
    InvalidJob,
    JobFailed,
    JobNotFound,
    RateLimited,
    RunnerError,
    TransientError,
)
from .formats import FORMATS, render
from .job import JobState
from .logs import configure
from .producer import Client
from .progress import ProgressView
from .settings import Settings
from .store import JobStatus
from .transcript import Transcript

__all__ = ["main"]

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 69
EXIT_TEMPFAIL = 75


def _job_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--language", help="spoken language code (default: detect)")
    parser.add_argument("--task", choices=("transcribe", "translate"), default="transcribe")
    parser.add_argument("--model", help="model name (default: the worker's default)")
    parser.add_argument("--beam-size", type=int, default=5, help="beam size (default: 5)")
    parser.add_argument("--word-timestamps", action="store_true", help="time every word")
    parser.add_argument("--vad", action="store_true", help="skip silence with the VAD filter")
    parser.add_argument("--prompt", help="initial prompt (vocabulary, spelling hints)")
    parser.add_argument("--format", choices=tuple(FORMATS), default="txt", help="output format")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runner",
        description="Crash-safe transcription jobs on Redis Streams with faster-whisper.",
    )
    parser.add_argument("--version", action="version", version=f"runner {__version__}")
    parser.add_argument("--redis-url", help="Redis URL (env RUNNER_REDIS_URL; unset: embedded)")
    parser.add_argument("--prefix", help="key prefix (env RUNNER_PREFIX, default {runner})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("worker", help="run a worker until stopped")
    p.add_argument("--concurrency", type=int, help="jobs at once (env RUNNER_CONCURRENCY)")
    p.add_argument("--burst", action="store_true", help="exit once nothing is left to read")
    p.add_argument("--model", help="default model (env RUNNER_MODEL)")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics (and health)")
    p.add_argument("--health-port", type=int, help="serve /healthz and /readyz (and metrics)")

    p = sub.add_parser("submit", help="queue audio files as jobs")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--job-id", help="your id for the job (one file only); resubmitting is a no-op")
    p.add_argument("--client-id", help="who is submitting (rate limits, stats)")
    p.add_argument("--upload", action="store_true", help="send the bytes (workers share no disk)")
    p.add_argument("--wait", action="store_true", help="wait for the results and print them")
    p.add_argument("--timeout", type=float, help="with --wait: give up after this many seconds")
    p.add_argument("--json", action="store_true", help="print job ids as JSON")
    _job_options(p)

    p = sub.add_parser("status", help="show a job's state")
    p.add_argument("job_id", metavar="ID")
    p.add_argument("--json", action="store_true", help="one JSON document")

    p = sub.add_parser("watch", help="follow a job's progress until it ends")
    p.add_argument("job_id", metavar="ID")

    p = sub.add_parser("cancel", help="cancel a queued or running job")
    p.add_argument("job_id", metavar="ID")

    p = sub.add_parser("stats", help="queue, workers and totals")
    p.add_argument("--json", action="store_true", help="one JSON document")

    p = sub.add_parser("result", help="print a finished job's transcript")
    p.add_argument("job_id", metavar="ID")
    p.add_argument("--format", choices=tuple(FORMATS), default="txt")
    p.add_argument("--json", action="store_true", help="same as --format json")

    p = sub.add_parser("transcribe", help="transcribe files now, in this process, and print them")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--concurrency", type=int, help="jobs at once (default: automatic)")
    _job_options(p)

    p = sub.add_parser("dead", help="jobs that ended without a result: list, retry, purge")
    dead = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = dead.add_parser("list", help="show dead letters, oldest first")
    q.add_argument("--limit", type=int, default=100)
    q.add_argument("--json", action="store_true", help="one JSON document")
    q = dead.add_parser("retry", help="resubmit dead letters as fresh jobs (same id and fields)")
    q.add_argument("refs", nargs="*", metavar="ID", help="dead letter id or job id")
    q.add_argument("--all", action="store_true", help="every dead letter")
    q = dead.add_parser("purge", help="delete dead letters")
    q.add_argument("refs", nargs="*", metavar="ID", help="dead letter id or job id (default: all)")

    p = sub.add_parser("embedded", help="the embedded Redis used when no URL is set")
    p.add_argument("action", choices=("status", "stop"))
    return parser


def _print(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _stamp(ts: float | None) -> str:
    if ts is None:
        return "-"
    when = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{when} ({time.time() - ts:.0f} s ago)"


def _show_status(status: JobStatus) -> str:
    rows = [
        ("job", status.job_id),
        ("state", status.state.value),
        ("stage", status.stage),
        ("attempts", str(status.attempts)),
        ("worker", status.worker or "-"),
        ("created", _stamp(status.created_at)),
        ("started", _stamp(status.started_at)),
        ("finished", _stamp(status.finished_at)),
    ]
    if status.progress is not None:
        p = status.progress
        rows.append(("progress", f"{p.processed_s:.1f} / {p.total_s:.1f} s ({p.percent:.0f}%)"))
        rows.append(("checkpoint", f"{p.segments} segments, {_stamp(p.updated_at)} by {p.worker}"))
    if status.error:
        rows.append(
            ("error", f"{status.error} [{status.reason}]" if status.reason else status.error)
        )
    return "".join(f"{name:<10} {value}\n" for name, value in rows)


def _render_all(
    outcomes: dict[str, Transcript | RunnerError], fmt: str, names: dict[str, str]
) -> int:
    """Print outcomes in submission order (the order of `names`); returns how many failed."""
    outcomes = {job_id: outcomes[job_id] for job_id in names}
    failures = 0
    if fmt == "json":
        docs: list[Any] = []
        for job_id, outcome in outcomes.items():
            if isinstance(outcome, Transcript):
                docs.append(outcome.to_dict())
            else:
                failures += 1
                docs.append({"job_id": job_id, "error": str(outcome)})
        _print(json.dumps(docs[0] if len(docs) == 1 else docs, ensure_ascii=False, indent=2))
        _print("\n")
        return failures
    for job_id, outcome in outcomes.items():
        if len(outcomes) > 1:
            _print(f"==> {names.get(job_id, job_id)} <==\n")
        if isinstance(outcome, Transcript):
            _print(render(outcome, fmt))
        else:
            failures += 1
            sys.stderr.write(f"runner: {names.get(job_id, job_id)}: {outcome}\n")
        if len(outcomes) > 1:
            _print("\n")
    return failures


def _options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "language": args.language,
        "task": args.task,
        "model": args.model,
        "beam_size": args.beam_size,
        "word_timestamps": args.word_timestamps,
        "vad_filter": args.vad,
        "initial_prompt": args.prompt,
    }


def _existing_files(names: Sequence[str]) -> list[Path]:
    paths = [Path(n) for n in names]
    for path in paths:
        if not path.is_file():
            raise ConfigError(f"{path}: no such file")
    return paths


async def _cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from .engine import WhisperTranscriber
    from .malloc import limit_malloc_arenas
    from .worker import Worker

    limit_malloc_arenas()

    settings = settings.with_(
        concurrency=args.concurrency,
        model=args.model,
        metrics_port=args.metrics_port,
        health_port=args.health_port,
    )
    async with open_redis(settings, wait=True) as redis:
        worker = Worker(
            settings, redis, WhisperTranscriber(settings), burst=args.burst, handle_signals=True
        )
        await worker.run()
    return 0


async def _cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    files = _existing_files(args.files)
    if args.job_id and len(files) > 1:
        raise ConfigError("--job-id takes one file")
    async with Client.open(settings) as client:
        ids: dict[str, str] = {}
        for path in files:
            common = {"job_id": args.job_id, "client_id": args.client_id, **_options(args)}
            if args.upload:
                job_id = await client.submit(audio_bytes=path.read_bytes(), **common)
            else:
                job_id = await client.submit(path, **common)
            ids[job_id] = str(path)
        if not args.wait:
            if args.json:
                _print(json.dumps([{"job_id": j, "file": f} for j, f in ids.items()]) + "\n")
            else:
                _print("".join(f"{job_id}\n" for job_id in ids))
            return 0
        view = None
        if sys.stderr.isatty():
            view = ProgressView(sys.stderr, tty=True)
            for job_id, name in ids.items():
                view.add(job_id, Path(name).name)
        try:
            with anyio.fail_after(args.timeout):
                outcomes = await client.wait_all(list(ids), on_event=view)
        except TimeoutError:
            sys.stderr.write(f"runner: timed out after {args.timeout:g} s waiting for jobs\n")
            return EXIT_FAILED
    return EXIT_FAILED if _render_all(outcomes, args.format, ids) else 0


async def _cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    async with Client.open(settings) as client:
        status = await client.status(args.job_id)
    _print(json.dumps(status.to_dict()) + "\n" if args.json else _show_status(status))
    return 0


def _outcome_line(status: JobStatus) -> str:
    took = ""
    if status.finished_at and status.created_at:
        took = f" in {status.finished_at - status.created_at:.1f} s"
    line = f"{status.state.value}{took}, {status.attempts} attempt(s)"
    if status.error:
        line += f": {status.error}"
    return line


async def _cmd_watch(args: argparse.Namespace, settings: Settings) -> int:
    from .events import TERMINAL_EVENTS, follow, newest_id

    async with Client.open(settings) as client:
        store = client.store
        after = await newest_id(store.redis, store.keys)
        status = await client.status(args.job_id)
        view = ProgressView(sys.stdout, tty=sys.stdout.isatty())
        view.add(args.job_id, args.job_id)
        if not status.state.terminal:
            if status.progress is not None:
                p = status.progress
                view.seed(args.job_id, p.processed_s, p.total_s, p.worker)
            else:
                _print(f"{status.state.value}" + (f" on {status.worker}" if status.worker else ""))
                _print("\n")
            async for event in follow(store.redis, store.keys, {args.job_id}, after=after):
                if event is not None:
                    view(event)
                if event is None or event.type in TERMINAL_EVENTS:
                    status = await client.status(args.job_id)
                    if status.state.terminal:
                        break
        view.finish(args.job_id, _outcome_line(status))
    return 0 if status.state is JobState.COMPLETED else EXIT_FAILED


async def _cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    async with Client.open(settings) as client:
        cancelled = await client.cancel(args.job_id)
        status = await client.status(args.job_id)
    _print("cancelled\n" if cancelled else f"already {status.state.value}\n")
    return 0


async def _cmd_stats(args: argparse.Namespace, settings: Settings) -> int:
    from .stats import collect

    async with Client.open(settings) as client:
        stats = await collect(
            client.store.redis, client.store.keys, heartbeat_seconds=settings.heartbeat_seconds
        )
    if args.json:
        _print(json.dumps(stats.to_dict()) + "\n")
        return 0
    jobs = stats.jobs
    lines = [
        f"stream    {stats.stream_length} entries: {stats.lag} waiting, {stats.pending} pending",
        "jobs      " + ", ".join(f"{k} {v}" for k, v in jobs.items()),
        f"dead      {stats.dead_letters} dead letters",
        f"workers   {len(stats.workers)} live",
    ]
    for w in stats.workers:
        lines.append(
            f"  {w.name}  {w.busy}/{w.slots} busy  breaker {w.breaker}  model {w.model}  "
            f"v{w.version}  seen {time.time() - w.last_seen:.0f} s ago"
        )
    lines.append(f"consumers {len(stats.consumers)}")
    for c in stats.consumers:
        lines.append(f"  {c['name']}  {c['pending']} pending  idle {c['idle_s']:.1f} s")
    _print("\n".join(lines) + "\n")
    return 0


async def _cmd_result(args: argparse.Namespace, settings: Settings) -> int:
    async with Client.open(settings) as client:
        transcript = await client.result(args.job_id)
    _print(render(transcript, "json" if args.json else args.format))
    return 0


async def _cmd_transcribe(args: argparse.Namespace, settings: Settings) -> int:
    from .engine import WhisperTranscriber
    from .malloc import limit_malloc_arenas
    from .worker import Worker

    limit_malloc_arenas()
    files = _existing_files(args.files)
    concurrency = args.concurrency or min(len(files), settings.effective_concurrency)
    dirs = tuple(dict.fromkeys(p.resolve().parent for p in files))
    settings = settings.with_(
        concurrency=concurrency,
        audio_roots=settings.audio_roots + dirs,
        # A private prefix: a configured server may be shared with a fleet of workers.
        prefix=f"{{runner-oneshot-{uuid.uuid4().hex[:12]}}}",
    )
    with tempfile.TemporaryDirectory(prefix="runner-") as tmp:
        private = None if settings.redis_url else EmbeddedRedis(Path(tmp), persistent=False)
        url = private.start() if private else resolve_url(settings)
        try:
            async with open_redis(settings, url) as redis:
                client = Client(redis, settings)
                names = {await client.submit(p, **_options(args)): p.name for p in files}
                worker = Worker(
                    settings,
                    redis,
                    WhisperTranscriber(settings),
                    burst=True,
                    concurrency=concurrency,
                    handle_signals=True,
                )
                await worker.run()
                # The worker drained in burst mode, so every job has ended by now.
                outcomes = await client.wait_all(list(names))
                if private is None:
                    await _delete_prefix(redis, settings.prefix)
        finally:
            if private is not None:
                private.stop()
    return EXIT_FAILED if _render_all(outcomes, args.format, names) else 0


async def _delete_prefix(redis: Any, prefix: str) -> None:
    async for key in redis.scan_iter(match=f"{_glob_escape(prefix)}:*", count=500):
        await redis.unlink(key)


def _glob_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


async def _cmd_dead(args: argparse.Namespace, settings: Settings) -> int:
    from .dead import DeadLetters

    async with Client.open(settings) as client:
        letters = DeadLetters(client.store)
        if args.action == "list":
            found = await letters.entries(args.limit)
            if args.json:
                _print(json.dumps([d.to_dict() for d in found], ensure_ascii=False) + "\n")
                return 0
            total = await letters.count()
            for d in found:
                when = datetime.fromtimestamp(d.time, UTC).strftime("%Y-%m-%d %H:%M:%S")
                source = d.fields.get("audio") or d.fields.get("audio_key") or "-"
                _print(
                    f"{d.id}  {when}  job {d.job_id}  {d.error_class}/{d.reason}  "
                    f"attempts {d.attempts}\n    {source}\n    {d.error}\n"
                )
            _print(f"{total} dead letter{'s' if total != 1 else ''}\n")
            return 0
        if args.action == "retry":
            if args.all == bool(args.refs):
                raise ConfigError("give dead letter ids or job ids, or --all")
            if args.all:
                ids, kept = await letters.retry_all()
            else:
                ids, kept = [await letters.retry(r) for r in args.refs], []
            _print("".join(f"retried {job_id}\n" for job_id in ids))
            _print("".join(f"kept {letter_id}: {why}\n" for letter_id, why in kept))
            return 0
        removed = await letters.purge(args.refs)
        _print(f"purged {removed}\n")
        return 0


async def _cmd_embedded(args: argparse.Namespace, settings: Settings) -> int:
    server = EmbeddedRedis(settings.state_dir)
    if args.action == "stop":
        _print("stopped\n" if server.stop() else "not running\n")
    else:
        _print(f"running at {server.url}\n" if server.running() else "not running\n")
    return 0


_COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], Awaitable[int]]] = {
    "worker": _cmd_worker,
    "submit": _cmd_submit,
    "status": _cmd_status,
    "result": _cmd_result,
    "watch": _cmd_watch,
    "cancel": _cmd_cancel,
    "stats": _cmd_stats,
    "transcribe": _cmd_transcribe,
    "dead": _cmd_dead,
    "embedded": _cmd_embedded,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env().with_(redis_url=args.redis_url, prefix=args.prefix)
        configure(settings.log_format, settings.log_level)
        return anyio.run(_COMMANDS[args.command], args, settings)
    except KeyboardInterrupt:
        return 130
    except ConfigError as exc:
        return _fail(EXIT_USAGE, str(exc))
    except TransientError as exc:
        return _fail(EXIT_UNAVAILABLE, str(exc))
    except RateLimited as exc:
        return _fail(EXIT_TEMPFAIL, str(exc))
    except (InvalidJob, JobNotFound, JobFailed) as exc:
        return _fail(EXIT_FAILED, str(exc))
    except RunnerError as exc:
        return _fail(EXIT_FAILED, str(exc))


def _fail(code: int, message: str) -> int:
    sys.stderr.write(f"runner: {message}\n")
    return code
