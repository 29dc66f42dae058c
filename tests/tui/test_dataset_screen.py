"""The Dataset screen driven with real keys. Every test checks what the screen shows and what
the workspace's SQLite file holds, read on a connection of its own."""

from __future__ import annotations

import json
import os
from pathlib import Path

from textual.content import Content
from textual.widgets import Input, OptionList, Select, Static, TextArea

from screens.dataset import DatasetScreen
from screens.dialogs import (
    ConfirmDialog,
    DatasetsDialog,
    EditItemDialog,
    ExportDialog,
    ImportDialog,
    SplitDialog,
    SystemPromptDialog,
    TextPromptDialog,
)
from tests.tui.conftest import (
    SMALL_ITEMS,
    SMALL_NAME,
    SMALL_PROMPT,
    Db,
    Driver,
    drive,
    make_app,
    plain,
)
from tui.app import DistillApp
from tui.engine.datasets import ItemDraft, read_dataset
from tui.engine.store import Store

SMALL = [(d.input, d.reference, d.split) for d in SMALL_ITEMS]


def dataset_screen(t: Driver) -> DatasetScreen:
    screen = t.app.screen
    assert isinstance(screen, DatasetScreen), screen
    return screen


def shown_inputs(t: Driver) -> list[str]:
    panel = dataset_screen(t).items_panel
    return [panel.items[i].input for i in panel.shown]


def dialog_error(t: Driver) -> str:
    return plain(t.app.screen.query_one("#dialog-error", Static))


async def clear_input(t: Driver) -> None:
    await t.press("end", "ctrl+u")


async def go_to_row(t: Driver, row: int) -> None:
    await t.press("home", *["down"] * row)
    assert dataset_screen(t).table.cursor == row


# -- the table -------------------------------------------------------------------------------


async def test_table_shows_items_with_split_duplicate_flag_and_tokens_and_filters(
    small_app: DistillApp,
) -> None:
    async with drive(small_app) as t:
        screen = dataset_screen(t)
        assert screen.dataset is not None and screen.dataset.name == SMALL_NAME
        table = screen.table
        assert table.row_count == len(SMALL_ITEMS)
        rows = [tuple(table._rows[i]) for i in range(table.row_count)]
        assert rows[0] == ("1", SMALL[0][0], "git status", "train", "", "8")
        assert rows[1][4] == "normalised"
        assert rows[3][3:5] == ("", "exact")
        assert rows[7][4] == "normalised"
        counts = plain(screen.query_one("#dataset-counts", Static))
        assert counts == "8 items · 4 train · 2 eval · 2 unassigned · 3 duplicates"
        assert SMALL_PROMPT in plain(screen.query_one("#system-prompt", Static))
        # The detail pane follows the cursor.
        await t.press("down", "down", "down")
        detail = plain(screen.query_one("#item-detail", Static))
        assert "#4 unassigned  (exact duplicate of an earlier item)" in detail
        assert "Create a branch called feature" in detail

        # / filters by text (request or reference), split:… and is:dup; esc clears it.
        await t.press("7", "1")  # a screen to go back to: esc in the filter must not go there
        screen = dataset_screen(t)
        box = screen.query_one("#filter", Input)
        assert not box.display
        await t.press("slash")
        assert box.display and box.has_focus

        await t.paste("CALLED")
        assert shown_inputs(t) == [SMALL[2][0], SMALL[3][0]]
        assert plain(screen.query_one("#dataset-counts", Static)).startswith("2 shown · 8 items")

        await clear_input(t)
        await t.paste("split:eval")
        assert shown_inputs(t) == [SMALL[1][0], SMALL[4][0]]
        await clear_input(t)
        await t.paste("split:none")
        assert shown_inputs(t) == [SMALL[3][0], SMALL[6][0]]
        await clear_input(t)
        await t.paste("is:dup")
        assert shown_inputs(t) == [SMALL[1][0], SMALL[3][0], SMALL[7][0]]
        await clear_input(t)
        await t.paste("status split:train")
        assert shown_inputs(t) == [SMALL[0][0], SMALL[7][0]]
        await clear_input(t)
        await t.paste("git reset")  # references are searched too
        assert shown_inputs(t) == [SMALL[4][0]]
        await clear_input(t)
        await t.paste("nothing like this")
        assert shown_inputs(t) == []
        assert "No items match the filter." in plain(screen.query_one("#item-detail", Static))

        # enter keeps the filter and returns to the table; keys act on the filtered rows.
        await clear_input(t)
        await t.type("tag")  # one key at a time, as a person types
        await t.press("enter")
        assert screen.table.has_focus and box.display
        current = screen.current_item()
        assert current is not None and current.input == "List every tag"

        await t.press("slash", "escape")
        assert box.value == "" and not box.display
        assert screen.table.has_focus
        assert len(shown_inputs(t)) == 8
        assert t.app.current_mode == "dataset"


