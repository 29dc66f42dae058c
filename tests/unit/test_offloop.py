"""An engine job on a thread of its own (tui/engine/offloop.py), as the Generate screen runs a
generation: the job runs on another thread's event loop with a client of its own, its events
arrive in order through the inbox, a cancel passed to its loop stops it like Generator.cancel,
and cancelling the waiting task (a UI closing) cancels the job and waits until its in-flight
items are recorded. Real SQLite, the real openai SDK over HTTP to the fake server."""

from __future__ import annotations

import asyncio
import threading

import openai
import pytest

from tests.helpers.fake_openai import FakeOpenAI
from tui.engine.backend import client_for_thread
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
from tui.engine.offloop import EngineThread, Inbox
from tui.engine.store import Store


async def wait_for(condition: object, what: str, timeout: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_a_job_runs_on_another_thread_and_loop_and_hands_back_its_result() -> None:
    here = (threading.get_ident(), asyncio.get_running_loop())
    seen: list[object] = []
    engine: EngineThread[str] = EngineThread("test-engine")
    # A call made before the job's loop exists runs on it as the job starts.
    engine.call(lambda: seen.append(("call", threading.get_ident())))

    async def job() -> str:
        seen.append(("job", threading.get_ident(), asyncio.get_running_loop()))
        return "answer"

    assert await engine.run(job) == "answer"
    (call, at_call), (name, at_job, loop) = seen  # type: ignore[misc]
    assert (call, name) == ("call", "job")
    assert at_call == at_job != here[0]
    assert loop is not here[1]

    async def failing() -> str:
        raise ValueError("the job's own error")

    with pytest.raises(ValueError, match="the job's own error"):
        await EngineThread[str]("test-engine").run(failing)


async def test_an_inbox_hands_over_events_in_order_across_threads() -> None:
    inbox: Inbox[int] = Inbox()
    done = threading.Event()

    def produce() -> None:
        for i in range(10_000):
            inbox.put(i)
        done.set()

    thread = threading.Thread(target=produce)
    thread.start()
    taken: list[int] = []
    while not done.is_set() or len(inbox):
        taken += inbox.drain()
        await asyncio.sleep(0)
    thread.join()
    assert taken == list(range(10_000))
    assert inbox.drain() == []


async def test_a_generation_on_its_thread_streams_cancels_and_resumes(store: Store) -> None:
    """The client the caller's loop already used (its pool holds a connection of that loop)
    is copied for the thread; the events come in order; esc's cancel, passed to the job's
    loop, records the in-flight items as cancelled; a second run on a thread finishes."""
    dataset = store.create_dataset("x", "", [ItemDraft(f"request {i}", "") for i in range(12)])
    run_id = create_run(store, RunSpec(dataset, "fake-model"))
    with FakeOpenAI(tokens_per_reply=20, token_delay=0.05) as fake:
        async with openai.AsyncOpenAI(
            base_url=fake.base_url, api_key=fake.api_key, max_retries=0
        ) as client:
            await client.models.list()  # a pooled connection on this loop
            inbox: Inbox[Event] = Inbox()
            thread_client = client_for_thread(client)
            generator = Generator(store, thread_client, concurrency=3)
            engine: EngineThread[RunFinished] = EngineThread("test-generate")

            async def job() -> RunFinished:
                try:
                    return await generator.run(run_id, on_event=inbox.put)
                finally:
                    await thread_client.close()

            waiting = asyncio.create_task(engine.run(job))
            events: list[Event] = []

            def second_wave() -> bool:
                # The first three done and the next three just started: a second's worth of
                # tokens still to come for those when the cancel arrives.
                events.extend(inbox.drain())
                done = sum(isinstance(e, ItemFinished) for e in events)
                return done >= 3 and sum(isinstance(e, ItemStarted) for e in events) >= 6

            await wait_for(second_wave, "the second wave in flight")
            engine.call(generator.cancel)
            finished = await waiting
            events += inbox.drain()
            assert finished.status == "cancelled"
            assert isinstance(events[-1], RunFinished) and events[-1] == finished
            # Per item, in order: started, its deltas, then its end.
            for item_id in {e.item_id for e in events if isinstance(e, ItemStarted)}:
                mine = [e for e in events if getattr(e, "item_id", None) == item_id]
                assert isinstance(mine[0], ItemStarted) and isinstance(mine[-1], ItemFinished)
                text = "".join(e.text for e in mine if isinstance(e, ItemDelta))
                if mine[-1].status == "done":
                    assert text == mine[-1].output
            statuses = {r.status for r in store.completions(run_id)}
            assert statuses == {"done", "cancelled"}
            assert store.get_run(run_id).status == "cancelled"
            assert thread_client.is_closed() and not client.is_closed()

            # The caller's client still works on its loop, and a second run finishes.
            await client.models.list()
            again = client_for_thread(client)
            generator = Generator(store, again, concurrency=3)

            async def rest() -> RunFinished:
                async with again:
                    return await generator.run(run_id)

            assert (await EngineThread[RunFinished]("test-generate").run(rest)).status == "done"
    rows = store.completions(run_id)
    assert len(rows) == 12 and {r.status for r in rows} == {"done"}
    assert fake.duplicates() == []


async def test_cancelling_the_waiting_task_cancels_the_job_and_waits_for_its_records(
    store: Store,
) -> None:
    """What a UI does when it closes mid-run: its worker is cancelled. The job is cancelled on
    its own loop, and by the time the worker's CancelledError arrives every started item is
    recorded (done or cancelled) and the run is marked cancelled."""
    dataset = store.create_dataset("x", "", [ItemDraft(f"request {i}", "") for i in range(20)])
    run_id = create_run(store, RunSpec(dataset, "fake-model"))
    with FakeOpenAI(tokens_per_reply=20, token_delay=0.05) as fake:
        async with openai.AsyncOpenAI(base_url=fake.base_url, api_key=fake.api_key) as client:
            inbox: Inbox[Event] = Inbox()
            thread_client = client_for_thread(client)
            generator = Generator(store, thread_client, concurrency=4)

            async def job() -> RunFinished:
                async with thread_client:
                    return await generator.run(run_id, on_event=inbox.put)

            waiting = asyncio.create_task(EngineThread[RunFinished]("test-generate").run(job))
            started: set[int] = set()

            def four_started() -> bool:
                started.update(e.item_id for e in inbox.drain() if isinstance(e, ItemStarted))
                return len(started) >= 4

            await wait_for(four_started, "four items started")
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            # No waiting here: the records were written before the cancel came back.
            rows = store.completions(run_id)
            started.update(e.item_id for e in inbox.drain() if isinstance(e, ItemStarted))
            assert {r.item_id for r in rows} == started
            assert "cancelled" in {r.status for r in rows}
            assert store.get_run(run_id).status == "cancelled"
            requested = len(fake.chat_requests)
    assert requested <= len(started)
