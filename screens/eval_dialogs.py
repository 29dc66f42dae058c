"""Dialogs of the Evals and Compare screens: a grader form, the graders as JSON, presets, the
run (or selection) to grade, runs to compare, an item's grades, and the export of results.
Each returns a typed result (None when cancelled)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import (
    Checkbox,
    Input,
    Label,
    OptionList,
    Select,
    SelectionList,
    Static,
    TextArea,
)
from textual.widgets.option_list import Option
from textual.widgets.selection_list import Selection

from screens.dialogs import Dialog, ExportDialog
from tui.engine.eval_views import GraderPreset, Target, run_label
from tui.engine.evals import ResultRow
from tui.engine.graders import (
    GRADER_TYPES,
    TEMPLATE_VARIABLES,
    GraderConfigError,
    Metric,
    parse_grader,
    parse_graders,
)
from tui.engine.store import EvalInfo, GradeRow, RunInfo

# -- the grader form ---------------------------------------------------------------------------

# The grader module's own list, so the form offers exactly what the engine accepts.
METRICS = get_args(Metric)
OPERATIONS = (
    ("eq: equal", "eq"),
    ("ne: different", "ne"),
    ("like: contains", "like"),
    ("ilike: contains, any case", "ilike"),
)
TEMPLATED = ("string_check", "text_similarity", "command_match")
JUDGES = ("score_model", "label_model")
# Which of the form's fields each grader type has (by the id of the field's box).
FIELDS: dict[str, tuple[str, ...]] = {
    "f-input": TEMPLATED,
    "f-reference": TEMPLATED,
    "f-operation": ("string_check",),
    "f-normalize": ("string_check",),
    "f-metric": ("text_similarity",),
    "f-threshold": ("text_similarity", "command_match", "score_model", "python"),
    "f-model": JUDGES,
    "f-system": JUDGES,
    "f-prompt": JUDGES,
    "f-range": ("score_model",),
    "f-labels": ("label_model",),
    "f-passing": ("label_model",),
    "f-source": ("python",),
    "f-timeout": ("python",),
}
DEFAULT_PROMPT = (
    "Request: {{item.input}}\nReference: {{item.reference}}\nOutput: {{sample.output_text}}\n\n"
    "Does the output do what the request asks?"
)
DEFAULT_SOURCE = (
    "def grade(sample, item):\n"
    "    # sample['output_text']; item['input'], item['reference']\n"
    "    return float(sample['output_text'].strip() == item['reference'].strip())\n"
)


def _split_messages(config: dict[str, Any]) -> tuple[str, str] | None:
    """A judge's messages as (system, prompt), or None when the form can't hold them."""
    messages = config.get("input") or []
    if not isinstance(messages, list):
        return None
    system, prompt = "", ""
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            return None
        role = message.get("role")
        if role in ("system", "developer") and i == 0:
            system = message["content"]
        elif role == "user" and i == len(messages) - 1:
            prompt = message["content"]
        else:
            return None
    return system, prompt


def form_can_edit(config: dict[str, Any]) -> bool:
    """Whether the form shows everything of this grader that matters (else: the JSON view)."""
    if config.get("type") in JUDGES:
        return _split_messages(config) is not None
    return True


def _number(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:g}" if isinstance(value, float | int) else str(value)


class GraderDialog(Dialog[dict[str, Any]]):
    """Add or edit one grader. The result is checked as the engine checks pasted JSON, and
    its errors name the field."""

    CSS_PATH = "evals.tcss"
    BINDINGS = [Binding("ctrl+s", "save", "Save", id="grader.save")]

    def __init__(self, config: dict[str, Any] | None = None, taken: Sequence[str] = ()) -> None:
        super().__init__()
        self.original = dict(config or {})
        self.taken = set(taken) - {self.original.get("name")}

    def compose(self) -> ComposeResult:
        c = self.original
        kind = c.get("type") if c.get("type") in GRADER_TYPES else "command_match"
        messages = _split_messages(c) if c.get("type") in JUDGES else None
        system, prompt = messages or ("", DEFAULT_PROMPT)
        range_ = c.get("range") or ([1, 10] if not c else [0, 1])
        with Vertical(classes="box wide", id="grader-box"):
            yield Label("Edit grader" if c else "Add a grader", classes="title")
            with VerticalScroll(id="grader-fields"):
                with Horizontal(classes="pair"):
                    with Vertical():
                        yield Label("Type")
                        yield Select(
                            [(t, t) for t in GRADER_TYPES],
                            value=kind,
                            allow_blank=False,
                            id="g-type",
                            compact=True,
                        )
                    with Vertical():
                        yield Label("Name (shown as the column title)")
                        yield Input(
                            c.get("name", ""),
                            placeholder="default: the type",
                            id="g-name",
                            compact=True,
                        )
                with Vertical(id="f-input", classes="field"):
                    yield Label("Input (what is graded)")
                    yield Input(
                        c.get("input", "{{sample.output_text}}"), id="g-input", compact=True
                    )
                with Vertical(id="f-reference", classes="field"):
                    yield Label("Reference (what it is compared with)")
                    yield Input(
                        c.get("reference", "{{item.reference}}"), id="g-reference", compact=True
                    )
                with Vertical(id="f-operation", classes="field"):
                    yield Label("Operation")
                    yield Select(
                        OPERATIONS,
                        value=c.get("operation", "eq"),
                        allow_blank=False,
                        id="g-op",
                        compact=True,
                    )
                with Vertical(id="f-normalize", classes="field"):
                    yield Checkbox(
                        "Normalize: strip spaces and a surrounding code fence first",
                        bool(c.get("normalize")),
                        id="g-normalize",
                    )
                with Vertical(id="f-metric", classes="field"):
                    yield Label("Metric")
                    yield Select(
                        [(m, m) for m in METRICS],
                        value=c.get("evaluation_metric", "fuzzy_match"),
                        allow_blank=False,
                        id="g-metric",
                        compact=True,
                    )
                with Vertical(id="f-threshold", classes="field"):
                    yield Label("Pass threshold (passed = score ≥ threshold)")
                    yield Input(
                        _number(c.get("pass_threshold")),
                        placeholder="default",
                        id="g-threshold",
                        compact=True,
                    )
                with Vertical(id="f-model", classes="field"):
                    yield Label("Judge model")
                    yield Input(
                        c.get("model") or "",
                        placeholder="default: Settings' judge",
                        id="g-model",
                        compact=True,
                    )
                with Vertical(id="f-system", classes="field"):
                    yield Label("System message (optional)")
                    yield TextArea(system, id="g-system", classes="short")
                with Vertical(id="f-prompt", classes="field"):
                    yield Label("Prompt")
                    yield TextArea(prompt, id="g-prompt", classes="prompt")
                with Vertical(id="f-range", classes="field"):
                    yield Label("Score range: low, high")
                    yield Input(", ".join(_number(v) for v in range_), id="g-range", compact=True)
                with Vertical(id="f-labels", classes="field"):
                    yield Label("Labels, comma-separated")
                    yield Input(
                        ", ".join(c.get("labels") or ["pass", "fail"]), id="g-labels", compact=True
                    )
                with Vertical(id="f-passing", classes="field"):
                    yield Label("Passing labels")
                    yield Input(
                        ", ".join(c.get("passing_labels") or ["pass"]), id="g-passing", compact=True
                    )
                with Vertical(id="f-source", classes="field"):
                    yield Label("def grade(sample, item) -> float")
                    yield TextArea.code_editor(
                        c.get("source", DEFAULT_SOURCE), id="g-source", classes="prompt"
                    )
                with Vertical(id="f-timeout", classes="field"):
                    yield Label("Time limit, seconds")
                    yield Input(
                        _number(c.get("timeout")),
                        placeholder="default",
                        id="g-timeout",
                        compact=True,
                    )
            yield Static(
                "Templates: " + "  ".join(TEMPLATE_VARIABLES) + " · ctrl+s saves · esc cancels",
                classes="hint",
                markup=False,
            )
            yield from self.buttons("Save")

    def on_mount(self) -> None:
        self._show_fields()
        self.query_one("#g-type", Select).focus()

    @property
    def kind(self) -> str:
        value = self.query_one("#g-type", Select).value
        return value if isinstance(value, str) else "command_match"

    @on(Select.Changed, "#g-type")
    def _show_fields(self) -> None:
        kind = self.kind
        for box_id, kinds in FIELDS.items():
            self.query_one(f"#{box_id}").display = kind in kinds

    def action_save(self) -> None:
        self.submit()

    def _value(self, widget_id: str) -> str:
        return self.query_one(f"#{widget_id}", Input).value.strip()

    def _text(self, widget_id: str) -> str:
        return self.query_one(f"#{widget_id}", TextArea).text

    def config(self) -> dict[str, Any]:
        """The grader as OpenAI-style JSON, from the form (fields the form doesn't show, such
        as sampling_params, are kept from the grader being edited)."""
        kind = self.kind
        config: dict[str, Any] = dict(self.original) if self.original.get("type") == kind else {}
        for key in ("input", "reference", "operation", "normalize", "evaluation_metric"):
            config.pop(key, None)
        for key in ("pass_threshold", "model", "range", "labels", "passing_labels", "timeout"):
            config.pop(key, None)
        config["type"] = kind
        config["name"] = self._value("g-name")
        if kind in TEMPLATED:
            config["input"] = self._value("g-input")
            config["reference"] = self._value("g-reference")
        if kind == "string_check":
            config["operation"] = self.query_one("#g-op", Select).value
            config["normalize"] = self.query_one("#g-normalize", Checkbox).value
        if kind == "text_similarity":
            config["evaluation_metric"] = self.query_one("#g-metric", Select).value
        if kind in FIELDS["f-threshold"] and self._value("g-threshold"):
            config["pass_threshold"] = self._value("g-threshold")
        if kind in JUDGES:
            if self._value("g-model"):
                config["model"] = self._value("g-model")
            messages = []
            if self._text("g-system").strip():
                messages.append({"role": "system", "content": self._text("g-system").strip()})
            messages.append({"role": "user", "content": self._text("g-prompt").strip()})
            config["input"] = messages
        if kind == "score_model":
            config["range"] = [p.strip() for p in self._value("g-range").split(",")]
        if kind == "label_model":
            config["labels"] = [p.strip() for p in self._value("g-labels").split(",") if p.strip()]
            config["passing_labels"] = [
                p.strip() for p in self._value("g-passing").split(",") if p.strip()
            ]
        if kind == "python":
            config["source"] = self._text("g-source")
            if self._value("g-timeout"):
                config["timeout"] = self._value("g-timeout")
        return config

    def submit(self) -> None:
        try:
            grader = parse_grader(self.config())
        except GraderConfigError as error:
            self.show_error(str(error))
            return
        if grader.name in self.taken:
            self.show_error(f"name: another grader of this eval is named {grader.name!r}")
            return
        self.dismiss(grader.to_json())


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


def verdict(grade: GradeRow | None) -> tuple[str, str]:
    """A grade as (mark, style): ✓ green, ✗ red, ! yellow (errored), · dim (not graded)."""
    if grade is None:
        return "·", "dim"
    if grade.passed is None:
        return "!", "yellow"
    return ("✓", "green") if grade.passed else ("✗", "red")


def score_text(score: float | None) -> str:
    if score is None:
        return "–"
    return f"{score:.2f}" if 0 <= score <= 1 else f"{score:g}"


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


# -- the Compare screen's choices ------------------------------------------------------------------


@dataclass(frozen=True)
class CompareRequest:
    eval_id: int
    run_ids: list[int]
    baseline_run_id: int


class CompareDialog(Dialog[CompareRequest]):
    """An eval, 2–4 runs of one dataset, and the baseline among them."""

    CSS_PATH = "evals.tcss"

    def __init__(
        self,
        evals: list[EvalInfo],
        runs: list[RunInfo],
        eval_id: int | None,
        run_ids: Sequence[int],
        baseline: int | None,
    ) -> None:
        super().__init__()
        self.evals = evals
        self.runs = [r for r in runs if r.n_done]
        self.eval_id = eval_id
        self.run_ids = list(run_ids)
        self.baseline = baseline

    def compose(self) -> ComposeResult:
        with Vertical(classes="box wide", id="compare-box"):
            yield Label("Compare runs", classes="title")
            yield Label("Eval")
            yield Select(
                [(e.name, e.id) for e in self.evals],
                value=self.eval_id if self.eval_id is not None else Select.NULL,
                id="c-eval",
                prompt="choose an eval",
            )
            yield Label("Runs (2–4, over the same dataset): space toggles")
            yield SelectionList[int](
                *(
                    Selection(
                        f"{run_label(r)} · {r.dataset_name or '?'} · {r.n_done:,} done",
                        r.id,
                        r.id in self.run_ids,
                    )
                    for r in self.runs
                ),
                id="c-runs",
            )
            yield Label("Baseline (the others' deltas are against it)")
            yield Select[int]([], id="c-baseline", prompt="choose the baseline")
            yield from self.buttons("Compare")

    def on_mount(self) -> None:
        self._baselines()
        self.query_one("#c-runs", SelectionList).focus()

    @on(SelectionList.SelectedChanged, "#c-runs")
    def _baselines(self) -> None:
        chosen = self.query_one("#c-runs", SelectionList).selected
        select = self.query_one("#c-baseline", Select)
        current = select.value
        select.set_options(
            [(run_label(r), r.id) for r in self.runs if r.id in chosen],
        )
        for value in (current, self.baseline, *sorted(chosen)):
            if value in chosen:
                select.value = value
                break

    def submit(self) -> None:
        eval_id = self.query_one("#c-eval", Select).value
        chosen: list[int] = list(self.query_one("#c-runs", SelectionList).selected)
        baseline = self.query_one("#c-baseline", Select).value
        if not isinstance(eval_id, int):
            self.show_error("Choose an eval.")
            return
        if not 2 <= len(chosen) <= 4:
            self.show_error(f"Choose 2 to 4 runs ({len(chosen)} chosen).")
            return
        datasets = {r.dataset_id for r in self.runs if r.id in chosen}
        if len(datasets) > 1:
            self.show_error("The runs must be over the same dataset.")
            return
        if not isinstance(baseline, int) or baseline not in chosen:
            self.show_error("Choose the baseline among the chosen runs.")
            return
        self.dismiss(CompareRequest(eval_id, sorted(chosen), baseline))
