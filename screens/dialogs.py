"""Modal dialogs shared by the screens. Each returns a typed result (None when cancelled)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.markup import escape
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Select, Static, TextArea
from textual.widgets.option_list import Option

from tui.engine.datasets import file_problem
from tui.engine.store import DatasetInfo, Item

SPLIT_CHOICES = [("unassigned", ""), ("train", "train"), ("eval", "eval")]


T = TypeVar("T")


class Dialog(ModalScreen[T | None], Generic[T]):
    """Esc cancels; the body sits in one bordered box with an error line and buttons."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="dialog.cancel")]
    DEFAULT_CLASSES = "dialog"

    def action_cancel(self) -> None:
        self.dismiss(None)

    def show_error(self, message: str) -> None:
        self.query_one("#dialog-error", Static).update(message)

    def buttons(self, ok: str = "OK") -> ComposeResult:
        # Errors quote file names, columns and values: shown as written, not as markup.
        yield Static("", id="dialog-error", classes="error", markup=False)
        with Horizontal(classes="buttons"):
            yield Button(ok, variant="primary", id="ok")
            yield Button("Cancel", id="cancel")

    @on(Button.Pressed, "#cancel")
    def _cancel_pressed(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed, "#ok")
    def _ok_pressed(self) -> None:
        self.submit()

    def submit(self) -> None:  # overridden
        raise NotImplementedError


class ConfirmDialog(Dialog[bool]):
    def __init__(self, title: str, message: str, ok: str = "Yes") -> None:
        super().__init__()
        self.title_text = title
        self.message = message
        self.ok = ok

    def compose(self) -> ComposeResult:
        with Vertical(classes="box"):
            yield Label(self.title_text, classes="title")
            yield Static(self.message, markup=False)
            yield from self.buttons(self.ok)

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


FORMATS = [("from the file name", ""), ("seed JSON", "json"), ("JSONL", "jsonl"), ("CSV", "csv")]
EXPORT_FORMATS = [
    ("seed JSON", "json"),
    ("JSONL (input, reference, split)", "jsonl"),
    ("JSONL (OpenAI chat messages)", "chat-jsonl"),
    ("CSV", "csv"),
]


@dataclass(frozen=True)
class ImportRequest:
    path: Path
    format: str | None
    input_column: str | None
    reference_column: str | None
    new_dataset: str | None  # None: append to the current dataset


class ImportDialog(Dialog[ImportRequest]):
    """Choose a file, its format, (for CSV) its columns, and where the items go."""

    def compose(self) -> ComposeResult:
        with Vertical(classes="box wide"):
            yield Label("Import items", classes="title")
            yield Label("File (seed JSON, JSONL or CSV)")
            yield Input(placeholder="path/to/file.jsonl", id="path")
            yield Label("Format")
            yield Select(FORMATS, value="", allow_blank=False, id="format")
            with Horizontal(id="csv-columns", classes="hidden"):
                with Vertical():
                    yield Label("Request column")
                    yield Select[str]([], id="input-column", prompt="choose")
                with Vertical():
                    yield Label("Reference column")
                    yield Select[str]([], id="reference-column", prompt="none")
            yield Label("Into a new dataset named (leave empty to append to this one)")
            yield Input(placeholder="new dataset name", id="new-name")
            yield from self.buttons("Import")

    @on(Input.Changed, "#path")
    @on(Select.Changed, "#format")
    def _maybe_csv(self) -> None:
        path = self.query_one("#path", Input).value.strip()
        fmt = self.query_one("#format", Select).value
        is_csv = fmt == "csv" or (not fmt and path.lower().endswith((".csv", ".tsv")))
        box = self.query_one("#csv-columns")
        box.set_class(not is_csv, "hidden")
        if is_csv and path and file_problem(Path(path).expanduser()) is None:
            self._load_columns(Path(path).expanduser())

    def _load_columns(self, path: Path) -> None:
        from tui.engine.datasets import DatasetFormatError, csv_columns

        try:
            columns = csv_columns(path)
        except (DatasetFormatError, OSError) as exc:
            self.show_error(str(exc))
            return
        self.show_error("")
        options = [(c, c) for c in columns]
        inputs = self.query_one("#input-column", Select)
        refs = self.query_one("#reference-column", Select)
        inputs.set_options(options)
        refs.set_options(options)
        for name in ("input", "request", "prompt", "question"):
            if name in columns:
                inputs.value = name
                break
        for name in ("reference", "output", "ideal", "expected", "answer"):
            if name in columns:
                refs.value = name
                break

    @on(Input.Submitted)
    def submit(self) -> None:
        raw = self.query_one("#path", Input).value.strip()
        if not raw:
            self.show_error("Give the path of the file to import.")
            return
        path = Path(raw).expanduser()
        problem = file_problem(path)  # from its metadata: a named pipe is never opened
        if problem is not None:
            self.show_error(f"{path}: {problem}")
            return
        fmt = self.query_one("#format", Select).value
        input_column = self.query_one("#input-column", Select).value
        reference_column = self.query_one("#reference-column", Select).value
        name = self.query_one("#new-name", Input).value.strip()
        self.dismiss(
            ImportRequest(
                path=path,
                format=fmt if isinstance(fmt, str) and fmt else None,
                input_column=input_column if isinstance(input_column, str) else None,
                reference_column=reference_column if isinstance(reference_column, str) else None,
                new_dataset=name or None,
            )
        )


