"""The example datasets that ship with distill-tui, found wherever the app is installed."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from tui.engine.datasets import ItemDraft
from tui.engine.store import Store

GIT_DATASET_NAME = "git-requests"
GIT_SYSTEM_PROMPT = (
    "You are a git expert. Reply with the single git command that does what the user asks, "
    "and nothing else."
)
# A fixed seed so every workspace gets the same train/eval split of the shipped dataset.
GIT_SPLIT_SEED = 0
GIT_EVAL_FRACTION = 0.2


def shipped_path(name: str = "git_requests.json") -> Path:
    """data/<name> in a source checkout or editable install; tui/_data/<name> in a wheel."""
    source = Path(__file__).resolve().parents[2] / "data" / name
    if source.is_file():
        return source
    return Path(str(resources.files("tui") / "_data" / name))


def load_git_requests() -> list[ItemDraft]:
    data = json.loads(shipped_path().read_text(encoding="utf-8"))
    requests = data["requests"]
    references = data.get("references") or [""] * len(requests)
    return [ItemDraft(r, ref) for r, ref in zip(requests, references, strict=True)]


def ensure_shipped_dataset(store: Store) -> int | None:
    """On a workspace with no datasets, add the shipped git dataset (split 80/20, seed 0).

    Returns its id, or None when the workspace already had datasets."""
    if store.list_datasets():
        return None
    dataset_id = store.create_dataset(GIT_DATASET_NAME, GIT_SYSTEM_PROMPT, load_git_requests())
    store.random_split(dataset_id, GIT_EVAL_FRACTION, GIT_SPLIT_SEED)
    return dataset_id
