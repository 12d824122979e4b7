"""Security: the documented ACL users against a real server, TLS, secrets kept out of logs,
and no code execution from data."""

from __future__ import annotations

import ast
import subprocess
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from redis.asyncio import Redis
from redis.exceptions import NoPermissionError

from runner.connection import open_redis
from runner.job import JobState
from runner.producer import Client
from runner.settings import Settings
from runner.store import load_script
from runner.worker import Worker

from .conftest import FIXTURES, RedisClient
from .fakes import FakeTranscriber
from .helpers import ROOT, run_cli, runner_env, running, until
from .redis_server import RedisServer

HELLO = FIXTURES / "hello.wav"
USERS = ROOT / "deploy" / "redis" / "users.conf"
PASSWORDS = {
    "worker": "w0rker-s3cret",
    "operator": "0perator-s3cret",
    "submitter": "subm1tter-s3cret",
    "producer": "pr0ducer-s3cret",
}


@pytest.fixture
def acl_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server with exactly the documented users (passwords filled in)."""
    conf = USERS.read_text()
    for role, password in PASSWORDS.items():
        conf = conf.replace(f"CHANGE-ME-{role}", password)
    users = tmp_path / "users.conf"
    users.write_text(conf)
    server = RedisServer(tmp_path / "acl", extra=("--include", str(users)))
    server.start()
    yield server
    server.stop()


def url_for(server: RedisServer, role: str) -> str:
    return f"redis://runner-{role}:{PASSWORDS[role]}@127.0.0.1:{server.port}/0"


async def test_worker_submitter_and_operator_with_acl_users(
    acl_server: RedisServer, settings: Settings, tmp_path: Path
) -> None:
    """A submitter, a worker and an operator restricted as documented do the whole job."""
    # The documented rules name the default prefix; this server is the test's own.
    worker_settings = settings.with_(redis_url=url_for(acl_server, "worker"), prefix="{runner}")
    submitter_settings = worker_settings.with_(redis_url=url_for(acl_server, "submitter"))
    async with (
        open_redis(worker_settings) as worker_redis,
        open_redis(submitter_settings) as submitter_redis,
    ):
        client = Client(submitter_redis, submitter_settings)
        worker = Worker(worker_settings, worker_redis, FakeTranscriber())
        enqueue = load_script(submitter_redis, "enqueue").sha
        async with running(worker):
            # Submitters may not load scripts: the worker loads the submission script for them.
            await until(lambda: _loaded(worker_redis, enqueue))
            ids = [await client.submit(HELLO, client_id="acl") for _ in range(3)]
            bad = await client.submit(tmp_path / "missing.wav")
            with anyio.fail_after(30):
                outcomes = await client.wait_all([*ids, bad])
        assert worker.completed == 3 and worker.failed == 1
        assert all(outcomes[i].text == "window 0" for i in ids)  # type: ignore[union-attr]
        assert (await client.status(bad)).state is JobState.FAILED
        # Operators have their own user: stats, dead letters.
        env = runner_env(worker_settings, RUNNER_REDIS_URL=url_for(acl_server, "operator"))
        assert run_cli("stats", "--json", env=env).returncode == 0
        assert run_cli("dead", "list", env=env).returncode == 0
        # The submitter cannot take jobs off the group, nor acknowledge or delete entries.
        keys = client.store.keys
        with pytest.raises(NoPermissionError):
            await submitter_redis.xreadgroup("workers", "thief", {keys.stream: ">"}, count=1)
        with pytest.raises(NoPermissionError):
            await submitter_redis.xack(keys.stream, "workers", "0-1")
        with pytest.raises(NoPermissionError):
            await submitter_redis.get("outside:the:prefix")


async def _loaded(redis: RedisClient, sha: str) -> bool:
    return bool((await redis.script_exists(sha))[0])


async def test_connections_without_credentials_are_refused(
    acl_server: RedisServer, settings: Settings
) -> None:
    """No password, or a wrong one: refused with a clear message and exit code 2."""
    for url in (
        f"redis://127.0.0.1:{acl_server.port}/0",
        f"redis://runner-worker:wrong@127.0.0.1:{acl_server.port}/0",
    ):
        out = run_cli("status", "x", env=runner_env(settings, RUNNER_REDIS_URL=url))
        assert out.returncode == 2, out.stderr
        assert "refused" in out.stderr and "wrong" not in out.stderr
    anonymous: RedisClient = Redis.from_url(f"redis://127.0.0.1:{acl_server.port}/0", protocol=2)
    with pytest.raises(Exception, match=r"NOAUTH|Authentication"):
        await anonymous.xlen("{runner}:jobs")
    await anonymous.aclose()


def test_passwords_never_reach_the_logs(acl_server: RedisServer, settings: Settings) -> None:
    """A worker run with a password in its URL never prints the password."""
    env = runner_env(
        settings.with_(prefix="{runner}"), RUNNER_REDIS_URL=url_for(acl_server, "worker")
    )
    out = run_cli("worker", "--burst", env=env)
    assert out.returncode == 0, out.stderr
    assert PASSWORDS["worker"] not in out.stderr + out.stdout
    down = runner_env(settings, RUNNER_REDIS_URL="redis://u:hunter2@127.0.0.1:1/0")
    out = run_cli("submit", str(HELLO), env=down)
    assert out.returncode == 69 and "hunter2" not in out.stderr and "***" in out.stderr


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, Path]:
    """A CA, and a server and a client certificate it signed (for 127.0.0.1 and localhost)."""
    d = tmp_path / "tls"
    d.mkdir()
    f = {n: d / n for n in ("ca.key", "ca.crt", "server.key", "server.crt", "client.key",
                              "client.crt", "ext.cnf")}  # fmt: skip
    f["ext.cnf"].write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
             "-keyout", str(f["ca.key"]), "-out", str(f["ca.crt"]))  # fmt: skip
    for who in ("server", "client"):
        csr = d / f"{who}.csr"
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={who}",
                 "-keyout", str(f[f"{who}.key"]), "-out", str(csr))  # fmt: skip
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(f["ca.crt"]), "-CAkey",
                 str(f["ca.key"]), "-CAcreateserial", "-days", "2", "-extfile",
                 str(f["ext.cnf"]), "-out", str(f[f"{who}.crt"]))  # fmt: skip
    return f


async def test_tls_with_client_certificates(
    tls_files: dict[str, Path], settings: Settings, tmp_path: Path
) -> None:
    """rediss:// with a CA and a client certificate: the whole flow over TLS only."""
    port = RedisServer(tmp_path / "probe").port
    server = RedisServer(
        tmp_path / "tls-server",
        port=0,
        extra=(
            "--tls-port", str(port),
            "--tls-cert-file", str(tls_files["server.crt"]),
            "--tls-key-file", str(tls_files["server.key"]),
            "--tls-ca-cert-file", str(tls_files["ca.crt"]),
            "--tls-auth-clients", "yes",
        ),
    )  # fmt: skip
    server.ping = lambda: _tls_listening(port)  # type: ignore[method-assign]
    server.start()
    try:
        tls = settings.with_(
            redis_url=f"rediss://127.0.0.1:{port}/0",
            redis_ca_file=tls_files["ca.crt"],
            redis_cert_file=tls_files["client.crt"],
            redis_key_file=tls_files["client.key"],
        )
        async with open_redis(tls) as redis:
            client = Client(redis, tls)
            job_id = await client.submit(HELLO)
            worker = Worker(tls, redis, FakeTranscriber(), burst=True)
            with anyio.fail_after(30):
                await worker.run()
            assert (await client.result(job_id)).text == "window 0"
        # Without the client certificate the server refuses the handshake.
        env = runner_env(tls, RUNNER_REDIS_CA_FILE=str(tls_files["ca.crt"]))
        out = run_cli("status", job_id, env=env)
        assert out.returncode == 69, out.stderr
    finally:
        server.stop()


def _tls_listening(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def test_no_code_runs_from_data() -> None:
    """The package never unpickles, evals or execs anything."""
    banned_calls = {"eval", "exec", "compile", "__import__"}
    banned_modules = {"pickle", "cPickle", "marshal", "shelve", "dill"}
    for path in (ROOT / "runner").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in banned_calls, f"{path}: {node.func.id}()"
            if isinstance(node, ast.Import):
                assert not {a.name.split(".")[0] for a in node.names} & banned_modules, path
            if isinstance(node, ast.ImportFrom) and node.module:
                assert node.module.split(".")[0] not in banned_modules, path
