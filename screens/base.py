"""What every screen of the recipe shares: the header, the status line and the footer, the
command palette's entries for the screen's keys, and what a screen may ask of the app.

Screens never import the app (nor each other): the app imports them through its registry
(tui/screen_registry.py), and a screen sees the app as the `DistillHost` below."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol, cast

from textual.actions import parse
from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Header

from tui.widgets.status_line import StatusLine

if TYPE_CHECKING:
    from tui.engine.backend import Backend, Backends
    from tui.engine.finetune import JobUpdate
    from tui.engine.selection import CompletionSelection
    from tui.engine.settings import Settings
    from tui.engine.store import JobInfo, Store


class JobEnded(Message):
    """A fine-tuning job the app followed has ended (the store says how): the screen in view
    reads it again; the others do when shown."""

    def __init__(self, job: JobInfo) -> None:
        super().__init__()
        self.job = job


class DistillHost(Protocol):
    """The app as screens see it (tui.app.DistillApp is one; mypy checks it there)."""

    store: Store
    settings: Settings
    backend: Backend | None  # the student's (and the default) backend
    # Every role's open backend (None until connected): the teacher's may be another.
    backends: Backends | None
    job_updates: dict[int, JobUpdate]
    # The dataset open on the Dataset screen (the Generate screen's default).
    current_dataset_id: int | None
    # The completions last handed over by the Completions screen, and the screen (mode) they
    # were handed to: "evals" (Evaluate) or "finetune" (Distill).
    selection: CompletionSelection | None
    selection_for: str | None

    async def action_switch_mode(self, mode: str) -> None: ...

    async def hand_over(self, selection: CompletionSelection, mode: str) -> None: ...

    def screen_key(self, mode: str) -> str: ...

    def watch_job(self, job_id: int) -> None: ...

    def backend_for(self, role: str) -> Backend | None: ...

    def start_generation_with(self, model: str, system_prompt: str = "") -> None: ...


class DistillScreen(Screen[None]):
    """Base of the recipe's screens: subclasses implement `compose_body`."""

    @property
    def distill(self) -> DistillHost:
        return cast("DistillHost", self.app)

    def compose(self) -> ComposeResult:
        yield Header()
        yield from self.compose_body()
        yield StatusLine()
        yield Footer(compact=True)

    def compose_body(self) -> ComposeResult:
        yield from ()

    def palette_commands(self) -> Iterable[SystemCommand]:
        """The command palette's (ctrl+p) entries for this screen: one per action bound on the
        screen, except those `check_action` disables right now, then `palette_extras`."""
        group = self.sub_title or type(self).__name__
        seen: set[str] = set()
        for binding in type(self).BINDINGS:
            if not isinstance(binding, Binding) or binding.action in seen:
                continue
            seen.add(binding.action)
            _, name, parameters = parse(binding.action)
            if not self.check_action(name, parameters):
                continue
            first_key = dataclasses.replace(binding, key=binding.key.split(",")[0].strip())
            yield SystemCommand(
                f"{group}: {binding.description}",
                f"key {self.app.get_key_display(first_key)}",
                lambda action=binding.action: self.run_action(action),
            )
        yield from self.palette_extras()

    def palette_extras(self) -> Iterable[SystemCommand]:
        """Palette entries beyond the screen's keys (e.g. each filter of a table)."""
        return ()
