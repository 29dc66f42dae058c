"""The Dataset screen: step 2 of the recipe, "prepare your dataset".

The items of the current dataset live in memory as a list (100,000 of them are a few MB); the
table draws only what is on screen, and filtering swaps the list of visible indices. Every
change goes to the store first, then the in-memory copy is reloaded from it, so what is shown
is what is saved."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from textual import on, work
from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal
from textual.markup import escape
from textual.widgets import Input, Static

from screens.base import DistillScreen
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
from tui.engine.datasets import (
    DatasetFormatError,
    ItemDraft,
    find_duplicates,
    read_dataset,
    write_dataset,
)
from tui.engine.store import DatasetInfo, Item, StoreError
from tui.widgets.virtual_table import Column, VirtualTable

COLUMNS = (
    Column("#", width=6, justify="right"),
    Column("Request", weight=3),
    Column("Reference", weight=2),
    Column("Split", width=5),
    Column("Dup", width=10),
    Column("~Tok", width=5, justify="right"),
)
NEXT_SPLIT = {"": "train", "train": "eval", "eval": ""}


# Up to this many items, duplicates and the filter index are computed before the first paint.
INDEX_INLINE_LIMIT = 20_000


def _index(items: list[Item]) -> tuple[list[str], list[str]]:
    """Duplicate flags, and the casefolded text the filter searches."""
    flags = find_duplicates([item.input for item in items])
    haystack = [f"{i.input}\x00{i.reference}".casefold() for i in items]
    return flags, haystack


def estimate_tokens(text: str) -> int:
    """A rough token count (≈4 characters a token for English); labelled as an estimate."""
    return len(text) // 4 + 1


@dataclass
class Undo:
    description: str
    undo: Callable[[], Any]


class _Rows(Sequence[tuple[str, ...]]):
    """The visible rows, computed when drawn: no 100,000-tuple copy per filter."""

    def __init__(self, items: list[Item], flags: list[str], shown: list[int]) -> None:
        self.items = items
        self.flags = flags
        self.shown = shown

    def __len__(self) -> int:
        return len(self.shown)

    def __getitem__(self, index: Any) -> Any:
        i = self.shown[index]
        item = self.items[i]
        return (
            str(item.position),
            item.input,
            item.reference,
            item.split,
            self.flags[i],
            str(estimate_tokens(item.input)),
        )


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
    ]

    def __init__(self) -> None:
        super().__init__()
        self.dataset: DatasetInfo | None = None
        self.items: list[Item] = []
        self.flags: list[str] = []
        self._haystack: list[str] = []
        self.indexing = False
        self.shown: list[int] = []
        self.filter_text = ""
        self.undo_stack: list[Undo] = []

    # -- layout --------------------------------------------------------------------------

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="dataset-bar"):
            yield Static("", id="dataset-title")
            yield Static("", id="dataset-counts")
        yield Static("", id="system-prompt")
        yield Input(placeholder="filter: text, split:train|eval|none, is:dup", id="filter")
        yield VirtualTable(COLUMNS, flagged=self._is_flagged, id="items")
        yield Static("", id="item-detail")

    def on_mount(self) -> None:
        self.sub_title = "Dataset"
        self.query_one("#filter", Input).display = False
        datasets = self.distill.store.list_datasets()
        if datasets:
            preferred = next((d for d in datasets if d.name == "git-requests"), datasets[0])
            self.load_dataset(preferred.id)
        else:
            self._show_header()
        self.query_one(VirtualTable).focus()

    def palette_commands(self) -> Iterable[SystemCommand]:
        for binding in self.BINDINGS:
            if isinstance(binding, Binding):
                yield SystemCommand(
                    f"Dataset: {binding.description}",
                    f"key {binding.key_display or binding.key.split(',')[0]}",
                    lambda action=binding.action: self.run_action(action),
                )

    # -- loading and showing -------------------------------------------------------------

    @property
    def table(self) -> VirtualTable:
        return self.query_one(VirtualTable)

    def load_dataset(self, dataset_id: int, *, keep_cursor: bool = False) -> None:
        store = self.distill.store
        self.dataset = store.get_dataset(dataset_id)
        self.distill.current_dataset_id = dataset_id
        self.items = store.items(dataset_id)
        if len(self.items) <= INDEX_INLINE_LIMIT:
            self._set_index(*_index(self.items))
        else:
            # A big dataset is shown at once; duplicate flags and the filter's index follow
            # from a thread a moment later (about 0.3 s for 100,000 items).
            self.flags, self._haystack, self.indexing = [""] * len(self.items), [], True
            self._index_in_background(self.items)
        self._apply_filter(keep_cursor=keep_cursor)
        self._show_header()

    def _set_index(self, flags: list[str], haystack: list[str]) -> None:
        self.flags, self._haystack, self.indexing = flags, haystack, False

    @work(thread=True, exclusive=True, group="dataset-index")
    def _index_in_background(self, items: list[Item]) -> None:
        flags, haystack = _index(items)
        self.app.call_from_thread(self._indexed, items, flags, haystack)

    def _indexed(self, items: list[Item], flags: list[str], haystack: list[str]) -> None:
        if items is not self.items:
            return  # the dataset was reloaded meanwhile; that load indexes its own items
        self._set_index(flags, haystack)
        self._apply_filter(keep_cursor=True)
        self._show_header()

    def reload(self) -> None:
        if self.dataset is not None:
            self.load_dataset(self.dataset.id, keep_cursor=True)

    def _show_header(self) -> None:
        d = self.dataset
        title = self.query_one("#dataset-title", Static)
        counts = self.query_one("#dataset-counts", Static)
        prompt = self.query_one("#system-prompt", Static)
        if d is None:
            title.update("[b]No dataset[/b] — press [b]o[/b] to create one or [b]i[/b] to import")
            counts.update("")
            prompt.update("")
            return
        n_dups = sum(1 for f in self.flags if f)
        unassigned = d.n_items - d.n_train - d.n_eval
        shown = f"{len(self.shown):,} shown · " if self.filter_text else ""
        title.update(f"[b]{escape(d.name)}[/b]")
        counts.update(
            f"{shown}{d.n_items:,} items · {d.n_train:,} train · {d.n_eval:,} eval"
            + (f" · {unassigned:,} unassigned" if unassigned else "")
            + (f" · [yellow]{n_dups:,} duplicates[/yellow]" if n_dups else "")
        )
        text = escape(d.system_prompt) or "[dim](none — press p to write one)[/dim]"
        prompt.update(f"[b]System prompt[/b] {text}")

    def _is_flagged(self, row: int) -> bool:
        return bool(self.flags[self.shown[row]]) if row < len(self.shown) else False

    def _apply_filter(self, *, keep_cursor: bool = False) -> None:
        self.shown = self._matching(self.filter_text)
        self.table.set_rows(_Rows(self.items, self.flags, self.shown), keep_cursor=keep_cursor)
        self._show_detail()

    def _matching(self, query: str) -> list[int]:
        words = query.split()
        split: str | None = None
        dup_only = False
        text: list[str] = []
        for word in words:
            lower = word.casefold()
            if lower.startswith("split:"):
                value = lower[6:]
                split = "" if value in ("none", "unassigned", "") else value
            elif lower in ("is:dup", "is:duplicate"):
                dup_only = True
            else:
                text.append(lower)
        needle = " ".join(text)
        if (needle or dup_only) and self.indexing:
            self._set_index(*_index(self.items))  # filtering before the thread finished
        items, flags, hay = self.items, self.flags, self._haystack
        indices: Iterable[int] = range(len(items))
        if needle:
            indices = [i for i in indices if needle in hay[i]]
        if split is not None:
            indices = [i for i in indices if items[i].split == split]
        if dup_only:
            indices = [i for i in indices if flags[i]]
        return list(indices)

    def current_item(self) -> Item | None:
        table = self.table
        if not self.shown or table.cursor >= len(self.shown):
            return None
        return self.items[self.shown[table.cursor]]

    def _show_detail(self) -> None:
        item = self.current_item()
        detail = self.query_one("#item-detail", Static)
        if item is None:
            empty = (
                "No items match the filter." if self.filter_text else "No items yet: a adds one."
            )
            detail.update(f"[dim]{empty}[/dim]")
            return
        flag = self.flags[self.shown[self.table.cursor]]
        note = f"  [yellow]({flag} duplicate of an earlier item)[/yellow]" if flag else ""
        detail.update(
            f"[b]#{item.position}[/b] {item.split or 'unassigned'}{note}\n"
            f"[b]Request[/b]   {escape(item.input)}\n"
            f"[b]Reference[/b] {escape(item.reference) or '[dim]—[/dim]'}"
        )

    @on(VirtualTable.Highlighted)
    def _highlighted(self) -> None:
        self._show_detail()

    @on(VirtualTable.Selected)
    def _selected(self) -> None:
        self.action_edit()

    # -- filter --------------------------------------------------------------------------

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        box.focus()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value
        self._apply_filter()
        self._show_header()

    @on(Input.Submitted, "#filter")
    def _filter_done(self) -> None:
        self.table.focus()

    def on_key(self, event: Any) -> None:
        # esc in the filter box clears it and returns to the table (not "back" to a screen).
        box = self.query_one("#filter", Input)
        if event.key == "escape" and box.has_focus:
            event.stop()
            event.prevent_default()
            box.value = ""
            box.display = False
            self.table.focus()

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
        self._move_to(item.id)
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
        await store.in_thread(
            store.update_item, item.id, input=edit.input, reference=edit.reference, split=edit.split
        )
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
        await store.in_thread(store.set_splits, {item.id: NEXT_SPLIT[item.split]})
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
        before = {item.id: item.split for item in self.items}
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
        if self.indexing:
            self._set_index(*_index(self.items))
        ids = [item.id for item, flag in zip(self.items, self.flags, strict=True) if flag]
        if not ids:
            self.notify("No duplicates in this dataset.")
            return
        exact = sum(1 for f in self.flags if f == "exact")
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

    def _move_to(self, item_id: int) -> None:
        for row, index in enumerate(self.shown):
            if self.items[index].id == item_id:
                self.table.cursor = row
                return

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
        drafts = [ItemDraft(i.input, i.reference, i.split) for i in self.items]
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
                    self.items, self.flags, self._haystack = [], [], []
                    if remaining:
                        self.load_dataset(remaining[0].id)
                    else:
                        self._apply_filter()
                        self._show_header()
                self.notify(f"Deleted dataset {target.name!r}.", markup=False)


def _name_check(value: str) -> str:
    value = " ".join(value.split())
    if not value:
        raise ValueError("A dataset name cannot be empty.")
    if len(value) > 200:
        raise ValueError("A dataset name is limited to 200 characters.")
    return value
