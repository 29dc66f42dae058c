"""The Fine-tune screen: step 6 of the recipe (the dashboard's "Distill").

Left: where the examples come from (a teacher run, the completions Distill selected, or a
dataset's own references as the teacher), which of a run's labels to keep (only those passing
an eval run, the gate; only those the teacher's vote agreed on enough, the minimum confidence)
and how many that keeps, the student's prompt, the base model and hyperparameters, and the
validation report (the cookbook's checks, token figures, cost). Under the base model, the base
the job will name on the student's backend (on OpenAI the dated snapshot of an alias, as
preflight resolves it); a model that backend cannot fine-tune says so and cannot be launched.
Right: the workspace's jobs, and for the selected one its status, live events, a loss chart,
its checkpoints; `g` starts step 7 with the fine-tuned model."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.markup import escape
from textual.widgets import Button, Input, Label, ListItem, ListView, RichLog, Select, Static

from screens.base import DistillScreen
from tui.engine.finetune import (
    FineTuneError,
    Hyperparameters,
    Source,
    TrainingSet,
    TrainingSetReport,
    Validation,
    build_training_set,
    launch_job,
    metrics_series,
    token_counter_for,
    training_set_report,
    validate_training_set,
)
from tui.engine.preflight import NotFineTunable, fine_tune_base
from tui.engine.selection import CompletionSelection, parse_confidence
from tui.engine.store import JobInfo, RunInfo, Store, StoreError
from tui.engine.training_data import TokenCounter
from tui.widgets.loss_chart import LossChart
from tui.widgets.progress_line import Figures, ProgressLine

AUTO = "auto"
# The source Select's values: "run:<id>" (a run's outputs), "references:<dataset id>" (the
# dataset's own answers as the teacher), and this one for the completions Distill handed over.
SELECTION = "selection"
RUN = "run:"
REFERENCES = "references:"
NO_GATE = "no gate: every finished completion"


def run_source(run_id: int) -> str:
    return f"{RUN}{run_id}"


def references_source(dataset_id: int) -> str:
    return f"{REFERENCES}{dataset_id}"


def _id_of(value: object, prefix: str) -> int | None:
    if isinstance(value, str) and value.startswith(prefix):
        return int(value.removeprefix(prefix))
    return None


def reference_items(store: Store, dataset_id: int) -> list[int] | None:
    """The items whose references teach: the train split when the dataset has one (the eval
    split's answers would leak into the model graded on them), else every item (None)."""
    train = store.items(dataset_id, "train")
    return [i.id for i in train] if train else None


def sampled(run: RunInfo) -> int:
    """Samples a request the run took (its labels carry a vote share when more than one)."""
    return int(run.params.get("samples", 1))


def _auto_or(value: str, kind: type) -> Any:
    value = value.strip()
    if not value or value == AUTO:
        return AUTO
    try:
        number = kind(value)
    except ValueError as error:
        raise FineTuneError(f"{value!r} is not a {kind.__name__} or 'auto'") from error
    if number <= 0:
        raise FineTuneError(f"{value!r} must be greater than 0")
    return number


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
        self.training: TrainingSet | None = None
        self.validation: Validation | None = None
        self.selected_job: int | None = None
        self._last_status: dict[int, str] = {}
        self._counters: dict[tuple[str, str], TokenCounter | None] = {}
        self._job_ids: list[int] = []
        # What the Completions screen's Distill handed over (kept when another source is chosen).
        self.selection: CompletionSelection | None = None
        # Why the base model cannot be fine-tuned on the student's backend (None: it can).
        self.base_error: str | None = None

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="finetune"):
            with VerticalScroll(id="finetune-form"):
                yield Label("Teacher: a run's outputs, Distill's selection, or references")
                yield Select[str]([], id="source-run", prompt="choose a run")
                yield Static("", id="source-note")
                with Horizontal(classes="row"):
                    with Vertical(id="ft-gate-box"):
                        yield Label("Only completions passing an eval run")
                        yield Select[int]([], id="ft-gate", prompt=NO_GATE)
                    with Vertical(id="ft-confidence-box"):
                        yield Label("Min confidence")
                        yield Input(placeholder="none (0.75, 75%, 6/8)", id="ft-min-confidence")
                yield Static("", id="ft-kept")
                yield Label("Student system prompt (goes into every example)")
                yield Input(id="student-prompt")
                with Horizontal(classes="row"):
                    with Vertical():
                        yield Label("Base model (the student)")
                        yield Input(id="base-model")
                    with Vertical():
                        yield Label("Validation share")
                        yield Input("0.1", id="validation-fraction")
                yield Static("", id="ft-base")
                with Horizontal(classes="row"):
                    with Vertical():
                        yield Label("Epochs")
                        yield Input(AUTO, id="n-epochs")
                    with Vertical():
                        yield Label("Batch size")
                        yield Input(AUTO, id="batch-size")
                    with Vertical():
                        yield Label("LR multiplier")
                        yield Input(AUTO, id="lr")
                with Horizontal(classes="row"):
                    with Vertical():
                        yield Label("Suffix")
                        yield Input("distill", id="suffix")
                    with Vertical():
                        yield Label("Seed")
                        yield Input("0", id="seed", type="integer")
                with Horizontal(classes="row buttons"):
                    yield Button("Validate (v)", id="validate")
                    yield Button("Launch (L)", id="launch", variant="primary")
                yield Static("Validate to see the report.", id="report")
            with Vertical(id="jobs-pane"):
                yield Label("Jobs", classes="section")
                yield ListView(id="jobs")
                yield Static("", id="job-detail")
                yield ProgressLine(id="job-clock")
                yield LossChart(id="loss")
                yield RichLog(id="events", wrap=True, markup=False, max_lines=2000)

    def on_mount(self) -> None:
        self.sub_title = "Fine-tune"
        self.query_one("#base-model", Input).value = self.distill.settings.student
        self._take_selection()
        self._fill_sources(prefer=SELECTION if self.selection is not None else None)
        self._load_jobs()
        self.set_interval(1.0, self._tick)
        # The student's backend decides the base (OpenAI's snapshots): again once connected.
        self.watch(self.app, "backend_label", self._show_base)

    def on_screen_resume(self) -> None:
        if self._take_selection():
            self._fill_sources(prefer=SELECTION)
        else:
            self._fill_gates()  # an eval run of the chosen run may have finished meanwhile

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "launch":
            return self.base_error is None
        return True

    # -- the form ------------------------------------------------------------------------

    def _student_kind(self) -> str:
        """The kind of the student's backend (where jobs run), or the settings' guess."""
        backend = self.distill.backend
        if backend is not None:
            return backend.spec.kind
        return self.distill.settings.backend_kind("student")

    def resolved_base(self) -> str:
        """The base model the job will name (raises NotFineTunable)."""
        model = self.query_one("#base-model", Input).value.strip()
        if not model:
            raise NotFineTunable("name the base model (the student) to fine-tune")
        return fine_tune_base(self.distill.settings, self._student_kind(), model)

    @on(Input.Changed, "#base-model")
    def _show_base(self) -> None:
        line = self.query_one("#ft-base", Static)
        backend = self.distill.backend
        where = backend.label if backend is not None else f"{self._student_kind()} (not started)"
        try:
            base = self.resolved_base()
        except NotFineTunable as error:
            self.base_error = str(error)
            line.update(f"[red]{escape(self.base_error)}[/red]")
        else:
            self.base_error = None
            model = self.query_one("#base-model", Input).value.strip()
            alias = f" (what {escape(model)} names there)" if base != model else ""
            line.update(f"Fine-tunes [b]{escape(base)}[/b]{alias} on {escape(where)}")
        self.query_one("#launch", Button).disabled = self.base_error is not None
        self.refresh_bindings()

    def _take_selection(self) -> bool:
        """The Completions screen's Distill hands its selection over through the app: take it
        once (a selection handed to Evaluate is not this screen's)."""
        selection = self.distill.selection
        if selection is None or selection is self.selection:
            return False
        if self.distill.selection_for != "finetune":
            return False
        self.selection = selection
        return True

    def action_refresh_sources(self) -> None:
        self._fill_sources()

    def _fill_sources(self, prefer: str | None = None) -> None:
        """The runs with finished completions (and the selection, first), then each dataset's
        references as the teacher; the one chosen stays chosen, else `prefer`, else the
        newest teacher run."""
        store = self.distill.store
        runs = [r for r in store.list_runs() if r.n_done > 0]
        options = [
            (f"{r.label} · {r.dataset_name or '?'} · {r.n_done} done", run_source(r.id))
            for r in runs
        ]
        if self.selection is not None:
            n = len(self.selection.completion_ids)
            options.insert(0, (f"the selection · {n:,} completions", SELECTION))
        for dataset in store.list_datasets():
            items = reference_items(store, dataset.id)
            source = Source(dataset_id=dataset.id, reference_item_ids=items)
            kept = training_set_report(store, source).kept
            if kept:
                which = "train split" if items is not None else "all items"
                label = f"references of {dataset.name} as the teacher · {which} · {kept:,}"
                options.append((label, references_source(dataset.id)))
        select = self.query_one("#source-run", Select)
        current = select.value
        select.set_options(options)
        teacher = next((r for r in runs if r.role == "teacher"), runs[0] if runs else None)
        if prefer is not None:
            select.value = prefer
            self.training = self.validation = None
        elif isinstance(current, str) and any(value == current for _, value in options):
            select.value = current
        elif teacher is not None:
            select.value = run_source(teacher.id)
        self._show_source_note()
        self._fill_gates()

    def _show_source_note(self) -> None:
        chosen = self.query_one("#source-run", Select).value == SELECTION
        note = self.query_one("#source-note", Static)
        note.display = chosen and self.selection is not None
        if self.selection is not None:
            note.update(_selection_text(self.selection))

    @on(Select.Changed, "#source-run")
    def _source_changed(self, event: Select.Changed) -> None:
        self._show_source_note()
        self._fill_gates()
        self.training = self.validation = None
        store = self.distill.store
        dataset_id = _id_of(event.value, REFERENCES)
        if dataset_id is None:
            if event.value == SELECTION and self.selection is not None:
                run_ids = self.selection.run_ids
            elif (run_id := _id_of(event.value, RUN)) is not None:
                run_ids = (run_id,)
            else:
                return
            runs = [store.get_run(run_id) for run_id in run_ids]
            dataset_id = next((r.dataset_id for r in runs if r.dataset_id is not None), None)
        prompt = self.query_one("#student-prompt", Input)
        if dataset_id is not None and not prompt.value:
            prompt.value = store.get_dataset(dataset_id).system_prompt

    def _chosen_run(self) -> RunInfo | None:
        run_id = _id_of(self.query_one("#source-run", Select).value, RUN)
        return self.distill.store.get_run(run_id) if run_id is not None else None

    def _fill_gates(self) -> None:
        """The gate and the minimum confidence filter one run's labels: the gate offers that
        run's eval runs; the confidence is there when the run voted over samples."""
        store = self.distill.store
        run = self._chosen_run()
        gate = self.query_one("#ft-gate", Select)
        chosen = gate.value
        eval_runs = store.list_eval_runs(run_id=run.id) if run is not None else []
        gate.prompt = NO_GATE if eval_runs or run is None else "no eval run of this run yet"
        gate.set_options(
            (f"eval run {er.id} · {er.eval_name} · {er.status}", er.id) for er in eval_runs
        )
        if isinstance(chosen, int) and any(er.id == chosen for er in eval_runs):
            gate.value = chosen
        gate.disabled = not eval_runs
        confidence = self.query_one("#ft-min-confidence", Input)
        confidence.disabled = run is None or sampled(run) < 2
        if not confidence.disabled:
            confidence.placeholder = "none (0.75, 75%, 6/8)"
        else:
            confidence.placeholder = "no vote: one sample" if run else "for a run's labels"
        self._show_kept()

    @on(Select.Changed, "#ft-gate")
    @on(Input.Changed, "#ft-min-confidence")
    def _filter_changed(self) -> None:
        self.training = self.validation = None
        self._show_kept()

    def _source(self) -> Source:
        value = self.query_one("#source-run", Select).value
        if value == SELECTION and self.selection is not None:
            selection = self.selection
            return Source(run_ids=selection.run_ids, completion_ids=list(selection.completion_ids))
        dataset_id = _id_of(value, REFERENCES)
        if dataset_id is not None:
            items = reference_items(self.distill.store, dataset_id)
            return Source(dataset_id=dataset_id, reference_item_ids=items)
        run_id = _id_of(value, RUN)
        if run_id is None:
            raise FineTuneError("choose the run whose outputs the student should learn")
        gate = self.query_one("#ft-gate", Select).value
        least = 0.0
        box = self.query_one("#ft-min-confidence", Input)
        if not box.disabled and box.value.strip():
            try:
                least = parse_confidence(box.value)
            except ValueError as error:
                raise FineTuneError(f"min confidence: {error}") from error
        return Source(
            run_id=run_id,
            passing_eval_run_id=gate if isinstance(gate, int) else None,
            min_confidence=least,
        )

    @work(exclusive=True, group="finetune-kept", exit_on_error=False)
    async def _show_kept(self) -> None:
        """How many examples the source gives and why the rest are left out, as it is chosen."""
        kept = self.query_one("#ft-kept", Static)
        try:
            source = self._source()
        except FineTuneError as error:
            value = self.query_one("#source-run", Select).value
            kept.update(f"[red]{escape(str(error))}[/red]" if isinstance(value, str) else "")
            return
        store = self.distill.store
        try:
            report = await store.in_thread(training_set_report, store, source)
        except (FineTuneError, StoreError) as error:
            kept.update(f"[red]{escape(str(error))}[/red]")
            return
        kept.update(_kept_text(report))

    def _build(self) -> tuple[TrainingSet, Validation]:
        source = self._source()
        try:
            fraction = float(self.query_one("#validation-fraction", Input).value or 0)
        except ValueError as error:
            raise FineTuneError("the validation share must be a number such as 0.1") from error
        store = self.distill.store
        training = build_training_set(
            store,
            source,
            system_prompt=self.query_one("#student-prompt", Input).value,
            validation_fraction=fraction,
        )
        epochs = _auto_or(self.query_one("#n-epochs", Input).value, int)
        base = self.query_one("#base-model", Input).value.strip()
        kind = self.distill.backend.spec.kind if self.distill.backend else ""
        if (kind, base) not in self._counters:
            self._counters[(kind, base)] = token_counter_for(
                kind, base, self.distill.settings.local_models
            )
        validation = validate_training_set(
            training,
            count=self._counters[(kind, base)],
            price=self.distill.settings.price(base, "student"),
            n_epochs=None if epochs == AUTO else epochs,
        )
        return training, validation

    def action_validate(self) -> None:
        report = self.query_one("#report", Static)
        try:
            self.training, self.validation = self._build()
            kept = training_set_report(self.distill.store, self._source())
        except (FineTuneError, StoreError) as error:
            report.update(f"[red]{escape(str(error))}[/red]")
            self.training = self.validation = None
            return
        self.query_one("#ft-kept", Static).update(_kept_text(kept))
        report.update(_report_text(self.training, self.validation))

    @on(Button.Pressed, "#validate")
    def _validate_pressed(self) -> None:
        self.action_validate()

    @on(Button.Pressed, "#launch")
    def _launch_pressed(self) -> None:
        self.action_launch()

    def action_launch(self) -> None:
        try:
            base = self.resolved_base()
        except NotFineTunable as error:
            self.notify(str(error), title="Fine-tuning not started", severity="error")
            return
        self.action_validate()
        if self.training is None or self.validation is None:
            return
        if not self.validation.ok:
            self.notify(
                self.validation.errors(),
                title="Not uploaded: fix the training file",
                severity="error",
            )
            return
        backend = self.distill.backend
        if backend is None:
            self.notify("The backend is not connected yet.", severity="warning")
            return
        try:
            hyper = Hyperparameters(
                n_epochs=_auto_or(self.query_one("#n-epochs", Input).value, int),
                batch_size=_auto_or(self.query_one("#batch-size", Input).value, int),
                learning_rate_multiplier=_auto_or(self.query_one("#lr", Input).value, float),
            )
            seed_text = self.query_one("#seed", Input).value.strip()
            seed = int(seed_text) if seed_text else None
        except (FineTuneError, ValueError) as error:
            self.notify(str(error), severity="error")
            return
        self._launch(
            self.training,
            self.validation,
            base,
            hyper,
            self.query_one("#suffix", Input).value.strip() or None,
            seed,
        )

    @work(exclusive=True, group="finetune-launch")
    async def _launch(
        self,
        training: TrainingSet,
        validation: Validation,
        base: str,
        hyper: Hyperparameters,
        suffix: str | None,
        seed: int | None,
    ) -> None:
        backend = self.distill.backend
        assert backend is not None
        try:
            job = await launch_job(
                self.distill.store,
                backend.client,
                training,
                base_model=base,
                hyperparameters=hyper,
                suffix=suffix,
                seed=seed,
                validation=validation,
            )
        except FineTuneError as error:
            self.notify(str(error), title="Fine-tuning not started", severity="error")
            return
        self.notify(f"Job {job.remote_id} created ({job.status}).")
        self.selected_job = job.id
        self._load_jobs()
        self.distill.watch_job(job.id)

    # -- jobs ----------------------------------------------------------------------------

    def _load_jobs(self) -> None:
        jobs = self.distill.store.list_jobs()
        view = self.query_one("#jobs", ListView)
        # Rows carry no ids: clear() removes them asynchronously, and a new row with the same
        # id would collide with the one being removed. The index maps to _job_ids instead.
        self._job_ids = [job.id for job in jobs]
        view.clear()
        view.extend(
            ListItem(
                Label(f"{job.remote_id}  {job.status:<16} {job.fine_tuned_model or job.base_model}")
            )
            for job in jobs
        )
        if jobs and self.selected_job is None:
            self.selected_job = jobs[0].id
        if self.selected_job in self._job_ids:
            view.index = self._job_ids.index(self.selected_job)
        self._show_job()

    @on(ListView.Highlighted, "#jobs")
    def _job_highlighted(self, event: ListView.Highlighted) -> None:
        index = self.query_one("#jobs", ListView).index
        if index is None or index >= len(self._job_ids):
            return
        job_id = self._job_ids[index]
        if job_id != self.selected_job:
            self.selected_job = job_id
            self.query_one("#events", RichLog).clear()
            self._shown_events = 0
            self._show_job()

    _shown_events = 0

    def _show_job(self) -> None:
        detail = self.query_one("#job-detail", Static)
        if self.selected_job is None:
            detail.update("No jobs yet: validate, then launch (L).")
            self.query_one("#job-clock", ProgressLine).show("")
            return
        store = self.distill.store
        job = store.get_job(self.selected_job)
        update = self.distill.job_updates.get(job.id)
        lines = [f"[b]{job.remote_id}[/b]  {job.status}  base {job.base_model}"]
        if update is not None and update.trained_tokens:
            lines.append(f"trained tokens {update.trained_tokens:,}")
        lines.append(f"created {job.created_at[:19].replace('T', ' ')}")
        finish = update.estimated_finish if update is not None and not job.finished else None
        self.query_one("#job-clock", ProgressLine).follow(lambda: _clock_figures(job, finish))
        if job.fine_tuned_model:
            lines.append(f"[green]fine-tuned model {job.fine_tuned_model}[/green] — g generates")
        if job.error:
            lines.append(f"[red]{escape(job.error)}[/red]")
        if update is not None and update.checkpoints:
            cps = ", ".join(
                f"step {c.get('step_number')}: {_fmt(c.get('metrics', {}))}"
                for c in update.checkpoints[:5]
            )
            lines.append(f"checkpoints {cps}")
        detail.update("\n".join(lines))
        events = store.job_events(job.id)
        log = self.query_one("#events", RichLog)
        for event in events[self._shown_events :]:
            log.write(f"{event.created_at[11:19]} {event.level:<5} {event.message}")
        self._shown_events = len(events)
        self.query_one(LossChart).show(metrics_series(events))

    def _tick(self) -> None:
        """Once a second: redraw from what the app's job watchers stored."""
        updates = self.distill.job_updates
        statuses = {job_id: u.job.status for job_id, u in updates.items()}
        if statuses != self._last_status:
            self._last_status = statuses
            self._load_jobs()
        elif self.selected_job in updates:
            self._show_job()

    @work(group="finetune-cancel")
    async def action_cancel_job(self) -> None:
        backend = self.distill.backend
        if self.selected_job is None or backend is None:
            return
        job = self.distill.store.get_job(self.selected_job)
        if job.finished:
            self.notify(f"Job {job.remote_id} already {job.status}.")
            return
        await backend.client.fine_tuning.jobs.cancel(job.remote_id)
        self.notify(f"Cancelling {job.remote_id}…")

    def action_generate(self) -> None:
        if self.selected_job is None:
            return
        job = self.distill.store.get_job(self.selected_job)
        if not job.fine_tuned_model:
            self.notify("The selected job has no fine-tuned model yet.", severity="warning")
            return
        starter = getattr(self.distill, "start_generation_with", None)
        if starter is None:
            self.notify(f"Fine-tuned model: {job.fine_tuned_model}")
            return
        starter(job.fine_tuned_model, self.query_one("#student-prompt", Input).value)


