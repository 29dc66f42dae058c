"""The Fine-tune screen with real keys: the validation report, a real job on the local backend
watched to the end, and the refusals a user meets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from textual.widgets import Input, RichLog, Static

from tests.helpers.tiny_model import build_tiny_gguf
from tests.local.server_harness import KEY, client, model_id, start_thread_server
from tui.app import DistillApp
from tui.engine.backend import Backend, BackendSpec
from tui.engine.datasets import ItemDraft
from tui.engine.runs import references_as_run
from tui.engine.settings import load_settings
from tui.engine.store import Store
from tui.widgets.loss_chart import LossChart

SIZE = (140, 45)


def teacher_workspace(path: Path, n: int = 24) -> tuple[Store, int]:
    store = Store.open(path)
    items = [
        ItemDraft(f"Create a new branch called 'topic-{i}'.", f"git branch topic-{i}", "train")
        for i in range(n)
    ]
    dataset = store.create_dataset("tiny-git", "Reply with one git command.", items)
    return store, references_as_run(store, dataset)


def text_of(app: DistillApp, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).render())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("ftscreen")
    gguf = build_tiny_gguf(root / "tiny-ft-screen.gguf")
    running = start_thread_server(root / "ws", [gguf])
    yield running
    running.stop()


async def test_validate_launch_and_watch_a_job(server: Any, tmp_path: Path) -> None:
    store, _ = teacher_workspace(tmp_path / "ws")
    app = DistillApp(
        settings=load_settings(workspace=tmp_path / "ws"), store=store, start_backend=False
    )
    c = client(server.url)
    tiny = model_id((await c.models.list()).data, "tiny-ft-screen")
    app.backend = Backend(BackendSpec("local", server.url, SecretStr(KEY), "local"), c, "local")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("5")
        await pilot.pause()
        screen = app.screen
        screen.query_one("#base-model", Input).value = tiny
        screen.query_one("#n-epochs", Input).value = "1"
        screen.query_one("#batch-size", Input).value = "8"
        app.set_focus(None)
        await pilot.press("v")
        await pilot.pause()
        report = text_of(app, "#report")
        assert "22 training and 2 validation examples" in report
        assert "No format errors" in report
        assert "estimated" in report  # no tokenizer for this model: the figures say so

        await pilot.press("L")
        deadline = time.monotonic() + 240
        while True:
            await pilot.pause(0.2)
            jobs = store.list_jobs()
            if jobs and jobs[0].finished:
                break
            assert time.monotonic() < deadline, "the job did not finish"
        job = store.list_jobs()[0]
        assert job.status == "succeeded", job.error
        # The app's watcher has stored the events; the screen shows them on its next tick.
        await asyncio.sleep(1.2)
        await pilot.pause()
        detail = text_of(app, "#job-detail")
        assert job.fine_tuned_model is not None and job.fine_tuned_model in detail
        assert screen.query_one("#events", RichLog).lines
        assert screen.query_one(LossChart)._series.get("train_loss")
    await c.close()
    store.close()


async def test_nothing_to_train_on_and_format_errors(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "ws")
    store.create_dataset("empty", items=[ItemDraft("x")])
    app = DistillApp(
        settings=load_settings(workspace=tmp_path / "ws"), store=store, start_backend=False
    )
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("5")
        await pilot.pause()
        app.set_focus(None)
        await pilot.press("v")
        await pilot.pause()
        assert "choose the run" in text_of(app, "#report")
        # Fewer than 10 examples: refused, with the cookbook's name for it.
        dataset = store.create_dataset(
            "few", items=[ItemDraft(f"r{i}", f"git r{i}") for i in range(4)]
        )
        references_as_run(store, dataset)
        app.screen.action_refresh_sources()
        await pilot.pause()
        await pilot.press("v")
        await pilot.pause()
        assert "too_few_examples" in text_of(app, "#report")
        await pilot.press("L")
        await pilot.pause()
        assert store.list_jobs() == []
    store.close()
