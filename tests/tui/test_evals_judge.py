"""The Evals screen grading with an LLM judge (label_model) through the fake OpenAI server on
127.0.0.1: the runner grades on a thread of its own (tui/engine/offloop.py), so the judges'
replies are read and their grades stored while the UI's event loop is held, and the table
shows each grade once the loop runs again."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

import openai
import pytest
from pydantic import SecretStr

from screens.evals import EvalsScreen
from tests.helpers.fake_openai import FakeOpenAI, last_user
from tests.helpers.judges import JUDGE
from tests.tui.conftest import Db, drive, make_app
from tests.tui.eval_data import build
from tui.engine.backend import Backend, BackendSpec
from tui.engine.evals import create_eval
from tui.engine.store import Store


def judge_reply(messages: Sequence[Any]) -> str:
    """Passes an answer that runs git status or git switch; fails anything else."""
    answer = last_user(messages).split("Answer: ", 1)[1]
    ok = "git status" in answer or "git switch" in answer
    return json.dumps({"label": "pass" if ok else "fail", "reason": "checked"})


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    # A second a reply: the grading is still going when the test holds the loop.
    with FakeOpenAI(
        reply=judge_reply, markers=False, models=("judge-model",), token_delay=0.1
    ) as server:
        yield server


async def test_judges_grade_while_the_ui_loop_is_held(
    store: Store, db: Db, fake: FakeOpenAI
) -> None:
    work = build(store, roles=("student",))
    create_eval(store, "judged", [JUDGE])
    app = make_app(store)
    spec = BackendSpec("url", fake.base_url, SecretStr(fake.api_key), "test")
    client = openai.AsyncOpenAI(base_url=fake.base_url, api_key=fake.api_key, max_retries=0)
    app.backend = Backend(spec, client, "test")
    app.settings.judge_model = "judge-model"
    async with drive(app) as t:
        await t.press("4")
        await t.wait_until(lambda: t.app.screen.sub_title == "Evals")
        screen = t.app.screen
        assert isinstance(screen, EvalsScreen)
        await t.press("g")
        await t.wait_until(lambda: bool(fake.chat_requests))
        assert screen.runner is not None
        # Hold the UI's loop until every grade is in the workspace: only a runner off this
        # loop can read the judges' replies meanwhile.
        rows = len(store.completions(work.runs["student"]))
        deadline = time.monotonic() + 60
        graded = 0
        while graded < rows:
            assert time.monotonic() < deadline, f"{graded} graded while the UI's loop was held"
            time.sleep(0.05)  # the loop stays held: that is the point
            graded = db.rows("SELECT COUNT(*) FROM grades")[0][0]
        await t.settle()
        assert screen.runner is None
        live = screen.live
        assert live is not None and live.info.status == "done"
        # The judge's verdicts, row by row, as the table holds them.
        outputs = dict(db.rows("SELECT id, output FROM completions"))
        for row in live.rows:
            grade = row.grades["judge"]
            expected = "git status" in outputs[row.completion_id] or (
                "git switch" in outputs[row.completion_id]
            )
            assert grade.passed is expected, (outputs[row.completion_id], grade)
        assert screen.results.table.row_count == rows
        assert not t.errors()
    assert {r.body["model"] for r in fake.chat_requests} == {"judge-model"}
