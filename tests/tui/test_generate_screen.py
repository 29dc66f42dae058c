"""The Generate screen driven with real keys against a real OpenAI-compatible server on
127.0.0.1 (the fault-injecting fake): rows turn done, the stream panel fills as tokens arrive,
esc cancels (in-flight items recorded as cancelled), resume generates exactly the rest, and a
refused key stops the run with a readable error. What the workspace holds is read on a
connection of its own."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import replace

import pytest
from textual.widgets import Button, Input, Select, Static, TextArea

from screens.generate import GenerateScreen
from tests.helpers.fake_openai import FakeOpenAI, fail_first, rate_limited
from tests.tui.conftest import (
    SMALL_ITEMS,
    SMALL_NAME,
    SMALL_PROMPT,
    TEN,
    Db,
    drive,
    plain,
)
from tests.tui.generating import backend_for, open_generate, statuses
from tui.app import DistillApp
from tui.engine.backend import Backend
from tui.engine.settings import BackendKind

N_ITEMS = len(SMALL_ITEMS)


def stream_text(screen: GenerateScreen) -> str:
    return plain(screen.query_one("#stream-text", Static))


def progress_text(screen: GenerateScreen) -> str:
    return plain(screen.query_one("#progress", Static))


async def test_form_defaults_and_estimate(small_app: DistillApp, fake: FakeOpenAI) -> None:
    small_app.backend = backend_for(fake)
    async with drive(small_app) as t:
        screen = await open_generate(t)
        await t.settle()
        assert screen.query_one("#system-prompt", TextArea).text == SMALL_PROMPT
        assert screen.query_one("#metadata", Input).value == f"task={SMALL_NAME} role=student"
        # The backend's models fill the picker.
        assert screen.models == ["fake-model", "gpt-4o", "gpt-4o-mini"]
        estimate = plain(screen.query_one("#estimate", Static))
        assert f"{N_ITEMS} items" in estimate and "unpriced" in estimate

        # The teacher role changes the metadata default; a priced model shows a cost.
        screen.query_one("#role", Select).value = "teacher"
        await t.wait_until(
            lambda: screen.query_one("#metadata", Input).value == f"task={SMALL_NAME} role=teacher"
        )
        assert screen.query_one("#model", Input).value == "fake-model"  # typed: kept
        screen.query_one("#split", Select).value = "train"
        screen.query_one("#model", Input).value = "gpt-4o"
        # The estimate waits for typing to pause.
        await t.wait_until(lambda: "4 items" in plain(screen.query_one("#estimate", Static)))
        await t.settle()
        assert "≈$" in plain(screen.query_one("#estimate", Static))

        # A wrong field says which and how, and nothing starts.
        screen.query_one("#temperature", Input).value = "hot"
        await t.press("ctrl+s")
        await t.settle()
        assert any("temperature: 'hot' is not a number" in e for e in t.errors())
        assert screen.runs == []


async def test_start_streams_every_item_to_done(
    small_app: DistillApp, fake: FakeOpenAI, db: Db
) -> None:
    small_app.backend = backend_for(fake)
    # Three seconds a reply: pilot.press waits for the app to go idle (up to a second or two)
    # and the run must still be going when it returns.
    fake.token_delay = 0.25
    async with drive(small_app) as t:
        screen = await open_generate(t)
        await t.press("ctrl+s")
        # While it runs: rows stream, the panel shows the text as it arrives, esc means cancel.
        await t.wait_until(lambda: "streaming" in statuses(screen))
        await t.wait_until(lambda: stream_text(screen).startswith("echo:"))
        # The form gives its place to what the run was started with.
        assert not screen.query_one("#gen-form").display
        settings = plain(screen.query_one("#run-settings", Static))
        assert "Run 1 is going" in settings and "esc cancels" in settings
        assert re.search(r"Model\s+fake-model", settings)
        assert re.search(r"Send as\s+live requests", settings)
        assert "System prompt" in settings
        assert screen.check_action("cancel_run", ())
        await t.press("n")  # no new run while this one goes: said, and the form stays hidden
        assert t.app.focused is not screen.query_one("#dataset", Select)
        assert ("warning", "", "A run is going: esc cancels it first.") in t.notifications()
        # The requests in flight and the limit on them (the configured concurrency).
        limit = small_app.settings.concurrency
        assert re.search(rf"in flight \d+/{limit}\b", progress_text(screen))

        await t.settle()
        # The view repaints after the last event.
        await t.wait_until(lambda: f"{N_ITEMS}/{N_ITEMS} done" in progress_text(screen))
        assert statuses(screen) == ["done"] * N_ITEMS
        assert "echo: " in stream_text(screen)
        assert screen.query_one("#gen-form").display  # the form is back
        assert not screen.query_one("#run-settings", Static).display
        assert not screen.check_action("cancel_run", ())

        rows = db.rows("SELECT status, output, remote_id, finish_reason FROM completions")
        assert len(rows) == N_ITEMS
        assert all(r[0] == "done" and r[1].startswith("echo:") and r[2] for r in rows)
        run = db.rows("SELECT model, role, status, metadata FROM runs")
        assert run == [("fake-model", "student", "done", '{"role": "student", "task": "small"}')]
        # A URL backend gets no store=True (only OpenAI and the local backend keep completions).
        assert all(r.store is None for r in fake.chat_requests)
        assert screen.runs_table.row_count == 1
        assert screen.runs_table._rows[0][4:8] == ("done", str(N_ITEMS), "0", str(N_ITEMS))
        assert any("finished" in title for _, title, _ in t.notifications())


async def test_n_takes_the_keyboard_into_the_form_and_a_run_starts_on_the_eval_split(
    small_app: DistillApp, fake: FakeOpenAI, db: Db
) -> None:
    """The screen opens on the runs table; `n` puts the cursor on the form's first field, so
    a user on a keyboard alone picks the split and starts without six tabs."""
    small_app.backend = backend_for(fake)
    async with drive(small_app) as t:
        screen = await open_generate(t)
        screen.runs_table.focus()  # where the screen opens
        await t.press("n")
        assert t.app.focused is screen.query_one("#dataset", Select)
        await t.press("tab")
        split = screen.query_one("#split", Select)
        assert t.app.focused is split
        await t.press("enter", "down", "down", "enter")  # all, train, eval
        assert split.value == "eval"
        await t.press("ctrl+s")
        await t.settle()
        assert db.rows("SELECT split FROM runs") == [("eval",)]
        assert len(db.rows("SELECT id FROM completions WHERE status = 'done'")) == 2


@pytest.mark.parametrize("kind", ["local", "url"])
async def test_a_blank_max_tokens_on_the_embedded_backend_sends_the_datasets_reply_cap(
    small_app: DistillApp, fake: FakeOpenAI, db: Db, kind: BackendKind
) -> None:
    """On the embedded backend (here the fake server in its place) the field says what blank
    means for this dataset (4x its longest reference, at least 64 tokens), every request
    carries it, and the run's params keep it; on any other backend blank sends nothing."""
    backend = backend_for(fake)
    small_app.backend = Backend(replace(backend.spec, kind=kind), backend.client, kind)
    async with drive(small_app) as t:
        screen = await open_generate(t)
        await t.settle()
        field = screen.query_one("#max-tokens", Input)
        cap = 64 if kind == "local" else None
        assert field.value == ""
        assert field.placeholder == ("auto (64)" if cap else "default")
        await t.press("ctrl+s")
        await t.settle()
        assert fake.chat_requests
        assert {r.body.get("max_tokens") for r in fake.chat_requests} == {cap}
        (params,) = db.rows("SELECT params FROM runs")
        assert json.loads(params[0])["sampling"].get("max_tokens") == cap


