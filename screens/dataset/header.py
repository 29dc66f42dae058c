"""The Dataset screen's header: the dataset's name, counts and system prompt, and what is done
to the dataset as a whole — choosing it among the workspace's (o: open, new, rename, copy,
delete), its system prompt (p), importing items from a file (i) and exporting it (E).

The header writes to the store and says what changed in its messages; the screen shows the
dataset again and keeps what can be undone."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from textual import work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.markup import escape
from textual.message import Message
from textual.widgets import Static

from screens.dialogs import (
    ConfirmDialog,
    DatasetAction,
    DatasetsDialog,
    ExportDialog,
    ImportDialog,
    SystemPromptDialog,
    TextPromptDialog,
)
from tui.engine.datasets import DatasetFormatError, ItemDraft, read_dataset, write_dataset
from tui.engine.store import DatasetInfo, Item, StoreError

if TYPE_CHECKING:
    from screens.base import DistillHost


class DatasetHeader(Vertical):
    """The dataset's name, its counts and its system prompt; its commands are the screen's
    o, p, i and E keys."""

    @dataclass
    class Opened(Message):
        """Another dataset is on view (opened, created or copied): what could be undone was
        done to the one before."""

        dataset_id: int

    @dataclass
    class Deleted(Message):
        """A dataset was deleted; `next_id` is the first left (None: none is)."""

        dataset_id: int
        next_id: int | None

    @dataclass
    class Edited(Message):
        """The workspace changed: show `dataset_id` (this one, or the one an import created)
        again; `undo` (None: it cannot be) puts it back as it was."""

        dataset_id: int
        description: str
        undo: Callable[[], Any] | None = None

    @property
    def distill(self) -> DistillHost:
        return cast("DistillHost", self.app)

    def compose(self) -> ComposeResult:
        with Horizontal(id="dataset-bar"):
            yield Static("", id="dataset-title")
            yield Static("", id="dataset-counts")
        yield Static("", id="system-prompt")

    def show(
        self,
        dataset: DatasetInfo | None,
        *,
        shown: int | None,
        duplicates: int,
        synthetic: int = 0,
    ) -> None:
        """`shown`: how many items the filter lets through (None: no filter); `synthetic`:
        how many items a model wrote."""
        title = self.query_one("#dataset-title", Static)
        counts = self.query_one("#dataset-counts", Static)
        prompt = self.query_one("#system-prompt", Static)
        if dataset is None:
            title.update("[b]No dataset[/b] — press [b]o[/b] to create one or [b]i[/b] to import")
            counts.update("")
            prompt.update("")
            return
        d = dataset
        unassigned = d.n_items - d.n_train - d.n_eval
        title.update(f"[b]{escape(d.name)}[/b]")
        counts.update(
            ("" if shown is None else f"{shown:,} shown · ")
            + f"{d.n_items:,} items · {d.n_train:,} train · {d.n_eval:,} eval"
            + (f" · {unassigned:,} unassigned" if unassigned else "")
            + (f" · {synthetic:,} synthetic" if synthetic else "")
            + (f" · [yellow]{duplicates:,} duplicates[/yellow]" if duplicates else "")
        )
        text = escape(d.system_prompt) or "[dim](none — press p to write one)[/dim]"
        prompt.update(f"[b]System prompt[/b] {text}")

    # -- the system prompt ---------------------------------------------------------------

    @work(group="dataset-edit")
    async def edit_prompt(self, dataset: DatasetInfo) -> None:
        text = await self.app.push_screen_wait(SystemPromptDialog(dataset.system_prompt))
        if text is None:
            return
        store = self.distill.store
        old = dataset.system_prompt
        await store.in_thread(store.set_system_prompt, dataset.id, text)
        self.post_message(
            self.Edited(
                dataset.id, "system prompt edit", lambda: store.set_system_prompt(dataset.id, old)
            )
        )

    # -- import / export -----------------------------------------------------------------

    @work(group="dataset-io", exclusive=True)
    async def import_items(self, current: DatasetInfo | None) -> None:
        """Items from a file, into the current dataset or a new one (always a new one when
        there is no current dataset)."""
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
            if request.new_dataset or current is None:
                name = request.new_dataset or request.path.stem
                new_id = await store.in_thread(
                    store.create_dataset, name, parsed.system_prompt or "", parsed.items
                )
                self.post_message(
                    self.Edited(new_id, f"import into {name}", lambda: store.delete_dataset(new_id))
                )
            else:
                ids = await store.in_thread(store.add_items, current.id, parsed.items)
                self.post_message(
                    self.Edited(current.id, "import", lambda: store.delete_items(ids))
                )
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
    async def export(self, dataset: DatasetInfo, items: list[Item]) -> None:
        default = self.distill.store.exports_dir / f"{dataset.name}.json"
        request = await self.app.push_screen_wait(ExportDialog(default))
        if request is None:
            return
        drafts = [ItemDraft(i.input, i.reference, i.split) for i in items]
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

    # -- the workspace's datasets --------------------------------------------------------

    @work(group="dataset-edit")
    async def choose(self, current: DatasetInfo | None) -> None:
        """The datasets dialog, and what was chosen in it."""
        store = self.distill.store
        choice: DatasetAction | None = await self.app.push_screen_wait(
            DatasetsDialog(store.list_datasets(), current.id if current else None)
        )
        if choice is None:
            return
        try:
            await self._dataset_action(choice, current)
        except StoreError as exc:
            self.notify(str(exc), severity="error", markup=False)

    async def _dataset_action(self, choice: DatasetAction, current: DatasetInfo | None) -> None:
        store = self.distill.store
        target = store.get_dataset(choice.dataset_id) if choice.dataset_id else None
        if choice.action == "open" and target is not None:
            self.post_message(self.Opened(target.id))
        elif choice.action == "new":
            name = await self.app.push_screen_wait(
                TextPromptDialog("New dataset", placeholder="name", validate=_name_check)
            )
            if name:
                new_id = await store.in_thread(store.create_dataset, name)
                self.post_message(self.Opened(new_id))
        elif choice.action == "rename" and target is not None:
            name = await self.app.push_screen_wait(
                TextPromptDialog("Rename dataset", target.name, validate=_name_check)
            )
            if name:
                await store.in_thread(store.rename_dataset, target.id, name)
                if current is not None:
                    self.post_message(self.Edited(current.id, "rename"))
        elif choice.action == "copy" and target is not None:
            name = await self.app.push_screen_wait(
                TextPromptDialog("Copy dataset as", f"{target.name} copy", validate=_name_check)
            )
            if name:
                new_id = await store.in_thread(store.duplicate_dataset, target.id, name)
                self.post_message(self.Opened(new_id))
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
                self.post_message(self.Deleted(target.id, remaining[0].id if remaining else None))
                self.notify(f"Deleted dataset {target.name!r}.", markup=False)


def _name_check(value: str) -> str:
    value = " ".join(value.split())
    if not value:
        raise ValueError("A dataset name cannot be empty.")
    if len(value) > 200:
        raise ValueError("A dataset name is limited to 200 characters.")
    return value
