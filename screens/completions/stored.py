""" "From backend…": the backend's stored completions (`store=True`), filtered as OpenAI's
dashboard filters them (model, metadata pairs, created after/before), counted, then imported
as a run with its progress shown. Importing the same filter again adds only what is new; an
import that stopped (Esc, a network error) resumes the same way."""

from __future__ import annotations

from collections.abc import Callable

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Input, Label, ProgressBar, Select, Static

from screens.dialogs import Dialog
from tui.engine.backend import Backend
from tui.engine.store import Store
from tui.engine.stored_import import (
    ImportProgress,
    ImportResult,
    StoredCount,
    StoredFilter,
    StoredImportError,
    backend_key,
    count_stored,
    import_stored,
    parse_metadata,
    parse_time,
)

ROLES = [("teacher (its backend)", "teacher"), ("student (its backend)", "student")]


class StoredImportDialog(Dialog[ImportResult]):
    """Returns the import's result (None when closed before one finished)."""

    CSS_PATH = "completions.tcss"

    def __init__(self, store: Store, backend_for: Callable[[str], Backend | None]) -> None:
        super().__init__()
        self.store = store
        self.backend_for = backend_for
        self.counted: tuple[StoredFilter, str, StoredCount] | None = None  # filter, role, count
        self.importing = False

    def compose(self) -> ComposeResult:
        with Vertical(classes="box", id="stored-box"):
            yield Label("Stored completions from the backend", classes="title")
            with Horizontal(classes="field"):
                yield Label("Import as", classes="label")
                yield Select(ROLES, value="teacher", allow_blank=False, id="stored-role")
            with Horizontal(classes="field"):
                yield Label("Model", classes="label")
                yield Input(placeholder="any (e.g. gpt-4o)", id="stored-model")
            with Horizontal(classes="field"):
                yield Label("Metadata", classes="label")
                yield Input(placeholder="key=value pairs, e.g. task=git env=prod", id="stored-meta")
            with Horizontal(classes="field"):
                yield Label("Created after", classes="label")
                yield Input(
                    placeholder="2025-03-01, 2025-03-01 14:30 or unix seconds", id="stored-after"
                )
            with Horizontal(classes="field"):
                yield Label("Created before", classes="label")
                yield Input(placeholder="(exclusive) same forms", id="stored-before")
            yield Static(
                Text("Enter (or Count) counts what matches; Import brings it in.", style="dim"),
                id="stored-count",
            )
            yield ProgressBar(total=None, show_eta=False, id="stored-progress")
            yield Static("", id="dialog-error", classes="error", markup=False)
            with Horizontal(classes="buttons"):
                yield Button("Count", id="count")
                yield Button("Import", variant="primary", id="ok", disabled=True)
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#stored-progress", ProgressBar).display = False
        self.query_one("#stored-model", Input).focus()

    # -- the filter ----------------------------------------------------------------------

    def _filter(self) -> StoredFilter | None:
        """The filter as typed, or None after showing what is wrong with it."""
        try:
            return StoredFilter(
                model=self.query_one("#stored-model", Input).value.strip(),
                metadata=parse_metadata(self.query_one("#stored-meta", Input).value),
                created_after=self._time("#stored-after", "created after"),
                created_before=self._time("#stored-before", "created before"),
            )
        except ValueError as error:
            self.show_error(str(error))
            return None

    def _time(self, selector: str, what: str) -> int | None:
        try:
            return parse_time(self.query_one(selector, Input).value)
        except ValueError as error:
            raise ValueError(f"{what}: {error}") from None

    @property
    def role(self) -> str:
        return str(self.query_one("#stored-role", Select).value)

    @on(Input.Changed)
    @on(Select.Changed)
    def _filter_changed(self) -> None:
        # A count is of the filter it was made with: another filter needs counting again.
        if not self.importing:
            self.counted = None
            self.query_one("#ok", Button).disabled = True

    def _backend(self) -> Backend | None:
        backend = self.backend_for(self.role)
        if backend is None:
            self.show_error(f"The {self.role}'s backend is not connected yet: wait for it.")
        return backend

    # -- counting ------------------------------------------------------------------------

    @on(Input.Submitted)
    @on(Button.Pressed, "#count")
    def action_count(self) -> None:
        if not self.importing:
            self._count()

    @work(exclusive=True, group="stored-count", exit_on_error=False)
    async def _count(self) -> None:
        query = self._filter()
        backend = self._backend()
        if query is None or backend is None:
            return
        self.show_error("")
        status = self.query_one("#stored-count", Static)
        status.update(Text(f"Listing the stored completions on {backend.label}…", style="dim"))
        role = self.role

        def listed(n: int) -> None:
            status.update(Text(f"Listing on {backend.label}… {n:,} match so far", style="dim"))

        try:
            count = await count_stored(
                self.store,
                backend.client,
                query,
                backend=backend_key(backend.spec.kind, backend.spec.base_url),
                on_page=listed,
            )
        except StoredImportError as error:
            status.update("")
            self.show_error(str(error))
            return
        self.counted = (query, role, count)
        status.update(self._count_text(query, count))
        self.query_one("#ok", Button).disabled = count.new == 0
        if count.new:
            self.query_one("#ok", Button).focus()

    @staticmethod
    def _count_text(query: StoredFilter, count: StoredCount) -> Text:
        text = Text()
        text.append(f"{count.matching:,} stored completions", style="bold")
        text.append(f" match {query.describe()}")
        if count.run_id is not None:
            text.append(f": {count.imported:,} already in run {count.run_id}")
        text.append(f" · {count.new:,} new", style="bold green" if count.new else "bold")
        if not count.new:
            text.append(" (nothing to import)", style="dim")
        return text

    # -- importing -----------------------------------------------------------------------

    def submit(self) -> None:
        if self.counted is None or self.importing:
            return
        self._import()

    @work(exclusive=True, group="stored-import", exit_on_error=False)
    async def _import(self) -> None:
        assert self.counted is not None
        query, role, count = self.counted
        backend = self._backend()
        if backend is None:
            return
        self.importing = True
        self.show_error("")
        for button in self.query(Button):
            button.disabled = button.id != "cancel"
        bar = self.query_one("#stored-progress", ProgressBar)
        bar.display = True
        bar.update(total=count.matching, progress=0)
        status = self.query_one("#stored-count", Static)
        status.update(Text(f"Importing {count.new:,} stored completions…", style="dim"))

        def progress(p: ImportProgress) -> None:
            bar.update(progress=p.listed)
            failed = f", {p.failed:,} not importable" if p.failed else ""
            status.update(
                Text(f"{p.added:,} imported, {p.already:,} already there{failed}", style="dim")
            )

        try:
            result = await import_stored(
                self.store,
                backend.client,
                query,
                backend=backend_key(backend.spec.kind, backend.spec.base_url),
                role=role,
                listing=count.listing,
                on_progress=progress,
            )
        except StoredImportError as error:
            self.importing = False
            self.counted = None
            self.show_error(str(error))
            self.query_one("#count", Button).disabled = False
            return
        self.dismiss(result)
