"""The generation engine against a fault-injecting OpenAI-compatible server on 127.0.0.1:
429 with Retry-After, 5xx, streams cut mid-way, slow replies, cancel and resume, a killed
process resumed — every item ends done or failed-with-a-reason, none duplicated."""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.fake_openai import (
    FakeOpenAI,
    fail_first,
    rate_limited,
    server_error,
    stall,
    when,
)
from tests.helpers.runs import client, kill_when, new_run
from tui.engine.generation import Generator, ItemRetry, SamplingParams
from tui.engine.settings import Price
from tui.engine.store import Store


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(token_delay=0.0, tokens_per_reply=5) as server:
        yield server


def assert_each_item_once(store: Store, run_id: int) -> None:
    rows = store.completions(run_id)
    assert len({r.item_id for r in rows}) == len(rows) == len(store.run_items(run_id))


async def test_faults_end_done_or_failed_with_a_reason(fake: FakeOpenAI, store: Store) -> None:
    requests = [
        "plain one",
        "plain two",
        "FLAKY request",  # 503 twice, then fine
        "FAIL429 always rate limited",
        "FAIL500 always broken",
        "CUT stream",  # the connection drops after 2 tokens, every time
        "EMPTY reply",
    ]
    run_id = new_run(store, requests)
    events: list[object] = []
    async with client(fake) as c:
        gen = Generator(store, c, concurrency=4, max_retries=2, backoff_base=0.01)
        finished = await gen.run(run_id, on_event=events.append)
    assert finished.status == "done"
    rows = {r.input: r for r in store.completions(run_id)}
    assert_each_item_once(store, run_id)
    assert rows["plain one"].status == "done" and rows["plain one"].output
    assert rows["FLAKY request"].status == "done"
    assert fake.count("FLAKY request") == 3
    for text, reason in (
        ("FAIL429 always rate limited", "HTTP 429"),
        ("FAIL500 always broken", "HTTP 500"),
        ("CUT stream", "stream"),
    ):
        assert rows[text].status == "failed"
        assert reason in (rows[text].error or "")
        assert "gave up after 3 attempts" in (rows[text].error or "")
        assert fake.count(text) == 3  # 1 + max_retries, not more
    # An empty reply is a reply, recorded with its finish_reason, not an error.
    assert rows["EMPTY reply"].status == "done"
    assert rows["EMPTY reply"].output == ""
    assert rows["EMPTY reply"].finish_reason == "stop"
    assert gen.stats.retries == sum(isinstance(e, ItemRetry) for e in events)


async def test_retry_after_is_honoured(fake: FakeOpenAI, store: Store) -> None:
    fake.policy = fail_first(1, rate_limited(retry_after=0.4))
    run_id = new_run(store, ["only one"])
    async with client(fake) as c:
        await Generator(store, c, concurrency=1, backoff_base=0.0).run(run_id)
    first, second = fake.requests[0], fake.requests[1]
    assert first.ended is not None
    assert second.time - first.ended >= 0.35
    assert store.completions(run_id)[0].status == "done"
    (row,) = store.completions(run_id)  # one row, written once
    assert row.attempts == 2  # the 429 and the answer


async def test_cut_by_max_tokens_is_recorded_not_failed(fake: FakeOpenAI, store: Store) -> None:
    run_id = new_run(store, ["a long answer please"], params=SamplingParams(max_tokens=2))
    async with client(fake) as c:
        await Generator(store, c).run(run_id)
    (row,) = store.completions(run_id)
    assert (row.status, row.finish_reason, row.completion_tokens) == ("done", "length", 2)


async def test_cancel_then_resume_does_each_item_once(fake: FakeOpenAI, store: Store) -> None:
    fake.token_delay = 0.01
    # One reply stalls after its first token, so it is surely mid-stream at the cancel.
    fake.policy = lambda ctx: (
        stall(after=1, seconds=10) if ctx.key == "request number 2" and ctx.attempt == 1 else None
    )
    requests = [f"request number {i}" for i in range(24)]
    run_id = new_run(store, requests)
    async with client(fake) as c:
        gen = Generator(store, c, concurrency=4)
        task = asyncio.create_task(gen.run(run_id))
        deadline = time.monotonic() + 60
        while gen.stats.done < 6:
            assert time.monotonic() < deadline and not task.done(), gen.stats
            await asyncio.sleep(0.01)
        gen.cancel()
        finished = await asyncio.wait_for(task, timeout=5)
        assert finished.status == "cancelled"
        rows = store.completions(run_id)
        stalled = next(r for r in rows if r.input == "request number 2")
        assert (stalled.status, stalled.error) == ("cancelled", "cancelled")
        done_before = {r.item_id for r in rows if r.status == "done"}
        assert store.get_run(run_id).status == "cancelled"

        count_before = {text: fake.count(text) for text in requests}
        resumed = await Generator(store, c, concurrency=4).run(run_id)
    assert resumed.status == "done"
    rows = store.completions(run_id)
    assert_each_item_once(store, run_id)
    assert all(r.status == "done" for r in rows)
    # Items finished before the cancel were not asked for again.
    for row in rows:
        if row.item_id in done_before:
            assert fake.count(row.input) == count_before[row.input]