# -- add and edit ----------------------------------------------------------------------------


async def test_add_items_refusing_empty_and_over_long_requests(
    small_app: DistillApp, db: Db
) -> None:
    async with drive(small_app) as t:
        await t.press("a")
        assert isinstance(t.app.screen, EditItemDialog)
        await t.type("Rebase onto main")
        await t.press("tab")
        await t.type("git rebase main")
        await t.press("tab", "enter", "down", "down", "enter")  # split: unassigned -> eval
        assert t.app.screen.query_one("#split", Select).value == "eval"
        await t.press("ctrl+s")
        await t.settle()

        assert db.items(SMALL_NAME) == [*SMALL, ("Rebase onto main", "git rebase main", "eval")]
        screen = dataset_screen(t)
        assert screen.table.row_count == 9
        current = screen.current_item()
        assert current is not None and current.input == "Rebase onto main"
        assert current.position == 9
        assert any("Added item #9" in m for _, _, m in t.notifications())

        # An empty request is refused, adding or editing, and nothing is saved.
        added = [*SMALL, ("Rebase onto main", "git rebase main", "eval")]
        await t.press("a", "space", "ctrl+s")
        assert isinstance(t.app.screen, EditItemDialog), "an empty request must not close"
        assert dialog_error(t) == "The request is empty."
        await t.press("escape")
        await t.settle()
        assert db.items(SMALL_NAME) == added

        await t.press("e", "f7", "backspace", "ctrl+s")
        assert isinstance(t.app.screen, EditItemDialog)
        assert dialog_error(t) == "The request is empty."
        await t.press("escape")
        await t.settle()
        assert db.items(SMALL_NAME) == added
        assert isinstance(t.app.screen, DatasetScreen)

        # So is a request over 32,000 characters.
        await t.press("a")
        # As if pasted: typing 32,001 keys one by one would take minutes.
        t.app.screen.query_one("#input", TextArea).insert("x" * 32_001)
        await t.press("ctrl+s")
        assert isinstance(t.app.screen, EditItemDialog)
        assert "longer than 32,000 characters" in dialog_error(t)
        assert db.items(SMALL_NAME) == added
        # Exactly at the limit is fine.
        await t.press("backspace", "ctrl+s")
        await t.settle()
        assert isinstance(t.app.screen, DatasetScreen)
        assert db.items(SMALL_NAME) == [*added, ("x" * 32_000, "", "")]


async def test_edit_with_e_and_with_enter(small_app: DistillApp, db: Db) -> None:
    async with drive(small_app) as t:
        await go_to_row(t, 5)
        await t.press("e")
        dialog = t.app.screen
        assert isinstance(dialog, EditItemDialog)
        assert dialog.query_one("#input", TextArea).text == "List every tag"
        await t.press("f7")  # select all, then paste over it
        await t.paste("List all tags")
        await t.press("ctrl+s")
        await t.settle()
        assert db.items(SMALL_NAME)[5] == ("List all tags", "git tag --list", "train")

        await go_to_row(t, 6)
        await t.press("enter")
        assert isinstance(t.app.screen, EditItemDialog)
        await t.press("tab", "ctrl+e")  # to the reference, end of line
        await t.type(" -u")
        await t.press("ctrl+s")
        await t.settle()
        assert db.items(SMALL_NAME)[6] == (SMALL[6][0], "git push origin main -u", "")
        assert dataset_screen(t).table.cursor == 6

        # Undo puts the last edit back.
        await t.press("u")
        assert db.items(SMALL_NAME)[6] == SMALL[6]


# -- delete and undo -------------------------------------------------------------------------


