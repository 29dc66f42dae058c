"""The Compare screen's panels on their own, in a bare app, over a real comparison (the
student's baseline against the teacher and the fine-tuned student, all graded): the items
panel (outputs side by side, differences marked, enter opens an item) and the summary."""

from __future__ import annotations

import io

from rich.console import Console
from textual.app import App, ComposeResult
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Static

from screens.compare.items import CompareItems
from screens.compare.marks import DIFF_NEW, DIFF_OLD
from screens.compare.summary import CompareSummary
from tests.helpers.pilot import count_layouts
from tests.tui.eval_data import (
    GIT_GRADERS,
    build,
    lead_recovered,
    pass_rate,
    percent,
    versus,
)
from tui.engine.evals import Comparison, EvalRunner, compare, create_eval, start_eval_run
from tui.engine.settings import load_settings
from tui.engine.store import Store


class PanelApp(App[None]):
    """A bare app holding only the panel under test."""

    def __init__(self, panel: Widget) -> None:
        super().__init__()
        self.panel = panel

    def compose(self) -> ComposeResult:
        yield self.panel


async def comparison_of(store: Store) -> Comparison:
    work = build(store)
    eval_id = create_eval(store, "git commands", GIT_GRADERS)
    for run_id in work.runs.values():
        await EvalRunner(store).run(start_eval_run(store, eval_id, run_id))
    runs = [work.runs[r] for r in ("student", "teacher", "fine-tuned")]
    price = load_settings(workspace=store.directory).price  # the shipped price table
    return compare(store, eval_id, runs, runs[0], price)


def shown(widget: Static, width: int = 120) -> str:
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(widget.content)
    return console.export_text()


async def test_items_panel_marks_differences_and_opens_an_item(store: Store) -> None:
    comparison = await comparison_of(store)
    student, teacher, tuned = (c.run_id for c in comparison.runs)
    panel = CompareItems(id="compare-body")
    messages: list[Message] = []
    async with PanelApp(panel).run_test(size=(120, 30), message_hook=messages.append) as pilot:
        panel.set_comparison(comparison)
        panel.show(comparison.rows("regressions"))
        await pilot.pause()
        assert panel.table.row_count == 1
        assert [c.label for c in panel.table.columns] == [
            "#",
            "Request",
            f"run {student} baseline student ★",
            f"run {teacher} teacher",
            f"run {tuned} fine-tuned student",
        ]
        # The regression: the fine-tuned -D against the baseline's -d, cells by verdict.
        diff = panel.query_one("#compare-diff", Static).content
        marked = {
            style: [diff.plain[s.start : s.end] for s in diff.spans if str(s.style) == style]
            for style in (DIFF_OLD, DIFF_NEW)
        }
        assert marked == {DIFF_OLD: ["d"], DIFF_NEW: ["D"]}
        assert panel.cell_style(0, 2) == "green" and panel.cell_style(0, 4) == "red"
        assert panel.cell_style(0, 1) is None

        # All items; the cursor moves with real keys and enter opens the item.
        panel.show(comparison.rows("all"), from_top=True)
        panel.table.focus()
        await pilot.press("down", "enter")
        await pilot.pause()
        # The hook sees a message at every node it bubbles to: each one once.
        opened = list({id(m): m for m in messages if isinstance(m, CompareItems.Opened)}.values())
        assert [(m.comparison, m.row.position) for m in opened] == [(comparison, 2)]
        assert shown(panel.query_one("#compare-diff", Static)).startswith("#2 ")

        # With the teacher chosen to diff with, the baseline's line is marked against it.
        panel.set_versus(teacher)
        assert "◂ diffed with the baseline" in shown(panel.query_one("#compare-diff", Static))


async def test_moving_through_items_redraws_the_diff_without_a_layout(store: Store) -> None:
    """The diff under the items changes at every cursor move. At the same height it is drawn
    in place: holding a key down costs no layout of the screen per row (~40 ms each on a
    full screen, measured on the Evals screen's twin of this panel)."""
    comparison = await comparison_of(store)
    rows = comparison.rows("all")
    assert len(rows) >= 3
    panel = CompareItems(id="compare-body")
    async with PanelApp(panel).run_test(size=(120, 30)) as pilot:
        panel.set_comparison(comparison)
        panel.show(rows, from_top=True)
        panel.table.focus()
        await pilot.pause()
        diff = panel.query_one("#compare-diff", Static)
        height = diff.region.height
        layouts = count_layouts(pilot.app.screen)
        seen = []
        for _ in rows[1:]:
            await pilot.press("down")
            seen.append(shown(diff).split(" ", 1)[0])
            assert diff.region.height == height  # every item's diff takes the same lines
        assert seen == [f"#{row.position}" for row in rows[1:]]
        assert not layouts


async def test_summary_panel_shows_rates_deltas_and_filters(store: Store) -> None:
    comparison = await comparison_of(store)
    summary = CompareSummary()
    async with PanelApp(summary).run_test(size=(120, 30)) as pilot:
        counts = {which: len(comparison.rows(which)) for which in ("all", "regressions")}
        summary.show(comparison, dataset="git-requests", filter="regressions", counts=counts)
        summary.show_grading(None, "")
        await pilot.pause()
        title = shown(summary.query_one("#compare-title", Static))
        assert title.startswith("git commands on git-requests · 3 runs · 10 items")
        table = shown(summary.query_one("#compare-summary", Static))
        assert percent("student", "command match") in table  # the baseline: no delta
        assert versus("teacher", "student", "command match") in table  # "100.0% +70.0"
        assert versus("fine-tuned", "student", "command match") in table
        # Each run as the report's row, with its tokens per request and cost per 1k requests.
        student, teacher, tuned = (c.run_id for c in comparison.runs)
        lines = [line for line in table.splitlines() if line.startswith("│ run ")]
        rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")] for line in lines}
        assert list(rows) == [
            f"run {student} baseline student ★",
            f"run {teacher} teacher",
            f"run {tuned} fine-tuned student",
        ]
        assert rows[f"run {teacher} teacher"][-3:-1] == ["51", "$0.18"]
        assert rows[f"run {tuned} fine-tuned student"][-3:-1] == ["51", "$0.02"]
        # The business case: the share of the teacher's exact-match lead recovered.
        case = " ".join(shown(summary.query_one("#compare-case", Static)).split())
        tuned_rate, teacher_rate = (pass_rate(r, "exact match") for r in ("fine-tuned", "teacher"))
        assert case.startswith(
            f"fine-tuned student {tuned_rate:.0%} exact match vs teacher {teacher_rate:.0%} "
            f"({lead_recovered():.0%} of its"
        )
        assert "3.0× faster" in case and "$0.02 vs $0.18 / 1k req" in case
        filters = shown(summary.query_one("#compare-filters", Static))
        assert "All 10" in filters and "Regressions 1" in filters
        assert not summary.query_one("#compare-progress", Static).display

        summary.show(None, dataset="", filter="all", counts={})
        await pilot.pause()
        assert not summary.query_one("#compare-summary", Static).display
        assert not summary.query_one("#compare-case", Static).display
        assert "Nothing to compare yet" in shown(summary.query_one("#compare-title", Static))
