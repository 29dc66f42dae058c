"""The Dataset screen's panels on their own, in a bare app: the items panel (table, duplicate
flags, filter box, the item opened with enter) and the header (what it shows, and its commands
on a real workspace: the datasets dialog, the system prompt, import and export, each saying
what changed in a message)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.app import App, ComposeResult
from textual.message import Message
from textual.pilot import Pilot
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Input, Static, TextArea

import screens.dataset.items as items_module
from screens.dataset.header import DatasetHeader
from screens.dataset.items import ItemsPanel
from screens.dialogs import (
    DatasetsDialog,
    ExportDialog,
    ImportDialog,
    SystemPromptDialog,
    TextPromptDialog,
)
from tests.helpers.pilot import posted
from tests.tui.conftest import SMALL_ITEMS, SMALL_NAME, SMALL_PROMPT, plain
from tui.engine.store import Item, Store

ITEMS = [Item(100 + n, n, d.input, d.reference, d.split) for n, d in enumerate(SMALL_ITEMS, 1)]


class PanelApp(App[None]):
    """A bare app holding only the panels under test."""

    def __init__(self, *panels: Widget) -> None:
        super().__init__()
        self.panels = panels

    def compose(self) -> ComposeResult:
        yield from self.panels


async def test_items_panel_filters_and_opens_items_with_real_keys() -> None:
    panel = ItemsPanel(id="items-panel")
    messages: list[Message] = []
    app = PanelApp(panel)
    async with app.run_test(size=(100, 20), message_hook=messages.append) as pilot:
        panel.show_items(list(ITEMS))
        await pilot.pause()
        table = panel.table
        assert table.row_count == len(ITEMS)
        assert panel.flags == ["", "normalised", "", "exact", "", "", "", "normalised"]
        changed = posted(messages, ItemsPanel.Changed)[-1]
        assert changed == ItemsPanel.Changed(shown=8, filtered=False, duplicates=3)

        # The detail follows the cursor.
        table.focus()
        await pilot.press("down", "down", "down")
        detail = plain(panel.query_one("#item-detail", Static))
        assert "#4 unassigned  (exact duplicate of an earlier item)" in detail

        # Typing in the filter box narrows the table and says so.
        panel.open_filter()
        await pilot.pause()
        box = panel.query_one("#filter", Input)
        assert box.display and box.has_focus
        await pilot.press(*"is:dup")
        assert [ITEMS[i].position for i in panel.shown] == [2, 4, 8]
        assert posted(messages, ItemsPanel.Changed)[-1] == ItemsPanel.Changed(3, True, 3)

        # enter returns to the table; enter on a row opens that item.
        await pilot.press("enter")
        assert table.has_focus
        await pilot.press("down", "enter")
        await pilot.pause()
        opened = posted(messages, ItemsPanel.Opened)
        assert [m.item for m in opened if isinstance(m, ItemsPanel.Opened)] == [ITEMS[3]]

        # esc in the box clears the filter and hides the box.
        panel.open_filter()
        await pilot.press("escape")
        assert box.value == "" and not box.display and table.has_focus
        assert len(panel.shown) == len(ITEMS)
        assert panel.current_item() == ITEMS[0]


async def test_items_panel_finds_duplicates_of_a_big_dataset_in_the_background(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(items_module, "INDEX_INLINE_LIMIT", 2)
    panel = ItemsPanel(id="items-panel")
    messages: list[Message] = []
    async with PanelApp(panel).run_test(message_hook=messages.append) as pilot:
        panel.show_items(list(ITEMS))
        assert panel.indexing and not any(panel.flags)  # shown before the flags are known
        await workers_done(pilot)
        assert not panel.indexing
        assert posted(messages, ItemsPanel.Changed)[-1] == ItemsPanel.Changed(8, False, 3)
        assert panel._is_flagged(3) and not panel._is_flagged(2)


async def workers_done(pilot: Pilot[None]) -> None:
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


async def test_header_shows_the_counts_and_the_prompt(store: Store) -> None:
    dataset_id = store.create_dataset(SMALL_NAME, SMALL_PROMPT, SMALL_ITEMS)
    header = DatasetHeader()
    async with PanelApp(header).run_test() as pilot:
        header.show(store.get_dataset(dataset_id), shown=None, duplicates=3)
        await pilot.pause()
        assert plain(header.query_one("#dataset-title", Static)) == SMALL_NAME
        counts = plain(header.query_one("#dataset-counts", Static))
        assert counts == "8 items · 4 train · 2 eval · 2 unassigned · 3 duplicates"
        assert SMALL_PROMPT in plain(header.query_one("#system-prompt", Static))

        header.show(store.get_dataset(dataset_id), shown=2, duplicates=0)
        await pilot.pause()
        counts = plain(header.query_one("#dataset-counts", Static))
        assert counts == "2 shown · 8 items · 4 train · 2 eval · 2 unassigned"

        header.show(None, shown=None, duplicates=0)
        await pilot.pause()
        assert "No dataset" in plain(header.query_one("#dataset-title", Static))


# -- the header's commands ---------------------------------------------------------------------


class HostApp(PanelApp):
    """The bare app with the one thing the header asks of the app: the workspace."""

    def __init__(self, store: Store, *panels: Widget) -> None:
        super().__init__(*panels)
        self.store = store


async def until(pilot: Pilot[None], condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"still not true: {condition}"
        await pilot.pause(0.02)


async def dialog(pilot: Pilot[None], kind: type[Screen[Any]]) -> None:
    """Wait for the header's worker to push a `kind` dialog."""
    await until(pilot, lambda: isinstance(pilot.app.screen, kind))


