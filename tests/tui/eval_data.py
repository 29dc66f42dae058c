"""A small, fixed workspace for the Evals and Compare screens: a git dataset and three runs
over it (the student's baseline, the teacher, the fine-tuned student), written through the
store as generation would write them. Every figure is fixed, so a snapshot of a screen is
the same on every machine."""

from __future__ import annotations

from dataclasses import dataclass

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
# The student's baseline: right on 4 of 10; the teacher: right on 9; the fine-tuned student:
# right on 8, one of which the baseline got right and it gets wrong (a regression).
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
