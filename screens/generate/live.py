"""The run on view: what is known of each item (`LiveRun`), the view that draws it
(`LiveRunView`: the item table, the stream panel and which item it follows), and the figures
of its progress line (`run_figures`). A run sent as batches also shows its batches' status,
request counts and window (`batch_text`); its items fill in as each batch's results arrive.

With 64 replies streaming at once the engine reports thousands of tokens a second, from a
thread of its own (tui/engine/offloop.py). Its events wait in the run's inbox; the view takes
them all REPAINT_HZ times a second (`LiveRun.catch_up`: dict and list operations), then
redraws the table and the stream panel, and only when something changed."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.geometry import Size
from textual.widgets import Input, Static

from tui.engine.batch import TERMINAL, BatchUpdate
from tui.engine.generation import (
    ConcurrencyChanged,
    Event,
    ItemDelta,
    ItemFinished,
    ItemRetry,
    ItemStarted,
    RunFinished,
    RunStats,
    cost_of,
)
from tui.engine.offloop import Receiver
from tui.engine.run_form import format_metadata
from tui.engine.settings import Price
from tui.engine.store import BatchInfo, CompletionRow, Item, RunInfo
from tui.widgets.progress_line import Figures, on_repaint
from tui.widgets.virtual_table import Column, Row, RowView, VirtualTable

ITEM_COLUMNS = (
    Column("#", width=5, justify="right"),
    Column("Status", width=9),
    Column("Request", weight=2),
    Column("Output / error", weight=3),
    Column("Tok", width=5, justify="right"),
    Column("ms", width=6, justify="right"),
)
FLAGGED = ("failed", "cancelled", "retrying")
NO_SIZE = Size(0, 0)  # get_content_height's container and viewport: unused by a Static
# What the stream panel says for an item with no text yet.
EMPTY_BODY = {
    "streaming": "… (waiting for the first token)",
    "cancelled": "(cancelled before the reply finished)",
    "pending": "(not generated yet)",
    "queued": "(queued)",
    "in batch": "(sent in a batch: its answer comes when the batch ends)",
}


class LiveRun(Receiver[Event | BatchUpdate]):
    """The run on view: its items and what is known of each. Engine events write here and
    nothing else happens per event; the view reads it when it repaints. Only the UI's thread
    touches it: a run generated on another thread puts its events in `receive()`'s inbox,
    applied by `catch_up()`."""

    def __init__(
        self,
        run: RunInfo,
        items: list[Item],
        completions: list[CompletionRow],
        batches: Iterable[BatchInfo] = (),
    ) -> None:
        self.run = run
        self.items = items
        self.row_of = {item.id: row for row, item in enumerate(items)}
        self.status: dict[int, str] = {}
        self.text: dict[int, list[str]] = {}
        self.error: dict[int, str] = {}
        self.tokens: dict[int, int] = {}
        self.latency: dict[int, float] = {}
        self.streaming: dict[int, None] = {}  # items streaming now, in the order they started
        self._idle = "pending"  # what an item with no completion shows: "queued" while running
        self.version = 0  # bumped by every change; the view repaints when it moved
        # The items changed since the view last took them (`take_changed`); None: any item
        # may have (the run ended, a batch moved, idle items say something else).
        self._changed: set[int] | None = set()
        self.finished: RunFinished | None = None
        # The last change of the in-flight limit (its ceiling, and why it moved).
        self.concurrency: ConcurrencyChanged | None = None
        self.prompt_tokens = self.completion_tokens = 0
        self._counts: tuple[int, dict[str, int]] = (-1, {})
        self._folded: list[str] | None = None
        # A batch run's batches (their last update, by the workspace's id) and the items
        # that batches still at the backend hold.
        self.batches: dict[int, BatchUpdate] = {}
        self.batched: set[int] = set()
        for b in batches:
            counts = b.request_counts
            self.batches[b.id] = BatchUpdate(
                batch_id=b.id,
                remote_id=b.remote_id,
                status=b.status,
                total=counts.get("total") or len(b.item_ids),
                completed=counts.get("completed", 0),
                failed=counts.get("failed", 0),
                expires_at=b.expires_at,
                error=b.error,
            )
            if not b.collected:
                self.batched.update(b.item_ids)
        for c in completions:
            self.status[c.item_id] = c.status
            self.text[c.item_id] = [c.output]
            if c.error:
                self.error[c.item_id] = c.error
            if c.completion_tokens is not None:
                self.tokens[c.item_id] = c.completion_tokens
            if c.latency_ms is not None:
                self.latency[c.item_id] = c.latency_ms
            self.prompt_tokens += c.prompt_tokens or 0
            self.completion_tokens += c.completion_tokens or 0

    @property
    def idle(self) -> str:
        return self._idle

    @idle.setter
    def idle(self, value: str) -> None:
        self._idle = value
        self._changed = None
        self.version += 1

    def folded_requests(self) -> list[str]:
        """The items' requests in lower case (casefolded), for the filter: made once."""
        if self._folded is None:
            self._folded = [item.input.casefold() for item in self.items]
        return self._folded

    def take_changed(self) -> set[int] | None:
        """The items changed since the last call (None: any item may have)."""
        changed, self._changed = self._changed, set()
        return changed

    def on_event(self, event: Event | BatchUpdate) -> None:
        if isinstance(event, BatchUpdate):
            self.batches[event.batch_id] = event
            self._changed = None
            self.version += 1
            return
        if isinstance(event, ConcurrencyChanged):
            # Read with the run's totals by the progress line; nothing of the table changed.
            self.concurrency = event
            return
        if isinstance(event, ItemDelta):
            self.text[event.item_id].append(event.text)
        elif isinstance(event, ItemStarted):
            self.status[event.item_id] = "streaming"
            self.text[event.item_id] = []  # a retry streams from the start again
            self.streaming[event.item_id] = None
        elif isinstance(event, ItemRetry):
            self.status[event.item_id] = "retrying"
            self.error[event.item_id] = (
                f"{event.error} · attempt {event.attempt}, retrying in {event.delay:.1f} s"
            )
            self.streaming.pop(event.item_id, None)
        elif isinstance(event, ItemFinished):
            item_id = event.item_id
            self.batched.discard(item_id)
            self.status[item_id] = event.status
            self.text[item_id] = [event.output]
            if event.error:
                self.error[item_id] = event.error
            else:
                self.error.pop(item_id, None)
            if event.completion_tokens is not None:
                self.tokens[item_id] = event.completion_tokens
            if event.latency_ms is not None:
                self.latency[item_id] = event.latency_ms
            self.streaming.pop(item_id, None)
        elif isinstance(event, RunFinished):
            self.finished = event
            self.idle = "pending"
        if self._changed is not None:
            touched: int | None = getattr(event, "item_id", None)
            if touched is None:
                self._changed = None
            else:
                self._changed.add(touched)
        self.version += 1

    def status_of(self, item_id: int) -> str:
        status = self.status.get(item_id)
        if status is None:
            return "in batch" if item_id in self.batched else self.idle
        return status

    def output_of(self, item_id: int) -> str:
        status = self.status_of(item_id)
        if status in ("failed", "retrying"):
            return self.error.get(item_id, "")
        parts = self.text.get(item_id)
        if not parts:
            return ""
        if len(parts) > 1:
            # Joined once here and kept joined, so a long stream is not re-joined per paint.
            parts[:] = ["".join(parts)]
        return parts[0]

    def counts(self) -> dict[str, int]:
        """Items per status; counted again only after a change (the progress line asks
        REPAINT_HZ times a second)."""
        version, counts = self._counts
        if version != self.version:
            counts = {}
            for item in self.items:
                status = self.status_of(item.id)
                counts[status] = counts.get(status, 0) + 1
            self._counts = (self.version, counts)
        return counts


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


