"""Tie a child process's life to its parent's, so a killed app leaves no server or trainer
behind. Linux has PR_SET_PDEATHSIG (the kernel signals the child when the parent dies, even
on SIGKILL); elsewhere, and as a second line on Linux, callers also poll the parent."""

from __future__ import annotations

import ctypes
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send `sig` to this process when its parent exits. Linux only.

    The death signal follows the *thread* that forked us, so a parent must fork its children
    from a long-lived thread (the main / event-loop thread). Returns False where unsupported.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False