async def test_delete_then_undo_restores_exactly(small_app: DistillApp, db: Db) -> None:
    before = db.all_item_rows(SMALL_NAME)
    async with drive(small_app) as t:
        await go_to_row(t, 2)
        await t.press("d")
        assert db.items(SMALL_NAME) == SMALL[:2] + SMALL[3:]
        assert any("Deleted item #3" in m for _, _, m in t.notifications())
        screen = dataset_screen(t)
        assert screen.table.row_count == 7
        assert screen.table.cursor == 2  # stays in place, now on the next item
        await t.press("delete")
        assert db.items(SMALL_NAME) == SMALL[:2] + SMALL[4:]

        await t.press("u")
        assert db.items(SMALL_NAME) == SMALL[:2] + SMALL[3:]
        await t.press("ctrl+z")
        assert db.all_item_rows(SMALL_NAME) == before
        assert shown_inputs(t) == [s[0] for s in SMALL]
        await t.press("u")
        assert ("information", "", "Nothing to undo.") in t.notifications()
        assert db.all_item_rows(SMALL_NAME) == before


# -- splits ----------------------------------------------------------------------------------


async def test_split_by_hand_and_at_random(small_app: DistillApp, db: Db) -> None:
    async with drive(small_app) as t:
        await go_to_row(t, 6)  # unassigned
        await t.press("t")
        assert db.items(SMALL_NAME)[6][2] == "train"
        await t.press("t")
        assert db.items(SMALL_NAME)[6][2] == "eval"
        assert dataset_screen(t).table._rows[6][3] == "eval"
        await t.press("t")
        assert db.items(SMALL_NAME)[6][2] == ""
        await t.press("u")
        assert db.items(SMALL_NAME)[6][2] == "eval"

        # A random split refuses a fraction outside (0, 1) and stores nothing.
        by_hand = db.items(SMALL_NAME)
        await t.press("s")
        await clear_input(t)
        await t.type("1.5")
        await t.press("enter")
        assert isinstance(t.app.screen, SplitDialog)
        assert "between 0 and 1" in dialog_error(t)
        await t.press("escape")
        await t.settle()
        assert db.items(SMALL_NAME) == by_hand
        assert db.dataset(SMALL_NAME)["split_seed"] is None

        # A random split: the same seed gives the same split, and both are stored.
        await _random_split(t, "0.25", "7")
        first = [split for _, _, split in db.items(SMALL_NAME)]
        assert sorted(first) == ["eval"] * 2 + ["train"] * 6
        stored = db.dataset(SMALL_NAME)
        assert (stored["split_seed"], stored["eval_fraction"]) == (7, 0.25)
        assert any("6 train, 2 eval (seed 7)" in m for _, _, m in t.notifications())

        # The dialog offers the stored fraction and seed next time.
        await t.press("s")
        assert t.app.screen.query_one("#fraction", Input).value == "0.25"
        assert t.app.screen.query_one("#seed", Input).value == "7"
        await t.press("escape")

        await _random_split(t, "0.25", "1")
        assert [split for _, _, split in db.items(SMALL_NAME)] != first
        assert db.dataset(SMALL_NAME)["split_seed"] == 1

        await _random_split(t, "0.25", "7")
        assert [split for _, _, split in db.items(SMALL_NAME)] == first
        assert [row[3] for row in dataset_screen(t).table._rows] == first

        # Undo returns the split before the last one.
        await t.press("u")
        second = [split for _, _, split in db.items(SMALL_NAME)]
        assert second != first and sorted(second) == sorted(first)


async def _random_split(t: Driver, fraction: str, seed: str) -> None:
    await t.press("s")
    assert isinstance(t.app.screen, SplitDialog)
    assert t.app.screen.query_one("#fraction", Input).has_focus
    await clear_input(t)
    await t.type(fraction)
    await t.press("tab")
    await clear_input(t)
    await t.type(seed)
    await t.press("enter")
    await t.settle()


# -- duplicates ------------------------------------------------------------------------------