def _fmt(metrics: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.3f}" for k, v in metrics.items() if isinstance(v, float))


def _clock_figures(job: JobInfo, estimated_finish: int | None) -> Figures | None:
    """The job's clocks: time since it was created (until it finished), and the backend's
    estimate of when it ends."""
    try:
        start = datetime.fromisoformat(job.created_at)
        end = datetime.fromisoformat(job.updated_at) if job.finished else None
    except ValueError:
        return None
    elapsed = ((end or datetime.now(start.tzinfo)) - start).total_seconds()
    eta = max(0.0, estimated_finish - time.time()) if estimated_finish else None
    return Figures(elapsed=elapsed, running=eta is not None, eta=eta)


def _selection_text(selection: CompletionSelection) -> str:
    runs = ", ".join(str(r) for r in selection.run_ids)
    plural = "s" if len(selection.run_ids) > 1 else ""
    return (
        f"Training on the selection from Completions: [b]{len(selection.completion_ids):,}"
        f"[/b] completions of run{plural} {runs}, filter "
        f"[b]{escape(selection.description)}[/b] (its finished outputs become the examples; "
        "to keep only confident labels, filter it there with conf:0.75)"
    )


def _kept_text(report: TrainingSetReport) -> str:
    """ "Kept 180 of 200 completions · dropped: 12 failed the gate (eval run 4), ...": what
    the examples are, and what was left out and why."""
    return escape(report.note()[:1].upper() + report.note()[1:])


