"""Dataset import/export: the three formats, every kind of bad input, round trips, duplicates."""

from __future__ import annotations

import csv
import io
import json
import os
import tracemalloc
from pathlib import Path

import pytest

from tui.engine.datasets import (
    MAX_IMPORT_BYTES,
    MAX_INPUT_CHARS,
    DatasetFormatError,
    ItemDraft,
    csv_columns,
    detect_format,
    find_duplicates,
    normalise_request,
    parse_dataset,
    read_dataset,
    validate_request,
    write_dataset,
)


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


async def import_error(path: Path, **kwargs: str) -> DatasetFormatError:
    with pytest.raises(DatasetFormatError) as info:
        await read_dataset(path, **kwargs)
    return info.value


# --------------------------------------------------------------------------- seed JSON


async def test_seed_json_requests_only(tmp_path: Path) -> None:
    path = write(
        tmp_path / "git.json", json.dumps({"requests": ["Init a repo.", "  Show status "]})
    )
    parsed = await read_dataset(path)
    assert parsed.format == "json"
    assert parsed.source == path
    assert parsed.system_prompt is None
    assert parsed.items == [ItemDraft("Init a repo."), ItemDraft("Show status")]
    assert parsed.warnings == []


async def test_seed_json_with_references_splits_and_system_prompt(tmp_path: Path) -> None:
    doc = {
        "system_prompt": "Answer with one git command.",
        "requests": ["Init a repo.", "Show status.", "List branches."],
        "references": ["git init", None, "git branch"],
        "splits": ["train", "Validation", None],
        "notes": "ignored",
    }
    parsed = await read_dataset(write(tmp_path / "git.json", json.dumps(doc, indent=2)))
    assert parsed.system_prompt == "Answer with one git command."
    assert parsed.items == [
        ItemDraft("Init a repo.", "git init", "train"),
        ItemDraft("Show status.", "", "eval"),
        ItemDraft("List branches.", "git branch", ""),
    ]
    assert parsed.warnings == ['ignored the keys "notes"']


async def test_top_level_list_of_strings_and_objects(tmp_path: Path) -> None:
    strings = await read_dataset(write(tmp_path / "a.json", '["one", "two"]'))
    assert [i.input for i in strings.items] == ["one", "two"]
    objects = await read_dataset(
        write(
            tmp_path / "b.json",
            json.dumps([{"input": "one", "reference": "1"}, {"prompt": "two", "ideal": "2"}]),
        )
    )
    assert objects.items == [ItemDraft("one", "1"), ItemDraft("two", "2")]


# --------------------------------------------------------------------------- JSONL


async def test_jsonl_objects_with_aliases_and_blank_lines(tmp_path: Path) -> None:
    lines = [
        {"input": "a", "reference": "A", "split": "train"},
        {"request": "b", "output": "B"},
        {"prompt": "c", "expected": "C", "split": "eval", "metadata": {"x": 1}},
        {"input": "d", "ideal": "D"},
    ]
    text = "\n".join(json.dumps(line) for line in lines[:2]) + "\n\n  \n"
    text += "\r\n".join(json.dumps(line) for line in lines[2:]) + "\n"
    parsed = await read_dataset(write(tmp_path / "x.jsonl", text))
    assert parsed.format == "jsonl"
    assert parsed.items == [
        ItemDraft("a", "A", "train"),
        ItemDraft("b", "B"),
        ItemDraft("c", "C", "eval"),
        ItemDraft("d", "D"),
    ]


async def test_jsonl_chat_lines(tmp_path: Path) -> None:
    system = {"role": "system", "content": "Be terse."}
    lines = [
        {
            "messages": [
                system,
                {"role": "user", "content": "first question"},
                {"role": "assistant", "content": "first answer"},
                {"role": "user", "content": [{"type": "text", "text": "Create a branch."}]},
                {"role": "assistant", "content": [{"type": "text", "text": "git branch x"}]},
            ]
        },
        # A tool call between the user turn and the final answer: the last assistant turn.
        {
            "messages": [
                system,
                {"role": "user", "content": "Show the log."},
                {"role": "assistant", "content": None, "tool_calls": []},
                {"role": "tool", "content": "..."},
                {"role": "assistant", "content": "git log"},
            ]
        },
        # No assistant turn: no reference. A different system prompt: a warning.
        {"messages": [{"role": "system", "content": "Other."}, {"role": "user", "content": "Q"}]},
    ]
    parsed = await read_dataset(
        write(tmp_path / "chat.jsonl", "".join(json.dumps(x) + "\n" for x in lines))
    )
    assert parsed.items == [
        ItemDraft("Create a branch.", "git branch x"),
        ItemDraft("Show the log.", "git log"),
        ItemDraft("Q", ""),
    ]
    assert parsed.system_prompt == "Be terse."
    assert len(parsed.warnings) == 1
    assert "different system prompt" in parsed.warnings[0]


