"""The Compare screen driven with real keys over a real workspace: the student's baseline and
the teacher graded, the fine-tuned student not yet (g grades it, its progress on the shared
progress line, esc cancels); the runs side by side as the recipe's report shows them, pass
rates with deltas against the baseline, cost per 1,000 requests and the share of the
teacher's lead recovered, the filters, the differing parts of two outputs, another baseline,
the choice of runs, an item opened."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console
from rich.text import Text
from textual.widgets import SelectionList, Static

from screens.compare import DIFF_NEW, DIFF_OLD, CompareDialog, CompareItemDialog, CompareScreen
from tests.tui.conftest import Db, Driver, drive, make_app
from tests.tui.eval_data import (
    GIT_GRADERS,
    OUTPUTS,
    build,
    changed_items,
    gated_grader,
    lead_recovered,
    pass_rate,
    versus,
)
from tui.engine.evals import EvalRunner, create_eval, start_eval_run
from tui.engine.store import Store
from tui.widgets.progress_line import ProgressLine


def compare_screen(driver: Driver) -> CompareScreen:
    screen = driver.app.screen
    assert isinstance(screen, CompareScreen), screen
    return screen


def shown(widget: Static, width: int = 120) -> str:
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(widget.content)
    return console.export_text()


def marked(text: Text, style: str) -> list[str]:
    """The parts of `text` drawn in `style`."""
    return [text.plain[s.start : s.end] for s in text.spans if str(s.style) == style]


async def grade(store: Store, eval_id: int, *run_ids: int) -> None:
    for run_id in run_ids:
        await EvalRunner(store).run(start_eval_run(store, eval_id, run_id))


async def test_deltas_grading_filters_and_highlighting(store: Store, db: Db) -> None:
    work = build(store)
    student, teacher, tuned = (work.runs[r] for r in ("student", "teacher", "fine-tuned"))
    eval_id = create_eval(store, "git commands", GIT_GRADERS)
    await grade(store, eval_id, student, teacher)

    async with drive(make_app(store)) as driver:
        await driver.press("6")
        await driver.settle()
        screen = compare_screen(driver)
        comparison = screen.comparison
        assert comparison is not None
        # Opens on the eval just graded, its two runs and the newest ungraded run of the
        # dataset, side by side as the recipe's report shows them: teacher first.
        assert [c.run_id for c in comparison.runs] == [teacher, student, tuned]
        assert comparison.baseline_run_id == student
        by_run = {c.run_id: c for c in comparison.runs}
        assert by_run[student].pass_rates == {
            "command match": pass_rate("student", "command match"),
            "exact match": pass_rate("student", "exact match"),
        }
        assert by_run[teacher].deltas["command match"] == pytest.approx(
            pass_rate("teacher", "command match") - pass_rate("student", "command match")
        )
        assert by_run[tuned].eval_run_id is None
        summary = shown(screen.query_one("#compare-summary", Static))
        assert versus("teacher", "student", "command match") in summary  # "100.0% +70.0"
        assert versus("teacher", "student", "exact match") in summary
        assert "not graded (g)" in summary
        assert "455 ms" in summary and "1,295 ms" in summary  # mean latency per run
        assert (
            f"run {teacher} teacher" in summary and f"run {student} baseline student ★" in summary
        )
        assert f"run {tuned} fine-tuned student" in summary and "$0.18" in summary  # per 1k
        case = screen.query_one("#compare-case", Static)
        assert not case.display  # no business case before the fine-tuned student is graded

        palette = [command.title for command in screen.palette_commands()]
        assert "Compare: Grade missing" in palette and "Compare: show regressions" in palette

        # g: one key grades the run that has no eval run of this eval.
        await driver.press("g")
        await driver.settle()
        comparison = screen.comparison
        assert comparison is not None
        tuned_column = next(c for c in comparison.runs if c.run_id == tuned)
        assert tuned_column.eval_status == "done"
        assert tuned_column.pass_rates["command match"] == pass_rate("fine-tuned", "command match")
        assert tuned_column.deltas["command match"] == pytest.approx(
            pass_rate("fine-tuned", "command match") - pass_rate("student", "command match")
        )
        assert versus("fine-tuned", "student", "command match") in shown(
            screen.query_one("#compare-summary", Static)
        )
        recovered = f"{lead_recovered():.0%} of its lead recovered"
        assert case.display and recovered in " ".join(shown(case).split())
        assert db.rows("SELECT COUNT(*) FROM eval_runs WHERE run_id = ?", (tuned,)) == [(1,)]

        # f: all → where they differ → regressions → improvements.
        assert screen.table.row_count == 10
        await driver.press("f")
        differ = [
            i
            for i, outputs in enumerate(zip(*OUTPUTS.values(), strict=True))
            if len(set(outputs)) > 1
        ]
        assert screen.filter == "differ" and screen.table.row_count == len(differ) == 9
        await driver.press("f")
        regressions, improvements = changed_items("student", False), changed_items("student", True)
        assert regressions == [8]  # the fine-tuned -D against the baseline's -d
        assert screen.filter == "regressions" and screen.table.row_count == len(regressions)
        row = screen.items_panel.rows[0]
        assert row.position == 8 and row.regressions == {tuned: ["command match", "exact match"]}
        filters = shown(screen.query_one("#compare-filters", Static))
        assert f"Regressions {len(regressions)}" in filters
        assert f"Improvements {len(improvements)}" in filters
        # The regression's item: the fine-tuned -D against the baseline's -d.
        diff = screen.query_one("#compare-diff", Static).content
        assert isinstance(diff, Text)
        assert marked(diff, DIFF_NEW) == ["D"]
        assert marked(diff, DIFF_OLD) == ["d"]
        assert "git branch -D old-ui" in diff.plain
        await driver.press("f")
        assert screen.filter == "improvements" and screen.table.row_count == len(improvements)
        # Item 2: the baseline's "branch" against the others' "checkout -b".
        diff = screen.query_one("#compare-diff", Static).content
        assert isinstance(diff, Text) and diff.plain.startswith("#2 ")
        assert marked(diff, DIFF_OLD) == ["branch"]
        assert marked(diff, DIFF_NEW) == ["checkout -b", "checkout -b"]
        # Cells are coloured by verdict: the baseline failed item 2, the others passed.
        cell_style = screen.items_panel.cell_style
        assert cell_style(0, 2) == "green" and cell_style(0, 3) == "red"  # teacher, baseline

        # enter: the item across runs.
        await driver.press("enter")
        assert isinstance(driver.app.screen, CompareItemDialog)
        await driver.press("escape")
        assert driver.app.screen is screen

        # b moves the baseline along the columns: the fine-tuned student, then (wrapping) the
        # teacher, against whom the student is 70 points behind.
        await driver.press("b")
        await driver.settle()
        assert screen.comparison is not None and screen.comparison.baseline_run_id == tuned
        await driver.press("b")
        await driver.settle()
        comparison = screen.comparison
        assert comparison is not None and comparison.baseline_run_id == teacher
        by_run = {c.run_id: c for c in comparison.runs}
        assert by_run[student].deltas["command match"] == pytest.approx(
            pass_rate("student", "command match") - pass_rate("teacher", "command match")
        )
        assert versus("student", "teacher", "command match") in shown(  # "30.0% -70.0"
            screen.query_one("#compare-summary", Static)
        )
        assert recovered in " ".join(shown(case).split())  # still from the untuned

        # c: compare two runs only (space unticks the highlighted one: the fine-tuned run).
        await driver.press("c")
        dialog = driver.app.screen
        assert isinstance(dialog, CompareDialog)
        runs = dialog.query_one("#c-runs", SelectionList)
        assert sorted(runs.selected) == [student, teacher, tuned]
        runs.highlighted = 0
        await driver.press("space")
        assert sorted(runs.selected) == [student, teacher]
        await driver.click_ok()
        await driver.settle()
        comparison = screen.comparison
        assert comparison is not None
        assert [c.run_id for c in comparison.runs] == [teacher, student]
        assert comparison.baseline_run_id == teacher
        assert not case.display  # no fine-tuned student among them
        assert not driver.errors()


async def test_nothing_to_compare_says_what_to_do(store: Store) -> None:
    build(store, roles=("student",))
    async with drive(make_app(store)) as driver:
        await driver.press("6")
        await driver.settle()
        screen = compare_screen(driver)
        assert screen.comparison is None
        assert "Nothing to compare yet" in shown(screen.query_one("#compare-title", Static))
        await driver.press("c")  # no eval: says so instead of an empty dialog
        await driver.settle()
        assert driver.app.screen is screen
        assert any("No eval yet" in message for _, _, message in driver.notifications())


async def test_grading_shows_on_the_progress_line_and_escape_cancels(
    store: Store, db: Db, tmp_path: Path
) -> None:
    work = build(store, roles=("student", "teacher"))
    student, teacher = work.runs["student"], work.runs["teacher"]
    gate = tmp_path / "gate"
    eval_id = create_eval(store, "gated", [gated_grader(gate, is_open=True)])
    await grade(store, eval_id, student)
    (gate / "open").unlink()  # the teacher's grades wait: esc comes while they run
    async with drive(make_app(store)) as driver:
        await driver.press("6")
        await driver.settle()
        screen = compare_screen(driver)
        progress = screen.query_one("#compare-progress", ProgressLine)
        assert not progress.display

        await driver.press("g")  # the teacher has no grades of this eval
        assert screen.runner is not None
        assert progress.display and progress.following
        assert progress.shown.startswith(f"Grading run {teacher} (1 of 1) ")
        # The total comes with the runner's first figures, from its own thread.
        await driver.wait_until(lambda: "/10 grades" in progress.shown)
        assert "esc cancels" in progress.shown

        await driver.press("escape")
        await driver.settle()
        assert driver.app.screen is screen  # esc cancelled the grading; it did not go back
        assert screen.runner is None
        assert not progress.display and not progress.following
        assert db.rows("SELECT status FROM eval_runs WHERE run_id = ?", (teacher,)) == [
            ("cancelled",)
        ]
        assert any("cancelled" in title for _, title, _ in driver.notifications())
