"""The Compare screen's items panel: the items with the runs' outputs side by side (each cell
coloured by its verdict), and under the table the highlighted item's outputs, one run a line,
with their differing parts marked."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message

from screens.compare.marks import DIFF_NEW, DIFF_OLD, cell_verdict, one_line, run_title
from tui.engine.evals import Comparison, ItemRow, highlight_differences
from tui.widgets.steady_static import SteadyStatic
from tui.widgets.virtual_table import Column, Row, RowView, VirtualTable

FIXED_COLUMNS = 2  # "#" and "Request", then one column per run


def item_cells(comparison: Comparison, row: ItemRow) -> Row:
    cells = [str(row.position), row.input]
    for column in comparison.runs:
        cell = row.cells[column.run_id]
        mark, _ = cell_verdict(cell, comparison.graders)
        output = "missing" if cell.completion_id is None else cell.output
        cells.append(f"{mark} {output}")
    return tuple(cells)


def diff_text(comparison: Comparison, row: ItemRow, versus: int | None) -> Text:
    """The item's outputs, one run a line: the baseline's and each other run's differing
    parts marked (the baseline's as against the `versus` run; None: the first run whose
    output differs)."""
    baseline = comparison.baseline_run_id
    others = [c.run_id for c in comparison.runs if c.run_id != baseline]
    if versus is None or versus == baseline:
        base = one_line(row.cells[baseline].output)
        versus = next(
            (r for r in others if one_line(row.cells[r].output) != base),
            others[0] if others else None,
        )
    by_id = {c.run_id: c for c in comparison.runs}
    width = max(len(run_title(c, baseline)) for c in comparison.runs)
    text = Text()
    text.append(f"#{row.position} ", style="bold")
    text.append(one_line(row.input))
    if row.reference:
        text.append("   reference ", style="dim")
        text.append(one_line(row.reference), style="italic")
    base_output = one_line(row.cells[baseline].output)
    for run_id in [baseline, *others]:
        cell = row.cells[run_id]
        mark, style = cell_verdict(cell, comparison.graders)
        title = run_title(by_id[run_id], baseline)
        text.append(f"\n{mark} ", style=f"bold {style}")
        text.append(f"{title:<{width}}  ", style="bold cyan" if run_id == baseline else "bold")
        if cell.completion_id is None:
            text.append("no completion of this item", style="dim")
            continue
        output = one_line(cell.output)
        if run_id == baseline:
            other = row.cells[versus].output if versus is not None else cell.output
            pieces, _ = highlight_differences(output, one_line(other))
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


class CompareItems(Vertical):
    """The compared items; enter opens the highlighted one (`Opened`)."""

    @dataclass
    class Opened(Message):
        comparison: Comparison
        row: ItemRow

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.comparison: Comparison | None = None
        self.rows: list[ItemRow] = []
        # The run whose output the baseline's is diffed with (None: the first that differs).
        self.versus: int | None = None

    def compose(self) -> ComposeResult:
        yield VirtualTable(
            [Column("#", width=4, justify="right"), Column("Request", weight=2)],
            cell_style=self.cell_style,
            id="compare-items",
        )
        # Redrawn at every cursor move: laid out only when the diff needs another height.
        yield SteadyStatic("", id="compare-diff")

    @property
    def table(self) -> VirtualTable:
        return self.query_one("#compare-items", VirtualTable)

    def set_comparison(self, comparison: Comparison | None) -> None:
        """A comparison newly loaded: a column per run (the rows follow with `show`)."""
        self.comparison = comparison
        if comparison is None:
            return
        columns = [Column("#", width=4, justify="right"), Column("Request", weight=3)]
        for column in comparison.runs:
            columns.append(Column(run_title(column, comparison.baseline_run_id), weight=2))
        self.table.set_columns(columns)
        if self.versus not in [c.run_id for c in comparison.runs]:
            self.versus = None

    def show(self, rows: list[ItemRow], *, from_top: bool = False) -> None:
        comparison = self.comparison
        self.rows = rows if comparison is not None else []
        if from_top:
            self.table.cursor = 0
        self.table.set_rows(
            RowView(self.rows, lambda row: item_cells(comparison, row))
            if comparison is not None
            else (),
            keep_cursor=True,
        )
        self.show_diff()

    def set_versus(self, run_id: int | None) -> None:
        self.versus = run_id
        self.show_diff()

    def current_row(self) -> ItemRow | None:
        cursor = self.table.cursor
        return self.rows[cursor] if self.rows and cursor < len(self.rows) else None

    def cell_style(self, index: int, column: int) -> str | None:
        """A run's cell in the colour of its verdict."""
        comparison = self.comparison
        run = column - FIXED_COLUMNS
        if comparison is None or run < 0 or run >= len(comparison.runs) or index >= len(self.rows):
            return None
        return cell_verdict(
            self.rows[index].cells[comparison.runs[run].run_id], comparison.graders
        )[1]

    @on(VirtualTable.Highlighted, "#compare-items")
    def show_diff(self) -> None:
        widget = self.query_one("#compare-diff", SteadyStatic)
        comparison, row = self.comparison, self.current_row()
        if comparison is None or row is None:
            widget.show(
                Text("No items match the filter.", style="dim") if comparison is not None else ""
            )
            return
        widget.show(diff_text(comparison, row, self.versus))

    @on(VirtualTable.Selected, "#compare-items")
    def _selected(self, event: VirtualTable.Selected) -> None:
        event.stop()
        row = self.current_row()
        if self.comparison is not None and row is not None:
            self.post_message(self.Opened(self.comparison, row))
