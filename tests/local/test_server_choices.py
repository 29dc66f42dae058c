"""OpenAI's `n` on the local backend, through the openai SDK over real HTTP against a tiny
random-weight GGUF served by llama.cpp: n choices per request, streamed or not, usage counting
the prompt once, seeds, the limit on n, stored completions with all their choices, and the
shared prompt evaluated once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest

from tests.helpers.tiny_model import build_tiny_gguf
from tests.local.server_harness import client, model_id, start_thread_server
from tui.local.routes.chat import MAX_CHOICES

USER = [{"role": "user", "content": "Create a new branch called 'feature-login'."}]
SAMPLED: dict[str, Any] = {"max_tokens": 8, "temperature": 1.0, "seed": 5}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("choices")
    gguf = build_tiny_gguf(root / "tiny-choices.gguf")
    running = start_thread_server(root / "ws", [gguf])
    yield running
    running.stop()


@pytest.fixture
async def c(server: Any) -> AsyncIterator[openai.AsyncOpenAI]:
    async with client(server.url) as cl:
        yield cl


@pytest.fixture
async def tiny(c: openai.AsyncOpenAI) -> str:
    return model_id((await c.models.list()).data, "tiny-choices")


def texts(r: Any) -> list[str]:
    return [ch.message.content for ch in r.choices]


async def test_n_choices_with_indices_and_usage(c: openai.AsyncOpenAI, tiny: str) -> None:
    one = await c.chat.completions.create(model=tiny, messages=USER, max_tokens=6, temperature=0)
    three = await c.chat.completions.create(
        model=tiny, messages=USER, max_tokens=6, temperature=0, n=3
    )
    assert [ch.index for ch in three.choices] == [0, 1, 2]
    # Greedy: every choice is the single answer.
    assert texts(three) == texts(one) * 3
    assert [ch.finish_reason for ch in three.choices] == [one.choices[0].finish_reason] * 3
    assert one.usage is not None and three.usage is not None
    assert three.usage.prompt_tokens == one.usage.prompt_tokens  # one prompt, counted once
    assert three.usage.completion_tokens == 3 * one.usage.completion_tokens
    assert three.usage.total_tokens == three.usage.prompt_tokens + three.usage.completion_tokens


async def test_seeded_choices_differ_and_repeat(c: openai.AsyncOpenAI, tiny: str) -> None:
    first = await c.chat.completions.create(model=tiny, messages=USER, n=4, **SAMPLED)
    again = await c.chat.completions.create(model=tiny, messages=USER, n=4, **SAMPLED)
    single = await c.chat.completions.create(model=tiny, messages=USER, **SAMPLED)
    assert texts(first) == texts(again)
    assert len(set(texts(first))) > 1, texts(first)
    assert texts(first)[0] == texts(single)[0]  # choice 0 is what n=1 gives for that seed
    # Unseeded, the choices are independent samples too.
    unseeded = await c.chat.completions.create(
        model=tiny, messages=USER, n=4, max_tokens=8, temperature=1.0
    )
    assert len(set(texts(unseeded))) > 1, texts(unseeded)


async def test_streamed_choices_carry_their_index(c: openai.AsyncOpenAI, tiny: str) -> None:
    plain = await c.chat.completions.create(model=tiny, messages=USER, n=3, **SAMPLED)
    stream = await c.chat.completions.create(
        model=tiny,
        messages=USER,
        n=3,
        stream=True,
        stream_options={"include_usage": True},
        **SAMPLED,
    )
    chunks = [ch async for ch in stream]
    assert len({ch.id for ch in chunks}) == 1
    per_index: dict[int, list[Any]] = {}
    for ch in chunks[:-1]:
        assert len(ch.choices) == 1
        per_index.setdefault(ch.choices[0].index, []).append(ch.choices[0])
    assert sorted(per_index) == [0, 1, 2]
    for index, deltas in per_index.items():
        assert deltas[0].delta.role == "assistant"
        assert "".join(d.delta.content or "" for d in deltas) == texts(plain)[index]
        finishes = [d.finish_reason for d in deltas]
        assert finishes[-1] == plain.choices[index].finish_reason
        assert all(f is None for f in finishes[:-1])
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None and plain.usage is not None
    assert last.usage.prompt_tokens == plain.usage.prompt_tokens
    assert last.usage.completion_tokens == plain.usage.completion_tokens


async def test_n_is_limited_with_openai_errors(c: openai.AsyncOpenAI, tiny: str) -> None:
    most = await c.chat.completions.create(
        model=tiny, messages=USER, n=MAX_CHOICES, max_tokens=1, temperature=0
    )
    assert [ch.index for ch in most.choices] == list(range(MAX_CHOICES))
    for n, code in ((MAX_CHOICES + 1, "integer_above_max_value"), (0, "integer_below_min_value")):
        with pytest.raises(openai.BadRequestError) as err:
            await c.chat.completions.create(model=tiny, messages=USER, n=n, max_tokens=1)
        assert err.value.param == "n"
        assert err.value.code == code
        assert err.value.type == "invalid_request_error"


async def test_stored_completion_keeps_every_choice(c: openai.AsyncOpenAI, tiny: str) -> None:
    tag = f"n{time.monotonic_ns()}"
    made = await c.chat.completions.create(
        model=tiny, messages=USER, n=2, store=True, metadata={"run": tag}, **SAMPLED
    )
    stream = await c.chat.completions.create(
        model=tiny, messages=USER, n=2, store=True, metadata={"run": tag}, stream=True, **SAMPLED
    )
    chunks = [ch async for ch in stream]  # the whole stream: stored once it is complete
    streamed_id = chunks[0].id
    listed = await c.chat.completions.list(metadata={"run": tag})
    assert [r.id for r in listed.data] == [made.id, streamed_id]
    for stored in listed.data:
        assert [ch.index for ch in stored.choices] == [0, 1]
        assert texts(stored) == texts(made)  # same seed, same choices, streamed or not
        assert stored.usage is not None and made.usage is not None
        assert stored.usage.completion_tokens == made.usage.completion_tokens
    retrieved = await c.chat.completions.retrieve(made.id)
    assert texts(retrieved) == texts(made)


async def test_the_shared_prompt_is_evaluated_once(
    server: Any, c: openai.AsyncOpenAI, tiny: str
) -> None:
    engine = server.app.state.local.registry._engines[tiny]  # white-box: prefill is not in HTTP
    n = 4
    # A system prompt no earlier request used: nothing of it is in the KV cache yet.
    system = f"Session {time.monotonic_ns()}: answer with one git command, nothing else."
    messages = [{"role": "system", "content": system}, *USER]
    before = engine.stats()["prefilled_tokens"]
    r = await c.chat.completions.create(
        model=tiny, messages=messages, n=n, max_tokens=4, temperature=1.0
    )
    prefilled = engine.stats()["prefilled_tokens"] - before
    assert r.usage is not None
    prompt = r.usage.prompt_tokens
    assert prompt > 20
    # The prompt once, plus its last token once more per further choice (each sequence needs
    # the logits of its own copy); prefilling it per choice would take about n * prompt.
    assert prefilled <= prompt + n - 1, (prefilled, prompt)


async def test_closing_a_stream_of_n_choices_frees_every_slot(
    server: Any, c: openai.AsyncOpenAI
) -> None:
    """The real default model, asked for a long story, is slow enough to walk away from."""
    model = "smollm2-135m-instruct"
    story = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
    await c.chat.completions.create(model=model, messages=story, max_tokens=1)  # loads it
    engine = server.app.state.local.registry._engines[model]
    stream = await c.chat.completions.create(
        model=model, messages=story, n=4, max_tokens=400, temperature=1.0, stream=True
    )
    async for _chunk in stream:
        break
    stats = engine.stats()
    assert stats["active"] + stats["waiting"] == 4, stats
    await stream.close()
    deadline = time.monotonic() + 5
    while engine.stats()["active"] or engine.stats()["waiting"]:
        assert time.monotonic() < deadline, engine.stats()
        await asyncio.sleep(0.02)
