"""The Evals screen's dialogs besides the grader form: the graders as JSON (OpenAI's
testing_criteria paste as they are), ready-made graders, the run (or selection) to grade, one
graded item, and the export of results. Each returns a typed result (None when cancelled)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Label, OptionList, Static, TextArea
from textual.widgets.option_list import Option

from screens.dialogs import Dialog, ExportDialog
from screens.grades import score_text, verdict
from tui.engine.eval_views import GraderPreset, Target
from tui.engine.evals import ResultRow
from tui.engine.graders import GraderConfigError, parse_graders


class GradersJsonDialog(Dialog[list[dict[str, Any]]]):
    """The eval's graders as JSON: edit them, or paste OpenAI's testing_criteria."""

    CSS_PATH = "evals.tcss"
    BINDINGS = [Binding("ctrl+s", "save", "Save", id="graders-json.save")]

    def __init__(self, eval_name: str, graders: list[dict[str, Any]]) -> None:
        super().__init__()
        self.eval_name = eval_name
        self.graders = graders

    def compose(self) -> ComposeResult:
        with Vertical(classes="box wide", id="json-box"):
            yield Label(f"Graders of {self.eval_name!r} as JSON", classes="title", markup=False)
            yield TextArea.code_editor(
                json.dumps(self.graders, indent=2, ensure_ascii=False), id="json"
            )
            yield Static(
                'A list of graders, or OpenAI\'s {"testing_criteria": [...]} as it is.'
                " ctrl+s saves · esc cancels",
                classes="hint",
                markup=False,
            )
            yield from self.buttons("Save")

    def on_mount(self) -> None:
        self.query_one("#json", TextArea).focus()

    def action_save(self) -> None:
        self.submit()

    def submit(self) -> None:
        try:
            graders = parse_graders(self.query_one("#json", TextArea).text)
        except GraderConfigError as error:
            self.show_error(str(error))
            return
        self.dismiss([g.to_json() for g in graders])


class PresetDialog(Dialog[GraderPreset]):
    CSS_PATH = "evals.tcss"

    def __init__(self, presets: list[GraderPreset]) -> None:
        super().__init__()
        self.presets = presets

    def compose(self) -> ComposeResult:
        with Vertical(classes="box wide"):
            yield Label("Add ready-made graders", classes="title")
            options = []
            for i, preset in enumerate(self.presets):
                text = Text()
                text.append(preset.name, style="bold")
                text.append(f"\n  {preset.description}", style="dim")
                options.append(Option(text, id=str(i)))
            yield OptionList(*options, id="presets")
            yield Static("enter adds · esc cancels", classes="hint")

    @on(OptionList.OptionSelected)
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.presets[int(event.option.id or 0)])


class TargetDialog(Dialog[Target]):
    """The run to grade, or (first) the selection handed over from the Completions screen."""

    CSS_PATH = "evals.tcss"

    def __init__(self, targets: list[Target], current: Target | None) -> None:
        super().__init__()
        self.targets = targets
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(classes="box wide"):
            yield Label("Grade which run?", classes="title")
            options = []
            for i, target in enumerate(self.targets):
                text = Text("▸ " if target == self.current else "  ")
                if target.is_selection:
                    text.append("selection ", style="bold magenta")
                text.append(target.label)
                options.append(Option(text, id=str(i)))
            yield OptionList(*options, id="targets")
            yield Static(
                "Selections come from the Completions screen (3: filter, then e).",
                classes="hint",
            )

    def on_mount(self) -> None:
        if self.current in self.targets:
            self.query_one(OptionList).highlighted = self.targets.index(self.current)

    @on(OptionList.OptionSelected)
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.targets[int(event.option.id or 0)])


# -- an item's grades ----------------------------------------------------------------------------


class ResultItemDialog(Dialog[None]):
    """One graded item: request, output, reference and each grader's verdict and why."""

    CSS_PATH = "evals.tcss"

    def __init__(self, row: ResultRow, graders: list[str], position: int | None) -> None:
        super().__init__()
        self.row = row
        self.graders = graders
        self.position = position

    def compose(self) -> ComposeResult:
        row = self.row
        where = f"#{self.position}" if self.position is not None else f"item {row.item_id}"
        with Vertical(classes="box wide", id="item-box"):
            yield Label(f"Item {where} · completion {row.completion_id}", classes="title")
            with VerticalScroll(id="item-body"):
                for title, value in (
                    ("Request", row.input),
                    ("Output", row.output),
                    ("Reference", row.reference),
                ):
                    yield Label(title, classes="section")
                    yield Static(Text(value or "(empty)"), classes="message")
                yield Label("Grades", classes="section")
                yield Static(self._grades(), id="grades", classes="message")
            yield Static("esc closes", classes="hint")

    def _grades(self) -> Text:
        text = Text()
        width = max((len(g) for g in self.graders), default=0)
        for i, name in enumerate(self.graders):
            grade = self.row.grades.get(name)
            mark, style = verdict(grade)
            if i:
                text.append("\n")
            text.append(f"{mark} ", style=f"bold {style}")
            text.append(f"{name:<{width}}  ", style="bold")
            if grade is None:
                text.append("not graded yet", style="dim")
                continue
            text.append(f"{score_text(grade.score):>5}  ", style=style)
            text.append(grade.detail)
        return text


# -- export --------------------------------------------------------------------------------------


RESULTS_FORMATS = [
    ("CSV (a score, result and explanation column per grader)", "csv"),
    ("JSONL (one object per item with every grade)", "jsonl"),
]


def results_export_dialog(default_path: Path) -> ExportDialog:
    return ExportDialog(
        default_path,
        title="Export the results",
        formats=RESULTS_FORMATS,
        suffixes={"csv": ".csv", "jsonl": ".jsonl"},
    )
