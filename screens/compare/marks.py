"""How the Compare screen writes a run and an item's verdict, shared by its panels and dialog."""

from __future__ import annotations

from collections.abc import Sequence

from tui.engine.evals import ItemCell, RunColumn

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


def one_line(text: str) -> str:
    return " ".join(text.split())