def _report_text(training: TrainingSet, validation: Validation) -> str:
    lines = [
        f"[b]{len(training.train)}[/b] training and [b]{len(training.validation)}[/b] "
        "validation examples"
    ]
    if not validation.ok:
        lines.append(f"[red]Format errors — will not upload:[/red] {validation.errors()}")
    else:
        lines.append("[green]No format errors.[/green]")
    for warning in validation.warnings:
        lines.append(f"[yellow]warning:[/yellow] {warning}")
    stats = validation.stats
    if stats is not None:
        label = " (estimated: ≈4 characters a token)" if validation.tokens_are_estimates else ""
        d = stats.total_tokens
        a = stats.assistant_tokens
        m = stats.n_messages
        lines += [
            f"messages per example: min {m.min:.0f} · mean {m.mean:.1f} · max {m.max:.0f}",
            f"tokens per example{label}: min {d.min:.0f} · median {d.median:.0f} · "
            f"p90 {d.p90:.0f} · max {d.max:.0f}",
            f"assistant tokens: mean {a.mean:.1f} · max {a.max:.0f}",
            f"billed tokens ≈ {stats.billing_tokens:,} × {stats.n_epochs} epochs = "
            f"{stats.trained_tokens:,}",
        ]
        if validation.cost is not None:
            lines.append(f"estimated training cost ${validation.cost:,.2f}")
        else:
            lines.append("training cost: no price for this model (free locally)")
    return "\n".join(lines)
