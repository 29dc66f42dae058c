"""The status line under every screen: backend, teacher and student models, workspace."""

from __future__ import annotations

import contextlib
from pathlib import Path

from textual.app import RenderResult
from textual.markup import escape
from textual.widget import Widget


class StatusLine(Widget):
    DEFAULT_CSS = """
    StatusLine {
        height: 1;
        padding: 0 1;
        background: $panel;
        color: $text-muted;
    }
    """

    def on_mount(self) -> None:
        self.watch(self.app, "backend_label", self._changed, init=False)

    def _changed(self) -> None:
        self.refresh()

    def render(self) -> RenderResult:
        app = self.app
        settings = getattr(app, "settings", None)
        if settings is None:
            return ""
        backend = getattr(app, "backend_label", "")
        workspace = getattr(app, "workspace", "")
        with contextlib.suppress(ValueError, TypeError):
            workspace = Path(workspace).resolve().relative_to(Path.cwd())
        # A window that only looks says so on every screen (one writer per workspace).
        read_only = getattr(getattr(app, "store", None), "read_only", False)
        flag = "[reverse b] READ-ONLY [/] " if read_only else ""
        # Paths and model names are shown as written: "[" in them is not markup.
        return (
            f"{flag}[b]{escape(backend)}[/b] │ teacher [b]{escape(settings.teacher)}[/b] │ "
            f"student [b]{escape(settings.student)}[/b] │ {escape(str(workspace))}"
        )
