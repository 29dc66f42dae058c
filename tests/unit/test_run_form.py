"""The Generate form's teacher options as the engine reads them: n samples a request with the
vote that picks the label, where retrieved examples come from (all train references or the
recipe's labelled pool), and an estimate that pays for every sample."""

from __future__ import annotations

import json

import pytest

from tui.engine.datasets import ItemDraft
from tui.engine.generation import PromptBuilder, create_run, estimate_run, estimate_spec
from tui.engine.run_form import FormError, RunForm, recipe_pool, reply_cap
from tui.engine.settings import Price
from tui.engine.store import Store

PRICE = Price(input=2.5, output=10.0)


@pytest.fixture
def dataset(store: Store) -> int:
    items = [
        ItemDraft(f"Create a branch called topic-{i}", f"git branch topic-{i}", "train")
        for i in range(6)
    ] + [
        ItemDraft(f"Delete the branch old-{i}", f"git branch -d old-{i}", "eval") for i in range(2)
    ]
    return store.create_dataset("git", "Reply with one git command.", items)


def test_samples_and_vote_become_the_run_spec(dataset: int) -> None:
    spec = RunForm(dataset, "gpt-4o", role="teacher", samples="5", vote="command_match").to_spec()
    assert (spec.samples, spec.vote) == (5, "command_match")
    # One sample: no vote to take, whatever the (hidden) vote box says.
    spec = RunForm(dataset, "gpt-4o", samples="1", vote="command_match").to_spec()
    assert (spec.samples, spec.vote) == (1, "normalised")
    assert RunForm(dataset, "gpt-4o", samples="").to_spec().samples == 1


@pytest.mark.parametrize(
    ("samples", "vote", "field", "message"),
    [
        ("17", "normalised", "samples", "samples: must be between 1 and 16"),
        ("0", "normalised", "samples", "samples: must be between 1 and 16"),
        ("two", "normalised", "samples", "samples: 'two' is not a whole number"),
        ("4", "majority", "vote", "vote: 'majority' is not one of command_match, normalised"),
    ],
)
def test_wrong_samples_or_vote_name_the_field(
    dataset: int, samples: str, vote: str, field: str, message: str
) -> None:
    with pytest.raises(FormError, match=message) as caught:
        RunForm(dataset, "gpt-4o", samples=samples, vote=vote).to_spec()
    assert caught.value.field == field


def test_examples_from_the_pool_or_every_train_reference(store: Store, dataset: int) -> None:
    pool = [i.id for i in store.items(dataset, "train")[:2]]
    spec = RunForm(dataset, "gpt-4o", retrieve_k="2", examples_from="pool", pool=pool).to_spec()
    assert spec.retrieve_from == pool
    assert RunForm(dataset, "gpt-4o", retrieve_k="2").to_spec().retrieve_from is None
    # No retrieval, no source of examples.
    off = RunForm(dataset, "gpt-4o", retrieve_k="0", examples_from="pool", pool=pool).to_spec()
    assert off.retrieve_from is None
    with pytest.raises(FormError, match="no labelled pool") as caught:
        RunForm(dataset, "gpt-4o", retrieve_k="2", examples_from="pool", pool=None).to_spec()
    assert caught.value.field == "examples_from"

    # The run retrieves only from the pool: every example turn is one of the pool's.
    run_id = create_run(
        store,
        RunForm(dataset, "gpt-4o", retrieve_k="2", examples_from="pool", pool=pool).to_spec(),
    )
    builder = PromptBuilder.for_run(store, store.get_run(run_id))
    pool_inputs = {i.input for i in store.items(dataset) if i.id in pool}
    for item in store.items(dataset, "eval"):
        users = [m["content"] for m in builder.messages(item) if m["role"] == "user"]
        assert set(users[:-1]) == pool_inputs


