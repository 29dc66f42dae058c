"""The teaching pipeline's parts: the vote over a teacher's samples, the labelled pool, the
shipped git gate, and the share of the teacher's lead recovered."""

from __future__ import annotations

import json
import shutil

import pytest

from tui.engine.examples import shipped_path
from tui.engine.graders import parse_grader
from tui.engine.teaching import choose_pool, git_gate_grader, recovered, split_validation
from tui.engine.voting import rule, same_command, vote


def test_vote_groups_equivalent_commands_and_reports_the_share() -> None:
    samples = [
        "git log -n 5 --oneline",
        "git log --oneline -n 5",
        "git log --oneline -n5",
        "git show HEAD",
        "",
    ]
    verdict = vote(samples, same_command)
    assert verdict.answer == "git log -n 5 --oneline"
    assert (verdict.votes, verdict.samples, verdict.share) == (3, 5, pytest.approx(0.6))


def test_vote_ties_go_to_the_first_group_and_empty_samples_never_win() -> None:
    assert vote(["git status", "git stash"], same_command).answer == "git status"
    nothing = vote(["", "  "], same_command)
    assert (nothing.answer, nothing.share) == ("", 0.0)


def test_vote_with_an_admissibility_check_counts_every_sample_in_the_share() -> None:
    samples = ["git unstage a.txt", "git unstage a.txt", "git restore --staged a.txt"]
    verdict = vote(samples, same_command, admissible=lambda s: "unstage" not in s)
    assert verdict.answer == "git restore --staged a.txt"
    assert verdict.share == pytest.approx(1 / 3)


def test_normalised_vote_for_free_text() -> None:
    verdict = vote(["Paris.", "paris", "Lyon"], rule("normalised"))
    assert (verdict.answer, verdict.votes) == ("Paris.", 2)
    with pytest.raises(ValueError, match="unknown vote rule"):
        rule("majority")


def test_pool_is_reproducible_bounded_and_a_share_of_the_items() -> None:
    items = list(range(100, 463))
    pool = choose_pool(items, 0.15, 64, seed=0)
    assert pool == choose_pool(list(reversed(items)), 0.15, 64, seed=0)
    assert len(pool) == 54 and set(pool) <= set(items) and pool == sorted(pool)
    assert len(choose_pool(items, 0.5, 64, seed=0)) == 64
    assert choose_pool(items, 0.0, 64, seed=0) == []
    assert choose_pool(items, 0.15, 64, seed=1) != pool
    train, validation = split_validation(pool, 0.2, seed=0)
    assert len(validation) == 11 and set(train) | set(validation) == set(pool)
    assert not set(train) & set(validation)


def test_recovered_share_of_the_teachers_lead() -> None:
    assert recovered(0.0, 0.3, 0.4) == pytest.approx(0.75)
    assert recovered(0.1, 0.1, 0.1) is None  # no lead to recover
    assert recovered(None, 0.3, 0.4) is None


@pytest.mark.parametrize(
    ("request_text", "reply", "kept"),
    [
        ("Create a new branch called 'feature-login'.", "git checkout -b feature-login", True),
        ("Create a new branch called 'feature-login'.", "git checkout -b feature", False),
        ("Unstage package.json.", "git unstage package.json", False),
        ("Unstage package.json.", "git restore --staged package.json", True),
        ("Unstage package.json.", "Here is the command:\ngit restore --staged package.json", False),
        ("Show commit a1b2c3d.", "git show a1b2c3d", True),
        ("Show commit a1b2c3d.", "git show HEAD", False),
        (
            "Create a branch named docs-update.",
            "git checkout -b docs-update-docs-update-docs-update",
            False,
        ),
        ("I'd like to see what's staged.", "git status", True),
    ],
)
def test_git_gate_keeps_well_formed_commands_that_carry_the_requests_names(
    request_text: str, reply: str, kept: bool
) -> None:
    grader = parse_grader(git_gate_grader())
    assert grader.type == "python"
    namespace: dict[str, object] = {}
    exec(compile(git_gate_grader()["source"], "git_gate.py", "exec"), namespace)
    grade = namespace["grade"]
    assert callable(grade)
    score = grade({"output_text": reply}, {"input": request_text, "reference": ""})
    assert (score == 1.0) is kept


@pytest.mark.skipif(shutil.which("git") is None, reason="the option check asks the installed git")
@pytest.mark.parametrize(
    ("reply", "why"),
    [
        ("git checkout --branch feature-login", "git checkout has no option --branch"),
        ("git branch --new feature-login", "git branch has no option --new"),
        ("git add -x feature-login", "git add has no option -x"),
        ("git checkout -b feature-login", None),
        ("git commit --amend --no-edit feature-login", None),  # --no-X of a listed --X
        ("git push --force-with-lease origin feature-login", None),
        ("git log --graph --oneline feature-login", None),  # log's -h lists few of its options
    ],
)
def test_git_gate_asks_git_which_options_a_subcommand_has(reply: str, why: str | None) -> None:
    namespace: dict[str, object] = {}
    exec(compile(git_gate_grader()["source"], "git_gate.py", "exec"), namespace)
    check = namespace["check"]
    assert callable(check)
    assert check("Make a branch called 'feature-login'.", reply) == why


def test_git_gate_keeps_every_shipped_train_reference() -> None:
    """The gate must not drop right answers: every reference of the shipped train split
    passes it (the eval split is not looked at)."""
    namespace: dict[str, object] = {}
    exec(compile(git_gate_grader()["source"], "git_gate.py", "exec"), namespace)
    check = namespace["check"]
    assert callable(check)
    data = json.loads(shipped_path().read_text(encoding="utf-8"))
    from random import Random

    order = list(range(len(data["requests"])))
    Random(0).shuffle(order)  # the shipped split (examples.GIT_SPLIT_SEED, 20 % eval)
    train = sorted(order[round(len(order) * 0.2) :])
    refused = [
        (data["requests"][i], data["references"][i])
        for i in train
        if check(data["requests"][i], data["references"][i])
    ]
    assert refused == []
