"""The workspace's datasets: open one, or create, rename, copy, delete."""

from __future__ import annotations

from dataclasses import dataclass

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.markup import escape
from textual.widgets import Label, OptionList, Static
from textual.widgets.option_list import Option

from screens.dialogs.base import Dialog
from tui.engine.store import DatasetInfo


@dataclass(frozen=True)
class DatasetAction:
    action: str  # "open" | "new" | "rename" | "copy" | "delete"
    dataset_id: int | None


class DatasetsDialog(Dialog[DatasetAction]):
    """The workspace's datasets: open one, or create, rename, copy, delete."""

    BINDINGS = [
        Binding("n", "act('new')", "New", id="datasets.new"),
        Binding("r", "act('rename')", "Rename", id="datasets.rename"),
        Binding("c", "act('copy')", "Copy", id="datasets.copy"),
        Binding("delete,D", "act('delete')", "Delete", id="datasets.delete"),
    ]

    def __init__(self, datasets: list[DatasetInfo], current: int | None) -> None:
        super().__init__()
        self.datasets = datasets
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(classes="box wide"):
            yield Label("Datasets in this workspace", classes="title")
            options = [
                Option(
                    f"{'▸ ' if d.id == self.current else '  '}{escape(d.name)}  "
                    f"[dim]{d.n_items} items · {d.n_train} train · {d.n_eval} eval[/dim]",
                    id=str(d.id),
                )
                for d in self.datasets
            ]
            yield OptionList(*options, id="datasets")
            yield Static(
                "enter open · n new · r rename · c copy · D delete · esc close", classes="hint"
            )

    def on_mount(self) -> None:
        option_list = self.query_one(OptionList)
        ids = [d.id for d in self.datasets]
        if self.current in ids:
            option_list.highlighted = ids.index(self.current)

    def _highlighted(self) -> int | None:
        option_list = self.query_one(OptionList)
        if option_list.highlighted is None:
            return None
        option_id = option_list.get_option_at_index(option_list.highlighted).id
        return int(option_id) if option_id else None

    @on(OptionList.OptionSelected)
    def _open(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(DatasetAction("open", int(event.option.id or 0)))

    def action_act(self, action: str) -> None:
        self.dismiss(DatasetAction(action, self._highlighted()))