async def test_escape_cancels_then_resume_generates_exactly_the_rest(
    ten_app: DistillApp, fake: FakeOpenAI, db: Db
) -> None:
    ten_app.backend = backend_for(fake)
    ten_app.settings.concurrency = 2
    fake.token_delay = 0.08  # about a second a reply, five seconds for the run
    async with drive(ten_app) as t:
        screen = await open_generate(t)
        await t.press("ctrl+s")
        await t.wait_until(lambda: statuses(screen).count("done") >= 2)
        await t.wait_until(lambda: "streaming" in statuses(screen))
        await t.press("escape")
        await t.settle()
        first = dict(
            db.rows("SELECT i.input, c.status FROM completions c JOIN items i ON i.id = c.item_id")
        )
        done_before = {k for k, v in first.items() if v == "done"}
        cancelled = {k for k, v in first.items() if v == "cancelled"}
        # The view repaints after the last event.
        await t.wait_until(
            lambda: (
                statuses(screen).count("cancelled") == len(cancelled)
                and screen.runs_table._rows[0][4] == "cancelled"
            )
        )

        assert t.app.current_mode == "generate", "esc during a run cancels, it does not leave"
        assert screen.query_one("#gen-form").display
        assert not screen.query_one("#cancel", Button).display
        assert len(done_before) >= 2 and cancelled, first
        assert len(done_before) < len(TEN)
        assert set(first.values()) == {"done", "cancelled"}
        assert db.rows("SELECT status FROM runs") == [("cancelled",)]
        shown = statuses(screen)
        assert shown.count("cancelled") == len(cancelled)
        assert shown.count("pending") == len(TEN) - len(first)
        assert screen.runs_table._rows[0][4] == "cancelled"
        before = {text: fake.count(text) for text in TEN}
        assert all(before[text] == 1 for text in done_before)
        # A cancelled item may have been cancelled before its request went out.
        assert all(before[text] <= 1 for text in cancelled)
        assert all(before[text] == 0 for text in TEN if text not in first)

        # Resume the highlighted run (the latest): only what is not done is asked for again.
        await t.press("ctrl+r")
        await t.settle()
        await t.wait_until(lambda: statuses(screen) == ["done"] * len(TEN))
        assert db.rows("SELECT COUNT(*), COUNT(DISTINCT item_id) FROM completions") == [
            (len(TEN), len(TEN))
        ]
        assert db.rows("SELECT DISTINCT status FROM completions") == [("done",)]
        assert db.rows("SELECT status FROM runs") == [("done",)]
        # Done items were not asked again; every other item exactly once more.
        for text in TEN:
            expected = before[text] + (0 if text in done_before else 1)
            assert fake.count(text) == expected, text
        assert fake.duplicates() == []
        assert f"{len(TEN)}/{len(TEN)} done" in progress_text(screen)

        # Nothing left: resume says so and asks nothing.
        requests = len(fake.chat_requests)
        await t.press("ctrl+r")
        await t.settle()
        assert len(fake.chat_requests) == requests
        assert any("nothing left" in m for _, _, m in t.notifications())

        # Not running any more: esc goes back to the previous screen.
        await t.press("escape")
        assert t.app.current_mode == "dataset"


