"""The runs of the dataset on the form, newest first: the one to view, to resume, or (while a
generation goes) the one running, whose counts come from the engine once a second."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Label

from tui.engine.generation import RunStats
from tui.engine.run_form import run_size
from tui.engine.store import DatasetInfo, RunInfo
from tui.widgets.virtual_table import Column, VirtualTable

RUN_COLUMNS = (
    Column("Run", width=4, justify="right"),
    Column("Model", weight=2),
    Column("Role", width=10),
    Column("Split", width=5),
    Column("Status", width=11),
    Column("Done", width=5, justify="right"),
    Column("Fail", width=4, justify="right"),
    Column("Items", width=5, justify="right"),
)


def run_row(
    run: RunInfo, dataset: DatasetInfo | None, stats: RunStats | None, *, elsewhere: bool = False
) -> tuple[str, ...]:
    """A run's row; `stats` are the engine's totals when the run is generating now here;
    `elsewhere`: it is generating in this app, not by this screen (the recipe)."""
    status, done, failed = run.status, run.n_done, run.n_failed
    if stats is not None:
        status, done, failed = "running", stats.done_before + stats.done, stats.failed
    elif status == "running" and not elsewhere:
        status = "interrupted"  # marked running by a session that ended mid-run
    size = run_size(run, dataset)
    return (
        str(run.id),
        run.model,
        run.role,
        run.split or "all",
        status,
        str(done),
        str(failed),
        "" if size is None else str(size),
    )


class RunsPanel(Vertical):
    """The runs table and its title. Posts `Highlighted` when the user moves to a run and
    `Chosen` when they press enter on one."""

    @dataclass
    class Highlighted(Message):
        """The user moved the cursor to `run` (moves made by code post nothing)."""

        run: RunInfo

    @dataclass
    class Chosen(Message):
        """Enter on `run`."""

        run: RunInfo

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.runs: list[RunInfo] = []
        self.dataset: DatasetInfo | None = None
        self._generating: tuple[int, Callable[[], RunStats]] | None = None
        # Whether a run is generating in this app but not by this panel's screen (the
        # recipe on the Recipe view): the screen sets it (Store.is_generating).
        self.is_generating: Callable[[int], bool] = lambda run_id: False
        self._skip_highlights = 0  # cursor moves made by code, not by the user

    def compose(self) -> ComposeResult:
        yield Label("Runs", id="runs-title")
        yield VirtualTable(RUN_COLUMNS, id="runs")

    def on_mount(self) -> None:
        self.set_interval(1.0, self._tick)

    @property
    def table(self) -> VirtualTable:
        return self.query_one("#runs", VirtualTable)

    def show_runs(
        self, runs: list[RunInfo], dataset: DatasetInfo | None, *, keep_cursor: bool = True
    ) -> None:
        self.runs, self.dataset = runs, dataset
        self._paint(keep_cursor=keep_cursor)
        title = Text(f"Runs of {dataset.name}" if dataset else "Runs", style="bold")
        title.append(f" ({len(runs)})  ")
        title.append("^r resumes the highlighted one", style="dim")
        self.query_one("#runs-title", Label).update(title)

    def track(self, run_id: int, stats: Callable[[], RunStats]) -> None:
        """Show `run_id` as running, with the counts of `stats()` read once a second (the
        generator replaces its totals when its run starts: hence a function)."""
        self._generating = (run_id, stats)
        self._paint()

    def untrack(self) -> None:
        self._generating = None

    def move_to(self, index: int) -> None:
        """Put the cursor on a run (posts nothing)."""
        if self.runs:
            self._skip_highlights += 1
        self.table.cursor = index

    def selected(self) -> RunInfo | None:
        cursor = self.table.cursor
        return self.runs[cursor] if 0 <= cursor < len(self.runs) else None

    def _tick(self) -> None:
        if self._generating is not None:
            self._paint()

    def _paint(self, *, keep_cursor: bool = True) -> None:
        running_id, stats = self._generating or (None, None)
        now = stats() if stats is not None else None
        rows = [
            run_row(
                run,
                self.dataset,
                now if run.id == running_id else None,
                elsewhere=self.is_generating(run.id),
            )
            for run in self.runs
        ]
        if rows:
            self._skip_highlights += 1  # set_rows always sets the cursor
        self.table.set_rows(rows, keep_cursor=keep_cursor)

    @on(VirtualTable.Highlighted, "#runs")
    def _highlighted(self, event: VirtualTable.Highlighted) -> None:
        event.stop()
        if self._skip_highlights:
            self._skip_highlights -= 1
            return
        run = self.selected()
        if run is not None and self.table.has_focus:
            self.post_message(self.Highlighted(run))

    @on(VirtualTable.Selected, "#runs")
    def _selected(self, event: VirtualTable.Selected) -> None:
        event.stop()
        run = self.selected()
        if run is not None:
            self.post_message(self.Chosen(run))
