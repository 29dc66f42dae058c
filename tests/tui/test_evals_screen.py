"""The Evals screen driven with real keys over a real workspace (a git dataset and runs
written through the store; string_check and command_match need no backend): add ready-made
graders, grade a run and see the table fill, filter by a failing grader, sort, open an item,
export; the grader form and the JSON view with their errors; the Completions screen's
selection handed over; cancel with esc and resume."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from rich.console import Console
from textual.geometry import Region
from textual.widget import Widget
from textual.widgets import Input, Select, Static, TextArea

from screens.dialogs import ExportDialog
from screens.evals import EvalsScreen
from screens.evals.dialogs import GradersJsonDialog, PresetDialog, ResultItemDialog
from screens.evals.grader_form import GraderDialog
from screens.grades import score_text
from tests.tui.conftest import Db, Driver, drive, make_app
from tests.tui.eval_data import GIT_GRADERS, build, gated_grader, passes, percent
from tui.engine.evals import create_eval
from tui.engine.store import Store
from tui.widgets.progress_line import ProgressLine


def evals_screen(driver: Driver) -> EvalsScreen:
    screen = driver.app.screen
    assert isinstance(screen, EvalsScreen), screen
    return screen


async def open_evals(driver: Driver) -> EvalsScreen:
    """Key 4, and the Evals screen once it is mounted (its first showing imports the graders,
    which can take a while on a busy machine)."""
    await driver.press("4")
    await driver.wait_until(lambda: driver.app.screen.sub_title == "Evals")
    return evals_screen(driver)


def shown(widget: Static, width: int = 120) -> str:
    """What a Static shows as plain text, whatever it holds (markup, Text or a Rich table)."""
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(widget.content)
    return console.export_text()


def text_of(screen: EvalsScreen, selector: str) -> str:
    return shown(screen.query_one(selector, Static))


def on_screen(widget: Widget) -> list[str]:
    """The lines a widget draws in the space the layout gave it: what the user sees."""
    width, height = widget.outer_size
    return [strip.text.rstrip() for strip in widget.render_lines(Region(0, 0, width, height))]


def graders_in_db(db: Db) -> list[dict[str, object]]:
    rows = db.rows("SELECT graders FROM evals ORDER BY id")
    assert rows, "no eval in the workspace"
    graders: list[dict[str, object]] = json.loads(rows[-1][0])
    return graders


async def test_preset_grade_filter_open_and_export(store: Store, db: Db) -> None:
    work = build(store, roles=("student",))
    async with drive(make_app(store)) as driver:
        screen = await open_evals(driver)
        assert "No eval yet" in text_of(screen, "#eval-progress")
        assert screen.target is not None and screen.target.run_id == work.runs["student"]

        # p: the git task's ready-made graders, into a new eval.
        await driver.press("p")
        await driver.screen_of(PresetDialog)
        await driver.press("enter")
        await driver.settle()
        assert [g["name"] for g in graders_in_db(db)] == ["command match", "exact match"]
        assert "Not graded yet" in text_of(screen, "#eval-progress")

        # g: grade the run; the table fills and the summary counts.
        await driver.press("g")
        await driver.settle()
        assert not driver.errors()
        live = screen.live
        assert live is not None and live.info.status == "done"
        assert screen.results.table.row_count == 10
        match = live.tally.summary("command match")
        exact = live.tally.summary("exact match")
        n_match, n_exact = passes("student", "command match"), passes("student", "exact match")
        assert (match.passed, match.failed, match.errored) == (n_match, 10 - n_match, 0)
        assert (exact.passed, exact.failed, exact.errored) == (n_exact, 10 - n_exact, 0)
        summary = text_of(screen, "#grader-summary")
        assert percent("student", "command match") in summary  # "30.0%"
        assert percent("student", "exact match") in summary
        stored = db.rows("SELECT COUNT(*), SUM(passed) FROM grades")
        assert stored == [(20, n_match + n_exact)]
        # Item 1 ("git status") passes both; item 4 passes command match only.
        first = screen.results.table._rows[0]
        assert first[0] == "1" and first[2] == "git status" and first[4] == "✓ 1.00"
        cell_style = screen.results._cell_style
        assert cell_style(0, 4) == "green"
        assert cell_style(3, 4) == "green" and cell_style(3, 5) == "red"

        palette = [command.title for command in screen.palette_commands()]
        assert "Evals: Grade" in palette and "Evals: Export" in palette
        assert "Evals: show failing command match" in palette

        # f: failing any grader (8), then failing "command match" (7).
        await driver.press("f")
        assert screen.results.table.row_count == 8
        assert "failing any grader" in text_of(screen, "#result-view-line")
        await driver.press("f")
        assert screen.results.table.row_count == 7
        assert "failing command match" in text_of(screen, "#result-view-line")
        assert all(row[4].startswith("✗") for row in screen.results.table._rows)

        # s: by command match score, lowest first.
        await driver.press("s")
        scores = [float(row[4].split()[1]) for row in screen.results.table._rows]
        assert scores == sorted(scores) and scores[0] == 0.0

        # enter: the item with each grader's explanation.
        await driver.press("home", "enter")
        dialog = await driver.screen_of(ResultItemDialog)
        grades = shown(dialog.query_one("#grades", Static))
        assert "command match" in grades and "subcommand differs" in grades
        assert "exact match" in grades and "not equal" in grades
        await driver.press("escape")
        assert driver.app.screen is screen

        # x: export as CSV into the workspace's exports dir, then as JSONL.
        await driver.press("x")
        export = await driver.screen_of(ExportDialog)
        path = Path(export.query_one("#path", Input).value)
        assert path.parent == store.directory / "exports" and path.suffix == ".csv"
        await driver.press("enter")
        await driver.settle()
        with path.open(encoding="utf-8") as fh:
            table = list(csv.DictReader(fh))
        assert len(table) == 10
        assert table[0]["command match result"] == "pass"
        assert table[1]["exact match result"] == "fail"

        await driver.press("x")
        export = await driver.screen_of(ExportDialog)
        export.query_one("#format", Select).value = "jsonl"
        await driver.pilot.pause()
        jsonl = Path(export.query_one("#path", Input).value)
        assert jsonl.suffix == ".jsonl"
        await driver.click_ok()
        await driver.settle()
        records = [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines()]
        assert len(records) == 10
        assert records[1]["grades"]["command match"]["result"] == "fail"
        assert records[1]["grades"]["command match"]["explanation"]
        assert not driver.errors()


async def test_grader_form_and_json_view_name_the_field_at_fault(store: Store, db: Db) -> None:
    build(store, roles=("student",))
    async with drive(make_app(store)) as driver:
        screen = await open_evals(driver)

        # a: the form, set to string_check with keys; a bad template is refused by field.
        await driver.press("a")
        form = await driver.screen_of(GraderDialog)
        assert not form.query_one("#f-operation").display  # command_match: no operation
        await driver.press("enter", *["up"] * 5, "enter")  # the type list: string_check
        assert form.kind == "string_check"
        assert form.query_one("#f-operation").display
        assert not form.query_one("#f-threshold").display
        await driver.press("tab")
        await driver.type("exact")
        form.query_one("#g-reference", Input).value = "{{item.answer}}"
        await driver.press("ctrl+s")
        assert driver.app.screen is form
        error = shown(form.query_one("#dialog-error", Static), 300)
        assert "grader (exact): reference: unknown template variable {{item.answer}}" in error
        form.query_one("#g-reference", Input).value = "{{item.reference}}"
        await driver.press("ctrl+s")
        await driver.settle()
        assert driver.app.screen is screen
        graders = graders_in_db(db)
        assert graders[0]["type"] == "string_check" and graders[0]["name"] == "exact"
        assert graders[0]["operation"] == "eq"

        # j: the JSON view refuses a bad operation, naming grader and field...
        await driver.press("j")
        view = await driver.screen_of(GradersJsonDialog)
        area = view.query_one("#json", TextArea)
        area.text = json.dumps([{"type": "string_check", "name": "bad", "operation": "equals"}])
        await driver.press("ctrl+s")
        assert driver.app.screen is view
        error = shown(view.query_one("#dialog-error", Static), 300)
        assert error.startswith("grader 1 (bad): operation:")
        # ...and takes OpenAI's testing_criteria as they are (ids and all).
        area.text = json.dumps(
            {
                "name": "git eval",
                "testing_criteria": [
                    {**GIT_GRADERS[0], "id": "cm-1"},
                    {**GIT_GRADERS[1], "id": "ex-1"},
                ],
            }
        )
        await driver.press("ctrl+s")
        await driver.settle()
        assert driver.app.screen is screen
        assert [g["name"] for g in graders_in_db(db)] == ["command match", "exact match"]
        assert "command match" in str(screen.query_one("#grader-list").render_line(0).text)
        assert not driver.errors()


async def test_evaluate_from_completions_lands_here_with_the_selection(
    store: Store, db: Db
) -> None:
    work = build(store, roles=("student", "teacher"))
    create_eval(store, "git commands", GIT_GRADERS)
    async with drive(make_app(store)) as driver:
        await driver.press("3", "slash")
        await driver.type("role:student branch")
        await driver.press("enter", "e")
        await driver.settle()
        screen = evals_screen(driver)
        target = screen.target
        assert target is not None and target.is_selection
        assert target.run_id == work.runs["student"]
        # "branch" is in the request or the output of items 2, 5 and 8.
        assert target.completion_ids is not None and len(target.completion_ids) == 3
        assert "selection" in text_of(screen, "#eval-target")

        await driver.press("g")
        await driver.settle()
        assert screen.results.table.row_count == 3
        assert [row[0] for row in screen.results.table._rows] == ["2", "5", "8"]
        ids = db.rows("SELECT summary FROM eval_runs")
        assert json.loads(ids[-1][0])["completion_ids"] == sorted(target.completion_ids)
        assert not driver.errors()


async def test_escape_cancels_grading_and_r_resumes(store: Store, db: Db, tmp_path: Path) -> None:
    build(store, roles=("student",))
    # One grade is let through; the other nine wait until the gate opens.
    gate = tmp_path / "gate"
    create_eval(store, "gated", [gated_grader(gate, tickets=1)])
    async with drive(make_app(store)) as driver:
        screen = await open_evals(driver)
        await driver.press("g")
        assert screen.runner is not None
        progress = screen.query_one("#eval-progress", ProgressLine)
        assert progress.following
        # The total comes with the runner's first figures, from its own thread.
        await driver.wait_until(lambda: "/10 grades" in progress.shown)
        assert "Grading" in progress.shown and "esc cancels" in progress.shown
        # Cancel once a grade is decided (the others held).
        await driver.wait_until(lambda: db.rows("SELECT COUNT(*) FROM grades")[0][0] >= 1)
        await driver.press("escape")
        await driver.settle()
        assert driver.app.screen is screen  # esc cancelled; it did not go back
        live = screen.live
        assert live is not None and live.info.status == "cancelled"
        before = db.rows("SELECT rowid, eval_run_id, completion_id FROM grades ORDER BY rowid")
        assert len(before) == 1
        assert "R resumes" in text_of(screen, "#eval-progress")
        assert not progress.following

        (gate / "open").touch()
        await driver.press("R")
        await driver.settle()
        # R finished the same eval run: no second run, the grades decided before the cancel
        # kept as they were (a grade decided again would be a new row), the rest added.
        assert screen.live is not None and screen.live.info.id == live.info.id
        assert screen.live.info.status == "done"
        assert db.rows("SELECT id FROM eval_runs") == [(live.info.id,)]
        after = db.rows("SELECT rowid, eval_run_id, completion_id FROM grades ORDER BY rowid")
        assert after[: len(before)] == before
        assert db.rows("SELECT COUNT(*), SUM(passed) FROM grades") == [(10, 10)]
        finished = [m for _, t, m in driver.notifications() if t.endswith("finished")]
        assert finished[-1].endswith(f"({len(before)} decided before this start)"), finished
        assert screen.results.table.row_count == 10
        assert not driver.errors()


@pytest.mark.parametrize("size", [(120, 36), (160, 50)])
async def test_grader_summary_shows_a_row_per_grader_after_a_run(
    store: Store, size: tuple[int, int]
) -> None:
    """The summary once showed its header and no rows: the Completions screen's stylesheet
    (read app-wide once that screen had been open) capped every `#summary` at two lines."""
    build(store, roles=("student",))
    async with drive(make_app(store), size=size) as driver:
        await driver.press("3")  # the user looked at the completions first
        await open_evals(driver)
        await driver.press("p", "enter")  # the "command match + exact" preset
        await driver.settle()
        await driver.press("g")
        await driver.settle()
        screen = evals_screen(driver)
        live = screen.live
        assert live is not None and live.info.status == "done"

        lines = on_screen(screen.query_one("#grader-summary", Static))
        header = next(i for i, line in enumerate(lines) if "Pass rate" in line)
        assert all(word in lines[header] for word in ("Mean", "Passed", "Failed", "Errored"))
        rows = [line.split() for line in lines[header + 1 :] if "match" in line]
        assert len(rows) == 2, lines
        # grader, bar, pass rate, mean, passed, failed, errored
        match, exact = live.tally.summary("command match"), live.tally.summary("exact match")
        assert rows[0][:2] == ["command", "match"]
        n_match, n_exact = passes("student", "command match"), passes("student", "exact match")
        assert rows[0][3:] == [
            percent("student", "command match"),
            score_text(match.mean_score),
            *(str(n) for n in (n_match, 10 - n_match, 0)),
        ]
        assert rows[1][:2] == ["exact", "match"]
        assert rows[1][3:] == [
            percent("student", "exact match"),
            score_text(exact.mean_score),
            *(str(n) for n in (n_exact, 10 - n_exact, 0)),
        ]
        assert not driver.errors()
