"""A corpus of bad input files (tests/reliability/corpus/), each refused with one message of
the shape "<file>, <line|row> <n>: <problem>" and a workspace left byte for byte as it was;
plus what cannot live in git (a named pipe, a directory, a device, a missing file), refused
for what they are, without blocking.

The import goes the way the app's goes: read and parse the file, then create a dataset (or
append to one) in the workspace; a refusal at either step must leave nothing behind."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from pathlib import Path

import pytest

from tui.engine.datasets import DatasetFormatError, ItemDraft, read_dataset
from tui.engine.store import Store, StoreError

CORPUS = Path(__file__).parent / "corpus"

# file -> (line or row the message names, the problem). The whole message is matched:
# "<file>, line|row <n>: <problem>", or "<file>: <problem>" for a file-wide problem. JSON's
# own wording varies between Python versions, so that part is a pattern.
ANY = r".+"
BAD: dict[str, tuple[str | None, str]] = {
    "broken.json": ("line 2", rf"not valid JSON \({ANY} at column \d+\)"),
    "invalid_line.jsonl": ("line 2", rf"not valid JSON \({ANY} at column \d+\)"),
    "latin1.csv": (
        "line 3",
        re.escape(
            "not UTF-8 text (byte 0xe9 at byte offset 12); save the file as UTF-8 and try again"
        ),
    ),
    "binary.json": (None, re.escape("looks like a binary file (a NUL byte at byte offset 8)")),
    "utf16.csv": (None, re.escape("the file is UTF-16 text; save it as UTF-8 and try again")),
    "empty.jsonl": (None, "the file is empty"),
    "wrong_shape.json": (
        "line 1",
        re.escape('expected an object with a "requests" list; found the keys "prompts"'),
    ),
    "wrong_type.json": (
        "line 4",
        re.escape('"requests" item 2 is a number (42), expected a string'),
    ),
    "references_mismatch.json": (
        "line 2",
        re.escape('"references" has 1 entries but "requests" has 2') + ANY,
    ),
    "no_request_column.csv": (
        "row 1",
        re.escape('no request column "input" or "request"')
        + ANY
        + re.escape('; the columns are "id", "text", "answer"'),
    ),
    "bad_split.csv": ("row 3", re.escape("unknown split 'later'") + ANY),
    "empty_request.csv": ("row 3", "the request is empty"),
    "field_count.csv": (
        "row 3",
        re.escape("has 1 field but the header has 2 (line 4 of the file)"),
    ),
    # An unclosed quote swallows the rest of the file: named, with the line it opens on.
    "unclosed_quote.csv": (
        "row 3",
        re.escape('a quote (") opened on line 3 is never closed') + ANY,
    ),
    "unclosed_quote_in_reference.csv": (
        "row 3",
        re.escape('a quote (") opened on line 3 is never closed') + ANY,
    ),
    # Sniffed as ';'-separated: the columns are named one by one.
    "semicolon_unknown_columns.csv": (
        "row 1",
        re.escape('no request column "input" or "request"')
        + ANY
        + re.escape('; the columns are "prompt text", "answer"'),
    ),
    # Control characters, raw in a CSV or escaped in JSON, are refused like a raw NUL is.
    "control_character.csv": (
        "row 2",
        re.escape("the request contains a control character (U+000C at character 9); remove it"),
    ),
    "escaped_nul.json": (
        "line 4",
        re.escape(
            '"requests" item 2: the request contains a control character (U+0000 at '
            "character 4); remove it"
        ),
    ),
    "escaped_escape_reference.jsonl": (
        "line 2",
        re.escape("the reference contains a control character (U+001B at character 5)") + ANY,
    ),
    "escaped_nul_chat.jsonl": (
        "line 1",
        re.escape("the request contains a control character (U+0000 at character 5)") + ANY,
    ),
    "no_request_key.jsonl": (
        "line 2",
        re.escape('no request: expected a key "input", "request", "prompt" or "messages"') + ANY,
    ),
    "image_part.jsonl": (
        "line 3",
        re.escape("message 1 has a image_url part; only text can be imported"),
    ),
    "too_long.jsonl": (
        "line 2",
        re.escape("the request is longer than 32,000 characters (32,001 characters)"),
    ),
}

GOOD = {
    "semicolon.csv": [
        ItemDraft("Create a branch, then switch to it", "git switch -c topic"),
        ItemDraft("show the status", "git status"),
    ],
    "pipe_separated.csv": [ItemDraft("list tags", "git tag")],
}


def workspace_digest(directory: Path) -> dict[str, str]:
    """Every file of the workspace and its SHA-256 (the lock file says who holds the
    workspace, which is meant to change)."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != "distill.lock"
    }


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    directory = tmp_path / "ws"
    store = Store.open(directory)
    store.create_dataset("existing", "Be terse.", [ItemDraft("list branches", "git branch")])
    store.close()
    return directory


