"""Running every step from the Recipe view (ctrl+s), against the fake server behaving as
OpenAI: the cost is asked about first, each step shows as it goes, the report's rows end the
run; esc stops it mid-step and ctrl+s resumes where it stopped, the finished items kept."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import psutil
import pytest
from pydantic import SecretStr
from rich.console import Console
from textual.widgets import OptionList, Static

import tui.engine.recipe as recipe_module
from screens.dialogs import ConfirmDialog
from screens.generate import GenerateScreen
from screens.recipe import RecipeScreen
from screens.recipe.board import RecipeBoard
from tests.helpers.fake_openai import FakeOpenAI, like_openai, slow
from tests.tui.conftest import Driver, drive, plain
from tui.app import DistillApp
from tui.engine.backend import Backend, BackendSpec
from tui.engine.datasets import ItemDraft
from tui.engine.finetune import TrainingSet, launch_job
from tui.engine.recipe import STATE_FILE, RecipeState
from tui.engine.settings import load_settings
from tui.engine.store import JobInfo, RunInfo, Store

SIZE = (130, 45)


@pytest.fixture
def openai_fake() -> Iterator[FakeOpenAI]:
    with like_openai(tokens_per_reply=3, job_seconds=0.3) as server:
        yield server


def git_dataset(store: Store) -> int:
    items = [
        ItemDraft(f"Create a new branch called 'topic-{i}'.", f"git branch topic-{i}")
        for i in range(24)
    ]
    dataset = store.create_dataset("tiny-git", "Reply with a git command.", items)
    store.random_split(dataset, 0.25, seed=3)
    return dataset


def app_on(store: Store, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> DistillApp:
    """The app with the fake as OpenAI (kind openai: OpenAI's models, prices and rules)."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-test")
    app = DistillApp(
        settings=load_settings(workspace=store.directory), store=store, start_backend=False
    )
    spec = BackendSpec("openai", fake.base_url, SecretStr(fake.api_key), "openai")
    client = openai.AsyncOpenAI(base_url=fake.base_url, api_key=fake.api_key, max_retries=0)
    app.backend = Backend(spec, client, "openai")
    return app


def board_text(t: Driver) -> str:
    """The board as drawn: its status, its steps and the report's table."""
    board = t.app.screen.query_one(RecipeBoard)
    console = Console(width=SIZE[0], record=True, file=io.StringIO())
    for static in board.query(Static):
        console.print(static.content)
    return console.export_text()


def run_processes() -> int:
    """This test's child processes that generate a run (tui/engine/run_process.py)."""
    running = 0
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):  # ended meanwhile
            running += "tui.engine.run_process" in " ".join(child.cmdline())
    return running


def chats(fake: FakeOpenAI) -> int:
    return sum(r.path == "/v1/chat/completions" for r in fake.requests)


def baseline_run(store: Store) -> RunInfo | None:
    state = RecipeState.load(store.directory / STATE_FILE)
    run_id = state.runs.get("baseline")
    return store.get_run(run_id) if run_id is not None else None


def three_at_once(fake: FakeOpenAI) -> None:
    """The first three replies come at once, the others would take 30 s."""
    fake.policy = lambda ctx: slow(per_token=10.0) if ctx.n > 3 else None


async def run_until_three_done(t: Driver, store: Store) -> RunInfo:
    """ctrl+s on the Recipe view, yes to the cost, then wait for the baseline's three replies."""
    await start(t)
    await t.press("enter")
    await t.wait_until(lambda: (run := baseline_run(store)) is not None and run.n_done == 3)
    run = baseline_run(store)
    assert run is not None
    return run


async def start(t: Driver) -> ConfirmDialog:
    await t.press("0")
    assert isinstance(t.app.screen, RecipeScreen)
    await t.press("ctrl+s")
    return await t.screen_of(ConfirmDialog)


