"""The generation engine against the embedded local backend (a tiny GGUF served by llama.cpp)
over real HTTP: every item committed, usage recorded, completions stored server-side."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers.tiny_model import build_tiny_gguf
from tests.local.server_harness import client, model_id, start_thread_server
from tui.engine.datasets import ItemDraft
from tui.engine.generation import (
    Generator,
    ItemDelta,
    ItemFinished,
    RunSpec,
    SamplingParams,
    create_run,
    estimate_run,
)
from tui.engine.settings import Price
from tui.engine.store import Store

REQUESTS = [f"Create a new branch called 'feature-{i}'." for i in range(6)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("gen")
    gguf = build_tiny_gguf(root / "tiny-gen.gguf")
    running = start_thread_server(root / "ws", [gguf])
    yield running
    running.stop()


async def test_run_against_the_local_backend(server: Any, store: Store) -> None:
    dataset = store.create_dataset(
        "git", "Reply with a git command.", [ItemDraft(r, "git branch x") for r in REQUESTS]
    )
    async with client(server.url) as c:
        tiny = model_id((await c.models.list()).data, "tiny-gen")
        run_id = create_run(
            store,
            RunSpec(
                dataset_id=dataset,
                model=tiny,
                role="student",
                system_prompt="Reply with a git command.",
                params=SamplingParams(max_tokens=6, temperature=0),
                metadata={"task": "git", "role": "student"},
            ),
        )
        estimate = estimate_run(store, run_id, Price(input=1.0, output=2.0))
        assert estimate.items == len(REQUESTS) and estimate.cost > 0
        events: list[Any] = []
        gen = Generator(store, c, concurrency=4, store_completions=True)
        finished = await gen.run(run_id, on_event=events.append)
        assert finished.status == "done"

        rows = store.completions(run_id)
        assert [r.input for r in rows] == REQUESTS
        assert all(r.status == "done" for r in rows)
        assert all(r.finish_reason in ("stop", "length") for r in rows)
        assert all(r.prompt_tokens and r.completion_tokens for r in rows)
        assert all(r.remote_id and r.remote_id.startswith("chatcmpl-") for r in rows)
        assert all(r.first_token_ms is not None and r.latency_ms for r in rows)
        # What streamed is what was stored.
        streamed: dict[int, str] = {}
        for event in events:
            if isinstance(event, ItemDelta):
                streamed[event.item_id] = streamed.get(event.item_id, "") + event.text
        assert {r.item_id: r.output for r in rows if r.output} == {
            k: v for k, v in streamed.items() if v
        }
        assert sum(isinstance(e, ItemFinished) for e in events) == len(REQUESTS)
        assert gen.stats.done == len(REQUESTS)
        assert gen.stats.completion_tokens == sum(r.completion_tokens or 0 for r in rows)

        # store=True + metadata: the backend kept them, findable by metadata as in the recipe.
        stored = await c.chat.completions.list(model=tiny, metadata={"task": "git"}, limit=100)
        assert {r.remote_id for r in rows} <= {s.id for s in stored.data}

        # A second start has nothing left to do and creates no duplicate.
        again = await Generator(store, c, concurrency=4).run(run_id)
        assert again.status == "done"
        assert len(store.completions(run_id)) == len(REQUESTS)
        assert max(r.attempts for r in store.completions(run_id)) == 1


async def test_unknown_model_stops_the_run_with_a_clear_message(server: Any, store: Store) -> None:
    dataset = store.create_dataset("d", items=[ItemDraft(r) for r in REQUESTS])
    run_id = create_run(store, RunSpec(dataset_id=dataset, model="no-such-model"))
    async with client(server.url) as c:
        finished = await Generator(store, c, concurrency=2).run(run_id)
    assert finished.status == "failed"
    assert "no-such-model" in finished.message and "not found" in finished.message
    # It stopped early instead of failing every item one by one.
    assert len([r for r in store.completions(run_id) if r.status == "failed"]) <= 2
    assert store.get_run(run_id).status == "failed"


async def test_wrong_key_stops_the_run(server: Any, store: Store) -> None:
    dataset = store.create_dataset("d", items=[ItemDraft(r) for r in REQUESTS])
    run_id = create_run(store, RunSpec(dataset_id=dataset, model="smollm2-135m-instruct"))
    async with client(server.url, key="wrong") as c:
        finished = await Generator(store, c, concurrency=2).run(run_id)
    assert finished.status == "failed"
    assert "401" in finished.message
