"""Cancelling the task that runs an eval run (what a UI does when it closes, or Ctrl-C of
`distill-tui run` while it grades) stops it at once, like EvalRunner.cancel(): the grades
being decided are dropped, those decided are kept, the eval run is recorded as cancelled, and
no judge request is sent after the cancel. A label_model judge on the fake OpenAI server over
real HTTP; its replies after the first few are held (the gate stays shut), so a runner that
took the cancel for a dropped grade would go on asking."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import openai
import pytest

from tests.helpers.fake_openai import Action, FakeOpenAI, RequestContext, hang, last_user
from tests.helpers.judges import JUDGE
from tui.engine.datasets import ItemDraft
from tui.engine.evals import EvalRunner, create_eval, start_eval_run
from tui.engine.store import Store

N = 12
CONCURRENCY = 2
LET_THROUGH = 3  # judge replies answered before the gate shuts on the rest


def judge_reply(messages: Sequence[dict[str, Any]]) -> str:
    answer = last_user(messages).split("Answer: ", 1)[1]
    return json.dumps({"label": "pass" if "v1" in answer else "fail", "reason": "checked"})


class Gate:
    """Answers the first `through` judge requests; holds every later one (a reply that never
    comes until the client goes away) while shut."""

    def __init__(self, through: int) -> None:
        self.through = through
        self.opened = threading.Event()  # set from the test, read on the server's thread

    def __call__(self, ctx: RequestContext) -> Action | None:
        if ctx.n <= self.through or self.opened.is_set():
            return None
        return hang(120)


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(reply=judge_reply, markers=False, models=("judge-model",)) as server:
        yield server


async def wait_until(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"still not true: {condition}"
        await asyncio.sleep(0.01)


async def test_cancelling_the_eval_task_stops_it_like_cancel(
    store: Store, fake: FakeOpenAI
) -> None:
    dataset = store.create_dataset("x", "", [ItemDraft(f"request {i}", "") for i in range(N)])
    items = store.items(dataset)
    run_id = store.add_finished_run(
        [(item.id, {"output": f"git tag v{i}", "status": "done"}) for i, item in enumerate(items)],
        dataset_id=dataset,
        model="student-model",
        role="student",
    )
    eval_run_id = start_eval_run(store, create_eval(store, "judged", [JUDGE]), run_id)
    gate = Gate(LET_THROUGH)
    fake.policy = gate

    async with openai.AsyncOpenAI(
        base_url=fake.base_url, api_key=fake.api_key, max_retries=0
    ) as client:
        runner = EvalRunner(store, client, judge_model="judge-model", concurrency=CONCURRENCY)
        task = asyncio.create_task(runner.run(eval_run_id))
        # Three grades decided, and each worker waiting on a held reply: nothing else can
        # be on its way to the server.
        await wait_until(
            lambda: (
                runner.stats.graded == LET_THROUGH
                and len(fake.chat_requests) == LET_THROUGH + CONCURRENCY
            )
        )
        requested = len(fake.chat_requests)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=5)
        if not done:  # the runner went on grading: stop it, then fail
            runner.cancel()
            await asyncio.wait({task}, timeout=30)
            pytest.fail(
                f"the eval run went on after its task was cancelled: "
                f"{len(fake.chat_requests) - requested} more judge requests"
            )
        with pytest.raises(asyncio.CancelledError):
            task.result()

        info = store.get_eval_run(eval_run_id)
        assert info.status == "cancelled" and info.finished_at
        # As cancel() leaves it: the grades decided are kept, those in flight dropped (not
        # stored as errors), so a rerun decides them.
        grades = store.grades(eval_run_id)
        assert len(grades) == LET_THROUGH and all(g.passed is not None for g in grades)
        assert info.results["judge"].passed + info.results["judge"].failed == LET_THROUGH
        # Nothing of the run is left to send a request later (the server has a loop of its
        # own), and nothing was sent after the cancel.
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert all(t.done() for t in others), others
        assert len(fake.chat_requests) == requested, "judge requests sent after the cancel"
        await asyncio.sleep(0.5)
        assert len(fake.chat_requests) == requested, "judge requests sent after the cancel"

        # A rerun decides what the cancel dropped, and only that.
        gate.opened.set()
        again = await EvalRunner(store, client, judge_model="judge-model").run(eval_run_id)
        assert again.status == "done"
        assert len(store.grades(eval_run_id)) == N
        assert len(fake.chat_requests) == requested + N - LET_THROUGH
