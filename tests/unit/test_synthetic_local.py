"""Synthetic requests from the embedded local backend serving a tiny, randomly initialised
model (llama.cpp, real HTTP): what it writes is no list of requests, and that must be
reported, reply by reply, with nothing proposed and nothing added."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.tiny_model import build_tiny_gguf, git_pairs
from tests.local.server_harness import client, model_id, start_thread_server
from tui.engine.datasets import ItemDraft
from tui.engine.store import Store
from tui.engine.synthetic import (
    BadReply,
    BatchFinished,
    RequestProposed,
    RequestSynthesizer,
    SynthesisEvent,
    SynthesisSpec,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("synth")
    gguf = build_tiny_gguf(root / "tiny-synth.gguf")
    running = start_thread_server(root / "ws", [gguf])
    yield running
    running.stop()


async def test_a_tiny_models_garbage_is_reported_not_proposed(server: Any, tmp_path: Path) -> None:
    store = Store.open(tmp_path / "ws")
    try:
        pairs = git_pairs(12)
        dataset = store.create_dataset(
            "git", "Reply with a git command.", [ItemDraft(r, c, "train") for r, c in pairs]
        )
        events: list[SynthesisEvent] = []
        async with client(server.url) as c:
            tiny = model_id((await c.models.list()).data, "tiny-synth")
            synth = RequestSynthesizer(store, c)
            # Few examples: the tiny model's context is 512 tokens. Sampled at the default
            # temperature (1.0) with a seed: random tokens, the same ones every run.
            spec = SynthesisSpec(dataset, tiny, count=2, batch_size=2, examples=3, seed=0)
            finished = await synth.run(spec, events.append)

        replies = [e for e in events if isinstance(e, BatchFinished)]
        assert len(replies) == 3 and all(r.completion_tokens for r in replies)
        reports = [e for e in events if isinstance(e, BadReply)]
        assert len(reports) == 3, [(r.kind, r.message) for r in reports]
        assert {r.kind for r in reports} <= {"not_a_list", "truncated", "malformed", "empty"}
        assert not [e for e in events if isinstance(e, RequestProposed)]
        assert finished.status == "failed" and finished.requests == ()
        assert "3 unusable replies in a row" in finished.message
        assert len(store.items(dataset)) == len(pairs)
    finally:
        store.close()
