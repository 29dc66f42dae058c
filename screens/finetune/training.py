"""The training-set panel: where the examples come from (a teacher run, the completions Distill
selected, or a dataset's own references as the teacher), which of a run's labels to keep (only
those passing an eval run, the gate; only those the teacher's vote agreed on enough, the minimum
confidence) and how many that keeps, the student's prompt, the validation share, and the
validation report. It reads itself into a `Source`; building and validating the training file
(which needs the base model's tokenizer and price) is the screen's."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.markup import escape
from textual.message import Message
from textual.widgets import Button, Input, Label, Select, Static

from tui.engine.finetune import (
    FineTuneError,
    Source,
    TrainingSet,
    TrainingSetReport,
    Validation,
    training_set_report,
)
from tui.engine.selection import CompletionSelection, parse_confidence
from tui.engine.store import RunInfo, Store, StoreError

if TYPE_CHECKING:
    from screens.base import DistillHost

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


class TrainingSetPanel(Vertical):
    """The examples the student learns from. Reads the app's store."""

    class Changed(Message):
        """The source, the gate or the minimum confidence changed: a training file built
        before no longer matches the form."""

    class ValidateRequested(Message):
        """The Validate button."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        # What the Completions screen's Distill handed over (kept when another source is chosen).
        self.selection: CompletionSelection | None = None

    @property
    def distill(self) -> DistillHost:
        return cast("DistillHost", self.app)

    def compose(self) -> ComposeResult:
        yield Label("Teacher's outputs: a run, a selection, or references")
        yield Select[str]([], id="source-run", prompt="choose a run")
        yield Static("", id="source-note")
        with Horizontal(classes="row"):
            with Vertical(id="ft-gate-box"):
                yield Label("Gate: pass an eval run")
                yield Select[int]([], id="ft-gate", prompt=NO_GATE)
            with Vertical(id="ft-confidence-box"):
                yield Label("Min confidence")
                yield Input(placeholder="none (0.75, 75%, 6/8)", id="ft-min-confidence")
        yield Static("", id="ft-kept")
        yield Label("Student system prompt (goes into every example)")
        yield Input(id="student-prompt")
        with Horizontal(classes="row"):
            with Vertical(id="ft-fraction-box"):
                yield Label("Validation share")
                yield Input("0.1", id="validation-fraction")
            with Vertical(classes="buttons"):
                yield Button("Validate (v)", id="validate")
        yield Static("Validate to see the report.", id="report")

    # -- what the form holds -------------------------------------------------------------

    @property
    def student_prompt(self) -> str:
        return self.query_one("#student-prompt", Input).value

    def validation_fraction(self) -> float:
        try:
            return float(self.query_one("#validation-fraction", Input).value or 0)
        except ValueError as error:
            raise FineTuneError("the validation share must be a number such as 0.1") from error

    def source(self) -> Source:
        """The examples chosen (raises FineTuneError when none are, or a filter is wrong)."""
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

    # -- the sources ---------------------------------------------------------------------

    def fill_sources(self, prefer: str | None = None) -> None:
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
        elif isinstance(current, str) and any(value == current for _, value in options):
            select.value = current
        elif teacher is not None:
            select.value = run_source(teacher.id)
        self._show_source_note()
        self.fill_gates()

    def _show_source_note(self) -> None:
        chosen = self.query_one("#source-run", Select).value == SELECTION
        note = self.query_one("#source-note", Static)
        note.display = chosen and self.selection is not None
        if self.selection is not None:
            note.update(_selection_text(self.selection))

    @on(Select.Changed, "#source-run")
    def _source_changed(self, event: Select.Changed) -> None:
        self._show_source_note()
        self.fill_gates()
        self.post_message(self.Changed())
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

    def fill_gates(self) -> None:
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
        self.post_message(self.Changed())
        self._show_kept()

    # -- what it keeps, and the report ---------------------------------------------------

    @work(exclusive=True, group="finetune-kept", exit_on_error=False)
    async def _show_kept(self) -> None:
        """How many examples the source gives and why the rest are left out, as it is chosen."""
        kept = self.query_one("#ft-kept", Static)
        try:
            source = self.source()
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

    def show_report(
        self, kept: TrainingSetReport, training: TrainingSet, valid: Validation
    ) -> None:
        """A validated training file: what it keeps, its examples, checks, tokens and cost."""
        self.query_one("#ft-kept", Static).update(_kept_text(kept))
        self.query_one("#report", Static).update(_report_text(training, valid))

    def show_error(self, error: Exception) -> None:
        self.query_one("#report", Static).update(f"[red]{escape(str(error))}[/red]")

    @on(Button.Pressed, "#validate")
    def _validate_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.post_message(self.ValidateRequested())


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
        lines.append(f"[red]Format errors — will not upload:[/red] {escape(validation.errors())}")
    else:
        lines.append("[green]No format errors.[/green]")
    for warning in validation.warnings:
        lines.append(f"[yellow]warning:[/yellow] {escape(warning)}")
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
