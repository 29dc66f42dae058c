"""The Compare screen: step 7 of the recipe, "compare with the baseline" — what distillation
bought, shown to a stakeholder.

Top, each run's pass rate per grader with its difference from the baseline (in points,
green when better), its mean latency, tokens and cost. Below, the items with the runs'
outputs side by side, filtered to where they differ, regressions or improvements, and under
the table the highlighted item's outputs with their differing parts marked."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Label, Static

from screens.base import DistillScreen
from screens.dialogs import Dialog
from screens.eval_dialogs import CompareDialog, CompareRequest, score_text
from tui.engine.eval_views import default_comparison, ungraded_runs
from tui.engine.evals import (
    CompareFilter,
    Comparison,
    EvalRunner,
    ItemCell,
    ItemRow,
    RunColumn,
    compare,
    highlight_differences,
    start_eval_run,
)
from tui.engine.store import StoreError
from tui.widgets.virtual_table import Column, VirtualTable

REPAINT_HZ = 12
FILTERS: tuple[tuple[CompareFilter, str], ...] = (
    ("all", "All"),
    ("differ", "Differ"),
    ("regressions", "Regressions"),
    ("improvements", "Improvements"),
)
BASELINE_MARK = "★"
DIFF_OLD = "bold #ffffff on #8b1e2d"
DIFF_NEW = "bold #ffffff on #1f6f3f"


def cell_verdict(cell: ItemCell, graders: Sequence[str]) -> tuple[str, str]:
    """A run's output of an item in one mark: every grader passed ✓, some failed ✗, some
    errored !, not graded ·, no completion —."""
    if cell.completion_id is None:
        return "—", "dim"
    verdicts = [cell.passed[g] for g in graders if g in cell.passed]
    if not verdicts:
        return "·", "dim"
    if any(v is False for v in verdicts):
        return "✗", "red"
    if any(v is None for v in verdicts):
        return "!", "yellow"
    return "✓", "green"


def run_title(column: RunColumn, baseline: int) -> str:
    mark = f" {BASELINE_MARK}" if column.run_id == baseline else ""
    role = f" {column.role}" if column.role else ""
    return f"run {column.run_id}{role}{mark}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


class _ItemRows(Sequence[tuple[str, ...]]):
    def __init__(self, comparison: Comparison, rows: list[ItemRow]) -> None:
        self.comparison = comparison
        self.rows = rows
        self.run_ids = [c.run_id for c in comparison.runs]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: Any) -> Any:
        row = self.rows[index]
        cells = [str(row.position), row.input]
        for run_id in self.run_ids:
            cell = row.cells[run_id]
            mark, _ = cell_verdict(cell, self.comparison.graders)
            output = "missing" if cell.completion_id is None else cell.output
            cells.append(f"{mark} {output}")
        return tuple(cells)


class CompareScreen(DistillScreen):
    CSS_PATH = "compare.tcss"
    BINDINGS = [
        Binding("c", "choose", "Choose runs…", id="compare.choose"),
        Binding("b", "cycle_baseline", "Baseline", id="compare.baseline"),
        Binding("f", "cycle_filter", "Filter", id="compare.filter"),
        Binding("t", "cycle_versus", "Diff with", id="compare.versus"),
        Binding("g", "grade_missing", "Grade missing", id="compare.grade"),
        Binding("escape", "cancel_grading", "Cancel", id="compare.cancel"),
        Binding("r", "refresh", "Refresh", show=False, id="compare.refresh"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.request: CompareRequest | None = None
        self.comparison: Comparison | None = None
        self.filter: CompareFilter = "all"
        self.rows: list[ItemRow] = []
        self.counts: dict[str, int] = {}
        # The run whose output the baseline's is diffed with: chosen with t, else (None) the
        # first run whose output of the item differs from the baseline's.
        self.versus: int | None = None
        self.runner: EvalRunner | None = None
        self.grading_note = ""

    # -- layout --------------------------------------------------------------------------

    def compose_body(self) -> ComposeResult:
        with Vertical(id="compare"):
            yield Static("", id="compare-title")
            yield Static("", id="compare-summary")
            yield Static("", id="compare-progress")
            yield Static("", id="compare-filters")
            yield VirtualTable(
                [Column("#", width=4, justify="right"), Column("Request", weight=2)],
                cell_style=self._cell_style,
                id="compare-items",
            )
            yield Static("", id="compare-diff")

    def on_mount(self) -> None:
        self.sub_title = "Compare"
        self.set_interval(1 / REPAINT_HZ, self._show_progress)
        self.query_one("#compare-items", VirtualTable).focus()
        choice = default_comparison(self.distill.store)
        if choice is not None:
            self.request = CompareRequest(choice.eval_id, choice.run_ids, choice.baseline_run_id)
        self._load()

    def on_screen_resume(self) -> None:
        if self.runner is None and self.comparison is not None:
            self._load()

    def palette_commands(self) -> Iterable[SystemCommand]:
        for binding in self.BINDINGS:
            if isinstance(binding, Binding) and self.check_action(binding.action, ()):
                yield SystemCommand(
                    f"Compare: {binding.description}",
                    f"key {binding.key_display or binding.key}",
                    lambda action=binding.action: self.run_action(action),
                )
        for which, title in FILTERS:
            yield SystemCommand(
                f"Compare: show {title.lower()}",
                "filter the items",
                lambda which=which: self.set_filter(which),
            )

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "cancel_grading":
            return self.runner is not None  # else esc is the app's "back"
        if action == "grade_missing":
            return (
                self.runner is None
                and self.comparison is not None
                and bool(ungraded_runs(self.comparison))
            )
        if action in ("choose", "cycle_baseline"):
            return self.runner is None
        return True

    @property
    def table(self) -> VirtualTable:
        return self.query_one("#compare-items", VirtualTable)

    # -- loading -------------------------------------------------------------------------

    @work(exclusive=True, group="compare-load", exit_on_error=False)
    async def _load(self) -> None:
        request = self.request
        if request is None:
            self.comparison = None
            self._show_all()
            return
        store = self.distill.store
        try:
            comparison = await store.in_thread(
                compare,
                store,
                request.eval_id,
                request.run_ids,
                request.baseline_run_id,
                self.distill.settings.price,
            )
        except StoreError as error:
            self.notify(str(error), title="Cannot compare", severity="error", markup=False)
            self.request = None
            self.comparison = None
            self._show_all()
            return
        self.comparison = comparison
        self.counts = {which: len(comparison.rows(which)) for which, _ in FILTERS}
        if self.versus not in [c.run_id for c in comparison.runs]:
            self.versus = None
        self.table.set_columns(self._columns(comparison))
        self._show_all()

    def _columns(self, comparison: Comparison) -> list[Column]:
        columns = [Column("#", width=4, justify="right"), Column("Request", weight=3)]
        for column in comparison.runs:
            columns.append(Column(run_title(column, comparison.baseline_run_id), weight=2))
        return columns

    def _show_all(self) -> None:
        comparison = self.comparison
        self.rows = comparison.rows(self.filter) if comparison else []
        self.table.set_rows(
            _ItemRows(comparison, self.rows) if comparison else (), keep_cursor=True
        )
        self._show_title()
        self._show_summary()
        self._show_progress()
        self._show_filters()
        self._show_diff()
        self.refresh_bindings()

    def _show_title(self) -> None:
        text = Text()
        comparison = self.comparison
        if comparison is None:
            text.append("Nothing to compare yet. ", style="bold")
            text.append(
                "Grade two or more runs of one dataset with the same eval (Evals screen, 4), "
                "or press c to choose runs and an eval."
            )
        else:
            store = self.distill.store
            dataset = store.get_run(comparison.baseline_run_id).dataset_name or "?"
            text.append(comparison.eval_name, style="bold")
            text.append(f" on {dataset}", style="bold")
            text.append(
                f" · {len(comparison.runs)} runs · {len(comparison.items):,} items"
                f" · deltas against run {comparison.baseline_run_id} {BASELINE_MARK}"
            )
            text.append("   c choose · b baseline", style="dim")
        self.query_one("#compare-title", Static).update(text)

    def _show_summary(self) -> None:
        widget = self.query_one("#compare-summary", Static)
        comparison = self.comparison
        if comparison is None:
            widget.display = False
            return
        widget.display = True
        baseline = comparison.baseline_run_id
        table = Table(
            box=box.ROUNDED,
            expand=True,
            border_style="bright_black",
            padding=(0, 1),
            caption=(
                f"pass rate per grader, ± points against run {baseline} {BASELINE_MARK}"
                " · latency: mean per completion · tokens: prompt + completion"
            ),
            caption_style="dim",
            caption_justify="right",
        )
        table.add_column("Run", no_wrap=True, style="bold")
        table.add_column("Model", no_wrap=True, max_width=32, overflow="ellipsis")
        for grader in comparison.graders:
            table.add_column(
                grader, no_wrap=True, ratio=1, justify="right", min_width=max(13, len(grader))
            )
        table.add_column("Latency", justify="right", no_wrap=True)
        table.add_column("Tokens", justify="right", no_wrap=True)
        table.add_column("Cost", justify="right", no_wrap=True)
        for column in comparison.runs:
            cells: list[Text | str] = [
                Text(
                    run_title(column, baseline),
                    style="bold cyan" if column.run_id == baseline else "bold",
                ),
                column.model,
            ]
            for grader in comparison.graders:
                cells.append(self._rate_cell(column, grader))
            cells.append(
                "–" if column.mean_latency_ms is None else f"{column.mean_latency_ms:,.0f} ms"
            )
            cells.append(f"{column.prompt_tokens + column.completion_tokens:,}")
            cells.append(Text(f"${column.cost:,.4f}") if column.priced else Text("–", "dim"))
            table.add_row(*cells)
        widget.update(table)

    @staticmethod
    def _rate_cell(column: RunColumn, grader: str) -> Text:
        if column.eval_run_id is None:
            return Text("not graded (g)", style="yellow")
        rate = column.pass_rates.get(grader)
        if rate is None:
            return Text("–", style="dim")
        text = Text(f"{rate:.1%}", style="bold")
        delta = column.deltas.get(grader)
        if delta is not None:
            points = delta * 100
            style = "green" if points > 0.05 else ("red" if points < -0.05 else "dim")
            text.append(f" {points:+.1f}", style=f"bold {style}")
        elif column.eval_status != "done":
            text.append(f" ({column.eval_status})", style="yellow")
        return text

    def _show_filters(self) -> None:
        text = Text()
        if self.comparison is not None:
            for which, title in FILTERS:
                label = f" {title} {self.counts.get(which, 0):,} "
                style = {
                    "regressions": "red",
                    "improvements": "green",
                }.get(which, "")
                if which == self.filter:
                    text.append(label, style=f"reverse bold {style}".strip())
                else:
                    text.append(label, style=style)
                text.append(" ")
            text.append("  f filter · t diff with · enter opens", style="dim")
        self.query_one("#compare-filters", Static).update(text)

    def _show_progress(self) -> None:
        widget = self.query_one("#compare-progress", Static)
        runner = self.runner
        if runner is None:
            widget.display = False
            return
        widget.display = True
        stats = runner.stats
        done = stats.done_before + stats.graded
        text = Text()
        text.append(f"Grading {self.grading_note}: ", style="bold")
        text.append(f"{done:,}/{stats.total:,} grades")
        text.append(f" · {stats.passed:,} ✓", style="green")
        text.append(f" {stats.failed:,} ✗", style="red")
        text.append(f" {stats.errored:,} !", style="yellow")
        text.append("   esc cancels", style="dim")
        widget.update(text)

    # -- the items -----------------------------------------------------------------------

    def current_row(self) -> ItemRow | None:
        cursor = self.table.cursor
        return self.rows[cursor] if self.rows and cursor < len(self.rows) else None

    def _cell_style(self, index: int, column: int) -> str | None:
        comparison = self.comparison
        if comparison is None or column < 2 or index >= len(self.rows):
            return None
        run = comparison.runs[column - 2] if column - 2 < len(comparison.runs) else None
        if run is None:
            return None
        return cell_verdict(self.rows[index].cells[run.run_id], comparison.graders)[1]

    @on(VirtualTable.Highlighted, "#compare-items")
    def _show_diff(self) -> None:
        widget = self.query_one("#compare-diff", Static)
        comparison, row = self.comparison, self.current_row()
        if comparison is None or row is None:
            widget.update(
                Text("No items match the filter.", style="dim") if comparison is not None else ""
            )
            return
        widget.update(self.diff_text(comparison, row, self.versus))

    @staticmethod
    def diff_text(comparison: Comparison, row: ItemRow, versus: int | None) -> Text:
        """The item's outputs, one run a line: the baseline's and each other run's differing
        parts marked (the baseline's as against the `versus` run; None: the first run whose
        output differs)."""
        baseline = comparison.baseline_run_id
        others = [c.run_id for c in comparison.runs if c.run_id != baseline]
        if versus is None or versus == baseline:
            base = _one_line(row.cells[baseline].output)
            versus = next(
                (r for r in others if _one_line(row.cells[r].output) != base),
                others[0] if others else None,
            )
        by_id = {c.run_id: c for c in comparison.runs}
        width = max(len(run_title(c, baseline)) for c in comparison.runs)
        text = Text()
        text.append(f"#{row.position} ", style="bold")
        text.append(_one_line(row.input))
        if row.reference:
            text.append("   reference ", style="dim")
            text.append(_one_line(row.reference), style="italic")
        base_output = _one_line(row.cells[baseline].output)
        order = [baseline, *[c.run_id for c in comparison.runs if c.run_id != baseline]]
        for run_id in order:
            cell = row.cells[run_id]
            mark, style = cell_verdict(cell, comparison.graders)
            title = run_title(by_id[run_id], baseline)
            text.append(f"\n{mark} ", style=f"bold {style}")
            text.append(f"{title:<{width}}  ", style="bold cyan" if run_id == baseline else "bold")
            if cell.completion_id is None:
                text.append("no completion of this item", style="dim")
                continue
            output = _one_line(cell.output)
            if run_id == baseline:
                other = row.cells[versus].output if versus is not None else cell.output
                pieces, _ = highlight_differences(output, _one_line(other))
                marked = DIFF_OLD
            else:
                _, pieces = highlight_differences(base_output, output)
                marked = DIFF_NEW
            if not output:
                text.append("(empty)", style="dim")
            for piece, differs in pieces:
                text.append(piece, style=marked if differs and piece.strip() else "")
            failed = [g for g, v in cell.passed.items() if v is False]
            if failed:
                text.append("   ✗ " + ", ".join(failed), style="red dim")
            if run_id == versus and len(comparison.runs) > 2:
                text.append("   ◂ diffed with the baseline", style="dim")
        return text

    @on(VirtualTable.Selected, "#compare-items")
    async def _selected(self) -> None:
        row = self.current_row()
        if self.comparison is not None and row is not None:
            await self.app.push_screen(CompareItemDialog(self.comparison, row))

    # -- actions -------------------------------------------------------------------------

    def set_filter(self, which: CompareFilter) -> None:
        self.filter = which
        self.table.cursor = 0
        self._show_all()

    def action_cycle_filter(self) -> None:
        order = [which for which, _ in FILTERS]
        self.set_filter(order[(order.index(self.filter) + 1) % len(order)])

    def action_cycle_versus(self) -> None:
        comparison = self.comparison
        if comparison is None:
            return
        others = [c.run_id for c in comparison.runs if c.run_id != comparison.baseline_run_id]
        if others:
            i = others.index(self.versus) if self.versus in others else -1
            self.versus = others[(i + 1) % len(others)]
            self.notify(f"The baseline's output is diffed with run {self.versus}'s.", timeout=2)
            self._show_diff()

    def action_cycle_baseline(self) -> None:
        request = self.request
        if request is None or self.runner is not None:
            return
        runs = request.run_ids
        i = runs.index(request.baseline_run_id)
        self.request = CompareRequest(request.eval_id, runs, runs[(i + 1) % len(runs)])
        self._load()

    def action_refresh(self) -> None:
        self._load()

    @work(group="compare-choose", exit_on_error=False)
    async def action_choose(self) -> None:
        store = self.distill.store
        evals = await store.in_thread(store.list_evals)
        runs = await store.in_thread(store.list_runs)
        if not evals:
            self.notify("No eval yet: define one on the Evals screen (4).", severity="warning")
            return
        request = self.request
        choice = await self.app.push_screen_wait(
            CompareDialog(
                evals,
                runs,
                request.eval_id if request else None,
                request.run_ids if request else [],
                request.baseline_run_id if request else None,
            )
        )
        if choice is not None:
            self.request = choice
            self.filter = "all"
            self._load()

    async def action_grade_missing(self) -> None:
        comparison = self.comparison
        if comparison is None or self.runner is not None:
            return
        todo = ungraded_runs(comparison)
        if todo:
            self._grade(comparison, todo)

    @work(exclusive=True, group="compare-grade", exit_on_error=False)
    async def _grade(self, comparison: Comparison, run_ids: list[int]) -> None:
        """Grade (or finish grading) each run with the comparison's eval, one after another."""
        store = self.distill.store
        backend = self.distill.backend
        by_id = {c.run_id: c for c in comparison.runs}
        try:
            for n, run_id in enumerate(run_ids, 1):
                column = by_id[run_id]
                if column.eval_run_id is not None and column.eval_status != "done":
                    eval_run_id = column.eval_run_id
                else:
                    eval_run_id = await store.in_thread(
                        start_eval_run, store, comparison.eval_id, run_id
                    )
                runner = EvalRunner.from_settings(
                    store, backend.client if backend else None, self.distill.settings
                )
                self.runner = runner
                self.grading_note = f"run {run_id} ({n} of {len(run_ids)})"
                self.refresh_bindings()
                finished = await runner.run(eval_run_id)
                if finished.status != "done":
                    self.notify(
                        finished.message,
                        title=f"Grading run {run_id} {finished.status}",
                        severity="warning" if finished.status == "cancelled" else "error",
                        markup=False,
                    )
                    break
        except StoreError as error:
            self.notify(str(error), title="Cannot grade", severity="error", markup=False)
        finally:
            self.runner = None
            if self.is_mounted:
                self._load()

    def action_cancel_grading(self) -> None:
        if self.runner is not None:
            self.runner.cancel()