def test_recipe_pool_is_read_from_the_workspace_state(store: Store, dataset: int) -> None:
    directory = store.directory
    assert recipe_pool(directory, dataset) is None  # no recipe state yet
    state = directory / "recipe-state.json"
    state.write_text(json.dumps({"version": 2, "dataset_id": dataset, "pool": [3, 1]}))
    assert recipe_pool(directory, dataset) == [3, 1]
    assert recipe_pool(directory, dataset + 1) is None  # another dataset's pool
    state.write_text(json.dumps({"version": 2, "dataset_id": dataset, "pool": None}))
    assert recipe_pool(directory, dataset) is None
    state.write_text("{not json")
    assert recipe_pool(directory, dataset) is None


def test_the_estimate_pays_for_every_sample(store: Store, dataset: int) -> None:
    one = estimate_spec(store, RunForm(dataset, "gpt-4o", samples="1").to_spec(), PRICE)
    eight = estimate_spec(store, RunForm(dataset, "gpt-4o", samples="8").to_spec(), PRICE)
    assert (one.samples, eight.samples) == (1, 8)
    # The prompt is sent (and billed) once; the reply comes back n times.
    assert eight.prompt_tokens == one.prompt_tokens
    assert eight.completion_tokens == 8 * one.completion_tokens
    assert eight.cost == pytest.approx(
        (one.prompt_tokens * PRICE.input + 8 * one.completion_tokens * PRICE.output) / 1e6
    )
    # A run created from the form is estimated the same way before it starts.
    run_id = create_run(store, RunForm(dataset, "gpt-4o", samples="8").to_spec())
    assert estimate_run(store, run_id, PRICE).completion_tokens == eight.completion_tokens


def test_the_estimate_retrieves_from_the_pool_the_run_will_use(store: Store, dataset: int) -> None:
    pool = [store.items(dataset, "eval")[0].id]  # one example, from outside the train split
    spec = RunForm(dataset, "gpt-4o", retrieve_k="3", examples_from="pool", pool=pool).to_spec()
    train = RunForm(dataset, "gpt-4o", retrieve_k="3").to_spec()
    # One retrieved example a request instead of three: fewer prompt tokens.
    assert estimate_spec(store, spec, PRICE).prompt_tokens < (
        estimate_spec(store, train, PRICE).prompt_tokens
    )


def test_a_blank_max_tokens_caps_replies_at_four_times_the_longest_reference(
    store: Store, dataset: int
) -> None:
    """A model that does not stop must not run every reply to the context's end: blank means
    4x the longest reference (tokens ~ characters / 4), at least 64; a typed number wins; a
    dataset without references keeps the backend's default."""
    assert store.longest_reference(dataset) == len("git branch -d old-0")
    assert reply_cap(len("git branch -d old-0")) == 64  # the floor
    assert reply_cap(101) == 4 * 26
    assert reply_cap(0) is None

    longest = "git log --oneline --graph --decorate --all --since=2.weeks -- src/ docs/ tests/"
    store.add_items(dataset, [ItemDraft("Draw recent history of three folders", longest, "train")])
    cap = reply_cap(store.longest_reference(dataset))
    assert cap == 4 * -(-len(longest) // 4) and cap > 64

    def spec(max_tokens: str, cap: int | None) -> int | None:
        form = RunForm(dataset_id=dataset, model="m", max_tokens=max_tokens, reply_cap=cap)
        return form.to_spec().params.max_tokens

    assert spec("", cap) == cap
    assert spec("500", cap) == 500
    assert spec("", None) is None
    # The estimate counts replies as long as the references, within the cap.
    form = RunForm(dataset_id=dataset, model="m", reply_cap=cap)
    estimate = estimate_spec(store, form.to_spec(), PRICE)
    assert 0 < estimate.completion_tokens <= cap * estimate.items


def test_deleted_items_and_items_without_a_reference_leave_no_cap(store: Store) -> None:
    dataset = store.create_dataset(
        "requests only", "", [ItemDraft("Show the status", "", "train"), ItemDraft("x", "y" * 400)]
    )
    items = store.items(dataset)
    store.delete_items([items[1].id])
    assert store.longest_reference(dataset) == 0
    assert reply_cap(store.longest_reference(dataset)) is None
