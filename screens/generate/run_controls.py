"""The Generate form's buttons: Start and Resume while no run goes, Cancel while one does.

A press bubbles up as `Button.Pressed` to the form, which reads itself into what the user
asked for (`RunFormPanel.Submitted`, `ResumeRequested`, `CancelRequested`)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Button


class RunControls(Horizontal):
    """Start ^s, Resume ^r and Cancel esc, shown by whether a run goes."""

    def compose(self) -> ComposeResult:
        yield Button("Start ^s", id="start", variant="primary", compact=True)
        yield Button("Resume ^r", id="resume", compact=True)
        yield Button("Cancel esc", id="cancel", variant="error", compact=True)

    def on_mount(self) -> None:
        self.set_running(False)

    def set_running(self, running: bool) -> None:
        """Cancel replaces Start and Resume while a run goes; a new run's Cancel can be
        pressed again."""
        self.query_one("#start", Button).display = not running
        self.query_one("#resume", Button).display = not running
        cancel = self.query_one("#cancel", Button)
        cancel.display = running
        cancel.disabled = False

    def cancelling(self) -> None:
        """The run was asked to stop: one press of Cancel is enough."""
        self.query_one("#cancel", Button).disabled = True