async def test_ctrl_s_asks_about_the_cost_then_runs_every_step_to_the_report(
    store: Store, openai_fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    git_dataset(store)
    async with drive(app_on(store, openai_fake, monkeypatch), size=SIZE) as t:
        dialog = await start(t)
        asked = "\n".join(plain(w) for w in dialog.query("Static"))
        assert "student: 6 requests" in asked and "teacher: 18 requests" in asked
        assert "Estimated generation cost ≈ $" in asked
        assert chats(openai_fake) == 0  # nothing asked of a model before the answer
        await t.press("enter")
        await t.wait_until(lambda: "Finished in" in board_text(t), timeout=60)
        shown = board_text(t)
        # Who teaches whom, as the headless command says it.
        assert "tiny-git · student gpt-4o-mini-2024-07-18 · teacher gpt-4o" in shown
        # Each step as the recipe reached it, then the report's rows and business case.
        for step in (
            "✓ Student outputs on the eval split (baseline)",
            "✓ Teacher labels the train split",
            "✓ Fine-tune the student",
            "✓ Compare",
        ):
            assert step in shown
        for row in ("teacher", "baseline student", "fine-tuned student"):
            assert row in shown
        report = json.loads((store.directory / "reports" / "recipe.json").read_text())
        assert report["summary"] and report["summary"] in shown.replace("\n", " ")
        (job,) = store.list_jobs()
        assert job.status == "succeeded"
        # The notification is a message the app handles a moment after the board says it.
        await t.wait_until(lambda: bool(t.notifications()))
        await t.settle()
        assert [s for s, _, _ in t.notifications()] == ["information"]
        # r goes back to the seven steps' map, every one done.
        await t.press("r")
        assert t.app.screen.query_one(OptionList).display
        intro = plain(t.app.screen.query_one("#recipe-intro"))
        assert "7 of 7 steps done" in intro
        assert "The recipe ran to its report" in intro and "ctrl+s shows it again" in intro


async def test_esc_stops_mid_step_and_ctrl_s_resumes_where_it_stopped(
    store: Store, openai_fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    git_dataset(store)
    three_at_once(openai_fake)
    async with drive(app_on(store, openai_fake, monkeypatch), size=SIZE) as t:
        await run_until_three_done(t, store)
        assert "▸ Student outputs on the eval split (baseline)" in board_text(t)
        # The step streams in a process of its own (the next step's started ahead), so
        # reading the replies never holds the UI's interpreter.
        assert run_processes() >= 1
        await t.press("escape")
        await t.wait_until(lambda: "ctrl+s resumes" in board_text(t))
        assert "■ Student outputs on the eval split (baseline)" in board_text(t)
        run = baseline_run(store)
        assert run is not None and run.status == "cancelled"
        kept = run.n_done
        assert kept == 3
        state = json.loads((store.directory / STATE_FILE).read_text())
        assert state["finished"] == []
        # The steps' map (r) says where the recipe stands, as it will after a restart.
        await t.press("r")
        intro = plain(t.app.screen.query_one("#recipe-intro"))
        assert "The recipe stopped during its first step: ctrl+s resumes it." in intro

        answered = {c.input for c in store.completions(run.id) if c.status == "done"}
        assert len(answered) == kept
        openai_fake.policy = None
        await t.press("ctrl+s")
        await t.screen_of(ConfirmDialog)
        await t.press("enter")
        await t.wait_until(lambda: "Finished in" in board_text(t), timeout=60)
        # The same baseline run went on: the requests it had answered were not asked again.
        baseline = store.get_run(run.id)
        assert (baseline.status, baseline.n_done) == ("done", 6)
        asked = [
            r.key
            for r in openai_fake.requests
            if r.path == "/v1/chat/completions"
            and r.body.get("model") == run.model
            and r.key in answered
        ]
        assert sorted(asked) == sorted(answered)
        assert len(store.list_jobs()) == 1
        # The run's processes ended with their steps, and the spare with the recipe.
        await t.wait_until(lambda: run_processes() == 0, timeout=10)


async def test_a_job_left_training_is_recorded_cancelled_with_x_and_trained_anew(
    store: Store, openai_fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stopped recipe's fine-tuning job trains on (on OpenAI, billed). Stopped while the job
    is being created, the recipe still records it (else it would train unknown to the recipe
    and a resume would pay for a second); the board names it and x cancels it (asked first);
    ctrl+s then trains anew, and so it does, at once, after a job the embedded backend's
    server lost when the app quit (failed, server_stopped)."""
    git_dataset(store)
    openai_fake.app.job_seconds = 120
    created = recipe_module.launch_job

    async def slow_to_answer(*args: Any, **kwargs: Any) -> Any:
        job = await created(*args, **kwargs)
        await asyncio.sleep(1.0)  # the job exists on the backend and in the store
        return job

    monkeypatch.setattr(recipe_module, "launch_job", slow_to_answer)

    async def stop_once_a_job_is_created(jobs: int) -> JobInfo:
        await t.wait_until(lambda: len(store.list_jobs()) == jobs, timeout=60)
        await t.press("escape")  # within the second the recipe takes to hear of the job
        await t.wait_until(lambda: "Stopped." in board_text(t))
        job = store.list_jobs()[0]  # the newest
        assert job.id in RecipeState.load(store.directory / STATE_FILE).jobs.values()
        assert f"fine-tuning job {job.remote_id} trains on" in board_text(t)
        assert "x cancels it" in board_text(t)
        return job

    async with drive(app_on(store, openai_fake, monkeypatch), size=SIZE) as t:
        await start(t)
        await t.press("enter")
        first = await stop_once_a_job_is_created(1)
        remote = openai_fake.app.jobs[first.remote_id]
        await t.press("x")
        dialog = await t.screen_of(ConfirmDialog)
        assert first.remote_id in "\n".join(plain(w) for w in dialog.query("Static"))
        await t.press("escape")  # Keep training
        await t.settle()
        assert remote.data["status"] != "cancelled"
        await t.press("x")
        await t.screen_of(ConfirmDialog)
        await t.press("enter")
        await t.wait_until(lambda: f"{first.remote_id} cancelled" in board_text(t))
        assert remote.data["status"] == "cancelled"
        assert store.get_job(first.id).status == "cancelled"

        await t.press("ctrl+s")  # nothing left to generate before the job: nothing asked
        second = await stop_once_a_job_is_created(2)
        assert second.id != first.id
        openai_fake.app.fail_job(
            second.remote_id, "server_stopped", "The local server was stopped while this job ran."
        )
        openai_fake.app.job_seconds = 0.3
        await t.press("ctrl+s")
        await t.wait_until(lambda: "Finished in" in board_text(t), timeout=60)
        assert t.errors() == []
        jobs = {j.remote_id: j.status for j in store.list_jobs()}
        assert len(jobs) == 3
        assert (jobs[first.remote_id], jobs[second.remote_id]) == ("cancelled", "failed")
        assert sorted(jobs.values()) == ["cancelled", "failed", "succeeded"]


async def test_back_after_a_quit_the_map_names_the_job_left_training_and_x_cancels_it(
    store: Store, openai_fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A later session's steps' map names the job a stopped recipe left training, and x
    cancels it there (asked first); a job that ends while the map is shown (the app follows
    it) leaves the map's note at once, and x with it."""
    dataset = git_dataset(store)
    openai_fake.app.job_seconds = 120
    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    training = TrainingSet([{"messages": turns}] * 10, [])
    client = openai.AsyncOpenAI(base_url=openai_fake.base_url, api_key=openai_fake.api_key)
    first, second = [
        await launch_job(store, client, training, base_model="gpt-4o-mini-2024-07-18")
        for _ in range(2)
    ]
    state = RecipeState(dataset_id=dataset, runs={"baseline": 1}, finished=["baseline"])
    state.jobs["pool-only/train"] = first.id
    state.save(store.directory / STATE_FILE)

    def intro(t: Driver) -> str:
        return " ".join(plain(t.app.screen.query_one("#recipe-intro", Static)).split())

    stopped = "The recipe stopped after 1 step: ctrl+s resumes it."  # and nothing more

    async with drive(app_on(store, openai_fake, monkeypatch), size=SIZE) as t:
        await t.press("0")
        assert (
            f"The recipe stopped after 1 step; its fine-tuning job {first.remote_id} trains on: "
            "ctrl+s resumes it, x cancels the job." in intro(t)
        )
        await t.press("x")
        dialog = await t.screen_of(ConfirmDialog)
        assert first.remote_id in "\n".join(plain(w) for w in dialog.query("Static"))
        await t.press("enter")
        await t.wait_until(lambda: stopped in intro(t))
        assert openai_fake.app.jobs[first.remote_id].data["status"] == "cancelled"
        assert store.get_job(first.id).status == "cancelled"
        assert not t.app.screen.check_action("cancel_job", ())

        state.jobs["pool-only/train"] = second.id
        state.save(store.directory / STATE_FILE)
        await t.press("r")
        assert f"job {second.remote_id} trains on" in intro(t)
        openai_fake.app.fail_job(
            second.remote_id, "server_stopped", "The local server was stopped while this job ran."
        )
        t.app.watch_job(second.id)
        await t.wait_until(lambda: stopped in intro(t))
        assert not t.app.screen.check_action("cancel_job", ())
        assert t.errors() == []


async def test_declining_the_cost_spends_nothing(
    store: Store, openai_fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    git_dataset(store)
    async with drive(app_on(store, openai_fake, monkeypatch), size=SIZE) as t:
        await start(t)
        await t.press("escape")
        await t.wait_until(lambda: "nothing was spent" in board_text(t))
        await t.settle()
        assert chats(openai_fake) == 0 and store.list_runs() == []
        # esc again, the run over, is the app's: it does not try to stop anything.
        assert t.app.screen.query_one(RecipeBoard).display


async def test_another_datasets_recipe_is_named_and_left_alone(
    store: Store, openai_fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    first = git_dataset(store)
    second = store.create_dataset("other", "x", [ItemDraft("a", "b", "train")])
    (store.directory / STATE_FILE).write_text(json.dumps({"version": 2, "dataset_id": first}))
    before = (store.directory / STATE_FILE).read_bytes()
    app = app_on(store, openai_fake, monkeypatch)
    app.current_dataset_id = second
    async with drive(app, size=SIZE) as t:
        await t.press("0", "ctrl+s")
        await t.settle()
        assert not isinstance(t.app.screen, ConfirmDialog)
        (error,) = t.errors()
        assert "runs on dataset 'tiny-git'" in error and "to run the recipe on 'other'" in error
    assert (store.directory / STATE_FILE).read_bytes() == before
    assert chats(openai_fake) == 0
    assert os.path.exists(store.directory / STATE_FILE)


async def test_quitting_mid_step_records_the_step_as_cancelled(
    store: Store, openai_fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    git_dataset(store)
    three_at_once(openai_fake)
    app = app_on(store, openai_fake, monkeypatch)
    async with drive(app, size=SIZE) as t:
        await run_until_three_done(t, store)
        await t.press("q")
        await t.wait_until(lambda: app.return_code is not None or not app.is_running, 15)
    run = baseline_run(store)
    assert run is not None and (run.status, run.n_done) == ("cancelled", 3)
    assert RecipeState.load(store.directory / STATE_FILE).finished == []


async def test_the_generate_screen_follows_the_recipes_run_and_will_not_resume_it(
    store: Store, openai_fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    git_dataset(store)
    # Three replies at once, the fourth after ~2 s, the fifth after ~4 s, the sixth never.
    delays = {4: 0.6, 5: 1.3}
    openai_fake.policy = lambda ctx: slow(per_token=delays.get(ctx.n, 10.0)) if ctx.n > 3 else None
    async with drive(app_on(store, openai_fake, monkeypatch), size=SIZE) as t:
        run = await run_until_three_done(t, store)
        await t.press("2")
        screen = t.app.screen
        assert isinstance(screen, GenerateScreen)
        await t.wait_until(lambda: screen.runs_panel.runs != [])
        assert [r.id for r in screen.runs_panel.runs] == [run.id]
        assert screen.runs_panel.table._rows[0][4] == "running"  # not "interrupted"
        # The run on view follows the store while the recipe generates it.
        live = screen.live
        assert live is not None and live.run.id == run.id
        await t.wait_until(lambda: live.counts().get("done") == 5, timeout=20)
        await t.wait_until(lambda: screen.runs_panel.table._rows[0][5] == "5", timeout=5)
        assert store.is_generating(run.id) and screen.live is live
        asked = len(openai_fake.requests)
        await t.press("ctrl+r")
        await t.wait_until(
            lambda: any(
                "is being generated already, by the recipe" in m for _, _, m in t.notifications()
            )
        )
        assert screen.generator is None and len(openai_fake.requests) == asked
        await t.press("0", "escape")
        await t.wait_until(lambda: "ctrl+s resumes" in board_text(t))
        # Back on Generate: the run's end is said there too (not "interrupted").
        await t.press("2")
        await t.wait_until(lambda: screen.live is not None and screen.live.run.status != "running")
        assert screen.live is not None and screen.live.run.status == "cancelled"
        assert screen.runs_panel.table._rows[0][4] == "cancelled"
    assert store.get_run(run.id).status == "cancelled"


async def test_a_dataset_the_recipe_cannot_use_is_said_on_the_board_and_nothing_is_asked(
    store: Store, openai_fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.create_dataset(
        "unsplit", "x", [ItemDraft(f"request {i}", "git status") for i in range(12)]
    )
    async with drive(app_on(store, openai_fake, monkeypatch), size=SIZE) as t:
        await t.press("0", "ctrl+s")
        await t.wait_until(lambda: "Stopped:" in board_text(t))
        await t.settle()
        assert "dataset 'unsplit' needs a train/eval split" in board_text(t)
        (error,) = t.errors()
        assert "ctrl+s runs it again" in error
        assert not isinstance(t.app.screen, ConfirmDialog)
    assert chats(openai_fake) == 0 and store.list_runs() == []


async def test_the_workspaces_recipe_toml_is_what_the_view_runs(
    store: Store, openai_fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    git_dataset(store)
    config = store.directory / "recipe.toml"
    config.write_text("[recipe]\nteacher_samples = 2\nmax_tokens = 7\n")
    async with drive(app_on(store, openai_fake, monkeypatch), size=SIZE) as t:
        await start(t)
        await t.press("enter")
        await t.wait_until(lambda: "Finished in" in board_text(t), timeout=60)
        assert "teacher gpt-4o, 2 samples and a vote · config recipe.toml" in board_text(t)
        teacher = [
            r.body for r in openai_fake.requests if r.body and r.body.get("model") == "gpt-4o"
        ]
        assert teacher and all(b["n"] == 2 and b["max_tokens"] == 7 for b in teacher)
        assert RecipeState.load(store.directory / STATE_FILE).config["teacher_samples"] == 2

        # A broken file is named, and nothing runs.
        config.write_text("[recipe]\nteacher_samples = 0\n")
        await t.press("r", "ctrl+s")
        await t.settle()
        (error,) = t.errors()
        assert "recipe.toml: teacher_samples" in error
        assert not t.app.screen.query_one(RecipeBoard).display

        # A file that puts a role on another backend is for the headless command.
        config.write_text(
            '[recipe]\nteacher_samples = 2\nmax_tokens = 7\nteacher_backend = "local"\n'
        )
        await t.press("ctrl+s")
        await t.settle()
        assert "puts the teacher on local" in t.errors()[-1]
