"""The run form's model picker: the models of every open backend, one section per backend under
its label and roles ("teacher, judge: openai" / "student: local") when there are several. It
also says where a model runs (`ModelPicker.target`): on the backend it was picked from, else on
the run's role's backend if that one serves it, else on the first that does."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import Label, OptionList, Select

from tui.engine.backend import Backend, Backends, ModelGroup, list_models_by_backend
from tui.engine.settings import ROLES as BACKEND_ROLES
from tui.engine.settings import Role

if TYPE_CHECKING:
    from screens.base import DistillHost

# A picked model: (index of its backend's group, model name); a group's title is (index, "").
Choice = tuple[int, str]


@dataclass(frozen=True)
class RunTarget:
    """Where a run's requests go and whose prices it bills at."""

    backend: Backend | None  # None until the backends are connected
    kind: str  # "openai", "url", "local" (the settings' guess before connecting)
    price_role: Role  # `settings.price(model, price_role)`: that backend's role's prices


def backend_role(role: str) -> Role:
    """The backend role a run of the form's role uses: a teacher run the teacher's backend,
    a student's or a fine-tuned student's run the student's."""
    return "teacher" if role == "teacher" else "student"


def backends_of(distill: DistillHost) -> Backends | None:
    """The app's open backends; a lone backend (set before roles had their own) serves all."""
    if distill.backends is not None:
        return distill.backends
    if distill.backend is not None:
        return Backends(dict.fromkeys(BACKEND_ROLES, distill.backend))
    return None


def group_title(group: ModelGroup) -> str:
    """A section of the picker: "teacher, judge: openai"."""
    return f"{', '.join(group.roles)}: {group.label}"


class ModelPicker(Horizontal):
    """A form row (its label blank, under the model box) picking one of the backends' models.
    Reads the app's backends and settings."""

    @dataclass
    class Picked(Message):
        """A model was picked (the form puts it in its model box)."""

        model: str

    @dataclass
    class Loaded(Message):
        """The backends' models were listed: every name once, sorted."""

        models: list[str]

    def __init__(self, *, classes: str | None = None) -> None:
        super().__init__(classes=classes)
        self.models: list[str] = []  # every backend's models, each name once, sorted
        self.groups: list[ModelGroup] = []  # the models by backend, as the picker shows them
        self._picked: Choice | None = None

    @property
    def distill(self) -> DistillHost:
        return cast("DistillHost", self.app)

    def compose(self) -> ComposeResult:
        yield Label("")
        yield Select[Choice]([], id="models", prompt="backend not connected", compact=True)

    @on(Select.Changed, "#models")
    def _model_picked(self, event: Select.Changed) -> None:
        event.stop()
        value = event.value
        if isinstance(value, tuple) and value[1]:
            self._picked = value
            self.post_message(self.Picked(value[1]))

    # -- where a model runs --------------------------------------------------------------

    def target(self, model: str, role: str) -> RunTarget:
        """The backend a run of `model` in `role` (student, teacher, fine-tuned) goes to: the
        one it was picked from; else the role's backend if it lists the model (or could not
        say); else the first backend that lists it; else the role's backend."""
        wanted = backend_role(role)
        group: ModelGroup | None = None
        if self._picked is not None and self._picked[1] == model:
            group = self.groups[self._picked[0]]
        else:
            own = next((g for g in self.groups if wanted in g.roles), None)
            if own is not None and (model in own.models or own.error is not None):
                group = own
            else:
                group = next((g for g in self.groups if model in g.models), own)
        settings = self.distill.settings
        if group is None:
            backends = backends_of(self.distill)
            backend = backends.by_role[wanted] if backends is not None else None
            kind = backend.spec.kind if backend is not None else settings.backend_kind(wanted)
            return RunTarget(backend, kind, wanted)
        price_role = wanted if wanted in group.roles else group.roles[0]
        return RunTarget(group.backend, group.backend.spec.kind, price_role)

    # -- models at the backends ----------------------------------------------------------

    @work(exclusive=True, group="models", exit_on_error=False)
    async def load_models(self) -> None:
        """Every backend's models, for the picker and the model box's suggestions."""
        backends = backends_of(self.distill)
        if backends is None:
            return
        groups = await list_models_by_backend(backends)
        self.groups = groups
        self._picked = None
        self.models = sorted({m for group in groups for m in group.models})
        for group in groups:
            if group.error is not None:
                where = f" of {group_title(group)}" if len(groups) > 1 else ""
                self.notify(
                    group.error,
                    title=f"Listing the backend's models{where} failed",
                    severity="warning",
                    markup=False,
                )
        self._fill()
        self.post_message(self.Loaded(self.models))

    def _fill(self) -> None:
        """One backend: its models, as they always were. Several: a section per backend,
        its title (not selectable) then its models."""
        select: Select[Choice] = self.query_one("#models", Select)
        groups = self.groups
        options: list[tuple[Text, Choice]] = []
        titles: list[int] = []
        if len(groups) == 1:
            (group,) = groups
            if group.error is not None:
                select.prompt = "could not list models"
            else:
                select.prompt = f"pick one of {len(group.models)} models"
            options = [(Text(m), (0, m)) for m in group.models]
        else:
            n_models = sum(len(g.models) for g in groups)
            select.prompt = f"pick one of {n_models} models on {len(groups)} backends"
            for index, group in enumerate(groups):
                title = Text(group_title(group), style="bold")
                if group.error is not None:
                    title.append(" · could not list models", style="yellow")
                titles.append(len(options))
                options.append((title, (index, "")))
                options += [(Text(f"  {m}"), (index, m)) for m in group.models]
        select.set_options(options)
        overlay = select.query_one(OptionList)
        blank = overlay.option_count - len(options)  # the prompt's line, when there is one
        for position in titles:
            overlay.disable_option_at_index(blank + position)
