"""Pilot fixtures: a DistillApp on a real workspace (no backend started), and a way to drive it
that records every notification the app posts.

The root conftest has already moved the test into its own working directory with its own
config file, so the workspace here is a fresh directory under tmp_path."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from textual import events
from textual.content import Content
from textual.message import Message
from textual.notifications import Notify
from textual.pilot import Pilot
from textual.screen import Screen
from textual.widget import Widget

from tests.helpers.fake_openai import FakeOpenAI
from tui.app import DistillApp
from tui.engine.datasets import ItemDraft
from tui.engine.examples import ensure_shipped_dataset
from tui.engine.settings import load_settings
from tui.engine.store import Store

SIZE = (120, 40)
S = TypeVar("S", bound=Screen[Any])

SMALL_NAME = "small"
SMALL_PROMPT = "Answer with one git command."
# Deliberately holds duplicates: #4 is an exact copy of #3; #2 and #8 equal #1 once case,
# spaces and punctuation are ignored.
SMALL_ITEMS = (
    ItemDraft("Show the working tree status", "git status", "train"),
    ItemDraft("show the  working tree status!", "git status", "eval"),
    ItemDraft("Create a branch called feature", "git branch feature", "train"),
    ItemDraft("Create a branch called feature", "", ""),
    ItemDraft("Undo the last commit but keep the changes", "git reset --soft HEAD~1", "eval"),
    ItemDraft("List every tag", "git tag --list", "train"),
    ItemDraft("Push the main branch to origin", "git push origin main", ""),
    ItemDraft("SHOW THE WORKING TREE STATUS.", "", "train"),
)
# Distinct requests, so the fake server's per-message counts are per item.
TEN = [f"Create a branch called feature-{i}" for i in range(10)]


class Db:
    """Reads the workspace's distill.db on a connection of its own, the way a second process
    would: what it sees is what was committed, not what the screen holds in memory."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with closing(sqlite3.connect(self.path)) as conn:
            return conn.execute(sql, args).fetchall()

    def dataset_names(self) -> list[str]:
        return [r[0] for r in self.rows("SELECT name FROM datasets ORDER BY id")]

    def dataset(self, name: str) -> dict[str, Any]:
        rows = self.rows(
            "SELECT id, name, system_prompt, split_seed, eval_fraction FROM datasets"
            " WHERE name = ?",
            (name,),
        )
        assert rows, f"no dataset {name!r} in {self.dataset_names()}"
        keys = ("id", "name", "system_prompt", "split_seed", "eval_fraction")
        return dict(zip(keys, rows[0], strict=True))

    def items(self, name: str) -> list[tuple[str, str, str]]:
        """(input, reference, split) of the dataset's live items, in order."""
        return [
            (r[0], r[1], r[2])
            for r in self.rows(
                "SELECT i.input, i.reference, i.split FROM items i JOIN datasets d"
                " ON d.id = i.dataset_id WHERE d.name = ? AND i.deleted = 0 ORDER BY i.position",
                (name,),
            )
        ]

    def all_item_rows(self, name: str) -> list[tuple[Any, ...]]:
        """Every column of every row, deleted ones too: to check an undo restores exactly."""
        return self.rows(
            "SELECT i.* FROM items i JOIN datasets d ON d.id = i.dataset_id WHERE d.name = ?"
            " ORDER BY i.id",
            (name,),
        )


@dataclass
class Driver:
    """The app under test, its pilot, and every message posted while it ran."""

    app: DistillApp
    pilot: Pilot[int]
    messages: list[Message] = field(default_factory=list)

    async def press(self, *keys: str) -> None:
        await self.pilot.press(*keys)  # waits, after each key, until the app is idle

    async def type(self, text: str) -> None:
        """Type text one key at a time (about 50 ms a key: keep it short)."""
        await self.pilot.press(*text)

    async def paste(self, text: str) -> None:
        """Paste text into the focused widget, as a terminal's bracketed paste does."""
        self.app.post_message(events.Paste(text))
        await self.pilot.pause()

    async def click_ok(self) -> None:
        """Click the OK (Save, Import, ...) button of the dialog on top."""
        await self.pilot.click("#ok")

    async def settle(self) -> None:
        """Let every started worker finish and the screen catch up. A worker still waiting
        on a dialog after 30 s is a test that forgot to close it: fail rather than hang."""
        await self.pilot.pause()
        try:
            await asyncio.wait_for(self.app.workers.wait_for_complete(), timeout=30)
        except TimeoutError:
            raise AssertionError(
                f"workers still running with {self.app.screen!r} on top: {list(self.app.workers)}"
            ) from None
        await self.pilot.pause()

    async def wait_until(self, condition: Callable[[], bool], timeout: float = 30) -> None:
        """Let the app work until `condition` holds; fail if it does not within `timeout` s."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not condition():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"still not true after {timeout} s: {condition}")
            await self.pilot.pause(0.02)

    async def screen_of(self, kind: type[S]) -> S:
        """The screen on top once it is a `kind` (a dialog a worker pushes comes a moment
        after the key that asked for it)."""
        await self.wait_until(lambda: isinstance(self.app.screen, kind))
        screen = self.app.screen
        assert isinstance(screen, kind)
        return screen

    def notifications(self) -> list[tuple[str, str, str]]:
        """(severity, title, message) of each notification posted so far."""
        return [
            (m.notification.severity, m.notification.title, m.notification.message)
            for m in self.messages
            if isinstance(m, Notify)
        ]

    def errors(self) -> list[str]:
        return [f"{t}: {m}" for s, t, m in self.notifications() if s == "error"]


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    return tmp_path / "ws"


@pytest.fixture
def store(workspace: Path) -> Iterator[Store]:
    store = Store.open(workspace)
    yield store
    store.close()


@pytest.fixture
def db(store: Store) -> Db:
    return Db(store.path)


def make_app(store: Store) -> DistillApp:
    settings = load_settings(workspace=store.directory)
    return DistillApp(settings=settings, store=store, start_backend=False)


@pytest.fixture
def git_app(store: Store) -> DistillApp:
    """The app on a fresh workspace holding the shipped git dataset, as a first launch."""
    assert ensure_shipped_dataset(store) is not None
    return make_app(store)


@pytest.fixture
def small_app(store: Store) -> DistillApp:
    """The app on a workspace holding only the small hand-made dataset."""
    store.create_dataset(SMALL_NAME, SMALL_PROMPT, SMALL_ITEMS)
    return make_app(store)


@pytest.fixture
def ten_app(store: Store) -> DistillApp:
    """The app on a workspace holding only the ten distinct requests of TEN (no references)."""
    store.create_dataset("ten", SMALL_PROMPT, [ItemDraft(r, "") for r in TEN])
    return make_app(store)


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    """The fault-injecting fake OpenAI server on 127.0.0.1, 12 tokens a reply; tests that
    watch a run slow the tokens down (token_delay). A test module needing another server
    defines its own."""
    with FakeOpenAI(tokens_per_reply=12, token_delay=0.01) as server:
        yield server


@asynccontextmanager
async def drive(app: DistillApp, size: tuple[int, int] = SIZE) -> AsyncIterator[Driver]:
    messages: list[Message] = []
    async with app.run_test(size=size, message_hook=messages.append) as pilot:
        driver = Driver(app, pilot, messages)
        await driver.settle()
        yield driver


def plain(widget: Widget) -> str:
    """What a widget shows, without markup."""
    rendered = widget.render()
    if isinstance(rendered, str):
        return Content.from_markup(rendered).plain
    if isinstance(rendered, Content):
        return rendered.plain
    return str(rendered)
