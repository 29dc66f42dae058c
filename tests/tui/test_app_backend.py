"""The app as `distill-tui` starts it (start_backend=True): it starts the embedded local
backend in the background, says so on the status line, works with it, and leaves no server
behind when it quits; a backend that cannot be opened is reported on the status line and in
a notification, and the app stays usable."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from textual.message import Message

from tests.tui.conftest import SIZE, plain
from tui.app import DistillApp
from tui.engine.host import pid_alive
from tui.engine.local_model import LOCAL_DEFAULT_MODEL
from tui.engine.settings import load_settings
from tui.engine.store import Store
from tui.widgets.status_line import StatusLine


def status_line(app: DistillApp) -> str:
    return plain(app.screen.query_one(StatusLine))


async def wait_for(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what}: not after {timeout} s"
        await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_the_app_starts_the_local_backend_and_stops_it_on_quit(store: Store) -> None:
    settings = load_settings(workspace=store.directory)  # no key, no URL: the local backend
    app = DistillApp(settings=settings, store=store)  # start_backend=True, as the command
    messages: list[Message] = []
    async with app.run_test(size=SIZE, message_hook=messages.append) as pilot:
        # Started in the background: the screen is there while the server starts.
        assert status_line(app).startswith("local")
        await wait_for(lambda: app.backend is not None, 180, "the local backend started")
        assert app.backend is not None and app.backend.server is not None
        pid = app.backend.server.pid
        assert pid is not None and pid_alive(pid)
        await pilot.pause()
        line = status_line(app)
        assert line.startswith(f"{app.backend.label} │ ")
        assert app.backend.label.startswith("local · 127.0.0.1:")
        # The client the screens use reaches it.
        models = [m.id for m in (await app.backend.client.models.list()).data]
        assert LOCAL_DEFAULT_MODEL in models
        await pilot.press("q")
    assert app.return_code == 0
    # The server the app started stops with it.
    await wait_for(lambda: not pid_alive(pid), 30, f"the server (pid {pid}) stopped")
    log = store.directory / "local" / "server.log"
    assert log.exists()
    # The server's one-time key was in play, and its log never holds it.
    key = app.backend.spec.api_key
    assert key is not None and key.get_secret_value()
    assert key.get_secret_value() not in log.read_text()


async def test_a_backend_that_cannot_open_is_reported_and_the_app_stays(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "ws")
    try:
        settings = load_settings(workspace=store.directory, backend="openai")  # and no key
        app = DistillApp(settings=settings, store=store)
        messages: list[Message] = []
        async with app.run_test(size=SIZE, message_hook=messages.append) as pilot:
            await wait_for(lambda: "failed" in app.backend_label, 30, "the failure reported")
            await pilot.pause()
            assert app.is_running
            assert app.backend is None
            expected = "backend 'openai' needs an API key: set OPENAI_API_KEY"
            assert status_line(app).startswith(f"openai (failed: {expected}")
            errors = [
                n for n in app._notifications if n.severity == "error" and expected in n.message
            ]
            assert errors, [n.message for n in app._notifications]
            # Still usable: another screen, then quit as usual.
            await pilot.press("7")
            assert app.current_mode == "settings"
            await pilot.press("q")
        assert app.return_code == 0
    finally:
        store.close()
