"""The results of an eval run: a per-grader summary, the result table (a column per grader),
its filter and sort, the highlighted item's failures, the item in full (enter), and the
export (CSV or JSONL).

Grading 100,000 completions reports thousands of grades a second. Runner events only write
into `LiveResults`; the panel redraws from it REPAINT_HZ times a second at most, and only when
something changed."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message

from screens.evals.dialogs import ResultItemDialog, results_export_dialog
from screens.grades import score_text, verdict
from tui.engine.eval_views import ALL, LiveResults, describe_filter, result_filters, result_view
from tui.engine.evals import ResultRow, export_results
from tui.engine.store import Store
from tui.widgets.progress_line import REPAINT_HZ
from tui.widgets.steady_static import SteadyStatic
from tui.widgets.virtual_table import Column, RowView, VirtualTable

SUMMARY_HZ = 4  # the grader summary's redraws a second at most (see repaint)

FIXED_COLUMNS = (
    Column("#", width=5, justify="right"),
    Column("Request", weight=3),
    Column("Output", weight=3),
    Column("Reference", weight=2),
)


def _percent(rate: float | None) -> str:
    return "–" if rate is None else f"{rate:.1%}"


def _rate_style(rate: float | None) -> str:
    if rate is None:
        return "dim"
    return "green" if rate >= 0.8 else ("yellow" if rate >= 0.5 else "red")


def _bar(rate: float | None, width: int = 12) -> Text:
    if rate is None:
        return Text("·" * width, style="dim")
    full = round(rate * width)
    text = Text("█" * full, style=_rate_style(rate))
    text.append("░" * (width - full), style="dim")
    return text


def _slug(text: str) -> str:
    return re.sub(r"[^\w.-]+", "-", text).strip("-").lower() or "eval"


def summary_table(live: LiveResults) -> Table:
    """One row per grader: pass rate (with a bar), mean score, passed, failed, errored."""
    table = Table(box=box.SIMPLE_HEAD, expand=True, padding=(0, 1), show_edge=False)
    table.add_column("Grader", style="bold", ratio=1, no_wrap=True, overflow="ellipsis")
    table.add_column("Pass rate", width=20, no_wrap=True)
    table.add_column("Mean", justify="right", width=6, no_wrap=True)
    table.add_column("Passed", justify="right", style="green", width=8, no_wrap=True)
    table.add_column("Failed", justify="right", style="red", width=8, no_wrap=True)
    table.add_column("Errored", justify="right", style="yellow", width=8, no_wrap=True)
    for name in live.graders:
        s = live.tally.summary(name)
        rate = Text()
        rate.append_text(_bar(s.pass_rate))
        rate.append(f" {_percent(s.pass_rate):>6}", style=_rate_style(s.pass_rate))
        table.add_row(
            name,
            rate,
            score_text(s.mean_score),
            f"{s.passed:,}",
            f"{s.failed:,}",
            f"{s.errored:,}",
        )
    return table


class ResultsPanel(Vertical):
    """An eval run's results as they fill. `show(live)` puts an eval run on view; `f`, `s`,
    enter and `x` of the screen are `cycle_filter`, `cycle_sort`, enter on the table and
    `export`."""

    @dataclass
    class ViewChanged(Message):
        """The table shows another filter or order of the results."""

        panel: ResultsPanel
        filter: str
        sort: str | None

        @property
        def control(self) -> ResultsPanel:
            return self.panel

    @dataclass
    class Exported(Message):
        panel: ResultsPanel
        path: Path
        count: int

        @property
        def control(self) -> ResultsPanel:
            return self.panel

    def __init__(self, store: Store, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.store = store
        self.live: LiveResults | None = None
        self.shown: list[int] = []  # indices into live.rows, in the table's order
        self.filter = ALL
        self.sort: str | None = None
        self._painted: tuple[Any, ...] = ()
        self._summarised: tuple[Any, ...] = ()  # the eval run and version the summary shows
        self._summarised_at = 0.0

    def compose(self) -> ComposeResult:
        # Redrawn up to REPAINT_HZ times a second while judges answer: laid out again only
        # when their text needs another height.
        yield SteadyStatic("", id="grader-summary")
        yield SteadyStatic("", id="result-view-line")
        yield VirtualTable(FIXED_COLUMNS, cell_style=self._cell_style, id="result-table")
        yield SteadyStatic("", id="result-detail")

    def on_mount(self) -> None:
        self.set_interval(1 / REPAINT_HZ, self.repaint)

    @property
    def table(self) -> VirtualTable:
        return self.query_one("#result-table", VirtualTable)

    def show(self, live: LiveResults | None) -> None:
        """Put an eval run's results on view (None: none), unfiltered, in item order."""
        self.live = live
        self.filter, self.sort = ALL, None
        self._set_columns()
        self.repaint(force=True)

    def _set_columns(self) -> None:
        columns = []
        for name in self.live.graders if self.live else []:
            label = name + (" ↑" if name == self.sort else "")
            columns.append(Column(label, width=max(8, min(len(label), 16))))
        self.table.set_columns([*FIXED_COLUMNS, *columns])

    # -- filter and sort -------------------------------------------------------------------

    def set_filter(self, which: str) -> None:
        self.filter = which
        self.repaint()
        self.post_message(self.ViewChanged(self, self.filter, self.sort))

    def cycle_filter(self) -> None:
        if self.live is None:
            return
        filters = result_filters(self.live.graders)
        i = filters.index(self.filter) if self.filter in filters else 0
        self.set_filter(filters[(i + 1) % len(filters)])

    def cycle_sort(self) -> None:
        """Item order, then by each grader's score, lowest first."""
        if self.live is None:
            return
        keys: list[str | None] = [None, *self.live.graders]
        i = keys.index(self.sort) if self.sort in keys else 0
        self.sort = keys[(i + 1) % len(keys)]
        self._set_columns()
        self.repaint()
        self.post_message(self.ViewChanged(self, self.filter, self.sort))

    # -- the table ---------------------------------------------------------------------------

    def _cells(self, index: int) -> tuple[str, ...]:
        live = self.live
        assert live is not None
        row = live.rows[index]
        position = live.position(row)
        cells = ["" if position is None else str(position), row.input, row.output, row.reference]
        for name in live.graders:
            grade = row.grades.get(name)
            mark, _ = verdict(grade)
            if grade is None:
                cells.append(mark)
            elif grade.passed is None:
                cells.append(f"{mark} error")
            else:
                cells.append(f"{mark} {score_text(grade.score)}")
        return tuple(cells)

    def _cell_style(self, index: int, column: int) -> str | None:
        live = self.live
        grader = column - len(FIXED_COLUMNS)
        if live is None or grader < 0 or grader >= len(live.graders) or index >= len(self.shown):
            return None
        grade = live.rows[self.shown[index]].grades.get(live.graders[grader])
        return verdict(grade)[1]

    def current_row(self) -> ResultRow | None:
        live = self.live
        cursor = self.table.cursor
        if live is None or cursor >= len(self.shown):
            return None
        return live.rows[self.shown[cursor]]

    @on(VirtualTable.Highlighted, "#result-table")
    def _highlighted(self) -> None:
        self._show_detail()

    @on(VirtualTable.Selected, "#result-table")
    async def _selected(self) -> None:
        row, live = self.current_row(), self.live
        if row is not None and live is not None:
            await self.app.push_screen(ResultItemDialog(row, live.graders, live.position(row)))

    # -- drawing -----------------------------------------------------------------------------

    def repaint(self, force: bool = False) -> None:
        """The only place the results are redrawn: when the eval run on view, its version,
        the filter or the sort changed since the last time."""
        live = self.live
        if live is not None:
            live.catch_up()  # a runner on its own thread: its events since the last repaint
        key = (id(live), live.version if live else -1, self.filter, self.sort)
        if key != self._painted or force:
            self._painted = key
            self.shown = result_view(live.rows, self.filter, self.sort) if live else []
            self.table.set_rows(RowView(self.shown, self._cells), keep_cursor=True)
            self._show_view_line()
            self._show_detail()
        # The summary's rich Table takes ~7 ms to draw, as long as the whole results table: it
        # is redrawn at most SUMMARY_HZ times a second, and always once the counts settle.
        counts = key[:2]
        now = time.monotonic()
        if counts != self._summarised and (force or now - self._summarised_at >= 1 / SUMMARY_HZ):
            self._summarised, self._summarised_at = counts, now
            self._show_summary()

    def _show_summary(self) -> None:
        summary = self.query_one("#grader-summary", SteadyStatic)
        live = self.live
        if live is None or not live.graders:
            summary.display = False
            return
        summary.display = True
        # A header, its rule and a line per grader (no cell wraps).
        summary.show(summary_table(live), lines=len(live.graders) + 2)

    def _show_view_line(self) -> None:
        live = self.live
        text = Text()
        if live is not None:
            text.append(f"{len(self.shown):,} of {len(live.rows):,} items", style="bold")
            text.append(f" · {describe_filter(self.filter)}")
            text.append(f" · by {self.sort + ' score' if self.sort else 'item'}")
            text.append("   f filter · s sort · enter opens · x export", style="dim")
        self.query_one("#result-view-line", SteadyStatic).show(text)

    def _show_detail(self) -> None:
        detail = self.query_one("#result-detail", SteadyStatic)
        row, live = self.current_row(), self.live
        if row is None or live is None:
            detail.show(
                Text("No items match the filter.", style="dim")
                if live is not None and live.rows
                else ""
            )
            return
        text = Text()
        position = live.position(row)
        text.append(f"#{position} " if position is not None else "", style="bold")
        text.append(row.input)
        for name in live.graders:
            grade = row.grades.get(name)
            if grade is None or grade.passed:
                continue
            mark, style = verdict(grade)
            text.append(f"\n{mark} {name}: ", style=f"bold {style}")
            text.append(grade.detail)
        detail.show(text)

    # -- export ------------------------------------------------------------------------------

    @work(group="evals-export", exclusive=True, exit_on_error=False)
    async def export(self) -> None:
        live = self.live
        if live is None:
            self.notify("Nothing to export: grade a run first (g).", severity="warning")
            return
        store = self.store
        info = live.info
        name = f"{_slug(info.eval_name)}-run{info.run_id}-eval-run{info.id}.csv"
        request = await self.app.push_screen_wait(results_export_dialog(store.exports_dir / name))
        if request is None:
            return
        fmt = "jsonl" if request.format == "jsonl" else "csv"
        try:
            count = await store.in_thread(export_results, store, info.id, request.path, fmt)
        except OSError as error:
            self.notify(
                f"{request.path}: {error}", title="Export failed", severity="error", markup=False
            )
            return
        self.notify(f"Exported {count:,} items to {request.path}.", markup=False)
        self.post_message(self.Exported(self, request.path, count))
