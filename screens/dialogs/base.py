"""What every modal dialog is built on (`Dialog`: esc cancels, a box, an error line, OK and
Cancel), and the two small dialogs any screen asks with: a yes/no question and one line of
text. Each returns a typed result (None when cancelled)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

T = TypeVar("T")


class Dialog(ModalScreen[T | None], Generic[T]):
    """Esc cancels; the body sits in one bordered box with an error line and buttons."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="dialog.cancel")]
    DEFAULT_CLASSES = "dialog"

    def action_cancel(self) -> None:
        self.dismiss(None)

    def show_error(self, message: str) -> None:
        self.query_one("#dialog-error", Static).update(message)

    def buttons(self, ok: str = "OK", cancel: str = "Cancel") -> ComposeResult:
        # Errors quote file names, columns and values: shown as written, not as markup.
        yield Static("", id="dialog-error", classes="error", markup=False)
        with Horizontal(classes="buttons"):
            yield Button(ok, variant="primary", id="ok")
            yield Button(cancel, id="cancel")

    @on(Button.Pressed, "#cancel")
    def _cancel_pressed(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed, "#ok")
    def _ok_pressed(self) -> None:
        self.submit()

    def submit(self) -> None:  # overridden
        raise NotImplementedError


class ConfirmDialog(Dialog[bool]):
    def __init__(self, title: str, message: str, ok: str = "Yes", cancel: str = "Cancel") -> None:
        super().__init__()
        self.title_text = title
        self.message = message
        self.ok = ok
        self.cancel = cancel

    def compose(self) -> ComposeResult:
        with Vertical(classes="box"):
            yield Label(self.title_text, classes="title")
            yield Static(self.message, markup=False)
            yield from self.buttons(self.ok, self.cancel)

    def on_mount(self) -> None:
        self.query_one("#ok", Button).focus()

    def submit(self) -> None:
        self.dismiss(True)


class TextPromptDialog(Dialog[str]):
    """One line of text, checked by `validate` (which raises ValueError with the message)."""

    def __init__(
        self,
        title: str,
        value: str = "",
        *,
        placeholder: str = "",
        validate: Callable[[str], str] | None = None,
    ) -> None:
        super().__init__()
        self.title_text = title
        self.value = value
        self.placeholder = placeholder
        self.validate_value = validate

    def compose(self) -> ComposeResult:
        with Vertical(classes="box"):
            yield Label(self.title_text, classes="title")
            yield Input(self.value, placeholder=self.placeholder, id="value")
            yield from self.buttons()

    @on(Input.Submitted)
    def submit(self) -> None:
        value = self.query_one("#value", Input).value
        if self.validate_value is not None:
            try:
                value = self.validate_value(value)
            except ValueError as exc:
                self.show_error(str(exc))
                return
        self.dismiss(value)
