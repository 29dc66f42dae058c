"""What is known of the run on view, item by item (`LiveRun`): the model the Generate screen's
panels draw (live.py's `LiveRunView` and its table, filter, stream panel and progress line).

Engine events only write here; with 64 replies streaming the engine reports thousands of
tokens a second, so per event this does dict and list operations and bumps `version`, and the
view reads it at its own rate (live.py)."""

from __future__ import annotations

from collections.abc import Iterable

from tui.engine.batch import BatchUpdate
from tui.engine.generation import (
    ConcurrencyChanged,
    Event,
    ItemDelta,
    ItemFinished,
    ItemRetry,
    ItemStarted,
    RunFinished,
)
from tui.engine.offloop import Receiver
from tui.engine.store import CLAIMED, BatchInfo, CompletionRow, Item, RunInfo


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

    def sync(self, completions: Iterable[CompletionRow]) -> None:
        """Apply what the store holds now of a run generated elsewhere in this app (the
        recipe on the Recipe view), as the events that would have said it: an item claimed
        shows as streaming (its text comes when it finishes), a finished one as finished."""
        for c in completions:
            if c.status == CLAIMED:
                if self.status.get(c.item_id) != "streaming":
                    self.on_event(ItemStarted(c.item_id, c.attempts))
            elif self.status.get(c.item_id) != c.status or self.text.get(c.item_id) != [c.output]:
                self.on_event(
                    ItemFinished(
                        c.item_id,
                        c.status,  # type: ignore[arg-type]  # done, failed or cancelled
                        c.output,
                        c.error,
                        c.finish_reason,
                        c.prompt_tokens,
                        c.completion_tokens,
                        c.latency_ms,
                        c.first_token_ms,
                        0.0,
                        c.attempts,
                    )
                )

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