async def test_a_refused_key_stops_the_run_with_a_clear_error(
    small_app: DistillApp, fake: FakeOpenAI, db: Db
) -> None:
    small_app.backend = backend_for(fake, api_key="sk-wrong")
    async with drive(small_app) as t:
        screen = await open_generate(t)
        await t.press("ctrl+s")
        await t.settle()
        errors = t.errors()
        assert any("HTTP 401" in e and "API key" in e for e in errors), errors
        assert db.rows("SELECT status FROM runs") == [("failed",)]
        # Stopped at once: no more requests than the concurrency allowed in flight.
        assert len(fake.chat_requests) <= small_app.settings.concurrency
        assert screen.query_one("#gen-form").display
        assert "failed" in progress_text(screen)


async def test_quitting_mid_run_records_a_cancelled_run(
    ten_app: DistillApp, fake: FakeOpenAI, db: Db
) -> None:
    ten_app.backend = backend_for(fake)
    ten_app.settings.concurrency = 2
    fake.token_delay = 0.08
    async with drive(ten_app) as t:
        screen = await open_generate(t)
        await t.press("ctrl+s")
        await t.wait_until(lambda: "streaming" in statuses(screen))
        await t.press("q")
    requested = len(fake.chat_requests)
    counts = dict(db.rows("SELECT status, COUNT(*) FROM completions GROUP BY status"))
    assert db.rows("SELECT status FROM runs") == [("cancelled",)]
    assert 0 < counts.get("cancelled", 0) <= 2
    assert requested <= sum(counts.values()) < len(TEN)  # started, maybe not yet sent
    # Nothing of the run is left to send a request later: every task the app started has
    # ended with it (the fake server runs on a loop of its own).
    others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    assert all(task.done() for task in others), others
    assert len(fake.chat_requests) == requested, "nothing is requested after quitting"


