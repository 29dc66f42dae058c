"""The dialogs that change a dataset's items: one item (add or edit), the system prompt, and a
random train/eval split."""

from __future__ import annotations

from dataclasses import dataclass

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import Input, Label, Select, Static, TextArea

from screens.dialogs.base import Dialog
from tui.engine.store import Item

SPLIT_CHOICES = [("unassigned", ""), ("train", "train"), ("eval", "eval")]


@dataclass(frozen=True)
class ItemEdit:
    input: str
    reference: str
    split: str


class EditItemDialog(Dialog[ItemEdit]):
    """Add or edit one item. An empty or over-long request is refused with a message."""

    BINDINGS = [Binding("ctrl+s", "save", "Save", id="dialog.save")]

    def __init__(self, item: Item | None = None) -> None:
        super().__init__()
        self.item = item

    def compose(self) -> ComposeResult:
        item = self.item
        with Vertical(classes="box wide"):
            yield Label("Edit item" if item else "Add item", classes="title")
            yield Label("Request")
            yield TextArea(item.input if item else "", id="input", classes="short")
            yield Label("Reference (the answer you expect; optional)")
            yield TextArea(item.reference if item else "", id="reference", classes="short")
            yield Label("Split")
            yield Select(
                SPLIT_CHOICES, value=item.split if item else "", allow_blank=False, id="split"
            )
            yield Static("ctrl+s saves, esc cancels", classes="hint")
            yield from self.buttons("Save")

    def action_save(self) -> None:
        self.submit()

    def submit(self) -> None:
        from tui.engine.datasets import validate_request

        text = self.query_one("#input", TextArea).text
        try:
            text = validate_request(text)
        except ValueError as exc:
            self.show_error(str(exc))
            return
        split = self.query_one("#split", Select).value
        self.dismiss(
            ItemEdit(
                input=text,
                reference=self.query_one("#reference", TextArea).text.strip(),
                split=split if isinstance(split, str) else "",
            )
        )


class SystemPromptDialog(Dialog[str]):
    BINDINGS = [Binding("ctrl+s", "save", "Save", id="dialog.save")]

    def __init__(self, prompt: str) -> None:
        super().__init__()
        self.prompt = prompt

    def compose(self) -> ComposeResult:
        with Vertical(classes="box wide"):
            yield Label(
                "System prompt (sent before every request of this dataset)", classes="title"
            )
            yield TextArea(self.prompt, id="prompt")
            yield Static("ctrl+s saves, esc cancels", classes="hint")
            yield from self.buttons("Save")

    def action_save(self) -> None:
        self.submit()

    def submit(self) -> None:
        text = self.query_one("#prompt", TextArea).text.strip()
        if len(text) > 32_000:
            self.show_error("The system prompt is longer than 32,000 characters.")
            return
        self.dismiss(text)


@dataclass(frozen=True)
class SplitRequest:
    eval_fraction: float
    seed: int


class SplitDialog(Dialog[SplitRequest]):
    def __init__(self, eval_fraction: float | None, seed: int | None) -> None:
        super().__init__()
        self.eval_fraction = eval_fraction or 0.2
        self.seed = seed if seed is not None else 0

    def compose(self) -> ComposeResult:
        with Vertical(classes="box"):
            yield Label("Random train/eval split", classes="title")
            yield Static("Every item is assigned again; the same seed gives the same split.")
            yield Label("Eval fraction (0–1)")
            yield Input(str(self.eval_fraction), id="fraction")
            yield Label("Seed")
            yield Input(str(self.seed), id="seed", type="integer")
            yield from self.buttons("Split")

    @on(Input.Submitted)
    def submit(self) -> None:
        try:
            fraction = float(self.query_one("#fraction", Input).value)
            if not 0 < fraction < 1:
                raise ValueError
        except ValueError:
            self.show_error("The eval fraction must be a number between 0 and 1, e.g. 0.2.")
            return
        try:
            seed = int(self.query_one("#seed", Input).value)
        except ValueError:
            self.show_error("The seed must be a whole number.")
            return
        self.dismiss(SplitRequest(fraction, seed))
