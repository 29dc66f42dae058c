"""The Fine-tune screen: step 6 of the recipe (the dashboard's "Distill").

Left, the training set (`TrainingSetPanel`: where the examples come from, what it keeps, the
student's prompt and the validation report) and the job to create (`LaunchPanel`: the base
model and the base the job will name, the hyperparameters). Right, the workspace's jobs and the
selected one's detail (`JobsPanel`). The screen composes the panels, routes their messages and
owns what spans them: building and validating the training file (the base model decides its
token counts and price), launching a job, cancelling one, and `g`, which starts step 7 with the
fine-tuned model."""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll

from screens.base import DistillScreen
from screens.finetune.jobs import JobsPanel
from screens.finetune.launch import JobSettings, LaunchPanel
from screens.finetune.training import SELECTION, TrainingSetPanel
from tui.engine.finetune import (
    FineTuneError,
    TrainingSet,
    Validation,
    build_training_set,
    cancel_job,
    launch_job,
    token_counter_for,
    training_set_report,
    validate_training_set,
)
from tui.engine.preflight import NotFineTunable
from tui.engine.selection import CompletionSelection
from tui.engine.store import StoreError
from tui.engine.training_data import TokenCounter


class FineTuneScreen(DistillScreen):
    CSS_PATH = "finetune.tcss"
    BINDINGS = [
        Binding("v", "validate", "Validate", id="finetune.validate"),
        Binding("L", "launch", "Launch", id="finetune.launch"),
        Binding("c", "cancel_job", "Cancel job", id="finetune.cancel"),
        Binding("g", "generate", "Generate with it", id="finetune.generate"),
        Binding("r", "refresh_sources", "Refresh", id="finetune.refresh"),
    ]

    def __init__(self) -> None:
        super().__init__()
        # The training file last validated (None once the form no longer matches it).
        self.training: TrainingSet | None = None
        self.validation: Validation | None = None
        self._counters: dict[tuple[str, str], TokenCounter | None] = {}

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="finetune"):
            with VerticalScroll(id="finetune-form"):
                yield TrainingSetPanel(id="ft-training")
                yield LaunchPanel(id="ft-launch")
            yield JobsPanel(id="jobs-pane")

    def on_mount(self) -> None:
        self.sub_title = "Fine-tune"
        self._take_selection()
        self._fill_sources(prefer=SELECTION if self.selection is not None else None)

    def on_screen_resume(self) -> None:
        if self._take_selection():
            self._fill_sources(prefer=SELECTION)
        else:
            self.training_panel.fill_gates()  # an eval run of the chosen run may have finished

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "launch":
            launch = self.query(LaunchPanel)
            return not launch or launch.first().base_error is None
        return True

    # -- the panels ----------------------------------------------------------------------

    @property
    def training_panel(self) -> TrainingSetPanel:
        return self.query_one(TrainingSetPanel)

    @property
    def launch_panel(self) -> LaunchPanel:
        return self.query_one(LaunchPanel)

    @property
    def jobs_panel(self) -> JobsPanel:
        return self.query_one(JobsPanel)

    @property
    def selection(self) -> CompletionSelection | None:
        """What the Completions screen's Distill handed over."""
        return self.training_panel.selection

    @property
    def selected_job(self) -> int | None:
        return self.jobs_panel.selected_job

    @on(LaunchPanel.BaseChecked)
    @on(JobsPanel.JobSelected)
    def _refresh_keys(self) -> None:
        self.refresh_bindings()

    @on(TrainingSetPanel.Changed)
    def _training_set_changed(self) -> None:
        self.training = self.validation = None

    @on(TrainingSetPanel.ValidateRequested)
    def _validate_requested(self) -> None:
        self.action_validate()

    @on(LaunchPanel.LaunchRequested)
    def _launch_requested(self) -> None:
        self.action_launch()

    # -- the sources ---------------------------------------------------------------------

    def _take_selection(self) -> bool:
        """The Completions screen's Distill hands its selection over through the app: take it
        once (a selection handed to Evaluate is not this screen's)."""
        selection = self.distill.selection
        if selection is None or selection is self.selection:
            return False
        if self.distill.selection_for != "finetune":
            return False
        self.training_panel.selection = selection
        return True

    def action_refresh_sources(self) -> None:
        self._fill_sources()

    def _fill_sources(self, prefer: str | None = None) -> None:
        if prefer is not None:
            self.training = self.validation = None
        self.training_panel.fill_sources(prefer)

    # -- the training file ---------------------------------------------------------------

    def _build(self) -> tuple[TrainingSet, Validation]:
        panel = self.training_panel
        source = panel.source()
        fraction = panel.validation_fraction()
        store = self.distill.store
        training = build_training_set(
            store, source, system_prompt=panel.student_prompt, validation_fraction=fraction
        )
        epochs = self.launch_panel.n_epochs()
        base = self.launch_panel.base_model
        kind = self.distill.backend.spec.kind if self.distill.backend else ""
        if (kind, base) not in self._counters:
            self._counters[(kind, base)] = token_counter_for(
                kind, base, self.distill.settings.local_models
            )
        validation = validate_training_set(
            training,
            count=self._counters[(kind, base)],
            price=self.distill.settings.price(base, "student"),
            n_epochs=epochs,
        )
        return training, validation

    def action_validate(self) -> None:
        panel = self.training_panel
        try:
            self.training, self.validation = self._build()
            kept = training_set_report(self.distill.store, panel.source())
        except (FineTuneError, StoreError) as error:
            panel.show_error(error)
            self.training = self.validation = None
            return
        panel.show_report(kept, self.training, self.validation)

    # -- the job -------------------------------------------------------------------------

    def action_launch(self) -> None:
        try:
            base = self.launch_panel.resolved_base()
        except NotFineTunable as error:
            self.notify(str(error), title="Fine-tuning not started", severity="error", markup=False)
            return
        self.action_validate()
        if self.training is None or self.validation is None:
            return
        if not self.validation.ok:
            self.notify(
                self.validation.errors(),
                title="Not uploaded: fix the training file",
                severity="error",
                markup=False,
            )
            return
        if self.distill.backend is None:
            self.notify("The backend is not connected yet.", severity="warning")
            return
        try:
            job_settings = self.launch_panel.job_settings()
        except (FineTuneError, ValueError) as error:
            self.notify(str(error), severity="error", markup=False)
            return
        self._launch(self.training, self.validation, base, job_settings)

    @work(exclusive=True, group="finetune-launch")
    async def _launch(
        self, training: TrainingSet, validation: Validation, base: str, job: JobSettings
    ) -> None:
        backend = self.distill.backend
        assert backend is not None
        try:
            created = await launch_job(
                self.distill.store,
                backend.client,
                training,
                base_model=base,
                hyperparameters=job.hyperparameters,
                suffix=job.suffix,
                seed=job.seed,
                validation=validation,
            )
        except FineTuneError as error:
            self.notify(str(error), title="Fine-tuning not started", severity="error", markup=False)
            return
        self.notify(f"Job {created.remote_id} created ({created.status}).", markup=False)
        self.jobs_panel.select(created.id)
        self.distill.watch_job(created.id)

    @work(group="finetune-cancel")
    async def action_cancel_job(self) -> None:
        backend = self.distill.backend
        if self.selected_job is None or backend is None:
            return
        job = self.distill.store.get_job(self.selected_job)
        if job.finished:
            self.notify(f"Job {job.remote_id} already {job.status}.", markup=False)
            return
        try:
            job = await cancel_job(self.distill.store, backend.client, job.id)
        except FineTuneError as error:
            self.notify(str(error), title="Not cancelled", severity="warning", markup=False)
            return
        self.notify(f"Job {job.remote_id}: {job.status}.", markup=False)

    def action_generate(self) -> None:
        if self.selected_job is None:
            return
        job = self.distill.store.get_job(self.selected_job)
        if not job.fine_tuned_model:
            self.notify("The selected job has no fine-tuned model yet.", severity="warning")
            return
        starter = getattr(self.distill, "start_generation_with", None)
        if starter is None:
            self.notify(f"Fine-tuned model: {job.fine_tuned_model}", markup=False)
            return
        starter(job.fine_tuned_model, self.training_panel.student_prompt)
