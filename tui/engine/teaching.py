"""How a teacher teaches: which labelled examples it may see (the pool), how it answers (n
samples and a vote), and which of its answers are worth training on (the gate).

The seed's dataset has requests only; a real user has at most a small set of worked examples.
So an honest offline recipe lets the teaching pipeline see the references of a small labelled
pool of the train split and no others: the pool's examples are the teacher's demonstrations
and are trained on as they are; the other train requests are labelled by the teacher, and
their references (where the dataset has them) are used only to report how good the teacher's
labels were.

Measured and not adopted: a teacher made of several pool-only students (the same 54-example
pool, training seeds 0-3), their greedy answers put to a vote, labelled 28 of 229 held-out
train requests right against 21-33 for each student alone (mean 26), and twelve such students
(three loss settings x four seeds) 30; one of the twelve was right on 53. Four trainings for
a label or two more in a hundred: the teacher stays one pool-only student, sampled n times.

Measured and not adopted: choosing among the samples by how well each explains its request
(noisy-channel reranking: log P(request | command) under the untuned SmolLM2, given pool
examples the other way round, "Command: ... Request: ..."), instead of the vote. On one
recipe run's 309 labelled train requests (the pool's 54 references as the examples; the
other references only measured): the vote 33 right, the channel 40 with 12 examples and 42
with all 54, the channel plus the vote's counts 40-41; one of the samples was right on 60.
About 0.6 s a request on two cores (the examples' prefix evaluated once). A label or three
more in a hundred, as above; and it needs the prompt's log-probabilities, which the chat API
(OpenAI's, the local backend's) does not give."""

from __future__ import annotations

import heapq
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from tui.engine.examples import shipped_path
from tui.engine.retrieval import cosine, tfidf_vectors

GIT_GATE_FILE = "git_gate.py"


PoolChoice = Literal["diverse", "random"]
POOL_CHOICES: tuple[str, ...] = get_args(PoolChoice)
# Facility location compares every pair of candidates: 600 requests are 180,000 cosines, well
# under a second; past that a seeded random 600 (or twice the pool) stand in for the rest.
DIVERSE_CANDIDATES = 600


def choose_pool(
    items: Sequence[tuple[int, str]],
    fraction: float,
    limit: int,
    seed: int,
    *,
    how: PoolChoice = "diverse",
) -> list[int]:
    """Which labelled train items (id, request) form the pool: `fraction` of them, at most
    `limit`, at least one when there is any. Sorted, so the state file reads well.

    "random": a reproducible random share. "diverse" (the default): the requests that best
    stand for all the others — greedy facility location on TF-IDF cosine, each pick the one
    that most raises the sum over every request of its similarity to the nearest pick (the
    selective annotation of Su et al., 2022: which few items to label). It reads the
    requests only, never the references, so a user could make the same choice before
    writing a single answer, and up to DIVERSE_CANDIDATES items it does not depend on the
    seed.

    Measured on the shipped git requests (80 train requests held out first, pools of 54
    from the other 283, full fine-tunes, four training seeds each): the diverse pool's
    teacher (its pool-only student, 5 samples and the vote) labelled 28, 20, 30 and 29 of
    the other 229 train requests right, a random pool's 22, 23, 23 and 21 — what
    distillation is fed, a fifth more right labels. The pool-only students themselves did
    not differ: 11, 5, 6 and 8 exact of the 80 held-out requests against 8, 6, 9 and 6 (the
    training seed moves a 54-example student more than the pool does). A k-center pool,
    the most spread-out requests, did no better than random (6 of 80, one seed)."""
    if fraction <= 0 or not items:
        return []
    if how not in POOL_CHOICES:
        raise ValueError(f"unknown pool choice {how!r} (known: {', '.join(POOL_CHOICES)})")
    ordered = sorted(items)
    size = min(len(ordered), max(1, min(limit, round(len(ordered) * fraction))))
    if how == "random":
        return sorted(i for i, _ in random.Random(seed).sample(ordered, size))
    candidates = ordered
    most = max(DIVERSE_CANDIDATES, 2 * size)
    if len(candidates) > most:
        candidates = sorted(random.Random(seed).sample(ordered, most))
    picks = representative([text for _, text in candidates], size)
    return sorted(candidates[index][0] for index in picks)


def representative(texts: Sequence[str], size: int) -> list[int]:
    """Indices of `size` texts chosen by greedy facility location (see `choose_pool`), in
    the order picked. Gains only shrink as picks are added, so a pick whose stale gain still
    tops the heap after recomputing is the best (lazy greedy); ties go to the earlier text."""
    vectors = tfidf_vectors(texts)
    n = len(vectors)
    similar = [[0.0] * n for _ in range(n)]
    for i in range(n):
        similar[i][i] = 1.0 if vectors[i] else 0.0
        for j in range(i + 1, n):
            similar[i][j] = similar[j][i] = cosine(vectors[i], vectors[j])
    nearest = [0.0] * n  # each text's similarity to its nearest pick so far
    heap = [(-sum(row), j) for j, row in enumerate(similar)]
    heapq.heapify(heap)
    chosen: list[int] = []
    while heap and len(chosen) < size:
        _, j = heapq.heappop(heap)
        gain = sum(s - b for s, b in zip(similar[j], nearest, strict=True) if s > b)
        if heap and gain < -heap[0][0] - 1e-12:
            heapq.heappush(heap, (-gain, j))
            continue
        chosen.append(j)
        nearest = [max(b, s) for s, b in zip(similar[j], nearest, strict=True)]
    return chosen


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
