"""What every screen of the recipe shares: the header, the status line and the footer, and the
list of screens in recipe order (the app's key bindings and command palette come from it)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from textual.app import ComposeResult, SystemCommand
from textual.screen import Screen
from textual.widgets import Footer, Header

from tui.widgets.status_line import StatusLine

if TYPE_CHECKING:
    from tui.app import DistillApp


class DistillScreen(Screen[None]):
    """Base of the recipe's screens: subclasses implement `compose_body`."""

    @property
    def distill(self) -> DistillApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield Header()
        yield from self.compose_body()
        yield StatusLine()
        yield Footer(compact=True)

    def compose_body(self) -> ComposeResult:
        yield from ()

    def palette_commands(self) -> Iterable[SystemCommand]:
        """The screen's main actions for the command palette (ctrl+p)."""
        return ()


@dataclass(frozen=True)
class ScreenSpec:
    mode: str
    title: str
    key: str
    help: str
    factory: Callable[[], Screen[None]]


def _recipe() -> Screen[None]:
    from screens.recipe import RecipeScreen

    return RecipeScreen()


def _dataset() -> Screen[None]:
    from screens.dataset import DatasetScreen

    return DatasetScreen()


def _settings() -> Screen[None]:
    from screens.settings import SettingsScreen

    return SettingsScreen()


def _generate() -> Screen[None]:
    from screens.generate import GenerateScreen

    return GenerateScreen()


def _completions() -> Screen[None]:
    from screens.completions import CompletionsScreen

    return CompletionsScreen()


def _evals() -> Screen[None]:
    from screens.evals import EvalsScreen

    return EvalsScreen()


def _compare() -> Screen[None]:
    from screens.compare import CompareScreen

    return CompareScreen()


def _finetune() -> Screen[None]:
    from screens.finetune import FineTuneScreen

    return FineTuneScreen()


def _placeholder(title: str, what: str, issue: int) -> Callable[[], Screen[None]]:
    def make() -> Screen[None]:
        from screens.placeholder import PlaceholderScreen

        return PlaceholderScreen(title, what, issue)

    return make


SCREENS_IN_ORDER: tuple[ScreenSpec, ...] = (
    ScreenSpec("recipe", "Recipe", "0", "The seven steps and which are done", _recipe),
    ScreenSpec("dataset", "Dataset", "1", "Edit the requests, references and split", _dataset),
    ScreenSpec(
        "generate",
        "Generate",
        "2",
        "Run the student or the teacher over the dataset",
        _generate,
    ),
    ScreenSpec(
        "completions",
        "Completions",
        "3",
        "Browse stored completions",
        _completions,
    ),
    ScreenSpec(
        "evals",
        "Evals",
        "4",
        "Grade a run's outputs",
        _evals,
    ),
    ScreenSpec(
        "finetune",
        "Fine-tune",
        "5",
        "Fine-tune the student on the teacher's outputs",
        _finetune,
    ),
    ScreenSpec(
        "compare",
        "Compare",
        "6",
        "Compare runs side by side",
        _compare,
    ),
    ScreenSpec("settings", "Settings", "7", "Backend, models, limits and prices", _settings),
)
