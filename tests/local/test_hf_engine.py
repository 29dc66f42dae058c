"""The transformers engine on a tiny model: the Engine protocol's promises (usage, stop,
seed, max_tokens, a closed stream frees its slot, a full queue says so)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.helpers.tiny_model import build_tiny_model
from tui.local.hf_engine import HFEngine, StopScanner
from tui.local.models import GenChunk, GenRequest, QueueFull

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
    await asyncio.sleep(0.1)
    with pytest.raises(QueueFull):
        await collect(engine, max_tokens=2, temperature=0)
    release.set()
    for task in waiting:
        assert (await task)[-1].completion_tokens == 2


async def test_a_prompt_longer_than_the_context_is_refused(engine: HFEngine) -> None:
    long = [{"role": "user", "content": "git status " * 600}]
    with pytest.raises(ValueError, match="tokens"):
        await anext(engine.generate(GenRequest(long)))


def test_stop_scanner_holds_back_a_possible_stop() -> None:
    scanner = StopScanner(["STOP"])
    assert scanner.push("abc ST") == "abc "
    assert scanner.push("x") == "STx"
    assert scanner.push("yy STO") == "yy "
    assert scanner.push("P and more") == ""
    assert scanner.stopped
    assert scanner.flush() == ""
    plain = StopScanner([])
    assert plain.push("ST") == "ST"
    assert plain.flush() == ""
