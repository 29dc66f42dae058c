"""The Completions screen's "From backend…" driven with real keys against the fake server as
OpenAI holding a production app's logged completions: the dialog counts what the typed filter
matches, imports it as a run with its progress, the screen shows that run, a second look at
the same filter finds nothing new, and the selection Distill hands on trains on the imported
completions; a backend without stored completions is named."""

from __future__ import annotations

import asyncio
import json

import openai
from pydantic import SecretStr
from textual.widgets import Button, Input, Select, Static

from screens.completions import CompletionDialog, CompletionsScreen
from screens.completions.stored import StoredImportDialog
from tests.helpers.fake_openai import FakeOpenAI, like_openai
from tests.tui.conftest import Driver, drive, make_app, plain
from tui.engine.backend import Backend, BackendSpec
from tui.engine.finetune import Source, build_training_set
from tui.engine.selection import CompletionSelection
from tui.engine.store import Store

SYSTEM = "You are a git expert."


def openai_backend(fake: FakeOpenAI) -> Backend:
    spec = BackendSpec("openai", fake.base_url, SecretStr(fake.api_key), "openai")
    client = openai.AsyncOpenAI(base_url=fake.base_url, api_key=fake.api_key, max_retries=0)
    return Backend(spec, client, "openai")


def log(fake: FakeOpenAI, n: int) -> list[str]:
    """n logged teacher completions for task=git, and a few of another task."""
    for i in range(3):
        fake.stored.add(
            [{"role": "user", "content": f"Other {i}"}], "x", metadata={"task": "other"}
        )
    return [
        fake.stored.add(
            [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"Create a branch called topic-{i}."},
            ],
            f"git switch -c topic-{i}",
            model="gpt-4o",
            metadata={"task": "git"},
        )
        for i in range(n)
    ]


async def open_dialog(t: Driver) -> StoredImportDialog:
    await t.press("b")  # the screen's worker waits on the dialog: wait for the dialog's own
    await t.pilot.pause()
    dialog = t.app.screen
    assert isinstance(dialog, StoredImportDialog), dialog
    return dialog


async def dialog_idle(t: Driver, dialog: StoredImportDialog) -> None:
    """Wait (30 s at most) for the dialog's workers: its count or its import."""
    workers = [w for w in t.app.workers if w.node is dialog]
    await asyncio.wait_for(asyncio.gather(*(w.wait() for w in workers)), timeout=30)
    await t.pilot.pause()


async def count_with_filter(t: Driver, dialog: StoredImportDialog) -> str:
    """Type the dashboard's filter (the model box has the focus), enter counts."""
    assert dialog.query_one("#stored-model", Input).has_focus
    await t.type("gpt-4o")
    await t.press("tab")
    await t.type("task=git")
    await t.press("enter")
    await dialog_idle(t, dialog)
    return plain(dialog.query_one("#stored-count", Static))


async def test_from_backend_counts_imports_and_distills(store: Store) -> None:
    with like_openai() as fake:
        ids = log(fake, 12)
        app = make_app(store)
        app.backend = openai_backend(fake)
        async with drive(app) as t:
            await t.press("3")
            await t.settle()
            screen = t.app.screen
            assert isinstance(screen, CompletionsScreen)
            assert "press b to import the backend's stored" in plain(
                screen.query_one("#completion-detail", Static)
            )

            dialog = await open_dialog(t)
            assert dialog.query_one("#stored-role", Select).value == "teacher"
            assert dialog.query_one("#ok", Button).disabled  # nothing counted yet
            counted = await count_with_filter(t, dialog)
            assert "12 stored completions match gpt-4o task=git · 12 new" in counted, counted
            ok = dialog.query_one("#ok", Button)
            assert not ok.disabled and ok.has_focus
            # Another filter needs counting again before it can be imported.
            dialog.query_one("#stored-meta", Input).focus()
            await t.press("end", "x")
            assert ok.disabled
            await t.press("backspace", "enter")
            await dialog_idle(t, dialog)
            assert not ok.disabled and ok.has_focus
            await t.press("enter")  # Import
            await t.settle()

            assert t.app.screen is screen
            (run,) = store.list_runs()
            assert (run.source, run.role, run.model, run.n_done) == (
                "stored",
                "teacher",
                "gpt-4o",
                12,
            )
            assert screen.query_one("#filter", Input).value == f"run:{run.id}"
            assert screen.table.row_count == 12
            assert [r.stored_id for r in store.completions(run.id)] == ids
            (note,) = [n for n in t.notifications() if n[1].startswith("Stored completions")]
            assert note[1] == f"Stored completions → run {run.id}" and "12 imported" in note[2]

            # One opened: the request and reply as logged, with the metadata it was stored with.
            await t.press("enter")
            await t.settle()
            opened = t.app.screen
            assert isinstance(opened, CompletionDialog)
            assert plain(opened.query_one("#output", Static)) == "git switch -c topic-0"
            figures = plain(opened.query_one("#figures", Static))
            assert "metadata  task=git" in figures and f"remote id  {ids[0]}" in figures
            await t.press("escape")
            await t.settle()

            # The same filter again: everything is already there, nothing to import.
            dialog = await open_dialog(t)
            counted = await count_with_filter(t, dialog)
            assert f"12 already in run {run.id} · 0 new (nothing to import)" in counted, counted
            assert dialog.query_one("#ok", Button).disabled
            await t.press("escape")
            await t.settle()
            assert t.app.screen is screen and len(store.list_runs()) == 1

            # Distill hands the filtered set on as a selection; the Fine-tune screen's training
            # set from it (the same Source its panel builds) holds the imported outputs.
            # (Pressing d itself is test_distill_selection.py's: it is the same for any run.)
            selection = CompletionSelection.of(screen.found, screen.filter_text)
            assert selection.run_ids == (run.id,) and len(selection.completion_ids) == 12
            source = Source(
                run_ids=selection.run_ids, completion_ids=list(selection.completion_ids)
            )
            training = build_training_set(store, source, system_prompt="One git command.")
            examples = [
                json.loads(line)["messages"]
                for line in (training.jsonl("train") + training.jsonl("validation")).splitlines()
            ]
            assert {(m[0]["content"], m[2]["content"]) for m in examples} == {
                ("One git command.", f"git switch -c topic-{i}") for i in range(12)
            }
            assert not t.errors()


async def test_a_backend_without_stored_completions_is_named(store: Store) -> None:
    with FakeOpenAI() as fake:  # a plain OpenAI-compatible server: no listing
        app = make_app(store)
        app.backend = openai_backend(fake)
        async with drive(app) as t:
            await t.press("3")
            await t.settle()
            dialog = await open_dialog(t)
            await count_with_filter(t, dialog)
            error = plain(dialog.query_one("#dialog-error", Static))
            assert "this backend does not list stored completions (HTTP 404" in error
            assert dialog.query_one("#ok", Button).disabled
            await t.press("escape")
            await t.settle()
    assert store.list_runs() == []
