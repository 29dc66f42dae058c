"""The Evals screen: steps 4 and 7 of the recipe, "evaluate".

Left, the eval editor (`EvalEditor`: the workspace's evals and the graders of the one on
view). Right, the target line (`TargetLine`: what the eval grades, a run or the selection
handed over from the Completions screen), the progress line, and the results panel
(`ResultsPanel`), which fills while the eval runs. The screen holds the keys, takes the
selection handed over, runs the grading, and routes what the panels report."""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial

from openai import AsyncOpenAI
from textual import on, work
from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical

from screens.base import DistillScreen
from screens.evals.editor import EvalEditor
from screens.evals.results import ResultsPanel
from screens.evals.status import TargetLine, grading_figures, idle_text
from tui.engine.backend import client_for_thread, closing
from tui.engine.eval_views import (
    LiveResults,
    Target,
    describe_filter,
    find_eval_run,
    result_filters,
    run_targets,
    selection_targets,
)
from tui.engine.evals import EvalFinished, EvalRunner, start_eval_run
from tui.engine.graders import GraderConfigError, parse_graders
from tui.engine.offloop import EngineThread
from tui.engine.selection import CompletionSelection
from tui.engine.store import StoreError
from tui.widgets.progress_line import ProgressLine


class EvalsScreen(DistillScreen):
    CSS_PATH = "evals.tcss"
    BINDINGS = [
        Binding("g", "grade", "Grade", id="evals.grade"),
        Binding("R", "resume", "Resume", id="evals.resume"),
        Binding("escape", "cancel_grading", "Cancel", id="evals.cancel"),
        Binding("o", "choose_target", "Run…", id="evals.target"),
        Binding("n", "new_eval", "New eval", id="evals.new"),
        Binding("a", "add_grader", "Add grader", id="evals.add_grader"),
        Binding("p", "presets", "Presets", id="evals.presets"),
        Binding("j", "edit_json", "JSON", id="evals.json"),
        Binding("e", "edit_grader", "Edit grader", show=False, id="evals.edit_grader"),
        Binding("d", "delete_grader", "Delete grader", show=False, id="evals.delete_grader"),
        Binding("r", "rename_eval", "Rename eval", show=False, id="evals.rename"),
        Binding("D", "delete_eval", "Delete eval", show=False, id="evals.delete"),
        Binding("f", "cycle_filter", "Filter", id="evals.filter"),
        Binding("s", "cycle_sort", "Sort", id="evals.sort"),
        Binding("x", "export", "Export", id="evals.export"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.runner: EvalRunner | None = None
        self.engine: EngineThread[EvalFinished] | None = None  # the thread the runner runs on
        self._seen_selection: CompletionSelection | None = None
        self._starting = False  # between "g" and the runner existing: a second g waits

    # -- layout --------------------------------------------------------------------------

    def compose_body(self) -> ComposeResult:
        store = self.distill.store
        with Horizontal(id="evals"):
            yield EvalEditor(store, id="evals-left")
            with Vertical(id="evals-right"):
                yield TargetLine(id="eval-target")
                yield ProgressLine(id="eval-progress")
                yield ResultsPanel(store, id="evals-results")

    def on_mount(self) -> None:
        self.sub_title = "Evals"
        self.editor.load_evals()
        self._choose_defaults()
        if not self._take_selection():
            self._load_results()
        self.results.table.focus()

    def on_screen_resume(self) -> None:
        if self.runner is None:
            self.editor.load_evals()
        self._take_selection()

    @property
    def editor(self) -> EvalEditor:
        return self.query_one(EvalEditor)

    @property
    def results(self) -> ResultsPanel:
        return self.query_one(ResultsPanel)

    @property
    def target_line(self) -> TargetLine:
        return self.query_one(TargetLine)

    @property
    def target(self) -> Target | None:
        """What is graded: a run, or a selection of its completions."""
        return self.target_line.target

    @target.setter
    def target(self, target: Target | None) -> None:
        self.target_line.target = target

    @property
    def live(self) -> LiveResults | None:
        """The eval run on view."""
        return self.results.live

    def palette_extras(self) -> Iterable[SystemCommand]:
        live = self.live
        for which in result_filters(live.graders if live else []):
            yield SystemCommand(
                f"Evals: show {describe_filter(which)}",
                "filter the result table",
                lambda which=which: self.results.set_filter(which),
            )

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        running = self.runner is not None
        if action == "cancel_grading":
            return running  # not grading: esc falls through to the app's "back"
        if action == "resume":
            live = self.live
            return not running and live is not None and live.info.status != "done"
        if action in ("grade", "new_eval", "add_grader", "presets", "edit_json", "delete_eval"):
            return not running
        return True

    # -- the editor's and the results' keys ------------------------------------------------

    def action_new_eval(self) -> None:
        self.editor.new_eval()

    def action_rename_eval(self) -> None:
        self.editor.rename_eval()

    def action_delete_eval(self) -> None:
        self.editor.delete_eval()

    def action_add_grader(self) -> None:
        self.editor.add_grader()

    def action_edit_grader(self) -> None:
        self.editor.edit_grader()

    async def action_delete_grader(self) -> None:
        await self.editor.delete_grader()

    def action_edit_json(self) -> None:
        self.editor.edit_json()

    def action_presets(self) -> None:
        self.editor.add_presets()

    def action_cycle_filter(self) -> None:
        self.results.cycle_filter()

    def action_cycle_sort(self) -> None:
        self.results.cycle_sort()

    def action_export(self) -> None:
        self.results.export()

    @on(EvalEditor.EvalChanged)
    def _eval_changed(self) -> None:
        self._load_results()

    @on(EvalEditor.EvalRenamed)
    def _eval_renamed(self) -> None:
        self._show_status()

    @on(EvalEditor.EvalChosen)
    def _eval_chosen(self) -> None:
        self.results.table.focus()

    # -- what is graded ------------------------------------------------------------------

    def _choose_defaults(self) -> None:
        """Open on the latest eval run: its eval and what it graded (else the newest run)."""
        store = self.distill.store
        targets = run_targets(store)
        self.target = targets[0] if targets else None
        latest = store.list_eval_runs()
        if not latest:
            return
        info = latest[0]
        self.editor.load_evals(select=info.eval_id)
        whole = next((t for t in targets if t.run_id == info.run_id), None)
        label = whole.label if whole else f"run {info.run_id}"
        if info.completion_ids is None:
            self.target = whole or Target(info.run_id, None, label)
        else:
            ids = tuple(info.completion_ids)
            self.target = Target(info.run_id, ids, f"{label} · {len(ids):,} selected")

    def _take_selection(self) -> bool:
        """Completions' "Evaluate" hands its selection over through the app: take it once."""
        selection = self.distill.selection
        if selection is None or selection is self._seen_selection:
            return False
        self._seen_selection = selection
        store = self.distill.store
        targets = selection_targets(store, selection)
        if not targets:
            self.notify("The selection holds no finished completions to grade.", severity="warning")
            return False
        self.target = targets[0]
        if len(targets) > 1:
            runs = ", ".join(str(t.run_id) for t in targets)
            self.notify(
                f"The selection spans runs {runs}; an eval run grades one run. Showing run "
                f"{targets[0].run_id}: o chooses another.",
                markup=False,
            )
        if self.editor.eval is None:
            self.notify("No eval yet: p adds ready-made graders, a adds one of your own.")
        self._load_results()
        return True

    def action_choose_target(self) -> None:
        self.target_line.choose()

    @on(TargetLine.Chosen)
    def _target_chosen(self) -> None:
        self._load_results()

    def _load_results(self) -> None:
        """Show the newest eval run of the eval over the target, if there is one."""
        if self.runner is not None:
            return
        store = self.distill.store
        evaluation = self.editor.eval
        info = (
            find_eval_run(store, evaluation.id, self.target)
            if evaluation is not None and self.target is not None
            else None
        )
        self.results.show(LiveResults.load(store, info.id) if info is not None else None)
        self._show_status()

    # -- grading -------------------------------------------------------------------------

    async def action_grade(self) -> None:
        """A new eval run of the eval's graders over the target."""
        if self.runner is not None or self._starting:
            return
        self._starting = True
        try:
            await self._start_grading()
        finally:
            self._starting = False

    async def _start_grading(self) -> None:
        evaluation, target = self.editor.eval, self.target
        if evaluation is None or not evaluation.graders:
            self.notify("Add graders first: p for ready-made ones, a for your own.")
            return
        if target is None:
            self.notify("Choose a run to grade first (o).", severity="warning")
            return
        store = self.distill.store
        try:
            eval_run_id = await store.in_thread(
                start_eval_run,
                store,
                evaluation.id,
                target.run_id,
                list(target.completion_ids) if target.completion_ids is not None else None,
            )
        except (GraderConfigError, StoreError) as error:
            self.notify(str(error), title="Cannot grade", severity="error", markup=False)
            return
        await self._run(eval_run_id)

    async def action_resume(self) -> None:
        live = self.live
        if self.runner is not None or self._starting or live is None:
            return
        if live.info.status != "done":
            self._starting = True
            try:
                await self._run(live.info.id)
            finally:
                self._starting = False

    async def _run(self, eval_run_id: int) -> None:
        store = self.distill.store
        live = await store.in_thread(LiveResults.load, store, eval_run_id)
        self.results.show(live)
        backend = self.distill.backend_for("judge")  # model graders run on the judge's backend
        if backend is None and any(
            g.type in ("score_model", "label_model") for g in parse_graders(live.info.graders)
        ):
            self.notify(
                "Judges (score_model, label_model) need the backend, which is not connected "
                "yet: R starts grading once it is.",
                severity="warning",
            )
            self._show_status()
            return
        # The runner grades on a thread of its own with its own event loop, so judges
        # answering 64 at a time do not stall this screen; it has a client of its own.
        client = client_for_thread(backend.client) if backend else None
        self.runner = EvalRunner.from_settings(store, client, self.distill.settings)
        self.engine = EngineThread(f"eval-run-{eval_run_id}")
        self._set_running(True)
        self._grade(self.runner, self.engine, live, client)

    @work(exclusive=True, group="eval-run", exit_on_error=False)
    async def _grade(
        self,
        runner: EvalRunner,
        engine: EngineThread[EvalFinished],
        live: LiveResults,
        client: AsyncOpenAI | None,
    ) -> None:
        store = self.distill.store
        inbox = live.receive()

        try:
            finished = await engine.run(
                partial(closing, client, partial(runner.run, live.info.id, on_event=inbox.put))
            )
        finally:
            live.catch_up()  # every grade in, before the screen says the run ended
            self.runner = None
            self.engine = None
            live.info = await store.in_thread(store.get_eval_run, live.info.id)
            live.version += 1
            if self.is_mounted:
                self._set_running(False)
                self.editor.load_evals()
        self._report(finished)

    def _report(self, finished: EvalFinished) -> None:
        title = f"Eval run {finished.eval_run_id}"
        if finished.status == "failed":
            self.notify(
                finished.message,
                title=f"{title} stopped",
                severity="error",
                timeout=15,
                markup=False,
            )
        elif finished.status == "cancelled":
            self.notify(
                "Grades decided so far are kept; R resumes the rest.", title=f"{title} cancelled"
            )
        else:
            self.notify(finished.message, title=f"{title} finished", markup=False)

    def _set_running(self, running: bool) -> None:
        self.editor.disabled = running
        self.refresh_bindings()
        self.results.repaint(force=True)  # the summary too: its final counts at once
        self._show_status()

    def action_cancel_grading(self) -> None:
        if self.runner is not None and self.engine is not None:
            self.engine.call(self.runner.cancel)  # on the runner's own loop

    # -- the target and progress lines -----------------------------------------------------

    def _show_status(self) -> None:
        self.target_line.show(self.editor.eval)
        progress = self.query_one("#eval-progress", ProgressLine)
        if self.runner is not None:
            progress.follow(lambda: grading_figures(self.runner, self.live))
        else:
            progress.show(idle_text(self.live, self.editor.eval, self.target))
