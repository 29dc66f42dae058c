"""The workspace store on real SQLite files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.helpers.unprivileged import BECOME_NOBODY, run_as_nobody
from tui.engine.datasets import ItemDraft
from tui.engine.examples import GIT_DATASET_NAME, ensure_shipped_dataset, load_git_requests
from tui.engine.store import SCHEMA_VERSION, Store, StoreError, WorkspaceError


def drafts(*texts: str) -> list[ItemDraft]:
    return [ItemDraft(t, f"git {i}") for i, t in enumerate(texts)]


def fingerprint(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def test_new_workspace_is_wal_with_schema_version(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "new" / "nested")
    assert store.path.exists()
    mode = store.query("PRAGMA journal_mode")[0][0]
    assert mode == "wal"
    assert store.query("PRAGMA user_version")[0][0] == SCHEMA_VERSION
    tables = {r[0] for r in store.query("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {
        "datasets",
        "items",
        "runs",
        "completions",
        "evals",
        "eval_runs",
        "grades",
        "jobs",
        "job_events",
    } <= tables
    store.close()
    # Reopening keeps the data and does not migrate twice.
    again = Store.open(tmp_path / "new" / "nested")
    assert again.query("PRAGMA user_version")[0][0] == SCHEMA_VERSION
    again.close()


def test_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    Store.open(ws).close()
    db = ws / "distill.db"
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 5}")
    conn.commit()
    conn.close()
    before = fingerprint(db)
    with pytest.raises(WorkspaceError, match="newer distill-tui"):
        Store.open(ws)
    assert fingerprint(db) == before


def test_corrupt_database_is_refused_untouched(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    db = ws / "distill.db"
    db.write_bytes(b"this is not a database at all\n" * 100)
    before = fingerprint(db)
    with pytest.raises(WorkspaceError, match="not SQLite"):
        Store.open(ws)
    assert fingerprint(db) == before


def test_damaged_sqlite_is_refused_untouched(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    store = Store.open(ws)
    store.create_dataset("d", items=drafts(*[f"request {i}" for i in range(2000)]))
    store.close()
    db = ws / "distill.db"
    data = bytearray(db.read_bytes())
    # Keep the header, scribble over the b-tree pages.
    data[4096:12288] = b"\xff" * 8192
    db.write_bytes(bytes(data))
    before = fingerprint(db)
    with pytest.raises(WorkspaceError, match="corrupt"):
        Store.open(ws)
    assert fingerprint(db) == before


def test_workspace_path_that_cannot_be_a_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(WorkspaceError, match="cannot create the workspace directory"):
        Store.open(blocker / "ws")
    with pytest.raises(WorkspaceError, match="not a directory"):
        Store.open(blocker)


# Tries to open each workspace given, as nobody, and prints what happened.
OPEN_AS_NOBODY = (
    """
import json, sys
from tui.engine.store import Store, WorkspaceError
"""
    + BECOME_NOBODY
    + """
out = {}
for ws in sys.argv[1:]:
    try:
        Store.open(ws).close()
        out[ws] = "opened"
    except WorkspaceError as exc:
        out[ws] = str(exc)
