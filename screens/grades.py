"""How a grade is written on screen, the same on the Evals and the Compare screens."""

from __future__ import annotations

from tui.engine.store import GradeRow


def verdict(grade: GradeRow | None) -> tuple[str, str]:
    """A grade as (mark, style): ✓ green, ✗ red, ! yellow (errored), · dim (not graded)."""
    if grade is None:
        return "·", "dim"
    if grade.passed is None:
        return "!", "yellow"
    return ("✓", "green") if grade.passed else ("✗", "red")


def score_text(score: float | None) -> str:
    if score is None:
        return "–"
    return f"{score:.2f}" if 0 <= score <= 1 else f"{score:g}"
