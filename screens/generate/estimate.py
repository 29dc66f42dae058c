"""The Generate form's estimate line: items, tokens and what the run will cost, live and (when
priced) at the batch price, the chosen mode's in bold. `RunEstimate` is the line itself, worked
out again a quarter of a second after the form last changed."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from rich.text import Text
from textual import work
from textual.timer import Timer
from textual.widgets import Static

from tui.engine.batch import batch_estimate
from tui.engine.generation import Estimate, estimate_spec
from tui.engine.run_form import FormError, RunForm
from tui.engine.store import StoreError

if TYPE_CHECKING:
    from screens.base import DistillHost
    from screens.generate.models import RunTarget

# Typing in a field changes the form at every key: the estimate (a store query in a thread)
# waits until the keys pause.
SETTLE_SECONDS = 0.25


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


class RunEstimate(Static):
    """What the form's run would cost, or what is wrong with the form (in red)."""

    def __init__(
        self,
        read_form: Callable[[], RunForm],
        target: Callable[[str, str], RunTarget],
        *,
        id: str | None = None,
    ) -> None:
        super().__init__("", id=id)
        self._read_form = read_form
        self._target = target
        self._timer: Timer | None = None

    def schedule(self) -> None:
        """Work the estimate out again once the form has stopped changing."""
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_timer(SETTLE_SECONDS, self._estimate)

    @work(exclusive=True, group="estimate", exit_on_error=False)
    async def _estimate(self) -> None:
        distill = cast("DistillHost", self.app)
        try:
            form = self._read_form()
            spec = form.to_spec()
        except FormError as error:
            self.update(Text(str(error), style="red"))
            return
        store = distill.store
        target = self._target(spec.model, spec.role)
        price = distill.settings.price(spec.model, target.price_role)
        try:
            estimate = await store.in_thread(estimate_spec, store, spec, price)
        except StoreError as error:
            self.update(Text(str(error), style="red"))
            return
        discount = distill.settings.batch_discount
        self.update(
            estimate_text(
                estimate,
                local=target.kind == "local",
                batch_cost=batch_estimate(estimate, price, discount),
                batch=form.batch(),
            )
        )
