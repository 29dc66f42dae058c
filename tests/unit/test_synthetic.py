"""Synthetic requests (tui/engine/synthetic.py) over real HTTP against the fake OpenAI server,
whose replies are scripted per request: new requests are proposed as they stream in,
duplicates of the dataset and of each other are left out with the reason, every malformed
reply (not JSON, not a list, empty, cut off) is reported and nothing is taken from it
silently, and a cancel mid-stream keeps what was proposed and writes nothing. Then what a
person accepts is added: synthetic, train split, no reference, never eval."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.helpers.fake_openai import (
    Action,
    FakeOpenAI,
    RequestContext,
    fail_first,
    first_of,
    server_error,
)
from tui.engine.datasets import ItemDraft
from tui.engine.settings import Price
from tui.engine.store import Store, StoreError
from tui.engine.synthetic import (
    SYNTHETIC,
    ArrayReader,
    BadReply,
    BatchDelta,
    BatchFinished,
    BatchRetry,
    Deduplicator,
    RequestProposed,
    RequestRejected,
    RequestSynthesizer,
    SynthesisEvent,
    SynthesisFinished,
    SynthesisSpec,
    add_synthetic,
    list_lines,
)

PROMPT = "Answer with one git command."
ITEMS = [
    ItemDraft("Create a branch called feature", "git branch feature", "train"),
    ItemDraft("Show the working tree status", "git status", "train"),
    ItemDraft("List every tag", "git tag --list", ""),
    ItemDraft("Undo the last commit but keep the changes", "git reset --soft HEAD~1", "eval"),
]
EVAL_REQUEST = ITEMS[3].input


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    # Word tokens as the reply is written (no fixed length: that would reshape the JSON).
    with FakeOpenAI(token_delay=0.0) as server:
        yield server


@pytest.fixture
def dataset(store: Store) -> int:
    return store.create_dataset("git", PROMPT, ITEMS)


def script(*actions: Action) -> Any:
    """The fake server's policy: the n-th chat request gets the n-th action (the last one
    again after that)."""

    def policy(ctx: RequestContext) -> Action:
        return actions[min(ctx.n, len(actions)) - 1]

    return policy


def reply(value: Any, **kw: Any) -> Action:
    text = value if isinstance(value, str) else json.dumps(value)
    return Action(reply=text, **kw)


async def synthesize(
    fake: FakeOpenAI, store: Store, dataset: int, **spec: Any
) -> tuple[SynthesisFinished, list[SynthesisEvent], RequestSynthesizer]:
    spec.setdefault("model", "gpt-4o")
    spec.setdefault("seed", 0)
    client = openai.AsyncOpenAI(base_url=fake.base_url, api_key=fake.api_key, timeout=10)
    events: list[SynthesisEvent] = []
    try:
        synth = RequestSynthesizer(
            store, client, price=Price(input=2.5, output=10), backoff_base=0.01
        )
        finished = await synth.run(SynthesisSpec(dataset_id=dataset, **spec), events.append)
    finally:
        await client.close()
    return finished, events, synth


def of(events: list[SynthesisEvent], kind: type[Any]) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


def bad(events: list[SynthesisEvent]) -> list[tuple[str, str]]:
    return [(e.kind, e.message) for e in of(events, BadReply)]


# -- the prompt and a good reply -------------------------------------------------------------


async def test_proposes_new_requests_as_they_stream(
    fake: FakeOpenAI, store: Store, dataset: int
) -> None:
    new = ["Rename the branch dev to main", "Delete the tag v1.0", "Show who changed app.py"]
    fake.policy = script(reply(new))
    finished, events, synth = await synthesize(
        fake, store, dataset, count=3, topics=("tags", "renames")
    )
    assert finished.status == "done" and finished.requests == tuple(new)
    assert [e.text for e in of(events, RequestProposed)] == new
    assert bad(events) == [] and of(events, RequestRejected) == []

    # Streamed: the first request was proposed while the reply was still arriving.
    first = next(i for i, e in enumerate(events) if isinstance(e, RequestProposed))
    last_delta = max(i for i, e in enumerate(events) if isinstance(e, BatchDelta))
    assert first < last_delta

    # One request to the backend: streamed, with usage, the examples and the system prompt
    # and topics; eval requests are never shown.
    (request,) = fake.chat_requests
    assert request.body["stream"] is True and request.body["model"] == "gpt-4o"
    asked = request.body["messages"][-1]["content"]
    assert "Write 3 new requests" in asked and "JSON array" in asked
    assert PROMPT in asked and "tags; renames" in asked
    assert json.dumps(ITEMS[0].input) in asked and EVAL_REQUEST not in asked
    (done,) = of(events, BatchFinished)
    assert done.proposed == 3 and done.completion_tokens and synth.stats.cost > 0

    # Nothing was written to the workspace: adding is the person's decision.
    assert len(store.items(dataset)) == len(ITEMS)


async def test_asks_in_batches_until_enough(fake: FakeOpenAI, store: Store, dataset: int) -> None:
    fake.policy = script(
        reply([f"Stage the file part{i}.txt" for i in range(4)]),
        reply([f"Stage the file more{i}.txt" for i in range(4)]),
        reply(["Stage the file last.txt", "Stage the file extra.txt"]),
    )
    finished, events, _ = await synthesize(fake, store, dataset, count=9, batch_size=4)
    assert finished.status == "done" and len(finished.requests) == 9
    asked = [r.body["messages"][-1]["content"] for r in fake.chat_requests]
    assert ["Write 4 new" in a for a in asked[:2]] == [True, True]
    assert "Write 1 new" in asked[2]
    # The model wrote one more than asked for: left out, and said so.
    (extra,) = of(events, RequestRejected)
    assert extra.text == "Stage the file extra.txt" and "more than the 9" in extra.reason


# -- duplicates ------------------------------------------------------------------------------


async def test_duplicates_of_the_dataset_and_of_each_other_are_left_out(
    fake: FakeOpenAI, store: Store, dataset: int
) -> None:
    fake.policy = script(
        reply(
            [
                "Create a branch called feature",  # exactly in the dataset
                "create a BRANCH called “feature”!",  # the same once normalised
                "Undo the last commit, but keep the changes.",  # an eval item, normalised
                "Push main to origin",
                "push main to origin.",  # a repeat within the reply
                "   ",
                42,
                "Stage the file caf\ufffd.txt",  # the model wrote invalid UTF-8
            ]
        ),
        reply(["Push main to origin", "Fetch from upstream"]),  # a repeat of reply 1's
    )
    finished, events, _ = await synthesize(fake, store, dataset, count=2)
    assert finished.requests == ("Push main to origin", "Fetch from upstream")
    reasons = [(e.text, e.reason) for e in of(events, RequestRejected)]
    assert reasons == [
        ("Create a branch called feature", "already in the dataset"),
        (
            "create a BRANCH called “feature”!",
            "already in the dataset (ignoring case, spaces and punctuation)",
        ),
        (
            "Undo the last commit, but keep the changes.",
            "already in the dataset (ignoring case, spaces and punctuation)",
        ),
        (
            "push main to origin.",
            "a repeat of another new request (ignoring case, spaces and punctuation)",
        ),
        ("", "the request is empty"),
        ("42", "not a string (a number)"),
        (
            "Stage the file caf\ufffd.txt",
            "holds broken characters (U+FFFD: the model wrote invalid UTF-8)",
        ),
        ("Push main to origin", "a repeat of another new request"),
    ]
    assert bad(events) == []  # each reply gave something new


async def test_a_reply_of_only_duplicates_is_reported_and_the_cap_ends_it(
    fake: FakeOpenAI, store: Store, dataset: int
) -> None:
    fake.policy = script(
        reply(["Rename the branch dev to main"]),
        reply(["Create a branch called feature", "rename the branch dev to main"]),
    )
    finished, events, _ = await synthesize(
        fake, store, dataset, count=3, max_batches=3, max_bad_in_row=5
    )
    assert finished.status == "short"
    assert finished.requests == ("Rename the branch dev to main",)
    assert "1 of 3 new requests after 3 replies" in finished.message
    kinds = [kind for kind, _ in bad(events)]
    assert kinds == ["duplicates", "duplicates"]
    assert "all 2 requests were left out" in bad(events)[0][1]
    assert len(fake.chat_requests) == 3


# -- malformed replies -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "says"),
    [
        ("I can't help with that.", "not_a_list", "not a list of requests"),
        ('{"request": "Rename the branch"}', "not_a_list", "JSON but not a list (an object)"),
        ('"Rename the branch"', "not_a_list", "JSON but not a list (a string)"),
        ("", "empty", "the reply was empty"),
        ("[]", "empty", "an empty list"),
        ('[{"x": 1} {"y": 2}]', "malformed", "expected ',' or ']' after element 1"),
        ("[1, 2, 3]", "unusable", "all 3 requests were left out (3 not a string (a number))"),
    ],
)
async def test_unusable_replies_are_reported_and_nothing_is_taken(
    fake: FakeOpenAI, store: Store, dataset: int, text: str, kind: str, says: str
) -> None:
    fake.policy = script(reply(text))
    finished, events, _ = await synthesize(fake, store, dataset, count=3)
    assert finished.status == "failed"
    assert "3 unusable replies in a row" in finished.message
    assert finished.requests == ()
    reports = bad(events)
    assert len(reports) == 3 and {k for k, _ in reports} == {kind}
    assert says in reports[0][1]
    assert len(fake.chat_requests) == 3
    assert len(store.items(dataset)) == len(ITEMS)


async def test_a_truncated_array_keeps_its_complete_requests_and_says_so(
    fake: FakeOpenAI, store: Store, dataset: int
) -> None:
    cut_short = '["Rename the branch dev to main", "Delete the tag v1.0", "Show who chan'
    fake.policy = script(
        reply(cut_short, finish_reason="length"),
        reply(["Show who changed app.py"]),
    )
    finished, events, _ = await synthesize(fake, store, dataset, count=3)
    assert finished.requests == (
        "Rename the branch dev to main",
        "Delete the tag v1.0",
        "Show who changed app.py",
    )
    ((kind, message),) = bad(events)
    assert kind == "truncated"
    assert "cut off at max_tokens" in message and "2 complete requests" in message


async def test_a_numbered_list_is_read_and_reported_as_not_json(
    fake: FakeOpenAI, store: Store, dataset: int
) -> None:
    text = (
        "Here are new requests:\n"
        '1. "Rename the branch dev to main"\n'
        "2. Delete the tag v1.0\n"
        "3) Show who changed app.py,\n"
    )
    fake.policy = script(reply(text))
    finished, events, _ = await synthesize(fake, store, dataset, count=3)
    assert finished.requests == (
        "Rename the branch dev to main",
        "Delete the tag v1.0",
        "Show who changed app.py",
    )
    ((kind, message),) = bad(events)
    assert kind == "not_a_list" and "read as a numbered list" in message


async def test_an_error_mid_stream_is_reported(
    fake: FakeOpenAI, store: Store, dataset: int
) -> None:
    fake.policy = script(
        reply('["Rename the branch dev to main", "Delete the tag"]', error_after=6),
        reply(["Delete the tag v1.0"]),
    )
    finished, events, _ = await synthesize(fake, store, dataset, count=2)
    assert finished.requests == ("Rename the branch dev to main", "Delete the tag v1.0")
    ((kind, message),) = bad(events)
    assert kind == "failed" and "error mid-stream" in message


async def test_server_errors_are_retried_and_a_missing_model_stops(
    fake: FakeOpenAI, store: Store, dataset: int
) -> None:
    fake.policy = first_of(
        fail_first(2, server_error(503), per_key=False), script(reply(["Delete the tag v1.0"]))
    )
    finished, events, synth = await synthesize(fake, store, dataset, count=1)
    assert finished.requests == ("Delete the tag v1.0",)
    assert [e.attempt for e in of(events, BatchRetry)] == [1, 2]
    assert synth.stats.retries == 2 and len(fake.chat_requests) == 3

    # The server's default reply echoes the prompt: lines of text, not the one request
    # asked for. Reported, nothing taken.
    fake.policy = None
    finished, events, _ = await synthesize(fake, store, dataset, count=1)
    assert finished.status == "failed" and finished.requests == ()
    assert {kind for kind, _ in bad(events)} == {"not_a_list"}
    assert "lines are not the 1 requests asked for" in bad(events)[0][1]

    fake.policy = None
    finished, events, _ = await synthesize(fake, store, dataset, count=1, model="no-such-model")
    assert finished.status == "failed" and "'no-such-model' not found" in finished.message


# -- cancel ----------------------------------------------------------------------------------


async def test_cancel_mid_stream_keeps_what_was_proposed(
    fake: FakeOpenAI, store: Store, dataset: int
) -> None:
    many = [f"Stage the file part{i}.txt" for i in range(40)]
    fake.policy = script(reply(many, token_delay=0.05))
    client = openai.AsyncOpenAI(base_url=fake.base_url, api_key=fake.api_key, timeout=10)
    synth = RequestSynthesizer(store, client)
    events: list[SynthesisEvent] = []

    def on_event(event: SynthesisEvent) -> None:
        events.append(event)
        if isinstance(event, RequestProposed) and event.index == 1:
            synth.cancel()

    try:
        finished = await asyncio.wait_for(
            synth.run(SynthesisSpec(dataset, "gpt-4o", count=40, seed=0), on_event), 20
        )
    finally:
        await client.close()
    assert finished.status == "cancelled"
    assert finished.requests == tuple(many[:2])
    assert "2 new requests so far" in finished.message
    (request,) = fake.chat_requests
    # The reply was abandoned mid-way (the connection closed), not read to the end.
    deadline = asyncio.get_running_loop().time() + 5
    while request.outcome != "disconnected":
        assert asyncio.get_running_loop().time() < deadline, request.outcome
        await asyncio.sleep(0.02)
    assert len(store.items(dataset)) == len(ITEMS)


# -- adding what was accepted ----------------------------------------------------------------


def test_accepted_requests_are_added_synthetic_to_train_without_references(
    store: Store, dataset: int
) -> None:
    added = add_synthetic(
        store, dataset, ["Rename the branch dev to main", "list every TAG!", "Delete the tag"]
    )
    assert added.skipped == ["list every TAG!"]  # in the dataset by now
    new = [store.item(i) for i in added.ids]
    assert [(i.input, i.reference, i.split, i.source) for i in new] == [
        ("Rename the branch dev to main", "", "train", SYNTHETIC),
        ("Delete the tag", "", "train", SYNTHETIC),
    ]
    assert [i.source for i in store.items(dataset)][: len(ITEMS)] == [""] * len(ITEMS)

    # Never eval: a random split keeps them in train, and neither a split change nor an
    # edit can put one there.
    for seed in range(5):
        store.random_split(dataset, 0.5, seed)
        assert all(i.split == "train" for i in store.items(dataset) if i.source)
    with pytest.raises(StoreError, match="synthetic request: it stays in train"):
        store.set_splits({added.ids[0]: "eval"})
    with pytest.raises(StoreError, match="synthetic request"):
        store.update_item(added.ids[1], split="eval")
    assert store.item(added.ids[1]).split == "train"

    # A copy of the dataset keeps the tag.
    copy = store.duplicate_dataset(dataset, "git copy")
    assert sum(1 for i in store.items(copy) if i.source == SYNTHETIC) == 2


def test_a_split_without_synthetic_items_is_unchanged(store: Store) -> None:
    """The rule leaves a dataset without synthetic items split exactly as before."""
    import random

    dataset = store.create_dataset("plain", items=[ItemDraft(f"request {i}") for i in range(20)])
    store.random_split(dataset, 0.25, 7)
    ids = [i.id for i in store.items(dataset)]
    order = list(ids)
    random.Random(7).shuffle(order)
    expected = set(order[:5])
    assert {i.id for i in store.items(dataset) if i.split == "eval"} == expected


# -- reading replies (no server) -------------------------------------------------------------


def test_array_reader_returns_each_element_once_as_it_completes() -> None:
    text = (
        'Sure! [see below]\n```json\n{"requests": ["a, [b]", "c \\"d\\"", {"input": "e"}, 7]}\n```'
    )
    reader = ArrayReader()
    seen: list[Any] = []
    for char in text:
        seen += reader.feed(char)
    seen += reader.finish()
    assert seen == ["a, [b]", 'c "d"', {"input": "e"}, 7]
    assert reader.closed and reader.broken is None


def test_list_lines_takes_marked_lines_or_plain_lines() -> None:
    assert list_lines("Ideas:\n- 'one'\n* two\n• three") == (["one", "two", "three"], True)
    assert list_lines("one\n“two”,\n\nHeader:\nthree") == (["one", "two", "three"], False)


def test_deduplicator_reasons() -> None:
    dedupe = Deduplicator(["Create a branch 'Foo'!"])
    assert dedupe.check("Create a branch 'Foo'!") == "already in the dataset"
    assert dedupe.check("create a branch foo") is not None
    assert dedupe.check("?!") == "has no words (only punctuation)"
    assert dedupe.check("New one") is None
    assert dedupe.check("new ONE.") is not None
