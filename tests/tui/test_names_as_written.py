"""Names and messages are shown as written: a dataset, eval or model name, a path or an error
that holds square brackets ("ops [/b]") is text, not markup. Before, the Recipe screen and the
Evals editor stopped the app with a MarkupError on such a name, and `distill-tui run` printed
its report through Rich markup."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import pytest
from rich.console import Console
from textual.content import Content
from textual.widgets import Label, OptionList

from screens.evals.screen import EvalsScreen
from screens.recipe import RecipeScreen
from screens.settings import SettingsScreen
from tests.tui.conftest import Driver, drive, plain
from tui.app import DistillApp
from tui.engine.datasets import ItemDraft
from tui.engine.evals import create_eval
from tui.engine.settings import load_settings
from tui.engine.store import Store
from tui.recipe_console import print_report

# A closing tag with no opening one is what made Textual raise; "[red]" would be swallowed.
NAME = "ops [/b] [red]nightly"
S = TypeVar("S")
GRADER = {
    "type": "string_check",
    "name": "exact",
    "input": "{{sample.output_text}}",
    "reference": "{{item.reference}}",
    "operation": "eq",
}


@asynccontextmanager
async def on_screen(
    tmp_path: Path, key: str, kind: type[S], *, evals: tuple[str, ...] = ()
) -> AsyncIterator[tuple[Driver, S]]:
    """The app on a workspace holding a dataset named NAME (and evals named `evals`), on the
    screen that `key` opens."""
    store = Store.open(tmp_path / "ws")
    items = [
        ItemDraft(f"Show branch {i}", f"git show b{i}", "eval" if i % 2 else "train")
        for i in range(4)
    ]
    store.create_dataset(NAME, "Reply with a command.", items)
    for name in evals:
        create_eval(store, name, [GRADER])
    app = DistillApp(
        settings=load_settings(workspace=store.directory), store=store, start_backend=False
    )
    try:
        async with drive(app) as t:
            await t.press(key)
            yield t, await t.screen_of(kind)
    finally:
        store.close()


async def test_the_recipe_screen_names_a_bracketed_dataset_as_written(tmp_path: Path) -> None:
    async with on_screen(tmp_path, "0", RecipeScreen) as (t, screen):
        steps = screen.query_one(OptionList)
        await t.wait_until(lambda: steps.option_count == 7)
        # What the option shows: its prompt rendered as Textual renders it.
        dataset_step = Content.from_markup(str(steps.get_option_at_index(1).prompt)).plain
        assert f"{NAME}: 4 items, 2 train, 2 eval" in dataset_step


async def test_the_evals_editor_names_a_bracketed_eval_as_written(tmp_path: Path) -> None:
    async with on_screen(tmp_path, "4", EvalsScreen, evals=(NAME,)) as (t, screen):
        title = screen.query_one("#graders-title", Label)
        await t.wait_until(lambda: "Graders of" in plain(title))
        assert plain(title) == f"Graders of {NAME}"


async def test_the_settings_screen_shows_a_refused_url_as_typed(tmp_path: Path) -> None:
    async with on_screen(tmp_path, "7", SettingsScreen) as (t, screen):
        await t.pilot.click("#base_url")
        await t.paste("http://user:sk-secret-0123456789@gpu-box:8000/v1/[/b]")
        await t.press("ctrl+s")
        await t.settle()
        error = plain(screen.query_one("#settings-error"))
        assert "(http://***@gpu-box:8000/v1/[/b])" in error
        assert "sk-secret" not in error


def test_the_recipe_report_prints_names_as_written() -> None:
    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None)
    report = {
        "items": 2,
        "rows": [{"row": "fine-tuned student", "model": "ft:my[/i]model", "exact": "50%"}],
        "summary": f"fine-tuned student of {NAME} recovers 80 % of the teacher's lead",
        "teaching": {"notes": {"labels [/x]": "kept 3 [/y]"}},
    }
    print_report(console, report)
    printed = out.getvalue()
    assert "ft:my[/i]model" in printed
    assert f"of {NAME} recovers" in printed
    assert "labels [/x]: kept 3 [/y]" in printed


async def test_the_settings_screen_names_a_bracketed_config_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "cfg [/b]" / "config.toml"
    monkeypatch.setenv("DISTILL_CONFIG", str(path))
    async with on_screen(tmp_path, "7", SettingsScreen) as (_, screen):
        assert f"Saved to {path} (DISTILL_CONFIG" in plain(screen.query_one("#settings-intro"))
