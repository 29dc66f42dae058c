"""The Compare screen: step 7 of the recipe, "compare with the baseline" — what distillation
bought, shown to a stakeholder.

Top, the summary panel (each run as a row of the recipe's report — teacher, baseline student,
pool-only student, fine-tuned student — with its pass rate per grader against the baseline,
latency, tokens per request and cost per 1,000 requests, and the business case in one line);
below, the items panel (the runs' outputs side by side, filtered to where they differ,
regressions or improvements, and the highlighted item's differences marked). The screen loads
the comparison, routes the keys and grades the runs that have no grades yet.

Grading runs on a thread of its own with its own event loop (tui/engine/offloop.py), as on
the Evals screen: judges answering many at a time would otherwise stall every key and frame.
The progress line reads the runner's totals, plain numbers, a few times a second."""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial

from textual import on, work
from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Vertical

from screens.base import DistillScreen
from screens.compare.choose import CompareDialog, CompareRequest
from screens.compare.dialog import CompareItemDialog
from screens.compare.items import CompareItems
from screens.compare.summary import FILTERS, CompareSummary
from tui.engine.backend import client_for_thread, closing
from tui.engine.eval_views import default_comparison, ungraded_runs
from tui.engine.evals import (
    CompareFilter,
    Comparison,
    EvalFinished,
    EvalRunner,
    compare,
    start_eval_run,
)
from tui.engine.offloop import EngineThread
from tui.engine.report import price_by_role
from tui.engine.store import StoreError
from tui.widgets.virtual_table import VirtualTable


