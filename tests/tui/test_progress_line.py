"""The progress line alone, in a tiny app: what it shows of an engine job's running totals
(one clock format, the ETA only while the job runs), and that a followed line moves its clock
with no event, stops when told, and asks nothing while its screen is covered."""

from __future__ import annotations

import re
import time

from rich.text import Text
from textual.app import App, ComposeResult
from textual.screen import Screen
from textual.widgets import Static

from tests.helpers.pilot import timer_ticks, wait_until
from tui.engine.evals import EvalStats
from tui.engine.generation import RunStats
from tui.widgets.progress_line import REPAINT_HZ, Figures, ProgressLine, clock


class LineApp(App[None]):
    def compose(self) -> ComposeResult:
        yield ProgressLine(id="line")


def test_one_clock_format() -> None:
    assert clock(None) == "–"
    assert clock(0) == "0:00"
    assert clock(59.9) == "0:59"
    assert clock(75) == "1:15"
    assert clock(3599) == "59:59"
    assert clock(3725) == "1:02:05"
    assert clock(-3) == "0:00"


def test_figures_of_a_running_and_a_finished_job() -> None:
    stats = RunStats(total=10, todo=8, done_before=2, started=time.monotonic() - 30)
    stats.done, stats.failed = 3, 1
    line = Figures.of(stats, unit="done").text().plain
    # 2 done before + 4 finished now, over 30 s; 4 of 8 finished: as long again to go.
    assert "6/10 done" in line
    assert re.search(r"elapsed 0:3\d", line), line
    assert re.search(r"ETA 0:3\d", line), line
    assert re.search(r"0\.1/s", line), line  # slower than one a second: a decimal is kept

    stats.finished = stats.started + 40
    line = Figures.of(stats).text().plain
    assert "elapsed 0:40" in line
    assert "ETA" not in line, "a finished job has no ETA"

    # Before anything finished the ETA is unknown, not zero.
    grading = EvalStats(total=50, todo=50)
    assert "ETA –" in Figures.of(grading, label="Grading", unit="grades").text().plain


def test_parts_in_order_and_only_those_given() -> None:
    figures = Figures(
        label="Grading",
        done=5,
        total=20,
        unit="grades",
        counts=(Text("1 failed", style="red"),),
        rate=1234.0,
        elapsed=65,
        running=True,
        eta=None,
        notes=("$0.0100",),
        hint="esc cancels",
    )
    assert figures.text().plain == (
        "Grading ━━━━━━━━━━━━ 5/20 grades · 1 failed · 1,234/s · elapsed 1:05 · ETA – · "
        "$0.0100   esc cancels"
    )
    # Nothing but the clocks (the Fine-tune screen's job): no bar, no count.
    assert Figures(elapsed=5, running=True, eta=125).text().plain == "elapsed 0:05 · ETA 2:05"


async def test_a_followed_line_moves_its_clock_and_stops_when_shown_text() -> None:
    start = time.monotonic()
    calls = 0

    def source() -> Figures:
        nonlocal calls
        calls += 1
        return Figures(elapsed=time.monotonic() - start)

    app = LineApp()
    async with app.run_test() as pilot:
        line = app.query_one(ProgressLine)
        line.follow(source)
        assert line.shown == "elapsed 0:00"
        asked = calls
        # No event comes: the line's own repaint moves the clock.
        await wait_until(pilot, lambda: line.shown != "elapsed 0:00", what="the clock moved")
        assert re.fullmatch(r"elapsed \d+:\d\d", line.shown), line.shown
        assert str(app.query_one("#line", Static).render()) == line.shown
        assert calls > asked

        line.show(Text("Eval run 3 done"))
        asked = calls
        # As long as a dozen repaints would have taken: none came.
        await timer_ticks(pilot, 1 / REPAINT_HZ, 12)
        assert calls == asked, "a line showing text asks its source nothing"
        assert line.shown == "Eval run 3 done"
        assert not line.following


async def test_a_covered_line_asks_nothing_and_none_keeps_what_is_shown() -> None:
    calls = 0
    answer: Figures | None = Figures(done=1, total=4)

    def source() -> Figures | None:
        nonlocal calls
        calls += 1
        return answer

    app = LineApp()
    async with app.run_test() as pilot:
        line = app.query_one(ProgressLine)
        line.follow(source)
        assert "1/4 done" in line.shown
        answer = None  # "nothing new": the line keeps what it shows
        asked = calls
        await wait_until(pilot, lambda: calls >= asked + 2, what="asked twice more")
        assert "1/4 done" in line.shown

        await app.push_screen(Screen())
        await pilot.pause()
        asked = calls
        await timer_ticks(pilot, 1 / REPAINT_HZ, 12)
        assert calls == asked, "a line under another screen does not repaint"
        answer = Figures(done=2, total=4)
        app.pop_screen()
        await wait_until(pilot, lambda: "2/4 done" in line.shown, what="repainted once on top")
