"""The transformers engine on a tiny model: the Engine protocol's promises (usage, stop,
seed, max_tokens, a closed stream frees its slot, a full queue says so)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.tiny_model import build_tiny_model
from tui.local.hf_engine import HFEngine
from tui.local.protocol import GenChunk, GenRequest, QueueFull
from tui.local.text_stream import TextOut

MESSAGES = [
    {"role": "system", "content": "You turn requests into git commands."},
    {"role": "user", "content": "Create a new branch called 'dev'."},
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-engine") / "hf")


@pytest.fixture
async def engine(model_dir: Path) -> AsyncIterator[HFEngine]:
    e = await asyncio.to_thread(HFEngine, "tiny", model_dir, 1, 2)
    yield e
    await e.aclose()


async def collect(engine: HFEngine, **kw: object) -> list[GenChunk]:
    return [c async for c in engine.generate(GenRequest(MESSAGES, **kw))]  # type: ignore[arg-type]


def text(chunks: list[GenChunk]) -> str:
    return "".join(c.text for c in chunks)


async def test_usage_and_length(engine: HFEngine) -> None:
    chunks = await collect(engine, max_tokens=7, temperature=0)
    last = chunks[-1]
    assert last.finish_reason == "length"
    assert last.completion_tokens == 7
    assert last.prompt_tokens == engine.count_tokens(MESSAGES) > 10
    assert all(c.finish_reason is None for c in chunks[:-1])


async def test_greedy_is_deterministic_and_seeds_repeat(engine: HFEngine) -> None:
    assert text(await collect(engine, max_tokens=10, temperature=0)) == text(
        await collect(engine, max_tokens=10, temperature=0)
    )
    a = text(await collect(engine, max_tokens=20, temperature=1.0, seed=7))
    b = text(await collect(engine, max_tokens=20, temperature=1.0, seed=7))
    c = text(await collect(engine, max_tokens=20, temperature=1.0, seed=8))
    assert a == b
    assert a != c


async def test_stop_text_ends_the_answer_and_is_not_included(engine: HFEngine) -> None:
    full = text(await collect(engine, max_tokens=30, temperature=1.0, seed=3))
    stop = full[6:9]
    assert len(stop) == 3
    chunks = await collect(engine, max_tokens=30, temperature=1.0, seed=3, stop=[stop, "zzzz"])
    assert text(chunks) == full[: full.index(stop)]
    assert chunks[-1].finish_reason == "stop"


async def test_closing_a_stream_frees_the_slot(engine: HFEngine) -> None:
    stream = engine.generate(GenRequest(MESSAGES, max_tokens=400, temperature=1.0, seed=1))
    await anext(stream)
    await stream.aclose()  # a client that went away
    chunks = await asyncio.wait_for(collect(engine, max_tokens=3, temperature=0), 30)
    assert chunks[-1].completion_tokens == 3


async def test_a_full_queue_says_so(engine: HFEngine) -> None:
    # Hold the worker with a job of our own so the queue fills deterministically.
    release = threading.Event()
    engine._executor.submit(release.wait)
    waiting = [asyncio.create_task(collect(engine, max_tokens=2, temperature=0)) for _ in range(2)]
    deadline = asyncio.get_running_loop().time() + 30
    while engine._waiting < 2:  # white-box: both queued behind our job
        assert asyncio.get_running_loop().time() < deadline, engine._waiting
        await asyncio.sleep(0.01)
    with pytest.raises(QueueFull):
        await collect(engine, max_tokens=2, temperature=0)
    release.set()
    for task in waiting:
        assert (await task)[-1].completion_tokens == 2


async def choices(engine: HFEngine, n: int, **kw: Any) -> list[list[GenChunk]]:
    async def drain(stream: AsyncIterator[GenChunk]) -> list[GenChunk]:
        return [c async for c in stream]

    streams = engine.generate_choices(GenRequest(MESSAGES, **kw), n)
    return list(await asyncio.gather(*(drain(s) for s in streams)))


async def test_n_choices_share_one_prefill(engine: HFEngine) -> None:
    real = engine.model
    fed: list[int] = []  # input lengths of the model's forward calls

    def counting(**kw: Any) -> Any:
        fed.append(int(kw["input_ids"].shape[1]))
        return real(**kw)

    engine.model = counting
    sampled = await choices(engine, 3, max_tokens=6, temperature=1.0, seed=7)
    prompt = engine.count_tokens(MESSAGES)
    assert [n for n in fed if n > 1] == [prompt]  # the prompt went through the model once
    # Then one token at a time: every sampled token is fed back but the one that hit max_tokens.
    decoded = sum(c[-1].completion_tokens - (c[-1].finish_reason == "length") for c in sampled)
    assert len(fed) == 1 + decoded
    assert all(c[-1].prompt_tokens == prompt for c in sampled)
    # Choice 0 is the n=1 answer for that seed; the others are other samples; all repeat.
    assert text(sampled[0]) == text(await collect(engine, max_tokens=6, temperature=1.0, seed=7))
    assert len({text(c) for c in sampled}) > 1
    again = await choices(engine, 3, max_tokens=6, temperature=1.0, seed=7)
    assert [text(c) for c in again] == [text(c) for c in sampled]
    greedy = await choices(engine, 2, max_tokens=6, temperature=0)
    assert (
        text(greedy[0])
        == text(greedy[1])
        == text(await collect(engine, max_tokens=6, temperature=0))
    )


async def test_a_prompt_longer_than_the_context_is_refused(engine: HFEngine) -> None:
    long = [{"role": "user", "content": "git status " * 600}]
    with pytest.raises(ValueError, match="tokens"):
        await anext(engine.generate(GenRequest(long)))


def test_text_out_holds_back_only_a_possible_stop() -> None:
    out = TextOut(["STOP"])
    assert out.feed("abc ST") == "abc "
    assert out.feed("x") == "STx"
    assert out.feed("yy STO") == "yy "
    assert out.feed("P and more") == ""
    assert out.stopped
    assert out.flush() == ""
    plain = TextOut([])
    assert plain.feed("ST") == "ST"
    assert plain.flush() == ""
