"""The recipe running in the Recipe view: a line per step as the recipe reaches it (what it
does, how far it is, its note, its clock), then the report's table and its one-line business
case. It draws a `LiveRecipe` (tui/engine/recipe_live.py) at the screens' repaint rate, and
only when the recipe's version moved or a second passed for the running step's clock."""

from __future__ import annotations

import time
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from tui.engine.recipe_live import LiveRecipe, StepLine
from tui.widgets.progress_line import clock, on_repaint

SAYS_NOTHING = {"unpriced", "", "None"}
MARKS = {
    "running": ("▸", "bold cyan"),
    "done": ("✓", "green"),
    "skipped": ("✓", "dim"),
    "failed": ("✗", "red"),
    "stopped": ("■", "yellow"),
}


class RecipeBoard(VerticalScroll):
    """The steps of the run on view, and its report once it has one (focused while shown,
    so the arrows and page keys scroll a report taller than the screen)."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.live: LiveRecipe | None = None
        self.status = ""  # the line above the steps: running, finished, stopped, failed
        self._painted: tuple[int, int, str] = (-1, -1, "")

    def compose(self) -> ComposeResult:
        yield Static("", id="run-status")
        yield Static("", id="run-about", markup=False)  # names models, shown as written
        yield Static("", id="run-steps")
        yield Static("", id="run-report")

    def on_mount(self) -> None:
        on_repaint(self, self._repaint)

    def show(self, live: LiveRecipe, status: str) -> None:
        self.live = live
        self.status = status
        self.query_one("#run-report", Static).update("")
        self.query_one("#run-about", Static).update("")
        self._painted = (-1, -1, "")
        self._repaint()

    def say(self, status: str) -> None:
        self.status = status
        self._repaint()

    def describe(self, about: str) -> None:
        """The dataset and who teaches whom (`Recipe.describe`), under the status line."""
        self.query_one("#run-about", Static).update(about)

    def show_report(self, report: dict[str, Any]) -> None:
        self.query_one("#run-report", Static).update(report_renderable(report))

    def _repaint(self) -> None:
        live = self.live
        if live is None:
            return
        live.catch_up()
        running = live.running
        # The clocks move once a second with no event.
        going = live.ended is None
        second = int(time.monotonic() - live.started) if going else -1
        painted = (live.version, second, self.status)
        if painted == self._painted:
            return
        self._painted = painted
        status = Text(self.status, style="bold")
        if going and running is not None:
            status.append(f"  {clock(time.monotonic() - live.started)}", style="dim")
        self.query_one("#run-status", Static).update(status)
        lines = Text("\n").join(_step_text(step) for step in live.steps.values())
        self.query_one("#run-steps", Static).update(lines)


def _step_text(step: StepLine) -> Text:
    mark, style = MARKS[step.status]
    text = Text.assemble(
        (f"{mark} ", style), (step.title, "bold" if step.status == "running" else "")
    )
    if step.status == "skipped":
        text.append(" (done before)", style="dim")
    parts: list[str] = []
    # A fine-tune's progress is in training steps ("round-1/train"), a generation's in items.
    unit = "step " if step.key.endswith("/train") else ""
    if step.total is not None and step.status in ("running", "failed", "stopped"):
        parts.append(f"{unit}{step.done or 0}/{step.total}")
    elif step.done and step.status == "running":
        parts.append(f"{unit}{step.done}")
    if step.note:
        parts.append(step.note)
    if step.status != "skipped":
        parts.append(clock(step.elapsed()))
    if parts:
        text.append("  " + " · ".join(parts), style="dim" if step.status != "running" else "")
    return text


def report_renderable(report: dict[str, Any]) -> RenderableType:
    """The report's rows as a table (every value as written, never markup), its business
    case, and where the files are."""
    rows = report.get("rows") or []
    parts: list[RenderableType] = []
    if rows:
        table = Table(
            title=f"Teacher and students on the eval split ({report.get('items')} items)",
            title_justify="left",
            box=box.SIMPLE_HEAD,
        )
        # A column that says nothing (every cost "unpriced" on a local backend) is left out.
        headers = [h for h in rows[0] if len({str(row.get(h)) for row in rows} - SAYS_NOTHING)]
        for header in headers:
            table.add_column(str(header), no_wrap=header == "run")
        for row in rows:
            table.add_row(*(Text(str(row.get(h, ""))) for h in headers))
        parts.append(table)
    if report.get("summary"):
        parts.append(Text(str(report["summary"]), style="bold"))
    if report.get("chance"):
        parts.append(Text(str(report["chance"])))
    return Group(*parts)
