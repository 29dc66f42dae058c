"""The Evals screen's panels, each mounted alone in a small app that binds the screen's keys
to the panel's commands, over a real workspace: the eval editor (choose an eval, add
ready-made graders, edit and delete a grader), the results panel (fills while an eval runs,
filter and sort, open an item, export) and the target line (what is graded, and choosing
it)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.pilot import Pilot
from textual.widgets import Input, OptionList, Static

from screens.dialogs import ExportDialog
from screens.evals.dialogs import PresetDialog, ResultItemDialog, TargetDialog
from screens.evals.editor import EvalEditor
from screens.evals.grader_form import GraderDialog
from screens.evals.results import ResultsPanel
from screens.evals.status import TargetLine
from tests.helpers.pilot import posted, settle
from tests.tui.conftest import Db, plain
from tests.tui.eval_data import GIT_GRADERS, build, percent
from tui.engine.eval_views import FAILING, LiveResults, run_targets
from tui.engine.evals import EvalRunner, create_eval, start_eval_run
from tui.engine.store import Store


class EditorApp(App[None]):
    """The eval editor alone, with the Evals screen's keys for its commands."""

    BINDINGS = [
        Binding("p", "presets", "Presets"),
        Binding("d", "delete_grader", "Delete grader"),
    ]

    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store

    def compose(self) -> ComposeResult:
        yield EvalEditor(self.store)

    def on_mount(self) -> None:
        editor = self.query_one(EvalEditor)
        editor.load_evals()
        editor.query_one("#eval-list").focus()

    def action_presets(self) -> None:
        self.query_one(EvalEditor).add_presets()

    async def action_delete_grader(self) -> None:
        await self.query_one(EvalEditor).delete_grader()


class ResultsApp(App[None]):
    """The results panel alone, with the Evals screen's keys for its commands."""

    BINDINGS = [
        Binding("f", "filter", "Filter"),
        Binding("s", "sort", "Sort"),
        Binding("x", "export", "Export"),
    ]

    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store

    def compose(self) -> ComposeResult:
        yield ResultsPanel(self.store)

    def on_mount(self) -> None:
        self.query_one(ResultsPanel).table.focus()

    def action_filter(self) -> None:
        self.query_one(ResultsPanel).cycle_filter()

    def action_sort(self) -> None:
        self.query_one(ResultsPanel).cycle_sort()

    def action_export(self) -> None:
        self.query_one(ResultsPanel).export()


@asynccontextmanager
async def running(app: App[None], messages: list[Message]) -> AsyncIterator[Pilot[None]]:
    async with app.run_test(size=(110, 34), message_hook=messages.append) as pilot:
        await pilot.pause()
        yield pilot


async def wait_until(pilot: Pilot[Any], done: Callable[[], bool], timeout: float = 10) -> None:
    for _ in range(int(timeout / 0.05)):
        if done():
            return
        await pilot.pause(0.05)
    raise AssertionError("the panel did not repaint")


def shown(widget: Static) -> str:
    console = Console(width=110, record=True, file=io.StringIO())
    console.print(widget.content)
    return console.export_text()


def grader_names(db: Db, eval_name: str) -> list[str]:
    rows = db.rows("SELECT graders FROM evals WHERE name = ?", (eval_name,))
    assert rows, f"no eval {eval_name!r}"
    return [g["name"] for g in json.loads(rows[0][0])]


# -- the eval editor ---------------------------------------------------------------------------


async def test_editor_moves_between_evals_and_says_so(store: Store) -> None:
    create_eval(store, "git commands", GIT_GRADERS)
    create_eval(store, "exact only", GIT_GRADERS[1:])
    messages: list[Message] = []
    async with running(EditorApp(store), messages) as pilot:
        editor = pilot.app.query_one(EvalEditor)
        first = editor.eval
        assert first is not None
        graders = editor.query_one("#grader-list", OptionList)
        assert graders.option_count == len(first.graders)

        await pilot.press("down")
        changed = posted(messages, EvalEditor.EvalChanged)
        assert changed and changed[-1].eval is editor.eval and editor.eval is not first
        assert editor.eval is not None
        assert graders.option_count == len(editor.eval.graders)
        assert plain(editor.query_one("#graders-title")) == f"Graders of {editor.eval.name}"

        await pilot.press("enter")
        chosen = posted(messages, EvalEditor.EvalChosen)
        assert len(chosen) == 1 and chosen[0].eval is editor.eval


