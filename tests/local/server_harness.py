"""Running the local server for tests: in a thread of the test process (fast, and the test can
look at the server's state) or as the real `python -m tui.local.serve` child process (for
restarts and process-lifetime tests). Either way tests talk to it over real HTTP on
127.0.0.1 with the openai SDK."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai

from tui.local.server import ServerConfig, serve_in_thread

KEY = "sk-test-local-key"
TERMINAL = ("succeeded", "failed", "cancelled")


def start_thread_server(workspace: Path, models: list[Path], **overrides: Any) -> Any:
    config = ServerConfig(workspace=workspace, api_key=KEY, models=models, **overrides)
    return serve_in_thread(config)


def client(url: str, key: str = KEY, **kw: Any) -> openai.AsyncOpenAI:
    # No retries: a test must see the server's first answer (429s included).
    kw.setdefault("max_retries", 0)
    kw.setdefault("timeout", 60.0)
    return openai.AsyncOpenAI(api_key=key, base_url=url, **kw)


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def start_process_server(
    workspace: Path, models: list[Path], extra: list[str] | None = None, timeout: float = 120
) -> ServerProcess:
    port_file = workspace / f"port-{time.monotonic_ns()}"
    log = workspace / "serve-test.log"
    args = [
        sys.executable,
        "-m",
        "tui.local.serve",
        "--port",
        "0",
        "--port-file",
        str(port_file),
        "--workspace",
        str(workspace),
        "--api-key",
        KEY,
        "--preload",
        "none",
        "--log-level",
        "warning",
    ]
    for m in models:
        args += ["--model", str(m)]
    args += extra or []
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=out, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not port_file.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited with {proc.returncode}: {log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise TimeoutError(log.read_text()[-2000:])
        time.sleep(0.05)
    return ServerProcess(proc, int(port_file.read_text().strip()), log)


async def wait_job(
    c: openai.AsyncOpenAI, job_id: str, until: tuple[str, ...] = TERMINAL, timeout: float = 180
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        job = await c.fine_tuning.jobs.retrieve(job_id)
        if job.status in until:
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job.status} after {timeout} s")
        await asyncio.sleep(0.1)


def model_id(models: list[Any], stem: str) -> str:
    for m in models:
        if m.id == stem or m.id.startswith(stem):
            return str(m.id)
    raise AssertionError(f"no model like {stem!r} in {[m.id for m in models]}")