@dataclass(frozen=True)
class ExportRequest:
    path: Path
    format: str


class ExportDialog(Dialog[ExportRequest]):
    """Choose a format and a file to write. The file name's suffix follows the format."""

    def __init__(
        self,
        default_path: Path,
        *,
        title: str = "Export the dataset",
        formats: list[tuple[str, str]] = EXPORT_FORMATS,
        suffixes: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.default_path = default_path
        self.title_text = title
        self.formats = formats
        self.suffixes = suffixes or {
            "json": ".json",
            "jsonl": ".jsonl",
            "chat-jsonl": ".jsonl",
            "csv": ".csv",
        }

    def compose(self) -> ComposeResult:
        with Vertical(classes="box wide"):
            yield Label(self.title_text, classes="title")
            yield Label("Format")
            yield Select(self.formats, value=self.formats[0][1], allow_blank=False, id="format")
            yield Label("File")
            yield Input(str(self.default_path), id="path")
            yield from self.buttons("Export")

    def on_mount(self) -> None:
        self.query_one("#path", Input).focus()

    @on(Select.Changed, "#format")
    def _suffix(self, event: Select.Changed) -> None:
        path_input = self.query_one("#path", Input)
        if isinstance(event.value, str) and event.value in self.suffixes:
            path = Path(path_input.value)
            path_input.value = str(path.with_suffix(self.suffixes[event.value]))

    @on(Input.Submitted)
    def submit(self) -> None:
        raw = self.query_one("#path", Input).value.strip()
        if not raw:
            self.show_error("Give the path of the file to write.")
            return
        path = Path(raw).expanduser()
        if path.is_dir():
            self.show_error(f"{path} is a directory: give a file name.")
            return
        if not path.parent.is_dir():
            self.show_error(f"{path.parent}: no such directory")
            return
        fmt = self.query_one("#format", Select).value
        self.dismiss(ExportRequest(path, fmt if isinstance(fmt, str) else self.formats[0][1]))


@dataclass(frozen=True)
class DatasetAction:
    action: str  # "open" | "new" | "rename" | "copy" | "delete"
    dataset_id: int | None


class DatasetsDialog(Dialog[DatasetAction]):
    """The workspace's datasets: open one, or create, rename, copy, delete."""

    BINDINGS = [
        Binding("n", "act('new')", "New", id="datasets.new"),
        Binding("r", "act('rename')", "Rename", id="datasets.rename"),
        Binding("c", "act('copy')", "Copy", id="datasets.copy"),
        Binding("delete,D", "act('delete')", "Delete", id="datasets.delete"),
    ]

    def __init__(self, datasets: list[DatasetInfo], current: int | None) -> None:
        super().__init__()
        self.datasets = datasets
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(classes="box wide"):
            yield Label("Datasets in this workspace", classes="title")
            options = [
                Option(
                    f"{'▸ ' if d.id == self.current else '  '}{escape(d.name)}  "
                    f"[dim]{d.n_items} items · {d.n_train} train · {d.n_eval} eval[/dim]",
                    id=str(d.id),
                )
                for d in self.datasets
            ]
            yield OptionList(*options, id="datasets")
            yield Static(
                "enter open · n new · r rename · c copy · D delete · esc close", classes="hint"
            )

    def on_mount(self) -> None:
        option_list = self.query_one(OptionList)
        ids = [d.id for d in self.datasets]
        if self.current in ids:
            option_list.highlighted = ids.index(self.current)

    def _highlighted(self) -> int | None:
        option_list = self.query_one(OptionList)
        if option_list.highlighted is None:
            return None
        option_id = option_list.get_option_at_index(option_list.highlighted).id
        return int(option_id) if option_id else None

    @on(OptionList.OptionSelected)
    def _open(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(DatasetAction("open", int(event.option.id or 0)))

    def action_act(self, action: str) -> None:
        self.dismiss(DatasetAction(action, self._highlighted()))
