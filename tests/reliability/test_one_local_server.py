"""One local server per workspace (issue 14, must fix 1), with real processes.

Every app instance used to start its own local server on the workspace's `local/` store, and
a starting server's job recovery killed the trainer the store recorded as running: opening a
second window (or a second `distill-tui serve`) failed the first one's fine-tune. Now the
store has an OS lock: a second server is refused and says where the running one listens; an
app joins the running server (its address and key in a 0600 file, the key never in argv);
the server outlives the window that started it while another app uses it, and stops after
the last one."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.processes import child_env, wait_for
from tests.helpers.tiny_model import build_tiny_gguf
from tests.local.server_harness import (
    KEY,
    client,
    model_id,
    start_process_server,
    wait_job,
)
from tui.engine import local_instance
from tui.engine.backend import LocalServer, make_client
from tui.engine.host import pid_alive

FAST = ["--preload", "none"]  # no model load: these tests are about processes


def _jsonl(n: int) -> bytes:
    import json

    lines = [
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"Create a branch called b{i}."},
                    {"role": "assistant", "content": f"git branch b{i}"},
                ]
            }
        )
        for i in range(n)
    ]
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gguf(tmp_path_factory.mktemp("model") / "tiny-one.gguf")


async def test_a_second_server_is_refused_and_the_first_ones_job_goes_on(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    first = start_process_server(ws, [tiny_gguf])
    joined = LocalServer()
    try:
        async with client(first.url) as c:
            tiny = model_id((await c.models.list()).data, "tiny-one")
            train = await c.files.create(file=("t.jsonl", _jsonl(40)), purpose="fine-tune")
            job = await c.fine_tuning.jobs.create(
                model=tiny, training_file=train.id, hyperparameters={"n_epochs": 50}
            )
            job = await wait_job(c, job.id, until=("running", "succeeded", "failed"))
            assert job.status == "running"

            # What issue 14 reproduced: a second `distill-tui serve` on the same workspace.
            port_file = tmp_path / "second-port"
            second = subprocess.Popen(
                [sys.executable, "-m", "tui.local.serve", "--port", "0", "--port-file",
                 str(port_file), "--workspace", str(ws), *FAST],
                env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            wait_for(
                lambda: second.poll() is not None or port_file.exists(),
                120,
                "the second server to refuse or to listen",
            )
            if second.poll() is None:
                second.kill()
                second.wait()
                pytest.fail("a second server started on the workspace's local store")
            out, err = second.communicate()
            assert second.returncode == 2, err
            info_file = ws / "local" / "server.json"
            assert (
                f"a local server is already running for the workspace {ws}: "
                f"distill-tui serve, pid {first.proc.pid}, since "
            ) in err
            assert f"at {first.url}; its key is in {info_file}" in err
            assert KEY not in err + out

            # Its address and key, for the owner only.
            mode = stat.S_IMODE(info_file.stat().st_mode)
            assert mode == 0o600, oct(mode)

            # An app joins it rather than starting its own.
            spec = await joined.start(ws, [], extra_args=FAST)
            assert spec.base_url == first.url
            assert joined.pid == first.proc.pid and not joined.started_here
            assert spec.api_key is not None and spec.api_key.get_secret_value() == KEY
            async with make_client(spec) as app_client:
                assert tiny in [m.id for m in (await app_client.models.list()).data]

            job = await c.fine_tuning.jobs.retrieve(job.id)
            assert job.status == "running", job.error
            await c.fine_tuning.jobs.cancel(job.id)
            await wait_job(c, job.id)
    finally:
        await joined.stop()
        first.stop()


_APP = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from tui.engine.backend import LocalServer

    async def main():
        server = LocalServer()
        spec = await server.start(Path(sys.argv[1]), [], extra_args=["--preload", "none"])
        print(server.pid, spec.base_url, flush=True)
        await asyncio.to_thread(sys.stdin.read)
        await server.stop()

    asyncio.run(main())
    """
)


@pytest.fixture
def first_window(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _APP, str(tmp_path / "ws")],
        env=child_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


async def test_windows_share_one_server_which_outlives_the_one_that_started_it(
    tmp_path: Path, first_window: subprocess.Popen[str]
) -> None:
    ws = tmp_path / "ws"
    assert first_window.stdout is not None
    pid_text, url = first_window.stdout.readline().split()
    server_pid = int(pid_text)
    second = LocalServer()
    try:
        spec = await second.start(ws, [], extra_args=FAST)
        assert (spec.base_url, second.pid, second.started_here) == (url, server_pid, False)
        # The key came from the file, not from the server's command line.
        assert spec.api_key is not None
        key = spec.api_key.get_secret_value()
        assert key not in Path(f"/proc/{server_pid}/cmdline").read_bytes().decode()

        # The window that started the server dies without any cleanup: the server notices
        # (it drops that window from its users) and goes on serving the other one.
        clients = ws / "local" / "clients"
        first_window.send_signal(signal.SIGKILL)
        first_window.wait(timeout=30)
        wait_for(
            lambda: not any(p.name.startswith(f"{first_window.pid}-") for p in clients.iterdir()),
            30,
            "the server to drop the killed window",
        )
        assert pid_alive(server_pid)
        async with make_client(spec) as c:
            assert (await c.models.list()).data
    finally:
        await second.stop()
    # The last user left: the server stops and unpublishes itself.
    wait_for(lambda: not pid_alive(server_pid), 30, "the server to stop")
    assert not (ws / "local" / "server.json").exists()


async def test_a_killed_servers_address_file_is_ignored(
    tmp_path: Path, first_window: subprocess.Popen[str]
) -> None:
    ws = tmp_path / "ws"
    assert first_window.stdout is not None
    old_pid = int(first_window.stdout.readline().split()[0])
    # The server and its window die at once, without any cleanup.
    os.kill(old_pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(old_pid), 30, "the killed server to go")
    first_window.send_signal(signal.SIGKILL)
    first_window.wait(timeout=30)
    assert local_instance.read_info(ws) is not None  # left behind by the kill
    # but its lock went with it (released as the kernel tears the process down, which can
    # trail the pid check under load)
    wait_for(lambda: local_instance.running(ws) is None, 30, "the killed server's lock to go")
    second = LocalServer()
    try:
        await second.start(ws, [], extra_args=FAST)
        assert second.started_here and second.pid != old_pid
        info = local_instance.running(ws)
        assert info is not None and info.pid == second.pid
    finally:
        await second.stop()
    assert second.pid is None and local_instance.running(ws) is None
