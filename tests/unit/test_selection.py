"""The Completions filter's `conf:` word and how a voted completion is shown: its share as
"agreed/samples" and which samples agreed with the answer kept."""

from __future__ import annotations

import json

import pytest

from tui.engine.datasets import ItemDraft
from tui.engine.selection import (
    confidence_text,
    find_completions,
    parse_confidence,
    parse_filter,
    sample_votes,
)
from tui.engine.store import Store


@pytest.mark.parametrize(
    ("text", "share"), [("0.75", 0.75), ("75%", 0.75), ("6/8", 0.75), ("1", 1.0), ("0", 0.0)]
)
def test_a_share_as_people_write_it(text: str, share: float) -> None:
    assert parse_confidence(text) == pytest.approx(share)


@pytest.mark.parametrize("text", ["high", "3/0", "1.5", "120%", "-0.1"])
def test_a_share_that_is_not_one(text: str) -> None:
    with pytest.raises(ValueError, match=repr(text)):
        parse_confidence(text)


def test_conf_filter_words() -> None:
    query = parse_filter("conf:5/8 role:teacher branch")
    assert query.min_confidence == pytest.approx(0.625)
    assert (query.roles, query.text, query.problems) == (["teacher"], "branch", [])
    assert parse_filter("branch").min_confidence is None
    bad = parse_filter("conf:lots")
    assert bad.min_confidence is None
    assert bad.problems and "conf:" in bad.problems[0]


def test_conf_keeps_voted_completions_at_least_that_sure(store: Store) -> None:
    items = [ItemDraft(f"Create the branch b{i}", f"git branch b{i}") for i in range(4)]
    dataset = store.create_dataset("git", items=items)
    voted = store.create_run(
        dataset_id=dataset, model="gpt-4o", role="teacher", params={"samples": 8}
    )
    once = store.create_run(dataset_id=dataset, model="gpt-4o-mini", role="student")
    for n, item in enumerate(store.items(dataset)):
        agreed = (8, 6, 5, 3)[n]
        samples = [f"git branch b{n}"] * agreed + ["git status"] * (8 - agreed)
        store.save_completion(
            voted,
            item.id,
            output=f"git branch b{n}",
            status="done",
            confidence=agreed / 8,
            samples=json.dumps(samples),
        )
        store.save_completion(once, item.id, output=f"git branch b{n}", status="done")

    found = find_completions(store, parse_filter("conf:5/8"))
    # Exactly the share 5/8 is kept; a run that sampled once has no share and is left out.
    assert [confidence_text(r) for r in found.completions] == ["8/8", "6/8", "5/8"]
    assert set(found.runs) == {voted}
    assert len(find_completions(store, parse_filter("")).completions) == 8
    assert [r.id for r in find_completions(store, parse_filter("conf:0.8")).completions] == [
        found.completions[0].id
    ]


def test_confidence_text_and_which_samples_agreed(store: Store) -> None:
    dataset = store.create_dataset("git", items=[ItemDraft("Show the last 5 commits", "")])
    run_id = store.create_run(
        dataset_id=dataset, model="gpt-4o", params={"samples": 4, "vote": "command_match"}
    )
    item = store.items(dataset)[0]
    samples = ["git log -n 5", "git log -n5 ", "git log --oneline", ""]
    store.save_completion(
        run_id,
        item.id,
        output="git log -n 5",
        status="done",
        confidence=0.5,
        samples=json.dumps(samples),
    )
    row = store.completions(run_id)[0]
    assert confidence_text(row) == "2/4"
    # command_match: "-n5" is the same flag as "-n 5"; an empty sample never agrees.
    assert sample_votes(store.get_run(run_id), row) == [
        ("git log -n 5", True),
        ("git log -n5 ", True),
        ("git log --oneline", False),
        ("", False),
    ]
    single = store.create_run(dataset_id=dataset, model="gpt-4o-mini")
    store.save_completion(single, item.id, output="git log -5", status="done")
    assert confidence_text(store.completions(single)[0]) == ""
