"""Two questions about this machine that the app and the local server both ask: is an address
loopback (only there may a server run without a key, or `web` without --allow-remote), and
is a process still alive."""

from __future__ import annotations

import ipaddress
import os


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process. A zombie (exited, not yet reaped by its parent)
    counts as gone: it will never do anything again."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: it exists
    try:
        import psutil

        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except Exception:  # psutil cannot tell (e.g. the process exited meanwhile): assume alive
        return True
