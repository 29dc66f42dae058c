"""The Completions screen driven with real keys over a workspace holding two runs (a student's
and a teacher's, one of its items failed): the dashboard filter, opening one completion with
the messages that were sent, and handing the filtered set to Evaluate and Distill; and a
teacher that sampled 4 times a request: its confidence column, `conf:` and its samples."""

from __future__ import annotations

import json

from textual.widgets import Input, Label, Static

from screens.completions import CompletionDialog, CompletionsScreen
from tests.tui.conftest import SMALL_ITEMS, SMALL_NAME, SMALL_PROMPT, Driver, drive, plain
from tui.app import DistillApp
from tui.engine.generation import RunSpec, create_run
from tui.engine.selection import CompletionSelection, parse_filter
from tui.engine.store import Store

N = len(SMALL_ITEMS)
EXAMPLE = ("List the branches", "git branch")


def add_runs(store: Store) -> tuple[int, int]:
    dataset = store.dataset_by_name(SMALL_NAME)
    assert dataset is not None
    items = store.items(dataset.id)
    student = create_run(
        store,
        RunSpec(
            dataset.id,
            "gpt-4o-mini",
            role="student",
            system_prompt=SMALL_PROMPT,
            metadata={"task": "git", "role": "student"},
        ),
    )
    teacher = create_run(
        store,
        RunSpec(
            dataset.id,
            "gpt-4o",
            role="teacher",
            system_prompt="You are a git teacher.",
            metadata={"task": "git", "role": "teacher"},
            few_shot=[EXAMPLE],
        ),
    )
    for run_id, prefix in ((student, "student"), (teacher, "teacher")):
        for item in items:
            failed = run_id == teacher and item.position == 5
            store.save_completion(
                run_id,
                item.id,
                output="" if failed else f"{prefix} answer {item.position}",
                status="failed" if failed else "done",
                error="HTTP 500: boom (gave up after 6 attempts)" if failed else None,
                prompt_tokens=None if failed else 20,
                completion_tokens=None if failed else 4,
                latency_ms=123.0,
                first_token_ms=None if failed else 45.0,
                finish_reason=None if failed else "stop",
                remote_id=None if failed else f"chatcmpl-{run_id}-{item.position}",
            )
        store.set_run_status(run_id, "done", finished=True)
    return student, teacher


def completions_screen(t: Driver) -> CompletionsScreen:
    screen = t.app.screen
    assert isinstance(screen, CompletionsScreen), screen
    return screen


def shown(screen: CompletionsScreen) -> list[tuple[str, ...]]:
    table = screen.table
    return [tuple(table._rows[i]) for i in range(table.row_count)]


async def set_filter(t: Driver, text: str, *, typed: bool = False) -> None:
    """/ focuses the filter; the text is typed, or pasted (typing is slow under Pilot)."""
    await t.press("slash")
    box = completions_screen(t).query_one("#filter", Input)
    assert t.app.focused is box
    if typed:
        await t.press("end", "ctrl+u")
        await t.type(text)
    else:
        box.value = text
    await t.press("enter")
    await t.settle()


def test_filter_words() -> None:
    f = parse_filter('model:*mini* run:3,4 status:failed meta:task=git meta:note="a b" fix it')
    assert f.models == ["*mini*"] and f.run_ids == [3, 4] and f.statuses == ["failed"]
    assert f.metadata == {"task": "git", "note": "a b"} and f.text == "fix it"
    assert parse_filter("status:bogus run:x meta:nokey").problems == [
        "status:bogus (use done, failed or cancelled)",
        "run:x is not a run number",
        "meta:nokey is not key=value",
    ]


async def test_browse_filter_open_and_hand_over(small_app: DistillApp) -> None:
    student, teacher = add_runs(small_app.store)
    async with drive(small_app) as t:
        await t.press("3")
        await t.settle()
        screen = completions_screen(t)
        rows = shown(screen)
        assert len(rows) == 2 * N
        assert rows[0][:5] == (str(teacher), "gpt-4o", "teacher", "1", "done")  # newest first
        summary = plain(screen.query_one("#summary", Static))
        assert f"{2 * N} completions in 2 runs" in summary and "1 failed" in summary

        # The recipe's dashboard filter: model and metadata (and here status and text).
        await set_filter(t, "model:gpt-4o status:failed", typed=True)
        rows = shown(screen)
        assert len(rows) == 1
        assert rows[0][4] == "failed" and "HTTP 500: boom" in rows[0][6]
        await set_filter(t, "meta:role=student called")
        rows = shown(screen)
        assert [r[5] for r in rows] == ["Create a branch called feature"] * 2
        assert {r[0] for r in rows} == {str(student)}
        await set_filter(t, "model:*4o* status:bogus")
        assert len(shown(screen)) == 2 * N
        assert "ignored: status:bogus" in plain(screen.query_one("#summary", Static))
        await set_filter(t, f"run:{teacher} answer 3")
        rows = shown(screen)
        assert len(rows) == 1 and rows[0][6] == "teacher answer 3"
        assert t.app.focused is screen.table

        # enter opens it: the messages sent, rebuilt from the run (with its example turn).
        await t.press("enter")
        await t.settle()
        dialog = t.app.screen
        assert isinstance(dialog, CompletionDialog)
        roles = [plain(w) for w in dialog.query(".role").results(Label)]
        texts = [plain(w) for w in dialog.query(".message").results(Static)]
        assert roles == ["system", "user", "assistant", "user"]
        assert texts[:4] == ["You are a git teacher.", *EXAMPLE, SMALL_ITEMS[2].input]
        assert texts[4] == "teacher answer 3"
        figures = plain(dialog.query_one("#figures", Static))
        assert f"chatcmpl-{teacher}-3" in figures
        assert "finish reason  stop" in figures and "first token  45 ms" in figures
        assert "20 prompt · 4 completion" in figures
        await t.press("escape")
        assert t.app.screen is screen

        # "Evaluate" hands the filtered completions to the Evals screen.
        await set_filter(t, "meta:role=teacher status:done")
        await t.press("e")
        await t.settle()
        assert t.app.current_mode == "evals"
        selection = t.app.selection
        assert isinstance(selection, CompletionSelection)
        assert selection.run_ids == (teacher,)
        assert len(selection.completion_ids) == N - 1
        assert selection.description == "meta:role=teacher status:done"
        assert any(title == "Selected for evaluation" for _, title, _ in t.notifications())

        # "Distill" the same way, to the Fine-tune screen.
        await t.press("3")
        await t.settle()
        await t.press("d")
        await t.settle()
        assert t.app.current_mode == "finetune"
        assert t.app.selection is not None and t.app.selection.run_ids == (teacher,)
        assert any(title == "Selected for distillation" for _, title, _ in t.notifications())


