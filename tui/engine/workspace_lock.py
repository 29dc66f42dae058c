"""One writer at a time: an OS-level lock on a file, held for as long as its holder runs.

`flock(2)` on `<dir>/<name>.lock`: the kernel releases it when the holder exits, however it
exits (kill -9 included), so a lock is never left behind and never needs breaking. The file
says who holds it (command, pid, since when, host) so that a refused process can tell the
user; it stays on disk between holders (deleting a lock file races with the next taker).

Within one process the lock is shared: a second `acquire` of the same file from the same
process counts a reference instead of refusing (the app opening its workspace twice is one
writer), and `Lock.fresh` says whether this acquire is the one that took it from the OS, the
moment to clean up after a previous holder that died mid-work. Used for the workspace
(tui/engine/store.py) and for the local server's own store (tui/local/db.py).

POSIX only (fcntl); flock is not reliable on network filesystems (NFS emulates it with
byte-range locks on Linux ≥ 2.6.12, which is still exclusive between hosts).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, as its file says."""

    command: str
    pid: int
    since: str  # ISO 8601, with the holder's UTC offset
    host: str = ""

    def describe(self) -> str:
        """ "distill-tui run, pid 4242, since 2025-06-01 14:03:12" (the holder's local time)."""
        when = self.since
        with contextlib.suppress(ValueError):
            when = datetime.fromisoformat(self.since).astimezone().strftime("%Y-%m-%d %H:%M:%S")
        where = f" on {self.host}" if self.host and self.host != socket.gethostname() else ""
        return f"{self.command}, pid {self.pid}{where}, since {when}"


class LockHeld(Exception):
    """Another process holds the lock; `holder` is who (None when its file is unreadable)."""

    def __init__(self, path: Path, holder: Holder | None) -> None:
        self.path = path
        self.holder = holder
        who = holder.describe() if holder is not None else "another process"
        super().__init__(f"{path} is held by {who}")

    @property
    def who(self) -> str:
        return self.holder.describe() if self.holder is not None else "another process"


def default_command() -> str:
    """What this process is, for a refused one to read: "distill-tui run", "distill-tui"...
    Only the program's name and its subcommand: other arguments may hold secrets."""
    argv = [a for a in sys.argv if a]
    name = Path(argv[0]).name if argv else "python"
    if name in ("cli.py", "__main__.py", "-m", "-c"):
        name = "distill-tui"
    sub = next((a for a in argv[1:] if a in ("run", "serve", "web")), "")
    return f"{name} {sub}" if sub else name


class _Entry:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.count = 0


_held: dict[str, _Entry] = {}
_held_guard = threading.Lock()
# How long a refusal waits for the lock's new holder to write its name (_holder_of_held).
HOLDER_WAIT = 2.0


class Lock:
    """A held lock; `release()` once (idempotent). `fresh`: this acquire took it from the OS
    (no other holder in this process had it)."""

    def __init__(self, path: Path, key: str, fresh: bool) -> None:
        self.path = path
        self.fresh = fresh
        self._key = key
        self._released = False

    def release(self) -> None:
        with _held_guard:
            if self._released:
                return
            self._released = True
            entry = _held.get(self._key)
            if entry is None:
                return
            entry.count -= 1
            if entry.count > 0:
                return
            del _held[self._key]
            # Closing the descriptor releases the flock (the file stays: see the module doc).
            os.close(entry.fd)


def _key(path: Path) -> str:
    return str(path.parent.resolve() / path.name)


def acquire(path: Path, command: str | None = None, *, reentrant: bool = True) -> Lock:
    """Take the lock on `path` without waiting, or raise `LockHeld` saying who has it.

    `reentrant=False` refuses a second acquire from this process too (for a resource that
    must have exactly one user object, like the local server's store)."""
    path = Path(path)
    key = _key(path)
    with _held_guard:
        entry = _held.get(key)
        if entry is not None:
            if not reentrant:
                raise LockHeld(path, _holder_of_held(path))
            entry.count += 1
            return Lock(path, key, fresh=False)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LockHeld(path, _holder_of_held(path)) from None
            raise
        try:
            holder = {
                "command": command or default_command(),
                "pid": os.getpid(),
                "since": datetime.now().astimezone().isoformat(timespec="seconds"),
                "host": socket.gethostname(),
            }
            data = (json.dumps(holder) + "\n").encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
        except OSError:
            os.close(fd)
            raise
        entry = _Entry(fd)
        entry.count = 1
        _held[key] = entry
        return Lock(path, key, fresh=True)


def is_held(path: Path) -> bool:
    """Whether some process (this one included) holds the lock on `path` now."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return True
        raise
    finally:
        # A descriptor of our own: closing it releases only the probe, never a lock this
        # process holds through another descriptor (flock locks belong to the open file).
        os.close(fd)
    return False


def _holder_of_held(path: Path) -> Holder | None:
    """Who holds a lock we were just refused. A new holder truncates the file, then writes
    itself into it, after taking the lock: a refusal in between reads an empty file, or,
    before the truncate, the record of the holder before it. Both were seen in a test of two
    runs started together (the refusal said "another process", then named the test process
    that had opened the workspace first). So the file is read again, for up to 2 s, while
    it is unreadable or names a process the kernel does not list as holding the lock: 0.2 s
    was not enough on a loaded CI machine (the new holder, between its flock and its write,
    was not scheduled for longer), and a refusal is rare enough to wait for the right name."""
    holder = read_holder(path)
    deadline = time.monotonic() + HOLDER_WAIT
    while time.monotonic() < deadline:
        if holder is not None and _holds(holder.pid, path) is not False:
            break
        time.sleep(0.01)
        holder = read_holder(path)
    return holder


def _holds(pid: int, path: Path) -> bool | None:
    """Whether `pid` holds a flock on `path`, as Linux's /proc/locks says; None where it
    cannot tell (no /proc/locks: another system)."""
    try:
        st = os.stat(path)
        with open("/proc/locks", encoding="ascii", errors="replace") as locks:
            lines = locks.read().splitlines()
    except OSError:
        return None
    where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    # "1: FLOCK  ADVISORY  WRITE 4242 fe:00:2146368 0 EOF" (a blocked waiter's line starts
    # "1: ->" and shifts the fields by one: it holds nothing)
    holders = {
        fields[4]
        for fields in (line.split() for line in lines)
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == where
    }
    return str(pid) in holders


def read_holder(path: Path) -> Holder | None:
    """Who the lock file says holds it (the last holder, if nobody does now)."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        return Holder(
            command=str(raw["command"]),
            pid=int(raw["pid"]),
            since=str(raw["since"]),
            host=str(raw.get("host", "")),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing, or being rewritten by a new holder this very moment
