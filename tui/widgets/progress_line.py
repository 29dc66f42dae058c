"""The progress line of a long job: one format and one repaint rate for every screen.

A generation run, an eval run and a fine-tuning job all show the same things about a job in
progress: how much is done, what went wrong, how fast it goes, how long it has taken and how
long it still needs. This widget draws them one way, in this order:

    Grading ━━━━━━━━──── 120/200 grades · 3 failed · 14/s · elapsed 0:09 · ETA 0:06 · $0.01
    label   bar          done/total unit  counts     rate   clocks (one format)      notes

followed by a dim hint ("esc cancels"). Every part is optional: one left at its default is
not drawn.

API
---
``Figures`` (frozen dataclass): what one paint shows.
    ``label``; ``done``/``total``/``unit`` (the bar and "done/total unit", drawn when
    ``total`` is not None); ``counts`` (str or styled ``Text`` parts after the count);
    ``rate``/``rate_unit``; ``elapsed``; ``running`` + ``eta`` (the ETA is drawn while
    ``running``, as "–" until known); ``notes`` (parts after the clocks); ``hint``.
    ``Figures.text()`` is the line as a ``Text``.
``Figures.of(progress, **overrides)``: the figures of an engine ``Progress``
    (tui/engine/progress.py: ``RunStats``, ``EvalStats``): done = done_before +
    finished_items, total, rate = finished items a second, elapsed, and the ETA while the
    job has not finished. Keywords replace any field (``done=``, ``rate=``, ``unit=``...).
``clock(seconds)``: the one clock format, "m:ss", or "h:mm:ss" from an hour ("–" for None).
``ProgressLine(Static)``: the widget.
    ``show(what)`` paints ``Figures``, a ``Text`` or a plain string now, and stops following.
    ``follow(source)`` paints ``source()`` (any of those, or None to keep what is shown)
    ``REPAINT_HZ`` times a second while its screen is on top, so the clocks move with no
    event; ``follow(None)`` stops. ``shown`` is the plain text on show, ``following`` says
    whether a source is followed. The widget is refreshed only when what it shows changed,
    so a screen may call ``show`` as often as it likes.
``REPAINT_HZ``: the repaint rate of every live view (15 a second).
``on_repaint(widget, callback)``: ``callback`` REPAINT_HZ times a second from the one
    repaint timer of the widget's screen, which calls every widget's in the same turn, so a
    screen's live view and its progress line change in one frame, not two (a frame costs a
    compositor pass over the whole screen, whatever changed). Returns a function that stops
    it; it stops by itself once the widget is gone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from rich.cells import cell_len
from rich.text import Text
from textual.widget import Widget
from textual.widgets import Static

from tui.engine.progress import Progress

REPAINT_HZ = 15
BAR_WIDTH = 12
SEPARATOR = " · "


class _RepaintClock:
    """A screen's one repaint timer and the callbacks it calls, each with its widget."""

    def __init__(self, screen: Widget) -> None:
        self.callbacks: dict[int, tuple[Widget, Callable[[], object]]] = {}
        self._next = 0
        self.timer = screen.set_interval(1 / REPAINT_HZ, self._tick)

    def add(self, widget: Widget, callback: Callable[[], object]) -> Callable[[], None]:
        key, self._next = self._next, self._next + 1
        self.callbacks[key] = (widget, callback)
        return lambda: self.callbacks.pop(key, None) and None

    def _tick(self) -> None:
        for key, (widget, callback) in list(self.callbacks.items()):
            if not widget.is_attached:
                del self.callbacks[key]
            elif widget.is_mounted:
                callback()


def on_repaint(widget: Widget, callback: Callable[[], object]) -> Callable[[], None]:
    """Call `callback` on each tick of the repaint timer of `widget`'s screen (mounted)."""
    screen = widget.screen
    clock = getattr(screen, "_distill_repaint_clock", None)
    if clock is None:
        clock = _RepaintClock(screen)
        screen._distill_repaint_clock = clock  # type: ignore[attr-defined]
    return clock.add(widget, callback)


def clock(seconds: float | None) -> str:
    """The one clock format: "m:ss", or "h:mm:ss" from an hour; "–" when unknown."""
    if seconds is None:
        return "–"
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def rate_text(rate: float) -> str:
    # Slow jobs (an LLM judge, a fine-tune) go at less than one a second: keep a decimal.
    return f"{rate:,.1f}" if rate < 10 else f"{rate:,.0f}"