async def test_editor_adds_presets_to_a_new_eval_then_edits_and_deletes_graders(
    store: Store, db: Db
) -> None:
    messages: list[Message] = []
    async with running(EditorApp(store), messages) as pilot:
        editor = pilot.app.query_one(EvalEditor)
        assert editor.eval is None

        # p, enter: the git task's graders, into an eval created for them.
        await pilot.press("p")
        assert isinstance(pilot.app.screen, PresetDialog)
        await pilot.press("enter")
        await settle(pilot)
        assert grader_names(db, "git commands") == ["command match", "exact match"]
        changed = posted(messages, EvalEditor.EvalChanged)
        assert changed and changed[-1].eval is not None
        assert changed[-1].eval.name == "git commands" and len(changed[-1].eval.graders) == 2
        graders = editor.query_one("#grader-list", OptionList)
        assert graders.option_count == 2

        # enter on the second grader: the form, holding it; rename it and save.
        graders.focus()
        await pilot.press("down", "enter")
        form = pilot.app.screen
        assert isinstance(form, GraderDialog)
        name = form.query_one("#g-name", Input)
        assert name.value == "exact match"
        name.value = "exact"
        await pilot.press("ctrl+s")
        await settle(pilot)
        assert pilot.app.screen is not form
        assert grader_names(db, "git commands") == ["command match", "exact"]
        assert len(posted(messages, EvalEditor.EvalChanged)) > len(changed)

        # d: the highlighted grader goes; the eval keeps the other.
        count = len(posted(messages, EvalEditor.EvalChanged))
        await pilot.press("d")
        await settle(pilot)
        assert grader_names(db, "git commands") == ["command match"]
        assert len(posted(messages, EvalEditor.EvalChanged)) == count + 1
        assert graders.option_count == 1


# -- the results panel ---------------------------------------------------------------------------


async def test_results_fill_while_an_eval_runs(store: Store) -> None:
    work = build(store, roles=("student",))
    eval_id = create_eval(store, "git commands", GIT_GRADERS)
    eval_run_id = start_eval_run(store, eval_id, work.runs["student"])
    messages: list[Message] = []
    async with running(ResultsApp(store), messages) as pilot:
        panel = pilot.app.query_one(ResultsPanel)
        live = LiveResults.load(store, eval_run_id)
        panel.show(live)
        await pilot.pause()
        assert panel.table.row_count == 10
        assert all(row[4] == "·" for row in panel.table._rows)  # not graded yet
        match_rate = percent("student", "command match")  # "30.0%"
        assert match_rate not in shown(panel.query_one("#grader-summary", Static))

        await EvalRunner(store).run(eval_run_id, on_event=live.on_event)
        # Nothing but the panel's own repaint timer redraws the summary.
        summary = panel.query_one("#grader-summary", Static)
        await wait_until(pilot, lambda: match_rate in shown(summary))
        assert percent("student", "exact match") in shown(summary)
        assert panel.table._rows[0][4] == "✓ 1.00"


@asynccontextmanager
async def graded_results(
    app: ResultsApp, store: Store, messages: list[Message] | None = None
) -> AsyncIterator[tuple[Pilot[None], ResultsPanel]]:
    """`app` running, its results panel showing the student's run of the fixed workspace
    graded by the git graders."""
    work = build(store, roles=("student",))
    eval_id = create_eval(store, "git commands", GIT_GRADERS)
    eval_run_id = start_eval_run(store, eval_id, work.runs["student"])
    await EvalRunner(store).run(eval_run_id)
    async with running(app, [] if messages is None else messages) as pilot:
        panel = pilot.app.query_one(ResultsPanel)
        panel.show(LiveResults.load(store, eval_run_id))
        await pilot.pause()
        yield pilot, panel


