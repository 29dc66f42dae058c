"""The Dataset screen's "Generate requests…" driven with real keys against the fake OpenAI
server (real HTTP), its replies scripted: the requests stream into the preview, a person
unticks one and adds the rest (synthetic, train, no reference; undo removes them); esc stops
a reply mid-stream and a second esc leaves the dataset untouched; a reply that is not a list
is reported and nothing can be added from it. What the workspace holds is read on a
connection of its own."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from pydantic import SecretStr
from textual.widgets import Input, SelectionList, Static

from screens.dataset import DatasetScreen
from screens.dataset.synthetic import GenerateRequestsDialog, RequestsPreview
from tests.helpers.fake_openai import Action, FakeOpenAI, RequestContext
from tests.tui.conftest import SMALL_ITEMS, SMALL_NAME, Db, Driver, drive, plain
from tui.app import DistillApp
from tui.engine.backend import Backend, BackendSpec

NEW = [
    "Rename the branch dev to main",
    "Delete the tag v1.0",
    "Show who changed app.py last",
    "Stash the changes with a message",
]


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(token_delay=0.005) as server:
        yield server


def connect(app: DistillApp, fake: FakeOpenAI) -> None:
    """The fake server as every role's backend, the teacher model one it serves."""
    spec = BackendSpec("url", fake.base_url, SecretStr(fake.api_key), "test")
    client = openai.AsyncOpenAI(base_url=fake.base_url, api_key=fake.api_key, timeout=10)
    app.backend = Backend(spec, client, "test")
    app.settings = app.settings.model_copy(update={"teacher_model": "gpt-4o"})


def replies(*texts: Any, token_delay: float | None = None) -> Any:
    actions = [
        Action(reply=t if isinstance(t, str) else json.dumps(t), token_delay=token_delay)
        for t in texts
    ]

    def policy(ctx: RequestContext) -> Action:
        return actions[min(ctx.n, len(actions)) - 1]

    return policy


async def open_form(t: Driver, count: int) -> GenerateRequestsDialog:
    await t.press("g")
    await t.pilot.pause()
    dialog = t.app.screen
    assert isinstance(dialog, GenerateRequestsDialog), dialog
    assert dialog.query_one("#synth-model", Input).value == "gpt-4o"  # the teacher's
    # "How many" has the focus.
    await t.press("end", "ctrl+u", *str(count))
    return dialog


def preview_of(t: Driver) -> RequestsPreview:
    screen = t.app.screen
    assert isinstance(screen, RequestsPreview), screen
    return screen


def synthetic_rows(db: Db) -> list[tuple[Any, ...]]:
    return db.rows(
        "SELECT input, reference, split, source FROM items WHERE source != '' AND deleted = 0"
        " ORDER BY position"
    )


async def test_generate_preview_untick_one_and_add_the_rest(
    small_app: DistillApp, fake: FakeOpenAI, db: Db
) -> None:
    # One duplicate of the dataset in the reply: left out, with the reason shown.
    fake.policy = replies([NEW[0], SMALL_ITEMS[0].input, *NEW[1:]])
    connect(small_app, fake)
    async with drive(small_app) as t:
        await open_form(t, len(NEW))
        await t.press("ctrl+s")
        preview = preview_of(t)
        await t.wait_until(lambda: not preview.running)
        picks = preview.query_one("#synth-picks", SelectionList)
        # The repaint timer shows the end.
        await t.wait_until(lambda: picks.option_count == len(NEW))
        assert picks.option_count == len(NEW)
        assert sorted(picks.selected) == [0, 1, 2, 3]  # all ticked to start with
        status = plain(preview.query_one("#synth-status", Static))
        assert status.startswith("done: 4 new requests from gpt-4o") and "1 left out" in status
        reports = plain(preview.query_one("#synth-reports", Static))
        assert SMALL_ITEMS[0].input in reports and "already in the dataset" in reports

        # Untick the second, add the ticked ones.
        assert t.app.focused is picks
        await t.press("down", "space")
        assert sorted(picks.selected) == [0, 2, 3]
        await t.press("s")
        await t.settle()
        assert isinstance(t.app.screen, DatasetScreen)

        added = [NEW[0], NEW[2], NEW[3]]
        assert synthetic_rows(db) == [(text, "", "train", "synthetic") for text in added]
        assert len(db.items(SMALL_NAME)) == len(SMALL_ITEMS) + 3
        (message,) = [m for s, _, m in t.notifications() if "synthetic" in m]
        assert message.startswith("Added 3 synthetic requests to the train split")
        screen = t.app.screen
        counts = plain(screen.query_one("#dataset-counts", Static))
        assert "3 synthetic" in counts
        detail = plain(screen.query_one("#item-detail", Static))
        assert "train · synthetic" in detail and NEW[0] in detail

        # The filter finds them; undo takes them away.
        await t.press("slash")
        await t.type("is:synthetic")
        assert len(screen.items_panel.shown) == 3
        await t.press("escape", "u")
        await t.settle()
        assert synthetic_rows(db) == []
        assert not t.errors()

    # What was asked: the examples (never an eval request), one streamed request.
    (request,) = fake.chat_requests
    assert request.body["model"] == "gpt-4o" and request.body["stream"] is True
    asked = request.body["messages"][-1]["content"]
    assert "Write 4 new requests" in asked
    for item in SMALL_ITEMS:
        if item.split == "eval":
            assert json.dumps(item.input) not in asked


