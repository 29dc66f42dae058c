"""The Evals screen's two lines above the results: the target line (`TargetLine`: which eval
grades what — a run, or the selection handed over from the Completions screen — and `o`,
which chooses another), and what the progress line says (`grading_figures` while grading,
`idle_text` otherwise: the eval run on view, or what to do next)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from rich.text import Text
from textual import work
from textual.message import Message
from textual.widgets import Static

from screens.evals.dialogs import TargetDialog
from tui.engine.eval_views import LiveResults, Target, run_targets, selection_targets
from tui.engine.evals import EvalRunner
from tui.engine.store import EvalInfo
from tui.widgets.progress_line import Figures

if TYPE_CHECKING:
    from screens.base import DistillHost


class TargetLine(Static):
    """What is graded (`target`), shown with the eval that grades it."""

    @dataclass
    class Chosen(Message):
        """Another run (or selection) was chosen to grade."""

        target: Target

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("", id=id)
        self.target: Target | None = None

    def show(self, evaluation: EvalInfo | None) -> None:
        text = Text()
        text.append("Eval ", style="dim")
        text.append(evaluation.name if evaluation else "none", style="bold")
        text.append("   on ", style="dim")
        target = self.target
        if target is None:
            text.append("no run yet", style="bold")
        else:
            if target.is_selection:
                text.append("selection ", style="bold magenta")
            text.append(target.label, style="bold")
        text.append("   o chooses", style="dim")
        self.update(text)

    @work(group="evals-edit", exit_on_error=False)
    async def choose(self) -> None:
        """The target dialog: the selection handed over (first), then every run with finished
        completions."""
        distill = cast("DistillHost", self.app)
        store = distill.store
        targets: list[Target] = []
        if distill.selection is not None:
            targets += await store.in_thread(selection_targets, store, distill.selection)
        targets += await store.in_thread(run_targets, store)
        if not targets:
            self.notify("No run has finished completions: generate one first (2).")
            return
        target = await self.app.push_screen_wait(TargetDialog(targets, self.target))
        if target is not None:
            self.target = target
            self.post_message(self.Chosen(target))


def grading_figures(runner: EvalRunner | None, live: LiveResults | None) -> Figures | None:
    """The progress line while `runner` grades the eval run on view."""
    if runner is None or live is None:
        return None
    stats = runner.stats
    notes: tuple[str | Text, ...] = ()
    if live.retries:
        notes = (Text(f"{live.retries} retries ({live.last_retry})", style="yellow"),)
    return Figures.of(
        stats,
        label="Grading",
        unit="grades",
        counts=(
            Text(f"{stats.passed:,} ✓", style="green"),
            Text(f"{stats.failed:,} ✗", style="red"),
            Text(f"{stats.errored:,} !", style="yellow"),
        ),
        notes=notes,
        hint="esc cancels",
    )


def idle_text(live: LiveResults | None, evaluation: EvalInfo | None, target: Target | None) -> Text:
    """What the progress line says when nothing is grading: the eval run on view, or what to
    do next."""
    text = Text()
    if live is not None:
        info = live.info
        status_style = {"done": "green", "cancelled": "yellow", "failed": "red"}
        text.append(f"Eval run {info.id} ", style="bold")
        text.append(info.status, style=status_style.get(info.status, "yellow"))
        text.append(f" · {len(live.rows):,} completions × {len(live.graders)} graders")
        text.append(f" · {info.created_at[:16].replace('T', ' ')}", style="dim")
        if info.status != "done":
            text.append("   R resumes", style="bold yellow")
        text.append("   g grades again", style="dim")
    elif evaluation is None:
        text.append("No eval yet: ", style="bold")
        text.append("p adds ready-made graders (command match + exact for the git task), ")
        text.append("n creates an empty eval.")
    elif not evaluation.graders:
        text.append("This eval has no graders: a adds one, p adds ready-made ones.")
    elif target is None:
        text.append("No run to grade: generate one on the Generate screen (2).")
    else:
        text.append("Not graded yet: ", style="bold")
        what = "the selection of run" if target.is_selection else "run"
        text.append(f"g grades {what} {target.run_id} with {evaluation.name!r}.")
    return text
