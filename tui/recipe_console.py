"""`distill-tui run`'s console: rich progress bars over the recipe, and its report table.
Imported only when the command runs (tui/run_command.py is what the argument parser sees)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from tui.engine.recipe import (
    STATE_FILE,
    Recipe,
    RecipeConfig,
    RecipeError,
    RecipeState,
    Reporter,
    ensure_known_state,
    load_config,
    workspace_config,
)


class RichReporter(Reporter):
    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            SpinnerColumn(),
            # Step titles and notes name models and quote errors: shown as written, not as markup.
            TextColumn("{task.description}", style="bold", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}", markup=False),
            TimeElapsedColumn(),
            console=console,
        )
        self.tasks: dict[str, TaskID] = {}

    def step(self, key: str, title: str, total: int | None) -> None:
        self.tasks[key] = self.progress.add_task(title, total=total, note="")

    def advance(self, key: str, done: int, total: int | None, note: str = "") -> None:
        if key in self.tasks:
            self.progress.update(self.tasks[key], completed=done, total=total, note=note)

    def finish(self, key: str, note: str) -> None:
        task = self.tasks.get(key)
        if task is not None:
            total = self.progress.tasks[task].total or 1
            self.progress.update(task, completed=total, total=total, note=note)

    def skip(self, key: str, title: str, note: str) -> None:
        self.tasks[key] = self.progress.add_task(f"{title} (done before)", total=1, note=note)
        self.progress.update(self.tasks[key], completed=1)


def print_report(console: Console, report: dict[str, Any]) -> None:
    rows = report.get("rows", [])
    if not rows:
        return
    table = Table(title=f"Teacher and students on the eval split ({report.get('items')} items)")
    for header in rows[0]:
        table.add_column(str(header))
    for row in rows:
        table.add_row(*(escape(str(v)) for v in row.values()))
    console.print(table)
    if report.get("summary"):
        console.print(f"[b]{escape(report['summary'])}")
    if report.get("chance"):
        console.print(escape(report["chance"]))
    for step, note in (report.get("teaching") or {}).get("notes", {}).items():
        console.print(f"[dim]{escape(step)}: {escape(note)}")


def command_config(args: argparse.Namespace, settings: Any, store: Any) -> tuple[RecipeConfig, Any]:
    """The config `distill-tui run` runs (--config, else the workspace's recipe.toml, else the
    defaults) and the settings with the backends it names for each role."""
    config = load_config(args.config or workspace_config(store.directory))
    return config, config.backend_settings(settings)


async def run_recipe(args: argparse.Namespace, settings: Any, store: Any) -> int:
    from tui.engine.backend import BackendError, open_backends

    console = Console(stderr=False)
    config, settings = command_config(args, settings, store)
    ensure_known_state(store)
    try:
        # One client per distinct backend: the teacher may be on OpenAI or a GPU box while
        # the student is trained on and served by the local backend.
        backends = await open_backends(
            settings, on_progress=lambda m: console.print(f"[dim]{escape(m)}")
        )
    except BackendError as error:
        console.print(f"[red]distill-tui run: {escape(str(error))}")
        return 1
    try:
        reporter = RichReporter(console)
        recipe = Recipe(
            store,
            backends.student.client,
            settings,
            config,
            backend_kind=backends.student.spec.kind,
            reporter=reporter,
            teacher_client=backends.teacher.client,
            teacher_backend_kind=backends.teacher.spec.kind,
            judge_client=backends.judge.client,
        )
        console.print(
            f"{'Backend' if len(backends.distinct) == 1 else 'Backends'} {escape(backends.label)}: "
            f"{escape(recipe.describe())}"
        )
        await recipe.check_before_spending()  # before asking to spend: a refusal costs nothing
        estimates = recipe.estimates()
        priced = any(e.priced for _, e in estimates)
        if priced:
            total = sum(e.cost for _, e in estimates)
            for role, e in estimates:
                console.print(
                    f"  {role}: {e.items} requests, ≈{e.prompt_tokens:,} prompt + "
                    f"{e.completion_tokens:,} output tokens, ≈${e.cost:.2f}"
                )
            console.print(f"Estimated generation cost ≈ ${total:.2f} (fine-tuning is extra).")
            if not args.yes:
                if not sys.stdin.isatty():
                    console.print("[red]Not started: add --yes to spend money without asking.")
                    return 1
                # Not markup: rich would take "[y/N]" for a style and print "Go ahead? ".
                answer = console.input(Text("Go ahead? [y/N] ")).strip().lower()
                if answer not in ("y", "yes"):
                    console.print("Nothing was spent.")
                    return 1
        with reporter.progress:
            report = await recipe.run()
        print_report(console, report)
        console.print(f"Report written to {escape(str(store.directory / 'reports'))}")
        return 0
    except RecipeError as error:
        console.print(f"[red]distill-tui run: {escape(str(error))}")
        if _started(store):  # nothing to resume when the recipe stopped before its first step
            console.print(
                "Once that is fixed, the same command resumes from the last finished step."
            )
        return 1
    finally:
        await backends.aclose()


def _started(store: Any) -> bool:
    """Whether the workspace's recipe has a step to resume from (a run, a job, a finished step)."""
    try:
        return RecipeState.load(store.directory / STATE_FILE).started
    except RecipeError:
        return False
