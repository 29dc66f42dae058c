"""Fixtures the engine's unit tests share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tui.engine.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A fresh workspace under the test's own directory."""
    s = Store.open(tmp_path / "ws")
    yield s
    s.close()
