"""What the engine's tests of runs share, live and as batches: a run over given requests, a
client of the fake OpenAI server, and a worker process killed in the middle of a run (as a
crash or `kill -9` would end it). The workspace is tests/unit/conftest.py's `store`."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import openai

from tests.helpers.fake_openai import FakeOpenAI
from tui.engine.datasets import ItemDraft
from tui.engine.generation import RunSpec, create_run
from tui.engine.store import Store

ROOT = Path(__file__).resolve().parents[2]


def new_run(
    store: Store,
    requests: Sequence[str],
    *,
    model: str = "fake-model",
    dataset_prompt: str = "",
    **spec: Any,
) -> int:
    """A run of `model` over a new dataset holding `requests`; `spec`: RunSpec's other
    fields."""
    dataset = store.create_dataset(
        f"d{time.monotonic_ns()}", dataset_prompt, [ItemDraft(r) for r in requests]
    )
    return create_run(store, RunSpec(dataset_id=dataset, model=model, **spec))


def client(fake: FakeOpenAI, **kw: Any) -> openai.AsyncOpenAI:
    """A client of the fake server (the runners do their own retrying)."""
    kw.setdefault("max_retries", 0)
    return openai.AsyncOpenAI(base_url=fake.base_url, api_key=fake.api_key, **kw)


async def kill_when(
    script: str, args: Sequence[str], ready: Callable[[], bool], timeout: float = 60.0
) -> None:
    """Run `script` in a Python process of its own (from the project's root, `args` as its
    argv), wait until `ready()` holds, then SIGKILL it. Fails if the process ends first or
    `ready()` does not hold within `timeout` seconds."""
    proc = subprocess.Popen([sys.executable, "-c", script, *args], cwd=ROOT)
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert time.monotonic() < deadline, f"not ready after {timeout} s"
            assert proc.poll() is None, f"the worker ended first (exit {proc.returncode})"
            await asyncio.sleep(0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
