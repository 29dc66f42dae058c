"""The teaching pipeline's parts: the vote over a teacher's samples, the labelled pool, the
shipped git gate, and the share of the teacher's lead recovered."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tui.engine.examples import shipped_path
from tui.engine.graders import parse_grader
from tui.engine.recipe import RecipeError, load_config
from tui.engine.teaching import (
    choose_pool,
    git_gate_grader,
    recovered,
    representative,
    split_validation,
)
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
    items = [(i, f"request number {i}") for i in range(100, 463)]
    for how in ("random", "diverse"):
        pool = choose_pool(items, 0.15, 64, seed=0, how=how)
        assert pool == choose_pool(list(reversed(items)), 0.15, 64, seed=0, how=how)
        assert len(pool) == 54 and set(pool) <= {i for i, _ in items} and pool == sorted(pool)
        assert len(choose_pool(items, 0.5, 64, seed=0, how=how)) == 64
        assert choose_pool(items, 0.0, 64, seed=0, how=how) == []
        assert choose_pool(items[:3], 0.1, 64, seed=0, how=how) != []  # at least one
    assert choose_pool(items, 0.15, 64, seed=1, how="random") != choose_pool(
        items, 0.15, 64, seed=0, how="random"
    )
    pool = choose_pool(items, 0.15, 64, seed=0, how="random")
    train, validation = split_validation(pool, 0.2, seed=0)
    assert len(validation) == 11 and set(train) | set(validation) == set(pool)
    assert not set(train) & set(validation)
    with pytest.raises(ValueError, match="unknown pool choice 'best'"):
        choose_pool(items, 0.15, 64, seed=0, how="best")


# Six things a user asks for, some much more often than others, each said a few ways.
INTENTS = {
    "branch": "create a new branch called login",
    "stash": "stash my uncommitted changes",
    "log": "show the commit history briefly",
    "tag": "tag this release as the first version",
    "remote": "add a remote named upstream",
    "blame": "who changed each line of main.py",
}
COUNTS = {"branch": 40, "stash": 25, "log": 20, "tag": 6, "remote": 5, "blame": 4}
WAYS = ("please", "now", "for me", "quickly", "")


def intent_items() -> tuple[list[tuple[int, str]], dict[int, str]]:
    items, intent_of = [], {}
    for intent, count in COUNTS.items():
        for k in range(count):
            items.append((len(items) + 1, f"{INTENTS[intent]} {WAYS[k % len(WAYS)]}"))
            intent_of[len(items)] = intent
    return items, intent_of


def test_a_diverse_pool_covers_the_rare_requests_a_random_one_misses() -> None:
    items, intent_of = intent_items()
    size = len(COUNTS)
    diverse = choose_pool(items, size / len(items), 64, seed=0)
    assert {intent_of[i] for i in diverse} == set(COUNTS)
    # Random pools of the same size leave out a rare request kind for most seeds.
    missed = sum(
        {intent_of[i] for i in choose_pool(items, size / len(items), 64, seed, how="random")}
        != set(COUNTS)
        for seed in range(20)
    )
    assert missed >= 15


def test_a_diverse_pool_reads_the_requests_only_and_ignores_the_seed() -> None:
    items, _ = intent_items()
    assert choose_pool(items, 0.1, 64, seed=0) == choose_pool(items, 0.1, 64, seed=7)
    # A request with no words at all is never worth labelling first.
    assert 999 not in choose_pool([*items, (999, "?!")], 0.1, 64, seed=0)


def test_a_diverse_pool_of_a_large_dataset_is_chosen_from_a_seeded_sample() -> None:
    items = [(i, f"request {i % 97} about topic {i % 13}") for i in range(5_000)]
    pool = choose_pool(items, 0.15, 64, seed=0)
    assert len(pool) == 64 and pool == choose_pool(items, 0.15, 64, seed=0)
    assert pool != choose_pool(items, 0.15, 64, seed=1)  # another sample of candidates


def test_representative_picks_the_centre_first() -> None:
    texts = ["undo the last commit", "undo the last commit now", "undo commit", "stash"]
    assert representative(texts, 1) == [0]
    assert representative(texts, 2) == [0, 3]


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


def test_the_recipe_config_names_how_the_pool_is_chosen(tmp_path: Path) -> None:
    path = tmp_path / "recipe.toml"
    path.write_text('[recipe]\nteacher_pool_choice = "random"\n')
    assert load_config(path).teacher_pool_choice == "random"
    assert load_config(None).teacher_pool_choice == "diverse"
    path.write_text('[recipe]\nteacher_pool_choice = "best"\n')
    with pytest.raises(RecipeError, match=r"teacher_pool_choice: .*'diverse' or 'random'"):
        load_config(path)
