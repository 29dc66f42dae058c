"""The dialogs that read and write files: importing items (a file, its format, for CSV its
columns, and where the items go) and exporting (a format and a file to write)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Input, Label, Select

from screens.dialogs.base import Dialog
from tui.engine.datasets import file_problem

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
