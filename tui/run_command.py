"""`distill-tui run`: the recipe's seven steps headless, with rich progress bars.

The argument parser imports this module for every command, `--version` included, so it
imports nothing heavy: the recipe and its console (tui/recipe_console.py) load when it runs."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="a TOML file with a [recipe] table"
    )
    parser.add_argument(
        "--yes", action="store_true", help="do not ask before spending money on a paid backend"
    )


def run(args: argparse.Namespace, settings: Any, store: Any) -> int:
    from tui.engine.recipe import RecipeError
    from tui.recipe_console import run_recipe

    try:
        return asyncio.run(run_recipe(args, settings, store))
    except RecipeError as error:
        print(f"distill-tui run: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "Interrupted: run the same command again to resume."
            + _left_training(store, local=_student_kind(args, settings, store) == "local"),
            file=sys.stderr,
        )
        return 130


def _student_kind(args: argparse.Namespace, settings: Any, store: Any) -> str:
    """The kind of the student's backend as the recipe opened it: its config may name one."""
    from tui.engine.recipe import RecipeError
    from tui.recipe_console import command_config

    with contextlib.suppress(RecipeError):  # else changed since the recipe read it
        _, settings = command_config(args, settings, store)
    return str(settings.backend_kind("student"))


def _left_training(store: Any, *, local: bool) -> str:
    """A fine-tuning job the interrupt left going trains on (on a paid backend, billed):
    say which, and how a user stops it. The embedded backend's ends with its server, which
    stops with the command unless an app window shares it: the next run trains again."""
    from tui.engine.recipe import STATE_FILE, RecipeState, jobs_in_training

    going = jobs_in_training(store, RecipeState.load(store.directory / STATE_FILE))
    if not going:
        return ""
    if local:
        return (
            f"\nIts fine-tuning job {going[0].remote_id} ends with the embedded backend's "
            "server (unless a distill-tui window shares it): the same command trains again."
        )
    return (
        f"\nIts fine-tuning job {going[0].remote_id} trains on at {going[0].base_url}: the "
        "resumed run waits for it; the app's Fine-tune screen (key 5) cancels it with c."
    )