async def test_header_datasets_dialog_opens_creates_renames_and_deletes(store: Store) -> None:
    first = store.create_dataset(SMALL_NAME, SMALL_PROMPT, SMALL_ITEMS)
    other = store.create_dataset("other", "", [])
    header = DatasetHeader()
    messages: list[Message] = []
    async with HostApp(store, header).run_test(message_hook=messages.append) as pilot:
        # Enter on the highlighted dataset (the current one) opens it.
        header.choose(store.get_dataset(first))
        await dialog(pilot, DatasetsDialog)
        await pilot.press("down", "enter")
        await until(pilot, lambda: bool(posted(messages, DatasetHeader.Opened)))
        assert posted(messages, DatasetHeader.Opened) == [DatasetHeader.Opened(other)]

        # n: a new one, named in a second dialog (an empty name is refused there).
        header.choose(store.get_dataset(first))
        await dialog(pilot, DatasetsDialog)
        await pilot.press("n")
        await dialog(pilot, TextPromptDialog)
        await pilot.press("enter")
        assert plain(pilot.app.screen.query_one("#dialog-error", Static)) == (
            "A dataset name cannot be empty."
        )
        await pilot.press(*"fresh", "enter")
        await until(pilot, lambda: len(posted(messages, DatasetHeader.Opened)) == 2)
        fresh = posted(messages, DatasetHeader.Opened)[-1].dataset_id
        assert store.get_dataset(fresh).name == "fresh"

        # r renames the highlighted one; the current one is shown again, nothing to undo.
        header.choose(store.get_dataset(first))
        await dialog(pilot, DatasetsDialog)
        await pilot.press("r")
        await dialog(pilot, TextPromptDialog)
        await pilot.press("end", "ctrl+u", *"renamed", "enter")
        await until(pilot, lambda: bool(posted(messages, DatasetHeader.Edited)))
        assert posted(messages, DatasetHeader.Edited) == [DatasetHeader.Edited(first, "rename")]
        assert store.get_dataset(first).name == "renamed"

        # D deletes after a confirmation, and names the first dataset left to show.
        header.choose(store.get_dataset(first))
        await dialog(pilot, DatasetsDialog)
        await pilot.press("D")
        await pilot.pause()
        await pilot.press("enter")
        await until(pilot, lambda: bool(posted(messages, DatasetHeader.Deleted)))
        assert [d.id for d in store.list_datasets()] == [fresh, other]  # by name
        assert posted(messages, DatasetHeader.Deleted) == [DatasetHeader.Deleted(first, fresh)]


async def test_header_prompt_import_and_export_say_how_to_undo(
    store: Store, tmp_path: Path
) -> None:
    dataset_id = store.create_dataset(SMALL_NAME, SMALL_PROMPT, SMALL_ITEMS)
    header = DatasetHeader()
    messages: list[Message] = []

    def edits() -> list[DatasetHeader.Edited]:
        return posted(messages, DatasetHeader.Edited)

    async with HostApp(store, header).run_test(message_hook=messages.append) as pilot:
        header.edit_prompt(store.get_dataset(dataset_id))
        await dialog(pilot, SystemPromptDialog)
        pilot.app.screen.query_one("#prompt", TextArea).text = "Reply with git only."
        await pilot.press("ctrl+s")
        await until(pilot, lambda: len(edits()) == 1)
        assert store.get_dataset(dataset_id).system_prompt == "Reply with git only."
        edited = edits()[0]
        assert (edited.dataset_id, edited.description) == (dataset_id, "system prompt edit")
        assert edited.undo is not None
        edited.undo()
        assert store.get_dataset(dataset_id).system_prompt == SMALL_PROMPT

        # Appended to the current dataset, then into a new one; each undone as a whole.
        (tmp_path / "more.jsonl").write_text(
            "\n".join(json.dumps({"input": f"Tag release {n}"}) for n in range(3)) + "\n"
        )
        for n, new_name in enumerate(("", "imported"), start=2):
            header.import_items(store.get_dataset(dataset_id))
            await dialog(pilot, ImportDialog)
            pilot.app.screen.query_one("#path", Input).value = str(tmp_path / "more.jsonl")
            pilot.app.screen.query_one("#new-name", Input).value = new_name
            await pilot.click("#path")
            await pilot.press("enter")
            await until(pilot, lambda n=n: len(edits()) == n)
        appended, created = edits()[1:]
        assert (appended.dataset_id, appended.description) == (dataset_id, "import")
        assert len(store.items(dataset_id)) == len(SMALL_ITEMS) + 3
        assert created.description == "import into imported"
        assert [i.input for i in store.items(created.dataset_id)][-1] == "Tag release 2"
        assert appended.undo is not None and created.undo is not None
        appended.undo()
        created.undo()
        assert len(store.items(dataset_id)) == len(SMALL_ITEMS)
        assert [d.id for d in store.list_datasets()] == [dataset_id]

        # Export writes what it is given, and changes nothing.
        header.export(store.get_dataset(dataset_id), store.items(dataset_id))
        await dialog(pilot, ExportDialog)
        target = tmp_path / "out.json"
        pilot.app.screen.query_one("#path", Input).value = str(target)
        await pilot.press("enter")
        await until(pilot, target.exists)
        await pilot.app.workers.wait_for_complete()
        written = json.loads(target.read_text())
        assert written["requests"][0] == SMALL_ITEMS[0].input
        assert len(edits()) == 3
