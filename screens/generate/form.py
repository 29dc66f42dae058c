"""The run form: dataset, split, role, model, system prompt, sampling, metadata, few-shot
retrieval (from all train references or the recipe's labelled pool), the teacher's n samples
a request and the vote that picks the label, budget, live or batch (tui/engine/batch.py), the
estimate of what the run will cost (`RunEstimate`, estimate.py: live and at the batch price),
and the Start / Resume / Cancel buttons (`RunControls`, run_controls.py). It reads itself into a
`RunForm` (tui/engine/run_form.py) and says what the user asked for with its own messages;
starting, resuming and cancelling are the screen's.

The model picker under the model box (`ModelPicker`, models.py) lists every open backend's
models and says where a model runs (`RunFormPanel.target`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.suggester import SuggestFromList
from textual.widget import Widget
from textual.widgets import Button, Input, Label, Select, Static, TextArea

from screens.generate.estimate import RunEstimate
from screens.generate.models import ModelPicker, RunTarget
from screens.generate.run_controls import RunControls
from tui.engine.run_form import (
    ROLES,
    SPLIT_CHOICES,
    FormError,
    RunForm,
    default_metadata,
    format_metadata,
    latest_fine_tuned_model,
    recipe_pool,
    reply_cap,
)
from tui.engine.store import DatasetInfo
from tui.engine.voting import VOTE_RULES

if TYPE_CHECKING:
    from screens.base import DistillHost

# Form fields whose errors can be pointed at: FormError.field → widget id.
FIELD_IDS = {
    "dataset": "dataset",
    "model": "model",
    "split": "split",
    "temperature": "temperature",
    "max_tokens": "max-tokens",
    "seed": "seed",
    "metadata": "metadata",
    "few_shot": "few-shot",
    "examples_from": "examples-from",
    "samples": "samples",
    "vote": "vote",
    "budget": "budget",
    "mode": "mode",
}
MODE_LABELS = {"live": "live requests", "batch": "batch (≤ 24 h)"}
# How the vote decides that two samples give the same answer, in the user's words.
VOTE_LABELS = {
    "command_match": "same command (command_match)",
    "normalised": "same text (normalised)",
}
ALL_TRAIN = "all train references"


class RunFormPanel(Vertical):
    """The form of a new run. Reads the app's store, settings and backend for its defaults,
    its model picker and its estimate."""

    @dataclass
    class Submitted(Message):
        """Start (ctrl+s or the button): a new run from `form`."""

        form: RunForm

    @dataclass
    class ResumeRequested(Message):
        """Resume (ctrl+r or the button); `form` holds the budget for the rest."""

        form: RunForm

    class CancelRequested(Message):
        """The Cancel button (shown while a run goes)."""

    @dataclass
    class DatasetChanged(Message):
        """Another dataset was chosen (by the user or by loading)."""

        dataset: DatasetInfo | None

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.datasets: list[DatasetInfo] = []
        self._dataset_options: list[tuple[str, int]] = []
        # What the form's defaults were, to replace them (and only them) when inputs change.
        self._default_model = ""
        self._default_prompt = ""
        self._default_metadata = ""
        # The recipe's labelled pool of the chosen dataset (item ids), when it has one.
        self.pool: list[int] | None = None
        # What a blank max tokens means for the chosen dataset (None: the backend's default).
        self.reply_cap: int | None = None

    @property
    def distill(self) -> DistillHost:
        return cast("DistillHost", self.app)

    # -- layout --------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        field = self._field
        with VerticalScroll(id="gen-form"):
            yield from field("Dataset", Select[int]([], id="dataset", compact=True))
            splits = [(s, s) for s in SPLIT_CHOICES]
            yield from field(
                "Split", Select(splits, value="all", allow_blank=False, id="split", compact=True)
            )
            roles = [(r, r) for r in ROLES]
            yield from field(
                "Role", Select(roles, value="student", allow_blank=False, id="role", compact=True)
            )
            yield from field("Model", Input(placeholder="model name", id="model", compact=True))
            yield ModelPicker(classes="field")
            yield Label("System prompt", classes="field-label")
            yield TextArea(id="system-prompt", compact=True)
            yield from field(
                "Temperature", Input(placeholder="default", id="temperature", compact=True)
            )
            yield from field(
                "Max tokens", Input(placeholder="default", id="max-tokens", compact=True)
            )
            yield from field("Seed", Input(placeholder="none", id="seed", compact=True))
            yield from field(
                "Metadata", Input(placeholder="key=value …", id="metadata", compact=True)
            )
            yield from field("Few-shot k", Input("0", id="few-shot", compact=True, type="integer"))
            yield from field(
                "Examples",
                Select(
                    [(ALL_TRAIN, "train")],
                    value="train",
                    allow_blank=False,
                    id="examples-from",
                    compact=True,
                ),
                row_id="examples-from-row",
            )
            yield from field("Samples n", Input("1", id="samples", compact=True, type="integer"))
            votes = [(VOTE_LABELS[rule], rule) for rule in VOTE_RULES]
            yield from field(
                "Vote",
                Select(votes, value="normalised", allow_blank=False, id="vote", compact=True),
                row_id="vote-row",
            )
            yield from field("Budget $", Input(placeholder="no cap", id="budget", compact=True))
            modes = [(label, mode) for mode, label in MODE_LABELS.items()]
            yield from field(
                "Send as", Select(modes, value="live", allow_blank=False, id="mode", compact=True)
            )
        # In the form's place while a run goes (set_running).
        yield Static("", id="run-settings", markup=False)
        yield RunEstimate(self.read_form, self.target, id="estimate")
        yield RunControls(id="gen-buttons")

    @staticmethod
    def _field(label: str, widget: Widget, row_id: str | None = None) -> ComposeResult:
        with Horizontal(classes="field", id=row_id):
            yield Label(label)
            yield widget

    def on_mount(self) -> None:
        self._show_teacher_rows()

    def _show_teacher_rows(self) -> None:
        """Show the Examples row only with few-shot retrieval on, and the Vote row only
        with more than one sample: rows that mean nothing otherwise stay out of the way."""

        def number(widget_id: str) -> int:
            text = self.query_one(f"#{widget_id}", Input).value.strip()
            return int(text) if text.isdigit() else 0

        self.query_one("#examples-from-row").display = number("few-shot") > 0
        self.query_one("#vote-row").display = number("samples") > 1

    # -- what the user asks for ----------------------------------------------------------

    def submit(self) -> None:
        self.post_message(self.Submitted(self.read_form()))

    def request_resume(self) -> None:
        self.post_message(self.ResumeRequested(self.read_form()))

    @on(Button.Pressed, "#start")
    def _start_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.submit()

    @on(Button.Pressed, "#resume")
    def _resume_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.request_resume()

    @on(Button.Pressed, "#cancel")
    def _cancel_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.post_message(self.CancelRequested())

    def set_running(self, running: bool, settings: Text | None = None) -> None:
        """While a run goes, the form (and its estimate) gives its place to `settings`, what
        the run was started with, and Cancel replaces Start and Resume.

        Hidden, not disabled: disabling the form restyled its ~200 widgets (with Select's
        parts) at each start and end of a run, 150–290 ms in which no key was read (the
        slowest key of bench/generation.py's typing pass); hiding it lays the panel out
        again, ~40 ms. Hidden widgets take no focus, clicks or keys."""
        form = self.query_one("#gen-form")
        if running and form.has_focus_within:
            self.screen.set_focus(None)
        form.display = not running
        self.query_one("#estimate").display = not running
        summary = self.query_one("#run-settings", Static)
        summary.update(settings if running and settings is not None else "")
        summary.display = running
        self.query_one(RunControls).set_running(running)

    def focus_first(self) -> None:
        """The cursor on the form's first field (the dataset), the form scrolled to its top."""
        self.query_one("#gen-form", VerticalScroll).scroll_home(animate=False)
        self.query_one("#dataset", Select).focus()

    def cancelling(self) -> None:
        """The run was asked to stop: one press of Cancel is enough."""
        self.query_one(RunControls).cancelling()

    def show_error(self, error: FormError) -> None:
        """Say what is wrong and put the cursor in the field at fault."""
        self.notify(str(error), title="Not started", severity="error", markup=False)
        widget_id = FIELD_IDS.get(error.field)
        if widget_id:
            self.query_one(f"#{widget_id}").focus()

    # -- reading and filling the form ----------------------------------------------------

    @property
    def dataset(self) -> DatasetInfo | None:
        value = self.query_one("#dataset", Select).value
        return next((d for d in self.datasets if d.id == value), None)

    def read_form(self) -> RunForm:
        dataset = self.dataset

        def value(widget_id: str) -> str:
            return self.query_one(f"#{widget_id}", Input).value

        return RunForm(
            dataset_id=dataset.id if dataset else None,
            model=value("model"),
            role=str(self.query_one("#role", Select).value),
            split=str(self.query_one("#split", Select).value),
            system_prompt=self.query_one("#system-prompt", TextArea).text,
            temperature=value("temperature"),
            max_tokens=value("max-tokens"),
            seed=value("seed"),
            metadata=value("metadata"),
            retrieve_k=value("few-shot"),
            budget=value("budget"),
            samples=value("samples"),
            vote=str(self.query_one("#vote", Select).value),
            examples_from=str(self.query_one("#examples-from", Select).value),
            pool=self.pool,
            mode=str(self.query_one("#mode", Select).value),
            reply_cap=self._reply_cap_now(),
        )

    def load_datasets(self) -> None:
        """The workspace's datasets; keeps the one chosen, else the app's current one."""
        self.datasets = self.distill.store.list_datasets()
        select = self.query_one("#dataset", Select)
        current = select.value
        options = [(f"{d.name} ({d.n_items:,})", d.id) for d in self.datasets]
        if options == self._dataset_options:
            self._load_pool()  # the recipe may have chosen one since
            self._load_reply_cap()  # references may have been written since
            return
        self._dataset_options = options
        # Text, not markup: a dataset may be called "ops [b]".
        select.set_options([(Text(label), value) for label, value in options])
        ids = [d.id for d in self.datasets]
        preferred = self.distill.current_dataset_id
        if isinstance(current, int) and current in ids:
            select.value = current
        elif preferred in ids:
            select.value = preferred
        elif ids:
            select.value = ids[0]

    def prefill(self, *, model: str, role: str, system_prompt: str | None = None) -> None:
        """Set up the form for a given model (the Fine-tune screen's "generate with it")."""
        self.query_one("#role", Select).value = role
        self.query_one("#model", Input).value = model
        if system_prompt:
            self.query_one("#system-prompt", TextArea).text = system_prompt
        self._schedule_estimate()

    def _apply_defaults(self) -> None:
        """Fill the prompt, model and metadata from the dataset and role, unless edited."""
        dataset = self.dataset
        role = str(self.query_one("#role", Select).value)
        prompt = self.query_one("#system-prompt", TextArea)
        new_prompt = dataset.system_prompt if dataset else ""
        if prompt.text in ("", self._default_prompt) and prompt.text != new_prompt:
            prompt.text = new_prompt
        self._default_prompt = new_prompt
        model = self.query_one("#model", Input)
        new_model = self._model_for(role)
        if model.value in ("", self._default_model):
            model.value = new_model
        self._default_model = new_model
        metadata = self.query_one("#metadata", Input)
        new_metadata = format_metadata(default_metadata(dataset.name if dataset else "", role))
        if metadata.value in ("", self._default_metadata):
            metadata.value = new_metadata
        self._default_metadata = new_metadata

    def _model_for(self, role: str) -> str:
        settings = self.distill.settings
        if role == "teacher":
            return settings.teacher
        if role == "fine-tuned":
            return latest_fine_tuned_model(self.distill.store) or ""
        return settings.student

    @on(Select.Changed, "#dataset")
    def _dataset_changed(self) -> None:
        dataset = self.dataset
        if dataset is not None:
            split = self.query_one("#split", Select)
            chosen = split.value
            split.set_options(
                [
                    (f"all ({dataset.n_items:,})", "all"),
                    (f"train ({dataset.n_train:,})", "train"),
                    (f"eval ({dataset.n_eval:,})", "eval"),
                ]
            )
            split.value = chosen if chosen in SPLIT_CHOICES else "all"
        self._apply_defaults()
        self._load_pool()
        self._load_reply_cap()
        self.post_message(self.DatasetChanged(dataset))
        self._schedule_estimate()

    def _load_pool(self) -> None:
        """Offer the recipe's labelled pool as the source of retrieved examples when the
        recipe has chosen one for this dataset (<workspace>/recipe-state.json)."""
        dataset = self.dataset
        pool = recipe_pool(self.distill.store.directory, dataset.id if dataset else None)
        if pool == self.pool:
            return
        self.pool = pool
        select = self.query_one("#examples-from", Select)
        chosen = select.value
        options = [(ALL_TRAIN, "train")]
        if pool:
            options.append((f"the recipe's labelled pool ({len(pool):,})", "pool"))
        select.set_options(options)
        select.value = chosen if chosen == "pool" and pool else "train"

    @work(exclusive=True, group="reply-cap", exit_on_error=False)
    async def _load_reply_cap(self) -> None:
        """What a blank max tokens means for the chosen dataset, said in the field (a scan
        of the references: ~25 ms at 100,000 items, off the UI's loop)."""
        dataset = self.dataset
        store = self.distill.store
        longest = await store.in_thread(store.longest_reference, dataset.id) if dataset else 0
        cap = reply_cap(longest)
        if cap != self.reply_cap:
            self.reply_cap = cap
            self._schedule_estimate()

    def _reply_cap_now(self) -> int | None:
        """What a blank max tokens sends: the dataset's cap on the embedded backend, whose
        small models may never stop; elsewhere the backend's default (a hosted model stops
        by itself, and a reasoning model needs room for its reasoning)."""
        if self.reply_cap is None:
            return None
        model = self.query_one("#model", Input).value.strip()
        role = str(self.query_one("#role", Select).value)
        return self.reply_cap if self.target(model, role).kind == "local" else None

    @on(Select.Changed, "#role")
    def _role_changed(self) -> None:
        self._apply_defaults()
        self._schedule_estimate()

    @on(ModelPicker.Picked)
    def _model_picked(self, event: ModelPicker.Picked) -> None:
        self.query_one("#model", Input).value = event.model
        self._schedule_estimate()

    # -- the models at the backends, and where a model runs ------------------------------

    @property
    def picker(self) -> ModelPicker:
        return self.query_one(ModelPicker)

    @property
    def models(self) -> list[str]:
        """Every backend's models, each name once, sorted (empty until listed)."""
        return self.picker.models

    def load_models(self) -> None:
        """List every backend's models, for the picker and the model box's suggestions."""
        self.picker.load_models()

    @on(ModelPicker.Loaded)
    def _models_loaded(self, event: ModelPicker.Loaded) -> None:
        self.query_one("#model", Input).suggester = SuggestFromList(
            event.models, case_sensitive=False
        )
        self._schedule_estimate()

    def target(self, model: str, role: str) -> RunTarget:
        """The backend a run of `model` in `role` goes to, and whose prices it bills at."""
        return self.picker.target(model, role)

    @on(Select.Changed, "#split")
    @on(Select.Changed, "#examples-from")
    @on(Select.Changed, "#mode")
    @on(Input.Changed)
    @on(TextArea.Changed)
    def _form_changed(self) -> None:
        self._show_teacher_rows()
        self._schedule_estimate()

    def _schedule_estimate(self) -> None:
        cap = self._reply_cap_now()
        field = self.query_one("#max-tokens", Input)
        field.placeholder = "default" if cap is None else f"auto ({cap})"
        self.query_one(RunEstimate).schedule()
