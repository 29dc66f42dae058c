"""A snapshot of the Compare screen, the one shown to stakeholders: the student's baseline,
the teacher and the fine-tuned student graded by the git eval, at 120x36, with the cursor on
an item whose outputs differ (so the highlighted differences are in the picture).

Deterministic as the other snapshots (see test_snapshots.py): the test's own working
directory, a relative workspace and config, fixed data (latencies and tokens included), and
nothing on this screen shows a date or a clock. Accept a deliberate change with
`.venv/bin/python -m pytest tests/snapshots --snapshot-update`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.tui.eval_data import GIT_GRADERS, build
from tui.app import DistillApp
from tui.engine.evals import EvalRunner, create_eval, start_eval_run
from tui.engine.settings import load_settings
from tui.engine.store import Store

SIZE = (120, 36)

SnapCompare = Callable[..., bool]


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> Iterator[DistillApp]:
    monkeypatch.setenv("DISTILL_CONFIG", "home/config.toml")
    store = Store.open(Path("ws"))
    work = build(store)
    eval_id = create_eval(store, "git commands", GIT_GRADERS)

    async def grade() -> None:
        for run_id in work.runs.values():
            await EvalRunner(store).run(start_eval_run(store, eval_id, run_id))

    asyncio.run(grade())
    yield DistillApp(settings=load_settings(workspace=Path("ws")), store=store, start_backend=False)
    store.close()


def test_compare_screen(snap_compare: SnapCompare, app: DistillApp) -> None:
    async def open_compare(pilot: Any) -> None:
        await pilot.press("6")
        await pilot.app.workers.wait_for_complete()
        await pilot.press("down")  # item 2: the baseline's "branch", the others' "checkout -b"
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=open_compare)
