"""The Generate screen: steps 3 and 5 of the recipe (and 7, with the fine-tuned student).

Left, the run form (`RunFormPanel`). Right, the dataset's runs (`RunsPanel`), the run on view
(`LiveRunView`: its items with their status and the text of one item as it streams), and the
progress line. The screen composes the panels, routes their messages, and owns what spans
them: starting, resuming and cancelling a run, and the generation worker.

A run is generated in a process of its own (tui/engine/run_process.py). A run sent as
batches ("Send as: batch") is followed by a `BatchRunner` instead, on a thread: esc stops
following (the batches go on at the backend), and ctrl+r on the run, or opening this screen
after a restart, follows its batches again until their results are in."""

from __future__ import annotations

import asyncio
from functools import partial

from openai import AsyncOpenAI
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical

from screens.base import DistillScreen
from screens.generate.form import RunFormPanel
from screens.generate.live import LiveRunView
from screens.generate.live_run import LiveRun
from screens.generate.progress import run_figures
from screens.generate.run_header import run_settings
from screens.generate.run_notice import run_notice
from screens.generate.runner import make_runner
from screens.generate.runs import RunsPanel
from tui.engine.backend import closing
from tui.engine.batch import BatchRunner, runs_with_batches
from tui.engine.generation import RunFinished, RunStats, create_run
from tui.engine.offloop import EngineThread
from tui.engine.run_form import FormError, RunForm
from tui.engine.run_process import RunProcess
from tui.engine.store import DatasetInfo, RunInfo
from tui.widgets.progress_line import Figures, ProgressLine
from tui.widgets.virtual_table import VirtualTable