async def test_jsonl_keeps_unicode_line_separators_inside_strings(tmp_path: Path) -> None:
    # json.dumps(ensure_ascii=False) leaves U+2028 raw; str.splitlines() would break the line.
    line = json.dumps({"input": "a\u2028b\x85c", "reference": "r"}, ensure_ascii=False)
    parsed = await read_dataset(write(tmp_path / "u.jsonl", line + "\n"))
    assert parsed.items == [ItemDraft("a\u2028b\x85c", "r")]


async def test_chosen_keys_for_json_objects(tmp_path: Path) -> None:
    path = write(tmp_path / "q.jsonl", '{"question": "why?", "answer": "because", "part": "test"}')
    parsed = await read_dataset(
        path, input_column="question", reference_column="answer", split_column="part"
    )
    assert parsed.items == [ItemDraft("why?", "because", "eval")]


# --------------------------------------------------------------------------- CSV


async def test_csv_default_columns_bom_and_multiline_fields(tmp_path: Path) -> None:
    text = (
        "\ufeffID,Prompt,Reference,split\r\n"
        '1,"Commit with the message ""fix, finally""","git commit -m ""fix, finally""",train\r\n'
        '2,"two\nlines",,eval\r\n'
        "\r\n"
        "3,  padded  ,x,\r\n"
    )
    parsed = await read_dataset(write(tmp_path / "d.csv", text))
    assert parsed.format == "csv"
    assert parsed.items == [
        ItemDraft(
            'Commit with the message "fix, finally"', 'git commit -m "fix, finally"', "train"
        ),
        ItemDraft("two\nlines", "", "eval"),
        ItemDraft("padded", "x", ""),
    ]


async def test_csv_chosen_columns_and_tsv(tmp_path: Path) -> None:
    path = write(tmp_path / "d.tsv", "q\tcmd\tother\nlist tags\tgit tag\tz\n")
    parsed = await read_dataset(path, input_column="q", reference_column="CMD")
    assert parsed.items == [ItemDraft("list tags", "git tag")]


def test_csv_columns_from_bytes_text_and_path(tmp_path: Path) -> None:
    assert csv_columns(b"\xef\xbb\xbfinput, reference ,split\na,b,c\n") == [
        "input",
        "reference",
        "split",
    ]
    assert csv_columns("a\tb\n1\t2\n") == ["a", "b"]
    path = write(tmp_path / "wide.csv", "x,y,z\n" + "é,1,2\n" * 50_000)
    assert csv_columns(path) == ["x", "y", "z"]
    with pytest.raises(DatasetFormatError, match="empty"):
        csv_columns(write(tmp_path / "e.csv", ""))


# --------------------------------------------------------------------------- detection


def test_detect_format(tmp_path: Path) -> None:
    assert detect_format(Path("a.JSON")) == "json"
    assert detect_format(Path("a.ndjson")) == "jsonl"
    assert detect_format(Path("a.jsonl")) == "jsonl"
    assert detect_format(Path("a.tsv")) == "csv"
    assert detect_format(write(tmp_path / "a", '{\n  "requests": []\n}')) == "json"
    assert detect_format(write(tmp_path / "b", '{"requests": ["x"]}')) == "json"
    assert detect_format(write(tmp_path / "c", '["x"]')) == "json"
    assert detect_format(write(tmp_path / "d", '{"input": "x"}\n{"input": "y"}\n')) == "jsonl"
    assert detect_format(write(tmp_path / "e", "input,reference\nx,y\n")) == "csv"
    assert detect_format(Path("nowhere"), b'{"messages": []}') == "jsonl"


async def test_sniffed_file_without_extension_imports(tmp_path: Path) -> None:
    path = write(tmp_path / "export", '{"input": "x"}\n{"input": "y"}\n')
    parsed = await read_dataset(path)
    assert parsed.format == "jsonl"
    assert len(parsed.items) == 2


# --------------------------------------------------------------------------- bad input


async def test_invalid_json_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path / "git.json", '{\n  "requests": [\n    "a"\n    "b"\n  ]\n}\n')
    e = await import_error(path)
    assert str(e) == "git.json, line 4: not valid JSON (Expecting ',' delimiter at column 5)"
    assert (e.path, e.line) == (path, 4)


