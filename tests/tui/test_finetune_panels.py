"""The Fine-tune screen's panels, each alone in a tiny app on a real workspace, driven with real
keys: what the training-set panel keeps as its source and filters are chosen, and what it and
the launch panel post."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from textual.app import App, ComposeResult
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import Button, Input, Select, Static

import screens.finetune
from screens.finetune.launch import LaunchPanel
from screens.finetune.training import TrainingSetPanel, references_source, run_source
from tests.helpers.pilot import Harness
from tests.tui.conftest import plain
from tui.engine.datasets import ItemDraft
from tui.engine.finetune import FineTuneError
from tui.engine.settings import load_settings
from tui.engine.store import Store

CSS = Path(screens.finetune.__file__).parent / "finetune.tcss"


class PanelApp(App[None]):
    """One panel on a real workspace: the app attributes the panels read, nothing else."""

    CSS_PATH = CSS
    backend_label: reactive[str] = reactive("")

    def __init__(self, panel: Widget, store: Store) -> None:
        super().__init__()
        self.panel = panel
        self.store = store
        self.settings = load_settings(workspace=store.directory)
        self.backend = None
        self.backends = None
        self.job_updates: dict[int, Any] = {}

    def compose(self) -> ComposeResult:
        yield self.panel


@asynccontextmanager
async def host(panel: Widget, store: Store) -> AsyncIterator[Harness]:
    app = PanelApp(panel, store)
    messages: list[Message] = []
    async with app.run_test(size=(100, 40), message_hook=messages.append) as pilot:
        yield Harness(app, pilot, messages)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store.open(tmp_path / "ws")
    yield store
    store.close()


def voted_run(store: Store) -> tuple[int, int]:
    """12 requests (2 without a reference) labelled by a teacher that sampled 4 times each:
    #0 failed, #1–#3 only half the samples agreed, the rest all 4."""
    items = [
        ItemDraft(f"Create a branch called 'b-{i}'.", "" if i in (4, 9) else f"git branch b-{i}")
        for i in range(12)
    ]
    dataset = store.create_dataset("git", "Reply with one git command.", items)
    run = store.create_run(
        dataset_id=dataset, model="gpt-4o", role="teacher", params={"samples": 4}
    )
    for n, item in enumerate(store.items(dataset)):
        store.save_completion(
            run,
            item.id,
            output="" if n == 0 else f"git branch b-{n}",
            status="failed" if n == 0 else "done",
            confidence=0.5 if 1 <= n <= 3 else 1.0,
            samples="[]",
        )
    store.set_run_status(run, "done", finished=True)
    return dataset, run


async def test_training_set_panel_keeps_what_its_filters_say(store: Store) -> None:
    dataset, run = voted_run(store)
    panel = TrainingSetPanel(id="ft-training")
    async with host(panel, store) as h:
        panel.fill_sources()
        await h.settle()
        source = panel.query_one("#source-run", Select)
        assert source.value == run_source(run)
        assert panel.query_one("#ft-gate", Select).disabled  # no eval run of it yet
        kept = panel.query_one("#ft-kept", Static)
        assert plain(kept) == "Kept 11 of 12 completions · dropped: 1 not finished"
        # The run's dataset gives the student its prompt.
        assert panel.query_one("#student-prompt", Input).value == "Reply with one git command."

        await h.pilot.click("#ft-min-confidence")
        await h.pilot.press(*"3/4")
        await h.settle()
        assert plain(kept) == (
            "Kept 8 of 12 completions · dropped: 1 not finished, 3 below confidence 75%"
        )
        source_now = panel.source()
        assert (source_now.run_id, source_now.min_confidence) == (run, 0.75)
        changes = len(h.posted(TrainingSetPanel.Changed))
        assert changes >= 3  # the source chosen, then each key typed

        # A wrong confidence: said where the count was, and the source refuses it.
        await h.pilot.press("backspace", "backspace", "backspace", *"lots")
        await h.settle()
        assert plain(kept).startswith("min confidence:")
        with pytest.raises(FineTuneError, match="min confidence"):
            panel.source()

        # The dataset's references as the teacher, picked with the keyboard.
        source.focus()
        await h.pilot.press("enter", "end", "enter")
        await h.settle()
        assert source.value == references_source(dataset)
        assert panel.query_one("#ft-min-confidence", Input).disabled
        assert plain(kept) == "Kept 10 of 12 items · dropped: 2 no reference"
        assert len(h.posted(TrainingSetPanel.Changed)) > changes

        # Validate is the screen's: the panel only asks.
        panel.query_one("#validate", Button).focus()
        await h.pilot.press("enter")
        await h.settle()
        assert len(h.posted(TrainingSetPanel.ValidateRequested)) == 1


async def test_launch_panel_checks_the_base_and_reads_the_job(store: Store) -> None:
    panel = LaunchPanel(id="ft-launch")
    async with host(panel, store) as h:
        await h.settle()
        base = panel.query_one("#ft-base", Static)
        student = h.app.settings.student
        assert panel.query_one("#base-model", Input).value == student
        assert "Fine-tunes" in plain(base)
        assert h.posted(LaunchPanel.BaseChecked)[-1].error is None

        await h.pilot.click("#base-model")
        await h.pilot.press("end", "ctrl+u")
        await h.settle()
        assert h.posted(LaunchPanel.BaseChecked)[-1].error is not None
        assert "name the base model" in plain(base)
        assert panel.query_one("#launch", Button).disabled

        await h.pilot.press(*student)
        await h.pilot.click("#n-epochs")
        await h.pilot.press("end", "ctrl+u", "3")
        await h.pilot.click("#lr")
        await h.pilot.press("end", "ctrl+u", *"0.5")
        await h.settle()
        assert h.posted(LaunchPanel.BaseChecked)[-1].error is None
        job = panel.job_settings()
        assert panel.n_epochs() == 3
        assert job.hyperparameters.n_epochs == 3
        assert job.hyperparameters.batch_size == "auto"
        assert job.hyperparameters.learning_rate_multiplier == 0.5
        assert (job.suffix, job.seed) == ("distill", 0)

        await h.pilot.click("#launch")
        await h.settle()
        assert len(h.posted(LaunchPanel.LaunchRequested)) == 1

        await h.pilot.click("#n-epochs")
        await h.pilot.press("end", "ctrl+u", *"-1")
        with pytest.raises(FineTuneError, match="greater than 0"):
            panel.n_epochs()
