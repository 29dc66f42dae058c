"""The job-launch panel: the base model (the student), under it the base the job will name on
the student's backend (on OpenAI the dated snapshot of an alias, as preflight resolves it; a
model that backend cannot fine-tune says so and cannot be launched), the hyperparameters, the
suffix and seed, and the Launch button. Uploading and creating the job are the screen's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.markup import escape
from textual.message import Message
from textual.widgets import Button, Input, Label, Static

from tui.engine.finetune import FineTuneError, Hyperparameters
from tui.engine.preflight import NotFineTunable, fine_tune_base

if TYPE_CHECKING:
    from screens.base import DistillHost

AUTO = "auto"


def auto_or(value: str, kind: type) -> Any:
    """A hyperparameter typed in the form: a number greater than 0, or AUTO."""
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


@dataclass(frozen=True)
class JobSettings:
    """What the job is created with, beyond its base and training file."""

    hyperparameters: Hyperparameters
    suffix: str | None
    seed: int | None


class LaunchPanel(Vertical):
    """The job to create. Reads the app's settings and the student's backend for the base."""

    @dataclass
    class BaseChecked(Message):
        """The base model was resolved again; `error` says why it cannot be fine-tuned."""

        error: str | None

    class LaunchRequested(Message):
        """The Launch button."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        # Why the base model cannot be fine-tuned on the student's backend (None: it can).
        self.base_error: str | None = None

    @property
    def distill(self) -> DistillHost:
        return cast("DistillHost", self.app)

    def compose(self) -> ComposeResult:
        yield Label("Base model (the student)")
        yield Input(id="base-model")
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
            yield Button("Launch (L)", id="launch", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#base-model", Input).value = self.distill.settings.student
        # The student's backend decides the base (OpenAI's snapshots): again once connected.
        self.watch(self.app, "backend_label", self._show_base)

    # -- the base ------------------------------------------------------------------------

    @property
    def base_model(self) -> str:
        """The model typed in the form (what the user calls it)."""
        return self.query_one("#base-model", Input).value.strip()

    def _student_kind(self) -> str:
        """The kind of the student's backend (where jobs run), or the settings' guess."""
        backend = self.distill.backend
        if backend is not None:
            return backend.spec.kind
        return self.distill.settings.backend_kind("student")

    def resolved_base(self) -> str:
        """The base model the job will name (raises NotFineTunable)."""
        model = self.base_model
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
            model = self.base_model
            alias = f" (what {escape(model)} names there)" if base != model else ""
            line.update(f"Fine-tunes [b]{escape(base)}[/b]{alias} on {escape(where)}")
        self.query_one("#launch", Button).disabled = self.base_error is not None
        self.post_message(self.BaseChecked(self.base_error))

    # -- the job's settings --------------------------------------------------------------

    def n_epochs(self) -> int | None:
        """The epochs typed (None: auto); raises FineTuneError."""
        epochs = auto_or(self.query_one("#n-epochs", Input).value, int)
        return None if epochs == AUTO else cast(int, epochs)

    def job_settings(self) -> JobSettings:
        """The hyperparameters, suffix and seed typed (raises FineTuneError, ValueError)."""
        hyper = Hyperparameters(
            n_epochs=auto_or(self.query_one("#n-epochs", Input).value, int),
            batch_size=auto_or(self.query_one("#batch-size", Input).value, int),
            learning_rate_multiplier=auto_or(self.query_one("#lr", Input).value, float),
        )
        seed_text = self.query_one("#seed", Input).value.strip()
        return JobSettings(
            hyperparameters=hyper,
            suffix=self.query_one("#suffix", Input).value.strip() or None,
            seed=int(seed_text) if seed_text else None,
        )

    @on(Button.Pressed, "#launch")
    def _launch_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.post_message(self.LaunchRequested())
