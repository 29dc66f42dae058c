"""What the Generate screen's form means: its text fields turned into a `RunSpec`, with a
message naming the field when one is wrong, and the defaults it starts from. No textual here,
so the rules are the same for the TUI and its tests."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

from tui.engine.generation import RunSpec, SamplingParams
from tui.engine.recipe import STATE_FILE
from tui.engine.store import DatasetInfo, RunInfo, Store
from tui.engine.voting import VOTE_RULES

ROLES = ("student", "teacher", "fine-tuned")
# How a run is sent: one live request per item, or as batches (tui/engine/batch.py).
MODES = ("live", "batch")
SPLIT_CHOICES = ("all", "train", "eval")
MAX_SAMPLES = 16  # OpenAI's `n` per request, as far as this form goes
# Where retrieved few-shot examples come from: every train-split item with a reference, or
# only the recipe's labelled pool (the references a real user would have written).
EXAMPLES_FROM = ("train", "pool")

# A blank "Max tokens" on the embedded backend, for a dataset with references: replies may run
# to REPLY_CAP_FACTOR times the longest reference (tokens ≈ characters / 4, the estimate's
# rule), and never fewer than REPLY_CAP_MIN. Without a cap a small local model that does not
# stop (the untuned SmolLM2-135M at the default temperature on the git requests) ran each
# reply to the context's end: the Generate screen's ETA for the 363 train requests was 1:29:45;
# with the cap the run took 3:56. A typed number wins; a dataset without references, and any
# other backend (a hosted model stops by itself; a reasoning model needs room to reason),
# keep the backend's default.
REPLY_CAP_FACTOR = 4
REPLY_CAP_MIN = 64

# OpenAI's limits on stored-completion metadata; other backends accept the same.
MAX_METADATA_KEYS = 16
MAX_KEY_LENGTH = 64
MAX_VALUE_LENGTH = 512


class FormError(ValueError):
    """A field of the form is wrong; `field` names it, the message says how."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def parse_metadata(text: str) -> dict[str, str]:
    """`task=git role=student note="two words"` → {"task": "git", ...}; commas also separate."""
    try:
        words = shlex.split(text.replace(",", " "))
    except ValueError as error:
        raise FormError("metadata", f"metadata: {error} (close the quotes)") from error
    metadata: dict[str, str] = {}
    for word in words:
        key, sep, value = word.partition("=")
        key = key.strip()
        if not sep or not key:
            raise FormError("metadata", f"metadata: {word!r} is not key=value")
        if len(key) > MAX_KEY_LENGTH:
            raise FormError("metadata", f"metadata: key {key[:20]!r}… is over 64 characters")
        if len(value) > MAX_VALUE_LENGTH:
            raise FormError("metadata", f"metadata: the value of {key!r} is over 512 characters")
        metadata[key] = value
    if len(metadata) > MAX_METADATA_KEYS:
        raise FormError("metadata", f"metadata: at most {MAX_METADATA_KEYS} keys")
    return metadata


def format_metadata(metadata: dict[str, str]) -> str:
    return " ".join(
        f"{key}={shlex.quote(value) if value else value}" for key, value in metadata.items()
    )


def default_metadata(dataset_name: str, role: str) -> dict[str, str]:
    """The recipe's `metadata={"task": ...}`, plus the role so runs can be told apart."""
    metadata = {"task": dataset_name}
    if role:
        metadata["role"] = role
    return metadata


def latest_fine_tuned_model(store: Store) -> str | None:
    for job in store.list_jobs():  # newest first
        if job.status == "succeeded" and job.fine_tuned_model:
            return job.fine_tuned_model
    return None


def run_size(run: RunInfo, dataset: DatasetInfo | None) -> int | None:
    """How many items a run covers, from its dataset's counts (None when unknown)."""
    selection = run.params.get("item_ids")
    if selection:
        return len(selection)
    if dataset is None:
        return None
    return {"": dataset.n_items, "train": dataset.n_train, "eval": dataset.n_eval}.get(
        run.split, dataset.n_items
    )