async def test_budget_stops_the_run(fake: FakeOpenAI, store: Store) -> None:
    run_id = new_run(store, [f"r{i}" for i in range(20)])
    price = Price(input=1e6, output=1e6)  # a dollar a token: the first reply exceeds it
    async with client(fake) as c:
        finished = await Generator(store, c, concurrency=1, price=price, budget=5.0).run(run_id)
    assert finished.status == "budget"
    assert "budget of $5.00" in finished.message
    # One at a time, and the first reply (5 output tokens and its prompt: over $5) spends
    # the budget: exactly one item is done and no second request is sent.
    rows = store.completions(run_id)
    assert [r.status for r in rows] == ["done"]
    assert (rows[0].prompt_tokens or 0) + (rows[0].completion_tokens or 0) > 5
    assert len(fake.chat_requests) == 1


async def test_forbidden_stops_at_once(fake: FakeOpenAI, store: Store) -> None:
    fake.policy = when("DENIED", server_error(403))
    run_id = new_run(store, ["DENIED x"] + [f"ok {i}" for i in range(30)])
    async with client(fake) as c:
        finished = await Generator(store, c, concurrency=1).run(run_id)
    assert finished.status == "failed" and "403" in finished.message
    assert len(store.completions(run_id)) == 1


async def test_timeouts_are_retried_then_recorded(fake: FakeOpenAI, store: Store) -> None:
    run_id = new_run(store, ["HANG forever", "quick"])
    # The client's timeout is how it gives up on the hanging reply (not a measure); it leaves
    # "quick" room to answer on a busy machine.
    async with client(fake, timeout=2.0) as c:
        gen = Generator(store, c, concurrency=2, max_retries=1, backoff_base=0.01)
        await gen.run(run_id)
    rows = {r.input: r for r in store.completions(run_id)}
    assert rows["quick"].status == "done"
    assert rows["HANG forever"].status == "failed"
    assert "timed out" in (rows["HANG forever"].error or "")


WORKER = textwrap.dedent(
    """
    import asyncio, sys, openai
    from tui.engine.generation import Generator
    from tui.engine.store import Store
    async def main():
        store = Store.open(sys.argv[1])
        client = openai.AsyncOpenAI(base_url=sys.argv[2], api_key=sys.argv[3])
        await Generator(store, client, concurrency=4).run(int(sys.argv[4]))
    asyncio.run(main())
    """
)


async def test_killed_process_then_resume(fake: FakeOpenAI, store: Store, tmp_path: Path) -> None:
    fake.token_delay = 0.02
    requests = [f"killed run item {i}" for i in range(30)]
    run_id = new_run(store, requests)
    store.close()  # one writer per workspace: the child is it until it is killed
    looking = Store.open(store.directory, read_only=True)
    try:
        args = [str(store.directory), fake.base_url, fake.api_key, str(run_id)]
        await kill_when(WORKER, args, lambda: looking.get_run(run_id).n_done >= 8)
    finally:
        looking.close()
    store = Store.open(store.directory)  # the rerun, as the next writer
    try:
        done_before = {r.item_id for r in store.completions(run_id) if r.status == "done"}
        assert 8 <= len(done_before) < 30
        async with client(fake) as c:
            await Generator(store, c, concurrency=4).run(run_id)
        assert_each_item_once(store, run_id)
        assert all(r.status == "done" for r in store.completions(run_id))
    finally:
        store.close()


async def test_store_and_metadata_are_sent_only_when_asked(fake: FakeOpenAI, store: Store) -> None:
    run_id = new_run(store, ["with store"], metadata={"task": "git", "role": "student"})
    async with client(fake) as c:
        await Generator(store, c, store_completions=True).run(run_id)
        other = new_run(store, ["without store"], metadata={"task": "git"})
        await Generator(store, c, store_completions=False).run(other)
    bodies = {r.body["messages"][-1]["content"]: r.body for r in fake.requests}
    assert bodies["with store"]["store"] is True
    assert bodies["with store"]["metadata"] == {"task": "git", "role": "student"}
    assert "store" not in bodies["without store"] and "metadata" not in bodies["without store"]
    assert bodies["with store"]["stream_options"] == {"include_usage": True}


async def test_no_key_reaches_the_workspace(fake: FakeOpenAI, store: Store) -> None:
    run_id = new_run(store, ["secret check", "FAIL500 x"])
    async with client(fake) as c:
        await Generator(store, c, max_retries=0).run(run_id)
    store.close()
    secret = fake.api_key.encode()
    for path in store.directory.rglob("*"):
        if path.is_file():
            assert secret not in path.read_bytes(), path
    # The key was in play: every request carried it, so its absence above means something.
    assert fake.chat_requests
    assert all(
        r.headers.get("authorization") == f"Bearer {fake.api_key}" for r in fake.chat_requests
    )
