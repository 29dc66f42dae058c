"""The Compare screen's summary panel: what is compared; each run as a row of the recipe's
report (teacher, baseline student, pool-only student, fine-tuned student) with its pass rate
per grader and its difference from the baseline (in points, green when better), its mean
latency, tokens per request and cost per 1,000 requests; the business case in one line (the
share of the teacher's lead the fine-tuned student recovered); the grading in progress; and
the item filters with their counts."""

from __future__ import annotations

from rich import box
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from screens.compare.marks import BASELINE_MARK, role_label
from tui.engine.evals import CompareFilter, Comparison, EvalRunner, RunColumn
from tui.engine.report import business_case, cost_per_1k, money, tokens_per_request
from tui.widgets.progress_line import Figures, ProgressLine

FILTERS: tuple[tuple[CompareFilter, str], ...] = (
    ("all", "All"),
    ("differ", "Differ"),
    ("regressions", "Regressions"),
    ("improvements", "Improvements"),
)


def summary_table(comparison: Comparison) -> Table:
    baseline = comparison.baseline_run_id
    table = Table(
        box=box.ROUNDED,
        expand=True,
        border_style="bright_black",
        padding=(0, 1),
        caption=(
            f"pass rate per grader, ± points against run {baseline} {BASELINE_MARK}"
            " · latency: mean per request · tokens: prompt + completion"
        ),
        caption_style="dim",
        caption_justify="right",
    )
    table.add_column("Run", no_wrap=True)
    table.add_column("Model", no_wrap=True, max_width=20, overflow="ellipsis")
    for grader in comparison.graders:
        table.add_column(
            grader, no_wrap=True, ratio=1, justify="right", min_width=max(13, len(grader))
        )
    table.add_column("Latency", justify="right", no_wrap=True)
    table.add_column("Tok/req", justify="right", no_wrap=True)
    table.add_column("$/1k req", justify="right", no_wrap=True)
    for column in comparison.runs:
        title = Text(f"run {column.run_id} ", style="dim")
        title.append(role_label(column), style="bold")
        if column.run_id == baseline:
            title.append(f" {BASELINE_MARK}", style="bold")
            title.stylize("cyan")
        cells: list[Text | str] = [title, column.model]
        for grader in comparison.graders:
            cells.append(rate_cell(column, grader))
        cells.append("–" if column.mean_latency_ms is None else f"{column.mean_latency_ms:,.0f} ms")
        tokens = tokens_per_request(column)
        cells.append("–" if tokens is None else f"{tokens:,.0f}")
        cost = cost_per_1k(column)
        cells.append(Text("–", "dim") if cost is None else Text(money(cost)))
        table.add_row(*cells)
    return table


def rate_cell(column: RunColumn, grader: str) -> Text:
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


class CompareSummary(Vertical):
    """Drawn by the screen: `show` when the comparison or the filter changes, `show_grading`
    a few times a second while runs are being graded."""

    def compose(self) -> ComposeResult:
        yield Static("", id="compare-title")
        yield Static("", id="compare-summary")
        yield Static("", id="compare-case")
        yield ProgressLine(id="compare-progress")
        yield Static("", id="compare-filters")

    def show(
        self,
        comparison: Comparison | None,
        *,
        dataset: str,
        filter: CompareFilter,
        counts: dict[str, int],
    ) -> None:
        self._show_title(comparison, dataset)
        widget = self.query_one("#compare-summary", Static)
        widget.display = comparison is not None
        if comparison is not None:
            widget.update(summary_table(comparison))
        case = business_case(comparison) if comparison is not None else ""
        line = self.query_one("#compare-case", Static)
        line.display = bool(case)
        headline, _, chance = case.partition("\n")
        text = Text(headline, style="bold")
        text.highlight_regex(r"\d+% of the teacher's lead recovered", "green")
        if chance:
            text.append("\n" + chance)
        line.update(text)
        self._show_filters(comparison, filter, counts)

    def _show_title(self, comparison: Comparison | None, dataset: str) -> None:
        text = Text()
        if comparison is None:
            text.append("Nothing to compare yet. ", style="bold")
            text.append(
                "Grade two or more runs of one dataset with the same eval (Evals screen, 4), "
                "or press c to choose runs and an eval."
            )
        else:
            text.append(comparison.eval_name, style="bold")
            text.append(f" on {dataset}", style="bold")
            text.append(
                f" · {len(comparison.runs)} runs · {len(comparison.items):,} items"
                f" · deltas against run {comparison.baseline_run_id} {BASELINE_MARK}"
            )
            text.append("   c choose · b baseline", style="dim")
        self.query_one("#compare-title", Static).update(text)

    def _show_filters(
        self, comparison: Comparison | None, current: CompareFilter, counts: dict[str, int]
    ) -> None:
        text = Text()
        if comparison is not None:
            for which, title in FILTERS:
                label = f" {title} {counts.get(which, 0):,} "
                style = {"regressions": "red", "improvements": "green"}.get(which, "")
                if which == current:
                    text.append(label, style=f"reverse bold {style}".strip())
                else:
                    text.append(label, style=style)
                text.append(" ")
            text.append("  f filter · t diff with · enter opens", style="dim")
        self.query_one("#compare-filters", Static).update(text)

    def show_grading(self, runner: EvalRunner | None, note: str) -> None:
        """Follow `runner`'s grading on the progress line (None: hide the line)."""
        line = self.query_one("#compare-progress", ProgressLine)
        line.display = runner is not None
        line.follow(None if runner is None else lambda: grading_figures(runner, note))


def grading_figures(runner: EvalRunner, note: str) -> Figures:
    stats = runner.stats
    return Figures.of(
        stats,
        label=f"Grading {note}",
        unit="grades",
        counts=(
            Text(f"{stats.passed:,} ✓", style="green"),
            Text(f"{stats.failed:,} ✗", style="red"),
            Text(f"{stats.errored:,} !", style="yellow"),
        ),
        hint="esc cancels",
    )
