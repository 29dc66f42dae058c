"""A run generated in a process of its own (tui/engine/run_process.py), as the Generate screen
does: the real child (`python -m tui.engine.run_process`) over the real workspace, against the
fake OpenAI server on 127.0.0.1. Its events and totals reach the parent, a cancel stops it as a
Generator's does, and however it ends (killed, its parent gone) nothing is lost: the workspace
says what happened and a resume generates exactly the rest."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable

import openai
import pytest

from tests.helpers.fake_openai import FakeOpenAI
from tui.engine.datasets import ItemDraft
from tui.engine.generation import (
    Event,
    Generator,
    ItemDelta,
    ItemFinished,
    ItemStarted,
    RunFinished,
    RunSpec,
    create_run,
)
from tui.engine.run_process import RunProcess
from tui.engine.store import Store, WorkspaceError

N = 12


def make_run(store: Store, n: int = N) -> int:
    dataset = store.create_dataset("x", "", [ItemDraft(f"request {i}", "") for i in range(n)])
    return create_run(store, RunSpec(dataset, "fake-model"))


def client_of(fake: FakeOpenAI) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=fake.base_url, api_key=fake.api_key, timeout=10)


def statuses(store: Store, run_id: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in store.completions(run_id):
        counts[row.status] = counts.get(row.status, 0) + 1
    return counts


async def until(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "still not true"
        await asyncio.sleep(0.02)


async def running(
    store: Store, client: openai.AsyncOpenAI, run_id: int
) -> tuple[RunProcess, asyncio.Task[RunFinished]]:
    """A run started in its own process, once its first three items are streaming."""
    started: list[int] = []
    process = RunProcess(store, client, concurrency=3)
    task = asyncio.create_task(
        process.run(
            run_id, lambda e: started.append(e.item_id) if isinstance(e, ItemStarted) else None
        )
    )
    await until(lambda: len(started) >= 3)
    return process, task


async def test_a_run_in_its_own_process_reaches_the_parent_and_the_workspace(
    store: Store,
) -> None:
    run_id = make_run(store)
    with FakeOpenAI(tokens_per_reply=8, token_delay=0.01) as fake:
        async with client_of(fake) as client:
            spare = await RunProcess.spawn()
            events: list[Event] = []
            process = RunProcess(store, client, concurrency=4, process=spare)
            finished = await process.run(run_id, events.append)
    assert finished == RunFinished(run_id, "done", f"{N} done")
    assert process.pid == spare.pid and spare.returncode == 0  # the spare did the run
    # Written by the child: every item, as the fake server answered it.
    rows = store.completions(run_id)
    assert [r.status for r in rows] == ["done"] * N
    assert all(r.output.startswith("echo: request") for r in rows)
    assert store.get_run(run_id).status == "done"
    # Each item's text arrives whole (its deltas joined per frame), started before finished.
    text: dict[int, str] = {}
    order: list[tuple[str, int]] = []
    for event in events:
        if isinstance(event, ItemDelta):
            text[event.item_id] = text.get(event.item_id, "") + event.text
        elif isinstance(event, ItemStarted | ItemFinished):
            order.append((type(event).__name__, event.item_id))
    assert {r.item_id: r.output for r in rows} == text
    for row in rows:
        assert order.index(("ItemStarted", row.item_id)) < order.index(
            ("ItemFinished", row.item_id)
        )
    assert len([e for e in events if isinstance(e, ItemDelta)]) < 8 * N  # joined, not per token
    # The totals are the child's, read in the parent.
    stats = process.stats
    assert (stats.total, stats.done, stats.failed) == (N, N, 0)
    assert stats.completion_tokens == sum(r.completion_tokens or 0 for r in rows) > 0
    assert stats.finished is not None and stats.elapsed > 0
    assert fake.duplicates() == []


async def test_cancel_records_in_flight_items_and_a_resume_does_the_rest(store: Store) -> None:
    run_id = make_run(store)
    with FakeOpenAI(tokens_per_reply=10, token_delay=0.2) as fake:
        async with client_of(fake) as client:
            process, task = await running(store, client, run_id)
            process.cancel()
            finished = await task
            assert finished.status == "cancelled"
            counts = statuses(store, run_id)
            assert set(counts) <= {"done", "cancelled"} and counts.get("cancelled", 0) >= 1
            assert store.get_run(run_id).status == "cancelled"

            rest = await Generator(store, client, concurrency=3).run(run_id)
    assert rest.status == "done"
    assert statuses(store, run_id) == {"done": N}
    assert fake.duplicates() == []


async def test_a_killed_run_process_fails_the_run_and_leaves_nothing_claimed(
    store: Store,
) -> None:
    run_id = make_run(store)
    with FakeOpenAI(tokens_per_reply=10, token_delay=0.2) as fake:
        async with client_of(fake) as client:
            process, task = await running(store, client, run_id)
            assert process.pid is not None
            os.kill(process.pid, signal.SIGKILL)
            finished = await task
            assert finished.status == "failed"
            assert "the run's process ended unexpectedly (exit code -9)" in finished.message
            assert store.get_run(run_id).status == "failed"
            # Its claims were given back: no item is left "running", none is lost.
            assert "running" not in statuses(store, run_id)

            rest = await Generator(store, client, concurrency=3).run(run_id)
    assert rest.status == "done"
    assert statuses(store, run_id) == {"done": N}


async def test_the_run_stops_as_a_cancel_when_its_parent_goes(store: Store) -> None:
    """The end of the child's stdin is its parent gone (even by kill -9): the child records
    its in-flight items as cancelled and ends, instead of generating on alone."""
    run_id = make_run(store)
    with FakeOpenAI(tokens_per_reply=10, token_delay=0.2) as fake:
        async with client_of(fake) as client:
            process, task = await running(store, client, run_id)
            child = process._proc
            assert child is not None and child.stdin is not None
            child.stdin.close()  # what the kernel does to the pipe when the parent dies
            finished = await task
    assert finished.status == "cancelled"
    counts = statuses(store, run_id)
    assert counts.get("cancelled", 0) >= 1 and "running" not in counts
    assert len(fake.chat_requests) < N


def test_a_run_process_writes_only_under_its_parents_lock(store: Store) -> None:
    # Here the lock's holder is this process itself, not its parent: refused, and why.
    with pytest.raises(WorkspaceError, match="writes only under its parent's lock"):
        Store.open_for_run(store.directory)


async def test_a_run_process_that_cannot_start_fails_the_run_saying_so(store: Store) -> None:
    # An interpreter that cannot run the engine (here one that exits at once with 1).
    run_id = make_run(store, 3)
    with FakeOpenAI() as fake:
        async with client_of(fake) as client:
            finished = await RunProcess(store, client, python="/bin/false").run(run_id)
    assert finished.status == "failed"
    assert finished.message.startswith("the run's process ended unexpectedly (exit code 1)")
    assert store.get_run(run_id).status == "failed"
    assert store.completions(run_id) == [] and fake.chat_requests == []
