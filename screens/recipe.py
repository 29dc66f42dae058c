"""The Recipe view: the seven steps of the distillation recipe for the current dataset, which
are done, and the key that opens each — a newcomer's map from a fresh start to a comparison."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.markup import escape
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from screens.base import DistillScreen
from tui.engine.recipe import StepStatus, recipe_progress


class RecipeScreen(DistillScreen):
    CSS_PATH = "recipe.tcss"
    BINDINGS = [Binding("r", "refresh", "Refresh", id="recipe.refresh")]

    def compose_body(self) -> ComposeResult:
        with Vertical(id="recipe"):
            yield Static("", id="recipe-intro")
            yield OptionList(id="steps")
            yield Static(
                "enter opens the step's screen · `distill-tui run` does all seven unattended",
                id="recipe-hint",
            )

    def on_mount(self) -> None:
        self.sub_title = "Recipe"
        self.action_refresh()
        self.query_one(OptionList).focus()

    def on_screen_resume(self) -> None:
        self.action_refresh()

    def _dataset_id(self) -> int | None:
        store = self.distill.store
        current = self.distill.current_dataset_id
        if current is not None:
            return current
        datasets = store.list_datasets()
        if not datasets:
            return None
        preferred = next((d for d in datasets if d.name == "git-requests"), datasets[0])
        return preferred.id

    def action_refresh(self) -> None:
        steps = recipe_progress(self.distill.store, self._dataset_id(), self.distill.settings)
        self.steps = steps
        done = sum(s.done for s in steps)
        nxt = next((s for s in steps if not s.done), None)
        self.query_one("#recipe-intro", Static).update(
            f"[b]{done} of 7 steps done.[/b] "
            + (
                f"Next: {escape(nxt.title.lower())} (key {self.distill.screen_key(nxt.screen)})."
                if nxt
                else "All done."
            )
        )
        option_list = self.query_one(OptionList)
        highlighted = option_list.highlighted
        option_list.clear_options()
        option_list.add_options([_option(s, self.distill.screen_key(s.screen)) for s in steps])
        option_list.highlighted = (
            highlighted if highlighted is not None else ((nxt.number - 1) if nxt else 0)
        )

    @on(OptionList.OptionSelected)
    async def _open(self, event: OptionList.OptionSelected) -> None:
        step = self.steps[event.option_index]
        await self.app.run_action(f"switch_mode('{step.screen}')")


def _option(step: StepStatus, key: str) -> Option:
    mark = "[green]✓[/green]" if step.done else "[dim]○[/dim]"
    return Option(
        # The detail names the dataset and models, which may hold brackets ("ops [/b]").
        f"{mark} [b]{step.number}. {escape(step.title)}[/b]  [dim](key {key})[/dim]\n"
        f"     {escape(step.detail)}",
        id=f"step-{step.number}",
    )
