"""Stored completions across runs, filtered the way the recipe filters OpenAI's dashboard (by
model and metadata), and the selection handed from the Completions screen to the Evals and
Fine-tune screens.

Filter words: `model:gpt-4o-mini` (exact, or a glob such as `model:*mini*`), `run:3` or
`run:3,5`, `role:teacher`, `dataset:git-requests`, `status:failed` (done, failed, cancelled),
`meta:task=git` (repeatable, all must match), `conf:0.75` (or `conf:75%`, `conf:6/8`: voted
completions whose share of agreeing samples is at least that; a completion of a run that
sampled once has no confidence and does not match); every other word is text looked for in
the request or the output. Words of the same kind are alternatives; different kinds all
apply."""

from __future__ import annotations

import fnmatch
import shlex
from dataclasses import dataclass, field

from tui.engine.generation import PromptBuilder
from tui.engine.store import CompletionRow, Item, RunInfo, Store
from tui.engine.voting import rule

STATUSES = ("done", "failed", "cancelled")


@dataclass
class CompletionFilter:
    models: list[str] = field(default_factory=list)
    run_ids: list[int] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    text: str = ""
    min_confidence: float | None = None  # `conf:`: only voted completions, at least this share
    problems: list[str] = field(default_factory=list)  # words that could not be understood

    def matches_run(self, run: RunInfo) -> bool:
        if self.run_ids and run.id not in self.run_ids:
            return False
        if self.models and not any(_model_matches(p, run.model) for p in self.models):
            return False
        if self.roles and run.role.casefold() not in self.roles:
            return False
        if self.datasets and (run.dataset_name or "").casefold() not in self.datasets:
            return False
        return all(run.metadata.get(key) == value for key, value in self.metadata.items())


def _model_matches(pattern: str, model: str) -> bool:
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(model.casefold(), pattern.casefold())
    return model.casefold() == pattern.casefold()


def parse_confidence(text: str) -> float:
    """A vote share as people write it: "0.75", "75%" or "6/8" → 0.75. Raises ValueError
    with a readable message when it is not one, or not between 0 and 1."""
    text = text.strip()
    try:
        if text.endswith("%"):
            value = float(text[:-1]) / 100
        elif "/" in text:
            votes, _, samples = text.partition("/")
            value = int(votes) / int(samples)
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError) as error:
        raise ValueError(f"{text!r} is not a share such as 0.75, 75% or 6/8") from error
    if not 0 <= value <= 1:
        raise ValueError(f"{text!r} is not between 0 and 1 (0 % and 100 %)")
    return value


def confidence_text(row: CompletionRow) -> str:
    """A completion's vote as the table shows it: "5/8" (samples that agreed / samples),
    or "62%" when the samples were not kept; "" when the run sampled once."""
    if row.confidence is None:
        return ""
    if row.samples:
        n = len(row.samples)
        return f"{round(row.confidence * n)}/{n}"
    return f"{row.confidence:.0%}"


def sample_votes(run: RunInfo, row: CompletionRow) -> list[tuple[str, bool]]:
    """Each sample of a voted completion and whether it agreed with the answer kept, under
    the run's vote rule (the same test the vote made)."""
    samples = row.samples or []
    answer = row.output.strip()
    try:
        same = rule(str(run.params.get("vote", "normalised")))
    except ValueError:
        same = rule("normalised")
    return [
        (sample, bool(answer) and (sample.strip() == answer or same(sample.strip(), answer)))
        for sample in samples
    ]


def parse_filter(query: str) -> CompletionFilter:
    """Parse the filter box. Never raises: words it cannot use are listed in `problems`."""
    result = CompletionFilter()
    try:
        words = shlex.split(query)
    except ValueError:
        words = query.split()
    text: list[str] = []
    for word in words:
        kind, sep, value = word.partition(":")
        kind = kind.casefold()
        if not sep or kind not in ("model", "run", "role", "dataset", "status", "meta", "conf"):
            text.append(word)
            continue
        if not value:
            result.problems.append(f"{word} needs a value")
        elif kind == "model":
            result.models.append(value)
        elif kind == "run":
            for part in value.split(","):
                if part.strip().isdigit():
                    result.run_ids.append(int(part))
                else:
                    result.problems.append(f"run:{part} is not a run number")
        elif kind == "role":
            result.roles.append(value.casefold())
        elif kind == "dataset":
            result.datasets.append(value.casefold())
        elif kind == "conf":
            try:
                result.min_confidence = parse_confidence(value)
            except ValueError as error:
                result.problems.append(f"conf:{error}")
        elif kind == "status":
            status = value.casefold()
            if status in STATUSES:
                result.statuses.append(status)
            else:
                result.problems.append(f"status:{value} (use done, failed or cancelled)")
        else:
            key, eq, meta_value = value.partition("=")
            if eq and key:
                result.metadata[key] = meta_value
            else:
                result.problems.append(f"meta:{value} is not key=value")
    result.text = " ".join(text)
    return result


@dataclass(frozen=True)
class Found:
    runs: dict[int, RunInfo]  # the runs whose completions matched, by id
    completions: list[CompletionRow]
    truncated: bool  # more matched than the limit


def find_completions(store: Store, query: CompletionFilter, limit: int = 100_000) -> Found:
    runs = {run.id: run for run in store.list_runs() if query.matches_run(run)}
    if not runs:
        return Found({}, [], False)
    least = query.min_confidence
    rows = store.search_completions(
        run_ids=sorted(runs),
        statuses=query.statuses,
        text=query.text,
        # The share is filtered here, after the query: the limit counts what is left.
        limit=limit + 1 if least is None else None,
    )
    if least is not None:
        # 1e-9: "conf:5/8" keeps a share computed as 5/8 by the vote.
        rows = [r for r in rows if r.confidence is not None and r.confidence >= least - 1e-9]
    truncated = len(rows) > limit
    rows = rows[:limit]
    present = {row.run_id for row in rows}
    return Found({k: v for k, v in runs.items() if k in present}, rows, truncated)


def completion_messages(store: Store, run: RunInfo, row: CompletionRow) -> list[dict[str, str]]:
    """The chat messages that were sent for a completion, rebuilt from its run's settings
    (system prompt, example turns, retrieved examples) and its item."""
    item = Item(row.item_id, row.position, row.input, row.reference, "")
    return PromptBuilder.for_run(store, run).messages(item)


@dataclass(frozen=True)
class CompletionSelection:
    """What "Evaluate" and "Distill" hand to the next screen: the runs and completions that
    matched the filter, and the filter in words."""

    run_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]
    description: str

    @classmethod
    def of(cls, found: Found, description: str) -> CompletionSelection:
        return cls(
            run_ids=tuple(sorted(found.runs)),
            completion_ids=tuple(row.id for row in found.completions),
            description=description or "all stored completions",
        )
