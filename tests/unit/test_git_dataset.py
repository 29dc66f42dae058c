"""Checks on the shipped git worked-example dataset, data/git_requests.json."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]
DATA = REPO / "data" / "git_requests.json"
GENERATOR = REPO / "data" / "build_git_requests.py"

SUBCOMMANDS = [
    "init",
    "clone",
    "status",
    "add",
    "restore",
    "rm",
    "mv",
    "commit",
    "branch",
    "switch",
    "checkout",
    "merge",
    "rebase",
    "remote",
    "fetch",
    "pull",
    "push",
    "log",
    "show",
    "diff",
    "blame",
    "grep",
    "shortlog",
    "stash",
    "tag",
    "reset",
    "revert",
    "cherry-pick",
    "clean",
    "config",
    "submodule",
    "bisect",
    "worktree",
    "reflog",
    "archive",
]


def normalise(text: str) -> str:
    """Lowercase, strip punctuation, collapse whitespace."""
    text = re.sub(r"[^\w\s]", "", text.lower())
    return " ".join(text.split())


@pytest.fixture(scope="module")
def data() -> dict[str, list[str]]:
    with open(DATA, encoding="utf-8") as fh:
        return json.load(fh)


def test_shape(data: dict[str, list[str]]) -> None:
    assert isinstance(data, dict)
    assert set(data) == {"requests", "references"}
    requests, references = data["requests"], data["references"]
    assert isinstance(requests, list)
    assert isinstance(references, list)
    assert len(requests) == len(references)
    for item in requests + references:
        assert isinstance(item, str)
        assert item.strip(), "empty string in dataset"
        assert item == item.strip(), f"stray whitespace: {item!r}"


def test_size(data: dict[str, list[str]]) -> None:
    assert len(data["requests"]) >= 400


def test_requests_unique(data: dict[str, list[str]]) -> None:
    requests = data["requests"]
    exact = [r for r, n in Counter(requests).items() if n > 1]
    assert not exact, f"duplicate requests: {exact}"
    keys = Counter(normalise(r) for r in requests)
    near = [k for k, n in keys.items() if n > 1]
    assert not near, f"requests equal after normalising: {near}"
    assert all(keys), "a request is empty after normalising"


def test_references_are_single_git_commands(data: dict[str, list[str]]) -> None:
    for ref in data["references"]:
        for bad in ("&&", "|", ";", "\n", "`", "$("):
            assert bad not in ref, f"shell construct {bad!r} in {ref!r}"
        tokens = shlex.split(ref)
        assert tokens[0] == "git", ref
        assert len(tokens) >= 2, ref
        assert not tokens[1].startswith("-"), f"subcommand expected second: {ref!r}"


def test_subcommand_coverage(data: dict[str, list[str]]) -> None:
    counts = Counter(shlex.split(ref)[1] for ref in data["references"])
    thin = {sub: counts[sub] for sub in SUBCOMMANDS if counts[sub] < 3}
    assert not thin, f"subcommands with fewer than 3 references: {thin}"


def test_generator_reproduces_shipped_file(tmp_path: Path) -> None:
    out = tmp_path / "git_requests.json"
    subprocess.run(
        [sys.executable, str(GENERATOR), "--out", str(out)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    assert out.read_bytes() == DATA.read_bytes(), (
        "data/git_requests.json is stale: run python3 data/build_git_requests.py"
    )
