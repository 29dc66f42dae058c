"""The Generate screen sending a run as a batch, driven with real keys against the fake OpenAI
server's Batch API on 127.0.0.1: the estimate at the batch price, the batch's status, request
counts and window while it goes, items filling in when its results arrive; esc stops
following (the batch goes on), and the app opened again follows it to the end without
creating a second batch."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from textual.widgets import Input, Select, Static

from screens.generate import GenerateScreen
from tests.helpers.fake_openai import FakeOpenAI
from tests.tui.conftest import SMALL_ITEMS, Db, drive, make_app, plain
from tests.tui.generating import backend_for, generate_screen, open_generate, statuses
from tui.app import DistillApp
from tui.engine.store import Store

N_ITEMS = len(SMALL_ITEMS)


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(batches=True, batch_seconds=1.5) as server:
        yield server


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(GenerateScreen, "BATCH_POLL", (0.05, 0.2))


def batch_line(screen: GenerateScreen) -> str:
    return plain(screen.query_one("#batch-status", Static))


async def test_a_run_sent_as_a_batch(small_app: DistillApp, fake: FakeOpenAI, db: Db) -> None:
    small_app.backend = backend_for(fake)
    async with drive(small_app) as t:
        screen = await open_generate(t, "gpt-4o")
        screen.query_one("#mode", Select).value = "batch"
        # The estimate waits for typing to pause; a priced model's shows the batch price.
        await t.wait_until(lambda: "batch" in plain(screen.query_one("#estimate", Static)))
        await t.settle()
        # Both prices, the batch's half the live one (settings.batch_discount = 0.5).
        estimate = plain(screen.query_one("#estimate", Static))
        tokens = re.search(r"≈([\d,]+) prompt \+ ([\d,]+) completion", estimate)
        assert tokens is not None, estimate
        prompt, completion = (int(g.replace(",", "")) for g in tokens.groups())
        price = small_app.settings.price("gpt-4o")
        live = (prompt * price.input + completion * price.output) / 1e6
        assert live > 0
        assert f"≈${live:,.4f} live · ≈${live / 2:,.4f} batch" in estimate, estimate

        screen.query_one("#model", Input).value = "fake-model"
        # The batch stays in progress until the test has looked: it is followed on a thread
        # of its own, and a slow UI could otherwise first look once it has ended.
        fake.batch_api.batch_seconds = 60.0  # validating for 6 s, in progress for 48
        await t.press("ctrl+s")
        # While it goes: the batch's status, counts and window; items wait in the batch.
        await t.wait_until(lambda: "in_progress" in batch_line(screen))
        line = batch_line(screen)
        assert f"/{N_ITEMS} answered" in line and "24h window, ends" in line
        assert set(statuses(screen)) == {"in batch"}
        assert not screen.query_one("#gen-form").display
        for batch in fake.batch_api.batches.values():
            batch.seconds = 0.5  # it began more than that ago: it ends at the next poll
        # When it ends, its results fill the items in.
        await t.wait_until(lambda: statuses(screen) == ["done"] * N_ITEMS)
        await t.settle()
        # The view repaints after the last event.
        await t.wait_until(lambda: "completed" in batch_line(screen))
        assert f"{N_ITEMS}/{N_ITEMS} answered" in batch_line(screen)
        assert screen.query_one("#gen-form").display

    assert fake.chat_requests == []  # nothing went live
    assert fake.batch_api.created == 1
    rows = db.rows("SELECT status, output FROM completions")
    assert len(rows) == N_ITEMS and all(s == "done" and o.startswith("echo:") for s, o in rows)
    assert db.rows("SELECT collected, status FROM batches") == [(1, "completed")]
    assert db.rows("SELECT status FROM runs") == [("done",)]


async def test_escape_stops_following_and_the_app_opened_again_follows_to_the_end(
    small_app: DistillApp, fake: FakeOpenAI, store: Store, db: Db
) -> None:
    fake.batch_api.batch_seconds = 4.0
    small_app.backend = backend_for(fake)
    async with drive(small_app) as t:
        screen = await open_generate(t)
        screen.query_one("#mode", Select).value = "batch"
        await t.press("ctrl+s")
        await t.wait_until(
            lambda: (
                bool(db.rows("SELECT remote_id FROM batches"))
                and db.rows("SELECT remote_id FROM batches")[0][0] is not None
            ),
        )
        await t.press("escape")
        await t.settle()
        assert t.app.current_mode == "generate"
        assert any("stopped following" in title for _, title, _ in t.notifications())
        assert screen.query_one("#gen-form").display
    assert db.rows("SELECT status FROM runs") == [("batch",)]
    assert db.rows("SELECT collected FROM batches") == [(0,)]

    again = make_app(store)
    again.backend = backend_for(fake)
    async with drive(again) as t:
        await t.press("2")
        await t.settle()
        screen = generate_screen(t)
        assert any("Following run" in message for _, _, message in t.notifications())
        await t.wait_until(lambda: statuses(screen) == ["done"] * N_ITEMS, timeout=60)
        await t.settle()
    assert fake.batch_api.created == 1 and fake.chat_requests == []
    assert db.rows("SELECT collected FROM batches") == [(1,)]
    assert db.rows("SELECT status FROM runs") == [("done",)]
