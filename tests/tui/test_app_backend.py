"""The app as `distill-tui` starts it (start_backend=True): it starts the embedded local
backend in the background, says so on the status line, works with it, and leaves no server
behind when it quits; a backend that cannot be opened is reported on the status line and in
a notification, and the app stays usable."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest
from textual.message import Message
from textual.widgets import Static

from screens.dialogs import ConfirmDialog
from tests.tui.conftest import SIZE, plain
from tui.app import DistillApp
from tui.engine.backend import Backend, LocalServer, make_client
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


async def test_q_asks_before_it_ends_a_job_the_embedded_server_trains(store: Store) -> None:
    """The embedded backend's jobs end with its server, which stops with the last app using it:
    q asks first (a stray q must not throw away a fine-tune); with another app using the
    server (a second window, `distill-tui run`) the job goes on and q quits at once."""

    async def app_with_a_job_training() -> DistillApp:
        server = LocalServer()
        spec = await server.start(store.directory, [], extra_args=["--preload", "none"])
        assert spec.base_url is not None
        store.save_job(
            remote_id=f"ftjob-on-{spec.base_url}",
            base_url=spec.base_url,
            base_model=LOCAL_DEFAULT_MODEL,
            status="running",
        )
        app = DistillApp(
            settings=load_settings(workspace=store.directory), store=store, start_backend=False
        )
        app.backend = Backend(spec, make_client(spec), "local", server=server)
        return app

    asking = await app_with_a_job_training()
    assert asking.backend is not None and asking.backend.server is not None
    server_pid = asking.backend.server.pid
    async with asking.run_test(size=SIZE) as pilot:
        await pilot.press("q")
        await wait_for(lambda: isinstance(asking.screen, ConfirmDialog), 10, "q asked")
        said = " ".join(" ".join(plain(w) for w in asking.screen.query(Static)).split())
        assert f"ftjob-on-{asking.backend.spec.base_url}" in said and "ends unfinished" in said
        await pilot.press("q")  # asked already: not a second question, nor a quit
        await pilot.press("escape")  # Keep training
        await pilot.pause()
        assert asking.is_running and not isinstance(asking.screen, ConfirmDialog)
        await pilot.press("q")
        await wait_for(lambda: isinstance(asking.screen, ConfirmDialog), 10, "q asked")
        await pilot.press("enter")  # Quit
    assert asking.return_code == 0
    assert server_pid is not None and not pid_alive(server_pid)

    # Another app uses the server: quitting this one leaves it, and the job, going.
    leaving = await app_with_a_job_training()
    other = subprocess.Popen(
        [sys.executable, "-c", JOIN_AND_WAIT, str(store.directory)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert other.stdout is not None and other.stdout.readline() == b"joined\n"
        assert leaving.backend is not None and leaving.backend.server is not None
        server_pid = leaving.backend.server.pid
        async with leaving.run_test(size=SIZE) as pilot:
            await pilot.press("q")
        assert leaving.return_code == 0
        assert server_pid is not None and pid_alive(server_pid)
    finally:
        other.communicate(b"\n", timeout=30)
    # The last app gone, the server stops by itself.
    await wait_for(lambda: not pid_alive(server_pid), 60, "the unused server stopped")


# A second app using the workspace's local server, until a line comes on its stdin.
JOIN_AND_WAIT = """
import sys
from tui.engine.local_instance import Membership
membership = Membership(sys.argv[1])
assert membership.join() is not None
print("joined", flush=True)
sys.stdin.readline()
membership.leave()
"""
