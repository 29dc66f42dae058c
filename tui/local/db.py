"""The local server's own SQLite database: stored completions, files, fine-tuning jobs, their
events and checkpoints, the fine-tuned models they produced, and batches.

It lives in `<workspace>/local/server.db` (WAL) with uploaded files in
`<workspace>/local/files/<file id>`. It is separate from the app's `distill.db`: the server is
a backend like api.openai.com, and the app only ever sees it through the HTTP API.

Every method is synchronous and short (one statement or one small transaction). Routes that
use it are plain `def` handlers or call it through `asyncio.to_thread`, so a slow disk never
stalls the event loop; one connection shared under a lock keeps the writes serialised.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import string
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tui.engine import local_instance, workspace_lock
from tui.engine.dbfile import DatabaseFileError, check_database, read_only_reason

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS completions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    created INTEGER NOT NULL,
    model TEXT NOT NULL,
    metadata TEXT NOT NULL,          -- JSON object of str -> str
    request_messages TEXT NOT NULL,  -- JSON list of the input messages
    body TEXT NOT NULL               -- JSON chat.completion object as returned
);
CREATE INDEX IF NOT EXISTS completions_model ON completions(model, seq);

CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    status TEXT NOT NULL,
    status_details TEXT              -- why a file is "error" (a fine-tune file that is not JSONL)
);

CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    model TEXT NOT NULL,
    training_file TEXT NOT NULL,
    validation_file TEXT,
    suffix TEXT,
    seed INTEGER NOT NULL,
    hyperparameters TEXT NOT NULL,   -- JSON: n_epochs, batch_size, learning_rate_multiplier
    train_method TEXT NOT NULL,      -- "lora" | "full" (a local extension; OpenAI has no such knob)
    status TEXT NOT NULL,
    fine_tuned_model TEXT,
    finished_at INTEGER,
    trained_tokens INTEGER,
    estimated_finish INTEGER,
    error TEXT,                      -- JSON {code, message, param} or NULL
    metadata TEXT,                   -- JSON object or NULL
    result_files TEXT,               -- JSON list of file ids or NULL
    pid INTEGER                      -- the trainer process while running
);

CREATE TABLE IF NOT EXISTS job_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    job_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL,
    type TEXT NOT NULL,
    data TEXT                        -- JSON or NULL
);
CREATE INDEX IF NOT EXISTS job_events_job ON job_events(job_id, seq);

CREATE TABLE IF NOT EXISTS checkpoints (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    job_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    step_number INTEGER NOT NULL,
    metrics TEXT NOT NULL,
    fine_tuned_model_checkpoint TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS checkpoints_job ON checkpoints(job_id, seq);

CREATE TABLE IF NOT EXISTS ft_models (
    id TEXT PRIMARY KEY,
    base TEXT NOT NULL,
    kind TEXT NOT NULL,
    path TEXT NOT NULL,
    created INTEGER NOT NULL,
    job_id TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    endpoint TEXT NOT NULL,
    input_file_id TEXT NOT NULL,
    completion_window TEXT NOT NULL,
    status TEXT NOT NULL,
    output_file_id TEXT,
    error_file_id TEXT,
    errors TEXT,                     -- JSON list of {code, message, line, param} or NULL
    total INTEGER NOT NULL DEFAULT 0,
    completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    metadata TEXT,                   -- JSON object or NULL
    in_progress_at INTEGER,
    expires_at INTEGER,
    finalizing_at INTEGER,
    completed_at INTEGER,
    failed_at INTEGER,
    expired_at INTEGER,
    cancelling_at INTEGER,
    cancelled_at INTEGER
);
"""

ACTIVE_JOB_STATUSES = ("validating_files", "queued", "running")
# A batch still to be worked on (tui/local/batches.py), also after a restart.
ACTIVE_BATCH_STATUSES = ("validating", "in_progress", "finalizing", "cancelling")
TERMINAL_JOB_STATUSES = ("succeeded", "failed", "cancelled")