async def test_results_filter_sort_open_and_export(store: Store) -> None:
    messages: list[Message] = []
    async with graded_results(ResultsApp(store), store, messages) as (pilot, panel):
        assert panel.table.row_count == 10

        await pilot.press("f")
        assert panel.table.row_count == 8  # failing any grader
        await pilot.press("f")
        assert panel.table.row_count == 7  # failing command match
        views = posted(messages, ResultsPanel.ViewChanged)
        assert [v.filter for v in views] == [FAILING, f"{FAILING}:command match"]
        assert "failing command match" in shown(panel.query_one("#result-view-line", Static))

        await pilot.press("s")
        assert posted(messages, ResultsPanel.ViewChanged)[-1].sort == "command match"
        scores = [float(row[4].split()[1]) for row in panel.table._rows]
        assert scores == sorted(scores)

        await pilot.press("enter")
        dialog = pilot.app.screen
        assert isinstance(dialog, ResultItemDialog)
        assert dialog.row is panel.current_row()
        await pilot.press("escape")

        await pilot.press("x")
        export = pilot.app.screen
        assert isinstance(export, ExportDialog)
        await pilot.press("enter")
        await settle(pilot)
        exported = posted(messages, ResultsPanel.Exported)
        assert len(exported) == 1 and exported[0].count == 10
        with exported[0].path.open(encoding="utf-8") as fh:
            assert len(list(csv.DictReader(fh))) == 10


class ScreenStyledResults(ResultsApp):
    """The results panel with the Evals screen's stylesheet (its sizes and heights)."""

    CSS_PATH = str(Path(__file__).resolve().parents[2] / "screens" / "evals" / "evals.tcss")


async def test_moving_through_results_keeps_the_table_in_place(store: Store) -> None:
    """Rows fail different graders, so the detail under the table says different things
    (nothing, one failure, two); the table stays where it is as the cursor moves, and the
    detail names each row's failures."""
    async with graded_results(ScreenStyledResults(store), store) as (pilot, panel):
        table = panel.table.region
        failures = set()
        for _ in range(panel.table.row_count):
            row = panel.current_row()
            assert row is not None
            detail = shown(panel.query_one("#result-detail", Static))
            failing = [name for name in ("command match", "exact match") if row.failing(name)]
            failures.add(len(failing))
            for name in failing:
                assert f"{name}:" in detail, (row.input, detail)
            assert panel.table.region == table
            await pilot.press("down")
        assert failures == {0, 1, 2}  # the rows did say different things


# -- the target line ---------------------------------------------------------------------------


class TargetApp(App[None]):
    """The target line alone, with the Evals screen's key for choosing."""

    BINDINGS = [Binding("o", "choose", "Run…")]

    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store
        self.selection = None  # nothing handed over from the Completions screen

    def compose(self) -> ComposeResult:
        yield TargetLine(id="eval-target")

    def action_choose(self) -> None:
        self.query_one(TargetLine).choose()


async def test_target_line_shows_what_is_graded_and_chooses_another_run(store: Store) -> None:
    work = build(store)
    evaluation = create_eval(store, "git commands", GIT_GRADERS)
    messages: list[Message] = []
    async with running(TargetApp(store), messages) as pilot:
        line = pilot.app.query_one(TargetLine)
        line.show(None)
        assert " ".join(shown(line).split()) == "Eval none on no run yet o chooses"

        # o lists every run with finished completions, newest first; enter picks one.
        targets = run_targets(store)
        assert [t.run_id for t in targets] == sorted(work.runs.values(), reverse=True)
        await pilot.press("o")
        await wait_until(pilot, lambda: isinstance(pilot.app.screen, TargetDialog))
        await pilot.press("down", "enter")
        await wait_until(pilot, lambda: bool(posted(messages, TargetLine.Chosen)))
        assert posted(messages, TargetLine.Chosen) == [TargetLine.Chosen(targets[1])]
        assert line.target == targets[1]

        line.show(store.get_eval(evaluation))
        assert " ".join(shown(line).split()) == (
            f"Eval git commands on {targets[1].label} o chooses"
        )

        # Esc in the dialog keeps the target and says nothing.
        await pilot.press("o")
        await wait_until(pilot, lambda: isinstance(pilot.app.screen, TargetDialog))
        await pilot.press("escape")
        await settle(pilot)
        assert line.target == targets[1] and len(posted(messages, TargetLine.Chosen)) == 1