class GenerateScreen(DistillScreen):
    CSS_PATH = "generate.tcss"
    BINDINGS = [
        Binding("ctrl+s", "start", "Start", id="generate.start"),
        Binding("ctrl+r", "resume", "Resume run", id="generate.resume"),
        Binding("escape", "cancel_run", "Cancel run", id="generate.cancel"),
        Binding("n", "new_run", "New run", id="generate.new_run"),
        Binding("f", "follow", "Follow latest", id="generate.follow"),
        Binding("slash", "filter", "Filter items", key_display="/", id="generate.filter"),
    ]

    # A batch's first poll, and the longest wait between two (the wait grows between them).
    BATCH_POLL = (2.0, 60.0)

    def __init__(self) -> None:
        super().__init__()
        self.generator: RunProcess | BatchRunner | None = None
        # The thread a batch runner runs on (its own event loop: see _begin).
        self.engine: EngineThread[RunFinished] | None = None
        self.stats: RunStats | None = None  # of the last generator, kept after it ends
        # A run's process started ahead, its imports done, so that a run starts at once.
        self.spare: asyncio.subprocess.Process | None = None
        self._elsewhere: int | None = None  # the run on view the recipe was generating

    # -- layout --------------------------------------------------------------------------

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="generate"):
            yield RunFormPanel(id="gen-left")
            with Vertical(id="gen-live"):
                yield RunsPanel(id="runs-panel")
                yield LiveRunView(id="live-run")
                yield ProgressLine(id="progress")

    def on_mount(self) -> None:
        self.sub_title = "Generate"
        self.run_form.load_datasets()
        self.runs_panel.is_generating = self.distill.store.is_generating
        self.watch(self.app, "backend_label", self._backend_changed)
        # Not a text box: the number keys that switch screens must keep working on arrival.
        self.runs_table.focus()
        self._start_spare()
        self.set_interval(1.0, self._follow_elsewhere)

    async def on_unmount(self) -> None:
        await RunProcess.stop_spare(self.spare)
        self.spare = None

    @work(group="spare", exit_on_error=False)
    async def _start_spare(self) -> None:
        if self.spare is None or self.spare.returncode is not None:
            spare = await RunProcess.spawn()
            if self.is_mounted:
                self.spare = spare
            else:
                await RunProcess.stop_spare(spare)

    def on_screen_resume(self) -> None:
        if self.generator is None:
            self.run_form.load_datasets()
            self._load_runs()
        if not self.models:
            self._backend_changed()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "cancel_run":
            # Not running: esc falls through to the app's "back".
            return self.generator is not None
        if action in ("follow", "filter"):
            return self.live is not None
        return True

    # -- the panels ----------------------------------------------------------------------

    @property
    def run_form(self) -> RunFormPanel:
        return self.query_one(RunFormPanel)

    @property
    def runs_panel(self) -> RunsPanel:
        return self.query_one(RunsPanel)

    @property
    def live_view(self) -> LiveRunView:
        return self.query_one(LiveRunView)

    @property
    def progress_line(self) -> ProgressLine:
        return self.query_one(ProgressLine)

    @property
    def runs_table(self) -> VirtualTable:
        return self.runs_panel.table

    @property
    def items_table(self) -> VirtualTable:
        return self.live_view.items_table

    @property
    def dataset(self) -> DatasetInfo | None:
        return self.run_form.dataset

    @property
    def runs(self) -> list[RunInfo]:
        return self.runs_panel.runs

    @property
    def models(self) -> list[str]:
        return self.run_form.models

    @property
    def live(self) -> LiveRun | None:
        return self.live_view.live

    def prefill(self, *, model: str, role: str, system_prompt: str | None = None) -> None:
        """Set up the form for a given model (the Fine-tune screen's "generate with it")."""
        self.run_form.prefill(model=model, role=role, system_prompt=system_prompt)

    def _backend_changed(self) -> None:
        if self.distill.backend is not None and not self.models:
            self.run_form.load_models()
        self._follow_batches()

    def _follow_batches(self) -> None:
        """After a restart: follow the newest run of the dataset on view whose batches are
        still at the backend (their ids are in the workspace)."""
        dataset = self.dataset
        if self.generator is not None or self.distill.backend is None or dataset is None:
            return
        waiting = set(runs_with_batches(self.distill.store))
        runs = [r for r in self.runs if r.id in waiting]
        if runs:
            self.notify(f"Following run {runs[0].id}'s batches at the backend again.")
            self._begin(runs[0].id, None, batch=True)

    # -- runs ----------------------------------------------------------------------------

    @on(RunFormPanel.DatasetChanged)
    def _dataset_changed(self) -> None:
        self._load_runs(view_latest=True)
        self._follow_batches()

    def _load_runs(self, *, view_latest: bool = False) -> None:
        dataset = self.dataset
        runs = self.distill.store.list_runs(dataset.id) if dataset else []
        self.runs_panel.show_runs(runs, dataset, keep_cursor=not view_latest)
        if view_latest and self.generator is None:
            if runs:
                self._view_run(runs[0].id)
            else:
                self._clear_view()

    @on(RunsPanel.Highlighted)
    def _run_highlighted(self, event: RunsPanel.Highlighted) -> None:
        live = self.live
        if self.generator is None and (live is None or live.run.id != event.run.id):
            self._view_run(event.run.id)

    @on(RunsPanel.Chosen)
    def _run_chosen(self) -> None:
        self.items_table.focus()

    def _follow_elsewhere(self) -> None:
        """Once a second: the run on view, if the recipe (Recipe view) generates it, is read
        again from the store, its finished items shown as they finish; when it stops, the
        view and the runs table say how it ended."""
        live, store = self.live, self.distill.store
        if live is not None and self.generator is None and store.is_generating(live.run.id):
            self._elsewhere = live.run.id
            self._sync_elsewhere(live)
            self._load_runs()  # its row's counts too
        elif self._elsewhere is not None:
            run_id, self._elsewhere = self._elsewhere, None
            self._load_runs()
            if live is not None and live.run.id == run_id and self.generator is None:
                self._view_run(run_id)

    @work(exclusive=True, group="generate-elsewhere", exit_on_error=False)
    async def _sync_elsewhere(self, live: LiveRun) -> None:
        store = self.distill.store
        rows = await store.in_thread(store.completions, live.run.id)
        if self.live is live:
            live.sync(rows)

    def _view_run(self, run_id: int) -> None:
        store = self.distill.store
        live = LiveRun(
            store.get_run(run_id),
            store.run_items(run_id),
            store.completions(run_id),
            store.run_batches(run_id),
        )
        self.stats = None
        self.live_view.show_run(live)
        self.progress_line.follow(self._figures)
        self.refresh_bindings()

    def _clear_view(self) -> None:
        self.live_view.clear(
            "No runs of this dataset yet: fill in the form and start one (ctrl+s)."
        )
        self.progress_line.show("")
        self.refresh_bindings()

    def _figures(self) -> Figures | None:
        """The progress line of the run on view (read REPAINT_HZ times a second)."""
        live = self.live
        if live is None:
            return None
        generator = self.generator
        # The generator replaces its totals when its run starts: read them each time.
        stats = generator.stats if generator is not None else self.stats
        target = self.run_form.target(live.run.model, live.run.role)
        return run_figures(
            live,
            stats if generator is not None or live.finished is not None else None,
            running=generator is not None,
            elsewhere=self.distill.store.is_generating(live.run.id),
            price=self.distill.settings.price(live.run.model, target.price_role),
            local=target.kind == "local",
        )

    # -- start, resume, cancel -----------------------------------------------------------

    async def action_start(self) -> None:
        await self._start(self.run_form.read_form())

    async def action_resume(self) -> None:
        await self._resume(self.run_form.read_form())

    def action_cancel_run(self) -> None:
        generator, engine = self.generator, self.engine
        if generator is None:
            return
        if isinstance(generator, BatchRunner):
            if engine is None:
                return
            engine.call(generator.stop)  # on the runner's own loop, on its thread
        else:
            generator.cancel()  # said to the run's process
        self.run_form.cancelling()

    def action_new_run(self) -> None:
        """Into the form, at its first field: the screen opens on the runs table (so the
        number keys switch screens), and the form is six tabs away from it."""
        if not self._said_running():
            self.run_form.focus_first()

    def action_filter(self) -> None:
        self.live_view.filter_box.focus()

    def action_follow(self) -> None:
        self.live_view.follow_latest()
        self.notify("The stream panel follows the latest reply.", timeout=2)

    @on(RunFormPanel.CancelRequested)
    def _cancel_requested(self) -> None:
        self.action_cancel_run()

    @on(RunFormPanel.Submitted)
    async def _submitted(self, event: RunFormPanel.Submitted) -> None:
        await self._start(event.form)

    @on(RunFormPanel.ResumeRequested)
    async def _resume_requested(self, event: RunFormPanel.ResumeRequested) -> None:
        await self._resume(event.form)

    async def _start(self, form: RunForm) -> None:
        """A new run from the form; the generation goes on in a worker."""
        if self._busy():
            return
        try:
            spec = form.to_spec()
            budget = form.budget_cap()
        except FormError as error:
            self.run_form.show_error(error)
            return
        store = self.distill.store
        run_id = await store.in_thread(create_run, store, spec)
        self._load_runs()
        self.runs_panel.move_to(0)
        self._begin(run_id, budget, batch=form.batch())

    async def _resume(self, form: RunForm) -> None:
        """Generate what the highlighted run lacks, within the form's budget."""
        if self._busy():
            return
        run = self.runs_panel.selected()
        if run is None:
            self.notify("No run to resume: pick one in the runs table.", severity="warning")
            return
        store = self.distill.store
        if store.is_generating(run.id):
            self.notify(
                f"Run {run.id} is being generated already, by the recipe (the Recipe view, 0: "
                "esc there stops it).",
                severity="warning",
            )
            return
        pending = await store.in_thread(store.pending_items, run.id)
        # A run whose batches are still at the backend is followed, whatever the form says.
        batched = bool(await store.in_thread(store.unfinished_batches, run.id))
        if not pending and not batched:
            self.notify(f"Run {run.id} has nothing left to generate: every item is done.")
            return
        try:
            budget = form.budget_cap()
            batch = batched or form.batch()
        except FormError as error:
            self.run_form.show_error(error)
            return
        self._begin(run.id, budget, batch=batch)

    def _said_running(self) -> bool:
        """Whether a run goes (said, when it does: the form is hidden until it ends)."""
        if self.generator is not None:
            self.notify("A run is going: esc cancels it first.", severity="warning")
            return True
        return False

    def _busy(self) -> bool:
        if self._said_running():
            return True
        if self.distill.backend is None:
            self.notify(
                "The backend is not connected yet (see the status line).", severity="warning"
            )
            return True
        return False

    def _begin(self, run_id: int, budget: float | None, *, batch: bool = False) -> None:
        """Generate the run (screens/generate/runner.py says on what); the UI reads the
        totals and drains the events at the live view's repaint rate."""
        settings = self.distill.settings
        run = self.distill.store.get_run(run_id)
        # The backend the model was picked from (a teacher on OpenAI, a student served
        # locally...), at that backend's prices.
        target = self.run_form.target(run.model, run.role)
        backend = target.backend or self.distill.backend
        assert backend is not None
        spare, self.spare = (None, self.spare) if batch else (self.spare, None)
        generator, client = make_runner(
            self.distill.store,
            backend,
            settings,
            settings.price(run.model, target.price_role),
            budget=budget,
            batch=batch,
            spare=spare,
            batch_poll=self.BATCH_POLL,
        )
        self.generator = generator
        self.engine = EngineThread(f"generate-run-{run_id}") if batch else None
        self._view_run(run_id)
        live = self.live
        assert live is not None
        live.idle = "in batch" if batch else "queued"
        self.runs_panel.track(run_id, lambda: generator.stats)
        self._set_running(True, run_settings(run, budget, batch=batch))
        self._generate(generator, self.engine, live, client)

    @work(exclusive=True, group="generate", exit_on_error=False)
    async def _generate(
        self,
        generator: RunProcess | BatchRunner,
        engine: EngineThread[RunFinished] | None,
        live: LiveRun,
        client: AsyncOpenAI | None,
    ) -> None:
        inbox = live.receive()

        try:
            start = partial(generator.run, live.run.id, on_event=inbox.put)
            if engine is not None:
                finished = await engine.run(partial(closing, client, start))
            else:
                finished = await start()
        finally:
            live.catch_up()  # every event in, before the view says the run ended
            self.stats = generator.stats
            self.generator = None
            self.engine = None
            if self.is_mounted:
                self._start_spare()
                self.runs_panel.untrack()
                self._set_running(False)
                self._load_runs()
                self.live_view.invalidate()
        self._report(finished)

    def _report(self, finished: RunFinished) -> None:
        notice = run_notice(finished)
        self.notify(
            notice.message,
            title=notice.title,
            severity=notice.severity,
            timeout=notice.timeout,
            markup=False,
        )

    def _set_running(self, running: bool, settings: Text | None = None) -> None:
        self.run_form.set_running(running, settings)
        if running:
            self.items_table.focus()
        self.refresh_bindings()
