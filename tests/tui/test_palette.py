"""The command palette's entries for a screen come from one place (the screen base class):
every action bound on the screen once, under the screen's name, with its key, except those
the screen disables right now; screens add only extras (the Compare screen's filters)."""

from __future__ import annotations

from textual.actions import parse
from textual.binding import Binding
from textual.command import CommandList

from screens.base import DistillScreen
from tests.tui.conftest import Driver, drive
from tui.app import DistillApp
from tui.screen_registry import SCREENS_IN_ORDER


def screen_of(t: Driver) -> DistillScreen:
    screen = t.app.screen
    assert isinstance(screen, DistillScreen), screen
    return screen


async def test_every_screen_offers_each_enabled_binding_once(small_app: DistillApp) -> None:
    async with drive(small_app) as t:
        for spec in SCREENS_IN_ORDER:
            await t.press(spec.key)
            await t.settle()
            screen = screen_of(t)
            titles = [command.title for command in screen.palette_commands()]
            bindings = [b for b in type(screen).BINDINGS if isinstance(b, Binding)]
            assert bindings, spec.mode
            for binding in bindings:
                _, action, parameters = parse(binding.action)
                title = f"{spec.title}: {binding.description}"
                expected = 1 if screen.check_action(action, parameters) else 0
                assert titles.count(title) == expected, (title, titles)
            # Back to the dataset screen: a screen whose first field takes text would take the
            # next digit as text.
            await t.app.run_action("switch_mode('dataset')")
            await t.pilot.pause()


async def test_keys_are_shown_as_typed_and_disabled_actions_left_out(
    small_app: DistillApp,
) -> None:
    async with drive(small_app) as t:
        helps = {c.title: c.help for c in screen_of(t).palette_commands()}
        assert helps["Dataset: Filter"] == "key /"
        assert helps["Dataset: Delete"] == "key d"  # the first of "d,delete"
        assert helps["Dataset: Export"] == "key E"

        # Compare with nothing to compare: nothing to grade or cancel; its filters are extras.
        await t.press("6")
        await t.settle()
        await t.press("ctrl+p")
        await t.paste("Compare:")
        commands = t.app.screen.query_one(CommandList)
        prompts: list[str] = []
        for _ in range(200):  # the palette gathers its commands in a worker of its own
            prompts = [
                str(commands.get_option_at_index(i).prompt) for i in range(commands.option_count)
            ]
            if any(p.startswith("Compare: show regressions") for p in prompts):
                break
            await t.pilot.pause(0.05)
        assert any(p.startswith("Compare: Filter") for p in prompts), prompts
        assert any(p.startswith("Compare: Choose runs") for p in prompts), prompts
        assert any(p.startswith("Compare: show regressions") for p in prompts), prompts
        assert not any(p.startswith("Compare: Grade missing") for p in prompts), prompts
        assert not any(p.startswith("Compare: Cancel") for p in prompts), prompts
