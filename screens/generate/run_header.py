"""The two lines above the run's items: its title (`RunTitle`: model, role, split, few-shot
retrieval, samples and vote, metadata) and, for a run sent as batches, its batches' line
(`BatchLine`: their status, the requests answered and failed, and the window). Also the
settings a going run was started with (`run_settings`), which the form panel shows in the
form's place while the run goes.

A module of its own because these lines describe the run, not its items: the title is drawn
once per run, and the batch line only when a batch moves (the live view, live.py, decides
when)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Collection, Iterable

from rich.text import Text
from textual.widgets import Static

from tui.engine.batch import TERMINAL, BatchUpdate
from tui.engine.run_form import format_metadata
from tui.engine.store import RunInfo


def run_title(run: RunInfo) -> Text:
    """ "run 3 · gpt-4o-mini · student · all items · 4 examples from train · …"."""
    parts = [f"run {run.id}", run.model]
    if run.role:
        parts.append(run.role)
    parts.append(run.split or "all items")
    k = int(run.params.get("retrieve_k", 0))
    if k:
        where = "the labelled pool" if "retrieve_from" in run.params else "train"
        parts.append(f"{k} examples from {where}")
    samples = int(run.params.get("samples", 1))
    if samples > 1:
        parts.append(f"{samples} samples, vote {run.params.get('vote', 'normalised')}")
    if run.metadata:
        parts.append(format_metadata(run.metadata))
    return Text(" · ".join(parts), style="bold")


# The system prompt in a going run's settings: its first lines, enough to recognise it.
SETTINGS_PROMPT_CHARS = 240


def run_settings(run: RunInfo, budget: float | None, *, batch: bool) -> Text:
    """What a going run was started with, one setting a line under the form's own labels:
    the form is hidden while a run goes, and its fields may not be what the run used (a
    resumed run keeps its own)."""
    sampling = run.params.get("sampling", {})

    def given(name: str) -> str:
        value = sampling.get(name)
        return "default" if value is None else str(value)

    k = int(run.params.get("retrieve_k", 0))
    few_shot = "0"
    if k:
        where = "the labelled pool" if "retrieve_from" in run.params else "train"
        few_shot = f"{k} from {where}"
    samples = int(run.params.get("samples", 1))
    rows = [
        ("Model", run.model),
        ("Role", run.role or "none"),
        ("Split", run.split or "all"),
        ("Temperature", given("temperature")),
        ("Max tokens", given("max_tokens")),
        ("Seed", "none" if sampling.get("seed") is None else str(sampling["seed"])),
        ("Metadata", format_metadata(run.metadata) or "none"),
        ("Few-shot k", few_shot),
        (
            "Samples n",
            f"{samples}, vote {run.params.get('vote', 'normalised')}" if samples > 1 else "1",
        ),
        ("Budget $", "no cap" if budget is None else f"{budget:g}"),
        ("Send as", "batch (≤ 24 h)" if batch else "live requests"),
    ]
    text = Text()
    text.append(f"Run {run.id} is going", style="bold")
    text.append(" · esc cancels\n\n")
    for label, value in rows:
        text.append(f"{label:<12}", style="dim")
        text.append(f"{value}\n")
    prompt = run.system_prompt.strip()
    if len(prompt) > SETTINGS_PROMPT_CHARS:
        prompt = prompt[: SETTINGS_PROMPT_CHARS - 1].rstrip() + "…"
    text.append("\nSystem prompt\n", style="dim")
    text.append(prompt or "none")
    return text


def _duration(seconds: float) -> str:
    minutes = max(0, int(seconds // 60))
    return f"{minutes // 60} h {minutes % 60:02d} m" if minutes >= 60 else f"{minutes} m"


def batch_text(batches: Iterable[BatchUpdate], now: float | None = None) -> Text:
    """A batch run's line: its batch (or how many), their status, the requests answered and
    failed of all, and the window: "batch batch_abc · in_progress · 120/1,000 answered, 3
    failed · 24h window, ends 14:03 (in 23 h 12 m)"."""
    updates = list(batches)
    if not updates:
        return Text("")
    now = time.time() if now is None else now
    head = f"batch {updates[0].remote_id or '(being created)'}"
    if len(updates) > 1:
        head = f"{len(updates)} batches"
    statuses = Counter(u.status for u in updates)
    text = Text(f"{head} · ")
    text.append(", ".join(s if n == 1 else f"{s} ×{n}" for s, n in statuses.items()), style="bold")
    total = sum(u.total for u in updates)
    text.append(f" · {sum(u.completed for u in updates):,}/{total:,} answered")
    failed = sum(u.failed for u in updates)
    if failed:
        text.append(f", {failed:,} failed", style="red")
    going = [u.expires_at for u in updates if u.expires_at and u.status not in TERMINAL]
    if going:
        ends = max(going)
        clock = time.strftime("%H:%M", time.localtime(ends))
        text.append(f" · {updates[0].window} window, ends {clock} (in {_duration(ends - now)})")
    errors = [u.error for u in updates if u.error]
    if errors:
        text.append(f" · {errors[0]}", style="red")
    return text


class RunTitle(Static):
    """The run on view in one line, or why there is none."""

    def show_run(self, run: RunInfo) -> None:
        self.update(run_title(run))

    def say(self, message: str) -> None:
        self.update(Text(message))


class BatchLine(Static):
    """A batch run's batches; hidden for a run of live requests."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("", id=id, markup=False)

    def show(self, batches: Collection[BatchUpdate]) -> None:
        self.display = bool(batches)
        if batches:
            self.update(batch_text(batches))

    def hide(self) -> None:
        self.display = False
