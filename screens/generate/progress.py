"""The figures of the Generate screen's progress line for the run on view (`run_figures`):
done of total, failed and cancelled, the requests in flight against their limit, the cost,
and once it is over how the run ended.

A module of its own because the progress line is not part of the live view: the screen
(screen.py) hands `run_figures` to its `ProgressLine`, which asks REPAINT_HZ times a second,
reading the engine's totals while the run goes and the live run's counts otherwise."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text

from tui.engine.generation import ConcurrencyChanged, RunStats, cost_of
from tui.engine.settings import Price
from tui.widgets.progress_line import Figures

if TYPE_CHECKING:
    from screens.generate.live_run import LiveRun


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
    live: LiveRun,
    stats: RunStats | None,
    *,
    running: bool,
    price: Price,
    local: bool,
    elsewhere: bool = False,
) -> Figures:
    """The progress line of the run on view: the engine's totals while it runs (and after,
    until another run is viewed), else the counts of what the store holds. `elsewhere`: the
    run is being generated in this app, not by this screen (the recipe on the Recipe view)."""
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
        if status == "running" and not elsewhere:
            status = "interrupted"  # nothing generates it: a session ended mid-run
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
