"""The `/` filter above the run's items: what a query keeps (`ItemFilter`) and the bar that
reads it (`ItemFilterBar`: the box and the "12 of 386 items" count beside it).

It is a module of its own because the query language (request words, `status:` words) and
the box's typing cost are questions of their own, apart from how the run is drawn: the bar
says when the user goes back to the table (`Done`); the live view (live.py) watches what is
typed and applies the filter to its table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.cells import cell_len
from rich.text import Text
from textual import events, on
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import Input, Static

from tui.engine.store import Item

if TYPE_CHECKING:
    from screens.generate.live_run import LiveRun

# What an item's status can be in the table (`LiveRun.status_of`), for the filter's status: words.
STATUSES = ("done", "failed", "cancelled", "streaming", "retrying", "queued", "pending", "batch")
FILTER_HELP = "words of the request, status:failed (or done, streaming, queued…)"


@dataclass(frozen=True)
class ItemFilter:
    """The item filter box: `status:<status>` words keep items in any of those statuses
    ("batch" for "in batch"); every other word must be in the request (any case). Parsed
    from the box by `parse`; `problems` lists what it could not use."""

    words: tuple[str, ...] = ()
    statuses: frozenset[str] = frozenset()
    problems: tuple[str, ...] = ()

    @classmethod
    def parse(cls, query: str) -> ItemFilter:
        words: list[str] = []
        statuses: set[str] = set()
        problems: list[str] = []
        for word in query.split():
            kind, sep, value = word.partition(":")
            if not sep or kind.casefold() != "status":
                words.append(word.casefold())
            elif value.casefold() in STATUSES:
                statuses.add("in batch" if value.casefold() == "batch" else value.casefold())
            else:
                problems.append(f"{word}: use one of {', '.join(STATUSES)}")
        return cls(tuple(words), frozenset(statuses), tuple(problems))

    def __bool__(self) -> bool:
        return bool(self.words or self.statuses)

    def apply(self, live: LiveRun) -> list[Item]:
        """The run's items this filter keeps, in order."""
        items = live.items
        if self.words:
            words = self.words
            folded = live.folded_requests()
            kept = zip(items, folded, strict=True)
            items = [item for item, text in kept if all(w in text for w in words)]
        if self.statuses:
            items = [i for i in items if live.status_of(i.id) in self.statuses]
        return items


class FilterBox(Input):
    """The item filter's box. Textual's Input sizes its scroll area to its text (to its
    placeholder while empty), and a new size lays the whole screen out again: on every key,
    and when the box empties or fills, since the placeholder is wider than the box. While
    the text fits, the area is the box's own width and typing only redraws the box."""

    @property
    def content_width(self) -> int:
        # The text and the cursor's cell after it, never the placeholder.
        return max(cell_len(self.value) + 1, self.scrollable_content_region.width)


class ItemFilterBar(Horizontal):
    """The filter box and its count. Posts `Done` when the user leaves the box for the table
    (enter, or esc: which must not reach the screen, where it cancels the run); what is
    typed, the live view reads from the box's value as it changes."""

    class Done(Message):
        """enter or esc in the box: back to the table (the filter stays)."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._count_width = 0

    def compose(self) -> ComposeResult:
        yield FilterBox(placeholder=f"/ filter: {FILTER_HELP}", id="item-filter", compact=True)
        yield Static("", id="item-filter-count", markup=False)

    @property
    def box(self) -> Input:
        return self.query_one("#item-filter", Input)

    def show_count(self, kept: int, total: int, keep: ItemFilter) -> None:
        """ "12 of 386 items" while `keep` filters, and what it could not use, in red."""
        of = f"{total:,}"
        # As wide whatever the count, filtering or not, so typing (or emptying the box) does
        # not lay the screen out again for it.
        width = len(f"{of} of {of} items")
        count = Text(f"{kept:>{len(of)},} of {of} items" if keep else f"{of} items".rjust(width))
        if keep.problems:
            count.append(f"{' · ' if keep else ''}{'; '.join(keep.problems)}", style="red")
        label = self.query_one("#item-filter-count", Static)
        # A new layout only when the label's width changes (a status filter runs twice a
        # second while a run goes).
        label.update(count, layout=count.cell_len != self._count_width)
        self._count_width = count.cell_len

    @on(Input.Changed, "#item-filter")
    def _changed(self, event: Input.Changed) -> None:
        event.stop()  # the live view watches the box's value itself (see LiveRunView)

    @on(Input.Submitted, "#item-filter")
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.post_message(self.Done())

    def on_key(self, event: events.Key) -> None:
        if event.key == "escape" and self.box.has_focus:
            event.stop()
            event.prevent_default()
            self.post_message(self.Done())
