"""`distill-tui run`: the recipe's seven steps headless, with rich progress bars.

The argument parser imports this module for every command, `--version` included, so it
imports nothing heavy: the recipe and its console (tui/recipe_console.py) load when it runs."""

from __future__ import annotations

import argparse
import asyncio
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
        print("Interrupted: run the same command again to resume.", file=sys.stderr)
        return 130
