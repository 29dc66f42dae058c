"""The screens of the recipe in order: the app's modes, number keys and "Go to" commands come
from this list. The app owns it; screens never import each other and reach another screen
through the app (`switch_mode` by name).

Each factory imports its screen when the screen is first shown, so starting the app does not
load every screen's dependencies (the Evals screen's graders, for one)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from textual.screen import Screen


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


def _generate() -> Screen[None]:
    from screens.generate import GenerateScreen

    return GenerateScreen()


def _completions() -> Screen[None]:
    from screens.completions import CompletionsScreen

    return CompletionsScreen()


def _evals() -> Screen[None]:
    from screens.evals import EvalsScreen

    return EvalsScreen()


def _finetune() -> Screen[None]:
    from screens.finetune import FineTuneScreen

    return FineTuneScreen()


def _compare() -> Screen[None]:
    from screens.compare import CompareScreen

    return CompareScreen()


def _settings() -> Screen[None]:
    from screens.settings import SettingsScreen

    return SettingsScreen()


SCREENS_IN_ORDER: tuple[ScreenSpec, ...] = (
    ScreenSpec("recipe", "Recipe", "0", "The seven steps and which are done", _recipe),
    ScreenSpec("dataset", "Dataset", "1", "Edit the requests, references and split", _dataset),
    ScreenSpec(
        "generate", "Generate", "2", "Run the student or the teacher over the dataset", _generate
    ),
    ScreenSpec("completions", "Completions", "3", "Browse stored completions", _completions),
    ScreenSpec("evals", "Evals", "4", "Grade a run's outputs", _evals),
    ScreenSpec(
        "finetune", "Fine-tune", "5", "Fine-tune the student on the teacher's outputs", _finetune
    ),
    ScreenSpec("compare", "Compare", "6", "Compare runs side by side", _compare),
    ScreenSpec("settings", "Settings", "7", "Backend, models, limits and prices", _settings),
)

KEYS: dict[str, str] = {spec.mode: spec.key for spec in SCREENS_IN_ORDER}