@pytest.mark.parametrize(
    ("doc", "line", "problem"),
    [
        ('{"requests": "a"}', 1, '"requests" is a string, expected a list'),
        ("42", 1, "found a number (42)"),
        (
            '{"prompts": ["a"]}',
            1,
            'expected an object with a "requests" list; found the keys "prompts"',
        ),
        (
            '{\n"requests": [\n"a",\n42\n]\n}',
            4,
            '"requests" item 2 is a number (42), expected a string',
        ),
        ('{\n"requests": [\n"a",\n"  "\n]\n}', 4, '"requests" item 2: the request is empty'),
        (
            '{"requests": ["a", "b"],\n "references": ["x"]}',
            2,
            '"references" has 1 entries but "requests" has 2',
        ),
        ('{"requests": ["a"],\n "references": [["x"]]}', 2, '"references" item 1 is a list'),
        ('{"requests": ["a"],\n "splits": ["dev"]}', 2, "\"splits\" item 1: unknown split 'dev'"),
        ('{"requests": ["a"], "system_prompt": 3}', 1, '"system_prompt" is a number (3)'),
        ('[\n"a",\n{"input": true}\n]', 3, 'item 2: "input" is true/false, expected a string'),
        ('[\n"a",\n7\n]', 3, "item 2: expected an object"),
        ('{"requests": []}', None, "the file has no requests"),
    ],
)
async def test_json_of_the_wrong_shape(
    tmp_path: Path, doc: str, line: int | None, problem: str
) -> None:
    e = await import_error(write(tmp_path / "git.json", doc))
    assert e.line == line
    assert problem in e.problem
    assert str(e).startswith("git.json, line " if line else "git.json: ")


@pytest.mark.parametrize("content", ["", "  \n\n\t\n", "\ufeff"])
async def test_empty_file(tmp_path: Path, content: str) -> None:
    for name in ("e.json", "e.jsonl", "e.csv"):
        e = await import_error(write(tmp_path / name, content))
        assert str(e) == f"{name}: the file is empty"


async def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = write(tmp_path / "latin1.csv", "input\nok\ncaf\xe9\n".encode("latin-1"))
    e = await import_error(path)
    assert e.line == 3
    assert str(e).startswith("latin1.csv, line 3: not UTF-8 text (byte 0xe9 at byte offset 12)")


