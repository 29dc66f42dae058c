"""The Compare screen's summary panel: what is compared, each run's pass rate per grader with
its difference from the baseline (in points, green when better), its mean latency, tokens and
cost, the grading in progress, and the item filters with their counts."""

from __future__ import annotations

from rich import box
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from screens.compare.marks import BASELINE_MARK, run_title
from tui.engine.evals import CompareFilter, Comparison, EvalRunner, RunColumn

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
            cells.append(rate_cell(column, grader))
        cells.append("–" if column.mean_latency_ms is None else f"{column.mean_latency_ms:,.0f} ms")
        cells.append(f"{column.prompt_tokens + column.completion_tokens:,}")
        cells.append(Text(f"${column.cost:,.4f}") if column.priced else Text("–", "dim"))
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
        yield Static("", id="compare-progress")
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
        widget = self.query_one("#compare-progress", Static)
        widget.display = runner is not None
        if runner is None:
            return
        stats = runner.stats
        done = stats.done_before + stats.graded
        text = Text()
        text.append(f"Grading {note}: ", style="bold")
        text.append(f"{done:,}/{stats.total:,} grades")
        text.append(f" · {stats.passed:,} ✓", style="green")
        text.append(f" {stats.failed:,} ✗", style="red")
        text.append(f" {stats.errored:,} !", style="yellow")
        text.append("   esc cancels", style="dim")
        widget.update(text)
