"""The fault-injecting fake OpenAI server behaves like OpenAI through the real openai SDK: reply
shapes, usage, errors with their headers, cut streams, markers and what it records."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest

from tests.helpers.fake_openai import (
    FakeOpenAI,
    FakeOpenAIProcess,
    RateLimits,
    cut,
    fail_first,
    like_openai,
    rate_limited,
    stall,
    truncated,
    when,
)

ASK = "Create a new branch called 'feature-login'."


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(hang_seconds=5) as s:
        yield s


@pytest.fixture
async def client(server: FakeOpenAI) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=server.base_url, api_key=server.api_key, max_retries=0, timeout=10
    ) as c:
        yield c


def chat(text: str, system: str = "Reply with a git command.") -> list[Any]:
    return [{"role": "system", "content": system}, {"role": "user", "content": text}]


async def stream_text(client: openai.AsyncOpenAI, text: str, **kw: Any) -> tuple[str, list[Any]]:
    stream = await client.chat.completions.create(
        model="fake-model", messages=chat(text), stream=True, **kw
    )
    chunks = [chunk async for chunk in stream]
    out = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return out, chunks


async def test_streaming_with_usage_is_deterministic(
    server: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    opts = {"stream_options": {"include_usage": True}}
    first, chunks = await stream_text(client, ASK, **opts)
    again, _ = await stream_text(client, ASK, **opts)
    assert first == again == "echo: " + ASK
    assert all(c.id.startswith("chatcmpl-") and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["stop"]
    # include_usage: a last chunk with the usage and no choices; usage null before it.
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(first.split())
    assert chunks[-1].usage.prompt_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])
    # Without include_usage: no usage chunk.
    _, plain = await stream_text(client, ASK)
    assert all(c.usage is None and c.choices for c in plain)
    assert server.count(ASK) == 3 and len(server.chat_requests) == 3


async def test_non_streaming_reply_usage_and_recorded_store_metadata(
    server: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    reply = await client.chat.completions.create(
        model="gpt-4o-mini", messages=chat(ASK), store=True, metadata={"task": "git"}
    )
    assert reply.id.startswith("chatcmpl-") and reply.object == "chat.completion"
    assert reply.choices[0].message.content == "echo: " + ASK
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == len(("echo: " + ASK).split())
    (request,) = server.requests
    assert request.store is True and request.metadata == {"task": "git"}
    assert request.body["model"] == "gpt-4o-mini" and request.key == ASK
    # The server thread records the outcome just after the last byte goes out, which can be
    # after the client has read it.
    deadline = time.monotonic() + 5
    while request.ended is None and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert request.outcome == "ok" and request.status == 200 and request.ended is not None


async def test_tokens_per_reply_token_delay_and_max_tokens(
    server: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    server.app.tokens_per_reply = 50
    server.token_delay = 0.005
    started = time.monotonic()
    text, chunks = await stream_text(client, ASK, stream_options={"include_usage": True})
    assert time.monotonic() - started >= 49 * 0.005
    assert len(text.split()) == 50 and chunks[-1].usage.completion_tokens == 50
    # max_tokens below the reply's length cuts it: finish_reason "length".
    cut_reply = await client.chat.completions.create(
        model="fake-model", messages=chat(ASK), max_tokens=7
    )
    assert cut_reply.choices[0].finish_reason == "length"
    assert len((cut_reply.choices[0].message.content or "").split()) == 7
    server.policy = when("short", truncated(3))
    short, _ = await stream_text(client, "a short one please, with many words in it")
    assert len(short.split()) == 3


async def test_429_carries_retry_after_then_succeeds(
    server: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    server.policy = fail_first(2, rate_limited(retry_after=0.25))
    for _ in range(2):
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(model="fake-model", messages=chat(ASK))
        assert caught.value.response.headers["retry-after"] == "0.25"
        assert caught.value.status_code == 429
        assert caught.value.code == "rate_limit_exceeded"
    ok, _ = await stream_text(client, ASK)
    assert ok == "echo: " + ASK
    attempts = server.for_key(ASK)
    assert [r.status for r in attempts] == [429, 429, 200]
    assert [r.attempt for r in attempts] == [1, 2, 3]
    assert attempts[0].ended is not None and attempts[1].time >= attempts[0].ended
    assert server.duplicates() == []
    # Another message has its own count: its first attempt is refused too.
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model="fake-model", messages=chat("other"))


async def test_a_cut_stream_raises_while_iterating(
    server: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    server.policy = when("cut me", cut(after=2))
    stream = await client.chat.completions.create(
        model="fake-model", messages=chat("cut me off please now"), stream=True
    )
    received: list[str] = []
    # What the SDK raises for a stream the server cut (not a timeout, not a status error).
    with pytest.raises(openai.APIConnectionError) as caught:
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert not isinstance(caught.value, openai.APITimeoutError)
    assert "".join(received) == "echo: cut"
    assert server.chat_requests[0].outcome == "cut"
    # Not streaming: the JSON body is cut half-way, which the SDK reports as a connection error.
    with pytest.raises(openai.APIConnectionError):
        await client.chat.completions.create(model="fake-model", messages=chat("cut me"))


async def test_markers_in_the_request_text(server: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(model="fake-model", messages=chat("FAIL500 x"))
    assert caught.value.status_code == 500
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="fake-model", messages=chat("FLAKY y"))
    flaky, _ = await stream_text(client, "FLAKY y")
    assert flaky == "echo: FLAKY y" and server.count("FLAKY y") == 3
    empty, chunks = await stream_text(client, "EMPTY z", stream_options={"include_usage": True})
    assert empty == "" and chunks[-1].usage.completion_tokens == 0
    with pytest.raises(openai.PermissionDeniedError):
        await client.chat.completions.create(model="fake-model", messages=chat("DENIED"))
    with pytest.raises(openai.RateLimitError) as limited:
        await client.chat.completions.create(model="fake-model", messages=chat("FAIL429"))
    assert float(limited.value.response.headers["retry-after"]) > 0
    # Markers are whole upper-case words: a real request about CHANGELOG.md doesn't hang.
    text, _ = await stream_text(client, "Stage CHANGELOG.md, not EMPTYING.")
    assert text.startswith("echo: Stage CHANGELOG.md")


async def test_hangs_and_stalls_hit_the_client_timeout(
    server: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    # The server hangs for 5 s and stalls for 5 s; the client waits 2 s (a margin for a busy
    # machine to send the first tokens in time).
    quick = client.with_options(timeout=2.0)
    with pytest.raises(openai.APITimeoutError):
        await quick.chat.completions.create(model="fake-model", messages=chat("HANG"))
    # A stream that goes silent after 2 tokens: the client's read timeout ends it, after the
    # 2 tokens arrived (not a refused request, not a cut connection).
    server.policy = when("stall", stall(after=2, seconds=5))
    stream = await quick.chat.completions.create(
        model="fake-model", messages=chat("stall here and there"), stream=True
    )
    received: list[str] = []
    with pytest.raises(openai.APITimeoutError):
        async for chunk in stream:
            received += [c.delta.content for c in chunk.choices if c.delta.content]
    assert len(received) == 2


async def test_auth_models_and_absent_endpoints(
    server: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    models = await client.models.list()
    assert [m.id for m in models.data] == ["fake-model", "gpt-4o", "gpt-4o-mini"]
    with pytest.raises(openai.NotFoundError) as unknown:
        await client.chat.completions.create(model="no-such-model", messages=chat(ASK))
    assert unknown.value.code == "model_not_found"
    # Like a plain vLLM server: no files, no fine-tuning.
    with pytest.raises(openai.NotFoundError):
        await client.files.list()
    with pytest.raises(openai.NotFoundError):
        await client.fine_tuning.jobs.list()
    async with openai.AsyncOpenAI(
        base_url=server.base_url, api_key="sk-wrong", max_retries=0
    ) as wrong:
        with pytest.raises(openai.AuthenticationError):
            await wrong.chat.completions.create(model="fake-model", messages=chat(ASK))
        with pytest.raises(openai.AuthenticationError):
            await wrong.models.list()


async def test_duplicates_are_reported(server: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    await client.chat.completions.create(model="fake-model", messages=chat(ASK))
    assert server.duplicates() == []
    await client.chat.completions.create(model="fake-model", messages=chat(ASK))
    assert server.duplicates() == [ASK]
    server.reset()
    assert server.requests == [] and server.count(ASK) == 0


async def test_the_server_as_a_child_process() -> None:
    with FakeOpenAIProcess(tokens_per_reply=5) as proc:
        async with openai.AsyncOpenAI(
            base_url=proc.base_url, api_key=proc.api_key, max_retries=0
        ) as c:
            reply = await c.chat.completions.create(model="fake-model", messages=chat(ASK))
    assert reply.choices[0].message.content == "echo: Create a new branch"


async def test_refuses_what_openai_refuses_in_a_chat(
    server: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    with pytest.raises(openai.BadRequestError) as no_stream:
        await client.chat.completions.create(
            model="fake-model", messages=chat(ASK), stream_options={"include_usage": True}
        )
    assert no_stream.value.param == "stream_options"
    for metadata, param in (
        ({f"k{i}": "v" for i in range(17)}, "metadata"),
        ({"k" * 65: "v"}, "metadata"),
        ({"task": "v" * 513}, "metadata.task"),
    ):
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(
                model="fake-model", messages=chat(ASK), store=True, metadata=metadata
            )
        assert refused.value.param == param
    ok = {f"k{i}": "v" * 512 for i in range(16)}
    reply = await client.chat.completions.create(
        model="fake-model", messages=chat(ASK), store=True, metadata=ok
    )
    assert reply.choices[0].message.content


async def test_a_per_minute_budget_with_openai_headers() -> None:
    limits = RateLimits(requests=3, tokens=None, minute=60)
    async with (
        FakeOpenAI(rate_limits=limits) as server,
        openai.AsyncOpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0) as c,
    ):
        remaining = []
        for _ in range(3):
            raw = await c.chat.completions.with_raw_response.create(
                model="fake-model", messages=chat(ASK)
            )
            remaining.append(raw.headers["x-ratelimit-remaining-requests"])
            assert raw.headers["x-ratelimit-limit-requests"] == "3"
        assert remaining == ["2", "1", "0"]
        with pytest.raises(openai.RateLimitError) as over:
            await c.chat.completions.create(model="fake-model", messages=chat(ASK))
    assert over.value.code == "rate_limit_exceeded"
    assert "on requests per min (RPM): Limit 3" in over.value.message
    assert float(over.value.response.headers["retry-after-ms"]) > 0
    assert server.throttled == 1


async def test_files_and_a_fine_tuning_job_as_on_openai() -> None:
    lines = [
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"q{i}"},
                    {"role": "assistant", "content": "a"},
                ]
            }
        )
        for i in range(12)
    ]
    async with (
        like_openai(job_seconds=0.2) as server,
        openai.AsyncOpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0) as c,
    ):
        uploaded = await c.files.create(
            file=("train.jsonl", "\n".join(lines).encode()), purpose="fine-tune"
        )
        assert (await c.files.content(uploaded.id)).content.startswith(b'{"messages"')
        with pytest.raises(openai.BadRequestError) as alias:
            await c.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=uploaded.id)
        assert alias.value.code == "model_not_available"
        assert alias.value.body == {
            "message": "Model gpt-4o-mini is not available for fine-tuning or does not exist.",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_available",
        }
        job = await c.fine_tuning.jobs.create(
            model="gpt-4o-mini-2024-07-18", training_file=uploaded.id, suffix="git"
        )
        assert job.status == "validating_files"
        cancelled = await c.fine_tuning.jobs.create(
            model="gpt-4o-mini-2024-07-18", training_file=uploaded.id
        )
        assert (await c.fine_tuning.jobs.cancel(cancelled.id)).status == "cancelled"
        deadline = time.monotonic() + 30  # the job plays out over job_seconds
        while (done := await c.fine_tuning.jobs.retrieve(job.id)).status not in (
            "succeeded",
            "failed",
            "cancelled",
        ):
            assert time.monotonic() < deadline, done.status
            await asyncio.sleep(0.02)
        assert (await c.fine_tuning.jobs.retrieve(cancelled.id)).status == "cancelled"
        events = (await c.fine_tuning.jobs.list_events(job.id, limit=100)).data
        checkpoints = (await c.fine_tuning.jobs.checkpoints.list(job.id)).data
        model = done.fine_tuned_model or ""
        reply = await c.chat.completions.create(model=model, messages=chat(ASK))
    assert done.status == "succeeded"
    assert re.fullmatch(r"ft:gpt-4o-mini-2024-07-18:fake-org:git:\w{8}", model)
    assert events[0].message == "The job has successfully completed"  # newest first
    steps = [e.data["step"] for e in events if e.type == "metrics"]
    assert steps == sorted(steps, reverse=True) and steps[0] == done.hyperparameters.n_epochs * 12
    assert len(checkpoints) == 3  # one per epoch
    assert reply.choices[0].message.content