def _duration(seconds: float) -> str:
    minutes = max(0, int(seconds // 60))
    return f"{minutes // 60} h {minutes % 60:02d} m" if minutes >= 60 else f"{minutes} m"


def batch_text(batches: Iterable[BatchUpdate], now: float | None = None) -> Text:
    """A batch run's line: its batch (or how many), their status, the requests answered and
    failed of all, and the window: "batch batch_abc · in_progress · 120/1,000 answered, 3
    failed · 24h window, ends 14:03 (in 23 h 12 m)"."""
    updates = list(batches)
    if not updates:
        return Text("")
    now = time.time() if now is None else now
    head = f"batch {updates[0].remote_id or '(being created)'}"
    if len(updates) > 1:
        head = f"{len(updates)} batches"
    statuses = Counter(u.status for u in updates)
    text = Text(f"{head} · ")
    text.append(", ".join(s if n == 1 else f"{s} ×{n}" for s, n in statuses.items()), style="bold")
    total = sum(u.total for u in updates)
    text.append(f" · {sum(u.completed for u in updates):,}/{total:,} answered")
    failed = sum(u.failed for u in updates)
    if failed:
        text.append(f", {failed:,} failed", style="red")
    going = [u.expires_at for u in updates if u.expires_at and u.status not in TERMINAL]
    if going:
        ends = max(going)
        clock = time.strftime("%H:%M", time.localtime(ends))
        text.append(f" · {updates[0].window} window, ends {clock} (in {_duration(ends - now)})")
    errors = [u.error for u in updates if u.error]
    if errors:
        text.append(f" · {errors[0]}", style="red")
    return text


def concurrency_text(stats: RunStats, changed: ConcurrencyChanged | None) -> Text:
    """The requests in flight and the limit on them: "in flight 12/64". A limit the backend's
    rate limits lowered below the configured concurrency reads "in flight 12/32 of 64" (in
    yellow), followed by the 429s so far, "(rate limited ×3)", or else why it was lowered."""
    ceiling = changed.ceiling if changed is not None else stats.concurrency_limit
    limit = stats.concurrency_limit or ceiling
    lowered = limit < ceiling
    text = Text(f"in flight {stats.in_flight}/{limit}")
    if lowered:
        text.append(f" of {ceiling}")
        text.stylize("yellow")
    if stats.rate_limited:
        text.append(f" (rate limited ×{stats.rate_limited})", style="yellow")
    elif lowered and changed is not None:
        text.append(f" ({changed.reason})", style="yellow")
    return text


def run_figures(
    live: LiveRun, stats: RunStats | None, *, running: bool, price: Price, local: bool
) -> Figures:
    """The progress line of the run on view: the engine's totals while it runs (and after,
    until another run is viewed), else the counts of what the store holds."""
    if stats is not None:
        done = stats.done_before + stats.done
        failed, cancelled = stats.failed, stats.cancelled
        cost = stats.cost
    else:
        counts = live.counts()
        done = counts.get("done", 0)
        failed, cancelled = counts.get("failed", 0), counts.get("cancelled", 0)
        cost = cost_of(price, live.prompt_tokens, live.completion_tokens)
    parts: list[str | Text] = []
    if failed:
        parts.append(Text(f"{failed:,} failed", style="red"))
    if cancelled:
        parts.append(Text(f"{cancelled:,} cancelled", style="yellow"))
    if stats is not None and running:
        parts.append(concurrency_text(stats, live.concurrency))
    elif stats is not None and stats.rate_limited:
        parts.append(Text(f"rate limited ×{stats.rate_limited}", style="yellow"))
    notes: list[str | Text] = []
    if price.input or price.output:
        notes.append(f"${cost:,.4f}")
    else:
        notes.append("free (local)" if local else "unpriced")
    if not running:
        status = live.finished.status if live.finished else live.run.status
        if status == "running":
            status = "interrupted"  # nothing generates here: a session ended mid-run
        notes.append(Text(status, style="bold"))
    figures = Figures(done=done, total=len(live.items), counts=tuple(parts), notes=tuple(notes))
    if stats is None:
        return figures
    return Figures.of(
        stats,
        done=figures.done,
        total=figures.total,
        counts=figures.counts,
        notes=figures.notes,
        rate=stats.tokens_per_second,
        rate_unit=" tok/s",
        running=running,
        eta=stats.eta if running else None,
    )


class FilterBox(Input):
    """The item filter's box. Textual's Input sizes its scroll area to its text, and a new
    size lays the whole screen out again on every key; while the text fits, the area is
    the box's own width and typing only redraws the box."""

    @property
    def content_width(self) -> int:
        return max(super().content_width, self.scrollable_content_region.width)


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
        self._stream_key: tuple[Any, ...] = ()
        self._skip_highlights = 0  # cursor moves made by code, not by the user
        self.filter = ItemFilter()
        self._shown: list[Item] | None = None  # the items the filter keeps (None: all)
        self._filtered = (-1, 0.0)  # the run's version and the time the filter last ran
        self._count_width = 0

    def compose(self) -> ComposeResult:
        yield Static("", id="run-title")
        yield Static("", id="batch-status", markup=False)
        with Horizontal(id="item-filter-row"):
            yield FilterBox(placeholder=f"/ filter: {FILTER_HELP}", id="item-filter", compact=True)
            yield Static("", id="item-filter-count", markup=False)
        yield VirtualTable(ITEM_COLUMNS, flagged=self._row_flagged, id="items")
        with VerticalScroll(id="stream"):
            yield Static("", id="stream-text", markup=False)

    def on_mount(self) -> None:
        self.query_one("#stream", VerticalScroll).border_title = "Stream"
        on_repaint(self, self._repaint)

    @property
    def items_table(self) -> VirtualTable:
        return self.query_one("#items", VirtualTable)

    def show_run(self, live: LiveRun) -> None:
        self.live = live
        self._followed = None
        self.follow = True
        self._painted = -1
        self._stream_key = ()
        self._apply_filter(keep_cursor=False)
        run = live.run
        parts = [f"run {run.id}", run.model]
        if run.role:
            parts.append(run.role)
        parts.append(run.split or "all items")
        k = int(run.params.get("retrieve_k", 0))
        if k:
            where = "the labelled pool" if "retrieve_from" in run.params else "train"
            parts.append(f"{k} examples from {where}")
        samples = int(run.params.get("samples", 1))
        if samples > 1:
            parts.append(f"{samples} samples, vote {run.params.get('vote', 'normalised')}")
        if run.metadata:
            parts.append(format_metadata(run.metadata))
        self.query_one("#run-title", Static).update(Text(" · ".join(parts), style="bold"))
        self._paint_batches(live)
        self._repaint()

    def clear(self, message: str) -> None:
        self.live = None
        self._shown = None
        self.items_table.set_rows([])
        self.query_one("#run-title", Static).update(Text(message))
        self.query_one("#stream-text", Static).update("")
        self.query_one("#batch-status", Static).display = False

    def follow_latest(self) -> None:
        self.follow = True
        self._followed = None
        self._stream_key = ()
        self._painted = -1  # shown on the next tick, even if no event comes

    def invalidate(self) -> None:
        """Draw everything on the next tick, changed or not."""
        self._painted = -1

    # -- the item filter ---------------------------------------------------------------

    @property
    def filter_box(self) -> Input:
        return self.query_one("#item-filter", Input)

    @property
    def shown_items(self) -> Sequence[Item]:
        """The items in the table, in its order: those the filter keeps."""
        if self._shown is not None:
            return self._shown
        return self.live.items if self.live is not None else ()

    @on(Input.Changed, "#item-filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.filter = ItemFilter.parse(event.value)
        self._apply_filter(keep_cursor=False)

    @on(Input.Submitted, "#item-filter")
    def _filter_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.items_table.focus()

    def on_key(self, event: Any) -> None:
        # esc in the filter box goes back to the table (keeping the filter); it must not
        # reach the screen, where it cancels the run.
        if event.key == "escape" and self.filter_box.has_focus:
            event.stop()
            event.prevent_default()
            self.items_table.focus()

    def _apply_filter(self, *, keep_cursor: bool) -> None:
        live = self.live
        if live is None:
            return
        keep = self.filter
        self._shown = keep.apply(live) if keep else None
        self._filtered = (live.version, time.monotonic())
        rows = RowView(self.shown_items, lambda item: item_cells(live, item))
        if len(rows):
            self._skip_highlights += 1  # set_rows moves the cursor: not the user's doing
        self.items_table.set_rows(rows, keep_cursor=keep_cursor)
        total = f"{len(live.items):,}"
        # As wide whatever the count, so typing does not lay the screen out again for it.
        count = Text(f"{len(rows):>{len(total)},} of {total} items" if keep else "")
        if keep.problems:
            count.append(f"{' · ' if keep else ''}{'; '.join(keep.problems)}", style="red")
        label = self.query_one("#item-filter-count", Static)
        # A new layout only when the label's width changes (a status filter runs twice a
        # second while a run goes).
        label.update(count, layout=count.cell_len != self._count_width)
        self._count_width = count.cell_len

    def _refilter(self, live: LiveRun) -> None:
        """Statuses move while the run goes: a status filter is applied again, at most
        twice a second (the request words never change, and need no second look)."""
        if not self.filter.statuses or self._filtered[0] == live.version:
            return
        if time.monotonic() - self._filtered[1] >= 0.5:
            self._apply_filter(keep_cursor=True)

    def _row_flagged(self, row: int) -> bool:
        live = self.live
        items = self.shown_items
        if live is None or row >= len(items):
            return False
        return live.status_of(items[row].id) in FLAGGED

    @on(VirtualTable.Highlighted, "#items")
    def _item_highlighted(self) -> None:
        # Moving the cursor by hand pins the stream panel to that item; f follows again.
        if self._skip_highlights:
            self._skip_highlights -= 1
            return
        live = self.live
        if live is not None and self.items_table.has_focus:
            self.follow = False
            self._paint_stream(live)

    def shown_item(self) -> Item | None:
        """The item the stream panel shows."""
        live = self.live
        if live is None or not live.items:
            return None
        shown = self.shown_items
        if not self.follow:
            cursor = self.items_table.cursor
            return shown[cursor] if cursor < len(shown) else None
        # Stay on one reply until it ends, then take the one that started last: readable
        # even with 64 streams, where "the latest delta" would jump 64 times a second.
        followed = self._followed
        if (followed is None or followed not in live.streaming) and live.streaming:
            # The latest that has begun to answer (a new batch starts with no text yet).
            candidates = list(reversed(live.streaming))
            followed = next((i for i in candidates[:64] if live.text.get(i)), candidates[0])
        if followed is None:
            cursor = self.items_table.cursor
            return shown[cursor] if cursor < len(shown) else None
        self._followed = followed
        return live.items[live.row_of[followed]]

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
        line = self.query_one("#batch-status", Static)
        line.display = bool(live.batches)
        if live.batches:
            line.update(batch_text(live.batches.values()))

    def _paint_stream(self, live: LiveRun) -> None:
        item = self.shown_item()
        if item is None:
            return
        status = live.status_of(item.id)
        body = live.output_of(item.id)  # the error, for a failed or retrying item
        key = (item.id, status, len(body))
        if key == self._stream_key:
            return
        self._stream_key = key
        panel = self.query_one("#stream", VerticalScroll)
        mode = "following" if self.follow else "selected"
        panel.border_title = f"#{item.position} · {status} · {mode}"
        panel.border_subtitle = item.input[:60]
        text = self.query_one("#stream-text", Static)
        text.update(body or EMPTY_BODY.get(status, "(empty reply)"), layout=False)
        # The screen is laid out again only when the reply needs another height: it fills
        # the panel at least (min-height), so a reply shorter than the panel never does,
        # and a longer one once a line, not on every token it grows by.
        width, height = text.content_size
        floor = panel.scrollable_content_region.height
        needed = max(text.get_content_height(NO_SIZE, NO_SIZE, width), floor) if width else 0
        if not width or needed != height:
            text.refresh(layout=True)
        if not width or needed > floor:
            # Only a reply taller than the panel scrolls (a scroll is a frame of its own,
            # after this one).
            panel.scroll_end(animate=False)
