"""The Evals screen: steps 4 and 7 of the recipe, "evaluate".

Left, the workspace's evals and the graders of the one on view: add a grader from a form,
edit them all as JSON (OpenAI's testing_criteria paste as they are), or add ready-made ones.
Right, what the eval grades (a run, or the selection handed over from the Completions screen),
a per-grader summary, and the result table, which fills while the eval runs.

Grading 100,000 completions reports thousands of grades a second. Runner events only write
into `LiveResults`; a timer redraws the table, the summary and the progress line 12 times a
second, and only when something changed."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Label, OptionList, Static
from textual.widgets.option_list import Option

from screens.base import DistillScreen
from screens.dialogs import ConfirmDialog, TextPromptDialog
from screens.eval_dialogs import (
    GraderDialog,
    GradersJsonDialog,
    PresetDialog,
    ResultItemDialog,
    TargetDialog,
    form_can_edit,
    results_export_dialog,
    score_text,
    verdict,
)
from tui.engine.eval_views import (
    ALL,
    LiveResults,
    Target,
    add_graders,
    describe_filter,
    find_eval_run,
    grader_presets,
    result_filters,
    result_view,
    run_targets,
    selection_targets,
)
from tui.engine.evals import (
    EvalFinished,
    EvalRunner,
    ResultRow,
    export_results,
    start_eval_run,
    update_eval,
)
from tui.engine.graders import GraderConfigError, parse_graders
from tui.engine.selection import CompletionSelection
from tui.engine.store import EvalInfo, GraderSummary, StoreError
from tui.widgets.virtual_table import Column, VirtualTable

REPAINT_HZ = 12
FIXED_COLUMNS = (
    Column("#", width=5, justify="right"),
    Column("Request", weight=3),
    Column("Output", weight=3),
    Column("Reference", weight=2),
)


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


def _percent(rate: float | None) -> str:
    return "–" if rate is None else f"{rate:.1%}"


def _rate_style(rate: float | None) -> str:
    if rate is None:
        return "dim"
    return "green" if rate >= 0.8 else ("yellow" if rate >= 0.5 else "red")


def _bar(rate: float | None, width: int = 12) -> Text:
    if rate is None:
        return Text("·" * width, style="dim")
    full = round(rate * width)
    text = Text("█" * full, style=_rate_style(rate))
    text.append("░" * (width - full), style="dim")
    return text


def _slug(text: str) -> str:
    return re.sub(r"[^\w.-]+", "-", text).strip("-").lower() or "eval"


class _ResultRows(Sequence[tuple[str, ...]]):
    """The visible rows of the result table, made when drawn."""

    def __init__(self, live: LiveResults, shown: list[int]) -> None:
        self.live = live
        self.shown = shown

    def __len__(self) -> int:
        return len(self.shown)

    def __getitem__(self, index: Any) -> Any:
        live = self.live
        row = live.rows[self.shown[index]]
        position = live.position(row)
        cells = [
            "" if position is None else str(position),
            row.input,
            row.output,
            row.reference,
        ]
        for name in live.graders:
            grade = row.grades.get(name)
            mark, _ = verdict(grade)
            if grade is None:
                cells.append(mark)
            elif grade.passed is None:
                cells.append(f"{mark} error")
            else:
                cells.append(f"{mark} {score_text(grade.score)}")
        return tuple(cells)


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
        self.evals: list[EvalInfo] = []
        self.eval: EvalInfo | None = None
        self.target: Target | None = None
        self.live: LiveResults | None = None
        self.runner: EvalRunner | None = None
        self.shown: list[int] = []
        self.filter = ALL
        self.sort: str | None = None
        self._painted: tuple[Any, ...] = ()
        self._seen_selection: CompletionSelection | None = None
        self._starting = False  # between "g" and the runner existing: a second g waits

    # -- layout --------------------------------------------------------------------------

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="evals"):
            with Vertical(id="evals-left"):
                yield Label("Evals", classes="section")
                yield OptionList(id="eval-list")
                yield Label("Graders", classes="section", id="graders-title")
                yield OptionList(id="grader-list")
                yield Static("a add · e edit · d delete\nj JSON · p presets", id="grader-hint")
            with Vertical(id="evals-right"):
                yield Static("", id="target")
                yield Static("", id="progress")
                yield Static("", id="summary")
                yield Static("", id="view-line")
                yield VirtualTable(FIXED_COLUMNS, cell_style=self._cell_style, id="results")
                yield Static("", id="result-detail")

    def on_mount(self) -> None:
        self.sub_title = "Evals"
        self.set_interval(1 / REPAINT_HZ, self._repaint)
        self._load_evals()
        self._choose_defaults()
        if not self._take_selection():
            self._load_results()
        self.table.focus()

    def on_screen_resume(self) -> None:
        if self.runner is None:
            self._load_evals()
        self._take_selection()

    def palette_commands(self) -> Iterable[SystemCommand]:
        for binding in self.BINDINGS:
            if isinstance(binding, Binding) and self.check_action(binding.action, ()):
                yield SystemCommand(
                    f"Evals: {binding.description}",
                    f"key {binding.key_display or binding.key}",
                    lambda action=binding.action: self.run_action(action),
                )
        for which in result_filters(self.live.graders if self.live else []):
            yield SystemCommand(
                f"Evals: show {describe_filter(which)}",
                "filter the result table",
                lambda which=which: self.set_filter(which),
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

    @property
    def table(self) -> VirtualTable:
        return self.query_one("#results", VirtualTable)

    # -- evals and graders ---------------------------------------------------------------

    def _load_evals(self, select: int | None = None) -> None:
        store = self.distill.store
        self.evals = store.list_evals()
        wanted = select if select is not None else (self.eval.id if self.eval else None)
        self.eval = next((e for e in self.evals if e.id == wanted), None)
        if self.eval is None and self.evals:
            self.eval = self.evals[0]
        options = self.query_one("#eval-list", OptionList)
        prompts = []
        for e in self.evals:
            text = Text(e.name)
            text.append(f"  {len(e.graders)} grader{'s' if len(e.graders) != 1 else ''}", "dim")
            prompts.append(Option(text, id=str(e.id)))
        options.set_options(prompts)
        if self.eval is not None:
            options.highlighted = self.evals.index(self.eval)
        self._show_graders()

    def _show_graders(self) -> None:
        options = self.query_one("#grader-list", OptionList)
        highlighted = options.highlighted
        graders = self.eval.graders if self.eval else []
        prompts = []
        for i, config in enumerate(graders):
            text = Text(str(config.get("name") or config.get("type")), style="bold")
            text.append(f"\n  {config.get('type')}{self._grader_gist(config)}", style="dim")
            prompts.append(Option(text, id=str(i)))
        options.set_options(prompts)
        if graders:
            options.highlighted = min(highlighted or 0, len(graders) - 1)
        title = self.query_one("#graders-title", Label)
        title.update(f"Graders of {self.eval.name}" if self.eval else "Graders")

    @staticmethod
    def _grader_gist(config: dict[str, Any]) -> str:
        kind = config.get("type")
        if kind == "string_check":
            return f" · {config.get('operation')}"
        if kind == "text_similarity":
            return f" · {config.get('evaluation_metric')} ≥ {config.get('pass_threshold', 0.5)}"
        if kind in ("score_model", "label_model"):
            return f" · {config.get('model') or 'judge from Settings'}"
        return ""

    def _choose_defaults(self) -> None:
        """Open on the latest eval run: its eval and what it graded (else the newest run)."""
        store = self.distill.store
        targets = run_targets(store)
        self.target = targets[0] if targets else None
        latest = store.list_eval_runs()
        if not latest:
            return
        info = latest[0]
        self._load_evals(select=info.eval_id)
        whole = next((t for t in targets if t.run_id == info.run_id), None)
        label = whole.label if whole else f"run {info.run_id}"
        if info.completion_ids is None:
            self.target = whole or Target(info.run_id, None, label)
        else:
            ids = tuple(info.completion_ids)
            self.target = Target(info.run_id, ids, f"{label} · {len(ids):,} selected")

    @on(OptionList.OptionHighlighted, "#eval-list")
    def _eval_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        eval_id = int(event.option.id or 0)
        if self.eval is not None and self.eval.id == eval_id:
            return
        self.eval = next((e for e in self.evals if e.id == eval_id), None)
        self._show_graders()
        self._load_results()

    @on(OptionList.OptionSelected, "#eval-list")
    def _eval_selected(self) -> None:
        self.table.focus()

    @on(OptionList.OptionSelected, "#grader-list")
    def _grader_selected(self) -> None:
        self.action_edit_grader()

    def _highlighted_grader(self) -> int | None:
        options = self.query_one("#grader-list", OptionList)
        if self.eval is None or options.highlighted is None:
            return None
        return options.highlighted if options.highlighted < len(self.eval.graders) else None

    async def _save_graders(self, graders: list[dict[str, Any]]) -> bool:
        assert self.eval is not None
        store = self.distill.store
        try:
            await store.in_thread(update_eval, store, self.eval.id, graders=graders)
        except (GraderConfigError, StoreError) as error:
            self.notify(str(error), title="Graders not saved", severity="error", markup=False)
            return False
        self._load_evals()
        self._load_results()
        return True

    async def _need_eval(self) -> EvalInfo | None:
        """The eval on view; with none yet, one is created (named after the first need)."""
        if self.eval is not None:
            return self.eval
        store = self.distill.store
        name = "git commands" if store.eval_by_name("git commands") is None else "new eval"
        eval_id = await store.in_thread(store.create_eval, name, [])
        self._load_evals(select=eval_id)
        return self.eval

    @work(group="evals-edit", exit_on_error=False)
    async def action_new_eval(self) -> None:
        name = await self.app.push_screen_wait(
            TextPromptDialog("New eval", placeholder="name, e.g. git commands", validate=_name)
        )
        if not name:
            return
        store = self.distill.store
        try:
            eval_id = await store.in_thread(store.create_eval, name, [])
        except StoreError as error:
            self.notify(str(error), severity="error", markup=False)
            return
        self._load_evals(select=eval_id)
        self._load_results()
        self.notify(f"Created {name!r}: a adds a grader, p adds ready-made ones.", markup=False)

    @work(group="evals-edit", exit_on_error=False)
    async def action_rename_eval(self) -> None:
        if self.eval is None:
            return
        name = await self.app.push_screen_wait(
            TextPromptDialog("Rename eval", self.eval.name, validate=_name)
        )
        if not name:
            return
        store = self.distill.store
        try:
            await store.in_thread(update_eval, store, self.eval.id, name=name)
        except StoreError as error:
            self.notify(str(error), severity="error", markup=False)
            return
        self._load_evals()
        self._show_all()

    @work(group="evals-edit", exit_on_error=False)
    async def action_delete_eval(self) -> None:
        evaluation = self.eval
        if evaluation is None:
            return
        store = self.distill.store
        n_runs = len(await store.in_thread(store.list_eval_runs, evaluation.id))
        ok = await self.app.push_screen_wait(
            ConfirmDialog(
                "Delete eval",
                f"Delete {evaluation.name!r} with its {n_runs} eval run(s) and their grades? "
                "The runs and their completions stay.",
                ok="Delete",
            )
        )
        if not ok:
            return
        await store.in_thread(store.delete_eval, evaluation.id)
        self.eval = None
        self._load_evals()
        self._load_results()

    @work(group="evals-edit", exit_on_error=False)
    async def action_add_grader(self) -> None:
        taken = [str(g.get("name")) for g in self.eval.graders] if self.eval else []
        config = await self.app.push_screen_wait(GraderDialog(None, taken))
        if config is None:
            return
        evaluation = await self._need_eval()
        if evaluation is None:
            return
        if await self._save_graders([*evaluation.graders, config]):
            self.notify(f"Added {config['name']!r} to {evaluation.name!r}.", markup=False)

    @work(group="evals-edit", exit_on_error=False)
    async def action_edit_grader(self) -> None:
        index = self._highlighted_grader()
        if self.eval is None or index is None:
            self.notify("No grader to edit: a adds one.", severity="warning")
            return
        graders = list(self.eval.graders)
        if not form_can_edit(graders[index]):
            self.notify(
                "This judge has more messages than the form shows: edit it as JSON (j).",
                severity="warning",
            )
            return
        taken = [str(g.get("name")) for g in graders]
        config = await self.app.push_screen_wait(GraderDialog(graders[index], taken))
        if config is None:
            return
        graders[index] = config
        await self._save_graders(graders)

    async def action_delete_grader(self) -> None:
        index = self._highlighted_grader()
        if self.eval is None or index is None:
            return
        graders = list(self.eval.graders)
        removed = graders.pop(index)
        if await self._save_graders(graders):
            self.notify(
                f"Removed {removed.get('name')!r}. Eval runs made before keep their grades.",
                markup=False,
            )

    @work(group="evals-edit", exit_on_error=False)
    async def action_edit_json(self) -> None:
        evaluation = await self._need_eval()
        if evaluation is None:
            return
        graders = await self.app.push_screen_wait(
            GradersJsonDialog(evaluation.name, evaluation.graders)
        )
        if graders is None:
            return
        if await self._save_graders(graders):
            self.notify(f"{evaluation.name!r}: {len(graders)} graders saved.", markup=False)

    @work(group="evals-edit", exit_on_error=False)
    async def action_presets(self) -> None:
        preset = await self.app.push_screen_wait(PresetDialog(grader_presets()))
        if preset is None:
            return
        evaluation = await self._need_eval()
        if evaluation is None:
            return
        try:
            graders = add_graders(evaluation.graders, preset.graders)
        except GraderConfigError as error:
            self.notify(str(error), severity="error", markup=False)
            return
        if await self._save_graders(graders):
            self.notify(f"Added {preset.name!r} to {evaluation.name!r}.", markup=False)

    # -- what is graded ------------------------------------------------------------------

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
        if self.eval is None:
            self.notify("No eval yet: p adds ready-made graders, a adds one of your own.")
        self._load_results()
        return True

    @work(group="evals-edit", exit_on_error=False)
    async def action_choose_target(self) -> None:
        store = self.distill.store
        targets: list[Target] = []
        if self.distill.selection is not None:
            targets += await store.in_thread(selection_targets, store, self.distill.selection)
        targets += await store.in_thread(run_targets, store)
        if not targets:
            self.notify("No run has finished completions: generate one first (2).")
            return
        target = await self.app.push_screen_wait(TargetDialog(targets, self.target))
        if target is not None:
            self.target = target
            self._load_results()

    def _load_results(self) -> None:
        """Show the newest eval run of the eval over the target, if there is one."""
        if self.runner is not None:
            return
        store = self.distill.store
        info = (
            find_eval_run(store, self.eval.id, self.target)
            if self.eval is not None and self.target is not None
            else None
        )
        self.live = LiveResults.load(store, info.id) if info is not None else None
        self._set_columns()
        self._show_all()

    def _set_columns(self) -> None:
        self.filter, self.sort = ALL, None
        graders = self.live.graders if self.live else []
        self.table.set_columns([*FIXED_COLUMNS, *self._grader_columns(graders)])

    def _grader_columns(self, graders: Sequence[str]) -> list[Column]:
        columns = []
        for name in graders:
            label = name + (" ↑" if name == self.sort else "")
            columns.append(Column(label, width=max(8, min(len(label), 16))))
        return columns

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
        evaluation, target = self.eval, self.target
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
        backend = self.distill.backend
        if backend is None and any(
            g.type in ("score_model", "label_model") for g in parse_graders(live.info.graders)
        ):
            self.notify(
                "Judges (score_model, label_model) need the backend, which is not connected "
                "yet: R starts grading once it is.",
                severity="warning",
            )
            self.live = live
            self._set_columns()
            self._show_all()
            return
        self.live = live
        self._set_columns()
        self.runner = EvalRunner.from_settings(
            store, backend.client if backend else None, self.distill.settings
        )
        self._set_running(True)
        self._grade(self.runner, live)

    @work(exclusive=True, group="eval-run", exit_on_error=False)
    async def _grade(self, runner: EvalRunner, live: LiveResults) -> None:
        store = self.distill.store
        try:
            finished = await runner.run(live.info.id, on_event=live.on_event)
        finally:
            self.runner = None
            live.info = await store.in_thread(store.get_eval_run, live.info.id)
            live.version += 1
            if self.is_mounted:
                self._set_running(False)
                self._load_evals()
        self._report(finished)

    def _report(self, finished: EvalFinished) -> None:
        title = f"Eval run {finished.eval_run_id}"
        if finished.status == "failed":
            self.notify(finished.message, title=f"{title} stopped", severity="error", timeout=15)
        elif finished.status == "cancelled":
            self.notify(
                "Grades decided so far are kept; R resumes the rest.", title=f"{title} cancelled"
            )
        else:
            self.notify(finished.message, title=f"{title} finished", markup=False)

    def _set_running(self, running: bool) -> None:
        self.query_one("#evals-left").disabled = running
        self.refresh_bindings()
        self._painted = ()
        self._repaint()

    def action_cancel_grading(self) -> None:
        if self.runner is not None:
            self.runner.cancel()

    # -- the result table ----------------------------------------------------------------

    def set_filter(self, which: str) -> None:
        self.filter = which
        self._repaint()

    def action_cycle_filter(self) -> None:
        if self.live is None:
            return
        filters = result_filters(self.live.graders)
        i = filters.index(self.filter) if self.filter in filters else 0
        self.set_filter(filters[(i + 1) % len(filters)])

    def action_cycle_sort(self) -> None:
        if self.live is None:
            return
        keys: list[str | None] = [None, *self.live.graders]
        i = keys.index(self.sort) if self.sort in keys else 0
        self.sort = keys[(i + 1) % len(keys)]
        self.table.set_columns([*FIXED_COLUMNS, *self._grader_columns(self.live.graders)])
        self._repaint()

    def _cell_style(self, index: int, column: int) -> str | None:
        live = self.live
        grader = column - len(FIXED_COLUMNS)
        if live is None or grader < 0 or grader >= len(live.graders) or index >= len(self.shown):
            return None
        grade = live.rows[self.shown[index]].grades.get(live.graders[grader])
        return verdict(grade)[1]

    def current_row(self) -> ResultRow | None:
        live = self.live
        cursor = self.table.cursor
        if live is None or cursor >= len(self.shown):
            return None
        return live.rows[self.shown[cursor]]

    @on(VirtualTable.Highlighted, "#results")
    def _highlighted(self) -> None:
        self._show_detail()

    @on(VirtualTable.Selected, "#results")
    async def _selected(self) -> None:
        row, live = self.current_row(), self.live
        if row is not None and live is not None:
            await self.app.push_screen(ResultItemDialog(row, live.graders, live.position(row)))

    def _repaint(self) -> None:
        """The only place the result view is redrawn (12 times a second at most)."""
        live = self.live
        key = (id(live), live.version if live else -1, self.filter, self.sort)
        if key == self._painted:
            if self.runner is not None:
                self._show_progress()  # the clock moves even when no grade came in
            return
        self._painted = key
        self._show_all()

    def _show_all(self) -> None:
        live = self.live
        if live is None:
            self.shown = []
        else:
            self.shown = result_view(live.rows, self.filter, self.sort)
        self.table.set_rows(_ResultRows(live, self.shown) if live else (), keep_cursor=True)
        self._show_target()
        self._show_progress()
        self._show_summary()
        self._show_view_line()
        self._show_detail()

    def _show_target(self) -> None:
        text = Text()
        text.append("Eval ", style="dim")
        text.append(self.eval.name if self.eval else "none", style="bold")
        text.append("   on ", style="dim")
        target = self.target
        if target is None:
            text.append("no run yet", style="bold")
        else:
            if target.is_selection:
                text.append("selection ", style="bold magenta")
            text.append(target.label, style="bold")
        text.append("   o chooses", style="dim")
        self.query_one("#target", Static).update(text)

    def _show_progress(self) -> None:
        live, runner = self.live, self.runner
        text = Text()
        if runner is not None and live is not None:
            stats = runner.stats
            done = stats.done_before + stats.graded
            total = stats.total or 1
            width = 20
            full = min(width, round(done / total * width))
            text.append("Grading ", style="bold")
            text.append("█" * full, style="green")
            text.append("░" * (width - full), style="dim")
            text.append(f" {done:,}/{stats.total:,} grades")
            text.append(f" · {stats.passed:,} ✓", style="green")
            text.append(f" {stats.failed:,} ✗", style="red")
            text.append(f" {stats.errored:,} !", style="yellow")
            rate = stats.graded / stats.elapsed if stats.elapsed > 0 else 0
            text.append(f" · {rate:,.0f}/s · {_clock(stats.elapsed)} · ETA {_clock(stats.eta)}")
            if live.retries:
                text.append(f" · {live.retries} retries ({live.last_retry})", style="yellow")
            text.append("   esc cancels", style="dim")
        elif live is not None:
            info = live.info
            status_style = {"done": "green", "cancelled": "yellow", "failed": "red"}
            text.append(f"Eval run {info.id} ", style="bold")
            text.append(info.status, style=status_style.get(info.status, "yellow"))
            text.append(f" · {len(live.rows):,} completions × {len(live.graders)} graders")
            text.append(f" · {info.created_at[:16].replace('T', ' ')}", style="dim")
            if info.status != "done":
                text.append("   R resumes", style="bold yellow")
            text.append("   g grades again", style="dim")
        elif self.eval is None:
            text.append("No eval yet: ", style="bold")
            text.append("p adds ready-made graders (command match + exact for the git task), ")
            text.append("n creates an empty eval.")
        elif not self.eval.graders:
            text.append("This eval has no graders: a adds one, p adds ready-made ones.")
        elif self.target is None:
            text.append("No run to grade: generate one on the Generate screen (2).")
        else:
            text.append("Not graded yet: ", style="bold")
            what = "the selection of run" if self.target.is_selection else "run"
            text.append(f"g grades {what} {self.target.run_id} with {self.eval.name!r}.")
        self.query_one("#progress", Static).update(text)

    def _show_summary(self) -> None:
        summary = self.query_one("#summary", Static)
        live = self.live
        if live is None or not live.graders:
            summary.display = False
            return
        summary.display = True
        table = Table(box=box.SIMPLE_HEAD, expand=True, padding=(0, 1), show_edge=False)
        table.add_column("Grader", style="bold", ratio=1, no_wrap=True, overflow="ellipsis")
        table.add_column("Pass rate", width=20, no_wrap=True)
        table.add_column("Mean", justify="right", width=6, no_wrap=True)
        table.add_column("Passed", justify="right", style="green", width=8, no_wrap=True)
        table.add_column("Failed", justify="right", style="red", width=8, no_wrap=True)
        table.add_column("Errored", justify="right", style="yellow", width=8, no_wrap=True)
        for name in live.graders:
            s: GraderSummary = live.tally.summary(name)
            rate = Text()
            rate.append_text(_bar(s.pass_rate))
            rate.append(f" {_percent(s.pass_rate):>6}", style=_rate_style(s.pass_rate))
            table.add_row(
                name,
                rate,
                score_text(s.mean_score),
                f"{s.passed:,}",
                f"{s.failed:,}",
                f"{s.errored:,}",
            )
        summary.update(table)

    def _show_view_line(self) -> None:
        live = self.live
        text = Text()
        if live is not None:
            text.append(f"{len(self.shown):,} of {len(live.rows):,} items", style="bold")
            text.append(f" · {describe_filter(self.filter)}")
            text.append(f" · by {self.sort + ' score' if self.sort else 'item'}")
            text.append("   f filter · s sort · enter opens · x export", style="dim")
        self.query_one("#view-line", Static).update(text)

    def _show_detail(self) -> None:
        detail = self.query_one("#result-detail", Static)
        row, live = self.current_row(), self.live
        if row is None or live is None:
            detail.update(
                Text("No items match the filter.", style="dim")
                if live is not None and live.rows
                else ""
            )
            return
        text = Text()
        position = live.position(row)
        text.append(f"#{position} " if position is not None else "", style="bold")
        text.append(row.input)
        for name in live.graders:
            grade = row.grades.get(name)
            if grade is None or grade.passed:
                continue
            mark, style = verdict(grade)
            text.append(f"\n{mark} {name}: ", style=f"bold {style}")
            text.append(grade.detail)
        detail.update(text)

    # -- export --------------------------------------------------------------------------

    @work(group="evals-export", exclusive=True, exit_on_error=False)
    async def action_export(self) -> None:
        live = self.live
        if live is None:
            self.notify("Nothing to export: grade a run first (g).", severity="warning")
            return
        store = self.distill.store
        info = live.info
        name = f"{_slug(info.eval_name)}-run{info.run_id}-eval-run{info.id}.csv"
        request = await self.app.push_screen_wait(results_export_dialog(store.exports_dir / name))
        if request is None:
            return
        fmt = "jsonl" if request.format == "jsonl" else "csv"
        try:
            count = await store.in_thread(export_results, store, info.id, request.path, fmt)
        except OSError as error:
            self.notify(
                f"{request.path}: {error}", title="Export failed", severity="error", markup=False
            )
            return
        self.notify(f"Exported {count:,} items to {request.path}.", markup=False)


def _name(value: str) -> str:
    value = " ".join(value.split())
    if not value:
        raise ValueError("An eval name cannot be empty.")
    if len(value) > 200:
        raise ValueError("An eval name is limited to 200 characters.")
    return value