_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str, length: int = 24) -> str:
    """OpenAI-style ids (`file-…`, `ftjob-…`): random, so never derived from client input."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def now() -> int:
    return int(time.time())


@dataclass
class Page:
    """One page of a cursor-paginated list, as OpenAI pages them."""

    rows: list[dict[str, Any]]
    has_more: bool


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """Columns added since a table was first created (CREATE TABLE IF NOT EXISTS keeps an
    existing table as it is)."""
    files = {row[1] for row in conn.execute("PRAGMA table_info(files)")}
    if "status_details" not in files:
        conn.execute("ALTER TABLE files ADD COLUMN status_details TEXT")


class LocalDBError(RuntimeError):
    """The server's database cannot be used; the message names the file and says why."""


def _check_before_opening(path: Path) -> None:
    """Refuse, without changing anything, a database we must not write: unreadable, not
    SQLite, corrupt, from a newer release, or read-only."""
    if path.exists():
        try:
            check_database(
                path,
                what="the local server's database",
                schema_version=SCHEMA_VERSION,
                newer="Upgrade distill-tui or use another workspace.",
                not_sqlite="Move it aside or use another workspace.",
            )
        except DatabaseFileError as exc:
            raise LocalDBError(str(exc)) from exc
    reason = read_only_reason(path)
    if reason is not None:
        raise LocalDBError(
            f"{path}: the local server's data is read-only ({reason}); nothing was changed. "
            "Make the workspace writable or use another one."
        )


