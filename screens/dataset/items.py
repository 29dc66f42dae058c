"""The Dataset screen's items panel: the filter box, the table, and the highlighted item in
full (the header above it is screens/dataset/header.py).

The items live in memory as a list (100,000 of them are a few MB); the table draws only what is
on screen, and filtering swaps the list of visible indices."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from textual import events, on, work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.markup import escape
from textual.message import Message
from textual.widgets import Input, Static

from tui.engine.datasets import find_duplicates
from tui.engine.store import Item
from tui.widgets.virtual_table import Column, Row, RowView, VirtualTable

COLUMNS = (
    Column("#", width=6, justify="right"),
    Column("Request", weight=3),
    Column("Reference", weight=2),
    Column("Split", width=5),
    Column("Dup", width=10),
    Column("~Tok", width=5, justify="right"),
)
FILTER_HELP = "filter: text, split:train|eval|none, is:dup, is:synthetic"

# Up to this many items, duplicates and the filter index are computed before the first paint.
INDEX_INLINE_LIMIT = 20_000


def _index(items: list[Item]) -> tuple[list[str], list[str]]:
    """Duplicate flags, and the casefolded text the filter searches."""
    flags = find_duplicates([item.input for item in items])
    haystack = [f"{i.input}\x00{i.reference}".casefold() for i in items]
    return flags, haystack


def estimate_tokens(text: str) -> int:
    """A rough token count (≈4 characters a token for English); labelled as an estimate."""
    return len(text) // 4 + 1


class ItemsPanel(Vertical):
    """A dataset's items: `/` opens the filter box above the table, enter opens the item."""

    @dataclass
    class Opened(Message):
        """enter (or a double click) on an item."""

        item: Item

    @dataclass
    class Changed(Message):
        """What the table shows changed: the filter, or the duplicates once found."""

        shown: int
        filtered: bool
        duplicates: int
        synthetic: int = 0  # items a model wrote (the Dataset screen's Generate requests…)

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.items: list[Item] = []
        self.flags: list[str] = []
        self._haystack: list[str] = []
        self.indexing = False
        self.shown: list[int] = []
        self.filter_text = ""
        self.synthetic = 0

    def compose(self) -> ComposeResult:
        yield Input(placeholder=FILTER_HELP, id="filter")
        yield VirtualTable(COLUMNS, flagged=self._is_flagged, id="items")
        yield Static("", id="item-detail")

    def on_mount(self) -> None:
        self.query_one("#filter", Input).display = False

    @property
    def table(self) -> VirtualTable:
        return self.query_one("#items", VirtualTable)

    @property
    def duplicates(self) -> int:
        return sum(1 for f in self.flags if f)

    def show_items(self, items: list[Item], *, keep_cursor: bool = False) -> None:
        self.items = items
        self.synthetic = sum(1 for item in items if item.source)
        if len(items) <= INDEX_INLINE_LIMIT:
            self._set_index(*_index(items))
        else:
            # A big dataset is shown at once; duplicate flags and the filter's index follow
            # from a thread a moment later (about 0.3 s for 100,000 items).
            self.flags, self._haystack, self.indexing = [""] * len(items), [], True
            self._index_in_background(items)
        self._apply_filter(keep_cursor=keep_cursor)

    def ensure_indexed(self) -> None:
        """Compute the duplicate flags now if the background thread has not yet."""
        if self.indexing:
            self._set_index(*_index(self.items))

    def _set_index(self, flags: list[str], haystack: list[str]) -> None:
        self.flags, self._haystack, self.indexing = flags, haystack, False

    @work(thread=True, exclusive=True, group="dataset-index")
    def _index_in_background(self, items: list[Item]) -> None:
        flags, haystack = _index(items)
        self.app.call_from_thread(self._indexed, items, flags, haystack)

    def _indexed(self, items: list[Item], flags: list[str], haystack: list[str]) -> None:
        if items is not self.items:
            return  # the dataset was reloaded meanwhile; that load indexes its own items
        self._set_index(flags, haystack)
        self._apply_filter(keep_cursor=True)

    def _cells(self, index: int) -> Row:
        item = self.items[index]
        return (
            str(item.position),
            item.input,
            item.reference,
            item.split,
            self.flags[index],
            str(estimate_tokens(item.input)),
        )

    def _is_flagged(self, row: int) -> bool:
        return bool(self.flags[self.shown[row]]) if row < len(self.shown) else False

    def _apply_filter(self, *, keep_cursor: bool = False) -> None:
        self.shown = self._matching(self.filter_text)
        self.table.set_rows(RowView(self.shown, self._cells), keep_cursor=keep_cursor)
        self._show_detail()
        self.post_message(
            self.Changed(len(self.shown), bool(self.filter_text), self.duplicates, self.synthetic)
        )

    def _matching(self, query: str) -> list[int]:
        split: str | None = None
        dup_only = False
        synthetic_only = False
        text: list[str] = []
        for word in query.split():
            lower = word.casefold()
            if lower.startswith("split:"):
                value = lower[6:]
                split = "" if value in ("none", "unassigned", "") else value
            elif lower in ("is:dup", "is:duplicate"):
                dup_only = True
            elif lower in ("is:synthetic", "is:synth"):
                synthetic_only = True
            else:
                text.append(lower)
        needle = " ".join(text)
        if needle or dup_only:
            self.ensure_indexed()  # filtering before the thread finished
        items, flags, hay = self.items, self.flags, self._haystack
        indices: Iterable[int] = range(len(items))
        if needle:
            indices = [i for i in indices if needle in hay[i]]
        if split is not None:
            indices = [i for i in indices if items[i].split == split]
        if dup_only:
            indices = [i for i in indices if flags[i]]
        if synthetic_only:
            indices = [i for i in indices if items[i].source]
        return list(indices)

    def current_item(self) -> Item | None:
        cursor = self.table.cursor
        if not self.shown or cursor >= len(self.shown):
            return None
        return self.items[self.shown[cursor]]

    def move_to(self, item_id: int) -> None:
        for row, index in enumerate(self.shown):
            if self.items[index].id == item_id:
                self.table.cursor = row
                return

    def _show_detail(self) -> None:
        item = self.current_item()
        detail = self.query_one("#item-detail", Static)
        if item is None:
            empty = (
                "No items match the filter." if self.filter_text else "No items yet: a adds one."
            )
            detail.update(f"[dim]{empty}[/dim]")
            return
        flag = self.flags[self.shown[self.table.cursor]]
        note = f"  [yellow]({flag} duplicate of an earlier item)[/yellow]" if flag else ""
        source = f" · {escape(item.source)}" if item.source else ""
        detail.update(
            f"[b]#{item.position}[/b] {item.split or 'unassigned'}{source}{note}\n"
            f"[b]Request[/b]   {escape(item.input)}\n"
            f"[b]Reference[/b] {escape(item.reference) or '[dim]—[/dim]'}"
        )

    @on(VirtualTable.Highlighted, "#items")
    def _highlighted(self) -> None:
        self._show_detail()

    @on(VirtualTable.Selected, "#items")
    def _selected(self, event: VirtualTable.Selected) -> None:
        event.stop()
        item = self.current_item()
        if item is not None:
            self.post_message(self.Opened(item))

    # -- the filter ----------------------------------------------------------------------

    def open_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        box.focus()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.filter_text = event.value
        self._apply_filter()

    @on(Input.Submitted, "#filter")
    def _filter_done(self, event: Input.Submitted) -> None:
        event.stop()
        self.table.focus()

    def on_key(self, event: events.Key) -> None:
        # esc in the filter box clears it and returns to the table (not "back" to a screen).
        box = self.query_one("#filter", Input)
        if event.key == "escape" and box.has_focus:
            event.stop()
            event.prevent_default()
            box.value = ""
            box.display = False
            self.table.focus()
