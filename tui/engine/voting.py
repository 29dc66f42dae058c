"""Self-consistency for a teacher: sample a request several times, keep the answer most samples
agree on, and record how many agreed (the teacher's confidence in that label).

"Agree" is decided by a grader's notion of equality, not by string identity: for commands,
`git log -n 5 --oneline` and `git log --oneline -n5` are one answer (command_match's
shell-aware comparison); for other text, answers equal after normalisation (case, spacing,
punctuation at the ends)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tui.engine.graders import CommandMatch, case, normalize_text

Same = Callable[[str, str], bool]
VOTE_RULES = ("command_match", "normalised")


@dataclass(frozen=True)
class Vote:
    answer: str  # the first sample of the largest group ("" when every sample was empty)
    share: float  # samples in that group / all samples, 0..1
    votes: int
    samples: int


# Prepared once (templates compiled, verdicts cached): a vote compares every pair of samples.
_COMMAND_MATCH = CommandMatch(type="command_match").scorer()


def same_command(a: str, b: str) -> bool:
    """The two replies hold equivalent commands: command_match's own verdict, `b` taken as
    the reference."""
    return _COMMAND_MATCH(case(a, b)).passed is True


def _plain(text: str) -> str:
    return " ".join(normalize_text(text).casefold().split()).strip(" .!?;:,")


def same_text(a: str, b: str) -> bool:
    return _plain(a) == _plain(b) != ""


def rule(name: str) -> Same:
    if name == "command_match":
        return same_command
    if name == "normalised":
        return same_text
    raise ValueError(f"unknown vote rule {name!r} (known: {', '.join(VOTE_RULES)})")


def vote(
    samples: Sequence[str], same: Same, *, admissible: Callable[[str], bool] | None = None
) -> Vote:
    """The answer of the largest group of equivalent samples. Empty samples never win. With
    `admissible`, only samples it accepts can win, but every sample counts in the share: a
    label that 3 of 8 samples gave, the other 5 malformed, has confidence 3/8."""
    groups: list[list[str]] = []
    for sample in samples:
        if not sample.strip() or (admissible is not None and not admissible(sample)):
            continue
        for group in groups:
            if sample == group[0] or same(sample, group[0]):
                group.append(sample)
                break
        else:
            groups.append([sample])
    if not groups:
        return Vote("", 0.0, 0, len(samples))
    # The largest group; ties go to the group that appeared first (the first sample is the
    # most likely one when the first is drawn greedily).
    best = max(groups, key=len)
    return Vote(best[0], len(best) / len(samples), len(best), len(samples))