class LocalDB:
    def __init__(self, workspace: Path) -> None:
        self.root = Path(workspace) / "local"
        self.files_dir = self.root / "files"
        self.jobs_dir = self.root / "jobs"
        self.models_dir = self.root / "models"
        self.path = self.root / "server.db"
        _check_before_opening(self.path)
        for d in (self.root, self.files_dir, self.jobs_dir, self.models_dir):
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise LocalDBError(f"{d}: cannot create the directory ({exc.strerror})") from exc
        # One server per store (tui/engine/local_instance.py), held until close() and
        # released by the kernel if the server dies: a second server is refused here, before
        # its job recovery could fail the jobs the first one is running.
        try:
            self._store_lock = workspace_lock.acquire(
                self.root / local_instance.LOCK_NAME, "distill-tui serve", reentrant=False
            )
        except workspace_lock.LockHeld as held:
            raise LocalDBError(
                f"{self.root}: the local server's data is in use by {held.who}; one local "
                "server per workspace: use that one, or stop it first"
            ) from None
        self._lock = threading.RLock()
        # One connection for all threads, serialised by the lock: SQLite allows one writer at a
        # time anyway, and the statements here take microseconds.
        try:
            self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._conn.row_factory = sqlite3.Row
            with self._lock:
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=NORMAL")
                self._conn.execute("PRAGMA foreign_keys=ON")
                self._conn.executescript(SCHEMA)
                _add_missing_columns(self._conn)
                self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            self._store_lock.release()
            raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()
        self._store_lock.release()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            else:
                self._conn.execute("COMMIT")

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def _page(
        self,
        table: str,
        where: list[str],
        params: list[Any],
        after: str | None,
        limit: int,
        order: Literal["asc", "desc"],
    ) -> Page | None:
        """Cursor pagination over `seq`; None when the `after` id is unknown."""
        where = list(where)
        params = list(params)
        if after is not None:
            rows = self._query(f"SELECT seq FROM {table} WHERE id = ?", (after,))
            if not rows:
                return None
            where.append("seq > ?" if order == "asc" else "seq < ?")
            params.append(rows[0]["seq"])
        sql = f"SELECT * FROM {table}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY seq {'ASC' if order == 'asc' else 'DESC'} LIMIT ?"
        params.append(limit + 1)
        found = [dict(r) for r in self._query(sql, params)]
        return Page(rows=found[:limit], has_more=len(found) > limit)

    # ---- stored chat completions ----------------------------------------------------------

    def add_completion(
        self,
        body: dict[str, Any],
        request_messages: list[dict[str, Any]],
        metadata: dict[str, str],
    ) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO completions (id, created, model, metadata, request_messages, body)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    body["id"],
                    body["created"],
                    body["model"],
                    json.dumps(metadata),
                    json.dumps(request_messages),
                    json.dumps(body),
                ),
            )

    def get_completion(self, completion_id: str) -> dict[str, Any] | None:
        rows = self._query("SELECT * FROM completions WHERE id = ?", (completion_id,))
        return _completion_row(rows[0]) if rows else None

    def list_completions(
        self,
        *,
        model: str | None,
        metadata: dict[str, str],
        after: str | None,
        limit: int,
        order: Literal["asc", "desc"],
    ) -> Page | None:
        where: list[str] = []
        params: list[Any] = []
        if model:
            where.append("model = ?")
            params.append(model)
        for key, value in metadata.items():
            where.append("json_extract(metadata, ?) = ?")
            params.extend([_json_path(key), value])
        page = self._page("completions", where, params, after, limit, order)
        if page is not None:
            page.rows = [_completion_row(r) for r in page.rows]
        return page

    def update_completion_metadata(
        self, completion_id: str, metadata: dict[str, str]
    ) -> dict[str, Any] | None:
        with self._tx() as c:
            rows = c.execute(
                "SELECT body FROM completions WHERE id = ?", (completion_id,)
            ).fetchall()
            if not rows:
                return None
            body = json.loads(rows[0]["body"])
            body["metadata"] = metadata
            c.execute(
                "UPDATE completions SET metadata = ?, body = ? WHERE id = ?",
                (json.dumps(metadata), json.dumps(body), completion_id),
            )
        return self.get_completion(completion_id)

    def delete_completion(self, completion_id: str) -> bool:
        with self._tx() as c:
            return c.execute("DELETE FROM completions WHERE id = ?", (completion_id,)).rowcount > 0

    # ---- files ----------------------------------------------------------------------------

    def file_path(self, file_id: str) -> Path:
        # Ids are generated by new_id (letters and digits only), never taken from the client;
        # callers look the id up in the table first, so this cannot name a path outside.
        return self.files_dir / file_id

    def add_file(
        self,
        file_id: str,
        size: int,
        filename: str,
        purpose: str,
        *,
        status: str = "processed",
        status_details: str | None = None,
    ) -> dict[str, Any]:
        row = {
            "id": file_id,
            "bytes": size,
            "created_at": now(),
            "filename": filename,
            "purpose": purpose,
            "status": status,
            "status_details": status_details,
        }
        with self._tx() as c:
            c.execute(
                "INSERT INTO files (id, bytes, created_at, filename, purpose, status,"
                " status_details) VALUES (:id, :bytes, :created_at, :filename, :purpose,"
                " :status, :status_details)",
                row,
            )
        return row

    def get_file(self, file_id: str) -> dict[str, Any] | None:
        rows = self._query("SELECT * FROM files WHERE id = ?", (file_id,))
        return dict(rows[0]) if rows else None

    def list_files(
        self,
        *,
        purpose: str | None,
        after: str | None,
        limit: int,
        order: Literal["asc", "desc"],
    ) -> Page | None:
        where, params = ([], []) if purpose is None else (["purpose = ?"], [purpose])
        return self._page("files", where, params, after, limit, order)

    def delete_file(self, file_id: str) -> bool:
        with self._tx() as c:
            deleted = c.execute("DELETE FROM files WHERE id = ?", (file_id,)).rowcount > 0
        if deleted:
            self.file_path(file_id).unlink(missing_ok=True)
        return deleted

    # ---- fine-tuning jobs ------------------------------------------------------------------

    def add_job(self, job: dict[str, Any]) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO jobs (id, created_at, model, training_file, validation_file, suffix,"
                " seed, hyperparameters, train_method, status, metadata)"
                " VALUES (:id, :created_at, :model, :training_file, :validation_file, :suffix,"
                " :seed, :hyperparameters, :train_method, :status, :metadata)",
                {
                    **job,
                    "hyperparameters": json.dumps(job["hyperparameters"]),
                    "metadata": None
                    if job.get("metadata") is None
                    else json.dumps(job["metadata"]),
                },
            )

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        rows = self._query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _job_row(rows[0]) if rows else None

    def list_jobs(self, *, after: str | None, limit: int, metadata: dict[str, str]) -> Page | None:
        where: list[str] = []
        params: list[Any] = []
        for key, value in metadata.items():
            where.append("json_extract(metadata, ?) = ?")
            params.extend([_json_path(key), value])
        # OpenAI lists jobs newest first.
        page = self._page("jobs", where, params, after, limit, "desc")
        if page is not None:
            page.rows = [_job_row(r) for r in page.rows]
        return page

    def _update_where(
        self,
        table: str,
        row_id: str,
        only_if_status: Sequence[str] | None,
        fields: dict[str, Any],
    ) -> bool:
        """UPDATE one row of `table` (a name of ours, never user input); with
        `only_if_status`, only while its status is one of those. Whether the row changed."""
        assignments = ", ".join(f"{k} = :{k}" for k in fields)
        sql = f"UPDATE {table} SET {assignments} WHERE id = :_id"
        params: dict[str, Any] = {**fields, "_id": row_id}
        if only_if_status is not None:
            names = [f":_s{i}" for i in range(len(only_if_status))]
            sql += f" AND status IN ({', '.join(names)})"
            params.update({f"_s{i}": s for i, s in enumerate(only_if_status)})
        with self._tx() as c:
            return c.execute(sql, params).rowcount > 0

    def update_job(
        self, job_id: str, *, only_if_status: Sequence[str] | None = None, **fields: Any
    ) -> bool:
        """Update a job's columns; with `only_if_status`, only while its status is one of
        those (so a cancel and the trainer's progress cannot overwrite each other).
        Returns whether the row changed."""
        if not fields:
            return False
        for key in ("hyperparameters", "error", "result_files"):
            if key in fields and fields[key] is not None:
                fields[key] = json.dumps(fields[key])
        return self._update_where("jobs", job_id, only_if_status, fields)

    def active_jobs(self) -> list[dict[str, Any]]:
        marks = ",".join("?" for _ in ACTIVE_JOB_STATUSES)
        rows = self._query(
            f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY seq", ACTIVE_JOB_STATUSES
        )
        return [_job_row(r) for r in rows]

    def add_event(
        self,
        job_id: str,
        message: str,
        *,
        level: str = "info",
        type: str = "message",
        data: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        row = {
            "id": new_id("ftevent-"),
            "job_id": job_id,
            "created_at": now(),
            "level": level,
            "message": message,
            "type": type,
            "data": None if data is None else json.dumps(data),
        }
        with self._tx() as c:
            c.execute(
                "INSERT INTO job_events (id, job_id, created_at, level, message, type, data)"
                " VALUES (:id, :job_id, :created_at, :level, :message, :type, :data)",
                row,
            )
        return _event_row(row)

    def list_events(self, job_id: str, *, after: str | None, limit: int) -> Page | None:
        # Newest first, like OpenAI; `after` is the last event id of the previous page.
        page = self._page("job_events", ["job_id = ?"], [job_id], after, limit, "desc")
        if page is not None:
            page.rows = [_event_row(r) for r in page.rows]
        return page

    def add_checkpoint(
        self, job_id: str, step: int, metrics: dict[str, Any], model_checkpoint: str
    ) -> dict[str, Any]:
        row = {
            "id": new_id("ftckpt_"),
            "job_id": job_id,
            "created_at": now(),
            "step_number": step,
            "metrics": json.dumps(metrics),
            "fine_tuned_model_checkpoint": model_checkpoint,
        }
        with self._tx() as c:
            c.execute(
                "INSERT INTO checkpoints (id, job_id, created_at, step_number, metrics,"
                " fine_tuned_model_checkpoint) VALUES (:id, :job_id, :created_at, :step_number,"
                " :metrics, :fine_tuned_model_checkpoint)",
                row,
            )
        return _checkpoint_row(row)

    def list_checkpoints(self, job_id: str, *, after: str | None, limit: int) -> Page | None:
        page = self._page("checkpoints", ["job_id = ?"], [job_id], after, limit, "desc")
        if page is not None:
            page.rows = [_checkpoint_row(r) for r in page.rows]
        return page

    # ---- fine-tuned models -----------------------------------------------------------------

    def add_ft_model(
        self, model_id: str, base: str, kind: str, path: Path, job_id: str
    ) -> dict[str, Any]:
        row = {
            "id": model_id,
            "base": base,
            "kind": kind,
            "path": str(path),
            "created": now(),
            "job_id": job_id,
        }
        with self._tx() as c:
            c.execute(
                "INSERT OR REPLACE INTO ft_models (id, base, kind, path, created, job_id)"
                " VALUES (:id, :base, :kind, :path, :created, :job_id)",
                row,
            )
        return row

    def ft_models(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._query("SELECT * FROM ft_models ORDER BY created")]

    # ---- batches ---------------------------------------------------------------------------

    @property
    def batches_dir(self) -> Path:
        """Where a batch's answers so far are kept until it ends (they survive a restart)."""
        path = self.root / "batches"
        path.mkdir(exist_ok=True)
        return path

    def add_batch(self, batch: dict[str, Any]) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO batches (id, created_at, endpoint, input_file_id,"
                " completion_window, status, metadata, expires_at) VALUES (:id, :created_at,"
                " :endpoint, :input_file_id, :completion_window, :status, :metadata,"
                " :expires_at)",
                {
                    **batch,
                    "metadata": None
                    if batch.get("metadata") is None
                    else json.dumps(batch["metadata"]),
                },
            )

    def get_batch(self, batch_id: str) -> dict[str, Any] | None:
        rows = self._query("SELECT * FROM batches WHERE id = ?", (batch_id,))
        return _batch_row(rows[0]) if rows else None

    def list_batches(self, *, after: str | None, limit: int) -> Page | None:
        # Newest first, like OpenAI.
        page = self._page("batches", [], [], after, limit, "desc")
        if page is not None:
            page.rows = [_batch_row(r) for r in page.rows]
        return page

    def update_batch(
        self, batch_id: str, *, only_if_status: Sequence[str] | None = None, **fields: Any
    ) -> bool:
        """Update a batch's columns; with `only_if_status`, only while its status is one of
        those (so a cancel and the worker's progress cannot overwrite each other)."""
        if "errors" in fields and fields["errors"] is not None:
            fields["errors"] = json.dumps(fields["errors"])
        return self._update_where("batches", batch_id, only_if_status, fields)

    def active_batches(self) -> list[dict[str, Any]]:
        marks = ",".join("?" for _ in ACTIVE_BATCH_STATUSES)
        rows = self._query(
            f"SELECT * FROM batches WHERE status IN ({marks}) ORDER BY seq",
            ACTIVE_BATCH_STATUSES,
        )
        return [_batch_row(r) for r in rows]


def _json_path(key: str) -> str:
    # json_extract path with the key quoted, so keys with dots or brackets match literally.
    return '$."' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _completion_row(row: Any) -> dict[str, Any]:
    r = dict(row)
    return {
        "id": r["id"],
        "body": json.loads(r["body"]),
        "request_messages": json.loads(r["request_messages"]),
        "metadata": json.loads(r["metadata"]),
    }


def _job_row(row: Any) -> dict[str, Any]:
    r = dict(row)
    r["hyperparameters"] = json.loads(r["hyperparameters"])
    r["error"] = None if r["error"] is None else json.loads(r["error"])
    r["metadata"] = None if r["metadata"] is None else json.loads(r["metadata"])
    r["result_files"] = [] if r["result_files"] is None else json.loads(r["result_files"])
    return r


def _batch_row(row: Any) -> dict[str, Any]:
    r = dict(row)
    r["errors"] = None if r["errors"] is None else json.loads(r["errors"])
    r["metadata"] = None if r["metadata"] is None else json.loads(r["metadata"])
    return r


def _event_row(row: Any) -> dict[str, Any]:
    r = dict(row)
    data = r["data"]
    return {
        "object": "fine_tuning.job.event",
        "id": r["id"],
        "created_at": r["created_at"],
        "level": r["level"],
        "message": r["message"],
        "data": None if data is None else json.loads(data),
        "type": r["type"],
    }


def _checkpoint_row(row: Any) -> dict[str, Any]:
    r = dict(row)
    return {
        "object": "fine_tuning.job.checkpoint",
        "id": r["id"],
        "created_at": r["created_at"],
        "fine_tuned_model_checkpoint": r["fine_tuned_model_checkpoint"],
        "fine_tuning_job_id": r["job_id"],
        "metrics": json.loads(r["metrics"]),
        "step_number": r["step_number"],
    }
