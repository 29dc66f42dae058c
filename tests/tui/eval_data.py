"""A small, fixed workspace for the Evals and Compare screens: a git dataset and three runs
over it (the student's baseline, the teacher, the fine-tuned student), written through the
store as generation would write them. Every figure is fixed, so a snapshot of a screen is
the same on every machine."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tui.engine.datasets import ItemDraft
from tui.engine.store import Store

DATASET = "git-requests"
PROMPT = "Reply with the single git command that does what the user asks."
ITEMS = (
    ("Show the working tree status", "git status"),
    ("Create a new branch called feature-login", "git checkout -b feature-login"),
    ("Stage every change in the current directory", "git add ."),
    ("Commit the staged changes with the message 'fix typo'", "git commit -m 'fix typo'"),
    ("Push the main branch to origin", "git push origin main"),
    ("Undo the last commit but keep the changes", "git reset --soft HEAD~1"),
    ("List every tag", "git tag --list"),
    ("Delete the local branch old-ui", "git branch -d old-ui"),
    ("Show the last five commits on one line each", "git log --oneline -5"),
    ("Stash the current changes", "git stash"),
)
# Three runs' outputs, item by item. Whether each is right is decided below by hand (VERDICTS),
# from the graders' rules, not read back from what the app computes.
OUTPUTS = {
    "student": (
        "git status",
        "git branch feature-login",
        "git add -A",
        'git commit -m "fix typo"',
        "git push",
        "git reset HEAD~1",
        "git tag",
        "git branch -d old-ui",
        "git log -5",
        "git stash save",
    ),
    "teacher": (
        "git status",
        "git checkout -b feature-login",
        "git add .",
        "git commit -m 'fix typo'",
        "git push origin main",
        "git reset --soft HEAD~1",
        "git tag --list",
        "git branch -d old-ui",
        "git log --oneline -5",
        "git stash push",
    ),
    "fine-tuned": (
        "git status",
        "git checkout -b feature-login",
        "git add .",
        "git commit --message 'fix typo'",
        "git push origin main",
        "git reset --soft HEAD~1",
        "git tag --list",
        "git branch -D old-ui",
        "git log --oneline -5",
        "git stash",
    ),
}
# (command match, exact match) of each output above, by the graders' stated rules: exact
# match is the same text; command match is the same program, subcommand, options (in any
# order, with their aliases: -m is --message, `git stash` is `git stash push`) and arguments
# (modulo quoting). What git would do by default does not count: `git tag` is not
# `git tag --list`.
VERDICTS: dict[str, tuple[tuple[bool, bool], ...]] = {
    "student": (
        (True, True),
        (False, False),  # creates the branch but does not switch to it
        (False, False),  # -A: every change in the repository, not the current directory's
        (True, False),  # the same message, quoted differently
        (False, False),  # no remote, no branch
        (False, False),  # without --soft the index is reset too
        (False, False),  # --list missing
        (True, True),
        (False, False),  # --oneline missing
        (False, False),  # save is not stash push
    ),
    "teacher": (
        *((True, True),) * 9,
        (True, False),  # stash push is what git stash means
    ),
    "fine-tuned": (
        (True, True),
        (True, True),
        (True, True),
        (True, False),  # --message is -m
        (True, True),
        (True, True),
        (True, True),
        (False, False),  # -D forces the delete: a regression, the baseline had it right
        (True, True),
        (True, True),
    ),
}
GRADER_INDEX = {"command match": 0, "exact match": 1}


def passes(role: str, grader: str) -> int:
    """How many of the role's outputs the grader passes, by VERDICTS."""
    return sum(v[GRADER_INDEX[grader]] for v in VERDICTS[role])


def pass_rate(role: str, grader: str) -> float:
    return passes(role, grader) / len(ITEMS)


def percent(role: str, grader: str) -> str:
    """The pass rate as the screens show it ("30.0%")."""
    return f"{100 * pass_rate(role, grader):.1f}%"


MODELS = {
    "student": "gpt-4o-mini",
    "teacher": "gpt-4o",
    "fine-tuned": "ft:gpt-4o-mini:local:distill:abc123",
}
LATENCY = {"student": 410.0, "teacher": 1250.0, "fine-tuned": 380.0}

