"""The workspace: a directory holding `distill.db` (SQLite, WAL) and exported files.

One `Store` per workspace. Its methods are synchronous and safe to call from any thread (one
connection behind a lock); async callers use `await store.in_thread(store.method, ...)`, which runs
the call on the store's own thread so the UI loop never waits on disk.

The schema carries a version (`PRAGMA user_version`) and a list of migrations from the first
release on. A database from a newer release, or one that is not a SQLite database at all, is
refused without being touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from tui.engine import workspace_lock
from tui.engine.dbfile import (
    DatabaseFileError,
    check_database,
    connect_read_only,
    read_only_reason,
)

T = TypeVar("T")

DB_NAME = "distill.db"
SPLITS = ("", "train", "eval")

# Each entry migrates the schema from version i to i+1. Never edit a released entry; append.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE datasets(
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        system_prompt TEXT NOT NULL DEFAULT '',
        split_seed INTEGER,
        eval_fraction REAL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE items(
        id INTEGER PRIMARY KEY,
        dataset_id INTEGER NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        input TEXT NOT NULL CHECK (length(input) > 0),
        reference TEXT NOT NULL DEFAULT '',
        split TEXT NOT NULL DEFAULT '' CHECK (split IN ('', 'train', 'eval')),
        deleted INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX items_by_dataset ON items(dataset_id, deleted, position);
    CREATE TABLE runs(
        id INTEGER PRIMARY KEY,
        dataset_id INTEGER REFERENCES datasets(id) ON DELETE SET NULL,
        name TEXT NOT NULL DEFAULT '',
        model TEXT NOT NULL,
        role TEXT NOT NULL DEFAULT '',
        source TEXT NOT NULL DEFAULT 'generated',
        split TEXT NOT NULL DEFAULT '',
        system_prompt TEXT NOT NULL DEFAULT '',
        params TEXT NOT NULL DEFAULT '{}',
        metadata TEXT NOT NULL DEFAULT '{}',
        status TEXT NOT NULL DEFAULT 'created',
        created_at TEXT NOT NULL,
        finished_at TEXT
    );
    CREATE TABLE completions(
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        item_id INTEGER NOT NULL REFERENCES items(id) ON DELETE CASCADE,
        output TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL,
        error TEXT,
        prompt_tokens INTEGER,
        completion_tokens INTEGER,
        latency_ms REAL,
        first_token_ms REAL,
        finish_reason TEXT,
        remote_id TEXT,
        attempts INTEGER NOT NULL DEFAULT 1,
        created_at TEXT NOT NULL,
        UNIQUE(run_id, item_id)
    );
    CREATE TABLE evals(
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        graders TEXT NOT NULL DEFAULT '[]',
        created_at TEXT NOT NULL
    );
    CREATE TABLE eval_runs(
        id INTEGER PRIMARY KEY,
        eval_id INTEGER NOT NULL REFERENCES evals(id) ON DELETE CASCADE,
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        status TEXT NOT NULL DEFAULT 'created',
        summary TEXT NOT NULL DEFAULT '{}',
        created_at TEXT NOT NULL,
        finished_at TEXT
    );
    CREATE TABLE grades(
        eval_run_id INTEGER NOT NULL REFERENCES eval_runs(id) ON DELETE CASCADE,
        completion_id INTEGER NOT NULL REFERENCES completions(id) ON DELETE CASCADE,
        grader TEXT NOT NULL,
        score REAL,
        passed INTEGER,
        detail TEXT NOT NULL DEFAULT '',
        PRIMARY KEY(eval_run_id, completion_id, grader)
    );
    CREATE TABLE jobs(
        id INTEGER PRIMARY KEY,
        remote_id TEXT NOT NULL,
        base_url TEXT NOT NULL DEFAULT '',
        base_model TEXT NOT NULL,
        training_file TEXT,
        validation_file TEXT,
        hyperparameters TEXT NOT NULL DEFAULT '{}',
        status TEXT NOT NULL,
        fine_tuned_model TEXT,
        error TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        UNIQUE(base_url, remote_id)
    );
    CREATE TABLE job_events(
        job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        remote_id TEXT NOT NULL,
        created_at TEXT NOT NULL,
        level TEXT NOT NULL DEFAULT 'info',
        message TEXT NOT NULL DEFAULT '',
        metrics TEXT,
        PRIMARY KEY(job_id, remote_id)
    );
    """,
    # A teacher sampled n times per request: the voted answer is `output`; `confidence` is the
    # share of samples that agreed with it, `samples` the JSON list of every sample.
    """
    ALTER TABLE completions ADD COLUMN confidence REAL;
    ALTER TABLE completions ADD COLUMN samples TEXT;
    """,
    # A run sent through a Batch API (tui/engine/batch.py): a row per batch, written with its
    # uploaded input file before `batches.create` and given the batch's id the moment that
    # returns, so a restart finds it. `item_ids` (JSON) are the items it asks for: no item is
    # sent again while a batch holds it. `collected` = its results were mapped back to items.
    """
    CREATE TABLE batches(
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        remote_id TEXT,
        base_url TEXT NOT NULL DEFAULT '',
        input_file TEXT NOT NULL,
        item_ids TEXT NOT NULL DEFAULT '[]',
        status TEXT NOT NULL,
        request_counts TEXT NOT NULL DEFAULT '{}',
        output_file TEXT,
        error_file TEXT,
        error TEXT,
        expires_at INTEGER,
        collected INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX batches_by_run ON batches(run_id, collected);
    """,
    # A completion imported from the backend's stored completions (stored_import.py): its id
    # there and the metadata it was stored with. A stored completion is in a run at most once,
    # whoever imports it and however often: the unique index refuses a second copy even when
    # two imports of the same filter race.
    """
    ALTER TABLE completions ADD COLUMN stored_id TEXT;
    ALTER TABLE completions ADD COLUMN metadata TEXT;
    CREATE UNIQUE INDEX completions_stored ON completions(run_id, stored_id)
        WHERE stored_id IS NOT NULL;
    """,
    # Where an item came from: '' (written or imported by a person) or 'synthetic' (a request a
    # model wrote: the Dataset screen's "Generate requests…", tui/engine/synthetic.py).
    """
    ALTER TABLE items ADD COLUMN source TEXT NOT NULL DEFAULT '';
    """,
    # When the backend says a job ended (its finished_at): updated_at is when the workspace
    # last heard of it, which for a job that ended while no app watched is the next start.
    """
    ALTER TABLE jobs ADD COLUMN finished_at TEXT;
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


class WorkspaceError(Exception):
    """The workspace cannot be used; the message says what and where."""


class WorkspaceBusy(WorkspaceError):
    """Another process has the workspace open for writing (one writer per workspace)."""

    def __init__(self, directory: Path, holder: workspace_lock.Holder | None) -> None:
        self.directory = directory
        self.holder = holder
        who = holder.describe() if holder is not None else "another process"
        super().__init__(
            f"{directory}: the workspace is in use by {who}; open it read-only or wait"
        )


LOCK_NAME = "distill.lock"


def workspace_writer(directory: Path) -> workspace_lock.Holder | None:
    """The process that has the workspace open for writing now, if any (for a read-only
    window to say who)."""
    path = Path(directory) / LOCK_NAME
    if not workspace_lock.is_held(path):
        return None
    return workspace_lock.read_holder(path)


# What a completion is while a request for it is out: claimed by one generator, so no other
# (in this process or another) sends the same request. Never left behind: the generator
# records the outcome, and a writer that takes the workspace over from a dead one releases
# the claims it left (Store.open).
CLAIMED = "running"


class StoreError(ValueError):
    """An operation was refused (e.g. a duplicate dataset name); nothing was changed."""


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Item(NamedTuple):
    """One item of a dataset. A tuple, because a dataset screen holds 100,000 of them."""

    id: int
    position: int
    input: str
    reference: str
    split: str
    source: str = ""  # "" (a person's) or "synthetic" (a model wrote it; train split only)


@dataclass(frozen=True, slots=True)
class DatasetInfo:
    id: int
    name: str
    system_prompt: str
    n_items: int
    n_train: int
    n_eval: int
    split_seed: int | None
    eval_fraction: float | None
    created_at: str


def _check_existing_db(path: Path) -> None:
    """Read-only checks before we open for writing, so a bad file is never modified (and no
    -wal/-shm file is left beside one we refuse)."""
    try:
        check_database(
            path,
            what="the workspace database",
            schema_version=SCHEMA_VERSION,
            newer="Upgrade distill-tui or choose another workspace.",
            not_sqlite="Move it aside or choose another workspace with --workspace.",
        )
    except DatabaseFileError as exc:
        raise WorkspaceError(str(exc)) from exc


def _read_only_message(path: Path, reason: str) -> str:
    return (
        f"{path}: the workspace is read-only ({reason}); nothing was changed. distill-tui "
        "writes every completion as it finishes: make the workspace writable, or choose "
        "another one with --workspace."
    )


def _check_writable(directory: Path) -> None:
    if directory.exists() and not directory.is_dir():
        raise WorkspaceError(f"{directory}: the workspace path exists and is not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WorkspaceError(
            f"{directory}: cannot create the workspace directory ({exc.strerror})"
        ) from exc
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise WorkspaceError(
            f"{directory}: the workspace is read-only (the directory is not writable: "
            f"{exc.strerror})"
        ) from exc


class Store:
    """The SQLite workspace. Open with `Store.open(directory)`."""

    def __init__(self, directory: Path, conn: sqlite3.Connection) -> None:
        self.directory = directory
        self.path = directory / DB_NAME
        self._conn = conn
        self._lock = threading.RLock()
        self._executor: ThreadPoolExecutor | None = None
        self.read_only = False  # opened with Store.open(read_only=True): only looks
        self._workspace_lock: workspace_lock.Lock | None = None
        self._generating: set[int] = set()  # runs a generator of this process is running

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def open(cls, directory: Path | str, *, read_only: bool = False) -> Store:
        """Open (creating it if needed) the workspace for writing; `read_only=True` only looks
        at an existing one, which works on a read-only directory or file system and changes
        nothing (writes then fail)."""
        directory = Path(directory).expanduser()
        path = directory / DB_NAME
        if read_only:
            return cls._open_read_only(directory, path)
        if path.exists():
            _check_existing_db(path)
            reason = read_only_reason(path)
            if reason is not None:
                raise WorkspaceError(_read_only_message(path, reason))
        _check_writable(directory)
        # One writer per workspace: an OS lock held until close() (released by the kernel
        # if we die), shared by the stores this process opens on the same workspace.
        try:
            lock = workspace_lock.acquire(directory / LOCK_NAME)
        except workspace_lock.LockHeld as held:
            raise WorkspaceBusy(directory, held.holder) from None
        try:
            store = cls._open_locked(directory, path)
        except BaseException:
            lock.release()
            raise
        store._workspace_lock = lock
        if lock.fresh:
            # Nobody else writes here now: a claim left behind is a dead writer's.
            try:
                store.release_stale_claims()
            except BaseException:
                store.close()
                raise
        return store

    @classmethod
    def open_for_run(cls, directory: Path | str) -> Store:
        """Open the workspace in a run's process (tui/engine/run_process.py): its parent
        holds the one-writer lock and writes through it, so this process takes no lock of
        its own; refused unless the lock's holder is this process's parent."""
        directory = Path(directory).expanduser()
        holder = workspace_writer(directory)
        if holder is None or holder.pid != os.getppid():
            who = holder.describe() if holder is not None else "nobody"
            raise WorkspaceError(
                f"{directory}: a run's process writes only under its parent's lock, held by "
                f"{who} (parent pid {os.getppid()})"
            )
        return cls._open_locked(directory, directory / DB_NAME)

    @classmethod
    def _open_locked(cls, directory: Path, path: Path) -> Store:
        try:
            conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=10000")
            store = cls(directory, conn)
            store._migrate()
        except sqlite3.DatabaseError as exc:
            raise WorkspaceError(f"{path}: cannot open the workspace database ({exc})") from exc
        return store

    @classmethod
    def _open_read_only(cls, directory: Path, path: Path) -> Store:
        if not path.is_file():
            raise WorkspaceError(f"{path}: no workspace database here to open read-only")
        _check_existing_db(path)
        try:
            conn = connect_read_only(path)
            conn.isolation_level = None
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise WorkspaceError(f"{path}: cannot read the workspace database ({exc})") from exc
        if version < SCHEMA_VERSION:
            conn.close()
            raise WorkspaceError(
                f"{path}: this workspace was written by an older distill-tui (schema {version}) "
                "and must be upgraded, which needs it writable; open it once without read-only."
            )
        store = cls(directory, conn)
        store.read_only = True
        return store

    def _migrate(self) -> None:
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:  # written by a newer release since we checked it
            raise WorkspaceError(
                f"{self.path}: this workspace was written by a newer distill-tui (schema "
                f"{version}, this version knows up to {SCHEMA_VERSION})."
            )
        for target in range(version, SCHEMA_VERSION):
            with self.transaction() as conn:
                for statement in _split_sql(MIGRATIONS[target]):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={target + 1}")

    def close(self) -> None:
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
            self._conn.close()
            if self._workspace_lock is not None:
                self._workspace_lock.release()
                self._workspace_lock = None

    # -- plumbing ------------------------------------------------------------------------

    def transaction(self) -> _Transaction:
        if self.read_only:
            raise StoreError(f"{self.path}: the workspace is open read-only; nothing was changed")
        return _Transaction(self._conn, self._lock)

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            cur = self._conn.execute(sql, args)
            cur.row_factory = sqlite3.Row
            return cur.fetchall()

    async def in_thread(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a store method on the store's own thread, off the caller's event loop."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(func, *args, **kwargs))

    @property
    def exports_dir(self) -> Path:
        path = self.directory / "exports"
        path.mkdir(exist_ok=True)
        return path

    # -- datasets ------------------------------------------------------------------------

    _DATASETS_SQL = """
        SELECT d.*, COUNT(i.id) AS n_items,
               COALESCE(SUM(i.split = 'train'), 0) AS n_train,
               COALESCE(SUM(i.split = 'eval'), 0) AS n_eval
        FROM datasets d LEFT JOIN items i ON i.dataset_id = d.id AND i.deleted = 0
        {where} GROUP BY d.id ORDER BY d.name COLLATE NOCASE
    """

    def list_datasets(self) -> list[DatasetInfo]:
        rows = self.query(self._DATASETS_SQL.format(where=""))
        return [_dataset_info(row) for row in rows]

    def get_dataset(self, dataset_id: int) -> DatasetInfo:
        rows = self.query(self._DATASETS_SQL.format(where="WHERE d.id = ?"), (dataset_id,))
        if not rows:
            raise StoreError(f"no dataset with id {dataset_id}")
        return _dataset_info(rows[0])

    def dataset_by_name(self, name: str) -> DatasetInfo | None:
        return next((d for d in self.list_datasets() if d.name == name), None)

    def create_dataset(self, name: str, system_prompt: str = "", items: Iterable[Any] = ()) -> int:
        """Create a dataset, optionally with items (ItemDraft-like: input, reference, split).

        All or nothing: a bad item leaves no dataset behind."""
        name = _clean_name(name)
        with self.transaction() as conn:
            if conn.execute("SELECT 1 FROM datasets WHERE name = ?", (name,)).fetchone():
                raise StoreError(f"a dataset named {name!r} already exists")
            stamp = now()
            cur = conn.execute(
                "INSERT INTO datasets(name, system_prompt, created_at, updated_at)"
                " VALUES (?, ?, ?, ?)",
                (name, system_prompt, stamp, stamp),
            )
            dataset_id = int(cur.lastrowid or 0)
            self._insert_items(conn, dataset_id, items)
        return dataset_id

    def rename_dataset(self, dataset_id: int, name: str) -> None:
        name = _clean_name(name)
        with self.transaction() as conn:
            clash = conn.execute(
                "SELECT 1 FROM datasets WHERE name = ? AND id != ?", (name, dataset_id)
            ).fetchone()
            if clash:
                raise StoreError(f"a dataset named {name!r} already exists")
            conn.execute(
                "UPDATE datasets SET name = ?, updated_at = ? WHERE id = ?",
                (name, now(), dataset_id),
            )

    def duplicate_dataset(self, dataset_id: int, name: str) -> int:
        source = self.get_dataset(dataset_id)
        name = _clean_name(name)
        with self.transaction() as conn:
            if conn.execute("SELECT 1 FROM datasets WHERE name = ?", (name,)).fetchone():
                raise StoreError(f"a dataset named {name!r} already exists")
            stamp = now()
            cur = conn.execute(
                "INSERT INTO datasets(name, system_prompt, split_seed, eval_fraction,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                (name, source.system_prompt, source.split_seed, source.eval_fraction, stamp, stamp),
            )
            new_id = int(cur.lastrowid or 0)
            conn.execute(
                "INSERT INTO items(dataset_id, position, input, reference, split, source)"
                " SELECT ?, position, input, reference, split, source FROM items"
                " WHERE dataset_id = ? AND deleted = 0 ORDER BY position",
                (new_id, dataset_id),
            )
        return new_id

    def delete_dataset(self, dataset_id: int) -> None:
        with self.transaction() as conn:
            conn.execute("DELETE FROM datasets WHERE id = ?", (dataset_id,))

    def set_system_prompt(self, dataset_id: int, text: str) -> None:
        if len(text) > 32_000:
            raise StoreError("the system prompt is longer than 32,000 characters")
        with self.transaction() as conn:
            conn.execute(
                "UPDATE datasets SET system_prompt = ?, updated_at = ? WHERE id = ?",
                (text, now(), dataset_id),
            )

    # -- items ---------------------------------------------------------------------------

    def items(self, dataset_id: int, split: str | None = None) -> list[Item]:
        sql = (
            "SELECT id, position, input, reference, split, source FROM items"
            " WHERE dataset_id = ? AND deleted = 0"
        )
        args: list[Any] = [dataset_id]
        if split is not None:
            sql += " AND split = ?"
            args.append(split)
        sql += " ORDER BY position"
        with self._lock:
            rows = self._conn.execute(sql, args).fetchall()
        make = Item._make
        return [make(row) for row in rows]

    def longest_reference(self, dataset_id: int) -> int:
        """The length in characters of the dataset's longest reference (0: none has one)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT MAX(LENGTH(reference)) FROM items WHERE dataset_id = ? AND deleted = 0",
                (dataset_id,),
            ).fetchone()
        return int(row[0] or 0)

    def add_items(self, dataset_id: int, items: Iterable[Any], *, source: str = "") -> list[int]:
        """Append items (all or nothing), all from one `source` (see `Item`). Returns the new
        ids."""
        with self.transaction() as conn:
            return self._insert_items(conn, dataset_id, items, source)

    def add_item(self, dataset_id: int, input: str, reference: str = "", split: str = "") -> Item:
        from tui.engine.datasets import ItemDraft

        (item_id,) = self.add_items(dataset_id, [ItemDraft(input, reference, split)])
        return self.item(item_id)

    def item(self, item_id: int) -> Item:
        rows = self.query(
            "SELECT id, position, input, reference, split, source FROM items WHERE id = ?",
            (item_id,),
        )
        if not rows:
            raise StoreError(f"no item with id {item_id}")
        return Item(*rows[0])

    def update_item(
        self,
        item_id: int,
        *,
        input: str | None = None,
        reference: str | None = None,
        split: str | None = None,
    ) -> Item:
        from tui.engine.datasets import validate_request

        sets: list[str] = []
        args: list[Any] = []
        if input is not None:
            sets.append("input = ?")
            args.append(validate_request(input))
        if reference is not None:
            sets.append("reference = ?")
            args.append(reference)
        if split is not None:
            sets.append("split = ?")
            args.append(_check_split(split))
        if sets:
            with self.transaction() as conn:
                if split == "eval":
                    _refuse_synthetic_eval(conn, [item_id])
                conn.execute(f"UPDATE items SET {', '.join(sets)} WHERE id = ?", (*args, item_id))
                self._touch(conn, item_id=item_id)
        return self.item(item_id)

    def delete_items(self, item_ids: Sequence[int]) -> None:
        """Soft delete: the rows (and any completions of them) stay until the dataset goes,
        so `restore_items` can undo it exactly."""
        self._set_deleted(item_ids, 1)

    def restore_items(self, item_ids: Sequence[int]) -> None:
        self._set_deleted(item_ids, 0)

    def _set_deleted(self, item_ids: Sequence[int], flag: int) -> None:
        with self.transaction() as conn:
            conn.executemany(
                "UPDATE items SET deleted = ? WHERE id = ?", [(flag, i) for i in item_ids]
            )
            if item_ids:
                self._touch(conn, item_id=item_ids[0])

    def set_splits(self, assignments: dict[int, str]) -> None:
        """Refused (nothing changed) if it would put a synthetic item in eval."""
        rows = [(_check_split(split), item_id) for item_id, split in assignments.items()]
        with self.transaction() as conn:
            evals = [item_id for item_id, split in assignments.items() if split == "eval"]
            _refuse_synthetic_eval(conn, evals)
            conn.executemany("UPDATE items SET split = ? WHERE id = ?", rows)

    def random_split(self, dataset_id: int, eval_fraction: float, seed: int) -> tuple[int, int]:
        """Assign every item to train or eval at random, reproducibly for a given seed; a
        synthetic item always to train (a model's own requests must not grade the student),
        the fraction taken of the others.

        Returns (n_train, n_eval). The seed and fraction are stored with the dataset."""
        if not 0.0 < eval_fraction < 1.0:
            raise StoreError("the eval fraction must be between 0 and 1 (e.g. 0.2)")
        items = self.items(dataset_id)
        ids = [item.id for item in items]
        order = [item.id for item in items if not item.source]
        random.Random(seed).shuffle(order)
        n_eval = round(len(order) * eval_fraction) if order else 0
        if order and n_eval == 0:
            n_eval = 1
        eval_ids = set(order[:n_eval])
        with self.transaction() as conn:
            conn.executemany(
                "UPDATE items SET split = ? WHERE id = ?",
                [("eval" if i in eval_ids else "train", i) for i in ids],
            )
            conn.execute(
                "UPDATE datasets SET split_seed = ?, eval_fraction = ?, updated_at = ?"
                " WHERE id = ?",
                (seed, eval_fraction, now(), dataset_id),
            )
        return len(ids) - n_eval, n_eval

    def _insert_items(
        self, conn: sqlite3.Connection, dataset_id: int, items: Iterable[Any], source: str = ""
    ) -> list[int]:
        start = conn.execute(
            "SELECT COALESCE(MAX(position), 0) FROM items WHERE dataset_id = ?", (dataset_id,)
        ).fetchone()[0]
        rows = []
        for offset, draft in enumerate(items, start=1):
            if not draft.input or not draft.input.strip():
                raise StoreError(f"item {offset}: the request is empty")
            rows.append(
                (
                    dataset_id,
                    start + offset,
                    draft.input,
                    draft.reference,
                    _check_split(draft.split),
                    source,
                )
            )
        first = conn.execute("SELECT COALESCE(MAX(id), 0) FROM items").fetchone()[0] + 1
        conn.executemany(
            "INSERT INTO items(dataset_id, position, input, reference, split, source)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )
        # Inside one transaction with no concurrent writer, rowids are allocated consecutively.
        return list(range(first, first + len(rows)))

    def _touch(self, conn: sqlite3.Connection, *, item_id: int) -> None:
        conn.execute(
            "UPDATE datasets SET updated_at = ? WHERE id = (SELECT dataset_id FROM items"
            " WHERE id = ?)",
            (now(), item_id),
        )

    # -- runs and completions ------------------------------------------------------------

    def create_run(self, **fields: Any) -> int:
        """A new run (see `_insert_run` for the fields)."""
        with self.transaction() as conn:
            return self._insert_run(conn, **fields)

    def add_finished_run(self, completions: list[tuple[int, dict[str, Any]]], **fields: Any) -> int:
        """A run whose outputs already exist (imported, or references), in one transaction."""
        with self.transaction() as conn:
            run_id = self._insert_run(conn, **fields)
            stamp = now()
            for item_id, values in completions:
                columns = ["run_id", "item_id", "created_at", *values]
                conn.execute(
                    f"INSERT INTO completions({', '.join(columns)})"
                    f" VALUES ({', '.join('?' for _ in columns)})",
                    [run_id, item_id, stamp, *values.values()],
                )
            conn.execute(
                "UPDATE runs SET status = 'done', finished_at = ? WHERE id = ?", (stamp, run_id)
            )
        return run_id

    def _insert_run(
        self,
        conn: sqlite3.Connection,
        *,
        dataset_id: int,
        model: str,
        role: str = "",
        source: str = "generated",
        split: str = "",
        system_prompt: str = "",
        params: dict[str, Any] | None = None,
        metadata: dict[str, str] | None = None,
        name: str = "",
    ) -> int:
        cur = conn.execute(
            "INSERT INTO runs(dataset_id, name, model, role, source, split, system_prompt,"
            " params, metadata, status, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                dataset_id,
                name,
                model,
                role,
                source,
                split,
                system_prompt,
                dumps(params or {}),
                dumps(metadata or {}),
                "created",
                now(),
            ),
        )
        return int(cur.lastrowid or 0)

    _RUNS_SQL = """
        SELECT r.*, d.name AS dataset_name,
               COUNT(c.id) AS n_completions,
               COALESCE(SUM(c.status = 'done'), 0) AS n_done,
               COALESCE(SUM(c.status = 'failed'), 0) AS n_failed,
               COALESCE(SUM(c.prompt_tokens), 0) AS prompt_tokens,
               COALESCE(SUM(c.completion_tokens), 0) AS completion_tokens,
               AVG(CASE WHEN c.status = 'done' THEN c.latency_ms END) AS mean_latency_ms
        FROM runs r LEFT JOIN datasets d ON d.id = r.dataset_id
        LEFT JOIN completions c ON c.run_id = r.id
        {where} GROUP BY r.id ORDER BY r.id DESC
    """

    def get_run(self, run_id: int) -> RunInfo:
        rows = self.query(self._RUNS_SQL.format(where="WHERE r.id = ?"), (run_id,))
        if not rows:
            raise StoreError(f"no run with id {run_id}")
        return _run_info(rows[0])

    def list_runs(self, dataset_id: int | None = None) -> list[RunInfo]:
        if dataset_id is None:
            rows = self.query(self._RUNS_SQL.format(where=""))
        else:
            rows = self.query(self._RUNS_SQL.format(where="WHERE r.dataset_id = ?"), (dataset_id,))
        return [_run_info(row) for row in rows]

    @contextlib.contextmanager
    def generating(self, run_id: int) -> Iterator[None]:
        """Held by whatever generates `run_id` in this process (a Generate screen's run, the
        recipe running in the Recipe view, a batch): a second generator of the same run is
        refused rather than left to share its items, and `is_generating` tells the screens
        that a run marked running is going, not interrupted. (Another process cannot write
        the workspace at all: its lock, tui/engine/workspace_lock.py.)"""
        with self._lock:
            if run_id in self._generating:
                raise StoreError(
                    f"run {run_id} is being generated already (by the Generate screen or the "
                    "recipe on the Recipe view): stop it there first"
                )
            self._generating.add(run_id)
        try:
            yield
        finally:
            with self._lock:
                self._generating.discard(run_id)

    def is_generating(self, run_id: int) -> bool:
        return run_id in self._generating

    def set_run_status(self, run_id: int, status: str, *, finished: bool = False) -> None:
        with self.transaction() as conn:
            conn.execute(
                "UPDATE runs SET status = ?, finished_at = ? WHERE id = ?",
                (status, now() if finished else None, run_id),
            )

    def run_items(self, run_id: int) -> list[Item]:
        """The items a run covers: its dataset's split, or its explicit selection."""
        run = self.get_run(run_id)
        if run.dataset_id is None:
            return []
        selection = run.params.get("item_ids")
        if selection:
            wanted = set(selection)
            return [i for i in self.items(run.dataset_id) if i.id in wanted]
        return self.items(run.dataset_id, split=run.split or None)

    def pending_items(self, run_id: int) -> list[Item]:
        """Items of the run with no finished completion, less those a batch of the run still
        holds (sent, its results not yet collected: tui/engine/batch.py resumes it): what a
        (re)start must generate."""
        skip = {
            row[0]
            for row in self.query(
                "SELECT item_id FROM completions WHERE run_id = ? AND status = 'done'", (run_id,)
            )
        }
        for row in self.query(
            "SELECT item_ids FROM batches WHERE run_id = ? AND collected = 0", (run_id,)
        ):
            skip.update(json.loads(row[0]))
        return [item for item in self.run_items(run_id) if item.id not in skip]

    def save_completion(self, run_id: int, item_id: int, **fields: Any) -> None:
        """Insert or replace the run's completion of an item: never two for the same item."""
        self.save_completions(run_id, [(item_id, fields)])

    def save_completions(
        self, run_id: int, completions: Sequence[tuple[int, dict[str, Any]]]
    ) -> None:
        """`save_completion` for many items in one transaction (a batch's results)."""
        stamp = now()
        by_columns: dict[tuple[str, ...], list[list[Any]]] = {}
        for item_id, fields in completions:
            rows = by_columns.setdefault(tuple(fields), [])
            rows.append([run_id, item_id, stamp, *fields.values()])
        with self.transaction() as conn:
            for names, rows in by_columns.items():
                columns = ["run_id", "item_id", "created_at", *names]
                updates = ", ".join(
                    f"{c} = excluded.{c}" for c in ["created_at", *names] if c != "attempts"
                )
                # `attempts` (the requests an outcome took; 1 if not given) adds up over
                # the item's starts: a failed item generated again counts them all.
                added = "excluded.attempts" if "attempts" in names else "1"
                conn.executemany(
                    f"INSERT INTO completions({', '.join(columns)})"
                    f" VALUES ({', '.join('?' for _ in columns)})"
                    f" ON CONFLICT(run_id, item_id) DO UPDATE SET {updates},"
                    f" attempts = completions.attempts + {added}",
                    rows,
                )

    def completions(self, run_id: int) -> list[CompletionRow]:
        rows = self.query(
            "SELECT c.*, i.input, i.reference, i.position FROM completions c"
            " JOIN items i ON i.id = c.item_id WHERE c.run_id = ? ORDER BY i.position",
            (run_id,),
        )
        return [_completion_row(row) for row in rows]

    def search_completions(
        self,
        *,
        run_ids: Sequence[int],
        statuses: Sequence[str] = (),
        text: str = "",
        limit: int | None = None,
    ) -> list[CompletionRow]:
        """Completions of the given runs, newest run first and in item order within a run;
        `text` is looked for (case-insensitively) in the request and the output."""
        if not run_ids:
            return []
        where = [f"c.run_id IN ({', '.join('?' for _ in run_ids)})"]
        args: list[Any] = list(run_ids)
        if statuses:
            where.append(f"c.status IN ({', '.join('?' for _ in statuses)})")
            args += list(statuses)
        if text:
            pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            pattern += "%"
            where.append("(i.input LIKE ? ESCAPE '\\' OR c.output LIKE ? ESCAPE '\\')")
            args += [pattern, pattern]
        sql = (
            "SELECT c.*, i.input, i.reference, i.position FROM completions c"
            f" JOIN items i ON i.id = c.item_id WHERE {' AND '.join(where)}"
            " ORDER BY c.run_id DESC, i.position"
        )
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return [_completion_row(row) for row in self.query(sql, args)]

    def get_completion(self, completion_id: int) -> CompletionRow:
        rows = self.query(
            "SELECT c.*, i.input, i.reference, i.position FROM completions c"
            " JOIN items i ON i.id = c.item_id WHERE c.id = ?",
            (completion_id,),
        )
        if not rows:
            raise StoreError(f"no completion with id {completion_id}")
        return _completion_row(rows[0])

    # -- runs of the backend's stored completions (stored_import.py) ----------------------

    def stored_run(self, key: str) -> int | None:
        """The run an earlier import with this filter key made (its dataset still there)."""
        rows = self.query(self._STORED_RUN_SQL, (key,))
        return int(rows[0][0]) if rows else None

    _STORED_RUN_SQL = (
        "SELECT id FROM runs WHERE source = 'stored' AND dataset_id IS NOT NULL"
        " AND json_extract(params, '$.stored_key') = ? ORDER BY id LIMIT 1"
    )

    def open_stored_run(self, key: str, dataset_name: str, **fields: Any) -> tuple[int, bool]:
        """The run of an import with this filter key: the one made before, or a new run with a
        new dataset (named `dataset_name`, numbered if taken) for its requests. Found or made
        in one transaction, so two imports of one filter at once share a run. Returns (run
        id, whether it is new)."""
        base = _clean_name(dataset_name)
        with self.transaction() as conn:
            row = conn.execute(self._STORED_RUN_SQL, (key,)).fetchone()
            if row:
                return int(row[0]), False
            name, n = base, 1
            while conn.execute("SELECT 1 FROM datasets WHERE name = ?", (name,)).fetchone():
                n += 1
                name = f"{base} ({n})"
            stamp = now()
            cur = conn.execute(
                "INSERT INTO datasets(name, system_prompt, created_at, updated_at)"
                " VALUES (?, ?, ?, ?)",
                (name, fields.get("system_prompt", ""), stamp, stamp),
            )
            params = {**(fields.pop("params", None) or {}), "stored_key": key}
            run_id = self._insert_run(
                conn, dataset_id=int(cur.lastrowid or 0), source="stored", params=params, **fields
            )
            return run_id, True

    def stored_ids(self, run_id: int) -> set[str]:
        """The stored completions (their ids on the backend) a run already holds."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT stored_id FROM completions WHERE run_id = ? AND stored_id IS NOT NULL",
                (run_id,),
            ).fetchall()
        return {r[0] for r in rows}

    def add_stored_completions(
        self, run_id: int, rows: Sequence[StoredRow], *, system_prompt: str = ""
    ) -> int:
        """Add imported stored completions to a run, in one transaction. A row without an
        item gets a new item of the run's dataset (its request); a stored id the run already
        holds, or an item it has already answered, is skipped. `system_prompt` becomes the
        run's (and a new dataset's) when it has none yet. Returns how many were added."""
        from tui.engine.datasets import ItemDraft

        added = 0
        with self.transaction() as conn:
            found = conn.execute("SELECT dataset_id FROM runs WHERE id = ?", (run_id,)).fetchone()
            if found is None or found[0] is None:
                raise StoreError(f"run {run_id} has no dataset to add the requests to")
            dataset_id = int(found[0])
            for row in rows:
                held = conn.execute(
                    "SELECT 1 FROM completions WHERE run_id = ? AND (stored_id = ? OR item_id = ?)",
                    (run_id, row.stored_id, row.item_id),
                ).fetchone()
                if held:
                    continue
                item_id = row.item_id
                if item_id is None:
                    (item_id,) = self._insert_items(conn, dataset_id, [ItemDraft(row.input)])
                values = {"created_at": now(), **row.values, "stored_id": row.stored_id}
                columns = ["run_id", "item_id", *values]
                conn.execute(
                    f"INSERT INTO completions({', '.join(columns)})"
                    f" VALUES ({', '.join('?' for _ in columns)})",
                    [run_id, item_id, *values.values()],
                )
                added += 1
            if system_prompt:
                conn.execute(
                    "UPDATE runs SET system_prompt = ? WHERE id = ? AND system_prompt = ''",
                    (system_prompt, run_id),
                )
                conn.execute(
                    "UPDATE datasets SET system_prompt = ? WHERE id = ? AND system_prompt = ''"
                    " AND id IN (SELECT dataset_id FROM runs WHERE id = ? AND source = 'stored')",
                    (system_prompt, dataset_id, run_id),
                )
        return added

    # -- claims: one request per item, whoever asks ----------------------------------------

    def claim_item(self, run_id: int, item_id: int) -> bool:
        """Claim an item of a run for generation: True if this caller may send its request,
        False if it is done or claimed already (by this process or another). One conditional
        write in one transaction, so of two callers racing for an item exactly one wins.
        The claim is a completion row in state CLAIMED (a new one counts no attempt yet);
        the caller records the outcome with `save_completion`, or gives the claim back with
        `release_claims`."""
        with self.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO completions(run_id, item_id, status, attempts, created_at)"
                " VALUES (?, ?, ?, 0, ?)"
                " ON CONFLICT(run_id, item_id) DO UPDATE SET status = excluded.status"
                " WHERE completions.status NOT IN ('done', ?)",
                (run_id, item_id, CLAIMED, now(), CLAIMED),
            )
            return cur.rowcount == 1

    def release_claims(self, run_id: int, item_ids: Iterable[int]) -> int:
        """Give back claims that got no outcome (see `release_stale_claims`)."""
        ids = json.dumps(list(item_ids))
        where = "run_id = ? AND status = ? AND item_id IN (SELECT value FROM json_each(?))"
        return self._release(where, (run_id, CLAIMED, ids))

    def release_run_claims(self, run_id: int) -> int:
        """Give back every claim of a run, after the one process generating it died (see
        `release_stale_claims`)."""
        return self._release("run_id = ? AND status = ?", (run_id, CLAIMED))

    def release_stale_claims(self) -> int:
        """Claims left by a writer that died with requests out: a new claim row goes (the
        item is pending again, as if never started), an earlier failed or cancelled one is
        kept as cancelled (its next start counts as another attempt); an eval run it was
        grading is cancelled (a rerun grades what is missing)."""
        with self.transaction() as conn:
            conn.execute("UPDATE eval_runs SET status = 'cancelled' WHERE status = ?", (CLAIMED,))
        return self._release("status = ?", (CLAIMED,))

    def _release(self, where: str, args: Sequence[Any]) -> int:
        with self.transaction() as conn:
            gone = conn.execute(f"DELETE FROM completions WHERE {where} AND attempts = 0", args)
            kept = conn.execute(
                "UPDATE completions SET status = 'cancelled',"
                " error = 'interrupted: the process generating it stopped before it finished'"
                f" WHERE {where}",
                args,
            )
            return gone.rowcount + kept.rowcount

    def claim_eval_run(self, eval_run_id: int) -> bool:
        """Mark an eval run as being graded: False if it is being graded already (by this
        process or another), so one eval run never has two graders sending the same judge
        requests. Released by its final status (`set_eval_run_status`)."""
        with self.transaction() as conn:
            cur = conn.execute(
                "UPDATE eval_runs SET status = 'running', finished_at = NULL"
                " WHERE id = ? AND status != 'running'",
                (eval_run_id,),
            )
            return cur.rowcount == 1

    # -- fine-tuning jobs ----------------------------------------------------------------

    def save_job(
        self,
        *,
        remote_id: str,
        base_url: str,
        base_model: str,
        status: str,
        training_file: str | None = None,
        validation_file: str | None = None,
        hyperparameters: dict[str, Any] | None = None,
        details: dict[str, Any] | None = None,
    ) -> int:
        """Record a job the moment the backend returns its id (or update it)."""
        stamp = now()
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO jobs(remote_id, base_url, base_model, training_file,"
                " validation_file, hyperparameters, status, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(base_url, remote_id) DO UPDATE SET status = excluded.status,"
                " updated_at = excluded.updated_at",
                (
                    remote_id,
                    base_url,
                    base_model,
                    training_file,
                    validation_file,
                    dumps(
                        {**(hyperparameters or {}), **({"_details": details} if details else {})}
                    ),
                    status,
                    stamp,
                    stamp,
                ),
            )
            row = conn.execute(
                "SELECT id FROM jobs WHERE base_url = ? AND remote_id = ?", (base_url, remote_id)
            ).fetchone()
        return int(row[0])

    def update_job(self, job_id: int, **fields: Any) -> None:
        allowed = {"status", "fine_tuned_model", "error", "hyperparameters", "finished_at"}
        unknown = set(fields) - allowed
        if unknown:
            raise StoreError(f"unknown job fields: {', '.join(sorted(unknown))}")
        values = {k: dumps(v) if k == "hyperparameters" else v for k, v in fields.items()}
        sets = ", ".join(f"{k} = ?" for k in values)
        with self.transaction() as conn:
            conn.execute(
                f"UPDATE jobs SET {sets}, updated_at = ? WHERE id = ?",
                (*values.values(), now(), job_id),
            )

    def get_job(self, job_id: int) -> JobInfo:
        rows = self.query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise StoreError(f"no job with id {job_id}")
        return _job_info(rows[0])

    def list_jobs(self) -> list[JobInfo]:
        return [_job_info(row) for row in self.query("SELECT * FROM jobs ORDER BY id DESC")]

    def add_job_events(self, job_id: int, events: list[JobEvent]) -> int:
        """Add events not seen before (by their remote id). Returns how many were new."""
        with self.transaction() as conn:
            before = conn.total_changes
            conn.executemany(
                "INSERT OR IGNORE INTO job_events(job_id, remote_id, created_at, level, message,"
                " metrics) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        job_id,
                        e.remote_id,
                        e.created_at,
                        e.level,
                        e.message,
                        dumps(e.metrics) if e.metrics is not None else None,
                    )
                    for e in events
                ],
            )
            return conn.total_changes - before

    def job_events(self, job_id: int) -> list[JobEvent]:
        rows = self.query(
            "SELECT remote_id, created_at, level, message, metrics FROM job_events"
            " WHERE job_id = ? ORDER BY created_at, rowid",
            (job_id,),
        )
        return [
            JobEvent(
                remote_id=r["remote_id"],
                created_at=r["created_at"],
                level=r["level"],
                message=r["message"],
                metrics=json.loads(r["metrics"]) if r["metrics"] else None,
            )
            for r in rows
        ]

    # -- batches (a run sent through a Batch API) ----------------------------------------

    def add_batch(
        self, run_id: int, *, base_url: str, input_file: str, item_ids: Sequence[int]
    ) -> int:
        """Record a batch's uploaded input file before the batch is created (status
        "uploaded"), so the items it holds are never sent twice."""
        stamp = now()
        with self.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO batches(run_id, base_url, input_file, item_ids, status, created_at,"
                " updated_at) VALUES (?, ?, ?, ?, 'uploaded', ?, ?)",
                (run_id, base_url, input_file, json.dumps(list(item_ids)), stamp, stamp),
            )
            return int(cur.lastrowid or 0)

    def update_batch(self, batch_id: int, **fields: Any) -> None:
        allowed = {
            "remote_id",
            "status",
            "request_counts",
            "output_file",
            "error_file",
            "error",
            "expires_at",
            "collected",
        }
        unknown = set(fields) - allowed
        if unknown:
            raise StoreError(f"unknown batch fields: {', '.join(sorted(unknown))}")
        values = {k: dumps(v) if k == "request_counts" else v for k, v in fields.items()}
        sets = ", ".join(f"{k} = ?" for k in values)
        with self.transaction() as conn:
            conn.execute(
                f"UPDATE batches SET {sets}, updated_at = ? WHERE id = ?",
                (*values.values(), now(), batch_id),
            )

    def get_batch(self, batch_id: int) -> BatchInfo:
        rows = self.query("SELECT * FROM batches WHERE id = ?", (batch_id,))
        if not rows:
            raise StoreError(f"no batch with id {batch_id}")
        return _batch_info(rows[0])

    def run_batches(self, run_id: int) -> list[BatchInfo]:
        """The run's batches, oldest first."""
        rows = self.query("SELECT * FROM batches WHERE run_id = ? ORDER BY id", (run_id,))
        return [_batch_info(row) for row in rows]

    def unfinished_batches(self, run_id: int | None = None) -> list[BatchInfo]:
        """Batches whose results are not yet mapped back to their items (what a restart
        resumes), oldest first; of one run, or of every run."""
        sql = "SELECT * FROM batches WHERE collected = 0"
        args: list[Any] = []
        if run_id is not None:
            sql += " AND run_id = ?"
            args.append(run_id)
        return [_batch_info(row) for row in self.query(sql + " ORDER BY id", args)]

    # -- evals, eval runs and grades -----------------------------------------------------
    # An eval is a named list of grader configs (OpenAI testing_criteria JSON). An eval run
    # grades one run's completions (all done ones, or a selection) and keeps, in its summary,
    # the graders it was started with, so editing the eval never changes a run's meaning.

    def create_eval(self, name: str, graders: Sequence[dict[str, Any]] = ()) -> int:
        name = _clean_eval_name(name)
        with self.transaction() as conn:
            if conn.execute("SELECT 1 FROM evals WHERE name = ?", (name,)).fetchone():
                raise StoreError(f"an eval named {name!r} already exists")
            cur = conn.execute(
                "INSERT INTO evals(name, graders, created_at) VALUES (?, ?, ?)",
                (name, json.dumps(list(graders), ensure_ascii=False), now()),
            )
            return int(cur.lastrowid or 0)

    def update_eval(
        self,
        eval_id: int,
        *,
        name: str | None = None,
        graders: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        with self.transaction() as conn:
            if not conn.execute("SELECT 1 FROM evals WHERE id = ?", (eval_id,)).fetchone():
                raise StoreError(f"no eval with id {eval_id}")
            if name is not None:
                name = _clean_eval_name(name)
                clash = conn.execute(
                    "SELECT 1 FROM evals WHERE name = ? AND id != ?", (name, eval_id)
                ).fetchone()
                if clash:
                    raise StoreError(f"an eval named {name!r} already exists")
                conn.execute("UPDATE evals SET name = ? WHERE id = ?", (name, eval_id))
            if graders is not None:
                conn.execute(
                    "UPDATE evals SET graders = ? WHERE id = ?",
                    (json.dumps(list(graders), ensure_ascii=False), eval_id),
                )

    def get_eval(self, eval_id: int) -> EvalInfo:
        rows = self.query("SELECT * FROM evals WHERE id = ?", (eval_id,))
        if not rows:
            raise StoreError(f"no eval with id {eval_id}")
        return _eval_info(rows[0])

    def list_evals(self) -> list[EvalInfo]:
        return [
            _eval_info(r) for r in self.query("SELECT * FROM evals ORDER BY name COLLATE NOCASE")
        ]

    def eval_by_name(self, name: str) -> EvalInfo | None:
        rows = self.query("SELECT * FROM evals WHERE name = ?", (" ".join(name.split()),))
        return _eval_info(rows[0]) if rows else None

    def delete_eval(self, eval_id: int) -> None:
        """Delete an eval with its runs and their grades."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM evals WHERE id = ?", (eval_id,))

    def create_eval_run(
        self,
        eval_id: int,
        run_id: int | None,
        graders: Sequence[dict[str, Any]],
        completion_ids: Sequence[int] | None = None,
    ) -> int:
        """A new eval run of `graders` (a snapshot of the eval's) over a run's done
        completions, or over `completion_ids` (which must all belong to one run: `run_id`, or
        the run they come from when it is None)."""
        summary: dict[str, Any] = {"graders": list(graders), "completion_ids": None}
        with self.transaction() as conn:
            if run_id is None:
                runs = conn.execute(
                    "SELECT DISTINCT run_id FROM completions"
                    " WHERE id IN (SELECT value FROM json_each(?))",
                    (json.dumps(list(completion_ids or [])),),
                ).fetchall()
                if len(runs) != 1:
                    raise StoreError(
                        "choose the completions of one run"
                        if runs
                        else "choose a run or some completions to grade"
                    )
                run_id = int(runs[0][0])
            if completion_ids is not None:
                ids = sorted(set(completion_ids))
                outside = conn.execute(
                    "SELECT COUNT(*) FROM json_each(?) j LEFT JOIN completions c"
                    " ON c.id = j.value AND c.run_id = ? WHERE c.id IS NULL",
                    (json.dumps(ids), run_id),
                ).fetchone()[0]
                if outside:
                    raise StoreError(
                        f"{outside} of the selected completions are not completions of run {run_id}"
                    )
                summary["completion_ids"] = ids
            cur = conn.execute(
                "INSERT INTO eval_runs(eval_id, run_id, status, summary, created_at)"
                " VALUES (?, ?, 'created', ?, ?)",
                (eval_id, run_id, json.dumps(summary, ensure_ascii=False), now()),
            )
            return int(cur.lastrowid or 0)

    _EVAL_RUNS_SQL = """
        SELECT er.*, e.name AS eval_name FROM eval_runs er JOIN evals e ON e.id = er.eval_id
        {where} ORDER BY er.id DESC
    """

    def get_eval_run(self, eval_run_id: int) -> EvalRunInfo:
        rows = self.query(self._EVAL_RUNS_SQL.format(where="WHERE er.id = ?"), (eval_run_id,))
        if not rows:
            raise StoreError(f"no eval run with id {eval_run_id}")
        return _eval_run_info(rows[0])

    def list_eval_runs(
        self, eval_id: int | None = None, run_id: int | None = None
    ) -> list[EvalRunInfo]:
        where, args = [], []
        if eval_id is not None:
            where.append("er.eval_id = ?")
            args.append(eval_id)
        if run_id is not None:
            where.append("er.run_id = ?")
            args.append(run_id)
        sql = self._EVAL_RUNS_SQL.format(where=("WHERE " + " AND ".join(where)) if where else "")
        return [_eval_run_info(r) for r in self.query(sql, args)]

    def latest_eval_run(self, eval_id: int, run_id: int) -> EvalRunInfo | None:
        """The newest eval run of this eval over this run (what a comparison shows)."""
        runs = self.list_eval_runs(eval_id, run_id)
        return runs[0] if runs else None

    def set_eval_run_status(
        self,
        eval_run_id: int,
        status: str,
        *,
        results: dict[str, Any] | None = None,
        finished: bool = False,
    ) -> None:
        """Set the status, and with `results` the per-grader figures kept in the summary."""
        with self.transaction() as conn:
            if results is not None:
                conn.execute(
                    "UPDATE eval_runs SET summary = json_set(summary, '$.results', json(?))"
                    " WHERE id = ?",
                    (json.dumps(results, ensure_ascii=False), eval_run_id),
                )
            conn.execute(
                "UPDATE eval_runs SET status = ?, finished_at = ? WHERE id = ?",
                (status, now() if finished else None, eval_run_id),
            )

    def eval_run_completions(self, eval_run_id: int) -> list[GradeInput]:
        """What an eval run grades: the done completions of its run (or of its selection)
        whose items still exist, in item order."""
        info = self.get_eval_run(eval_run_id)
        sql = (
            "SELECT c.id, c.item_id, i.input, i.reference, c.output FROM completions c"
            " JOIN items i ON i.id = c.item_id"
            " WHERE c.run_id = ? AND c.status = 'done' AND i.deleted = 0"
        )
        args: list[Any] = [info.run_id]
        if info.completion_ids is not None:
            sql += " AND c.id IN (SELECT value FROM json_each(?))"
            args.append(json.dumps(info.completion_ids))
        sql += " ORDER BY i.position"
        with self._lock:
            rows = self._conn.execute(sql, args).fetchall()
        make = GradeInput._make
        return [make(row) for row in rows]

    def graded_keys(
        self, eval_run_id: int, *, redo_detail_prefix: str | None = None
    ) -> set[tuple[int, str]]:
        """(completion id, grader) of the grades already stored, less the errored ones whose
        detail starts with `redo_detail_prefix` (failures to redo on a resume)."""
        sql = "SELECT completion_id, grader FROM grades WHERE eval_run_id = ?"
        args: list[Any] = [eval_run_id]
        if redo_detail_prefix:
            sql += " AND NOT (passed IS NULL AND substr(detail, 1, ?) = ?)"
            args += [len(redo_detail_prefix), redo_detail_prefix]
        with self._lock:
            return set(self._conn.execute(sql, args).fetchall())

    def save_grades(
        self,
        eval_run_id: int,
        grades: Iterable[tuple[int, str, float | None, bool | None, str]],
    ) -> None:
        """Store (completion id, grader, score, passed, detail) rows in one transaction;
        passed None means the grader errored. A grade given again replaces the old one."""
        rows = [(eval_run_id, c, g, s, p, d) for c, g, s, p, d in grades]
        with self.transaction() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO grades(eval_run_id, completion_id, grader, score, passed,"
                " detail) VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )

    def grades(self, eval_run_id: int) -> list[GradeRow]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT completion_id, grader, score, passed, detail FROM grades"
                " WHERE eval_run_id = ?",
                (eval_run_id,),
            ).fetchall()
        return [GradeRow(c, g, s, None if p is None else bool(p), d) for c, g, s, p, d in rows]

    def grade_counts(self, eval_run_id: int) -> dict[str, GraderSummary]:
        """Per grader: passed, failed and errored counts and the mean score (of the grades
        that did not error)."""
        rows = self.query(
            "SELECT grader, COALESCE(SUM(passed = 1), 0), COALESCE(SUM(passed = 0), 0),"
            " COALESCE(SUM(passed IS NULL), 0), AVG(CASE WHEN passed IS NOT NULL THEN score END)"
            " FROM grades WHERE eval_run_id = ? GROUP BY grader",
            (eval_run_id,),
        )
        return {r[0]: GraderSummary(r[1], r[2], r[3], r[4]) for r in rows}


class _Transaction:
    """`with store.transaction() as conn:` — BEGIN IMMEDIATE … COMMIT, or ROLLBACK on error."""

    def __init__(self, conn: sqlite3.Connection, lock: threading.RLock) -> None:
        self._conn = conn
        self._lock = lock

    def __enter__(self) -> sqlite3.Connection:
        self._lock.acquire()
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._lock.release()
            raise
        return self._conn

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is None:
                self._conn.execute("COMMIT")
            else:
                self._conn.execute("ROLLBACK")
        finally:
            self._lock.release()


def _split_sql(script: str) -> list[str]:
    return [part.strip() for part in script.split(";") if part.strip()]


def _clean_name(name: str) -> str:
    name = " ".join(name.split())
    if not name:
        raise StoreError("a dataset name cannot be empty")
    if len(name) > 200:
        raise StoreError("a dataset name is limited to 200 characters")
    return name


def _refuse_synthetic_eval(conn: sqlite3.Connection, item_ids: Sequence[int]) -> None:
    """A request a model wrote stays out of eval: it must not grade the student."""
    for start in range(0, len(item_ids), 500):
        chunk = item_ids[start : start + 500]
        row = conn.execute(
            "SELECT position FROM items WHERE source != '' AND id IN"
            f" ({', '.join('?' for _ in chunk)}) ORDER BY position LIMIT 1",
            chunk,
        ).fetchone()
        if row is not None:
            raise StoreError(
                f"item {row[0]} is a synthetic request: it stays in train (a model's own "
                "requests must not grade the student)"
            )


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise StoreError(f"unknown split {split!r}: use train, eval or leave it empty")
    return split


def _dataset_info(row: sqlite3.Row) -> DatasetInfo:
    return DatasetInfo(
        id=row["id"],
        name=row["name"],
        system_prompt=row["system_prompt"],
        n_items=row["n_items"],
        n_train=row["n_train"],
        n_eval=row["n_eval"],
        split_seed=row["split_seed"],
        eval_fraction=row["eval_fraction"],
        created_at=row["created_at"],
    )


@dataclass(frozen=True)
class RunInfo:
    id: int
    dataset_id: int | None
    dataset_name: str | None
    name: str
    model: str
    role: str
    source: str
    split: str
    system_prompt: str
    params: dict[str, Any]
    metadata: dict[str, str]
    status: str
    created_at: str
    finished_at: str | None
    n_completions: int
    n_done: int
    n_failed: int
    prompt_tokens: int
    completion_tokens: int
    mean_latency_ms: float | None

    @property
    def label(self) -> str:
        return self.name or f"run {self.id} · {self.model}" + (
            f" ({self.role})" if self.role else ""
        )


def _run_info(row: sqlite3.Row) -> RunInfo:
    return RunInfo(
        id=row["id"],
        dataset_id=row["dataset_id"],
        dataset_name=row["dataset_name"],
        name=row["name"],
        model=row["model"],
        role=row["role"],
        source=row["source"],
        split=row["split"],
        system_prompt=row["system_prompt"],
        params=json.loads(row["params"]),
        metadata=json.loads(row["metadata"]),
        status=row["status"],
        created_at=row["created_at"],
        finished_at=row["finished_at"],
        n_completions=row["n_completions"],
        n_done=row["n_done"],
        n_failed=row["n_failed"],
        prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"],
        mean_latency_ms=row["mean_latency_ms"],
    )


@dataclass(frozen=True)
class CompletionRow:
    id: int
    run_id: int
    item_id: int
    position: int
    input: str
    reference: str
    output: str
    status: str
    error: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_ms: float | None
    first_token_ms: float | None
    finish_reason: str | None
    remote_id: str | None
    attempts: int
    created_at: str
    confidence: float | None = None  # the vote share, when the run sampled n > 1 times
    samples: list[str] | None = None
    stored_id: str | None = None  # imported from the backend's stored completions: its id
    metadata: dict[str, str] | None = None  # ... and the metadata it was stored with


def _completion_row(row: sqlite3.Row) -> CompletionRow:
    json_fields = ("samples", "metadata")
    fields = {f: row[f] for f in CompletionRow.__dataclass_fields__ if f not in json_fields}
    samples, metadata = row["samples"], row["metadata"]
    return CompletionRow(
        **fields,
        samples=json.loads(samples) if samples else None,
        metadata=json.loads(metadata) if metadata else None,
    )


class StoredRow(NamedTuple):
    """One stored completion to import (Store.add_stored_completions): the item it answers,
    or None for a new item holding `input`; `values` are the completion's columns."""

    stored_id: str
    item_id: int | None
    input: str
    values: dict[str, Any]


@dataclass(frozen=True)
class BatchInfo:
    """A batch of a run at a backend's Batch API (see `Store.add_batch`)."""

    id: int
    run_id: int
    remote_id: str | None  # None until `batches.create` returned
    base_url: str
    input_file: str
    item_ids: list[int]
    status: str  # "uploaded", then the backend's: validating, in_progress, ... completed
    request_counts: dict[str, int]  # total, completed, failed (as the backend last said)
    output_file: str | None
    error_file: str | None
    error: str | None
    expires_at: int | None  # unix seconds: the end of its completion window
    collected: bool
    created_at: str
    updated_at: str


def _batch_info(row: sqlite3.Row) -> BatchInfo:
    fields = {f: row[f] for f in BatchInfo.__dataclass_fields__}
    fields["item_ids"] = json.loads(row["item_ids"])
    fields["request_counts"] = json.loads(row["request_counts"])
    fields["collected"] = bool(row["collected"])
    return BatchInfo(**fields)


TERMINAL_JOB_STATUSES = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class JobInfo:
    id: int
    remote_id: str
    base_url: str
    base_model: str
    training_file: str | None
    validation_file: str | None
    hyperparameters: dict[str, Any]
    status: str
    fine_tuned_model: str | None
    error: str | None
    created_at: str
    updated_at: str
    finished_at: str | None = None  # the backend's word, where it gives one

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_JOB_STATUSES


def _job_info(row: sqlite3.Row) -> JobInfo:
    return JobInfo(
        **{f: row[f] for f in JobInfo.__dataclass_fields__ if f != "hyperparameters"},
        hyperparameters=json.loads(row["hyperparameters"]),
    )


@dataclass(frozen=True)
class JobEvent:
    remote_id: str
    created_at: str  # ISO time, or the backend's unix seconds as a string
    level: str
    message: str
    metrics: dict[str, Any] | None = None


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _clean_eval_name(name: str) -> str:
    name = " ".join(name.split())
    if not name:
        raise StoreError("an eval name cannot be empty")
    if len(name) > 200:
        raise StoreError("an eval name is limited to 200 characters")
    return name


@dataclass(frozen=True)
class EvalInfo:
    id: int
    name: str
    graders: list[dict[str, Any]]  # grader configs, OpenAI testing_criteria JSON
    created_at: str


def _eval_info(row: sqlite3.Row) -> EvalInfo:
    return EvalInfo(
        id=row["id"],
        name=row["name"],
        graders=json.loads(row["graders"]),
        created_at=row["created_at"],
    )


@dataclass(frozen=True)
class GraderSummary:
    passed: int
    failed: int
    errored: int
    mean_score: float | None

    @property
    def total(self) -> int:
        return self.passed + self.failed + self.errored

    @property
    def pass_rate(self) -> float | None:
        """passed / (passed + failed): an errored grade says nothing about the output."""
        graded = self.passed + self.failed
        return self.passed / graded if graded else None


@dataclass(frozen=True)
class EvalRunInfo:
    id: int
    eval_id: int
    eval_name: str
    run_id: int
    status: str
    created_at: str
    finished_at: str | None
    graders: list[dict[str, Any]]  # the configs it was started with
    completion_ids: list[int] | None  # a selection, or None for every done completion
    results: dict[str, GraderSummary]  # per grader, in grader order (set when it stops)


def _eval_run_info(row: sqlite3.Row) -> EvalRunInfo:
    summary = json.loads(row["summary"])
    results = {
        name: GraderSummary(
            passed=r.get("passed", 0),
            failed=r.get("failed", 0),
            errored=r.get("errored", 0),
            mean_score=r.get("mean_score"),
        )
        for name, r in (summary.get("results") or {}).items()
    }
    return EvalRunInfo(
        id=row["id"],
        eval_id=row["eval_id"],
        eval_name=row["eval_name"],
        run_id=row["run_id"],
        status=row["status"],
        created_at=row["created_at"],
        finished_at=row["finished_at"],
        graders=summary.get("graders") or [],
        completion_ids=summary.get("completion_ids"),
        results=results,
    )


class GradeInput(NamedTuple):
    """One completion to grade, with what templates can refer to."""

    completion_id: int
    item_id: int
    input: str
    reference: str
    output: str


class GradeRow(NamedTuple):
    completion_id: int
    grader: str
    score: float | None
    passed: bool | None  # None: the grader errored (see detail)
    detail: str
