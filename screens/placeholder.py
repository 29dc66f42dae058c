"""A screen of the recipe that is not built yet says so plainly."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Center, Middle
from textual.widgets import Static

from screens.base import DistillScreen


class PlaceholderScreen(DistillScreen):
    def __init__(self, title: str, what: str, issue: int) -> None:
        super().__init__()
        self.step_title = title
        self.what = what
        self.issue = issue

    def compose_body(self) -> ComposeResult:
        with Middle(), Center():
            yield Static(
                f"[b]{self.step_title}[/b]\n\n{self.what}\n\n"
                f"[dim]Not built yet in this version (tracked as issue {self.issue}).[/dim]",
                classes="placeholder",
            )

    def on_mount(self) -> None:
        self.sub_title = self.step_title
