"""Quitting (q) while the Evals or the Compare screen grades cancels the grading and waits for
it, as it does for a generation: by the time the app exits, the eval run is recorded as
cancelled (not left "running", which a next session would take for a grading going on
elsewhere), and no judge request is sent after q. A label_model judge on the fake OpenAI
server on 127.0.0.1; its replies after the first few are held, so a grading that outlived
the app, or took its cancel for a dropped grade, would show."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import openai
import pytest
from pydantic import SecretStr
from textual.message import Message
from textual.messages import ExitApp

from screens.compare import CompareScreen
from screens.evals import EvalsScreen
from tests.helpers.fake_openai import Action, FakeOpenAI, RequestContext, hang, last_user
from tests.helpers.judges import JUDGE
from tests.tui.conftest import SIZE, Db, Driver, make_app
from tests.tui.eval_data import build
from tui.app import DistillApp
from tui.engine.backend import Backend, BackendSpec
from tui.engine.evals import EvalRunner, create_eval, start_eval_run
from tui.engine.store import Store

CONCURRENCY = 2
LET_THROUGH = 3  # judge replies answered before the rest are held


def judge_reply(messages: Sequence[Any]) -> str:
    answer = last_user(messages).split("Answer: ", 1)[1]
    return json.dumps({"label": "pass" if "git status" in answer else "fail", "reason": "ok"})


class Gate:
    """Answers the `through` judge requests that come after the first `after`; holds every
    later one until the client goes away."""

    def __init__(self, through: int, after: int = 0) -> None:
        self.last = after + through

    def __call__(self, ctx: RequestContext) -> Action | None:
        return None if ctx.n <= self.last else hang(120)


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(reply=judge_reply, markers=False, models=("judge-model",)) as server:
        yield server


def client_of(fake: FakeOpenAI) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=fake.base_url, api_key=fake.api_key, max_retries=0)


def with_judge(store: Store, fake: FakeOpenAI) -> DistillApp:
    app = make_app(store)
    spec = BackendSpec("url", fake.base_url, SecretStr(fake.api_key), "test")
    app.backend = Backend(spec, client_of(fake), "test")
    app.settings.judge_model = "judge-model"
    app.settings.concurrency = CONCURRENCY
    return app


def grading_threads(prefix: str) -> list[threading.Thread]:
    """The threads a screen grades on: `eval-run-<id>` (Evals), `compare-grade-<id>`."""
    return [t for t in threading.enumerate() if t.name.startswith(prefix)]


def graded(db: Db) -> int:
    """Grades stored for the latest eval run (the one being graded)."""
    rows = db.rows(
        "SELECT COUNT(*) FROM grades WHERE eval_run_id = (SELECT MAX(id) FROM eval_runs)"
    )
    return int(rows[0][0])


@asynccontextmanager
async def drive_to_exit(app: DistillApp, db: Db) -> AsyncIterator[tuple[Driver, list[Any]]]:
    """Drive the app; the second value gets the eval runs' statuses as they were when the
    app was told to exit (ExitApp, which q posts once it has done what it waits for)."""
    messages: list[Message] = []
    at_exit: list[Any] = []

    def hook(message: Message) -> None:
        messages.append(message)
        if isinstance(message, ExitApp):
            at_exit.append(db.rows("SELECT id, status FROM eval_runs ORDER BY id"))

    async with app.run_test(size=SIZE, message_hook=hook) as pilot:
        driver = Driver(app, pilot, messages)
        await driver.settle()
        yield driver, at_exit


async def quit_mid_grading(t: Driver, db: Db, fake: FakeOpenAI, before: int, prefix: str) -> int:
    """Wait until the judges' LET_THROUGH grades are stored and each worker waits on a held
    reply (so no request is on its way), press q; the judge requests made by then."""
    await t.wait_until(
        lambda: (
            graded(db) == LET_THROUGH
            and len(fake.chat_requests) == before + LET_THROUGH + CONCURRENCY
        )
    )
    requested = len(fake.chat_requests)
    assert grading_threads(prefix)
    await t.press("q")
    return requested


async def nothing_left(fake: FakeOpenAI, requested: int, prefix: str) -> None:
    """No grading thread outlives the app, and no judge request came after q."""
    deadline = time.monotonic() + 10
    while grading_threads(prefix):
        assert time.monotonic() < deadline, "the grading outlived the app"
        await asyncio.sleep(0.02)
    assert len(fake.chat_requests) == requested, "judge requests sent after q"
    await asyncio.sleep(0.5)
    assert len(fake.chat_requests) == requested, "judge requests sent after q"


async def test_quitting_while_the_evals_screen_grades_records_the_eval_run_cancelled(
    store: Store, db: Db, fake: FakeOpenAI
) -> None:
    build(store, roles=("student",))
    create_eval(store, "judged", [JUDGE])
    fake.policy = Gate(LET_THROUGH)
    app = with_judge(store, fake)
    async with drive_to_exit(app, db) as (t, at_exit):
        await t.press("4")
        await t.wait_until(lambda: t.app.screen.sub_title == "Evals")
        screen = t.app.screen
        assert isinstance(screen, EvalsScreen)
        await t.press("g")
        assert screen.runner is not None
        requested = await quit_mid_grading(t, db, fake, 0, "eval-run-")
        assert not t.app.is_running
    ((eval_run_id, _),) = db.rows("SELECT id, status FROM eval_runs")
    assert at_exit[0] == [(eval_run_id, "cancelled")], "the app exited before the grading ended"
    # As esc leaves it: the grades decided are kept, those held dropped (a rerun decides them).
    assert db.rows("SELECT COUNT(*), COUNT(*) - COUNT(passed) FROM grades") == [(LET_THROUGH, 0)]
    await nothing_left(fake, requested, "eval-run-")


async def test_quitting_while_the_compare_screen_grades_records_the_eval_run_cancelled(
    store: Store, db: Db, fake: FakeOpenAI
) -> None:
    work = build(store, roles=("student", "teacher"))
    eval_id = create_eval(store, "judged", [JUDGE])
    async with client_of(fake) as client:  # the baseline, graded before the app opens
        baseline = start_eval_run(store, eval_id, work.runs["student"])
        finished = await EvalRunner(store, client, judge_model="judge-model").run(baseline)
    assert finished.status == "done", finished
    before = len(fake.chat_requests)
    fake.policy = Gate(LET_THROUGH, after=before)
    app = with_judge(store, fake)
    async with drive_to_exit(app, db) as (t, at_exit):
        await t.press("6")
        screen: CompareScreen = await t.screen_of(CompareScreen)
        await t.settle()
        assert screen.comparison is not None
        await t.press("g")
        requested = await quit_mid_grading(t, db, fake, before, "compare-grade-")
        assert not t.app.is_running
    teacher = db.rows("SELECT id FROM eval_runs WHERE run_id = ?", (work.runs["teacher"],))
    ((graded_id,),) = teacher
    assert at_exit[0] == [(baseline, "done"), (graded_id, "cancelled")], (
        "the app exited before the grading ended"
    )
    assert graded(db) == LET_THROUGH
    await nothing_left(fake, requested, "compare-grade-")
