"""The Generate form's estimate line: items, tokens and what the run will cost, live and (when
priced) at the batch price, the chosen mode's in bold."""

from __future__ import annotations

from rich.text import Text

from tui.engine.generation import Estimate


def estimate_text(
    estimate: Estimate, *, local: bool, batch_cost: float | None = None, batch: bool = False
) -> Text:
    """The estimate line; with `batch_cost`, the price of the run as a batch beside the live
    one, the chosen mode's in bold."""
    text = Text("Estimate ", style="bold")
    text.append(
        f"{estimate.items:,} items · ≈{estimate.prompt_tokens:,} prompt + "
        f"{estimate.completion_tokens:,} completion tokens"
    )
    if estimate.samples > 1:
        text.append(f" ({estimate.samples} samples a request)")
    text.append(" · ")
    if estimate.priced and batch_cost is not None:
        text.append(f"≈${estimate.cost:,.4f} live", style="" if batch else "bold")
        text.append(" · ")
        text.append(f"≈${batch_cost:,.4f} batch", style="bold" if batch else "")
    elif estimate.priced:
        text.append(f"≈${estimate.cost:,.4f}", style="bold")
    elif local:
        text.append("free (local)")
    else:
        text.append("unpriced", style="yellow")
    return text
