"""Batch generation (tui/engine/batch.py) over real HTTP against the fake OpenAI server's Batch
API: the request file (each line the live request less `stream`), splitting at the limits,
results mapped back to items, an error file, an expired batch, a failed one, stopping and
resuming, a `batches.create` whose answer was lost, and a runner killed mid-poll and started
again — no item is ever sent twice."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.helpers import runs
from tests.helpers.fake_openai import FakeOpenAI, like_openai, server_error, when
from tests.helpers.runs import client, kill_when
from tui.engine.batch import (
    BatchRunner,
    BatchUpdate,
    batch_files,
    batch_price,
    cancel_batches,
    runs_with_batches,
)
from tui.engine.generation import Generator, ItemFinished, PromptBuilder, SamplingParams
from tui.engine.settings import Price
from tui.engine.store import Store


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with like_openai(models=["gpt-4o-mini"], batch_seconds=0.3) as server:
        yield server


def new_run(store: Store, requests: list[str], **spec: Any) -> int:
    return runs.new_run(
        store,
        requests,
        model="gpt-4o-mini",
        dataset_prompt="Answer with one git command.",
        system_prompt="Answer briefly.",
        **spec,
    )


def runner(store: Store, c: openai.AsyncOpenAI, **kw: object) -> BatchRunner:
    kw.setdefault("poll_interval", 0.05)
    kw.setdefault("max_poll_interval", 0.2)
    return BatchRunner(store, c, **kw)  # type: ignore[arg-type]


def by_input(store: Store, run_id: int) -> dict[str, object]:
    return {r.input: r for r in store.completions(run_id)}


def uploads(fake: FakeOpenAI) -> list[bytes]:
    """The batch input files the server received."""
    return [content for meta, content in fake.app.files.values() if meta["purpose"] == "batch"]


async def test_a_run_as_one_batch_end_to_end(fake: FakeOpenAI, store: Store) -> None:
    requests = [f"Create a branch called b{i}" for i in range(6)]
    run_id = new_run(
        store,
        requests,
        params=SamplingParams(temperature=0.2, max_tokens=20, seed=7),
        metadata={"task": "git"},
    )
    events: list[object] = []
    async with client(fake) as c:
        finished = await runner(store, c, store_completions=True).run(run_id, events.append)
    assert finished.status == "done", finished
    rows = store.completions(run_id)
    assert [r.status for r in rows] == ["done"] * 6
    assert [r.output for r in rows] == [f"echo: {q}" for q in requests]
    assert all(r.prompt_tokens and r.completion_tokens == 6 and r.remote_id for r in rows)
    assert all(r.latency_ms is None for r in rows)  # no per-request time in a batch
    # One file, one batch, with the run's id in its metadata; each request sent once.
    assert fake.batch_api.created == 1
    (batch,) = fake.batch_api.batches.values()
    assert batch.data["metadata"] == {"distill_run": str(run_id), "task": "git"}
    assert batch.data["completion_window"] == "24h"
    assert all(fake.count(q) == 1 for q in requests)
    # Items appeared as their results were mapped back; the batch's counts were reported.
    finished_items = [e for e in events if isinstance(e, ItemFinished)]
    assert sorted(e.item_id for e in finished_items) == sorted(r.item_id for r in rows)
    updates = [e for e in events if isinstance(e, BatchUpdate)]
    assert updates[-1].status == "completed" and updates[-1].completed == 6
    assert updates[-1].total == 6 and updates[-1].expires_at
    (recorded,) = store.run_batches(run_id)
    assert recorded.collected and recorded.remote_id == batch.data["id"]
    assert store.get_run(run_id).status == "done"


async def test_each_line_is_the_live_request_without_stream(fake: FakeOpenAI, store: Store) -> None:
    requests = ["Show the log", "Stage README.md"]
    spec: dict[str, object] = {
        "params": SamplingParams(temperature=0.5, top_p=0.9, max_tokens=30, seed=3, stop=["\n"]),
        "metadata": {"task": "git", "role": "teacher"},
        "few_shot": [("List branches", "git branch")],
    }
    live_run = new_run(store, requests, **spec)
    batch_run = new_run(store, requests, **spec)
    async with client(fake) as c:
        await Generator(store, c, store_completions=True).run(live_run)
        await runner(store, c, store_completions=True).run(batch_run)
    live = {r.body["messages"][-1]["content"]: r.body for r in fake.chat_requests}
    lines = [json.loads(line) for line in uploads(fake)[0].splitlines()]
    items = {i.id: i.input for i in store.run_items(batch_run)}
    assert [line["custom_id"] for line in lines] == [str(i) for i in items]
    for line in lines:
        assert line["method"] == "POST" and line["url"] == "/v1/chat/completions"
        expected = dict(live[items[int(line["custom_id"])]])
        assert expected.pop("stream") is True
        assert expected.pop("stream_options") == {"include_usage": True}
        assert line["body"] == expected


async def test_big_runs_are_split_at_the_limits(fake: FakeOpenAI, store: Store) -> None:
    requests = [f"Delete branch number {i}" for i in range(7)]
    run_id = new_run(store, requests)
    async with client(fake) as c:
        finished = await runner(store, c, max_requests=3).run(run_id)
    assert finished.status == "done"
    assert [len(f.splitlines()) for f in uploads(fake)] == [3, 3, 1]
    assert fake.batch_api.created == 3
    assert all(r.status == "done" for r in store.completions(run_id))
    assert all(fake.count(q) == 1 for q in requests)

    # By size: no file over max_bytes, and every item in exactly one file.
    run = store.get_run(run_id)
    builder = PromptBuilder.for_run(store, run)
    items = store.run_items(run_id)
    one = len(batch_files(items[:1], run, builder, store_completions=False)[0][1])
    files = batch_files(items, run, builder, store_completions=False, max_bytes=one * 2 + 10)
    assert all(len(data) <= one * 2 + 10 for _ids, data in files)
    assert sorted(i for ids, _data in files for i in ids) == sorted(i.id for i in items)
    assert len(files) == 4


async def test_error_file_fails_its_items_with_the_message(fake: FakeOpenAI, store: Store) -> None:
    fake.policy = when("refused", server_error(400))
    run_id = new_run(store, ["fine one", "FAIL500 broken one", "refused one", "fine two"])
    async with client(fake) as c:
        finished = await runner(store, c).run(run_id)
    assert finished.status == "done" and "2 failed" in finished.message
    rows = by_input(store, run_id)
    assert rows["fine one"].status == rows["fine two"].status == "done"  # type: ignore[attr-defined]
    broken = rows["FAIL500 broken one"]
    assert broken.status == "failed" and broken.error.startswith("HTTP 500: ")  # type: ignore[attr-defined]
    assert rows["refused one"].error.startswith("HTTP 400: ")  # type: ignore[attr-defined]
    # A failed item is pending again: resuming live sends exactly it.
    assert {i.input for i in store.pending_items(run_id)} == {"FAIL500 broken one", "refused one"}


async def test_an_expired_batch_fails_the_rest_and_a_new_batch_sends_exactly_them(
    fake: FakeOpenAI, store: Store
) -> None:
    requests = [f"Push branch p{i}" for i in range(5)]
    run_id = new_run(store, requests)
    fake.batch_api.batch_expire_after = 2
    async with client(fake) as c:
        first = await runner(store, c).run(run_id)
        assert first.status == "done"
        rows = store.completions(run_id)
        assert [r.status for r in rows] == ["done", "done", "failed", "failed", "failed"]
        assert all("expired" in (r.error or "") and "24h" in (r.error or "") for r in rows[2:])
        assert store.run_batches(run_id)[0].status == "expired"
        fake.batch_api.batch_expire_after = None
        second = await runner(store, c).run(run_id)
    assert second.status == "done"
    assert [r.status for r in store.completions(run_id)] == ["done"] * 5
    assert [len(f.splitlines()) for f in uploads(fake)] == [5, 3]
    assert all(fake.count(q) == 1 for q in requests)


async def test_a_failed_batch_says_why_on_every_item(fake: FakeOpenAI, store: Store) -> None:
    fake.batch_api.batch_fail = "The input file is not valid for this model."
    run_id = new_run(store, ["one", "two"])
    async with client(fake) as c:
        await runner(store, c).run(run_id)
    rows = store.completions(run_id)
    assert all(r.status == "failed" for r in rows)
    assert all("the batch failed" in (r.error or "") for r in rows)
    assert all("not valid for this model" in (r.error or "") for r in rows)
    assert len(store.pending_items(run_id)) == 2


async def test_stop_leaves_the_batch_going_and_run_resumes_it(
    fake: FakeOpenAI, store: Store
) -> None:
    fake.batch_api.batch_seconds = 1.0
    run_id = new_run(store, ["slow a", "slow b", "slow c"])
    async with client(fake) as c:
        first = runner(store, c)
        task = asyncio.create_task(first.run(run_id))
        deadline = time.monotonic() + 30
        while not store.run_batches(run_id) or store.run_batches(run_id)[0].remote_id is None:
            assert time.monotonic() < deadline and not task.done()
            await asyncio.sleep(0.01)
        first.stop()
        stopped = await asyncio.wait_for(task, 10)
        assert stopped.status == "batch"
        assert store.get_run(run_id).status == "batch"
        # The batch holds its items: nothing is pending, so a live resume sends nothing.
        assert store.pending_items(run_id) == []
        assert runs_with_batches(store) == [run_id]
        resumed = await runner(store, c).run(run_id)
    assert resumed.status == "done"
    assert fake.batch_api.created == 1
    assert [r.status for r in store.completions(run_id)] == ["done"] * 3
    assert runs_with_batches(store) == []


async def test_a_create_whose_answer_was_lost_is_found_not_repeated(
    fake: FakeOpenAI, store: Store
) -> None:
    """The app died after `batches.create` reached the backend but before its id was
    recorded: the batch is found by its input file."""
    run_id = new_run(store, ["lost a", "lost b"])
    run = store.get_run(run_id)
    items = store.run_items(run_id)
    ((ids, data),) = batch_files(
        items, run, PromptBuilder.for_run(store, run), store_completions=False
    )
    async with client(fake) as c:
        uploaded = await c.files.create(file=("in.jsonl", data), purpose="batch")
        store.add_batch(run_id, base_url=fake.base_url, input_file=uploaded.id, item_ids=ids)
        await c.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        finished = await runner(store, c).run(run_id)
    assert finished.status == "done"
    assert fake.batch_api.created == 1
    assert [r.status for r in store.completions(run_id)] == ["done", "done"]
    assert all(fake.count(q) == 1 for q in ("lost a", "lost b"))


async def test_cancelled_batch_collects_what_it_answered(fake: FakeOpenAI, store: Store) -> None:
    fake.batch_api.batch_seconds = 30.0
    run_id = new_run(store, ["c1", "c2", "c3"])
    async with client(fake) as c:
        task = asyncio.create_task(runner(store, c).run(run_id))
        deadline = time.monotonic() + 30
        while not store.run_batches(run_id) or store.run_batches(run_id)[0].remote_id is None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert len(await cancel_batches(store, c, run_id)) == 1
        finished = await asyncio.wait_for(task, 10)
    assert finished.status == "done"
    rows = store.completions(run_id)
    assert all(r.status == "failed" and "cancelled" in (r.error or "") for r in rows)


async def test_batch_cost_is_at_the_batch_price_and_the_budget_is_checked_first(
    fake: FakeOpenAI, store: Store
) -> None:
    live = Price(input=2.0, output=8.0)
    price = batch_price(live, 0.5)
    assert (price.input, price.output) == (1.0, 4.0)
    run_id = new_run(store, ["priced one", "priced two"])
    async with client(fake) as c:
        refused = await runner(store, c, price=price, budget=1e-9).run(run_id)
        assert refused.status == "failed" and "budget" in refused.message
        assert fake.batch_api.created == 0 and not uploads(fake)
        done = runner(store, c, price=price)
        await done.run(run_id)
    rows = store.completions(run_id)
    expected = sum(r.prompt_tokens * 1.0 + r.completion_tokens * 4.0 for r in rows) / 1e6  # type: ignore[operator]
    assert done.stats.cost == pytest.approx(expected)


async def test_a_backend_without_batches_says_so(store: Store) -> None:
    with FakeOpenAI() as plain:
        run_id = new_run(store, ["x"])
        async with client(plain) as c:
            finished = await runner(store, c).run(run_id)
    assert finished.status == "failed"
    assert "no Batch API" in finished.message and "live" in finished.message
    assert store.run_batches(run_id) == []
    assert len(store.pending_items(run_id)) == 1


# -- a runner killed mid-poll ------------------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import asyncio, sys, openai
    from tui.engine.batch import BatchRunner
    from tui.engine.store import Store
    async def main():
        store = Store.open(sys.argv[1])
        client = openai.AsyncOpenAI(base_url=sys.argv[2], api_key=sys.argv[3])
        await BatchRunner(store, client, poll_interval=0.05).run(int(sys.argv[4]))
    asyncio.run(main())
    """
)


