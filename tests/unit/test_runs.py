"""Runs imported from files, and a dataset's references used as a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tui.engine.datasets import DatasetFormatError, ItemDraft
from tui.engine.runs import import_run, parse_outputs, read_outputs, references_as_run
from tui.engine.store import Store, StoreError


@pytest.fixture
def dataset(store: Store) -> int:
    items = [
        ItemDraft("Show the status.", "git status", "eval"),
        ItemDraft("Create a branch called 'dev'.", "git branch dev", "train"),
        ItemDraft("List all tags.", "", "train"),
    ]
    return store.create_dataset("git", items=items)


def jsonl(*records: object) -> bytes:
    return "\n".join(json.dumps(r) for r in records).encode()


def test_input_output_pairs_match_items_loosely(store: Store, dataset: int) -> None:
    data = jsonl(
        {"input": "show the status", "output": "git status"},
        {"prompt": "Create a branch called 'dev'.", "completion": "git switch -c dev"},
    )
    run_id = import_run(store, dataset, parse_outputs(data, "t.jsonl"), source_name="t.jsonl")
    run = store.get_run(run_id)
    assert (run.source, run.status, run.n_done, run.model) == ("imported", "done", 2, "imported")
    outputs = {c.input: c.output for c in store.completions(run_id)}
    assert outputs == {
        "Show the status.": "git status",
        "Create a branch called 'dev'.": "git switch -c dev",
    }
    # The run covers just the imported items.
    assert {i.input for i in store.run_items(run_id)} == set(outputs)
    assert store.pending_items(run_id) == []


def test_openai_stored_completion_export(store: Store, dataset: int) -> None:
    data = jsonl(
        {
            "id": "chatcmpl-abc",
            "object": "chat.completion",
            "model": "gpt-4o-2024-08-06",
            "request": {
                "messages": [
                    {"role": "system", "content": "s"},
                    {"role": "user", "content": "List all tags."},
                ]
            },
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "git tag"}}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 3},
        },
        {
            "messages": [
                {"role": "user", "content": "Show the status."},
                {"role": "assistant", "content": "git status"},
            ],
            "model": "gpt-4o-2024-08-06",
        },
    )
    run_id = import_run(store, dataset, parse_outputs(data, "x.jsonl"), source_name="x.jsonl")
    run = store.get_run(run_id)
    assert run.model == "gpt-4o-2024-08-06"
    rows = {c.input: c for c in store.completions(run_id)}
    assert rows["List all tags."].output == "git tag"
    assert rows["List all tags."].remote_id == "chatcmpl-abc"
    assert rows["List all tags."].completion_tokens == 3


def test_unmatched_outputs_are_refused_and_nothing_is_stored(store: Store, dataset: int) -> None:
    data = jsonl(
        {"input": "Show the status.", "output": "git status"},
        {"input": "Rebase onto main.", "output": "git rebase main"},
    )
    with pytest.raises(StoreError, match=r"1 of 2 outputs match no request .*line 2"):
        import_run(store, dataset, parse_outputs(data, "t.jsonl"), source_name="t.jsonl")
    assert store.list_runs() == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"input": "a", "output": "b"}\n{oops\n', "t.jsonl, line 2: not valid JSON"),
        (b'["a"]\n', "line 1: expected a JSON object"),
        (b'{"output": "x"}\n', "line 1: no request"),
        (b'{"input": "Show the status."}\n', "line 1: no output"),
        (b"", "the file is empty"),
        (b"\x00\x01binary", "binary"),
    ],
)
def test_bad_files_name_the_line(content: bytes, message: str) -> None:
    with pytest.raises(DatasetFormatError, match=message):
        parse_outputs(content, "t.jsonl")


async def test_read_outputs_from_disk(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    path.write_bytes(jsonl({"input": "a", "output": "b"}))
    assert [o.output for o in await read_outputs(path)] == ["b"]
    with pytest.raises(DatasetFormatError, match="cannot read"):
        await read_outputs(tmp_path / "missing.jsonl")


def test_references_as_run(store: Store, dataset: int) -> None:
    run_id = references_as_run(store, dataset)
    outputs = {c.input: c.output for c in store.completions(run_id)}
    assert outputs == {
        "Show the status.": "git status",
        "Create a branch called 'dev'.": "git branch dev",
    }  # the item without a reference is left out
    eval_run = references_as_run(store, dataset, split="eval")
    assert [c.output for c in store.completions(eval_run)] == ["git status"]
    empty = store.create_dataset("empty", items=[ItemDraft("x")])
    with pytest.raises(StoreError, match="no references"):
        references_as_run(store, empty)
