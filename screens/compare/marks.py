"""How the Compare screen writes a run and an item's verdict, shared by its panels and dialog."""

from __future__ import annotations

from collections.abc import Sequence

from tui.engine.evals import ItemCell, RunColumn
from tui.engine.report import row_name

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


def role_label(column: RunColumn) -> str:
    """What the run is in the recipe's report: "teacher", "baseline student", "pool-only
    student", "fine-tuned student" (or its role as it is)."""
    return row_name(column.role, column.label, column.model)


def run_title(column: RunColumn, baseline: int) -> str:
    mark = f" {BASELINE_MARK}" if column.run_id == baseline else ""
    label = role_label(column)
    return f"run {column.run_id}{' ' + label if label else ''}{mark}"


def one_line(text: str) -> str:
    return " ".join(text.split())
