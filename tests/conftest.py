"""Every test runs in its own working directory with its own config file and no inherited
backend settings, so a developer's own key, .env or config can never leak into a test."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

_CLEARED = ("OPENAI_API_KEY", "OPENAI_BASE_URL")


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    for name in list(os.environ):
        if name.startswith("DISTILL_") or name in _CLEARED:
            monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("DISTILL_CONFIG", str(home / "config.toml"))
    monkeypatch.chdir(tmp_path)
    yield tmp_path


@pytest.fixture
def reachable_dir() -> Iterator[Path]:
    """A directory an unprivileged child can reach (pytest's tmp_path is private to us): for
    checks run as nobody (tests/helpers/unprivileged.py)."""
    path = Path(tempfile.mkdtemp(prefix="distill-nobody-"))
    path.chmod(0o755)
    yield path
    for p in [path, *path.rglob("*")]:
        if p.is_dir():
            p.chmod(0o755)
    shutil.rmtree(path)
