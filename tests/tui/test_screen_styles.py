"""Every screen keeps its own layout once every other screen has been opened. Textual reads
each screen's CSS_PATH into one app-wide stylesheet, so a rule written for an id or a class
on one screen also styles a widget of the same id or class on another once the first screen
has been shown (the Dataset screen's `#system-prompt` once capped the Generate screen's
system prompt at three lines, and the Settings screen's `.field-label` pushed the Generate
form's label down a line)."""

from __future__ import annotations

from textual.widgets import Label, Static, TextArea

from screens.dataset import DatasetScreen
from screens.generate import GenerateScreen
from tests.tui.conftest import drive, make_app
from tests.tui.eval_data import build
from tui.engine.store import Store
from tui.screen_registry import SCREENS_IN_ORDER


async def test_every_screen_keeps_its_layout_after_all_were_opened(store: Store) -> None:
    build(store, roles=("student",))
    async with drive(make_app(store)) as driver:
        for spec in SCREENS_IN_ORDER:  # each screen's stylesheet is read when it is opened
            await driver.press(spec.key)
            await driver.settle()
            assert driver.app.current_mode == spec.mode
            await driver.press("escape")  # back to the Dataset screen for the next key
            assert driver.app.current_mode == "dataset"

        # The Dataset screen's system prompt sits flush above its items (Generate's rule for
        # its own `#system-prompt` gave it a margin).
        screen = driver.app.screen
        assert isinstance(screen, DatasetScreen)
        prompt = screen.query_one("#system-prompt", Static)
        assert prompt.region.height <= 3
        assert screen.query_one("#items-panel").region.y == prompt.region.bottom

        # The Generate form's system prompt is five lines high under a one-line label.
        await driver.press("2")
        screen = driver.app.screen
        assert isinstance(screen, GenerateScreen)
        editor = screen.query_one("#system-prompt", TextArea)
        label = screen.query_one(".field-label", Label)
        assert editor.region.height == 5
        assert label.region.height == 1 and editor.region.y == label.region.bottom
        assert not driver.errors()
