"""The grader form of the Evals screen: add or edit one grader field by field, each grader type
showing only its own fields. The result is the grader as OpenAI-style JSON (None when
cancelled), checked as the engine checks pasted JSON."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, get_args

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Checkbox, Input, Label, Select, Static, TextArea

from screens.dialogs import Dialog
from tui.engine.graders import (
    GRADER_TYPES,
    TEMPLATE_VARIABLES,
    GraderConfigError,
    Metric,
    parse_grader,
)

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