GIT_GRADERS = [
    {"type": "command_match", "name": "command match"},
    {
        "type": "string_check",
        "name": "exact match",
        "input": "{{sample.output_text}}",
        "reference": "{{item.reference}}",
        "operation": "eq",
    },
]


@dataclass(frozen=True)
class EvalWorkspace:
    dataset_id: int
    runs: dict[str, int]  # role → run id


def build(
    store: Store, roles: tuple[str, ...] = ("student", "teacher", "fine-tuned")
) -> EvalWorkspace:
    dataset_id = store.create_dataset(
        DATASET, PROMPT, [ItemDraft(request, reference, "eval") for request, reference in ITEMS]
    )
    items = store.items(dataset_id)
    runs: dict[str, int] = {}
    for role in roles:
        completions = []
        for i, (item, output) in enumerate(zip(items, OUTPUTS[role], strict=True)):
            completions.append(
                (
                    item.id,
                    {
                        "output": output,
                        "status": "done",
                        "prompt_tokens": 40 + i,
                        "completion_tokens": 6 + i % 3,
                        "latency_ms": LATENCY[role] + 10 * i,
                        "finish_reason": "stop",
                    },
                )
            )
        runs[role] = store.add_finished_run(
            completions,
            dataset_id=dataset_id,
            model=MODELS[role],
            role=role,
            system_prompt=PROMPT,
        )
    return EvalWorkspace(dataset_id, runs)


def versus(role: str, baseline: str, grader: str) -> str:
    """A run's pass rate and its difference from the baseline's, as the Compare screen shows
    them ("90.0% +60.0")."""
    points = 100 * (pass_rate(role, grader) - pass_rate(baseline, grader))
    return f"{percent(role, grader)} {points:+.1f}"


def lead_recovered(grader: str = "exact match") -> float:
    """The share of the teacher's lead over the untuned student that fine-tuning recovered."""
    student, teacher, tuned = (pass_rate(r, grader) for r in ("student", "teacher", "fine-tuned"))
    return (tuned - student) / (teacher - student)


def changed_items(baseline: str, better: bool) -> list[int]:
    """Positions (1-based) of the items where another run passes a grader the baseline fails
    (better) or fails one it passes (not better)."""
    out = []
    for i, base in enumerate(VERDICTS[baseline]):
        for role, verdicts in VERDICTS.items():
            if role != baseline and any(
                (v and not b) if better else (b and not v)
                for v, b in zip(verdicts[i], base, strict=True)
            ):
                out.append(i + 1)
                break
    return out


# A python grader that passes each completion (score 1) when the test lets it: at once while
# `<gate>/open` exists, or by taking one of the tickets the test put in `<gate>/tickets`;
# otherwise it waits. A test holds grading mid-way this way, where a grader sleeping a while
# leaves how many grades are decided before a key press to the machine's speed. Its own time
# limit (600 s, the most a grader may have) keeps a held grade from being stopped as too slow.
_GATED = """\
import os, time

GATE = {gate!r}


def grade(sample, item):
    tickets = os.path.join(GATE, "tickets")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if os.path.exists(os.path.join(GATE, "open")):
            return 1.0
        for name in sorted(os.listdir(tickets)):
            try:
                os.remove(os.path.join(tickets, name))
            except FileNotFoundError:
                continue  # another grade took it
            return 1.0
        time.sleep(0.02)
    return 0.0
"""


def gated_grader(gate: Path, tickets: int = 0, is_open: bool = False) -> dict[str, object]:
    """The gated grader's config, its gate made in `gate` with `tickets` tickets (and open or
    not): open it with `(gate / "open").touch()`, hold it with `.unlink()`."""
    (gate / "tickets").mkdir(parents=True)
    for i in range(tickets):
        (gate / "tickets" / str(i)).touch()
    if is_open:
        (gate / "open").touch()
    source = _GATED.format(gate=str(gate))
    return {"type": "python", "name": "gated", "source": source, "timeout": 600}
