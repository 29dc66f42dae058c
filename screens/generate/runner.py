"""Which runner generates a run the Generate screen starts, built from the backend its model
was picked from: a streaming run in a process of its own (run_process.RunProcess: at 64
streams reading the replies is most of a core, which on the UI's loop would stall every key
and repaint, and on a thread of this process still holds the interpreter the UI needs); a
batch run, a few requests a minute, on a thread with its own event loop (EngineThread), with
a client of its own (a client's connections belong to the loop that opened them)."""

from __future__ import annotations

import asyncio

from openai import AsyncOpenAI

from tui.engine.backend import Backend, client_for_thread
from tui.engine.batch import BatchRunner, batch_price
from tui.engine.run_process import RunProcess
from tui.engine.settings import Price, Settings
from tui.engine.store import Store


def make_runner(
    store: Store,
    backend: Backend,
    settings: Settings,
    price: Price,
    *,
    budget: float | None,
    batch: bool,
    spare: asyncio.subprocess.Process | None,
    batch_poll: tuple[float, float],
) -> tuple[RunProcess | BatchRunner, AsyncOpenAI | None]:
    """The runner, and the client made for a batch's thread (None for a streaming run: its
    process opens its own). `spare`: a run's process started ahead, used if given."""
    # Stored completions (and their metadata) exist on OpenAI and the local backend.
    store_completions = backend.spec.kind in ("openai", "local")
    if batch:
        client = client_for_thread(backend.client)
        first, longest = batch_poll
        runner = BatchRunner(
            store,
            client,
            price=batch_price(price, settings.batch_discount),
            budget=budget,
            store_completions=store_completions,
            poll_interval=first,
            max_poll_interval=longest,
        )
        return runner, client
    process = RunProcess(
        store,
        backend.client,
        process=spare,
        concurrency=settings.concurrency,
        max_retries=settings.max_retries,
        price=price,
        budget=budget,
        store_completions=store_completions,
    )
    return process, None