async def import_like_the_app(directory: Path, path: Path) -> None:
    """What the Dataset screen's import does: parse, then create a dataset from the file (and,
    separately, append it to an existing one)."""
    store = Store.open(directory)
    try:
        parsed = await read_dataset(path)
        existing = store.dataset_by_name("existing")
        assert existing is not None
        await store.in_thread(store.add_items, existing.id, parsed.items)
        await store.in_thread(
            store.create_dataset, path.stem, parsed.system_prompt or "", parsed.items
        )
    finally:
        store.close()


def test_the_corpus_is_complete() -> None:
    """Every file in the corpus has its expected outcome here, and the other way round."""
    assert sorted(p.name for p in CORPUS.iterdir()) == sorted([*BAD, *GOOD])


@pytest.mark.parametrize("name", sorted(BAD))
async def test_a_bad_file_is_refused_with_file_place_and_problem(
    workspace: Path, name: str
) -> None:
    path = CORPUS / name
    source = path.read_bytes()
    before = workspace_digest(workspace)
    with pytest.raises(DatasetFormatError) as refused:
        await import_like_the_app(workspace, path)
    where, problem = BAD[name]
    prefix = re.escape(name) + (f", {where}" if where else "")
    assert re.fullmatch(rf"{prefix}: {problem}", str(refused.value)), str(refused.value)
    if where is not None:
        assert refused.value.line == int(where.split()[1])
        assert refused.value.unit == where.split()[0]
    assert workspace_digest(workspace) == before
    assert path.read_bytes() == source


@pytest.mark.parametrize("name", sorted(GOOD))
async def test_a_sniffed_delimiter_imports(workspace: Path, name: str) -> None:
    await import_like_the_app(workspace, CORPUS / name)
    store = Store.open(workspace)
    try:
        imported = store.dataset_by_name(Path(name).stem)
        assert imported is not None
        items = [ItemDraft(i.input, i.reference, i.split) for i in store.items(imported.id)]
        assert items == GOOD[name]
    finally:
        store.close()


async def read_within_deadline(path: Path) -> DatasetFormatError:
    """The refusal, or a failure if reading blocks (a named pipe with no writer would block
    an open() forever)."""
    with pytest.raises(DatasetFormatError) as refused:
        await asyncio.wait_for(read_dataset(path), timeout=60)
    return refused.value


async def test_not_a_regular_file_is_refused_for_what_it_is(
    workspace: Path, tmp_path: Path
) -> None:
    pipe = tmp_path / "pipe.csv"
    os.mkfifo(pipe)
    folder = tmp_path / "folder.jsonl"
    folder.mkdir()
    cases = {
        pipe: "pipe.csv: it is a named pipe (FIFO), not a regular file; save the data to a "
        "file first",
        folder: "folder.jsonl: it is a directory, not a file",
        Path("/dev/null"): "null: it is a device, not a regular file",
        tmp_path / "gone.json": "gone.json: cannot read the file (No such file or directory)",
        tmp_path / "file.csv" / "below": "below: cannot read the file (Not a directory)",
    }
    (tmp_path / "file.csv").write_text("input\nx\n")
    before = workspace_digest(workspace)
    for path, message in cases.items():
        assert str(await read_within_deadline(path)) == message
        with pytest.raises(DatasetFormatError):
            await import_like_the_app(workspace, path)
    assert workspace_digest(workspace) == before


async def test_a_file_swapped_for_a_pipe_after_the_check_does_not_block(
    tmp_path: Path,
) -> None:
    """The check is made on the opened descriptor, so nothing between a look at the path and
    the read can make it block."""
    from tui.engine.datasets import file_problem

    path = tmp_path / "data.csv"
    path.write_text("input\nx\n")
    assert file_problem(path) is None
    path.unlink()
    os.mkfifo(path)
    assert "named pipe" in str(await read_within_deadline(path))


def test_a_store_refusal_leaves_the_workspace_as_it_was(workspace: Path) -> None:
    """The second step's own refusal (a name taken) changes nothing either."""
    before = workspace_digest(workspace)
    store = Store.open(workspace)
    try:
        with pytest.raises(StoreError, match="already exists"):
            store.create_dataset("existing", "", [ItemDraft("x")])
    finally:
        store.close()
    assert workspace_digest(workspace) == before