async def test_nothing_to_hand_over_says_so(small_app: DistillApp) -> None:
    async with drive(small_app) as t:
        await t.press("3")
        await t.settle()
        screen = completions_screen(t)
        assert "No completions yet" in plain(screen.query_one("#completion-detail", Static))
        await t.press("e")
        assert t.app.current_mode == "completions"
        assert t.app.selection is None
        assert any("Nothing matches" in m for _, _, m in t.notifications())


def add_voted_run(store: Store) -> int:
    """A teacher that sampled 4 times a request under command_match: the odd positions
    unanimous (4/4), the even ones 2 of 4 (a different command and an empty sample)."""
    dataset = store.dataset_by_name(SMALL_NAME)
    assert dataset is not None
    run_id = create_run(
        store,
        RunSpec(dataset.id, "gpt-4o", role="teacher", samples=4, vote="command_match"),
    )
    for item in store.items(dataset.id):
        answer = f"git log -n {item.position}"
        if item.position % 2:
            samples = [answer, f"git log -n{item.position}", answer, answer]
        else:
            samples = [answer, "git status", f"git log -n{item.position}", ""]
        store.save_completion(
            run_id,
            item.id,
            output=answer,
            status="done",
            confidence=1.0 if item.position % 2 else 0.5,
            samples=json.dumps(samples),
        )
    store.set_run_status(run_id, "done", finished=True)
    return run_id


async def test_a_voted_runs_confidence_filter_and_samples(small_app: DistillApp) -> None:
    student, _ = add_runs(small_app.store)
    voted = add_voted_run(small_app.store)
    async with drive(small_app) as t:
        await t.press("3")
        await t.settle()
        screen = completions_screen(t)
        # A run with a vote on show: the Conf column, "agreed/samples" (blank for the others).
        assert screen.table.columns[-1].label == "Conf"
        rows = shown(screen)
        voted_rows = [r for r in rows if r[0] == str(voted)]
        assert [r[-1] for r in voted_rows] == ["4/4" if n % 2 else "2/4" for n in range(1, N + 1)]
        assert {r[-1] for r in rows if r[0] != str(voted)} == {""}
        assert "confidence 4/4 (vote command_match)" in plain(
            screen.query_one("#completion-detail", Static)
        )

        # conf: keeps the voted completions at least that sure, typed as the user would.
        await set_filter(t, "conf:75%", typed=True)
        rows = shown(screen)
        assert [r[3] for r in rows] == [str(n) for n in range(1, N + 1, 2)]
        assert {r[0] for r in rows} == {str(voted)} and {r[-1] for r in rows} == {"4/4"}
        # A run that sampled once has no vote: no Conf column.
        await set_filter(t, f"run:{student}", typed=True)
        assert [c.label for c in screen.table.columns][-1] == "ms"

        # The samples of a split vote, each marked by whether it agreed with the output.
        await set_filter(t, f"run:{voted} conf:0.5 log -n 2", typed=True)
        assert [r[3] for r in shown(screen)] == ["2"]
        await t.press("enter")
        await t.settle()
        dialog = t.app.screen
        assert isinstance(dialog, CompletionDialog)
        sections = [plain(w) for w in dialog.query(".section").results(Label)]
        assert "Samples (2 of 4 agree with the output, vote command_match)" in sections
        samples = plain(dialog.query_one("#completion-samples", Static)).splitlines()
        assert samples == [
            "✓  1  git log -n 2",
            "✗  2  git status",
            "✓  3  git log -n2",
            "✗  4  (empty)",
        ]
        assert "confidence  2/4 (50%)" in plain(dialog.query_one("#figures", Static))
        await t.press("escape")
        assert t.app.screen is screen
