"""The Dataset screen: step 2 of the recipe, "prepare your dataset".

It composes the header (`DatasetHeader`: the dataset's name, counts and prompt, and what is
done to the dataset as a whole: choosing it, its prompt, import and export) and the items panel
(`ItemsPanel`), routes their messages, keeps the undo history and does the editing of items
(add, edit, delete, splits, duplicates, and adding requests a model wrote): every change goes
to the store first, then the panel is given the items reloaded from it, so what is shown is
what is saved."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding

from screens.base import DistillScreen
from screens.dataset.header import DatasetHeader
from screens.dataset.items import ItemsPanel
from screens.dataset.synthetic import added_message, generate_requests
from screens.dialogs import ConfirmDialog, EditItemDialog, ItemEdit, SplitDialog
from tui.engine.store import DatasetInfo, Item, StoreError
from tui.widgets.virtual_table import VirtualTable

NEXT_SPLIT = {"": "train", "train": "eval", "eval": ""}
# A synthetic request is never in eval (a model's own requests must not grade the student).
NEXT_SPLIT_SYNTHETIC = {"": "train", "train": "", "eval": "train"}


@dataclass
class Undo:
    description: str
    undo: Callable[[], Any]


class DatasetScreen(DistillScreen):
    CSS_PATH = "dataset.tcss"
    BINDINGS = [
        Binding("a", "add", "Add", id="dataset.add"),
        Binding("e", "edit", "Edit", id="dataset.edit"),
        Binding("d,delete", "delete", "Delete", id="dataset.delete"),
        Binding("u,ctrl+z", "undo", "Undo", id="dataset.undo"),
        Binding("slash", "filter", "Filter", key_display="/", id="dataset.filter"),
        # Less-used keys stay out of the footer (it must fit 120 columns); `?` lists them.
        Binding("t", "toggle_split", "Split ±", show=False, id="dataset.toggle_split"),
        Binding("s", "random_split", "Split…", id="dataset.random_split"),
        Binding("x", "remove_duplicates", "Dedupe", show=False, id="dataset.dedupe"),
        Binding("p", "edit_prompt", "Prompt", show=False, id="dataset.prompt"),
        Binding("i", "import", "Import", id="dataset.import"),
        Binding("E", "export", "Export", id="dataset.export"),
        Binding("o", "datasets", "Datasets", id="dataset.datasets"),
        Binding("g", "generate_requests", "Generate requests…", show=False, id="dataset.generate"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.dataset: DatasetInfo | None = None
        self.undo_stack: list[Undo] = []

    # -- layout --------------------------------------------------------------------------

    def compose_body(self) -> ComposeResult:
        yield DatasetHeader(id="dataset-header")
        yield ItemsPanel(id="items-panel")

    def on_mount(self) -> None:
        self.sub_title = "Dataset"
        datasets = self.distill.store.list_datasets()
        if datasets:
            preferred = next((d for d in datasets if d.name == "git-requests"), datasets[0])
            self.load_dataset(preferred.id)
        else:
            self.header.show(None, shown=None, duplicates=0)
        self.table.focus()

    @property
    def items_panel(self) -> ItemsPanel:
        return self.query_one(ItemsPanel)

    @property
    def table(self) -> VirtualTable:
        return self.items_panel.table

    @property
    def header(self) -> DatasetHeader:
        return self.query_one(DatasetHeader)

    def current_item(self) -> Item | None:
        return self.items_panel.current_item()

    # -- loading and showing -------------------------------------------------------------

    def load_dataset(self, dataset_id: int, *, keep_cursor: bool = False) -> None:
        store = self.distill.store
        self.dataset = store.get_dataset(dataset_id)
        self.distill.current_dataset_id = dataset_id
        self.items_panel.show_items(store.items(dataset_id), keep_cursor=keep_cursor)

    def reload(self) -> None:
        if self.dataset is not None:
            self.load_dataset(self.dataset.id, keep_cursor=True)

    @on(ItemsPanel.Changed)
    def _items_changed(self, event: ItemsPanel.Changed) -> None:
        self.header.show(
            self.dataset,
            shown=event.shown if event.filtered else None,
            duplicates=event.duplicates,
            synthetic=event.synthetic,
        )

    @on(ItemsPanel.Opened)
    def _item_opened(self) -> None:
        self.action_edit()

    def action_filter(self) -> None:
        self.items_panel.open_filter()

    # -- editing -------------------------------------------------------------------------

    def _need_dataset(self) -> DatasetInfo | None:
        if self.dataset is None:
            self.notify("No dataset: press o to create one.", severity="warning")
        return self.dataset

    def _push_undo(self, description: str, undo: Callable[[], Any]) -> None:
        self.undo_stack.append(Undo(description, undo))
        del self.undo_stack[:-100]

    @work(group="dataset-edit")
    async def action_add(self) -> None:
        dataset = self._need_dataset()
        if dataset is None:
            return
        edit = await self.app.push_screen_wait(EditItemDialog())
        if edit is None:
            return
        store = self.distill.store
        item = await store.in_thread(
            store.add_item, dataset.id, edit.input, edit.reference, edit.split
        )
        self._push_undo("add", lambda: store.delete_items([item.id]))
        self.reload()
        self.items_panel.move_to(item.id)
        self.notify(f"Added item #{item.position}.")

    @work(group="dataset-edit")
    async def action_edit(self) -> None:
        item = self.current_item()
        if item is None:
            return
        edit: ItemEdit | None = await self.app.push_screen_wait(EditItemDialog(item))
        if edit is None:
            return
        store = self.distill.store
        try:
            await store.in_thread(
                store.update_item,
                item.id,
                input=edit.input,
                reference=edit.reference,
                split=edit.split,
            )
        except StoreError as exc:
            self.notify(str(exc), title="Not saved", severity="error", markup=False)
            return
        self._push_undo(
            "edit",
            lambda: store.update_item(
                item.id, input=item.input, reference=item.reference, split=item.split
            ),
        )
        self.reload()

    async def action_delete(self) -> None:
        item = self.current_item()
        if item is None:
            return
        store = self.distill.store
        await store.in_thread(store.delete_items, [item.id])
        self._push_undo("delete", lambda: store.restore_items([item.id]))
        self.reload()
        self.notify(f"Deleted item #{item.position}. Press u to undo.")

    async def action_undo(self) -> None:
        if not self.undo_stack:
            self.notify("Nothing to undo.")
            return
        step = self.undo_stack.pop()
        await self.distill.store.in_thread(step.undo)
        self.reload()
        self.notify(f"Undid {step.description}.", markup=False)

    async def action_toggle_split(self) -> None:
        item = self.current_item()
        if item is None:
            return
        store = self.distill.store
        following = NEXT_SPLIT_SYNTHETIC if item.source else NEXT_SPLIT
        await store.in_thread(store.set_splits, {item.id: following[item.split]})
        self._push_undo("split change", lambda: store.set_splits({item.id: item.split}))
        self.reload()

    @work(group="dataset-edit")
    async def action_random_split(self) -> None:
        dataset = self._need_dataset()
        if dataset is None:
            return
        request = await self.app.push_screen_wait(
            SplitDialog(dataset.eval_fraction, dataset.split_seed)
        )
        if request is None:
            return
        store = self.distill.store
        before = {item.id: item.split for item in self.items_panel.items}
        n_train, n_eval = await store.in_thread(
            store.random_split, dataset.id, request.eval_fraction, request.seed
        )
        self._push_undo("split", lambda: store.set_splits(before))
        self.reload()
        self.notify(f"Split: {n_train:,} train, {n_eval:,} eval (seed {request.seed}).")

    @work(group="dataset-edit")
    async def action_remove_duplicates(self) -> None:
        if self._need_dataset() is None:
            return
        panel = self.items_panel
        panel.ensure_indexed()
        ids = [item.id for item, flag in zip(panel.items, panel.flags, strict=True) if flag]
        if not ids:
            self.notify("No duplicates in this dataset.")
            return
        exact = sum(1 for f in panel.flags if f == "exact")
        ok = await self.app.push_screen_wait(
            ConfirmDialog(
                "Remove duplicates",
                f"Remove {len(ids):,} duplicate items ({exact:,} exact, {len(ids) - exact:,} "
                "equal after ignoring case, spaces and punctuation)? The first of each group "
                "stays. You can undo this.",
                ok="Remove",
            )
        )
        if not ok:
            return
        store = self.distill.store
        await store.in_thread(store.delete_items, ids)
        self._push_undo("removing duplicates", lambda: store.restore_items(ids))
        self.reload()
        self.notify(f"Removed {len(ids):,} duplicates. Press u to undo.")

    # -- synthetic requests --------------------------------------------------------------

    @work(group="dataset-edit")
    async def action_generate_requests(self) -> None:
        """g: a model (the teacher's by default) writes new requests like the dataset's; the
        person picks which to add (train split, tagged synthetic, no reference)."""
        dataset = self._need_dataset()
        if dataset is None:
            return
        added = await generate_requests(self, dataset, self.items_panel.items)
        if added is None:
            return
        ids, store = added.ids, self.distill.store
        if ids:
            self._push_undo("adding generated requests", lambda: store.delete_items(ids))
        self.reload()
        if ids:
            self.items_panel.move_to(ids[0])
        self.notify(added_message(added), markup=False)

    # -- the dataset as a whole: the header's commands -----------------------------------

    def action_edit_prompt(self) -> None:
        dataset = self._need_dataset()
        if dataset is not None:
            self.header.edit_prompt(dataset)

    def action_import(self) -> None:
        self.header.import_items(self.dataset)

    def action_export(self) -> None:
        dataset = self._need_dataset()
        if dataset is not None:
            self.header.export(dataset, list(self.items_panel.items))

    def action_datasets(self) -> None:
        self.header.choose(self.dataset)

    @on(DatasetHeader.Opened)
    def _dataset_opened(self, event: DatasetHeader.Opened) -> None:
        self.undo_stack.clear()
        self.load_dataset(event.dataset_id)

    @on(DatasetHeader.Deleted)
    def _dataset_deleted(self, event: DatasetHeader.Deleted) -> None:
        self.undo_stack.clear()
        if self.dataset and self.dataset.id == event.dataset_id:
            self.dataset = None
            if event.next_id is not None:
                self.load_dataset(event.next_id)
            else:
                self.items_panel.show_items([])

    @on(DatasetHeader.Edited)
    def _dataset_edited(self, event: DatasetHeader.Edited) -> None:
        if event.undo is not None:
            self._push_undo(event.description, event.undo)
        if self.dataset is not None and event.dataset_id == self.dataset.id:
            self.reload()
        else:
            self.load_dataset(event.dataset_id)