class CompareItemDialog(Dialog[None]):
    """One item across the compared runs: each output in full with every grader's verdict."""

    CSS_PATH = "compare.tcss"

    def __init__(self, comparison: Comparison, row: ItemRow) -> None:
        super().__init__()
        self.comparison = comparison
        self.row = row

    def compose(self) -> ComposeResult:
        comparison, row = self.comparison, self.row
        with Vertical(classes="box wide", id="compare-item-box"):
            yield Label(f"Item #{row.position}", classes="title")
            with VerticalScroll(id="compare-item-body"):
                yield Label("Request", classes="section")
                yield Static(Text(row.input), classes="message")
                if row.reference:
                    yield Label("Reference", classes="section")
                    yield Static(Text(row.reference), classes="message")
                for column in comparison.runs:
                    cell = row.cells[column.run_id]
                    title = run_title(column, comparison.baseline_run_id)
                    yield Label(f"{title} · {column.model}", classes="section", markup=False)
                    yield Static(self._cell(cell), classes="message")
            yield Static("esc closes", classes="hint")

    def _cell(self, cell: ItemCell) -> Text:
        if cell.completion_id is None:
            return Text("no completion of this item", style="dim")
        text = Text(cell.output or "(empty)")
        for grader in self.comparison.graders:
            if grader not in cell.passed:
                continue
            passed = cell.passed[grader]
            mark, style = (
                ("!", "yellow") if passed is None else (("✓", "green") if passed else ("✗", "red"))
            )
            text.append(f"\n{mark} {grader} ", style=f"bold {style}")
            text.append(score_text(cell.scores.get(grader)), style=style)
        return text
