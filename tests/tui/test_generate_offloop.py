"""The Generate screen generates on a thread of its own (tui/engine/offloop.py), so its event
loop only draws: a run goes on, and is committed, while the UI's loop is held; / filters the
items of a running run; esc typed in the filter box leaves the box, and only a second esc
cancels the run. Against the fake OpenAI server on 127.0.0.1; the workspace read on a
connection of its own."""

from __future__ import annotations

import time

from tests.helpers.fake_openai import FakeOpenAI
from tests.tui.conftest import TEN, Db, drive
from tests.tui.generating import backend_for, open_generate, statuses
from tui.app import DistillApp


async def test_the_run_goes_on_while_the_ui_loop_is_held(
    ten_app: DistillApp, fake: FakeOpenAI, db: Db
) -> None:
    ten_app.backend = backend_for(fake)
    ten_app.settings.concurrency = 2
    fake.token_delay = 0.1  # five waves of 1.2 s replies: the run is going when the hold starts
    async with drive(ten_app) as t:
        screen = await open_generate(t)
        await t.press("ctrl+s")
        await t.wait_until(lambda: bool(fake.chat_requests))
        assert screen.generator is not None
        # Hold the UI's loop, as a long frame would, until the workspace holds every item
        # done: a generator on this loop could not get there (nothing else runs on it).
        deadline = time.monotonic() + 60
        done = 0
        while done < len(TEN):
            assert time.monotonic() < deadline, f"{done} done while the UI's loop was held"
            time.sleep(0.05)  # the loop stays held: that is the point
            done = db.rows("SELECT COUNT(*) FROM completions WHERE status = 'done'")[0][0]
        await t.settle()
        assert screen.generator is None
        assert statuses(screen) == ["done"] * len(TEN)
        assert db.rows("SELECT status FROM runs") == [("done",)]


async def test_slash_filters_a_running_run_and_esc_leaves_the_box_before_cancelling(
    ten_app: DistillApp, fake: FakeOpenAI, db: Db
) -> None:
    ten_app.backend = backend_for(fake)
    ten_app.settings.concurrency = 2
    fake.token_delay = 0.5  # six seconds a reply, thirty for the run: it outlasts the typing
    async with drive(ten_app) as t:
        screen = await open_generate(t)
        await t.press("ctrl+s")
        await t.wait_until(lambda: "streaming" in statuses(screen))
        await t.press("slash")
        box = screen.live_view.filter_box
        assert t.app.focused is box
        await t.type("feature-7")
        table = screen.items_table
        await t.wait_until(lambda: table.row_count == 1)
        assert table._rows[0][2] == "Create a branch called feature-7"

        await t.press("escape")
        assert t.app.focused is table
        assert box.value == "feature-7"
        assert screen.generator is not None, "esc in the filter box cancelled the run"
        assert db.rows("SELECT status FROM runs") == [("running",)]
        await t.press("escape")
        await t.settle()
        assert screen.generator is None
        assert db.rows("SELECT status FROM runs") == [("cancelled",)]
        # The filter still applies to the run's items once it stopped.
        assert table.row_count == 1 and table._rows[0][2].endswith("feature-7")