async def test_remove_duplicates_after_confirmation_then_undo(
    small_app: DistillApp, db: Db
) -> None:
    before = db.all_item_rows(SMALL_NAME)
    async with drive(small_app) as t:
        await t.press("x")
        dialog = t.app.screen
        assert isinstance(dialog, ConfirmDialog)
        assert "Remove 3 duplicate items (1 exact, 2 equal after ignoring case" in " ".join(
            plain(w) for w in dialog.query(Static)
        )
        await t.press("escape")  # cancelled: nothing happens
        await t.settle()
        assert db.all_item_rows(SMALL_NAME) == before

        await t.press("x", "enter")
        await t.settle()
        kept = [SMALL[0], SMALL[2], SMALL[4], SMALL[5], SMALL[6]]
        assert db.items(SMALL_NAME) == kept
        screen = dataset_screen(t)
        assert not any(screen.items_panel.flags)
        assert "duplicates" not in plain(screen.query_one("#dataset-counts", Static))

        await t.press("x")
        await t.settle()
        assert ("information", "", "No duplicates in this dataset.") in t.notifications()

        await t.press("u")
        assert db.all_item_rows(SMALL_NAME) == before
        assert dataset_screen(t).items_panel.flags.count("") == 5


# -- system prompt ---------------------------------------------------------------------------


async def test_edit_the_system_prompt_then_undo(small_app: DistillApp, db: Db) -> None:
    async with drive(small_app) as t:
        await t.press("p")
        dialog = t.app.screen
        assert isinstance(dialog, SystemPromptDialog)
        assert dialog.query_one("#prompt", TextArea).text == SMALL_PROMPT
        await t.press("f7")
        await t.paste("Reply with git only.")
        await t.press("ctrl+s")
        await t.settle()
        assert db.dataset(SMALL_NAME)["system_prompt"] == "Reply with git only."
        shown = plain(dataset_screen(t).query_one("#system-prompt", Static))
        assert shown == "System prompt Reply with git only."

        await t.press("u")
        assert db.dataset(SMALL_NAME)["system_prompt"] == SMALL_PROMPT


# -- import ----------------------------------------------------------------------------------


async def _import(t: Driver, path: str, new_name: str = "") -> ImportDialog:
    await t.press("i")
    dialog = t.app.screen
    assert isinstance(dialog, ImportDialog)
    assert dialog.query_one("#path", Input).has_focus
    await t.paste(path)
    if new_name:
        name_box = dialog.query_one("#new-name", Input)
        for _ in range(5):  # past the format (and a CSV's columns) to the dataset name
            await t.press("tab")
            if name_box.has_focus:
                break
        assert name_box.has_focus
        await t.paste(new_name)
    return dialog


async def test_import_seed_json_into_a_new_dataset_and_append_jsonl(
    small_app: DistillApp, db: Db, tmp_path: Path
) -> None:
    seed = tmp_path / "seed.json"  # the working directory: relative paths are short to type
    seed.write_text(
        json.dumps(
            {
                "system_prompt": "Git only.",
                "requests": ["Show the log", "Stage all changes", "Fetch from origin"],
                "references": ["git log", "git add -A", "git fetch origin"],
            }
        ),
        encoding="utf-8",
    )
    lines = [
        {"input": "Delete the branch old", "reference": "git branch -d old", "split": "eval"},
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "first question"},
                {"role": "assistant", "content": "first answer"},
                {"role": "user", "content": "Show remote URLs"},
                {"role": "assistant", "content": "git remote -v"},
            ]
        },
    ]
    (tmp_path / "more.jsonl").write_text(
        "".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8"
    )
    sources = {p.name: p.read_bytes() for p in tmp_path.glob("*.json*")}
    async with drive(small_app) as t:
        await _import(t, "seed.json", "seeded")
        await t.press("enter")  # enter in a field submits the dialog
        await t.settle()
        seeded = [
            ("Show the log", "git log", ""),
            ("Stage all changes", "git add -A", ""),
            ("Fetch from origin", "git fetch origin", ""),
        ]
        assert db.dataset_names() == [SMALL_NAME, "seeded"]
        assert db.items("seeded") == seeded
        assert db.dataset("seeded")["system_prompt"] == "Git only."
        assert db.items(SMALL_NAME) == SMALL
        screen = dataset_screen(t)
        assert screen.dataset is not None and screen.dataset.name == "seeded"
        assert shown_inputs(t) == [s[0] for s in seeded]
        assert any("Imported 3 items from seed.json" in m for _, _, m in t.notifications())

        # JSONL appended to the open dataset: plain lines, and OpenAI chat lines whose last
        # user turn is the request and the assistant's answer the reference.
        await _import(t, "more.jsonl")
        await t.click_ok()
        await t.settle()
        appended = [
            *seeded,
            ("Delete the branch old", "git branch -d old", "eval"),
            ("Show remote URLs", "git remote -v", ""),
        ]
        assert db.items("seeded") == appended
        assert shown_inputs(t) == [s[0] for s in appended]
        await t.press("u")  # an import is undone as a whole
        assert db.items("seeded") == seeded
    assert db.dataset_names() == [SMALL_NAME, "seeded"]
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*.json*")} == sources


