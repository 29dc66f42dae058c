"""distill-tui as a core-only install (`pip install distill-tui`) has it: run in a child process
whose optional extras' modules cannot be imported.

    python -m tests.helpers.core_only WORKSPACE

`DISTILL_CORE_ONLY_BLOCKED` (a JSON list of top-level module names) is what the extras bring
that the core does not; a meta-path finder makes each of them raise ModuleNotFoundError, as
if never installed (and `importlib.util.find_spec` then says so too). The backend settings
come from the environment (the parent points them at a fake OpenAI server). The child drives
the core paths a backend-only user has — the whole recipe headless (generate, grade,
fine-tune, compare), the TUI with every screen, and the embedded backend's refusal — and
prints one JSON line of what it saw for the parent to check.
"""

from __future__ import annotations

import importlib.abc
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

BLOCKED_ENV = "DISTILL_CORE_ONLY_BLOCKED"
RESULT_PREFIX = "CORE-ONLY-RESULT "


class Blocker(importlib.abc.MetaPathFinder):
    """Every import of a blocked top-level module (or of its submodules) fails."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = frozenset(names)
        self.refused: set[str] = set()

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> None:
        if fullname.split(".")[0] in self.names:
            self.refused.add(fullname.split(".")[0])
            raise ModuleNotFoundError(f"No module named {fullname!r} (core-only)", name=fullname)
        return None


def _tiny_dataset(workspace: Path) -> None:
    from tui.engine.datasets import ItemDraft
    from tui.engine.store import Store

    store = Store.open(workspace)
    try:
        items = [
            ItemDraft(f"Create a new branch called 'topic-{i}'.", f"git branch topic-{i}")
            for i in range(20)
        ]
        dataset = store.create_dataset("tiny-git", "Reply with a git command.", items)
        store.random_split(dataset, 0.25, seed=3)
    finally:
        store.close()


RECIPE = """
[recipe]
dataset = "tiny-git"
max_tokens = 8
concurrency = 4
graders = [
  {type = "command_match", name = "command match"},
  {type = "text_similarity", name = "fuzzy", evaluation_metric = "fuzzy_match"},
  {type = "text_similarity", name = "bleu", evaluation_metric = "bleu"},
]
"""


def _recipe(workspace: Path, result: dict[str, object]) -> None:
    from tui.cli import main
    from tui.engine.store import Store

    config = workspace.parent / "recipe.toml"
    config.write_text(RECIPE, encoding="utf-8")
    result["run_exit"] = main(
        ["--workspace", str(workspace), "run", "--yes", "--config", str(config)]
    )
    store = Store.open(workspace)
    try:
        grades = store.query("SELECT grader, score, passed, detail FROM grades")
        result["grades"] = [
            [row["grader"], row["score"], row["passed"], row["detail"]] for row in grades
        ]
        result["completions"] = store.query(
            "SELECT COUNT(*) AS n FROM completions WHERE status = 'done'"
        )[0]["n"]
    finally:
        store.close()
    report = workspace / "reports" / "recipe.json"
    result["report"] = json.loads(report.read_text()) if report.exists() else None


async def _app(workspace: Path, result: dict[str, object]) -> None:
    """The TUI against the configured backend: it connects, and every screen opens."""
    from tui.app import DistillApp
    from tui.engine.examples import ensure_shipped_dataset
    from tui.engine.settings import load_settings
    from tui.engine.store import Store

    store = Store.open(workspace)
    ensure_shipped_dataset(store)
    app = DistillApp(settings=load_settings(workspace=workspace), store=store)
    screens: list[str] = []
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            for _ in range(600):
                if app.backends is not None or "failed" in app.backend_label:
                    break
                await pilot.pause(0.05)
            result["app_backend"] = app.backend_label
            for key in "12345670":
                await pilot.press(key)
                await pilot.pause()
                screens.append(type(app.screen).__name__)
    finally:
        store.close()
    result["app_screens"] = screens


async def _app_local(workspace: Path, result: dict[str, object]) -> None:
    """The TUI with no key and no URL: the embedded backend's refusal, on the status line."""
    from tui.app import DistillApp
    from tui.engine.settings import load_settings
    from tui.engine.store import Store

    store = Store.open(workspace)
    app = DistillApp(settings=load_settings(workspace=workspace), store=store)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            for _ in range(200):
                if "failed" in app.backend_label:
                    break
                await pilot.pause(0.05)
            result["local_app_backend"] = app.backend_label
    finally:
        store.close()


def main(argv: Sequence[str]) -> int:
    import asyncio

    blocker = Blocker(json.loads(os.environ[BLOCKED_ENV]))
    sys.meta_path.insert(0, blocker)
    root = Path(argv[0])
    result: dict[str, object] = {}

    _tiny_dataset(root / "recipe-ws")
    _recipe(root / "recipe-ws", result)
    asyncio.run(_app(root / "app-ws", result))

    # No key and no URL: the embedded backend, which this install does not have.
    for name in ("DISTILL_BACKEND", "DISTILL_BASE_URL", "DISTILL_API_KEY"):
        os.environ.pop(name, None)
    from tui.cli import main as cli

    result["local_run_exit"] = cli(["--workspace", str(root / "local-ws"), "run", "--yes"])
    result["serve_exit"] = cli(["serve", "--port", "0"])
    result["web_exit"] = cli(["web"])
    asyncio.run(_app_local(root / "local-app-ws", result))
    result["refused"] = sorted(blocker.refused)
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
