"""The engine retries as the openai SDK would (it turns the SDK's own retries off): 408, 409,
429 and 5xx, and whatever the server marks `x-should-retry: true`; never what it marks
`false`, nor a wait over two minutes. Retry-After is honoured in seconds, as an HTTP-date and
as `retry-after-ms`. Each completion records the requests it really took. Against the fake
OpenAI server on 127.0.0.1, for the generation engine and the judge's calls alike."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterator

import pytest

from tests.helpers.fake_openai import Action, FakeOpenAI, RequestContext, fail_first
from tests.helpers.runs import client, new_run
from tui.engine.generation import Generator
from tui.engine.graders import BackendError, GradingContext, parse_grader
from tui.engine.store import GradeInput, Store


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(token_delay=0.0, tokens_per_reply=3) as server:
        yield server


async def generate(fake: FakeOpenAI, store: Store, run_id: int, **kw: object) -> None:
    kw.setdefault("backoff_base", 0.0)
    async with client(fake) as c:
        await Generator(store, c, concurrency=2, **kw).run(run_id)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status", "headers"),
    [
        (408, {}),  # request timeout
        (409, {}),  # lock timeout
        (429, {}),
        (500, {}),
        (503, {}),
        (400, {"x-should-retry": "true"}),  # the server's word beats the status
    ],
)
async def test_what_the_sdk_retries_is_retried(
    fake: FakeOpenAI, store: Store, status: int, headers: dict[str, str]
) -> None:
    fake.policy = fail_first(2, Action(status=status, headers=headers))
    run_id = new_run(store, ["ask once"])
    await generate(fake, store, run_id)
    (row,) = store.completions(run_id)
    assert row.status == "done", row.error
    assert fake.count("ask once") == 3
    assert row.attempts == 3  # the real count, not 1


@pytest.mark.parametrize(
    ("status", "headers", "why"),
    [
        (503, {"x-should-retry": "false"}, "x-should-retry: false"),
        (429, {"x-should-retry": "false"}, "x-should-retry: false"),
        (429, {"retry-after": "300"}, "asked to wait 300 s"),
        (400, {}, ""),
        (422, {}, ""),
    ],
)
async def test_what_the_sdk_does_not_retry_fails_at_once(
    fake: FakeOpenAI, store: Store, status: int, headers: dict[str, str], why: str
) -> None:
    fake.policy = fail_first(1, Action(status=status, headers=headers))
    run_id = new_run(store, ["ask once"])
    await generate(fake, store, run_id)
    (row,) = store.completions(run_id)
    assert row.status == "failed"
    assert fake.count("ask once") == 1
    assert row.attempts == 1
    assert f"HTTP {status}" in (row.error or "")
    assert why in (row.error or "")


def _gap(fake: FakeOpenAI) -> float:
    first, second = fake.requests[0], fake.requests[1]
    assert first.ended is not None
    return second.time - first.ended


async def test_retry_after_as_an_http_date_is_honoured(fake: FakeOpenAI, store: Store) -> None:
    def policy(ctx: RequestContext) -> Action | None:
        if ctx.attempt > 1:
            return None
        # Two seconds from now, at the date's one-second resolution: a wait of 1–2 s.
        date = email.utils.formatdate(time.time() + 2, usegmt=True)
        return Action(status=503, headers={"retry-after": date})

    fake.policy = policy
    run_id = new_run(store, ["ask once"])
    await generate(fake, store, run_id)
    assert store.completions(run_id)[0].status == "done"
    assert _gap(fake) >= 0.9  # without reading the date: no wait at all (backoff_base 0)


async def test_retry_after_ms_is_honoured(fake: FakeOpenAI, store: Store) -> None:
    fake.policy = fail_first(1, Action(status=429, retry_after_ms=400))
    run_id = new_run(store, ["ask once"])
    await generate(fake, store, run_id)
    assert store.completions(run_id)[0].attempts == 2
    assert _gap(fake) >= 0.35


async def test_attempts_add_up_when_a_failed_item_is_generated_again(
    fake: FakeOpenAI, store: Store
) -> None:
    fake.policy = fail_first(2, Action(status=500))
    run_id = new_run(store, ["ask once"])
    await generate(fake, store, run_id, max_retries=1)  # 2 attempts, both 500
    (row,) = store.completions(run_id)
    assert (row.status, row.attempts) == ("failed", 2)
    await generate(fake, store, run_id)  # resumed: the third request succeeds
    (row,) = store.completions(run_id)
    assert (row.status, row.attempts) == ("done", 3)


# -- the judge's calls follow the same rules -------------------------------------------------

SCORER = {
    "type": "score_model",
    "name": "judge",
    "input": [{"role": "user", "content": "Grade: {{sample.output_text}}"}],
    "range": [0, 10],
    "pass_threshold": 6,
}
ROW = GradeInput(1, 1, "Show the status", "git status", "git status")


@pytest.fixture
def judge() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(reply=lambda m: '{"score": 8}', markers=False, models=("judge",)) as s:
        yield s


def judging(server: FakeOpenAI) -> GradingContext:
    return GradingContext(client(server), judge_model="judge", backoff_base=0.0)


@pytest.mark.parametrize("status", [408, 409])
async def test_the_judge_retries_408_and_409(judge: FakeOpenAI, status: int) -> None:
    judge.policy = fail_first(2, Action(status=status), per_key=False)
    result = await parse_grader(SCORER).agrade(judging(judge), ROW)
    assert result.score == 8.0
    assert len(judge.chat_requests) == 3


async def test_the_judge_obeys_x_should_retry_false(judge: FakeOpenAI) -> None:
    judge.policy = fail_first(1, Action(status=503, headers={"x-should-retry": "false"}))
    with pytest.raises(BackendError) as refused:
        await parse_grader(SCORER).agrade(judging(judge), ROW)
    assert "x-should-retry: false" in str(refused.value)
    assert not refused.value.transient and not refused.value.fatal
    assert len(judge.chat_requests) == 1
