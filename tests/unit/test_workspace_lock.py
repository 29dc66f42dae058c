"""The one-writer lock names who holds it, even when refused at the moment a new holder has
taken the lock but not yet written itself into the file (two runs started together)."""

from __future__ import annotations

import fcntl
import json
import os
import threading
from pathlib import Path

import pytest

from tui.engine import workspace_lock
from tui.engine.workspace_lock import LockHeld


def test_a_refusal_names_the_holder(tmp_path: Path) -> None:
    path = tmp_path / "ws.lock"
    held = workspace_lock.acquire(path, "distill-tui run")
    try:
        fd = os.open(path, os.O_RDWR)  # another open file: flock refuses it like a process
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            pytest.fail("a second open file took a held lock")
        except BlockingIOError:
            pass
        finally:
            os.close(fd)
        holder = workspace_lock.read_holder(path)
        assert holder is not None and holder.command == "distill-tui run"
        assert holder.pid == os.getpid()
    finally:
        held.release()
    again = workspace_lock.acquire(path, "distill-tui")
    again.release()


def test_refused_while_the_new_holder_has_not_written_itself_yet(tmp_path: Path) -> None:
    path = tmp_path / "ws.lock"
    # The new holder: it has the lock and an empty file (acquire's truncate, before its write).
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    holder = {"command": "distill-tui run", "pid": 4242, "since": "2026-01-02T03:04:05+00:00"}

    def write_soon() -> None:
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)

    timer = threading.Timer(0.05, write_soon)
    timer.start()
    try:
        with pytest.raises(LockHeld) as refused:
            workspace_lock.acquire(path)
        timer.join()
        assert refused.value.holder is not None, "the refusal said 'another process'"
        assert refused.value.holder.pid == 4242
        assert "distill-tui run, pid 4242" in refused.value.who
    finally:
        timer.cancel()
        os.close(fd)


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="reads Linux's /proc/locks")
def test_refused_before_the_new_holder_has_replaced_the_last_ones_record(tmp_path: Path) -> None:
    path = tmp_path / "ws.lock"
    # The last holder (a test opening the workspace, gone or not) left its record behind.
    previous = {"command": "pytest", "pid": 1, "since": "2026-01-02T03:04:05+00:00"}
    path.write_text(json.dumps(previous) + "\n", encoding="utf-8")
    # The new holder (this process): it has the lock, but has not truncated and rewritten
    # the file yet.
    fd = os.open(path, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    holder = {"command": "distill-tui run", "pid": os.getpid(), "since": previous["since"]}

    def write_soon() -> None:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)

    timer = threading.Timer(0.05, write_soon)
    timer.start()
    try:
        with pytest.raises(LockHeld) as refused:
            workspace_lock.acquire(path)
        timer.join()
        assert refused.value.holder is not None
        assert (refused.value.holder.command, refused.value.holder.pid) == (
            "distill-tui run",
            os.getpid(),
        ), "the refusal named the previous holder"
    finally:
        timer.cancel()
        os.close(fd)
