"""The Dataset screen: step 2 of the recipe, "prepare your dataset".

It composes the header and the items panel (screens/dataset/items.py) and does the editing:
every change goes to the store first, then the panel is given the items reloaded from it, so
what is shown is what is saved."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import openai
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding

from screens.base import DistillScreen
from screens.dataset.items import DatasetHeader, ItemsPanel
from screens.dataset.synthetic import GenerateRequestsDialog, RequestsPreview
from screens.dialogs import (
    ConfirmDialog,
    DatasetAction,
    DatasetsDialog,
    EditItemDialog,
    ExportDialog,
    ImportDialog,
    ItemEdit,
    SplitDialog,
    SystemPromptDialog,
    TextPromptDialog,
)
from tui.engine.datasets import DatasetFormatError, ItemDraft, read_dataset, write_dataset
from tui.engine.store import DatasetInfo, Item, StoreError
from tui.engine.synthetic import (
    RequestSynthesizer,
    SynthesisSpec,
    add_synthetic,
    example_pool,
)
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
            self.query_one(DatasetHeader).show(None, shown=None, duplicates=0)
        self.table.focus()

    @property
    def items_panel(self) -> ItemsPanel:
        return self.query_one(ItemsPanel)

    @property
    def table(self) -> VirtualTable:
        return self.items_panel.table

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
        self.query_one(DatasetHeader).show(
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
        self.notify(f"Undid {step.description}.")

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

    @work(group="dataset-edit")
    async def action_edit_prompt(self) -> None:
        dataset = self._need_dataset()
        if dataset is None:
            return
        text = await self.app.push_screen_wait(SystemPromptDialog(dataset.system_prompt))
        if text is None:
            return
        store = self.distill.store
        old = dataset.system_prompt
        await store.in_thread(store.set_system_prompt, dataset.id, text)
        self._push_undo("system prompt edit", lambda: store.set_system_prompt(dataset.id, old))
        self.reload()

    # -- synthetic requests --------------------------------------------------------------

    @work(group="dataset-edit")
    async def action_generate_requests(self) -> None:
        """g: a model (the teacher's by default) writes new requests like the dataset's; the
        person picks which to add (train split, tagged synthetic, no reference)."""
        dataset = self._need_dataset()
        if dataset is None:
            return
        backend = self.distill.backend_for("teacher")
        if backend is None:
            self.notify("The backend is not connected yet.", severity="warning")
            return
        settings = self.distill.settings
        pool = len(example_pool(self.items_panel.items))
        models = await _models(backend.client)
        request = await self.app.push_screen_wait(
            GenerateRequestsDialog(settings.teacher, pool, models)
        )
        if request is None:
            return
        spec = SynthesisSpec(
            dataset_id=dataset.id,
            model=request.model,
            count=request.count,
            examples=request.examples,
            topics=request.topics,
        )
        synthesizer = RequestSynthesizer(
            self.distill.store,
            backend.client,
            price=settings.price(request.model, "teacher"),
            max_retries=settings.max_retries,
        )
        accepted = await self.app.push_screen_wait(RequestsPreview(synthesizer, spec))
        if not accepted:
            return
        store = self.distill.store
        added = await store.in_thread(add_synthetic, store, dataset.id, accepted)
        ids = added.ids
        if ids:
            self._push_undo("adding generated requests", lambda: store.delete_items(ids))
        self.reload()
        if ids:
            self.items_panel.move_to(ids[0])
        skipped = (
            f" {len(added.skipped):,} were in the dataset by now and were left out."
            if added.skipped
            else ""
        )
        self.notify(
            f"Added {len(ids):,} synthetic requests to the train split, without references."
            + skipped
            + " Press u to undo.",
            markup=False,
        )

    # -- import / export -----------------------------------------------------------------

    @work(group="dataset-io", exclusive=True)
    async def action_import(self) -> None:
        request = await self.app.push_screen_wait(ImportDialog())
        if request is None:
            return
        store = self.distill.store
        try:
            parsed = await read_dataset(
                request.path,
                format=request.format,
                input_column=request.input_column,
                reference_column=request.reference_column,
            )
        except DatasetFormatError as exc:
            self.notify(
                str(exc), title="Import refused: nothing changed", severity="error", markup=False
            )
            return
        except OSError as exc:
            self.notify(
                f"{request.path}: {exc.strerror}",
                title="Import failed",
                severity="error",
                markup=False,
            )
            return
        try:
            if request.new_dataset or self.dataset is None:
                name = request.new_dataset or request.path.stem
                new_id = await store.in_thread(
                    store.create_dataset, name, parsed.system_prompt or "", parsed.items
                )
                self._push_undo(f"import into {name}", lambda: store.delete_dataset(new_id))
                self.load_dataset(new_id)
            else:
                ids = await store.in_thread(store.add_items, self.dataset.id, parsed.items)
                self._push_undo("import", lambda: store.delete_items(ids))
                self.reload()
        except StoreError as exc:
            self.notify(
                str(exc), title="Import refused: nothing changed", severity="error", markup=False
            )
            return
        warnings = "\n".join(parsed.warnings[:3])
        self.notify(
            f"Imported {len(parsed.items):,} items from {request.path.name}."
            + (f"\n{warnings}" if warnings else ""),
            markup=False,
        )

    @work(group="dataset-io", exclusive=True)
    async def action_export(self) -> None:
        dataset = self._need_dataset()
        if dataset is None:
            return
        default = self.distill.store.exports_dir / f"{dataset.name}.json"
        request = await self.app.push_screen_wait(ExportDialog(default))
        if request is None:
            return
        drafts = [ItemDraft(i.input, i.reference, i.split) for i in self.items_panel.items]
        try:
            count = await write_dataset(
                request.path, drafts, format=request.format, system_prompt=dataset.system_prompt
            )
        except (OSError, ValueError) as exc:
            self.notify(
                f"{request.path}: {exc}", title="Export failed", severity="error", markup=False
            )
            return
        self.notify(f"Exported {count:,} items to {request.path}.", markup=False)

    # -- datasets ------------------------------------------------------------------------

    @work(group="dataset-edit")
    async def action_datasets(self) -> None:
        store = self.distill.store
        current = self.dataset.id if self.dataset else None
        choice: DatasetAction | None = await self.app.push_screen_wait(
            DatasetsDialog(store.list_datasets(), current)
        )
        if choice is None:
            return
        try:
            await self._dataset_action(choice)
        except StoreError as exc:
            self.notify(str(exc), severity="error", markup=False)

    async def _dataset_action(self, choice: DatasetAction) -> None:
        store = self.distill.store
        target = store.get_dataset(choice.dataset_id) if choice.dataset_id else None
        if choice.action == "open" and target is not None:
            self.undo_stack.clear()
            self.load_dataset(target.id)
        elif choice.action == "new":
            name = await self.app.push_screen_wait(
                TextPromptDialog("New dataset", placeholder="name", validate=_name_check)
            )
            if name:
                new_id = await store.in_thread(store.create_dataset, name)
                self.undo_stack.clear()
                self.load_dataset(new_id)
        elif choice.action == "rename" and target is not None:
            name = await self.app.push_screen_wait(
                TextPromptDialog("Rename dataset", target.name, validate=_name_check)
            )
            if name:
                await store.in_thread(store.rename_dataset, target.id, name)
                self.reload()
        elif choice.action == "copy" and target is not None:
            name = await self.app.push_screen_wait(
                TextPromptDialog("Copy dataset as", f"{target.name} copy", validate=_name_check)
            )
            if name:
                new_id = await store.in_thread(store.duplicate_dataset, target.id, name)
                self.undo_stack.clear()
                self.load_dataset(new_id)
        elif choice.action == "delete" and target is not None:
            ok = await self.app.push_screen_wait(
                ConfirmDialog(
                    "Delete dataset",
                    f"Delete {target.name!r} with its {target.n_items:,} items and any runs' "
                    "completions of them? This cannot be undone.",
                    ok="Delete",
                )
            )
            if ok:
                await store.in_thread(store.delete_dataset, target.id)
                remaining = store.list_datasets()
                self.undo_stack.clear()
                if self.dataset and self.dataset.id == target.id:
                    self.dataset = None
                    if remaining:
                        self.load_dataset(remaining[0].id)
                    else:
                        self.items_panel.show_items([])
                self.notify(f"Deleted dataset {target.name!r}.", markup=False)


async def _models(client: openai.AsyncOpenAI) -> list[str]:
    """The backend's models, for the model box's suggestions ([] if it cannot list them)."""
    try:
        listing = client.with_options(timeout=5.0, max_retries=0).models.list()
        return sorted({model.id async for model in listing})
    except openai.APIError:  # only suggestions: the dialog works without them
        return []


def _name_check(value: str) -> str:
    value = " ".join(value.split())
    if not value:
        raise ValueError("A dataset name cannot be empty.")
    if len(value) > 200:
        raise ValueError("A dataset name is limited to 200 characters.")
    return value
