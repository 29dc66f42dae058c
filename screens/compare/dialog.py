"""One compared item in full, across the runs: each output with every grader's verdict."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Label, Static

from screens.compare.marks import run_title
from screens.dialogs import Dialog
from screens.grades import score_text
from tui.engine.evals import Comparison, ItemCell, ItemRow


class CompareItemDialog(Dialog[None]):
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