class CompareScreen(DistillScreen):
    CSS_PATH = "compare.tcss"
    BINDINGS = [
        Binding("c", "choose", "Choose runs…", id="compare.choose"),
        Binding("b", "cycle_baseline", "Baseline", id="compare.baseline"),
        Binding("f", "cycle_filter", "Filter", id="compare.filter"),
        Binding("t", "cycle_versus", "Diff with", id="compare.versus"),
        Binding("g", "grade_missing", "Grade missing", id="compare.grade"),
        Binding("escape", "cancel_grading", "Cancel", id="compare.cancel"),
        Binding("r", "refresh", "Refresh", show=False, id="compare.refresh"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.request: CompareRequest | None = None
        self.comparison: Comparison | None = None
        self.filter: CompareFilter = "all"
        self.counts: dict[str, int] = {}
        self.runner: EvalRunner | None = None
        self.engine: EngineThread[EvalFinished] | None = None  # the thread the runner runs on
        self.grading_note = ""

    # -- layout --------------------------------------------------------------------------

    def compose_body(self) -> ComposeResult:
        with Vertical(id="compare"):
            yield CompareSummary(id="compare-head")
            yield CompareItems(id="compare-body")

    def on_mount(self) -> None:
        self.sub_title = "Compare"
        self.table.focus()
        choice = default_comparison(self.distill.store)
        if choice is not None:
            self.request = CompareRequest(choice.eval_id, choice.run_ids, choice.baseline_run_id)
        self._load()

    def on_screen_resume(self) -> None:
        if self.runner is None and self.comparison is not None:
            self._load()

    def palette_extras(self) -> Iterable[SystemCommand]:
        for which, title in FILTERS:
            yield SystemCommand(
                f"Compare: show {title.lower()}",
                "filter the items",
                lambda which=which: self.set_filter(which),
            )

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "cancel_grading":
            return self.runner is not None  # else esc is the app's "back"
        if action == "grade_missing":
            return (
                self.runner is None
                and self.comparison is not None
                and bool(ungraded_runs(self.comparison))
            )
        if action in ("choose", "cycle_baseline"):
            return self.runner is None
        return True

    @property
    def items_panel(self) -> CompareItems:
        return self.query_one(CompareItems)

    @property
    def table(self) -> VirtualTable:
        return self.items_panel.table

    # -- loading -------------------------------------------------------------------------

    @work(exclusive=True, group="compare-load", exit_on_error=False)
    async def _load(self) -> None:
        request = self.request
        if request is None:
            self.comparison = None
            self._show_all()
            return
        store = self.distill.store
        try:
            comparison = await store.in_thread(
                compare,
                store,
                request.eval_id,
                request.run_ids,
                request.baseline_run_id,
                price_by_role(self.distill.settings),
            )
        except StoreError as error:
            self.notify(str(error), title="Cannot compare", severity="error", markup=False)
            self.request = None
            self.comparison = None
            self._show_all()
            return
        self.comparison = comparison
        self.counts = {which: len(comparison.rows(which)) for which, _ in FILTERS}
        self.items_panel.set_comparison(comparison)
        self._show_all()

    def _show_all(self, *, from_top: bool = False) -> None:
        comparison = self.comparison
        if comparison is None:
            self.items_panel.set_comparison(None)
        self.items_panel.show(comparison.rows(self.filter) if comparison else [], from_top=from_top)
        dataset = ""
        if comparison is not None:
            run = self.distill.store.get_run(comparison.baseline_run_id)
            dataset = run.dataset_name or "?"
        self.query_one(CompareSummary).show(
            comparison, dataset=dataset, filter=self.filter, counts=self.counts
        )
        self._show_grading()
        self.refresh_bindings()

    def _show_grading(self) -> None:
        self.query_one(CompareSummary).show_grading(self.runner, self.grading_note)

    @on(CompareItems.Opened)
    async def _opened(self, event: CompareItems.Opened) -> None:
        await self.app.push_screen(CompareItemDialog(event.comparison, event.row))

    # -- actions -------------------------------------------------------------------------

    def set_filter(self, which: CompareFilter) -> None:
        self.filter = which
        self._show_all(from_top=True)

    def action_cycle_filter(self) -> None:
        order = [which for which, _ in FILTERS]
        self.set_filter(order[(order.index(self.filter) + 1) % len(order)])

    def action_cycle_versus(self) -> None:
        comparison = self.comparison
        if comparison is None:
            return
        others = [c.run_id for c in comparison.runs if c.run_id != comparison.baseline_run_id]
        if others:
            versus = self.items_panel.versus
            i = others.index(versus) if versus in others else -1
            versus = others[(i + 1) % len(others)]
            self.items_panel.set_versus(versus)
            self.notify(f"The baseline's output is diffed with run {versus}'s.", timeout=2)

    def action_cycle_baseline(self) -> None:
        request = self.request
        if request is None or self.runner is not None:
            return
        runs = request.run_ids
        i = runs.index(request.baseline_run_id)
        self.request = CompareRequest(request.eval_id, runs, runs[(i + 1) % len(runs)])
        self._load()

    def action_refresh(self) -> None:
        self._load()

    @work(group="compare-choose", exit_on_error=False)
    async def action_choose(self) -> None:
        store = self.distill.store
        evals = await store.in_thread(store.list_evals)
        runs = await store.in_thread(store.list_runs)
        if not evals:
            self.notify("No eval yet: define one on the Evals screen (4).", severity="warning")
            return
        request = self.request
        choice = await self.app.push_screen_wait(
            CompareDialog(
                evals,
                runs,
                request.eval_id if request else None,
                request.run_ids if request else [],
                request.baseline_run_id if request else None,
            )
        )
        if choice is not None:
            self.request = choice
            self.filter = "all"
            self._load()

    async def action_grade_missing(self) -> None:
        comparison = self.comparison
        if comparison is None or self.runner is not None:
            return
        todo = ungraded_runs(comparison)
        if todo:
            self._grade(comparison, todo)

    @work(exclusive=True, group="compare-grade", exit_on_error=False)
    async def _grade(self, comparison: Comparison, run_ids: list[int]) -> None:
        """Grade (or finish grading) each run with the comparison's eval, one after another."""
        store = self.distill.store
        backend = self.distill.backend_for("judge")
        by_id = {c.run_id: c for c in comparison.runs}
        try:
            for n, run_id in enumerate(run_ids, 1):
                column = by_id[run_id]
                if column.eval_run_id is not None and column.eval_status != "done":
                    eval_run_id = column.eval_run_id
                else:
                    eval_run_id = await store.in_thread(
                        start_eval_run, store, comparison.eval_id, run_id
                    )
                # Each run's runner on a thread (and loop) of its own, with a client of its
                # own: a client's connections belong to the loop that opened them.
                client = client_for_thread(backend.client) if backend else None
                runner = EvalRunner.from_settings(store, client, self.distill.settings)
                engine: EngineThread[EvalFinished] = EngineThread(f"compare-grade-{eval_run_id}")
                self.runner, self.engine = runner, engine
                self.grading_note = f"run {run_id} ({n} of {len(run_ids)})"
                self._show_grading()
                self.refresh_bindings()
                grading = partial(runner.run, eval_run_id)
                finished = await engine.run(partial(closing, client, grading))
                if finished.status != "done":
                    self.notify(
                        finished.message,
                        title=f"Grading run {run_id} {finished.status}",
                        severity="warning" if finished.status == "cancelled" else "error",
                        markup=False,
                    )
                    break
        except StoreError as error:
            self.notify(str(error), title="Cannot grade", severity="error", markup=False)
        finally:
            self.runner = None
            self.engine = None
            if self.is_mounted:
                self._load()

    def action_cancel_grading(self) -> None:
        if self.runner is not None and self.engine is not None:
            self.engine.call(self.runner.cancel)  # on the runner's own loop