async def test_the_buttons_start_and_resume_like_the_keys(
    small_app: DistillApp, fake: FakeOpenAI, db: Db
) -> None:
    small_app.backend = backend_for(fake)
    async with drive(small_app) as t:
        screen = await open_generate(t)
        await t.pilot.click("#start")
        await t.settle()
        await t.wait_until(lambda: statuses(screen) == ["done"] * N_ITEMS)
        assert db.rows("SELECT status FROM runs") == [("done",)]
        assert f"{N_ITEMS}/{N_ITEMS} done" in progress_text(screen)
        await t.pilot.click("#resume")
        await t.settle()
        assert any("nothing left" in m for _, _, m in t.notifications())
        assert len(fake.chat_requests) == N_ITEMS


async def test_a_teacher_run_with_samples_under_a_rate_limit(
    small_app: DistillApp, fake: FakeOpenAI, db: Db
) -> None:
    """n samples and the vote typed into the form reach the request (OpenAI's `n`) and the
    run; while the backend answers 429s, the progress line says how many requests are in
    flight against the limit and how often the run was rate limited."""
    small_app.backend = backend_for(fake)
    fake.token_delay = 0.05  # 0.6 s a reply: the run is still going when we look
    fake.policy = fail_first(2, rate_limited(retry_after=0.1))
    async with drive(small_app) as t:
        screen = await open_generate(t)
        screen.query_one("#samples", Input).focus()
        await t.press("end", "ctrl+u", "3")
        assert screen.query_one("#vote-row").display
        vote = screen.query_one("#vote", Select)
        vote.focus()
        await t.press("enter", "up", "enter")
        assert vote.value == "command_match"
        await t.press("ctrl+s")
        await t.wait_until(lambda: "rate limited ×" in progress_text(screen))
        assert re.search(
            r"in flight \d+/\d+( of \d+)? \(rate limited ×\d+\)", progress_text(screen)
        )
        assert "3 samples, vote command_match" in plain(screen.query_one("#run-title", Static))

        await t.settle()
        await t.wait_until(
            lambda: (
                statuses(screen) == ["done"] * N_ITEMS and "in flight" not in progress_text(screen)
            )
        )
        # Every 429 the server sent is counted, and still said once the run is over.
        refused = sum(1 for r in fake.chat_requests if r.status == 429)
        assert refused >= N_ITEMS  # (two items share a request, and so their two refusals)
        shown = progress_text(screen)
        assert f"rate limited ×{refused}" in shown and "in flight" not in shown

    assert {r.body.get("n") for r in fake.chat_requests} == {3}
    (params,) = db.rows("SELECT params FROM runs")
    assert json.loads(params[0])["samples"] == 3
    assert json.loads(params[0])["vote"] == "command_match"
    # This server answers once whatever `n` says: the vote is over that one sample.
    rows = db.rows("SELECT confidence, samples, output FROM completions")
    assert len(rows) == N_ITEMS
    assert all(c == 1.0 and json.loads(s) == [o] for c, s, o in rows)