print(json.dumps(out))
"""
)


def test_read_only_workspace_directory(reachable_dir: Path) -> None:
    ro = reachable_dir / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    nested = ro / "new" / "ws"
    out = run_as_nobody(OPEN_AS_NOBODY, str(ro), str(nested))
    assert out[str(ro)].startswith(
        f"{ro}: the workspace is read-only (the directory is not writable: "
    ), out
    assert out[str(nested)].startswith(f"{nested}: cannot create the workspace directory")
    assert not any("corrupt" in message for message in out.values())
    assert list(ro.iterdir()) == []  # nothing was created or left behind


def test_dataset_lifecycle(store: Store) -> None:
    a = store.create_dataset("alpha", "Be terse.", drafts("one", "two", "three"))
    assert [i.input for i in store.items(a)] == ["one", "two", "three"]
    with pytest.raises(StoreError, match="already exists"):
        store.create_dataset("alpha")
    store.rename_dataset(a, "  beta   set ")
    assert store.get_dataset(a).name == "beta set"
    b = store.create_dataset("other")
    with pytest.raises(StoreError, match="already exists"):
        store.rename_dataset(b, "beta set")
    copy = store.duplicate_dataset(a, "beta copy")
    assert [i.input for i in store.items(copy)] == ["one", "two", "three"]
    assert store.get_dataset(copy).system_prompt == "Be terse."
    store.delete_dataset(a)
    assert {d.name for d in store.list_datasets()} == {"other", "beta copy"}
    assert store.query("SELECT COUNT(*) FROM items WHERE dataset_id = ?", (a,))[0][0] == 0


def test_create_with_a_bad_item_leaves_nothing(store: Store) -> None:
    bad = [ItemDraft("fine"), ItemDraft("   ")]
    with pytest.raises(StoreError, match="item 2: the request is empty"):
        store.create_dataset("broken", items=bad)
    assert store.list_datasets() == []
    ds = store.create_dataset("ok", items=drafts("x"))
    with pytest.raises(StoreError):
        store.add_items(ds, [ItemDraft("y"), ItemDraft("z", split="validation")])
    assert [i.input for i in store.items(ds)] == ["x"]


def test_item_edit_validation(store: Store) -> None:
    ds = store.create_dataset("d", items=drafts("first"))
    (item,) = store.items(ds)
    updated = store.update_item(item.id, input="  changed  ", reference="git status", split="eval")
    assert (updated.input, updated.reference, updated.split) == ("changed", "git status", "eval")
    with pytest.raises(ValueError, match="empty"):
        store.update_item(item.id, input="   ")
    with pytest.raises(ValueError, match="32,000"):
        store.update_item(item.id, input="x" * 32_001)
    assert store.item(item.id).input == "changed"


def test_delete_and_restore_is_exact(store: Store) -> None:
    ds = store.create_dataset("d", items=drafts("a", "b", "c"))
    before = store.items(ds)
    store.delete_items([before[1].id])
    assert [i.input for i in store.items(ds)] == ["a", "c"]
    assert store.get_dataset(ds).n_items == 2
    store.restore_items([before[1].id])
    assert store.items(ds) == before


def test_new_items_go_after_existing_positions(store: Store) -> None:
    ds = store.create_dataset("d", items=drafts("a", "b"))
    store.delete_items([store.items(ds)[-1].id])
    item = store.add_item(ds, "c")
    assert item.position == 3  # positions are never reused, even after a delete


def test_random_split_is_reproducible_and_stored(store: Store) -> None:
    ds = store.create_dataset("d", items=drafts(*[f"r{i}" for i in range(100)]))
    assert store.random_split(ds, 0.2, seed=7) == (80, 20)
    first = {i.id: i.split for i in store.items(ds)}
    store.random_split(ds, 0.5, seed=1)
    store.random_split(ds, 0.2, seed=7)
    assert {i.id: i.split for i in store.items(ds)} == first
    info = store.get_dataset(ds)
    assert (info.split_seed, info.eval_fraction, info.n_eval) == (7, 0.2, 20)
    assert len(store.items(ds, split="eval")) == 20
    with pytest.raises(StoreError):
        store.random_split(ds, 1.5, seed=1)


def test_manual_split(store: Store) -> None:
    ds = store.create_dataset("d", items=drafts("a", "b"))
    a, b = store.items(ds)
    store.set_splits({a.id: "eval", b.id: "train"})
    assert [i.split for i in store.items(ds)] == ["eval", "train"]
    with pytest.raises(StoreError, match="unknown split"):
        store.set_splits({a.id: "test"})


async def test_async_access_runs_off_the_loop(store: Store) -> None:
    ds = await store.in_thread(store.create_dataset, "async", "", drafts("a"))
    items = await store.in_thread(store.items, ds)
    assert [i.input for i in items] == ["a"]


def test_shipped_dataset_goes_into_an_empty_workspace_once(store: Store) -> None:
    dataset_id = ensure_shipped_dataset(store)
    assert dataset_id is not None
    info = store.get_dataset(dataset_id)
    assert info.name == GIT_DATASET_NAME
    assert info.n_items == len(load_git_requests()) >= 400
    assert info.n_eval > 0 and info.n_train > info.n_eval
    assert ensure_shipped_dataset(store) is None
    assert len(store.list_datasets()) == 1
