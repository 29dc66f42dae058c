"""The Dataset screen's panels on their own, in a bare app: the items panel (table, duplicate
flags, filter box, the item opened with enter) and the header."""

from __future__ import annotations

import pytest
from textual.app import App, ComposeResult
from textual.message import Message
from textual.pilot import Pilot
from textual.widget import Widget
from textual.widgets import Input, Static

import screens.dataset.items as items_module
from screens.dataset.items import DatasetHeader, ItemsPanel
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
