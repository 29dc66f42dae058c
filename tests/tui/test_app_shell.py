"""The app shell: a screen per step of the recipe, reached by keys and the command palette;
esc goes back, ? shows the keys, q quits, and the status line says what the app runs with."""

from __future__ import annotations

from textual.command import CommandList, CommandPalette
from textual.widgets import HelpPanel

from screens.compare import CompareScreen
from screens.completions import CompletionsScreen
from screens.dataset import DatasetScreen
from screens.evals import EvalsScreen
from screens.finetune import FineTuneScreen
from screens.generate import GenerateScreen
from screens.recipe import RecipeScreen
from screens.settings import SettingsScreen
from tests.tui.conftest import Driver, drive, plain
from tui.app import DistillApp
from tui.screen_registry import SCREENS_IN_ORDER
from tui.widgets.status_line import StatusLine


async def test_opens_on_the_dataset_screen_with_the_status_line(git_app: DistillApp) -> None:
    async with drive(git_app) as t:
        screen = t.app.screen
        assert isinstance(screen, DatasetScreen)
        assert screen.dataset is not None and screen.dataset.name == "git-requests"
        assert len(screen.items_panel.items) >= 400
        assert t.app.focused is screen.table

        settings = t.app.settings
        for key in ("1", "7"):  # the same line under every screen
            await t.press(key)
            line = plain(t.app.screen.query_one(StatusLine))
            assert line.startswith("local (not started) │ ")
            assert f"teacher {settings.teacher}" in line
            assert f"student {settings.student}" in line
            assert line.endswith(" │ ws")  # relative to the working directory

        # It follows the backend, and shows brackets as written rather than as markup.
        t.app.backend_label = "local [/b] 127.0.0.1:9999"
        await t.pilot.pause()
        line = plain(t.app.screen.query_one(StatusLine))
        assert line.startswith("local [/b] 127.0.0.1:9999 │ ")


# The recipe's steps and the screen that does each: stated here, not read from the registry.
SCREEN_OF_MODE = {
    "recipe": RecipeScreen,
    "dataset": DatasetScreen,
    "generate": GenerateScreen,
    "completions": CompletionsScreen,
    "evals": EvalsScreen,
    "finetune": FineTuneScreen,
    "compare": CompareScreen,
    "settings": SettingsScreen,
}


async def test_number_keys_reach_every_screen(small_app: DistillApp) -> None:
    async with drive(small_app) as t:
        assert [spec.mode for spec in SCREENS_IN_ORDER] == list(SCREEN_OF_MODE)
        for spec in SCREENS_IN_ORDER:
            await t.press(spec.key)
            assert t.app.current_mode == spec.mode
            # A screen's first showing may import its parts: wait for it to be mounted.
            await t.wait_until(lambda spec=spec: t.app.screen.sub_title == spec.title)
            screen = t.app.screen
            # The screen of that step, not another one under the right title.
            assert type(screen) is SCREEN_OF_MODE[spec.mode], (spec.key, type(screen))
            # Back to the dataset screen for the next key: a screen whose first field takes
            # text would take the digit as text, which is that field's right.
            await t.app.run_action("switch_mode('dataset')")
            await t.pilot.pause()
        # From the settings screen (nothing typed into until a field is chosen) too.
        await t.press("7", "1")
        assert t.app.current_mode == "dataset"


async def test_escape_goes_back_and_question_mark_shows_the_keys(small_app: DistillApp) -> None:
    async with drive(small_app) as t:
        await t.press("7")
        assert t.app.current_mode == "settings"
        await t.press("escape")
        assert t.app.current_mode == "dataset"
        await t.press("7", "1", "p")
        assert type(t.app.screen).__name__ == "SystemPromptDialog"
        await t.press("escape")  # closes the dialog first
        assert isinstance(t.app.screen, DatasetScreen)
        await t.press("escape")
        assert t.app.current_mode == "settings"
        await t.press("escape")
        assert t.app.current_mode == "dataset"
        await t.press("escape")  # nowhere further back: stays put
        assert t.app.current_mode == "dataset"

        assert not t.app.screen.query(HelpPanel)
        await t.press("question_mark")
        assert t.app.screen.query(HelpPanel)
        await t.press("question_mark")
        assert not t.app.screen.query(HelpPanel)


async def palette_prompts(t: Driver, first: str) -> list[str]:
    """The palette's commands once it has gathered them (in a worker of its own) and the
    first one starts with `first`."""
    commands = t.app.screen.query_one(CommandList)
    prompts: list[str] = []
    for _ in range(200):  # up to 10 s on a busy machine
        prompts = [
            str(commands.get_option_at_index(i).prompt) for i in range(commands.option_count)
        ]
        if prompts and prompts[0].startswith(first):
            break
        await t.pilot.pause(0.05)
    return prompts


async def test_command_palette_offers_every_screen_and_the_dataset_actions(
    small_app: DistillApp,
) -> None:
    async with drive(small_app) as t:
        await t.press("ctrl+p")
        assert isinstance(t.app.screen, CommandPalette)
        prompts = await palette_prompts(t, "Go to Dataset")
        for spec in SCREENS_IN_ORDER:
            assert any(p.startswith(f"Go to {spec.title}") for p in prompts), prompts
        for action in ("Add", "Edit", "Delete", "Undo", "Filter", "Import", "Export", "Datasets"):
            assert any(p.startswith(f"Dataset: {action}") for p in prompts), prompts

        await t.paste("Go to Evals")
        await palette_prompts(t, "Go to Evals")
        await t.press("enter")
        assert t.app.current_mode == "evals"

        # The dataset screen's actions run from the palette too.
        await t.press("1", "ctrl+p")
        await t.paste("Dataset: Prompt")
        await palette_prompts(t, "Dataset: Prompt")
        await t.press("enter")
        await t.pilot.pause()
        assert type(t.app.screen).__name__ == "SystemPromptDialog"


async def test_q_quits(small_app: DistillApp) -> None:
    async with drive(small_app) as t:
        await t.press("q")
        assert not t.app.is_running
    assert t.app.return_code == 0
