"""The run on view: the view (`LiveRunView`) that draws what is known of each item (`LiveRun`,
live_run.py), composed of panels: the title and batch lines (run_header.py), the `/` filter
bar (item_filter.py), the items table (items_table.py) and the stream panel, which shows one
item's text as it streams (stream_panel.py). The progress line's figures are progress.py's.

With 64 replies streaming at once the engine reports thousands of tokens a second, from a
thread of its own (tui/engine/offloop.py). Its events wait in the run's inbox; the view takes
them all REPAINT_HZ times a second (`LiveRun.catch_up`: dict and list operations), then
redraws the table and the stream panel, and only when something changed: the panels draw
what they are told, the view alone decides when."""

from __future__ import annotations

import time
from collections.abc import Sequence

from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Input

from screens.generate.item_filter import ItemFilter, ItemFilterBar
from screens.generate.items_table import ItemsTable
from screens.generate.live_run import LiveRun
from screens.generate.run_header import BatchLine, RunTitle
from screens.generate.stream_panel import StreamPanel, reply_to_follow
from tui.engine.store import Item
from tui.widgets.progress_line import on_repaint


class LiveRunView(Vertical):
    """The run on view: its title, the item table and the stream panel, which follows the
    reply that started last (or, once the user moves the item cursor, stays on that item
    until `follow_latest`)."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.live: LiveRun | None = None
        self.follow = True
        self._followed: int | None = None
        self._painted = -1
        self.filter = ItemFilter()
        self._filtered = (-1, 0.0)  # the run's version and the time the filter last ran

    def compose(self) -> ComposeResult:
        yield RunTitle("", id="run-title")
        yield BatchLine(id="batch-status")
        yield ItemFilterBar(id="item-filter-row")
        yield ItemsTable(id="items")
        yield StreamPanel(id="stream")

    def on_mount(self) -> None:
        on_repaint(self, self._repaint)
        self.watch(self.filter_box, "value", self._filter_typed, init=False)

    # -- the panels ----------------------------------------------------------------------

    @property
    def items_table(self) -> ItemsTable:
        return self.query_one("#items", ItemsTable)

    @property
    def filter_bar(self) -> ItemFilterBar:
        return self.query_one("#item-filter-row", ItemFilterBar)

    @property
    def filter_box(self) -> Input:
        return self.query_one("#item-filter", Input)

    @property
    def stream_panel(self) -> StreamPanel:
        return self.query_one("#stream", StreamPanel)

    @property
    def shown_items(self) -> Sequence[Item]:
        """The items in the table, in its order: those the filter keeps."""
        return self.items_table.shown

    # -- what the screen asks --------------------------------------------------------------

    def show_run(self, live: LiveRun) -> None:
        self.live = live
        self._followed = None
        self.follow = True
        self._painted = -1
        self.stream_panel.reset()
        self._apply_filter(keep_cursor=False)
        self.query_one("#run-title", RunTitle).show_run(live.run)
        self._paint_batches(live)
        self._repaint()

    def clear(self, message: str) -> None:
        self.live = None
        self.items_table.clear()
        self.query_one("#run-title", RunTitle).say(message)
        self.stream_panel.clear()
        self.query_one("#batch-status", BatchLine).hide()

    def follow_latest(self) -> None:
        self.follow = True
        self._followed = None
        self.stream_panel.reset()
        self._painted = -1  # shown on the next tick, even if no event comes

    def invalidate(self) -> None:
        """Draw everything on the next tick, changed or not."""
        self._painted = -1

    # -- the item filter -------------------------------------------------------------------

    def _filter_typed(self, query: str) -> None:
        # Watched, not messaged: applied while the key is handled, so that the box and the
        # table are drawn in one frame (a message's hop let a frame in between: two a key,
        # 15 ms of the UI's CPU a key instead of 13).
        self.filter = ItemFilter.parse(query)
        self._apply_filter(keep_cursor=False)

    @on(ItemFilterBar.Done)
    def _filter_done(self, event: ItemFilterBar.Done) -> None:
        event.stop()
        self.items_table.focus()

    def _apply_filter(self, *, keep_cursor: bool) -> None:
        live = self.live
        if live is None:
            return
        keep = self.filter
        shown = keep.apply(live) if keep else live.items
        self._filtered = (live.version, time.monotonic())
        self.items_table.show(live, shown, keep_cursor=keep_cursor)
        self.filter_bar.show_count(len(shown), len(live.items), keep)

    def _refilter(self, live: LiveRun) -> None:
        """Statuses move while the run goes: a status filter is applied again, at most
        twice a second (the request words never change, and need no second look)."""
        if not self.filter.statuses or self._filtered[0] == live.version:
            return
        if time.monotonic() - self._filtered[1] >= 0.5:
            self._apply_filter(keep_cursor=True)

    # -- the stream panel's item -------------------------------------------------------------

    @on(ItemsTable.Picked)
    def _item_picked(self, event: ItemsTable.Picked) -> None:
        # Moving the cursor by hand pins the stream panel to that item; f follows again.
        event.stop()
        live = self.live
        if live is not None:
            self.follow = False
            self._paint_stream(live)

    def shown_item(self) -> Item | None:
        """The item the stream panel shows."""
        live = self.live
        if live is None or not live.items:
            return None
        if not self.follow:
            return self.items_table.item_at_cursor()
        followed = reply_to_follow(live, self._followed)
        if followed is None:
            return self.items_table.item_at_cursor()
        self._followed = followed
        return live.items[live.row_of[followed]]

    # -- drawing ---------------------------------------------------------------------------

    def _repaint(self) -> None:
        """The only place the live view is drawn (REPAINT_HZ times a second at most)."""
        live = self.live
        if live is None:
            return
        live.catch_up()
        self._refilter(live)
        changed = live.take_changed()
        if live.version == self._painted:
            return
        table = self.items_table
        if changed is None or self._painted == -1:
            table.refresh()
        else:
            # Only the rows on screen whose item changed: the rest are drawn already.
            shown = self.shown_items
            table.refresh_rows(r for r in table.visible_rows if shown[r].id in changed)
        self._painted = live.version
        self._paint_batches(live)
        self._paint_stream(live)

    def _paint_batches(self, live: LiveRun) -> None:
        self.query_one("#batch-status", BatchLine).show(live.batches.values())

    def _paint_stream(self, live: LiveRun) -> None:
        item = self.shown_item()
        if item is None:
            return
        status = live.status_of(item.id)
        body = live.output_of(item.id)  # the error, for a failed or retrying item
        self.stream_panel.show(item, status, body, following=self.follow)
