"""Cancelling the task that runs a generation (what a UI does when it closes: Textual cancels a
screen's workers) stops the run at once, like Generator.cancel(): in-flight items are recorded
as cancelled, nothing new is requested, the run is marked cancelled, and a resume finishes it."""

from __future__ import annotations

import asyncio

import openai
import pytest

from tests.helpers.fake_openai import FakeOpenAI
from tui.engine.datasets import ItemDraft
from tui.engine.generation import Generator, ItemStarted, RunSpec, create_run
from tui.engine.store import Store, StoreError

N = 40
CONCURRENCY = 4


async def test_cancelling_the_run_task_stops_it_like_cancel(store: Store) -> None:
    dataset = store.create_dataset("x", "", [ItemDraft(f"request {i}", "") for i in range(N)])
    run_id = create_run(store, RunSpec(dataset, "fake-model"))
    with FakeOpenAI(tokens_per_reply=10, token_delay=0.05) as fake:
        async with openai.AsyncOpenAI(base_url=fake.base_url, api_key=fake.api_key) as client:
            started: list[int] = []
            generator = Generator(store, client, concurrency=CONCURRENCY)
            task = asyncio.create_task(
                generator.run(
                    run_id,
                    lambda e: started.append(e.item_id) if isinstance(e, ItemStarted) else None,
                )
            )
            deadline = asyncio.get_running_loop().time() + 60
            while len(started) < 2 * CONCURRENCY:  # the second batch is in flight
                assert asyncio.get_running_loop().time() < deadline, started
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            requested = len(fake.chat_requests)

            counts = dict(
                store.query("SELECT status, COUNT(*) FROM completions GROUP BY status")  # type: ignore[arg-type]
            )
            # Every started item has its row: done, or cancelled while in flight. A reply
            # takes 10 tokens × 50 ms, so the item that just started cannot have finished: at
            # least one was in flight, at most `CONCURRENCY`.
            assert set(counts) <= {"done", "cancelled"}, counts
            assert 1 <= counts.get("cancelled", 0) <= CONCURRENCY, counts
            assert sum(counts.values()) == len(set(started)) < N
            cancelled = [r for r in store.completions(run_id) if r.status == "cancelled"]
            assert all((r.output, r.error) == ("", "cancelled") for r in cancelled)
            assert requested <= len(started)  # a started item may not have been sent yet
            assert store.get_run(run_id).status == "cancelled"
            # Nothing of the run is left running to send a request later: every task it
            # started has ended with it (the fake server runs on a loop of its own).
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            assert all(t.done() for t in others), others
            assert len(fake.chat_requests) == requested, "nothing is requested after the cancel"

            finished = await Generator(store, client, concurrency=CONCURRENCY).run(run_id)
            assert finished.status == "done"
            rows = store.completions(run_id)
            assert len(rows) == N and all(r.status == "done" for r in rows)
            # The items cancelled in flight were asked again and answered this time.
            again = {r.item_id: r for r in rows}
            assert all(again[r.item_id].output.startswith("echo: ") for r in cancelled)
            assert fake.duplicates() == []


async def test_a_second_generator_of_a_run_going_is_refused_and_a_later_one_resumes(
    store: Store,
) -> None:
    dataset = store.create_dataset("x", "", [ItemDraft(f"request {i}", "") for i in range(8)])
    run_id = create_run(store, RunSpec(dataset, "fake-model"))
    with FakeOpenAI(tokens_per_reply=5, token_delay=0.05) as fake:
        async with openai.AsyncOpenAI(base_url=fake.base_url, api_key=fake.api_key) as client:
            first = asyncio.create_task(Generator(store, client, concurrency=2).run(run_id))
            await asyncio.sleep(0.1)
            assert store.is_generating(run_id)
            with pytest.raises(StoreError, match=f"run {run_id} is being generated already"):
                await Generator(store, client, concurrency=2).run(run_id)
            finished = await first
            assert finished.status == "done" and not store.is_generating(run_id)
            assert len(fake.chat_requests) == 8  # the refused one asked for nothing
            again = await Generator(store, client, concurrency=2).run(run_id)
            assert again.status == "done" and len(fake.chat_requests) == 8