@dataclass(frozen=True)
class Figures:
    """What the progress line shows at one moment."""

    label: str = ""
    done: int = 0
    total: int | None = None  # None: no bar and no "done/total"
    unit: str = "done"
    counts: tuple[str | Text, ...] = ()
    rate: float | None = None
    rate_unit: str = "/s"
    elapsed: float | None = None
    running: bool = False  # the ETA is shown while running ("–" until it is known)
    eta: float | None = None
    notes: tuple[str | Text, ...] = ()
    hint: str = ""

    @classmethod
    def of(cls, progress: Progress, **overrides: Any) -> Figures:
        """The figures of an engine job's running totals; keywords replace any field."""
        elapsed = progress.elapsed
        finished = progress.finished_items
        running = progress.finished is None
        figures = cls(
            done=progress.done_before + finished,
            total=progress.total,
            rate=finished / elapsed if elapsed > 0 else 0.0,
            elapsed=elapsed,
            running=running,
            eta=progress.eta if running else None,
        )
        return replace(figures, **overrides) if overrides else figures

    def text(self) -> Text:
        line = Text()
        if self.label:
            line.append(self.label, style="bold")
            line.append(" ")
        parts: list[str | Text] = []
        if self.total is not None:
            head = Text()
            filled = min(BAR_WIDTH, BAR_WIDTH * self.done // self.total) if self.total > 0 else 0
            head.append("━" * filled, style="green")
            head.append("━" * (BAR_WIDTH - filled), style="dim")
            head.append(" ")
            head.append(f"{self.done:,}", style="bold")
            head.append(f"/{self.total:,} {self.unit}")
            parts.append(head)
        parts += self.counts
        if self.rate is not None:
            parts.append(f"{rate_text(self.rate)}{self.rate_unit}")
        if self.elapsed is not None:
            parts.append(f"elapsed {clock(self.elapsed)}")
        if self.running:
            parts.append(f"ETA {clock(self.eta)}")
        parts += self.notes
        for n, part in enumerate(parts):
            if n:
                line.append(SEPARATOR)
            line.append(part)
        if self.hint:
            line.append(f"   {self.hint}", style="dim")
        return line


Shown = Figures | Text | str
Source = Callable[[], Shown | None]


class ProgressLine(Static):
    """A job's progress in one line (two when narrow): see the module docstring."""

    DEFAULT_CSS = """
    ProgressLine {
        height: auto;
        max-height: 2;
    }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__("", id=id, classes=classes, markup=False)
        self._shown: Text | str = ""
        self._source: Source | None = None
        self._stop_ticks: Callable[[], None] | None = None
        self._lines: tuple[bool, bool] | None = None  # (wider than the line, several lines)

    def show(self, what: Shown) -> None:
        """Show `what` now; the line stops following a source."""
        self.follow(None)
        self._paint(what)

    def follow(self, source: Source | None) -> None:
        """Repaint from `source()` REPAINT_HZ times a second (None: stop)."""
        self._source = source
        if source is None:
            if self._stop_ticks is not None:
                self._stop_ticks()
                self._stop_ticks = None
            return
        self._tick()
        if self._stop_ticks is None:
            self._stop_ticks = on_repaint(self, self._tick)

    @property
    def following(self) -> bool:
        return self._source is not None

    @property
    def shown(self) -> str:
        """What the line shows, as plain text."""
        shown = self._shown
        return shown.plain if isinstance(shown, Text) else shown

    def _tick(self) -> None:
        source = self._source
        if source is None or not self.is_mounted or not self.screen.is_active:
            return
        what = source()
        if what is not None:
            self._paint(what)

    def _paint(self, what: Shown) -> None:
        text = what.text() if isinstance(what, Figures) else what
        if text != self._shown:
            self._shown = text
            # A new layout of the whole screen only when the line may take another height
            # (one line or two): the figures change REPAINT_HZ times a second, their height
            # hardly ever.
            width = self.content_size.width
            plain = text.plain if isinstance(text, Text) else text
            lines = (cell_len(plain) > width, "\n" in plain) if width else None
            self.update(text, layout=lines is None or lines != self._lines)
            self._lines = lines
