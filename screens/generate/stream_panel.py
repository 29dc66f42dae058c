"""The stream panel: the text of one item as it streams (`StreamPanel`), and which reply it
follows while the run goes (`reply_to_follow`).

A module of its own because redrawing a growing reply is the costly part of the live view: a
reply that grows by a token must not lay the whole screen out again, nor scroll when it still
fits, and the panel draws only when the item, its status or its length moved. The live view
(live.py) says which item to show, and whether it follows the run or the user's cursor."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from tui.engine.store import Item
from tui.widgets.steady_static import NO_SIZE

if TYPE_CHECKING:
    from screens.generate.live_run import LiveRun

# What the stream panel says for an item with no text yet.
EMPTY_BODY = {
    "streaming": "… (waiting for the first token)",
    "cancelled": "(cancelled before the reply finished)",
    "pending": "(not generated yet)",
    "queued": "(queued)",
    "in batch": "(sent in a batch: its answer comes when the batch ends)",
}


def reply_to_follow(live: LiveRun, followed: int | None) -> int | None:
    """The item whose reply the panel follows: `followed` until it ends, then the one that
    started last; readable even with 64 streams, where "the latest delta" would jump 64
    times a second. None: nothing streams and nothing was followed."""
    if (followed is None or followed not in live.streaming) and live.streaming:
        # The latest that has begun to answer (a new batch starts with no text yet).
        candidates = list(reversed(live.streaming))
        followed = next((i for i in candidates[:64] if live.text.get(i)), candidates[0])
    return followed


class StreamPanel(VerticalScroll):
    """One item's reply (or error), titled with its number, status and whether the panel
    follows the run or shows the item the user picked."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._key: tuple[Any, ...] = ()  # what was drawn last: item, status, length

    def compose(self) -> ComposeResult:
        yield Static("", id="stream-text", markup=False)

    def on_mount(self) -> None:
        self.border_title = "Stream"

    @property
    def reply_text(self) -> Static:
        return self.query_one("#stream-text", Static)

    def reset(self) -> None:
        """Draw on the next `show`, even the same item at the same length."""
        self._key = ()

    def clear(self) -> None:
        self.reply_text.update("")

    def show(self, item: Item, status: str, body: str, *, following: bool) -> None:
        """Show `item`'s `body` (its reply so far, or its error), if anything moved."""
        key = (item.id, status, len(body))
        if key == self._key:
            return
        self._key = key
        mode = "following" if following else "selected"
        self.border_title = f"#{item.position} · {status} · {mode}"
        self.border_subtitle = item.input[:60]
        text = self.reply_text
        text.update(body or EMPTY_BODY.get(status, "(empty reply)"), layout=False)
        # The screen is laid out again only when the reply needs another height: it fills
        # the panel at least (min-height), so a reply shorter than the panel never does,
        # and a longer one once a line, not on every token it grows by.
        width, height = text.content_size
        floor = self.scrollable_content_region.height
        needed = max(text.get_content_height(NO_SIZE, NO_SIZE, width), floor) if width else 0
        if not width or needed != height:
            text.refresh(layout=True)
        if not width or needed > floor:
            # Only a reply taller than the panel scrolls (a scroll is a frame of its own,
            # after this one).
            self.scroll_end(animate=False)
