"""`distill-tui web` as a user runs it: the installed command serves the page, a browser's
websocket starts the app in a process of its own and receives its screen, and closing the
connection ends that process. The browser is played by an HTTP and websocket client (no
browser is needed)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import psutil
import pytest

COMMAND = Path(sys.executable).parent / "distill-tui"
ANSI = re.compile(rb"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-_]")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def web(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    env = dict(os.environ)
    # The app in the page talks to an address where nothing listens: this test is about the
    # page and the process, not a backend (the app reports the backend's failure itself).
    env.update(DISTILL_BASE_URL="http://127.0.0.1:9/v1")
    proc = subprocess.Popen(
        [str(COMMAND), "--workspace", str(tmp_path / "ws"), "web", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        yield proc, f"127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def app_processes(server: psutil.Process) -> list[psutil.Process]:
    """The app processes the web server started (`python -m tui.cli ...`)."""
    out = []
    for child in server.children(recursive=True):
        try:
            if "tui.cli" in child.cmdline():
                out.append(child)
        except psutil.Error:
            continue
    return out


async def test_the_page_is_served_and_a_connection_runs_the_app(
    web: tuple[subprocess.Popen[bytes], str],
) -> None:
    proc, address = web
    server = psutil.Process(proc.pid)
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the web server did not answer"
            try:
                async with http.get(f"http://{address}/") as page:
                    html = await page.text()
                    status = page.status
                break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)
        assert status == 200
        assert "distill-tui" in html
        assert f"ws://{address}/ws" in html  # where the page's terminal connects
        assert app_processes(server) == []  # no app before a browser connects

        screen = b""
        async with http.ws_connect(f"ws://{address}/ws?width=120&height=40") as ws:
            deadline = time.monotonic() + 90
            # The app draws its first screen (the Dataset screen with the shipped requests).
            while b"git-requests" not in ANSI.sub(b"", screen):
                assert time.monotonic() < deadline, ANSI.sub(b"", screen)[-2000:]
                try:
                    message = await ws.receive(timeout=1)
                except TimeoutError:
                    continue
                if message.type == aiohttp.WSMsgType.BINARY:
                    screen += message.data
                elif message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                    raise AssertionError(f"closed: {ANSI.sub(b'', screen)[-2000:]!r}")
            apps = app_processes(server)
            assert len(apps) == 1
        # The browser went away: its app process ends.
        deadline = time.monotonic() + 60
        while any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in apps):
            assert time.monotonic() < deadline, "the app outlived its connection"
            await asyncio.sleep(0.1)
        assert proc.poll() is None  # the server goes on serving
