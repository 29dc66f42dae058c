"""How many threads llama.cpp should use right now: as many as there are cores nobody else is
using.

A decode step of a 135M model takes a few milliseconds, so ggml's threads meet at a barrier
hundreds of times a second. On a quiet machine the fastest setting is one thread per core,
spinning briefly at each barrier; on a machine where another process holds a core (the app, a
trainer, a test suite), a second thread has to wait for that core at every barrier and the
step takes the length of a scheduler slice. Measured here (2 cores, SmolLM2-135M Q4_1, 64-token
greedy completions, bench/local_backend.py):

    quiet (load < 1)             1 thread   2 threads, passive   2 threads, brief spin
    single stream                31 tok/s   41 tok/s             55 tok/s
    8 concurrent streams         28         64                   73
    one core busy elsewhere      1 thread   2 threads, passive   2 threads, brief spin
    single stream                32         20                   20
    8 concurrent streams         38         21                   22

No fixed choice is right for both, so the engine asks before each decoding step (at most
every ``INTERVAL`` seconds) how much CPU the rest of the machine used since the last look —
all CPU time from /proc/stat minus this process's own — and uses the cores left over, at
least one. After an idle spell the first look only starts a new window (``STALE``). The
hysteresis keeps it from flapping when another process hovers around half a core. Where
/proc/stat is missing (not Linux) the count stays at its starting value.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

INTERVAL = 0.5  # seconds between looks: the load a user starts shows within a second
# After the engine sat idle (it looks only while decoding), a look longer ago than this says
# nothing about now: what other processes did then may be long over. Such a look starts a new
# window and the count stays until that window is INTERVAL long. A long window spent decoding
# is judged as any other: under contention one step can take seconds, and a count that waited
# for a short window then never moved (a niced trainer on both cores: 2 threads kept, a
# 32-token answer 9 s instead of 0.6 s).
# Measured with bench/local_backend.py, whose anchor (plain llama-cpp-python in another
# process) runs just before our trials: judged on the stale window, our single stream took
# its first 0.5 s at one thread (first token 0.20 s against 0.13 s without the anchor).
STALE = 4 * INTERVAL
# Another process using this much of a core takes that core away from us; it must fall below
# RELEASE before the core is counted as free again.
TAKEN = 0.5
RELEASE = 0.3

_PROC_STAT = Path("/proc/stat")


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask), not all of the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def machine_busy_seconds(path: Path = _PROC_STAT) -> float | None:
    """CPU seconds all cores have spent busy since boot, or None where the kernel does not say.

    The first line of /proc/stat: user nice system idle iowait irq softirq steal …, in clock
    ticks. Idle and iowait are not work. Niced work counts as any other: the scheduler gives a
    niced process less of a core, not none of it, and every slice it takes stalls all of our
    threads at the next barrier. Measured here with a trainer at nice 5 busy on both cores,
    32 greedy tokens through the local server: 2 threads 1.8-21 s, 1 thread 0.58-0.88 s (this
    counted niced work as free until then, and took 2 threads: 1.7-3.8 s)."""
    try:
        with path.open() as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    busy = user + nice + system + irq + softirq + steal
    return busy / os.sysconf("SC_CLK_TCK")


class ThreadCount:
    """The thread count for the next decoding step.

    ``fixed`` pins it (a user's ``--threads``). Otherwise ``now()`` is checked before each
    step and answers from the last look until ``INTERVAL`` has passed."""

    def __init__(
        self,
        fixed: int | None = None,
        *,
        cores: int | None = None,
        busy: Callable[[], float | None] = machine_busy_seconds,
        own: Callable[[], float] = time.process_time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cores = cores or usable_cores()
        self.fixed = fixed
        self._busy, self._own, self._clock = busy, own, clock
        self.threads = fixed or self.cores
        self._taken = 0  # cores counted as held by other processes
        self._last = self._sample()
        self._rested = True  # idle since the last look (the engine has not decoded yet)

    def _sample(self) -> tuple[float, float | None, float]:
        return self._clock(), self._busy(), self._own()

    @property
    def adaptive(self) -> bool:
        return self.fixed is None and self._last[1] is not None

    def rest(self) -> None:
        """The engine goes idle: the window that ends at the next look spans that idle time."""
        self._rested = True

    def now(self) -> int:
        if not self.adaptive:
            return self.threads
        t0, busy0, own0 = self._last
        sample = self._sample()
        t1, busy1, own1 = sample
        elapsed = t1 - t0
        rested, self._rested = self._rested, False
        if rested and elapsed > STALE:
            self._last = sample
            return self.threads
        if elapsed < INTERVAL or busy1 is None or busy0 is None:
            return self.threads
        self._last = sample
        # Our own threads' time (spinning included) is not someone else's load.
        others = max(0.0, (busy1 - busy0) - (own1 - own0)) / elapsed
        taken = self._taken
        while taken < self.cores - 1 and others >= taken + TAKEN:
            taken += 1
        while taken > 0 and others < taken - 1 + RELEASE:
            taken -= 1
        self._taken = taken
        self.threads = max(1, self.cores - taken)
        return self.threads
