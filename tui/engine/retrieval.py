"""Find the k train-split examples most similar to a request, to give a teacher as prior chat
turns (context distillation). TF-IDF cosine over words: no model, no download, and fast for
the thousands of short requests a distillation dataset holds."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

_WORD = re.compile(r"[\w'-]+", re.UNICODE)


def _terms(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.casefold()) if len(w) > 1 or w.isdigit()]


def tfidf_vectors(texts: Sequence[str]) -> list[dict[str, float]]:
    """Each text as a unit-length TF-IDF vector over its words (the index's own weighting)."""
    return SimilarExamples([(text, "") for text in texts]).vectors


def cosine(a: dict[str, float], b: dict[str, float]) -> float:
    """The cosine of two unit-length vectors from `tfidf_vectors`."""
    if len(a) > len(b):
        a, b = b, a
    return sum(weight * b.get(term, 0.0) for term, weight in a.items())


class SimilarExamples:
    """An index over (input, reference) examples; `top(query, k)` gives the nearest ones."""

    def __init__(self, examples: Sequence[tuple[str, str]]) -> None:
        self.examples = list(examples)
        docs = [Counter(_terms(text)) for text, _ in self.examples]
        df: Counter[str] = Counter()
        for doc in docs:
            df.update(doc.keys())
        n = len(docs) or 1
        self._idf = {term: math.log((1 + n) / (1 + count)) + 1 for term, count in df.items()}
        self.vectors = [self._weigh(doc) for doc in docs]
        self._postings: dict[str, list[int]] = {}
        for index, vector in enumerate(self.vectors):
            for term in vector:
                self._postings.setdefault(term, []).append(index)

    def _weigh(self, counts: Counter[str]) -> dict[str, float]:
        vector = {t: c * self._idf.get(t, 1.0) for t, c in counts.items()}
        norm = math.sqrt(sum(v * v for v in vector.values())) or 1.0
        return {t: v / norm for t, v in vector.items()}

    def top(self, query: str, k: int, *, exclude: str | None = None) -> list[tuple[str, str]]:
        """The k examples most similar to `query`, best first; `exclude` drops an example
        whose input equals it (a train item must not see its own answer)."""
        if k <= 0 or not self.examples:
            return []
        vector = self._weigh(Counter(_terms(query)))
        scores: dict[int, float] = {}
        for term, weight in vector.items():
            for index in self._postings.get(term, ()):
                scores[index] = scores.get(index, 0.0) + weight * self.vectors[index][term]
        ranked = sorted(scores, key=lambda i: (-scores[i], i))
        # Pad with the first examples when too few share a word, so k turns are always given.
        ranked += [i for i in range(len(self.examples)) if i not in scores]
        chosen: list[tuple[str, str]] = []
        for index in ranked:
            example = self.examples[index]
            if exclude is not None and example[0] == exclude:
                continue
            chosen.append(example)
            if len(chosen) == k:
                break
        return chosen
