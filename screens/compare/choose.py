"""The Compare screen's choice of what to compare: an eval, 2–4 runs of one dataset (shown
side by side in the order of the recipe's report), and the baseline among them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Label, Select, SelectionList
from textual.widgets.selection_list import Selection

from screens.dialogs import Dialog
from tui.engine.eval_views import run_label, side_by_side
from tui.engine.store import EvalInfo, RunInfo


@dataclass(frozen=True)
class CompareRequest:
    eval_id: int
    run_ids: list[int]
    baseline_run_id: int


class CompareDialog(Dialog[CompareRequest]):
    """An eval, 2–4 runs of one dataset, and the baseline among them."""

    CSS_PATH = "compare.tcss"

    def __init__(
        self,
        evals: list[EvalInfo],
        runs: list[RunInfo],
        eval_id: int | None,
        run_ids: Sequence[int],
        baseline: int | None,
    ) -> None:
        super().__init__()
        self.evals = evals
        self.runs = [r for r in runs if r.n_done]
        self.eval_id = eval_id
        self.run_ids = list(run_ids)
        self.baseline = baseline

    def compose(self) -> ComposeResult:
        with Vertical(classes="box wide", id="compare-box"):
            yield Label("Compare runs", classes="title")
            yield Label("Eval")
            yield Select(
                [(e.name, e.id) for e in self.evals],
                value=self.eval_id if self.eval_id is not None else Select.NULL,
                id="c-eval",
                prompt="choose an eval",
            )
            yield Label("Runs (2–4, over the same dataset): space toggles")
            yield SelectionList[int](
                *(
                    Selection(
                        f"{run_label(r)} · {r.dataset_name or '?'} · {r.n_done:,} done",
                        r.id,
                        r.id in self.run_ids,
                    )
                    for r in self.runs
                ),
                id="c-runs",
            )
            yield Label("Baseline (the others' deltas are against it)")
            yield Select[int]([], id="c-baseline", prompt="choose the baseline")
            yield from self.buttons("Compare")

    def on_mount(self) -> None:
        self._baselines()
        self.query_one("#c-runs", SelectionList).focus()

    @on(SelectionList.SelectedChanged, "#c-runs")
    def _baselines(self) -> None:
        chosen = self.query_one("#c-runs", SelectionList).selected
        select = self.query_one("#c-baseline", Select)
        current = select.value
        select.set_options(
            [(run_label(r), r.id) for r in self.runs if r.id in chosen],
        )
        for value in (current, self.baseline, *sorted(chosen)):
            if value in chosen:
                select.value = value
                break

    def submit(self) -> None:
        eval_id = self.query_one("#c-eval", Select).value
        chosen: list[int] = list(self.query_one("#c-runs", SelectionList).selected)
        baseline = self.query_one("#c-baseline", Select).value
        if not isinstance(eval_id, int):
            self.show_error("Choose an eval.")
            return
        if not 2 <= len(chosen) <= 4:
            self.show_error(f"Choose 2 to 4 runs ({len(chosen)} chosen).")
            return
        datasets = {r.dataset_id for r in self.runs if r.id in chosen}
        if len(datasets) > 1:
            self.show_error("The runs must be over the same dataset.")
            return
        if not isinstance(baseline, int) or baseline not in chosen:
            self.show_error("Choose the baseline among the chosen runs.")
            return
        runs = side_by_side([r for r in self.runs if r.id in chosen])
        self.dismiss(CompareRequest(eval_id, runs, baseline))