async def test_esc_stops_mid_stream_and_cancel_leaves_the_dataset_untouched(
    small_app: DistillApp, fake: FakeOpenAI, db: Db
) -> None:
    many = [f"Stage the file part{i}.txt" for i in range(30)]
    # Slow (over half a minute for the whole reply): esc comes long before its end, however
    # busy the machine is.
    fake.policy = replies(many, token_delay=0.2)
    connect(small_app, fake)
    before = db.all_item_rows(SMALL_NAME)
    async with drive(small_app) as t:
        await open_form(t, 30)
        await t.press("ctrl+s")
        preview = preview_of(t)
        await t.wait_until(lambda: len(preview.proposed) >= 2, timeout=60)
        assert preview.running
        stream = plain(preview.query_one("#synth-stream", Static))
        assert "Stage the file part0.txt" in stream  # the reply as it is written

        await t.press("escape")  # stops the model; the preview stays
        await t.wait_until(lambda: not preview.running)
        assert preview.finished is not None and preview.finished.status == "cancelled"
        assert t.app.screen is preview
        assert 2 <= len(preview.proposed) < 30

        await t.press("escape")  # cancels: nothing added
        await t.settle()
        assert isinstance(t.app.screen, DatasetScreen)
        assert db.all_item_rows(SMALL_NAME) == before
        assert not t.errors()

    # The reply was abandoned, not read to its end.
    (request,) = fake.chat_requests
    deadline = time.monotonic() + 5
    while request.outcome != "disconnected":
        assert time.monotonic() < deadline, request.outcome
        time.sleep(0.02)


async def test_a_reply_that_is_not_a_list_is_reported_and_nothing_can_be_added(
    small_app: DistillApp, fake: FakeOpenAI, db: Db
) -> None:
    fake.policy = replies("Sorry, I can only help with git commands.")
    connect(small_app, fake)
    before = db.all_item_rows(SMALL_NAME)
    async with drive(small_app) as t:
        await open_form(t, 5)
        await t.press("ctrl+s")
        preview = preview_of(t)
        await t.wait_until(lambda: not preview.running)
        # The repaint timer shows the end.
        await t.wait_until(
            lambda: "3 unusable" in plain(preview.query_one("#synth-status", Static))
        )
        assert preview.finished is not None and preview.finished.status == "failed"
        reports = plain(preview.query_one("#synth-reports", Static))
        assert reports.count("not a list of requests") == 3
        assert "3 unusable replies in a row" in plain(preview.query_one("#synth-status", Static))
        assert preview.query_one("#synth-picks", SelectionList).option_count == 0

        await t.press("a", "s")  # nothing to add: the preview stays
        assert t.app.screen is preview
        await t.press("escape")
        await t.settle()
        assert db.all_item_rows(SMALL_NAME) == before
    assert len(fake.chat_requests) == 3


async def test_the_form_checks_its_numbers(small_app: DistillApp, fake: FakeOpenAI) -> None:
    connect(small_app, fake)
    async with drive(small_app) as t:
        dialog = await open_form(t, 0)
        await t.press("ctrl+s")
        assert "How many: a whole number from 1" in plain(dialog.query_one("#dialog-error", Static))
        assert t.app.screen is dialog
        await t.press("escape")
        await t.settle()
        assert isinstance(t.app.screen, DatasetScreen)
        assert fake.chat_requests == []
        # The palette offers it too.
        titles = [c.title for c in t.app.screen.palette_commands()]  # type: ignore[attr-defined]
        assert "Dataset: Generate requests…" in titles
