"""Snapshots of the main screens (pytest-textual-snapshot). After a deliberate change of the
layout, look at the new pictures and accept them with
`.venv/bin/python -m pytest tests/snapshots --snapshot-update`.

What is drawn must not depend on the machine: the root conftest runs each test in its own
working directory, the workspace and config paths are relative to it, nothing shows a clock,
and the dataset is small and fixed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.tui.conftest import SMALL_ITEMS, SMALL_NAME, SMALL_PROMPT
from tui.app import DistillApp
from tui.engine.settings import load_settings
from tui.engine.store import Store

SIZE = (120, 36)

SnapCompare = Callable[..., bool]


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> Iterator[DistillApp]:
    # The Settings screen names the config file: keep it relative too.
    monkeypatch.setenv("DISTILL_CONFIG", "home/config.toml")
    store = Store.open(Path("ws"))
    store.create_dataset(SMALL_NAME, SMALL_PROMPT, SMALL_ITEMS)
    yield DistillApp(settings=load_settings(workspace=Path("ws")), store=store, start_backend=False)
    store.close()


def test_dataset_screen(snap_compare: SnapCompare, app: DistillApp) -> None:
    # The cursor on an exact duplicate: its row, the flag and the detail pane all show it.
    assert snap_compare(app, terminal_size=SIZE, press=["down", "down", "down"])


def test_dataset_screen_filtered(snap_compare: SnapCompare, app: DistillApp) -> None:
    async def filter_duplicates(pilot: Any) -> None:
        await pilot.press("slash", *"is:dup")

    assert snap_compare(app, terminal_size=SIZE, run_before=filter_duplicates)


def test_settings_screen(snap_compare: SnapCompare, app: DistillApp) -> None:
    assert snap_compare(app, terminal_size=SIZE, press=["7"])