async def test_binary_file(tmp_path: Path) -> None:
    path = write(tmp_path / "data.json", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    e = await import_error(path)
    assert "looks like a binary file" in str(e)
    assert str(e).startswith("data.json: ")


async def test_utf16_file_says_so(tmp_path: Path) -> None:
    path = write(tmp_path / "w.csv", "input\nhello\n".encode("utf-16"))
    e = await import_error(path)
    assert "UTF-16" in str(e)


async def test_file_over_the_size_limit_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "huge.json"
    with open(path, "wb") as f:
        f.truncate(200 * 1024**2)  # sparse: takes no disk space
    tracemalloc.start()
    try:
        e = await import_error(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * 1024**2, "the file was read into memory"
    assert str(e) == "huge.json: the file is 200.0 MB; files larger than 100 MB cannot be imported"
    assert MAX_IMPORT_BYTES == 100 * 1024**2


def test_parse_dataset_refuses_oversized_bytes() -> None:
    with pytest.raises(DatasetFormatError, match="larger than 100 MB"):
        parse_dataset(b" " * (MAX_IMPORT_BYTES + 1), name="big.csv", format="csv")


async def test_csv_without_the_chosen_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "id,text,answer\n1,hello,world\n")
    e = await import_error(path, input_column="question")
    assert (
        str(e)
        == 'd.csv, row 1: no request column "question"; the columns are "id", "text", "answer"'
    )
    e = await import_error(path, input_column="text", reference_column="gold")
    assert 'no reference column "gold"; the columns are "id", "text", "answer"' in str(e)
    # No column chosen and none of the usual names: say which names were looked for.
    e = await import_error(path)
    assert str(e).startswith('d.csv, row 1: no request column "input" or "request"')
    assert 'the columns are "id", "text", "answer"' in str(e)


async def test_csv_bad_rows_name_the_row(tmp_path: Path) -> None:
    e = await import_error(write(tmp_path / "d.csv", "input,reference\na,1\n,2\n"))
    assert str(e) == "d.csv, row 3: the request is empty"
    e = await import_error(write(tmp_path / "d.csv", 'input,reference\n"a\nb",1\nc\n'))
    assert str(e) == "d.csv, row 3: has 1 field but the header has 2 (line 4 of the file)"
    e = await import_error(write(tmp_path / "d.csv", "input,split\na,train\nb,later\n"))
    assert e.line == 3
    assert "unknown split 'later'" in e.problem


async def test_jsonl_with_one_bad_line_fails_the_whole_import(tmp_path: Path) -> None:
    good = [json.dumps({"input": f"request {i}"}) for i in range(30)]
    lines = [*good[:16], '{"input": "broken", }', *good[16:]]
    e = await import_error(write(tmp_path / "git.jsonl", "\n".join(lines)))
    # The wording of json's message varies between Python versions.
    assert str(e).startswith("git.jsonl, line 17: not valid JSON (")
    assert e.line == 17
    lines = [*good[:5], '{"text": "no input key"}', *good[5:]]
    e = await import_error(write(tmp_path / "git.jsonl", "\n".join(lines)))
    assert e.line == 6
    assert 'no request: expected a key "input", "request", "prompt" or "messages"' in e.problem
    assert 'found "text"' in e.problem
    lines = [*good[:2], "[1, 2]", *good[2:]]
    e = await import_error(write(tmp_path / "git.jsonl", "\n".join(lines)))
    assert str(e) == 'git.jsonl, line 3: expected an object like {"input": "..."}, found a list'


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ({"input": ""}, "the request is empty"),
        ({"input": "  \n "}, "the request is empty"),
        ({"input": None}, '"input" is null, expected a string'),
        ({"input": "a", "reference": 5}, '"reference" is a number (5), expected a string'),
        ({"messages": [{"role": "system", "content": "s"}]}, '"messages" has no user turn'),
        ({"messages": "hi"}, '"messages" is a string, expected a list'),
        ({"messages": [{"content": "hi"}]}, 'message 1 has no "role"'),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "message 1 has a image_url part; only text can be imported",
        ),
    ],
)
async def test_jsonl_bad_items_name_the_line(
    tmp_path: Path, line: dict[str, object], problem: str
) -> None:
    text = '{"input": "fine"}\n\n' + json.dumps(line) + "\n"
    e = await import_error(write(tmp_path / "x.jsonl", text))
    assert str(e) == f"x.jsonl, line 3: {problem}"


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv"])
async def test_request_over_the_length_limit(tmp_path: Path, fmt: str) -> None:
    long = "x" * (MAX_INPUT_CHARS + 1)
    ok = "y" * MAX_INPUT_CHARS
    texts = {
        "json": json.dumps({"requests": [ok, long]}, indent=1),
        "jsonl": json.dumps({"input": ok}) + "\n" + json.dumps({"input": long}) + "\n",
        "csv": f"input\n{ok}\n{long}\n",
    }
    e = await import_error(write(tmp_path / f"long.{fmt}", texts[fmt]))
    assert "longer than 32,000 characters (32,001 characters)" in e.problem
    assert e.line == {"json": 4, "jsonl": 2, "csv": 3}[fmt]
    assert (await read_dataset(write(tmp_path / f"ok.{fmt}", texts[fmt].replace(long, "z")))).items[
        0
    ].input == ok


async def test_missing_file(tmp_path: Path) -> None:
    e = await import_error(tmp_path / "gone.json")
    assert str(e) == "gone.json: cannot read the file (No such file or directory)"


async def test_the_source_file_is_never_modified(tmp_path: Path) -> None:
    tmp_path = tmp_path / "src"
    tmp_path.mkdir()
    good = write(tmp_path / "good.json", json.dumps({"requests": ["a", "b"]}))
    bad = write(tmp_path / "bad.jsonl", '{"input": "a"}\n{"input": }\n')
    os.utime(good, ns=(1_000_000_000, 1_000_000_000))
    os.utime(bad, ns=(1_000_000_000, 1_000_000_000))
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (good, bad)}
    await read_dataset(good)
    with pytest.raises(DatasetFormatError):
        await read_dataset(bad)
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (good, bad)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "good.json"]


# --------------------------------------------------------------------------- export


