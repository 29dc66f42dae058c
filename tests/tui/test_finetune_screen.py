"""The Fine-tune screen with real keys: the validation report, a real job on the local backend
watched to the end, and the refusals a user meets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from pydantic import SecretStr
from textual.widgets import Input, RichLog, Select, Static

from screens.finetune import FineTuneScreen, run_source
from tests.helpers.fake_openai import like_openai
from tests.helpers.pilot import wait_until
from tests.helpers.tiny_model import build_tiny_gguf
from tests.local.server_harness import KEY, client, model_id, start_thread_server
from tui.app import DistillApp
from tui.engine.backend import Backend, BackendSpec
from tui.engine.datasets import ItemDraft
from tui.engine.finetune import Source, build_training_set, launch_job
from tui.engine.runs import references_as_run
from tui.engine.settings import load_settings
from tui.engine.store import Store
from tui.widgets.loss_chart import LossChart

SIZE = (140, 45)
EARLIER_URL = "http://127.0.0.1:9/v1"  # the embedded backend's address in a past session


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

        def finished() -> bool:
            jobs = store.list_jobs()
            return bool(jobs and jobs[0].finished)

        await wait_until(pilot, finished, timeout=240, what="the job finished")
        job = store.list_jobs()[0]
        assert job.status == "succeeded", job.error
        assert job.fine_tuned_model is not None
        # The app's watcher has stored the events; the screen shows them on its next tick.
        model = job.fine_tuned_model
        await wait_until(
            pilot,
            lambda: (
                model in text_of(app, "#job-detail")
                and bool(screen.query_one("#events", RichLog).lines)
                and bool(screen.query_one(LossChart)._series.get("train_loss"))
            ),
            what="the job's model, events and loss on the screen",
        )
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


def voted_workspace(path: Path) -> tuple[Store, int, int]:
    """24 requests (4 without a reference) labelled by a teacher that sampled 4 times each:
    #0–#1 failed, #2–#7 only half the samples agreed, the rest all 4; an eval run (the gate)
    failed #20–#22 and passed the others."""
    store = Store.open(path)
    items = [
        ItemDraft(
            f"Create a new branch called 'topic-{i}'.",
            "" if i % 6 == 5 else f"git branch topic-{i}",
            "train",
        )
        for i in range(24)
    ]
    dataset = store.create_dataset("tiny-git", "Reply with one git command.", items)
    run = store.create_run(
        dataset_id=dataset,
        model="gpt-4o",
        role="teacher",
        params={"samples": 4, "vote": "command_match"},
    )
    for n, item in enumerate(store.items(dataset)):
        store.save_completion(
            run,
            item.id,
            output="" if n < 2 else f"git branch topic-{n}",
            status="failed" if n < 2 else "done",
            confidence=0.5 if 2 <= n < 8 else 1.0,
            samples="[]",
        )
    store.set_run_status(run, "done", finished=True)
    eval_id = store.create_eval("gate", [{"type": "python", "name": "one command"}])
    gate = store.create_eval_run(eval_id, run, [{"type": "python", "name": "one command"}])
    failed = (20, 21, 22)
    store.save_grades(
        gate,
        [
            (c.id, "one command", 0.0 if n in failed else 1.0, n not in failed, "")
            for n, c in enumerate(store.completions(run))
            if c.status == "done"
        ],
    )
    store.set_eval_run_status(gate, "done")
    return store, run, gate


async def test_training_set_sources_and_what_each_keeps(tmp_path: Path) -> None:
    """A teacher run's labels kept by minimum confidence and by the gate, then the dataset's
    own references as the teacher, each chosen with keys; the form says how many examples
    each keeps and why the rest were dropped, and Validate builds exactly those."""
    store, run, gate = voted_workspace(tmp_path / "ws")
    app = DistillApp(
        settings=load_settings(workspace=tmp_path / "ws"), store=store, start_backend=False
    )
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("5")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, FineTuneScreen)
        assert screen.query_one("#source-run", Select).value == run_source(run)

        def kept() -> str:
            return text_of(app, "#ft-kept")

        async def settle() -> None:
            await pilot.pause()
            await app.workers.wait_for_complete()
            await pilot.pause()

        await settle()
        assert kept() == "Kept 22 of 24 completions · dropped: 2 not finished"

        screen.query_one("#ft-min-confidence", Input).focus()
        await pilot.press(*"75%")
        await settle()
        assert kept() == (
            "Kept 16 of 24 completions · dropped: 2 not finished, 6 below confidence 75%"
        )

        gate_select = screen.query_one("#ft-gate", Select)
        assert not gate_select.disabled
        gate_select.focus()
        await pilot.press("enter", "down", "enter")
        await settle()
        assert gate_select.value == gate
        assert kept() == (
            f"Kept 13 of 24 completions · dropped: 2 not finished, "
            f"3 failed the gate (eval run {gate}), 6 below confidence 75%"
        )
        app.set_focus(None)
        await pilot.press("v")
        await settle()
        assert "12 training and 1 validation examples" in text_of(app, "#report")
        training = screen.training
        assert training is not None
        outputs = {e["messages"][2]["content"] for e in training.train + training.validation}
        assert outputs == {f"git branch topic-{n}" for n in (*range(8, 20), 23)}

        # The dataset's own answers as the teacher: the last choice of the source list.
        source = screen.query_one("#source-run", Select)
        source.focus()
        await pilot.press("enter", "end", "enter")
        await settle()
        assert source.value == f"references:{store.list_datasets()[0].id}"
        labels = {value: str(label) for label, value in source._options}
        assert labels[source.value] == "references of tiny-git as the teacher · train split · 20"
        assert screen.query_one("#ft-gate", Select).disabled
        assert screen.query_one("#ft-min-confidence", Input).disabled
        assert kept() == "Kept 20 of 24 items · dropped: 4 no reference"
        app.set_focus(None)
        await pilot.press("v")
        await settle()
        assert "18 training and 2 validation examples" in text_of(app, "#report")
    store.close()


async def test_a_job_an_earlier_session_left_on_the_embedded_backend_is_followed_again(
    tmp_path: Path,
) -> None:
    """The embedded backend listens on a new port each start and its server keeps the jobs:
    a job the last session left training is polled again, not shown "running" for ever."""
    store, run = teacher_workspace(tmp_path / "ws")
    training = build_training_set(store, Source(run_id=run), system_prompt="Reply.")
    with like_openai(job_seconds=0.3) as fake:
        c = openai.AsyncOpenAI(base_url=fake.base_url, api_key=fake.api_key, max_retries=0)
        job = await launch_job(store, c, training, base_model="gpt-4o-mini-2024-07-18")
        with store.transaction() as conn:  # as the last session's server recorded it
            conn.execute("UPDATE jobs SET base_url = ? WHERE id = ?", (EARLIER_URL, job.id))
        app = DistillApp(
            settings=load_settings(workspace=tmp_path / "ws"), store=store, start_backend=False
        )
        spec = BackendSpec("local", fake.base_url, SecretStr(fake.api_key), "local")
        app.backend = Backend(spec, c, "local")
        async with app.run_test(size=SIZE) as pilot:
            app.watch_earlier_jobs(app.backend)
            await wait_until(pilot, lambda: store.get_job(job.id).finished, timeout=30)
        assert store.get_job(job.id).status == "succeeded"
