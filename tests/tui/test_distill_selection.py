"""The seed's step 6 as a user does it: on the Completions screen, filter by the teacher's model
and metadata, press d (Distill), and the Fine-tune form trains on exactly those completions."""

from __future__ import annotations

import json

from textual.widgets import Input, Select, Static

from screens.finetune import SELECTION, FineTuneScreen, run_source
from tests.tui.conftest import Driver, drive, make_app, plain
from tui.engine.datasets import ItemDraft
from tui.engine.generation import RunSpec, create_run
from tui.engine.store import Store

PROMPT = "Reply with one git command."
N = 30
# model:gpt-4o is the teacher's exact name (not gpt-4o-mini); meta:task=git leaves out the
# teacher's other run; "topic-1" keeps topic-1 and topic-10 … topic-19.
FILTER = "model:gpt-4o meta:task=git topic-1"
PICKED = [1, *range(10, 20)]


def workspace(store: Store) -> dict[str, int]:
    """A dataset of 30 requests; the student's run, the teacher's run for task=git and a
    teacher run with other metadata, every completion done."""
    items = [ItemDraft(f"Create a new branch called 'topic-{i}'.", "", "train") for i in range(N)]
    dataset = store.create_dataset("branches", PROMPT, items)
    runs = {
        "student": create_run(
            store, RunSpec(dataset, "gpt-4o-mini", role="student", metadata={"task": "git"})
        ),
        "teacher": create_run(
            store, RunSpec(dataset, "gpt-4o", role="teacher", metadata={"task": "git"})
        ),
        "other": create_run(
            store, RunSpec(dataset, "gpt-4o", role="teacher", metadata={"task": "other"})
        ),
    }
    for name, run_id in runs.items():
        for i, item in enumerate(store.items(dataset)):
            store.save_completion(run_id, item.id, output=teacher_output(name, i), status="done")
    return runs


def teacher_output(run: str, i: int) -> str:
    return {
        "student": f"git checkout topic-{i}",
        "teacher": f"git switch -c topic-{i}",
        "other": f"git branch topic-{i} # other",
    }[run]


async def distill(t: Driver) -> FineTuneScreen:
    """On the Completions screen: / , type the filter, enter, d."""
    await t.press("3")
    await t.settle()
    await t.press("slash")
    await t.type(FILTER)
    await t.press("enter")
    await t.settle()
    await t.press("d")
    await t.settle()
    assert t.app.current_mode == "finetune"
    screen = t.app.screen
    assert isinstance(screen, FineTuneScreen)
    return screen


def examples(screen: FineTuneScreen) -> list[dict[str, object]]:
    training = screen.training
    assert training is not None
    text = (training.jsonl("train") + training.jsonl("validation")).decode()
    return [json.loads(line) for line in text.splitlines()]


async def test_distill_trains_on_exactly_the_filtered_completions(store: Store) -> None:
    runs = workspace(store)
    async with drive(make_app(store)) as t:
        # The Fine-tune screen seen before: it offers runs, no selection yet.
        await t.press("5")
        await t.settle()
        screen = t.app.screen
        assert isinstance(screen, FineTuneScreen)
        source = screen.query_one("#source-run", Select)
        assert source.value in [run_source(r) for r in runs.values()]
        assert not screen.query_one("#source-note", Static).display

        assert await distill(t) is screen
        # The form says it trains on the selection: how many completions, which filter.
        assert source.value == SELECTION
        note = screen.query_one("#source-note", Static)
        assert note.display
        assert (
            f"Training on the selection from Completions: {len(PICKED)} completions of run "
            f"{runs['teacher']}, filter {FILTER}" in plain(note)
        )
        assert screen.query_one("#student-prompt", Input).value == PROMPT

        await t.pilot.click("#validate")
        await t.settle()
        report = plain(screen.query_one("#report", Static))
        assert "10 training and 1 validation examples" in report, report
        # The training file (train + validation) holds exactly the selected teacher outputs,
        # each after the student's prompt and its own request.
        got = sorted(
            (e["messages"][0]["content"], e["messages"][1]["content"], e["messages"][2]["content"])  # type: ignore[index]
            for e in examples(screen)
        )
        want = sorted(
            (PROMPT, f"Create a new branch called 'topic-{i}'.", teacher_output("teacher", i))
            for i in PICKED
        )
        assert got == want

        # Another source can be chosen, and the selection stays on offer.
        source.value = run_source(runs["student"])
        await t.pilot.pause()
        assert not note.display
        await t.pilot.click("#validate")
        await t.settle()
        assert len(examples(screen)) == N
        source.value = SELECTION
        await t.pilot.pause()
        assert note.display
        assert not t.errors()


async def test_distill_opens_the_fine_tune_screen_on_the_selection(store: Store) -> None:
    """The first visit to the Fine-tune screen is Distill's: it opens on the selection."""
    runs = workspace(store)
    async with drive(make_app(store)) as t:
        screen = await distill(t)
        assert t.app.selection_for == "finetune"
        assert screen.query_one("#source-run", Select).value == SELECTION
        assert f"completions of run {runs['teacher']}" in plain(
            screen.query_one("#source-note", Static)
        )
        await t.pilot.click("#validate")
        await t.settle()
        outputs = {e["messages"][2]["content"] for e in examples(screen)}  # type: ignore[index]
        assert outputs == {teacher_output("teacher", i) for i in PICKED}
