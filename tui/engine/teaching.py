"""How a teacher teaches: which labelled examples it may see (the pool), how it answers (n
samples and a vote), and which of its answers are worth training on (the gate).

The seed's dataset has requests only; a real user has at most a small set of worked examples.
So an honest offline recipe lets the teaching pipeline see the references of a small labelled
pool of the train split and no others: the pool's examples are the teacher's demonstrations
and are trained on as they are; the other train requests are labelled by the teacher, and
their references (where the dataset has them) are used only to report how good the teacher's
labels were."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tui.engine.examples import shipped_path

GIT_GATE_FILE = "git_gate.py"


def choose_pool(item_ids: Sequence[int], fraction: float, limit: int, seed: int) -> list[int]:
    """A reproducible random share of the labelled train items: `fraction` of them, at most
    `limit`, at least one when there is any. Sorted, so the state file reads well."""
    if fraction <= 0 or not item_ids:
        return []
    size = max(1, min(limit, round(len(item_ids) * fraction)))
    return sorted(random.Random(seed).sample(sorted(item_ids), min(size, len(item_ids))))


def split_validation(
    pool: Sequence[int], fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """(train, validation) of a pool: the validation share judges the rounds of expert
    iteration and is never trained on."""
    if fraction <= 0 or len(pool) < 5:
        return list(pool), []
    order = sorted(pool)
    random.Random(seed + 1).shuffle(order)
    size = max(1, round(len(order) * fraction))
    return sorted(order[size:]), sorted(order[:size])


def git_gate_grader() -> dict[str, Any]:
    """The shipped reference-free gate for git commands, as a python grader config."""
    return {
        "type": "python",
        "name": "one well-formed git command",
        "source": shipped_path(GIT_GATE_FILE).read_text(encoding="utf-8"),
        "pass_threshold": 1.0,
    }


@dataclass(frozen=True)
class Kept:
    """What the gate did to a teacher's labels."""

    labelled: int
    kept: int
    dropped: dict[str, int]  # reason → how many

    def note(self) -> str:
        reasons = ", ".join(
            f"{n} {why}" for why, n in sorted(self.dropped.items(), key=lambda x: -x[1])
        )
        return f"kept {self.kept} of {self.labelled} labels" + (
            f" (dropped: {reasons})" if reasons else ""
        )


def recovered(untuned: float | None, tuned: float | None, teacher: float | None) -> float | None:
    """The share of the teacher's lead over the untuned student that fine-tuning recovered:
    (tuned − untuned) / (teacher − untuned); None when the teacher has no lead."""
    if untuned is None or tuned is None or teacher is None or teacher <= untuned:
        return None
    return (tuned - untuned) / (teacher - untuned)
