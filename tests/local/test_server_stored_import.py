"""The embedded local backend's stored completions imported as a run, over real HTTP with the
openai SDK: completions it stored itself (store=true, metadata), listed page by page with the
model and metadata filters, their messages read back, imported once, and only the new ones
on a second import."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.helpers.tiny_model import build_tiny_gguf
from tests.local.server_harness import client, model_id, start_thread_server
from tui.engine.store import Store
from tui.engine.stored_import import StoredFilter, count_stored, import_stored

SYSTEM = "Reply with one git command."


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("stored")
    gguf = build_tiny_gguf(root / "tiny-stored.gguf")
    running = start_thread_server(root / "ws", [gguf])
    yield running
    running.stop()


async def log(c: openai.AsyncOpenAI, model: str, request: str, **metadata: str) -> Any:
    """What a production app does: a chat request kept with store=true and metadata."""
    return await c.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": request}],
        max_tokens=3,
        temperature=0,
        store=True,
        metadata=metadata,
    )


async def test_import_from_the_local_backend(server: Any, tmp_path: Path) -> None:
    store = Store.open(tmp_path / "ws")
    tag = f"t{time.monotonic_ns()}"
    async with client(server.url) as c:
        tiny = model_id((await c.models.list()).data, "tiny-stored")
        made = [await log(c, tiny, f"Show branch {i}", task="git", run=tag) for i in range(7)]
        await log(c, tiny, "Something else", task="other", run=tag)
        await c.chat.completions.create(  # not stored
            model=tiny, messages=[{"role": "user", "content": "x"}], max_tokens=1
        )
        query = StoredFilter(model=tiny, metadata={"task": "git", "run": tag})

        count = await count_stored(store, c, query, backend="local", page_size=3)
        assert (count.matching, count.new) == (7, 7)
        result = await import_stored(store, c, query, backend="local", page_size=3)
        assert (result.added, result.failed) == (7, [])
        rows = store.completions(result.run_id)
        assert [r.stored_id for r in rows] == [m.id for m in made]
        assert [r.input for r in rows] == [f"Show branch {i}" for i in range(7)]
        assert [r.output for r in rows] == [m.choices[0].message.content for m in made]
        assert [r.completion_tokens for r in rows] == [m.usage.completion_tokens for m in made]
        assert rows[0].metadata == {"task": "git", "run": tag}
        run = store.get_run(result.run_id)
        assert (run.model, run.system_prompt, run.status) == (tiny, SYSTEM, "done")

        # Logged since: only those come in; a second look at the same filter adds nothing.
        later = [await log(c, tiny, f"Delete branch {i}", task="git", run=tag) for i in range(2)]
        again = await import_stored(store, c, query, backend="local", page_size=3)
        assert (again.run_id, again.added, again.already) == (result.run_id, 2, 7)
        assert [r.stored_id for r in store.completions(result.run_id)][-2:] == [m.id for m in later]
        last = await import_stored(store, c, query, backend="local")
        assert (last.added, last.already) == (0, 9)
    store.close()
