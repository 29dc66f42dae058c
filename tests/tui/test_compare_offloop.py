"""The Compare screen grades the runs that lack grades on a thread of its own
(tui/engine/offloop.py), as the Evals screen does: an LLM judge (label_model) on the fake
OpenAI server on 127.0.0.1 grades every completion while the UI's event loop is held; esc
cancels the grading on its own loop and the eval run is recorded as cancelled; quitting
mid-grading cancels it too and leaves no thread, task or request behind. The workspace is
read on a connection of its own."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import openai
import pytest
from pydantic import SecretStr

from screens.compare import CompareScreen
from tests.helpers.fake_openai import FakeOpenAI, last_user
from tests.helpers.judges import JUDGE
from tests.tui.conftest import Db, Driver, drive, make_app
from tests.tui.eval_data import build
from tui.app import DistillApp
from tui.engine.backend import Backend, BackendSpec
from tui.engine.evals import EvalRunner, create_eval, start_eval_run
from tui.engine.store import Store

ENGINE = "compare-grade-"  # the name of the thread a run is graded on, then its eval run id


def judge_reply(messages: Sequence[Any]) -> str:
    """Passes an answer that runs git status; fails anything else."""
    answer = last_user(messages).split("Answer: ", 1)[1]
    return json.dumps({"label": "pass" if "git status" in answer else "fail", "reason": "ok"})


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(reply=judge_reply, markers=False, models=("judge-model",)) as server:
        yield server


def engine_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(ENGINE)]


def client_of(fake: FakeOpenAI) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=fake.base_url, api_key=fake.api_key, max_retries=0)


async def judged_app(store: Store, fake: FakeOpenAI) -> tuple[DistillApp, int]:
    """The student's run graded by the judge (the baseline), the teacher's not yet: the
    Compare screen opens on both, and g grades the teacher. Returns the teacher's run id."""
    work = build(store, roles=("student", "teacher"))
    eval_id = create_eval(store, "judged", [JUDGE])
    async with client_of(fake) as client:
        runner = EvalRunner(store, client, judge_model="judge-model")
        finished = await runner.run(start_eval_run(store, eval_id, work.runs["student"]))
    assert finished.status == "done", finished
    app = make_app(store)
    spec = BackendSpec("url", fake.base_url, SecretStr(fake.api_key), "test")
    app.backend = Backend(spec, client_of(fake), "test")
    app.settings.judge_model = "judge-model"
    return app, work.runs["teacher"]


async def open_compare(t: Driver) -> CompareScreen:
    await t.press("6")
    screen = await t.screen_of(CompareScreen)
    await t.settle()
    assert screen.comparison is not None
    return screen


async def test_the_judges_grade_on_a_thread_of_their_own_while_the_ui_loop_is_held(
    store: Store, db: Db, fake: FakeOpenAI
) -> None:
    app, teacher = await judged_app(store, fake)
    before = len(fake.chat_requests)
    fake.token_delay = 0.1  # a second or so a reply: the grading is going when the hold starts
    async with drive(app) as t:
        screen = await open_compare(t)
        await t.press("g")
        await t.wait_until(lambda: len(fake.chat_requests) > before)
        assert screen.runner is not None
        # The grading's thread, not the UI's, with the loop the judges' replies are read on.
        (engine,) = engine_threads()
        assert engine is not threading.current_thread()
        # Hold the UI's loop until every grade of the teacher is in the workspace: only a
        # runner off this loop can read the judges' replies meanwhile.
        deadline = time.monotonic() + 60
        graded = 0
        while graded < 10:
            assert time.monotonic() < deadline, f"{graded} graded while the UI's loop was held"
            time.sleep(0.05)  # the loop stays held: that is the point
            graded = db.rows(
                "SELECT COUNT(*) FROM grades g JOIN eval_runs e ON e.id = g.eval_run_id"
                " WHERE e.run_id = ?",
                (teacher,),
            )[0][0]
        await t.settle()
        assert screen.runner is None and screen.engine is None
        assert not engine.is_alive()
        assert db.rows("SELECT status FROM eval_runs WHERE run_id = ?", (teacher,)) == [("done",)]
        comparison = screen.comparison
        assert comparison is not None
        column = next(c for c in comparison.runs if c.run_id == teacher)
        assert column.eval_status == "done"
        assert column.pass_rates["judge"] == pytest.approx(0.1)  # only item 1 runs git status
        assert not t.errors()
    assert {r.body["model"] for r in fake.chat_requests} == {"judge-model"}


async def test_escape_cancels_the_grading_on_its_own_loop(
    store: Store, db: Db, fake: FakeOpenAI
) -> None:
    app, teacher = await judged_app(store, fake)
    app.settings.concurrency = 2
    before = len(fake.chat_requests)
    fake.token_delay = 0.5  # several seconds a reply: esc comes while the first ones stream
    async with drive(app) as t:
        screen = await open_compare(t)
        await t.press("g")
        await t.wait_until(lambda: len(fake.chat_requests) > before)
        assert engine_threads()
        await t.press("escape")
        await t.settle()
        assert t.app.screen is screen  # esc cancelled the grading; it did not go back
        assert screen.runner is None and screen.engine is None
        assert not engine_threads()
        assert db.rows("SELECT status FROM eval_runs WHERE run_id = ?", (teacher,)) == [
            ("cancelled",)
        ]
        # The grades being decided were dropped (a rerun decides them), not stored as errors.
        graded, errored = db.rows(
            "SELECT COUNT(*), COUNT(*) - COUNT(g.passed) FROM grades g"
            " JOIN eval_runs e ON e.id = g.eval_run_id WHERE e.run_id = ?",
            (teacher,),
        )[0]
        assert graded < 10 and errored == 0
        assert any(title == f"Grading run {teacher} cancelled" for _, title, _ in t.notifications())
        assert not t.errors()
        requested = len(fake.chat_requests)
        assert requested - before <= 2  # no more than the concurrency was ever in flight
        await asyncio.sleep(0.5)
        assert len(fake.chat_requests) == requested, "nothing is requested after esc"


async def test_quitting_mid_grading_leaves_nothing_running(
    store: Store, db: Db, fake: FakeOpenAI
) -> None:
    app, teacher = await judged_app(store, fake)
    app.settings.concurrency = 2
    before = len(fake.chat_requests)
    fake.token_delay = 0.5
    async with drive(app) as t:
        await open_compare(t)
        await t.press("g")
        await t.wait_until(lambda: len(fake.chat_requests) > before)
        (engine,) = engine_threads()
        await t.press("q")
        assert not t.app.is_running
    # The grading worker, cancelled with the app, waits for the job it cancelled on the
    # thread's loop; once it has, nothing of the grading is left.
    deadline = time.monotonic() + 30
    while engine.is_alive() or any(
        not task.done() for task in asyncio.all_tasks() if task is not asyncio.current_task()
    ):
        assert time.monotonic() < deadline, "the grading outlived the app"
        await asyncio.sleep(0.02)
    assert db.rows("SELECT status FROM eval_runs WHERE run_id = ?", (teacher,)) == [("cancelled",)]
    requested = len(fake.chat_requests)
    assert requested - before <= 2
    await asyncio.sleep(0.5)
    assert len(fake.chat_requests) == requested, "nothing is requested after quitting"