async def test_import_csv_with_chosen_columns(
    small_app: DistillApp, db: Db, tmp_path: Path
) -> None:
    (tmp_path / "cmds.csv").write_text(
        "topic,ask,command,note\n"
        'tags,"Tag this commit v1.0",git tag v1.0,\n'
        'log,"Who changed line 10 of app.py?",git blame -L 10 app.py,"with, a comma"\n',
        encoding="utf-8",
    )
    async with drive(small_app) as t:
        dialog = await _import(t, "cmds.csv", "from-csv")
        columns = dialog.query_one("#csv-columns")
        assert columns.display, "choosing columns is offered for a CSV"
        request = dialog.query_one("#input-column", Select)
        reference = dialog.query_one("#reference-column", Select)
        assert request.is_blank() and reference.is_blank()  # no column has a known name
        # An import without a request column names the columns there are.
        await t.click_ok()
        await t.settle()
        assert any("no request column" in e and '"ask"' in e for e in t.errors()), t.errors()
        assert db.dataset_names() == [SMALL_NAME]

        await t.press("i")
        dialog = t.app.screen
        assert isinstance(dialog, ImportDialog)
        await t.paste("cmds.csv")
        dialog.query_one("#input-column", Select).focus()
        await t.press("enter", "down", "down", "enter")  # topic, ask
        dialog.query_one("#reference-column", Select).focus()
        await t.press("enter", "down", "down", "down", "enter")  # topic, ask, command
        assert dialog.query_one("#input-column", Select).value == "ask"
        assert dialog.query_one("#reference-column", Select).value == "command"
        dialog.query_one("#new-name", Input).focus()
        await t.paste("from-csv")
        await t.press("enter")
        await t.settle()
        assert db.items("from-csv") == [
            ("Tag this commit v1.0", "git tag v1.0", ""),
            ("Who changed line 10 of app.py?", "git blame -L 10 app.py", ""),
        ]


async def test_malformed_imports_name_file_and_line_and_change_nothing(
    small_app: DistillApp, db: Db, tmp_path: Path
) -> None:
    files = {
        "broken.json": (b'{"requests": ["a", "b",\n  ]}\n', "broken.json, line 2"),
        "oneline.jsonl": (
            b'{"input": "ok one"}\n{"input": "ok two"}\n{"input": 3}\n{"input": "ok"}\n',
            'oneline.jsonl, line 3: "input" is a number (3), expected a string',
        ),
        "latin1.csv": ("input\ncafé crème\n".encode("latin-1"), "latin1.csv, line 2: not UTF-8"),
        "empty.jsonl": (b"\n\n", "empty.jsonl: the file is empty"),
    }
    for name, (data, _) in files.items():
        (tmp_path / name).write_bytes(data)
    before_items = db.all_item_rows(SMALL_NAME)
    before_files = sorted(p.name for p in (tmp_path / "ws").iterdir())
    async with drive(small_app) as t:
        for name, (data, expected) in files.items():
            # Into a new dataset, or appended to the open one: refused either way.
            await _import(t, name, "fresh" if name.endswith("json") else "")
            await t.click_ok()
            await t.settle()
            errors = t.errors()
            assert errors and expected in errors[-1], (name, errors)
            assert errors[-1].startswith("Import refused: nothing changed")
            assert (tmp_path / name).read_bytes() == data
            assert isinstance(t.app.screen, DatasetScreen)
        assert len(t.errors()) == len(files)

        # A path that is not a file is refused in the dialog itself.
        await _import(t, "nowhere.json")
        await t.click_ok()
        assert isinstance(t.app.screen, ImportDialog)
        assert dialog_error(t) == "nowhere.json: no such file"
    assert db.dataset_names() == [SMALL_NAME]
    assert db.all_item_rows(SMALL_NAME) == before_items
    assert sorted(p.name for p in (tmp_path / "ws").iterdir()) == before_files


