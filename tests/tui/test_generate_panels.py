"""The Generate screen's panels, each alone in a tiny app on a real workspace, driven with real
keys: what the run form posts and shows, what the runs table posts and how it shows a running
run, and which item the stream panel of the live view shows as events arrive and the user
moves the cursor."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from rich.text import Text
from textual.app import App, ComposeResult
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Button, Input, Select, Static, TextArea

import screens.generate
from screens.generate.form import RunFormPanel
from screens.generate.live import LiveRunView
from screens.generate.live_run import LiveRun
from screens.generate.progress import run_figures
from screens.generate.run_header import SETTINGS_PROMPT_CHARS, run_settings
from screens.generate.runs import RunsPanel
from tests.helpers.pilot import Harness
from tests.tui.conftest import SMALL_ITEMS, SMALL_NAME, SMALL_PROMPT, plain
from tui.engine.generation import (
    ConcurrencyChanged,
    ItemDelta,
    ItemFinished,
    ItemStarted,
    RunSpec,
    RunStats,
    SamplingParams,
    create_run,
)
from tui.engine.run_form import FormError, RunForm
from tui.engine.settings import Price, Settings, load_settings
from tui.engine.store import Store

CSS = Path(screens.generate.__file__).parent / "generate.tcss"


class PanelApp(App[None]):
    """One panel on a real workspace: the app attributes the panels read, nothing else."""

    CSS_PATH = CSS

    def __init__(self, panel: Widget, store: Store, settings: Settings) -> None:
        super().__init__()
        self.panel = panel
        self.store = store
        self.settings = settings
        self.backend = None
        self.backends = None
        self.current_dataset_id: int | None = None

    def compose(self) -> ComposeResult:
        yield self.panel


@asynccontextmanager
async def host(panel: Widget, store: Store) -> AsyncIterator[Harness]:
    app = PanelApp(panel, store, load_settings(workspace=store.directory))
    messages: list[Message] = []
    async with app.run_test(size=(120, 40), message_hook=messages.append) as pilot:
        yield Harness(app, pilot, messages)


@pytest.fixture
def small(store: Store) -> int:
    return store.create_dataset(SMALL_NAME, SMALL_PROMPT, SMALL_ITEMS)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store.open(tmp_path / "ws")
    yield store
    store.close()


# -- the run form ------------------------------------------------------------------------


async def test_form_fills_defaults_and_submits_what_was_typed(store: Store, small: int) -> None:
    panel = RunFormPanel(id="gen-left")
    async with host(panel, store) as h:
        panel.load_datasets()
        await h.settle()
        assert panel.dataset is not None and panel.dataset.id == small
        assert panel.query_one("#system-prompt", TextArea).text == SMALL_PROMPT
        assert panel.query_one("#model", Input).value == h.app.settings.student
        assert panel.query_one("#metadata", Input).value == f"task={SMALL_NAME} role=student"
        assert h.posted(RunFormPanel.DatasetChanged)[-1].dataset.id == small

        # The teacher role, picked with the keyboard, changes the untouched defaults.
        panel.query_one("#role").focus()
        await h.pilot.press("enter", "down", "enter")
        await h.settle()
        assert panel.query_one("#metadata", Input).value == f"task={SMALL_NAME} role=teacher"
        assert panel.query_one("#model", Input).value == h.app.settings.teacher

        await h.pilot.click("#model")
        await h.pilot.press("end", "ctrl+u", *"my-model", "tab")
        await h.pilot.click("#start")
        await h.settle()
        (submitted,) = h.posted(RunFormPanel.Submitted)
        form: RunForm = submitted.form
        assert (form.dataset_id, form.model, form.role) == (small, "my-model", "teacher")
        assert form.metadata == f"task={SMALL_NAME} role=teacher"
        assert form.system_prompt == SMALL_PROMPT
        spec = form.to_spec()
        assert spec.metadata == {"task": SMALL_NAME, "role": "teacher"}


async def test_form_estimate_and_a_wrong_field(store: Store, small: int) -> None:
    panel = RunFormPanel(id="gen-left")
    async with host(panel, store) as h:
        panel.load_datasets()
        # The estimate waits for typing to pause.
        await h.wait_until(lambda: "items" in plain(panel.query_one("#estimate", Static)))
        await h.settle()
        estimate = plain(panel.query_one("#estimate", Static))
        # No backend and no key: the local backend's runs cost nothing.
        assert f"{len(SMALL_ITEMS)} items" in estimate and "free (local)" in estimate

        await h.pilot.click("#temperature")
        await h.pilot.press(*"hot")
        await h.wait_until(
            lambda: (
                "temperature: 'hot' is not a number" in plain(panel.query_one("#estimate", Static))
            )
        )

        # The screen hands a refused form back: the cursor goes to the field at fault.
        panel.query_one("#model").focus()
        panel.show_error(FormError("temperature", "temperature: 'hot' is not a number"))
        await h.pilot.pause()
        assert h.app.focused is panel.query_one("#temperature")


async def test_form_buttons_while_a_run_goes(store: Store, small: int) -> None:
    panel = RunFormPanel(id="gen-left")
    async with host(panel, store) as h:
        panel.load_datasets()
        await h.settle()
        cancel = panel.query_one("#cancel", Button)
        assert not cancel.display

        await h.pilot.click("#resume")
        await h.settle()
        (resume,) = h.posted(RunFormPanel.ResumeRequested)
        assert resume.form.dataset_id == small

        # While a run goes: the form is out of reach (its place shows the run's settings),
        # a click where it was changes nothing, and Cancel replaces Start and Resume.
        panel.query_one("#temperature", Input).focus()
        await h.pilot.pause()
        panel.set_running(True, Text("Run 7 is going · esc cancels"))
        await h.pilot.pause()
        assert not panel.query_one("#gen-form").display
        assert h.app.focused is None  # the focused field let go
        assert "Run 7 is going" in plain(panel.query_one("#run-settings", Static))
        start = panel.query_one("#start", Button)
        assert not start.display and cancel.display
        await h.pilot.click(panel, offset=(15, 3))  # where the Split select was
        await h.pilot.press("x")
        await h.settle()
        assert h.app.focused is None
        assert panel.read_form().split == "all" and panel.read_form().temperature == ""
        await h.pilot.click("#cancel")
        await h.settle()
        assert len(h.posted(RunFormPanel.CancelRequested)) == 1
        panel.cancelling()
        assert cancel.disabled

        # The next run's Cancel works again.
        panel.set_running(False)
        await h.pilot.pause()
        assert panel.query_one("#gen-form").display and start.display
        assert not panel.query_one("#run-settings", Static).display
        panel.set_running(True)
        await h.pilot.pause()
        assert not cancel.disabled
        await h.pilot.click("#cancel")
        await h.settle()
        assert len(h.posted(RunFormPanel.CancelRequested)) == 2


def completion_tokens(panel: RunFormPanel) -> int:
    found = re.search(r"([\d,]+) completion tokens", plain(panel.query_one("#estimate", Static)))
    assert found, plain(panel.query_one("#estimate", Static))
    return int(found.group(1).replace(",", ""))


def test_a_going_runs_settings_are_its_own(store: Store, small: int) -> None:
    """What the form's place shows while a run goes: the run's own settings (a resumed run
    may not match the form), the pool it retrieves from, its vote, the budget it was given,
    and a long system prompt cut to its first lines."""
    prompt = "Answer with one git command. " * 20
    spec = RunSpec(
        small,
        "gpt-4o",
        role="teacher",
        system_prompt=prompt,
        split="train",
        params=SamplingParams(temperature=0.7, max_tokens=64, seed=3),
        metadata={"task": "git"},
        retrieve_k=4,
        retrieve_from=[1, 2, 3],
        samples=5,
        vote="command_match",
    )
    run = store.get_run(create_run(store, spec))
    text = run_settings(run, 2.5, batch=True).plain
    lines = dict((line[:12].strip(), line[12:]) for line in text.splitlines() if line[:1].isupper())
    assert text.startswith(f"Run {run.id} is going · esc cancels")
    assert lines["Model"] == "gpt-4o" and lines["Role"] == "teacher"
    assert lines["Split"] == "train" and lines["Temperature"] == "0.7"
    assert lines["Max tokens"] == "64" and lines["Seed"] == "3"
    assert lines["Metadata"] == "task=git"
    assert lines["Few-shot k"] == "4 from the labelled pool"
    assert lines["Samples n"] == "5, vote command_match"
    assert lines["Budget $"] == "2.5" and lines["Send as"] == "batch (≤ 24 h)"
    shown = text.split("System prompt\n", 1)[1]
    assert len(shown) <= SETTINGS_PROMPT_CHARS and shown.endswith("…")
    assert prompt.startswith(shown[:-1])

    plain_run = store.get_run(create_run(store, RunSpec(small, "m")))
    text = run_settings(plain_run, None, batch=False).plain
    assert "Temperature default" in text and "Budget $    no cap" in text
    assert "Few-shot k  0" in text and "Samples n   1" in text
    assert text.endswith("System prompt\nnone")


async def test_teacher_options_samples_vote_and_the_recipes_pool(store: Store, small: int) -> None:
    """n samples and the vote, and few-shot examples from the recipe's labelled pool, set with
    the keyboard; the rows that mean nothing until then stay hidden, and the estimate pays for
    every sample."""
    pool = [i.id for i in store.items(small, "train")[:2]]
    panel = RunFormPanel(id="gen-left")
    async with host(panel, store) as h:
        panel.load_datasets()
        await h.wait_until(
            lambda: "completion tokens" in plain(panel.query_one("#estimate", Static))
        )
        await h.settle()
        vote_row, examples_row = panel.query_one("#vote-row"), panel.query_one("#examples-from-row")
        assert not vote_row.display and not examples_row.display
        one_sample = completion_tokens(panel)

        panel.query_one("#samples").focus()
        await h.pilot.press("end", "ctrl+u", "4")
        await h.wait_until(
            lambda: "(4 samples a request)" in plain(panel.query_one("#estimate", Static))
        )
        await h.settle()
        assert vote_row.display
        estimate = plain(panel.query_one("#estimate", Static))
        assert "(4 samples a request)" in estimate
        assert completion_tokens(panel) == 4 * one_sample
        vote = panel.query_one("#vote", Select)
        assert vote.value == "normalised"
        vote.focus()
        await h.pilot.press("enter", "up", "enter")
        assert vote.value == "command_match"

        panel.query_one("#few-shot").focus()
        await h.pilot.press("end", "ctrl+u", "2")
        await h.pilot.pause()
        assert examples_row.display
        examples = panel.query_one("#examples-from", Select)
        # No recipe state in the workspace: every train reference is the only source.
        assert [value for _, value in examples._options] == ["train"]

        # The recipe chooses a pool; the form offers it when it is shown again.
        state = {"version": 2, "dataset_id": small, "pool": pool}
        (store.directory / "recipe-state.json").write_text(json.dumps(state))
        panel.load_datasets()
        await h.pilot.pause()
        assert [str(label) for label, _ in examples._options] == [
            "all train references",
            "the recipe's labelled pool (2)",
        ]
        examples.focus()
        await h.pilot.press("enter", "down", "enter")
        assert examples.value == "pool"

        await h.pilot.click("#start")
        await h.settle()
        (submitted,) = h.posted(RunFormPanel.Submitted)
        spec = submitted.form.to_spec()
        assert (spec.samples, spec.vote) == (4, "command_match")
        assert (spec.retrieve_k, spec.retrieve_from) == (2, pool)

        # Back to one sample: the vote row goes away and the spec takes no vote.
        panel.query_one("#samples").focus()
        await h.pilot.press("backspace", "1")
        await h.pilot.pause()
        assert not vote_row.display
        assert panel.read_form().to_spec().samples == 1


def test_progress_line_shows_the_in_flight_limit(store: Store, small: int) -> None:
    """The figures the progress line reads at each repaint: requests in flight against the
    limit, the limit lowered below the configured concurrency, and the 429s so far."""
    (run_id,) = make_runs(store, small, 1)
    live = LiveRun(store.get_run(run_id), store.run_items(run_id), [])
    free = Price()

    def line(running: bool = True) -> str:
        return run_figures(live, stats, running=running, price=free, local=True).text().plain

    stats = RunStats(total=10, todo=10, in_flight=12, concurrency_limit=64)
    assert "in flight 12/64" in line() and "rate limited" not in line()

    # Lowered as the rate limit neared: the ceiling and the reason (an event the live run
    # keeps without a repaint of its table).
    stats.concurrency_limit, stats.in_flight = 32, 30
    version = live.version
    live.on_event(ConcurrencyChanged(32, 64, "the rate limit is near"))
    assert live.version == version
    assert "in flight 30/32 of 64 (the rate limit is near)" in line()

    # 429s: counted while it runs, and still said once it is over.
    stats.rate_limited = 3
    assert "in flight 30/32 of 64 (rate limited ×3)" in line()
    assert "in flight" not in line(running=False)
    assert "rate limited ×3" in line(running=False)


# -- the runs table ----------------------------------------------------------------------


def make_runs(store: Store, dataset_id: int, n: int) -> list[int]:
    spec = RunForm(dataset_id=dataset_id, model="m").to_spec()
    return [create_run(store, spec) for _ in range(n)]


async def test_runs_panel_posts_user_moves_and_shows_a_running_run(
    store: Store, small: int
) -> None:
    ids = make_runs(store, small, 3)
    store.set_run_status(ids[0], "running")  # a session that ended mid-run
    panel = RunsPanel(id="runs-panel")
    async with host(panel, store) as h:
        dataset = store.get_dataset(small)
        panel.show_runs(store.list_runs(small), dataset, keep_cursor=False)
        await h.settle()
        assert h.posted(RunsPanel.Highlighted) == [], "moves made by code post nothing"
        table = panel.table
        rows = {table._rows[i][0]: table._rows[i] for i in range(table.row_count)}
        assert rows[str(ids[0])][4] == "interrupted"
        assert f"Runs of {SMALL_NAME} (3)" in plain(panel.query_one("#runs-title"))

        table.focus()
        await h.pilot.press("down")
        await h.settle()
        (moved,) = h.posted(RunsPanel.Highlighted)
        assert moved.run.id == panel.runs[1].id
        await h.pilot.press("enter")
        await h.settle()
        (chosen,) = h.posted(RunsPanel.Chosen)
        assert chosen.run.id == panel.runs[1].id

        # While a run generates, its row shows the engine's counts, refreshed once a second.
        stats = RunStats(total=len(SMALL_ITEMS), todo=len(SMALL_ITEMS))
        running = panel.runs[0].id
        panel.track(running, lambda: stats)
        await h.pilot.pause()
        assert table._rows[0][4:7] == ("running", "0", "0")
        stats.done, stats.failed = 5, 1
        await h.wait_until(lambda: table._rows[0][4:7] == ("running", "5", "1"))
        panel.untrack()
        panel.show_runs(store.list_runs(small), dataset)
        await h.pilot.pause()
        assert table._rows[0][4] != "running"


# -- the live view -----------------------------------------------------------------------


def finished(item_id: int, output: str) -> ItemFinished:
    return ItemFinished(item_id, "done", output, None, "stop", 10, 3, 120.0, 40.0, 0.0)


async def test_live_view_follows_the_stream_until_the_user_picks_an_item(
    store: Store, small: int
) -> None:
    (run_id,) = make_runs(store, small, 1)
    live = LiveRun(store.get_run(run_id), store.run_items(run_id), [])
    first, second, _, fourth = (item.id for item in live.items[:4])
    view = LiveRunView(id="live-run")
    async with host(view, store) as h:
        view.show_run(live)
        await h.pilot.pause()
        stream = view.query_one("#stream")
        text = view.query_one("#stream-text", Static)
        assert "run " in plain(view.query_one("#run-title")) and "all items" in plain(
            view.query_one("#run-title")
        )
        assert plain(text) == "(not generated yet)"

        live.on_event(ItemStarted(first, 1))
        live.on_event(ItemDelta(first, "git "))
        live.on_event(ItemDelta(first, "status"))
        await h.wait_until(lambda: plain(text) == "git status")
        assert "following" in str(stream.border_title)

        # A reply that starts later is not jumped to while the followed one streams.
        live.on_event(ItemStarted(second, 1))
        live.on_event(ItemDelta(second, "git branch"))
        await h.wait_until(lambda: view.items_table._rows[1][1] == "streaming")  # repainted
        assert plain(text) == "git status"
        live.on_event(finished(first, "git status"))
        await h.wait_until(lambda: plain(text) == "git branch")
        assert view.items_table._rows[0][1] == "done"

        # The user moves the cursor: the panel stays on that item, whatever streams.
        view.items_table.focus()
        await h.pilot.press("down", "down")
        await h.wait_until(lambda: view.shown_item() is live.items[2])
        assert plain(text) == "(not generated yet)"
        assert "selected" in str(stream.border_title)
        live.on_event(ItemStarted(fourth, 1))
        live.on_event(ItemDelta(fourth, "git tag"))
        await h.wait_until(lambda: view.items_table._rows[3][1] == "streaming")  # repainted
        assert plain(text) == "(not generated yet)"

        view.follow_latest()
        await h.wait_until(lambda: plain(text) == "git tag")


async def test_item_filter_keeps_request_words_and_statuses_as_the_run_goes(
    store: Store, small: int
) -> None:
    """/ filters the run's items: words of the request (any case), status: words (applied
    again as statuses move), a status it does not know said in red; the stream panel and the
    flagged rows follow the filtered table; esc in the box goes back to the table."""
    (run_id,) = make_runs(store, small, 1)
    live = LiveRun(store.get_run(run_id), store.run_items(run_id), [])
    items = live.items
    view = LiveRunView(id="live-run")
    async with host(view, store) as h:
        view.show_run(live)
        await h.pilot.pause()
        count = view.query_one("#item-filter-count", Static)
        table = view.items_table

        def requests() -> list[str]:
            return [table._rows[i][2] for i in range(table.row_count)]

        view.filter_box.focus()
        await h.pilot.press(*"WORKING tree")
        await h.pilot.pause()
        working = [i.input for i in items if "working tree" in i.input.casefold()]
        assert requests() == working and len(working) == 3
        assert plain(count) == f"3 of {len(items)} items"

        # Statuses: the engine's events arrive (here straight into the run) and the filter
        # is applied again on a later repaint.
        await h.pilot.press(*" status:failed")
        await h.pilot.pause()
        assert requests() == []
        live.on_event(ItemStarted(items[1].id, 1))
        live.on_event(
            ItemFinished(items[1].id, "failed", "", "HTTP 500", None, None, None, 9.0, None, 0.0)
        )
        await h.wait_until(lambda: requests() == [items[1].input])
        assert table._flagged is not None and table._flagged(0)  # the failed row, in yellow
        assert plain(count) == f"1 of {len(items)} items"

        # The user picks the one row shown: the stream panel shows that item's error.
        await h.pilot.press("escape")
        assert table.has_focus and view.filter_box.value.endswith("status:failed")
        await h.pilot.press("home")
        await h.wait_until(lambda: not view.follow)
        assert view.shown_item() is items[1]
        assert plain(view.query_one("#stream-text", Static)) == "HTTP 500"

        # A status the table never shows is named; nothing is filtered by it.
        view.filter_box.value = "status:finished"
        await h.pilot.pause()
        assert requests() == [i.input for i in items]
        assert "status:finished: use one of done, failed" in plain(count)
        # An empty box: every item, and the count as wide as while filtering (a new width
        # would lay the whole screen out again).
        view.filter_box.value = ""
        await h.pilot.pause()
        assert requests() == [i.input for i in items]
        assert plain(count) == f"{len(items)} items".rjust(
            len(f"{len(items)} of {len(items)} items")
        )