def reply_cap(longest_reference: int) -> int | None:
    """The max tokens a blank field means for a dataset whose longest reference has this
    many characters (None: no reference, the backend's default)."""
    if longest_reference <= 0:
        return None
    return max(REPLY_CAP_MIN, REPLY_CAP_FACTOR * -(-longest_reference // 4))


def recipe_pool(workspace: Path, dataset_id: int | None) -> list[int] | None:
    """The item ids of the recipe's labelled pool of this dataset (`pool` in
    <workspace>/recipe-state.json), or None when the recipe has chosen none for it. An
    unreadable state file is no pool: the form must open whatever the recipe left behind."""
    try:
        state = json.loads((workspace / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict):
        return None
    pool = state.get("pool")
    owner = state.get("dataset_id")
    if not isinstance(pool, list) or not pool or (owner is not None and owner != dataset_id):
        return None
    ids = [i for i in pool if isinstance(i, int)]
    return ids or None


def _number(field: str, text: str, kind: type, low: float, high: float) -> float | int | None:
    text = text.strip()
    if not text:
        return None
    label = field.replace("_", " ")
    try:
        value = kind(text)
    except ValueError as error:
        what = "a whole number" if kind is int else "a number"
        raise FormError(field, f"{label}: {text!r} is not {what}") from error
    if not low <= value <= high:
        raise FormError(field, f"{label}: must be between {low:g} and {high:g}")
    return value


@dataclass
class RunForm:
    """The form as typed. Empty numbers mean "the backend's default" (or no cap)."""

    dataset_id: int | None
    model: str
    role: str = "student"
    split: str = "all"
    system_prompt: str = ""
    temperature: str = ""
    max_tokens: str = ""
    seed: str = ""
    metadata: str = ""
    retrieve_k: str = "0"
    budget: str = ""
    # The teacher's options: n samples a request and the vote that picks the label, and
    # where retrieved examples come from ("train" or "pool": `pool`, the recipe's ids).
    samples: str = "1"
    vote: str = "normalised"
    examples_from: str = "train"
    pool: list[int] | None = None
    mode: str = "live"  # "live" or "batch"
    # What a blank max tokens means (`reply_cap` of the dataset); None: the backend's default.
    reply_cap: int | None = None

    def batch(self) -> bool:
        """Whether the run goes as batches (a mode the form cannot have is refused)."""
        if self.mode not in MODES:
            raise FormError("mode", f"mode: {self.mode!r} is not live or batch")
        return self.mode == "batch"

    def to_spec(self) -> RunSpec:
        if self.dataset_id is None:
            raise FormError("dataset", "choose a dataset (or create one on the Dataset screen)")
        model = self.model.strip()
        if not model:
            raise FormError("model", "model: give the model to run (pick one or type its name)")
        if self.split not in SPLIT_CHOICES:
            raise FormError("split", f"split: {self.split!r} is not all, train or eval")
        temperature = _number("temperature", self.temperature, float, 0, 2)
        max_tokens = _number("max_tokens", self.max_tokens, int, 1, 1_000_000)
        if max_tokens is None:
            max_tokens = self.reply_cap
        seed = _number("seed", self.seed, int, -(2**63), 2**63 - 1)
        k = _number("few_shot", self.retrieve_k, int, 0, 64) or 0
        samples = int(_number("samples", self.samples, int, 1, MAX_SAMPLES) or 1)
        if samples > 1 and self.vote not in VOTE_RULES:
            raise FormError("vote", f"vote: {self.vote!r} is not one of {', '.join(VOTE_RULES)}")
        retrieve_from = self._retrieve_from() if k else None
        self.budget_cap()
        self.batch()
        return RunSpec(
            dataset_id=self.dataset_id,
            model=model,
            role=self.role,
            system_prompt=self.system_prompt.strip(),
            split=None if self.split == "all" else self.split,
            params=SamplingParams(
                temperature=None if temperature is None else float(temperature),
                max_tokens=None if max_tokens is None else int(max_tokens),
                seed=None if seed is None else int(seed),
            ),
            metadata=parse_metadata(self.metadata),
            retrieve_k=int(k),
            retrieve_from=retrieve_from,
            samples=samples,
            vote=self.vote if samples > 1 else "normalised",
        )

    def _retrieve_from(self) -> list[int] | None:
        if self.examples_from == "train":
            return None
        if self.examples_from != "pool":
            raise FormError(
                "examples_from", f"examples from: {self.examples_from!r} is not train or pool"
            )
        if not self.pool:
            raise FormError(
                "examples_from",
                "examples from: the recipe has no labelled pool for this dataset "
                "(run `distill-tui run` first, or take all train references)",
            )
        return list(self.pool)

    def budget_cap(self) -> float | None:
        text = self.budget.strip().lstrip("$")
        value = _number("budget", text, float, 0, 1e9)
        if value == 0:
            raise FormError("budget", "budget: leave it empty for no cap, or give more than $0")
        return None if value is None else float(value)