async def test_a_path_that_is_not_a_file_says_what_it_is(
    small_app: DistillApp, db: Db, tmp_path: Path
) -> None:
    """The dialog looks at the path without opening it (a named pipe would block) and names
    what is there instead of a file."""
    os.mkfifo(tmp_path / "pipe.csv")
    (tmp_path / "folder.jsonl").mkdir()
    before_items = db.all_item_rows(SMALL_NAME)
    async with drive(small_app) as t:
        for name, problem in [
            ("pipe.csv", "it is a named pipe (FIFO), not a regular file"),
            ("folder.jsonl", "it is a directory, not a file"),
            ("gone.json", "no such file"),
        ]:
            await _import(t, name)
            await t.click_ok()
            assert isinstance(t.app.screen, ImportDialog)
            assert dialog_error(t).startswith(f"{name}: {problem}"), dialog_error(t)
            await t.press("escape")
            assert isinstance(t.app.screen, DatasetScreen)
    assert db.dataset_names() == [SMALL_NAME]
    assert db.all_item_rows(SMALL_NAME) == before_items


# -- export ----------------------------------------------------------------------------------


async def _export(t: Driver, format_downs: int, path: str | None = None) -> Path:
    await t.press("E")
    dialog = t.app.screen
    assert isinstance(dialog, ExportDialog)
    dialog.query_one("#format", Select).focus()
    await t.press("enter", "home", *["down"] * format_downs, "enter")
    box = dialog.query_one("#path", Input)
    if path is not None:
        box.value = path
    target = Path(box.value)
    box.focus()
    await t.press("enter")
    await t.settle()
    return target


async def test_export_to_each_format_and_import_again(
    small_app: DistillApp, db: Db, tmp_path: Path
) -> None:
    async with drive(small_app) as t:
        await go_to_row(t, 3)
        await t.press("t", "t")  # every split value appears: train, eval and unassigned
        items = db.items(SMALL_NAME)
        drafts = [ItemDraft(*item) for item in items]
        exports = Path(t.app.workspace) / "exports"

        json_path = await _export(t, 0)
        assert json_path == exports / "small.json"
        csv_path = await _export(t, 3)
        assert csv_path == exports / "small.csv"
        jsonl_path = await _export(t, 1)
        assert jsonl_path == exports / "small.jsonl"
        chat_path = await _export(t, 2, "chat.jsonl")
        assert not t.errors()
        assert len(t.notifications()) == 4

        assert json.loads(json_path.read_text())["system_prompt"] == SMALL_PROMPT
        for path in (json_path, csv_path, jsonl_path):
            assert (await read_dataset(path)).items == drafts, path
        chat = await read_dataset(Path("chat.jsonl").resolve())
        assert [(i.input, i.reference) for i in chat.items] == [(d[0], d[1]) for d in items]
        assert chat.system_prompt == SMALL_PROMPT
        assert chat_path == Path("chat.jsonl")

        # And through the screen: the JSON export imported as a new dataset is the same.
        await _import(t, str(json_path), "again")
        await t.press("enter")
        await t.settle()
        assert db.items("again") == items
        assert db.dataset("again")["system_prompt"] == SMALL_PROMPT

        # A directory is not a file to export to.
        await t.press("E")
        t.app.screen.query_one("#path", Input).value = str(tmp_path)
        t.app.screen.query_one("#path", Input).focus()
        await t.press("enter")
        assert isinstance(t.app.screen, ExportDialog)
        assert "is a directory" in dialog_error(t)


# -- datasets --------------------------------------------------------------------------------


def dataset_options(t: Driver) -> list[str]:
    options = t.app.screen.query_one(OptionList)
    return [
        Content.from_markup(str(options.get_option_at_index(i).prompt))
        .plain.lstrip("▸ ")
        .split("  ")[0]
        for i in range(options.option_count)
    ]


