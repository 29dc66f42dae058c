"""What the generation engine and the request synthesizer do about a failed request
(`retry.request_failure`): retried after the server's wait or a backoff, given up after
the retries with how many attempts, not retried when the request itself is wrong or the
server says not to, and the run stopped when no request can do better (no quota, a bad key,
an unknown model). Each failure is the real one: a streamed request through the openai SDK
to the fake OpenAI server on 127.0.0.1, answering as told."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from tests.helpers.fake_openai import Action, FakeOpenAI, cut, no_quota, server_error
from tui.engine.generation import StreamedReply, stream_chat
from tui.engine.retry import NO_QUOTA, RequestFailure, StreamBroken, request_failure


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    with FakeOpenAI(tokens_per_reply=5) as server:
        yield server


async def fail(fake: FakeOpenAI, action: Action) -> Any:
    """The error a streamed request raises when the server answers with `action`."""
    fake.policy = lambda ctx: action
    async with openai.AsyncOpenAI(
        base_url=fake.base_url, api_key=fake.api_key, max_retries=0
    ) as client:
        request = {
            "model": "fake-model",
            "messages": [{"role": "user", "content": "Show the status"}],
            "stream": True,
        }
        try:
            await stream_chat(client, request, StreamedReply(), started=time.monotonic())
        except (openai.APIStatusError, openai.APIConnectionError, StreamBroken) as error:
            return error
    raise AssertionError(f"{action} did not fail")


def decide(error: Any, attempt: int = 1) -> RequestFailure:
    return request_failure(
        error, attempt, model="fake-model", max_retries=2, backoff_base=0.5, backoff_cap=4.0
    )


async def test_a_server_error_is_retried_after_the_servers_wait_then_given_up(
    fake: FakeOpenAI,
) -> None:
    busy = await fail(fake, server_error(503, retry_after=2))
    message = f"HTTP 503: {busy.message}"  # the SDK's message, with the server's in it
    assert "The engine is currently overloaded" in message
    assert decide(busy, attempt=1) == RequestFailure("retry", message, delay=2.0)
    assert decide(busy, attempt=3) == RequestFailure(
        "gave up", f"{message} (gave up after 3 attempts)"
    )


async def test_a_broken_stream_is_retried_within_the_backoff_window(fake: FakeOpenAI) -> None:
    broken = await fail(fake, cut(after=2))
    assert isinstance(broken, StreamBroken)
    failure = decide(broken, attempt=2)
    assert (failure.kind, failure.message) == ("retry", str(broken))
    assert 0 <= failure.delay <= 1.0  # full jitter over base × 2 ** (attempt − 1)


@pytest.mark.parametrize(("status", "fatal"), [(400, False), (401, True), (403, True), (404, True)])
async def test_a_request_that_is_wrong_is_not_retried(
    fake: FakeOpenAI, status: int, fatal: bool
) -> None:
    error = await fail(fake, Action(status=status))
    message = f"HTTP {status}: {error.message}"
    if status == 404:
        message = f"model 'fake-model' not found at the backend ({message})"
    assert decide(error) == RequestFailure("not retried", message, fatal=fatal)


async def test_the_server_saying_not_to_retry_is_obeyed_and_said(fake: FakeOpenAI) -> None:
    error = await fail(fake, Action(status=503, headers={"x-should-retry": "false"}))
    failure = decide(error)
    assert (failure.kind, failure.fatal) == ("not retried", False)
    assert failure.message.endswith("(the server said not to retry: x-should-retry: false)")


async def test_no_quota_stops_at_once(fake: FakeOpenAI) -> None:
    error = await fail(fake, no_quota())
    assert decide(error) == RequestFailure(
        "no quota", f"{NO_QUOTA} (HTTP 429: {error.message})", fatal=True
    )
    assert "You exceeded your current quota" in error.message
