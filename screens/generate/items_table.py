"""The run's items, one row each (`ItemsTable`): number, status, request, output or error,
tokens and latency, flagged in yellow when an item failed, was cancelled or is retrying.

A module of its own because the table is where the run's size shows: with thousands of items
and 64 of them streaming, a row is made only when it is drawn (`item_cells`), and which rows
the table holds (the filter's) and which cursor moves were the user's are its own business.
The live view (live.py) tells it which items to hold and which rows to draw again."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from textual import on
from textual.message import Message

from tui.engine.store import Item
from tui.widgets.virtual_table import Column, Row, RowView, VirtualTable

if TYPE_CHECKING:
    from screens.generate.live_run import LiveRun

ITEM_COLUMNS = (
    Column("#", width=5, justify="right"),
    Column("Status", width=9),
    Column("Request", weight=2),
    Column("Output / error", weight=3),
    Column("Tok", width=5, justify="right"),
    Column("ms", width=6, justify="right"),
)
FLAGGED = ("failed", "cancelled", "retrying")


def item_cells(live: LiveRun, item: Item) -> Row:
    """An item's row of the table, made when it is drawn: only the visible ones ever are."""
    tokens = live.tokens.get(item.id)
    latency = live.latency.get(item.id)
    return (
        str(item.position),
        live.status_of(item.id),
        item.input,
        live.output_of(item.id),
        "" if tokens is None else str(tokens),
        "" if latency is None else f"{latency:.0f}",
    )


class ItemsTable(VirtualTable):
    """The items of the run on view that the filter keeps (`shown`), in order. Posts
    `Picked` when the user moves the cursor (moves made by code post nothing)."""

    class Picked(Message):
        """The user moved the cursor (to `item_at_cursor()`)."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(ITEM_COLUMNS, flagged=self._row_flagged, id=id)
        self.live: LiveRun | None = None
        self.shown: Sequence[Item] = ()
        self._skip_highlights = 0  # cursor moves made by code, not by the user

    def show(self, live: LiveRun, items: Sequence[Item], *, keep_cursor: bool) -> None:
        """Hold `items` of `live` (all of its items, or those the filter keeps)."""
        self.live = live
        self.shown = items
        rows = RowView(items, lambda item: item_cells(live, item))
        if len(rows):
            self._skip_highlights += 1  # set_rows moves the cursor: not the user's doing
        self.set_rows(rows, keep_cursor=keep_cursor)

    def clear(self) -> None:
        self.live = None
        self.shown = ()
        self.set_rows([])

    def item_at_cursor(self) -> Item | None:
        shown, cursor = self.shown, self.cursor
        return shown[cursor] if cursor < len(shown) else None

    def _row_flagged(self, row: int) -> bool:
        live = self.live
        items = self.shown
        if live is None or row >= len(items):
            return False
        return live.status_of(items[row].id) in FLAGGED

    @on(VirtualTable.Highlighted)
    def _highlighted(self, event: VirtualTable.Highlighted) -> None:
        event.stop()
        if self._skip_highlights:
            self._skip_highlights -= 1
            return
        if self.live is not None and self.has_focus:
            self.post_message(self.Picked())