async def test_datasets_new_rename_copy_switch_delete(small_app: DistillApp, db: Db) -> None:
    async with drive(small_app) as t:
        screen = dataset_screen(t)
        # new
        await t.press("o")
        assert isinstance(t.app.screen, DatasetsDialog)
        await t.press("n")
        assert isinstance(t.app.screen, TextPromptDialog)
        await t.press("enter")
        assert dialog_error(t) == "A dataset name cannot be empty."
        await t.type("second")
        await t.press("enter")
        await t.settle()
        assert db.dataset_names() == [SMALL_NAME, "second"]
        assert screen.dataset is not None and screen.dataset.name == "second"
        assert screen.table.row_count == 0
        assert "No items yet" in plain(screen.query_one("#item-detail", Static))

        # rename (the highlighted one is the current one)
        await t.press("o", "r")
        assert t.app.screen.query_one("#value", Input).value == "second"
        await clear_input(t)
        await t.paste("renamed")
        await t.press("enter")
        await t.settle()
        assert db.dataset_names() == [SMALL_NAME, "renamed"]
        assert screen.dataset.name == "renamed"
        assert plain(screen.query_one("#dataset-title", Static)) == "renamed"

        # a name that is taken is refused with a message, nothing changes
        await t.press("o", "r")
        await clear_input(t)
        await t.paste(SMALL_NAME)
        await t.press("enter")
        await t.settle()
        assert any("already exists" in e for e in t.errors())
        assert db.dataset_names() == [SMALL_NAME, "renamed"]

        # switch to small, then copy it
        await t.press("o")
        assert dataset_options(t) == ["renamed", SMALL_NAME]
        await t.press("down", "enter")
        await t.settle()
        assert screen.dataset.name == SMALL_NAME
        assert screen.table.row_count == 8
        await t.press("o", "c")
        assert t.app.screen.query_one("#value", Input).value == "small copy"
        await t.press("enter")
        await t.settle()
        assert db.dataset_names() == [SMALL_NAME, "renamed", "small copy"]
        assert db.items("small copy") == SMALL
        assert db.dataset("small copy")["system_prompt"] == SMALL_PROMPT
        assert screen.dataset.name == "small copy"

        # delete another dataset: asks first, the current one stays open
        await t.press("o", "home", "D")
        assert isinstance(t.app.screen, ConfirmDialog)
        await t.press("enter")
        await t.settle()
        assert db.dataset_names() == [SMALL_NAME, "small copy"]
        assert screen.dataset.name == "small copy"

        # delete the current one: another opens
        await t.press("o")
        assert dataset_options(t) == [SMALL_NAME, "small copy"]
        await t.press("D", "enter")
        await t.settle()
        assert db.dataset_names() == [SMALL_NAME]
        assert screen.dataset.name == SMALL_NAME
        assert screen.table.row_count == 8

        # Deleting the last dataset leaves a screen that says what to do.
        await t.press("o", "D", "enter")
        await t.settle()
        assert db.dataset_names() == []
        screen = dataset_screen(t)
        assert screen.dataset is None
        assert "No dataset" in plain(screen.query_one("#dataset-title", Static))
        await t.press("a")
        await t.settle()
        assert isinstance(t.app.screen, DatasetScreen)
        assert ("warning", "", "No dataset: press o to create one.") in t.notifications()
        await t.press("d", "t", "e")
        assert isinstance(t.app.screen, DatasetScreen)


async def test_text_with_brackets_is_shown_as_written(store: Store) -> None:
    store.create_dataset(
        "ops [/x] [b]",
        "Use [b] literally [/]",
        [ItemDraft("Match files like [abc].txt [/b]", "git ls-files '[/]*.txt'")],
    )
    async with drive(make_app(store)) as t:
        screen = dataset_screen(t)
        assert plain(screen.query_one("#dataset-title", Static)) == "ops [/x] [b]"
        assert "Use [b] literally [/]" in plain(screen.query_one("#system-prompt", Static))
        detail = plain(screen.query_one("#item-detail", Static))
        assert "Match files like [abc].txt [/b]" in detail
        assert "git ls-files '[/]*.txt'" in detail
        await t.press("o")
        assert dataset_options(t) == ["ops [/x] [b]"]
        await t.press("escape", "d")
        assert any("Deleted item #1" in m for _, _, m in t.notifications())
