"""One local server per workspace, shared by every app that opens the workspace.

The local server's store (`<workspace>/local/`, tui/local/db.py) is held by one server at a
time through an OS lock (`server.lock`, see tui/engine/workspace_lock.py): a second server on
the same store would run job recovery on jobs the first one is running. So an app (a window,
a `distill-tui web` session, `distill-tui run`) that finds a server running for its workspace
uses it instead of starting one:

- `server.json` says how to reach the running server: its pid, URL and key. It is written
  by the server once it listens, readable and writable by the owner only (0600), replaced
  atomically, and removed when the server stops. The key is never in argv or a log.
- `clients/` holds one file per app using the server (`<pid>-<token>`). A server started
  by an app (`--exit-when-unused`) serves while any of them is alive and stops after the
  last one leaves or dies, so closing the window that started it does not stop a fine-tune
  another window is watching.
- `clients.lock` makes "join" (register, then read server.json) and "leave" (unregister,
  and with nobody left, unpublish before stopping) atomic with respect to each other: an app
  never joins a server that has decided to stop.

The engine never imports tui/local: the server side calls these functions from there.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pydantic import SecretStr

from tui.engine import workspace_lock
from tui.engine.host import pid_alive

LOCAL_DIR = "local"
LOCK_NAME = "server.lock"
INFO_NAME = "server.json"
CLIENTS_DIR = "clients"
CLIENTS_LOCK = "clients.lock"


@dataclass(frozen=True)
class ServerInfo:
    """A running local server, as its server.json says."""

    pid: int
    url: str  # http://127.0.0.1:PORT/v1
    api_key: SecretStr
    since: str
    path: Path  # the server.json it came from


def local_dir(workspace: Path) -> Path:
    return Path(workspace).expanduser() / LOCAL_DIR


def lock_path(workspace: Path) -> Path:
    return local_dir(workspace) / LOCK_NAME


def info_path(workspace: Path) -> Path:
    return local_dir(workspace) / INFO_NAME


@contextlib.contextmanager
def _clients_mutex(workspace: Path) -> Iterator[None]:
    """The short critical section of joining and leaving (a blocking flock: held for a few
    file operations only)."""
    directory = local_dir(workspace)
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / CLIENTS_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# -- the server's side ----------------------------------------------------------------------


def publish(workspace: Path, *, pid: int, url: str, api_key: str) -> Path:
    """Write server.json (0600, atomically): how apps reach this server."""
    path = info_path(workspace)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "pid": pid,
        "url": url,
        "api_key": api_key,
        "since": datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    # Created 0600 from the start (not chmod'ed after), so the key is never readable by others.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def _unpublish(workspace: Path, pid: int) -> None:
    info = read_info(workspace)
    if info is not None and info.pid == pid:
        with contextlib.suppress(FileNotFoundError):
            info.path.unlink()


def unpublish(workspace: Path, pid: int) -> None:
    """Remove server.json if it is this server's (a newer server's is left alone)."""
    with _clients_mutex(workspace):
        _unpublish(workspace, pid)


def unpublish_if_unused(workspace: Path, pid: int) -> bool:
    """A server that exits when unused: with no app alive in clients/, unpublish (so that no
    app joins from now on) and return True: the caller stops the server."""
    with _clients_mutex(workspace):
        if live_clients(workspace):
            return False
        _unpublish(workspace, pid)
        return True


def live_clients(workspace: Path) -> list[int]:
    """The pids of the apps registered as using the server that are still alive; the files of
    dead ones (killed apps) are removed."""
    directory = local_dir(workspace) / CLIENTS_DIR
    try:
        names = [p.name for p in directory.iterdir()]
    except FileNotFoundError:
        return []
    alive = []
    for name in names:
        pid_text = name.split("-", 1)[0]
        if not pid_text.isdigit():
            continue
        pid = int(pid_text)
        if pid_alive(pid):
            alive.append(pid)
        else:
            with contextlib.suppress(FileNotFoundError):
                (directory / name).unlink()
    return alive


# -- the apps' side -------------------------------------------------------------------------


def read_info(workspace: Path) -> ServerInfo | None:
    path = info_path(workspace)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return ServerInfo(
            pid=int(raw["pid"]),
            url=str(raw["url"]),
            api_key=SecretStr(str(raw["api_key"])),
            since=str(raw.get("since", "")),
            path=path,
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def running(workspace: Path) -> ServerInfo | None:
    """The server running for this workspace, if one holds its store and has published how
    to reach it (a server.json left by a killed server is ignored: its lock is gone)."""
    lock = lock_path(workspace)
    if not workspace_lock.is_held(lock):
        return None
    info = read_info(workspace)
    holder = workspace_lock.read_holder(lock)
    if info is None or holder is None or holder.pid != info.pid:
        return None
    return info


def server_holder(workspace: Path) -> workspace_lock.Holder | None:
    """Who holds the local store now (a server starting or running), or None."""
    lock = lock_path(workspace)
    if not workspace_lock.is_held(lock):
        return None
    return workspace_lock.read_holder(lock) or workspace_lock.Holder("a local server", 0, "")


class Membership:
    """This app's registration as a user of the workspace's local server."""

    def __init__(self, workspace: Path) -> None:
        self.workspace = Path(workspace)
        self.path = local_dir(workspace) / CLIENTS_DIR / f"{os.getpid()}-{secrets.token_hex(6)}"

    def join(self) -> ServerInfo | None:
        """Register (kept while we live), and return the published server, if any. Atomic with
        a server deciding to stop: a server returned here counts us before it decides again."""
        with _clients_mutex(self.workspace):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch()
            return running(self.workspace)

    def leave(self, server_pid: int | None = None) -> bool:
        """Unregister. With `server_pid` (a server we started, which exits when unused):
        if no other app uses it, unpublish it and return True: the caller stops it."""
        with _clients_mutex(self.workspace):
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            if server_pid is None or live_clients(self.workspace):
                return False
            _unpublish(self.workspace, server_pid)
            return True