def recorded_batches(db: Path) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        try:
            return conn.execute("SELECT remote_id, status FROM batches").fetchall()
        except sqlite3.OperationalError:  # not created yet
            return []


async def test_runner_killed_after_the_batch_id_is_recorded_resumes_it(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    fake.batch_api.batch_seconds = 2.0
    requests = [f"Killed batch item {i}" for i in range(8)]
    workspace = tmp_path / "killed"
    store = Store.open(workspace)
    run_id = new_run(store, requests)
    store.close()  # the worker is the workspace's writer now
    args = [str(workspace), fake.base_url, fake.api_key, str(run_id)]
    await kill_when(
        WORKER,
        args,
        lambda: any(remote for remote, _ in recorded_batches(workspace / "distill.db")),
    )
    ((remote_id, status),) = recorded_batches(workspace / "distill.db")
    assert status in ("validating", "in_progress")  # killed before it ended
    store = Store.open(workspace)
    try:
        async with client(fake) as c:
            finished = await runner(store, c).run(run_id)
        assert finished.status == "done"
        assert fake.batch_api.created == 1 and len(uploads(fake)) == 1
        (batch,) = store.run_batches(run_id)
        assert batch.remote_id == remote_id and batch.collected
        assert [r.status for r in store.completions(run_id)] == ["done"] * 8
        assert all(fake.count(q) == 1 for q in requests)
    finally:
        store.close()
