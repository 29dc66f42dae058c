"""The preview of "Generate requests…": the new requests stream in as the model writes them
and a person picks which to add.

`RequestsPreview` runs the engine (tui/engine/synthetic.py) and returns the requests accepted,
or None: nothing is added unless a person says so. While it runs, esc stops it (what arrived
stays to pick from); after, esc cancels, `a` adds all, `s` adds the ticked ones (space
toggles a row). Every reply that was not what was asked for, and every request left out, is
listed with the reason."""

from __future__ import annotations

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.timer import Timer
from textual.widgets import Button, Label, SelectionList, Static
from textual.widgets.selection_list import Selection

from tui.engine.synthetic import (
    BadReply,
    BatchDelta,
    BatchRetry,
    BatchStarted,
    RequestProposed,
    RequestRejected,
    RequestSynthesizer,
    SynthesisEvent,
    SynthesisFinished,
    SynthesisSpec,
)

REPAINT_HZ = 10
STREAM_TAIL = 400  # characters of the reply being written shown under the status
REPORTS_SHOWN = 6


class RequestsPreview(ModalScreen[list[str] | None]):
    """The requests arriving from the model, to pick from. Returns the accepted ones, or None
    (cancelled: nothing is added)."""

    DEFAULT_CLASSES = "dialog"
    BINDINGS = [
        Binding("escape", "stop_or_cancel", "Stop / cancel", id="synthetic.cancel"),
        Binding("a", "accept_all", "Add all", id="synthetic.accept_all"),
        Binding("s", "accept_selected", "Add ticked", id="synthetic.accept_selected"),
    ]

    def __init__(self, synthesizer: RequestSynthesizer, spec: SynthesisSpec) -> None:
        super().__init__()
        self.synthesizer = synthesizer
        self.spec = spec
        self.proposed: list[str] = []
        self.reports: list[str] = []  # bad replies, retries and what was left out
        self.stream = ""  # the reply being written
        self.reply_number = 0
        self.finished: SynthesisFinished | None = None
        self._shown = 0  # proposed requests already in the list
        self._dirty = True
        self._timer: Timer | None = None

    @property
    def running(self) -> bool:
        return self.finished is None

    def compose(self) -> ComposeResult:
        with Vertical(classes="box wide", id="synth-preview"):
            yield Label(f"New requests from {self.spec.model}", classes="title", markup=False)
            yield Static("", id="synth-status", markup=False)
            yield Static("", id="synth-stream", markup=False)
            yield SelectionList[int](id="synth-picks")
            yield Static("", id="synth-reports", markup=False)
            yield Static(
                "esc stops · space ticks a row · a adds all · s adds the ticked", classes="hint"
            )
            with Horizontal(classes="buttons"):
                yield Button("Add all", variant="primary", id="accept-all", disabled=True)
                yield Button("Add ticked", id="accept-selected", disabled=True)
                yield Button("Stop", id="stop")

    def on_mount(self) -> None:
        self._timer = self.set_interval(1 / REPAINT_HZ, self._repaint)
        self.picks.focus()
        self._run()

    @property
    def picks(self) -> SelectionList[int]:
        return self.query_one("#synth-picks", SelectionList)

    @work(exclusive=True, group="synthesis")
    async def _run(self) -> None:
        # Cancelled (the app closing): the screen is going, nothing to show.
        try:
            finished = await self.synthesizer.run(self.spec, self._on_event)
        except Exception:  # reported by the app's worker-error handler
            self._show_finished(SynthesisFinished("failed", "stopped by an error", ()))
            raise
        self._show_finished(finished)

    def _show_finished(self, finished: SynthesisFinished) -> None:
        self.finished = finished
        if self._timer is not None:
            self._timer.stop()
        self._dirty = True
        self._repaint()
        for button in ("#accept-all", "#accept-selected"):
            self.query_one(button, Button).disabled = not self.proposed
        self.query_one("#stop", Button).label = "Cancel"

    def _on_event(self, event: SynthesisEvent) -> None:
        """Engine events, on the UI loop: kept here and drawn by `_repaint` a few times a
        second, not once per token."""
        self._dirty = True
        if isinstance(event, BatchDelta):
            self.stream += event.text
        elif isinstance(event, BatchStarted):
            self.reply_number, self.stream = event.batch, ""
        elif isinstance(event, RequestProposed):
            self.proposed.append(event.text)
        elif isinstance(event, RequestRejected):
            self.reports.append(f"left out (reply {event.batch}): {event.text!r}: {event.reason}")
        elif isinstance(event, BadReply):
            self.reports.append(f"reply {event.batch}: {event.message}")
        elif isinstance(event, BatchRetry):
            self.reports.append(
                f"reply {event.batch}: {event.error}; asking again in {event.delay:.1f} s"
            )

    def _repaint(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        new = self.proposed[self._shown :]
        if new:
            self.picks.add_options(
                Selection(Text(text), index, True)
                for index, text in enumerate(new, start=self._shown)
            )
            self._shown = len(self.proposed)
            if self.picks.highlighted is None:
                self.picks.highlighted = 0  # a cursor for space to tick with
        self.query_one("#synth-status", Static).update(self.status_text())
        stream = self.stream[-STREAM_TAIL:].replace("\n", " ⏎ ") if self.running else ""
        self.query_one("#synth-stream", Static).update(stream)
        self.query_one("#synth-reports", Static).update("\n".join(self.reports[-REPORTS_SHOWN:]))

    def status_text(self) -> str:
        stats = self.synthesizer.stats
        parts = [f"{len(self.proposed):,} of {self.spec.count:,} new"]
        if stats.rejected:
            parts.append(f"{stats.rejected:,} left out")
        if stats.bad_replies:
            parts.append(f"{stats.bad_replies:,} bad replies")
        tokens = stats.prompt_tokens + stats.completion_tokens
        if tokens:
            parts.append(f"{tokens:,} tokens")
        if stats.cost:
            parts.append(f"${stats.cost:.4f}")
        if self.finished is None:
            return f"writing (reply {self.reply_number}) · " + " · ".join(parts)
        return f"{self.finished.status}: {self.finished.message} · " + " · ".join(parts)

    # -- what the person decides -----------------------------------------------------------

    def action_stop_or_cancel(self) -> None:
        if self.running:
            self.synthesizer.cancel()
        else:
            self.dismiss(None)

    def action_accept_all(self) -> None:
        if not self.running and self.proposed:
            self.dismiss(list(self.proposed))

    def action_accept_selected(self) -> None:
        if self.running:
            return
        ticked = set(self.picks.selected)
        chosen = [text for index, text in enumerate(self.proposed) if index in ticked]
        if chosen:
            self.dismiss(chosen)
        else:
            self.notify("No request is ticked: space ticks one, esc cancels.")

    @on(Button.Pressed, "#accept-all")
    def _all_pressed(self) -> None:
        self.action_accept_all()

    @on(Button.Pressed, "#accept-selected")
    def _selected_pressed(self) -> None:
        self.action_accept_selected()

    @on(Button.Pressed, "#stop")
    def _stop_pressed(self) -> None:
        self.action_stop_or_cancel()
