"""The llama.cpp engine's thread count follows the load the rest of the machine puts on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tui.local.threads import INTERVAL, STALE, ThreadCount, machine_busy_seconds


class Machine:
    """A 2-core machine whose other processes use `others` cores while we use `ours`."""

    def __init__(self) -> None:
        self.t = 0.0
        self.busy = 0.0
        self.own = 0.0
        self.others = 0.0
        self.ours = 2.0

    def run(self, seconds: float) -> None:
        self.t += seconds
        self.own += self.ours * seconds
        self.busy += (self.ours + self.others) * seconds

    def counter(self) -> ThreadCount:
        return ThreadCount(
            cores=2, busy=lambda: self.busy, own=lambda: self.own, clock=lambda: self.t
        )


def test_a_quiet_machine_gets_a_thread_per_core() -> None:
    m = Machine()
    threads = m.counter()
    for _ in range(5):
        m.run(INTERVAL)
        assert threads.now() == 2


def test_a_core_busy_elsewhere_leaves_one_thread_and_comes_back_when_freed() -> None:
    m = Machine()
    threads = m.counter()
    m.others = 0.9  # a trainer or a test suite on the other core
    m.run(INTERVAL)
    assert threads.now() == 1
    m.ours = 1.0
    m.run(INTERVAL)
    assert threads.now() == 1  # still held: stays down
    m.others = 0.0
    m.run(INTERVAL)
    assert threads.now() == 2


def test_our_own_threads_are_not_load() -> None:
    m = Machine()
    threads = m.counter()
    m.ours = 2.0  # both our threads spinning flat out
    m.run(INTERVAL)
    assert threads.now() == 2


def test_hysteresis_keeps_a_hovering_load_from_flapping() -> None:
    m = Machine()
    threads = m.counter()
    m.others = 0.6
    m.run(INTERVAL)
    assert threads.now() == 1
    seen = []
    for others in (0.4, 0.35, 0.45, 0.4):  # below TAKEN, above RELEASE
        m.others = others
        m.run(INTERVAL)
        seen.append(threads.now())
    assert seen == [1, 1, 1, 1]
    m.others = 0.1
    m.run(INTERVAL)
    assert threads.now() == 2


def test_the_count_is_reconsidered_at_most_every_interval() -> None:
    m = Machine()
    threads = m.counter()
    m.others = 1.0
    m.run(INTERVAL / 4)
    assert threads.now() == 2  # too soon to tell
    m.run(INTERVAL)
    assert threads.now() == 1


IDLE = 10.0  # seconds the engine sits without a request


def test_load_from_while_the_engine_was_idle_is_not_judged_as_now() -> None:
    assert STALE < IDLE
    m = Machine()
    threads = m.counter()
    m.run(INTERVAL)
    assert threads.now() == 2
    # The engine idles (it looks only while decoding) while another process works, then that
    # process stops and a request arrives: the long window says nothing about now.
    threads.rest()
    m.ours, m.others = 0.0, 1.5
    m.run(IDLE)
    m.ours, m.others = 2.0, 0.0
    assert threads.now() == 2
    m.run(INTERVAL)
    assert threads.now() == 2
    # Load that is still there shows in the first fresh window.
    threads.rest()
    m.others = 0.9
    m.run(IDLE)
    assert threads.now() == 2
    m.run(INTERVAL)
    assert threads.now() == 1


def test_a_long_step_under_load_is_judged_not_discarded() -> None:
    """Under contention a step at 2 threads can take seconds: the window it spans was spent
    decoding, not idle, and shows the load. Before, a window longer than STALE was always
    thrown away, so with every step that long the count never left 2."""
    m = Machine()
    threads = m.counter()
    m.run(INTERVAL)
    assert threads.now() == 2
    m.others = 1.0
    m.run(STALE * 2)  # one slow step, no rest in between
    assert threads.now() == 1


def test_a_fixed_count_never_moves() -> None:
    m = Machine()
    threads = ThreadCount(2, cores=2, busy=lambda: m.busy, own=lambda: m.own, clock=lambda: m.t)
    m.others = 1.0
    m.run(INTERVAL * 2)
    assert threads.now() == 2


def test_without_proc_stat_the_count_stays() -> None:
    m = Machine()
    threads = ThreadCount(cores=2, busy=lambda: None, own=lambda: m.own, clock=lambda: m.t)
    m.run(INTERVAL * 2)
    assert not threads.adaptive
    assert threads.now() == 2


def test_busy_seconds_read_from_proc_stat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.setattr(os, "sysconf", lambda name: 100)
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text("cpu  100 50 20 900 30 1 2 3 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n")
    # Niced work is load too (a niced trainer on both cores made 2 threads 3-30x slower than
    # 1): everything but idle and iowait.
    assert machine_busy_seconds(stat) == pytest.approx((100 + 50 + 20 + 1 + 2 + 3) / 100)
    stat.write_text("garbage\n")
    assert machine_busy_seconds(stat) is None
    assert machine_busy_seconds(tmp_path / "missing") is None


def test_the_real_machine_is_read() -> None:
    if not Path("/proc/stat").exists():
        pytest.skip("no /proc/stat on this system")
    busy = machine_busy_seconds()
    assert busy is not None and busy > 0