TRICKY = [
    ItemDraft("Create a branch called 'feature-login'.", "git switch -c feature-login", "train"),
    ItemDraft('Commit with the message "fix: a, b"', 'git commit -m "fix: a, b"', "eval"),
    ItemDraft("Zweig „über“ anlegen — 日本語 ✓ 🚀", "git branch über", ""),
    ItemDraft("line one\nline two\r\nline three", "multi\nline\treference", "train"),
    ItemDraft("separators \u2028 and \x85 inside", "", ""),
    ItemDraft("no reference, comma; semicolon\ttab", "", "eval"),
]


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv", "tsv"])
async def test_round_trip(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"out.{fmt}"
    count = await write_dataset(path, iter(TRICKY), format=fmt, system_prompt="Sys ✓")
    assert count == len(TRICKY)
    parsed = await read_dataset(path)
    assert parsed.items == TRICKY
    assert parsed.system_prompt == ("Sys ✓" if fmt == "json" else None)


async def test_round_trip_chat_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "chat.jsonl"
    await write_dataset(path, TRICKY, format="chat-jsonl", system_prompt="Be terse.")
    first = json.loads(path.read_text(encoding="utf-8").split("\n")[0])
    assert first == {
        "messages": [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": TRICKY[0].input},
            {"role": "assistant", "content": TRICKY[0].reference},
        ]
    }
    parsed = await read_dataset(path)
    assert parsed.system_prompt == "Be terse."
    # Chat lines carry no split.
    assert parsed.items == [ItemDraft(i.input, i.reference) for i in TRICKY]


async def test_json_export_shape(tmp_path: Path) -> None:
    path = tmp_path / "seed.json"
    await write_dataset(path, [ItemDraft("a"), ItemDraft("b")], format="json")
    assert json.loads(path.read_text(encoding="utf-8")) == {"requests": ["a", "b"]}
    await write_dataset(path, TRICKY[:2], format="json", system_prompt="s")
    assert list(json.loads(path.read_text(encoding="utf-8"))) == [
        "system_prompt",
        "requests",
        "references",
        "splits",
    ]


async def test_csv_export_header_and_quoting(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    await write_dataset(path, TRICKY, format="csv")
    rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"), newline="")))
    assert rows[0] == ["input", "reference", "split"]
    assert rows[2] == [TRICKY[1].input, TRICKY[1].reference, "eval"]


async def test_write_is_atomic_and_keeps_the_old_file_on_failure(tmp_path: Path) -> None:
    tmp_path = tmp_path / "out"
    tmp_path.mkdir()
    path = write(tmp_path / "out.jsonl", "old contents\n")
    path.chmod(0o640)

    def items():
        yield ItemDraft("a")
        raise RuntimeError("the store went away")

    with pytest.raises(RuntimeError):
        await write_dataset(path, items(), format="jsonl")
    assert path.read_text() == "old contents\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]

    await write_dataset(path, [ItemDraft("a")], format="jsonl")
    assert path.read_text() == '{"input": "a", "reference": "", "split": ""}\n'
    assert path.stat().st_mode & 0o777 == 0o640  # an overwritten file keeps its mode
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]

    with pytest.raises(ValueError, match="unknown export format"):
        await write_dataset(path, [], format="xml")


# --------------------------------------------------------------------------- requests


def test_validate_request() -> None:
    assert validate_request("  git status?\n") == "git status?"
    assert validate_request("x" * MAX_INPUT_CHARS) == "x" * MAX_INPUT_CHARS
    with pytest.raises(ValueError, match="empty"):
        validate_request(" \n\t ")
    with pytest.raises(ValueError, match="longer than 32,000 characters"):
        validate_request("x" * (MAX_INPUT_CHARS + 1))


def test_normalise_request() -> None:
    assert normalise_request("  Create a NEW branch,   called 'Foo'! ") == (
        "create a new branch called foo"
    )
    assert normalise_request("Don't push.") == normalise_request("dont   push")
    assert normalise_request("Straße «über» — ok…") == "strasse über ok"
    assert normalise_request("ＧＩＴ　ｓｔａｔｕｓ？") == "git status"
    assert normalise_request("日本語、テスト。") == "日本語テスト"
    assert normalise_request("a\u00a0b\u2003c") == "a b c"
    assert normalise_request("?!") == ""


def test_find_duplicates() -> None:
    inputs = [
        "Show the status.",
        "List branches",
        "Show the status.",
        "show   the STATUS",
        "list branches!",
        "Delete a tag",
        "show   the STATUS",
    ]
    assert find_duplicates(inputs) == ["", "", "exact", "normalised", "normalised", "", "exact"]
    assert find_duplicates([]) == []


# --------------------------------------------------------------------------- scale


def test_100k_items_parse_and_dedupe() -> None:
    # What 100,000 items give; how long it takes is bench/dataset_scale.py's to print.
    n = 100_000
    requests = [f"Create a new branch called 'feature-{i}' and switch to it." for i in range(n)]
    doc = {"requests": requests, "references": [f"git switch -c f{i}" for i in range(n)]}
    parsed = parse_dataset(json.dumps(doc).encode(), name="big.json", format="json")
    assert len(parsed.items) == n
    assert (parsed.items[-1].input, parsed.items[-1].reference) == (
        requests[-1],
        f"git switch -c f{n - 1}",
    )
    flags = find_duplicates(requests + requests[:10])
    assert flags.count("exact") == 10 and flags[n:] == ["exact"] * 10
