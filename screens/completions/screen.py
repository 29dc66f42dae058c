"""The Completions screen: every stored completion across runs, filtered as the recipe filters
OpenAI's dashboard (by model and metadata, here also by run, role, status, text and the
teacher's confidence), one opened with its full messages, figures and, for a teacher that
sampled n times a request, every sample and whether it agreed with the vote; and the filtered
set handed to "Evaluate" (step 4 and 7) or "Distill" (step 6). "From backend…" brings in the
backend's own stored completions (stored.py) as a run, which is then filtered, evaluated and
distilled like any other."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Input, Static

from screens.base import DistillScreen
from screens.completions.dialog import CompletionDialog
from screens.completions.stored import StoredImportDialog
from tui.engine.selection import (
    CompletionSelection,
    Found,
    completion_messages,
    confidence_text,
    find_completions,
    parse_filter,
)
from tui.engine.store import CompletionRow, RunInfo
from tui.widgets.virtual_table import Column, Row, RowView, VirtualTable

COLUMNS = (
    Column("Run", width=4, justify="right"),
    Column("Model", weight=1),
    Column("Role", width=10),
    Column("#", width=5, justify="right"),
    Column("Status", width=9),
    Column("Request", weight=2),
    Column("Output / error", weight=2),
    Column("Tok", width=5, justify="right"),
    Column("ms", width=6, justify="right"),
)
# With a run that sampled n times a request: how many samples agreed with the answer kept.
CONFIDENCE_COLUMN = Column("Conf", width=5, justify="right")
FILTER_HELP = (
    "model:gpt-4o-mini run:3 role:teacher status:failed meta:task=git conf:0.75  free text"
)


def completion_cells(row: CompletionRow, run: RunInfo | None, confidence: bool = False) -> Row:
    cells = (
        str(row.run_id),
        run.model if run else "",
        run.role if run else "",
        str(row.position),
        row.status,
        row.input,
        row.error if row.status == "failed" and row.error else row.output,
        "" if row.completion_tokens is None else str(row.completion_tokens),
        "" if row.latency_ms is None else f"{row.latency_ms:.0f}",
    )
    return (*cells, confidence_text(row)) if confidence else cells


class CompletionsScreen(DistillScreen):
    CSS_PATH = "completions.tcss"
    BINDINGS = [
        Binding("slash", "filter", "Filter", key_display="/", id="completions.filter"),
        Binding("enter", "open", "Open", id="completions.open"),
        Binding("e", "evaluate", "Evaluate", id="completions.evaluate"),
        Binding("d", "distill", "Distill", id="completions.distill"),
        Binding("r", "refresh", "Refresh", id="completions.refresh"),
        Binding("b", "from_backend", "From backend…", id="completions.from_backend"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.found = Found({}, [], False)
        self.filter_text = ""

    def compose_body(self) -> ComposeResult:
        yield Input(placeholder=f"filter: {FILTER_HELP}", id="filter")
        yield Static("", id="summary")
        yield VirtualTable(COLUMNS, flagged=self._flagged, id="completions")
        yield Static("", id="completion-detail")

    def on_mount(self) -> None:
        self.sub_title = "Completions"
        self.table.focus()

    def on_screen_resume(self) -> None:
        self.action_refresh()

    @property
    def table(self) -> VirtualTable:
        return self.query_one("#completions", VirtualTable)

    # -- filtering -----------------------------------------------------------------------

    def action_filter(self) -> None:
        self.query_one("#filter", Input).focus()

    def action_refresh(self) -> None:
        self._search(self.filter_text, keep_cursor=True)

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value
        self._search(event.value)

    @on(Input.Submitted, "#filter")
    def _filter_done(self) -> None:
        self.table.focus()

    def on_key(self, event: Any) -> None:
        # esc in the filter box returns to the table (keeping the filter), not to a screen.
        if event.key == "escape" and self.query_one("#filter", Input).has_focus:
            event.stop()
            event.prevent_default()
            self.table.focus()

    @work(exclusive=True, group="completions-search", exit_on_error=False)
    async def _search(self, query: str, keep_cursor: bool = False) -> None:
        store = self.distill.store
        parsed = parse_filter(query)
        found = await store.in_thread(find_completions, store, parsed)
        self.found = found
        # The Conf column only when some completion shown has a vote to show.
        voted = any(row.confidence is not None for row in found.completions)
        self.table.set_columns((*COLUMNS, CONFIDENCE_COLUMN) if voted else COLUMNS)
        self.table.set_rows(
            RowView(
                found.completions,
                lambda row: completion_cells(row, found.runs.get(row.run_id), voted),
            ),
            keep_cursor=keep_cursor,
        )
        self._show_summary(parsed.problems)
        self._show_detail()

    def _show_summary(self, problems: list[str]) -> None:
        found = self.found
        counts: dict[str, int] = {}
        for row in found.completions:
            counts[row.status] = counts.get(row.status, 0) + 1
        n = len(found.completions)
        text = Text()
        text.append(f"{n:,}{'+' if found.truncated else ''} completions", style="bold")
        if found.runs:
            runs = sorted(found.runs)
            shown = ", ".join(str(r) for r in runs[:8]) + ("…" if len(runs) > 8 else "")
            text.append(f" in {len(runs)} run{'s' if len(runs) != 1 else ''} ({shown})")
        for status in ("done", "failed", "cancelled"):
            if counts.get(status):
                style = {"failed": "red", "cancelled": "yellow"}.get(status, "")
                text.append(f" · {counts[status]:,} {status}", style=style)
        models = sorted({r.model for r in found.runs.values()})
        if models:
            text.append(" · " + ", ".join(models[:4]) + ("…" if len(models) > 4 else ""))
        if problems:
            text.append("  ignored: " + "; ".join(problems), style="yellow")
        if n:
            text.append("   enter opens · e evaluate · d distill", style="dim")
        self.query_one("#summary", Static).update(text)

    def _flagged(self, index: int) -> bool:
        rows = self.found.completions
        return index < len(rows) and rows[index].status != "done"

    def current(self) -> CompletionRow | None:
        rows = self.found.completions
        cursor = self.table.cursor
        return rows[cursor] if rows and cursor < len(rows) else None

    @on(VirtualTable.Highlighted, "#completions")
    def _show_detail(self) -> None:
        detail = self.query_one("#completion-detail", Static)
        row = self.current()
        if row is None:
            detail.update(
                Text(
                    "No completions match the filter."
                    if self.filter_text.strip()
                    else "No completions yet: generate a run on the Generate screen (2), or"
                    " press b to import the backend's stored completions.",
                    style="dim",
                )
            )
            return
        run = self.found.runs.get(row.run_id)
        text = Text()
        text.append(f"run {row.run_id} #{row.position}", style="bold")
        if run is not None:
            text.append(f" · {run.model}" + (f" ({run.role})" if run.role else ""))
        text.append(f" · {row.status}")
        if row.confidence is not None:
            text.append(f" · confidence {confidence_text(row)}")
            if run is not None:
                text.append(f" (vote {run.params.get('vote', 'normalised')})")
        text.append("\nRequest ", style="bold")
        text.append(row.input)
        if row.status == "failed" and row.error:
            text.append("\nError   ", style="bold red")
            text.append(row.error)
        else:
            text.append("\nOutput  ", style="bold")
            text.append(row.output)
        detail.update(text)

    # -- opening one ---------------------------------------------------------------------

    @on(VirtualTable.Selected, "#completions")
    def _selected(self) -> None:
        self.action_open()

    @work(group="completions-open", exit_on_error=False)
    async def action_open(self) -> None:
        row = self.current()
        if row is None:
            return
        run = self.found.runs.get(row.run_id)
        if run is None:
            return
        store = self.distill.store
        messages = await store.in_thread(completion_messages, store, run, row)
        await self.app.push_screen(CompletionDialog(run, row, messages))

    # -- the backend's stored completions -----------------------------------------------

    @work(group="completions-import", exit_on_error=False)
    async def action_from_backend(self) -> None:
        dialog = StoredImportDialog(self.distill.store, self.distill.backend_for)
        result = await self.app.push_screen_wait(dialog)
        if result is None:
            self.action_refresh()  # an import stopped with Esc keeps what it brought in
            return
        self.notify(
            f"{result.summary()}. Filtered to the run below: e evaluates it, d distills it.",
            title=f"Stored completions → run {result.run_id}",
            markup=False,
        )
        box = self.query_one("#filter", Input)
        box.value = f"run:{result.run_id}"  # Input.Changed searches
        self.table.focus()

    # -- handing the selection on --------------------------------------------------------

    async def action_evaluate(self) -> None:
        await self._hand_over("evals", "evaluation")

    async def action_distill(self) -> None:
        await self._hand_over("finetune", "distillation")

    async def _hand_over(self, mode: str, purpose: str) -> None:
        if not self.found.completions:
            self.notify(
                "Nothing matches the filter: there is nothing to select.", severity="warning"
            )
            return
        selection = CompletionSelection.of(self.found, self.filter_text.strip())
        runs = ", ".join(str(r) for r in selection.run_ids)
        plural = "s" if len(selection.run_ids) > 1 else ""
        self.notify(
            f"{len(selection.completion_ids):,} completions of run{plural} {runs}"
            f" ({selection.description}).",
            title=f"Selected for {purpose}",
            markup=False,
        )
        await self.distill.hand_over(selection, mode)
