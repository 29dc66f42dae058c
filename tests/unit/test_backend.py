"""Backend choice, the client factory, and the local server's life as a child process:
started on a free port, reachable through the openai SDK, stopped without leftovers, and
gone when its parent is SIGKILLed."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import openai
import pytest
from pydantic import SecretStr

from tests.helpers.fake_openai import FakeOpenAI, fail_first, server_error
from tui.engine.backend import (
    BackendError,
    BackendSpec,
    LocalServer,
    make_client,
    open_backend,
    resolve_backend,
)
from tui.engine.host import pid_alive
from tui.engine.settings import Settings

FAST = ["--preload", "none"]  # no model load: these tests are about the process
USER = [{"role": "user", "content": "hi"}]
USER_HANG = [{"role": "user", "content": "HANG"}]


def _wait_gone(pid: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# ---- which backend ------------------------------------------------------------------------------


def test_auto_rule() -> None:
    assert resolve_backend(Settings()).kind == "local"
    assert resolve_backend(Settings(api_key="sk-x")).kind == "openai"
    url = resolve_backend(Settings(base_url="http://127.0.0.1:9/v1", api_key="sk-x"))
    assert url.kind == "url"
    assert url.base_url == "http://127.0.0.1:9/v1"
    assert url.label == "127.0.0.1:9"
    assert url.api_key is not None and url.api_key.get_secret_value() == "sk-x"
    assert resolve_backend(Settings(base_url="http://h:8000/v1")).api_key is None


def test_explicit_backend_and_its_requirements() -> None:
    assert resolve_backend(Settings(backend="local", api_key="sk-x")).kind == "local"
    spec = resolve_backend(Settings(backend="openai", api_key="sk-x"))
    assert spec.kind == "openai" and spec.base_url is None and spec.label == "openai"
    with pytest.raises(BackendError, match="OPENAI_API_KEY"):
        resolve_backend(Settings(backend="openai"))
    with pytest.raises(BackendError, match="DISTILL_BASE_URL"):
        resolve_backend(Settings(backend="url"))


def test_env_variables_are_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    assert resolve_backend(Settings()).kind == "openai"
    monkeypatch.setenv("DISTILL_BASE_URL", "http://localhost:8000/v1")
    assert resolve_backend(Settings()).kind == "url"


async def test_make_client_sends_to_the_backend_with_its_key_retries_and_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A key in the environment is for OpenAI: a URL backend given no key must not send it.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-environment")
    with FakeOpenAI(api_key="sk-spec-key", hang_seconds=5) as fake:
        spec = BackendSpec("url", fake.base_url, SecretStr("sk-spec-key"), "127.0.0.1")
        fake.policy = fail_first(1, server_error(503))
        async with make_client(spec, timeout=5, max_retries=1) as c:
            r = await c.chat.completions.create(model="fake-model", messages=USER)
            assert r.choices[0].message.content == "echo: hi"
        # Sent to the spec's URL with the spec's key, and retried once (max_retries=1).
        assert [q.status for q in fake.chat_requests] == [503, 200]
        assert {q.headers["authorization"] for q in fake.requests} == {"Bearer sk-spec-key"}

        fake.reset()
        async with make_client(spec, timeout=0.5, max_retries=0) as c:
            with pytest.raises(openai.APITimeoutError):
                await c.chat.completions.create(model="fake-model", messages=USER_HANG)
        assert len(fake.chat_requests) == 1  # max_retries=0: one attempt

        fake.reset()
        keyless = BackendSpec("url", fake.base_url, None, "127.0.0.1")
        async with make_client(keyless) as c:
            with pytest.raises(openai.AuthenticationError):
                await c.models.list()
        sent = [q.headers.get("authorization", "") for q in fake.requests]
        assert sent and not any("sk-from-the-environment" in h for h in sent)

    c = make_client(BackendSpec("openai", None, SecretStr("sk-x"), "openai"))
    assert str(c.base_url).startswith("https://api.openai.com/")
    assert c.api_key == "sk-x"
    await c.close()
    with pytest.raises(BackendError, match="not started"):
        make_client(BackendSpec("local", None, None, "local"))


# ---- the local server as a child process ------------------------------------------------------


async def test_local_server_start_stop_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    progress: list[str] = []
    temp = tmp_path / "tmp"  # where the server's port file is written
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    server = LocalServer()
    spec = await server.start(tmp_path / "ws", [], progress.append, extra_args=FAST)
    pid = server.pid
    assert pid is not None and pid_alive(pid)
    # The port file's folder is gone once the port is read: an app killed with -9 leaves
    # nothing behind in the temp directory.
    assert list(temp.iterdir()) == []
    try:
        assert spec.kind == "local"
        assert spec.base_url is not None and spec.base_url.startswith("http://127.0.0.1:")
        assert spec.api_key is not None
        key = spec.api_key.get_secret_value()
        async with make_client(spec) as c:
            ids = [m.id for m in (await c.models.list()).data]
            assert "smollm2-135m-instruct" in ids
        async with openai.AsyncOpenAI(
            base_url=spec.base_url, api_key="wrong", max_retries=0
        ) as bad:
            with pytest.raises(openai.AuthenticationError):
                await bad.models.list()
        # The key travels in the environment, not on the command line others can read.
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
        assert key not in cmdline
        assert progress[0] == "local: starting server…"
        assert progress[-1].startswith("local: ready")
    finally:
        await server.stop()
    assert not pid_alive(pid)  # stop() returns once the server has exited
    assert server.pid is None
    log = (tmp_path / "ws" / "local" / "server.log").read_text()
    assert key not in log


async def test_open_backend_local_and_aclose(tmp_path: Path) -> None:
    settings = Settings(workspace=tmp_path / "ws")
    # open_backend passes no extra arguments: the default model is preloaded, as in the app.
    backend = await open_backend(settings)
    try:
        assert backend.server is not None
        pid = backend.server.pid
        assert pid is not None
        assert backend.label.startswith("local · 127.0.0.1:")
        r = await backend.client.chat.completions.create(
            model="smollm2-135m-instruct",
            messages=[{"role": "user", "content": "Say hi."}],
            max_tokens=2,
        )
        assert r.usage is not None and r.usage.completion_tokens >= 1
    finally:
        await backend.aclose()
    assert not pid_alive(pid)  # stop() returns once the server has exited


async def test_open_backend_url_starts_nothing() -> None:
    backend = await open_backend(Settings(base_url="http://127.0.0.1:9/v1"))
    assert backend.server is None
    assert backend.label == "url · http://127.0.0.1:9/v1"
    await backend.aclose()


async def test_server_that_cannot_start_is_reported(tmp_path: Path) -> None:
    server = LocalServer()
    with pytest.raises(BackendError, match="exited with code 2"):
        await server.start(tmp_path / "ws", [], extra_args=["--threads", "many"])
    assert server.pid is None


def test_sigkilled_parent_takes_the_server_with_it(tmp_path: Path) -> None:
    """The app dies without any cleanup; the server watches the pids of the apps using it
    (local/clients/) and stops once none is alive, so no server is left behind."""
    script = textwrap.dedent(
        f"""
        import asyncio, sys, time
        from pathlib import Path
        from tui.engine.backend import LocalServer

        async def main():
            server = LocalServer()
            await server.start(Path({str(tmp_path / "ws")!r}), [], extra_args={FAST!r})
            print(server.pid, flush=True)
            await asyncio.sleep(600)

        asyncio.run(main())
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=Path.cwd(), env=os.environ
    )
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline().decode().strip()
        assert line.isdigit(), line
        server_pid = int(line)
        assert pid_alive(server_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        assert _wait_gone(server_pid, timeout=15)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_serve_refuses_public_bind_without_key(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "tui.local.serve", "--host", "0.0.0.0", "--port", "0",
         "--workspace", str(tmp_path / "ws")],
        capture_output=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "DISTILL_LOCAL_API_KEY"},
    )  # fmt: skip
    assert r.returncode == 2
    assert b"refusing" in r.stderr


async def test_serve_prints_a_generated_key_on_loopback(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tui.local.serve",
        "--port",
        "0",
        "--port-file",
        str(port_file),
        "--workspace",
        str(tmp_path / "ws"),
        *FAST,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert line.startswith("API key for this run: ")
        key = line.split(": ", 1)[1].strip()
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        url = f"http://127.0.0.1:{port_file.read_text().strip()}/v1"
        async with openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0) as c:
            assert (await c.models.list()).data
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
