"""Looking at a SQLite database file without changing it: the checks the workspace
(`tui.engine.store`) and the local server's own database (`tui.local.db`) run before they
open a file for writing, and a read-only connection for when looking is all that is needed.

Looking must leave the directory exactly as it was. A plain `mode=ro` connection to a WAL
database creates `-wal` and `-shm` files next to it (and cannot open it at all in a directory
it may not write), so when no `-wal` file exists — nobody has the database open and every
commit is in the main file — the file is opened `immutable`, which reads it as it is and
creates nothing. When a `-wal` exists it holds committed data, so it is read the normal way.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path
from urllib.parse import quote

SQLITE_HEADER = b"SQLite format 3\x00"


class DatabaseFileError(Exception):
    """The database cannot be used; the message names the file and says why."""


def _uri(path: Path, immutable: bool) -> str:
    return f"file:{quote(str(path))}?mode=ro" + ("&immutable=1" if immutable else "")


def _wal(path: Path) -> Path:
    return path.with_name(path.name + "-wal")


def connect_read_only(path: Path, *, brief: bool = False) -> sqlite3.Connection:
    """A connection that can only read `path`; `check_same_thread=False` like the stores' own
    connections. `brief`: for a check that reads and closes at once, which creates no file
    beside the database (see the module docstring). A long-lived one reads the file
    `immutable` only where we could not write it anyway (a read-only file or directory), since
    a writer starting later would change the file under an immutable reader; beside a
    database we may write, it shares the -wal/-shm files a writer uses."""
    immutable = not _wal(path).exists() and (brief or read_only_reason(path) is not None)
    try:
        conn = sqlite3.connect(_uri(path, immutable), uri=True, check_same_thread=False)
        conn.execute("PRAGMA schema_version").fetchone()  # fail here, not at the first query
    except sqlite3.OperationalError:
        if immutable:
            raise
        # A -wal but no way to share it (no -shm, and a directory we may not write):
        # the main file alone is still a consistent, if older, view.
        conn = sqlite3.connect(_uri(path, True), uri=True, check_same_thread=False)
    return conn


def _is(exc: sqlite3.Error, *names: str) -> bool:
    name = getattr(exc, "sqlite_errorname", "") or ""
    return any(name.startswith(n) for n in names)


def check_database(
    path: Path,
    *,
    what: str,
    schema_version: int,
    newer: str,
    not_sqlite: str,
) -> None:
    """Raise DatabaseFileError if the existing file at `path` is unreadable, not SQLite,
    corrupt, or from a newer schema. Nothing is written or created. `what` names the database
    ("the workspace database"), `newer` and `not_sqlite` say what to do about those cases."""
    try:
        with path.open("rb") as fh:
            header = fh.read(16)
    except OSError as exc:
        raise DatabaseFileError(f"{path}: cannot read {what} ({exc.strerror})") from exc
    if header and header != SQLITE_HEADER:
        raise DatabaseFileError(f"{path}: not a {what} (not SQLite). {not_sqlite}")
    if not header:
        return  # an empty file: SQLite treats it as a new database

    def look() -> tuple[int, str]:
        conn = connect_read_only(path, brief=True)
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > schema_version:
                return version, "ok"  # a newer schema may hold what quick_check can't judge
            return version, str(conn.execute("PRAGMA quick_check").fetchone()[0])
        finally:
            conn.close()

    wal_before = _wal(path).exists()
    try:
        try:
            version, result = look()
        except sqlite3.DatabaseError:
            if wal_before or not _wal(path).exists():
                raise
            # Another process opened it (and may be checkpointing) while we read the file
            # alone: look again the way a reader beside a writer must.
            version, result = look()
    except sqlite3.DatabaseError as exc:
        if _is(exc, "SQLITE_CORRUPT", "SQLITE_NOTADB"):
            raise DatabaseFileError(f"{path}: {what} is corrupt ({exc})") from exc
        raise DatabaseFileError(f"{path}: cannot read {what} ({exc})") from exc
    if version > schema_version:
        raise DatabaseFileError(
            f"{path}: {what} was written by a newer distill-tui (schema {version}, this version "
            f"knows up to {schema_version}). {newer}"
        )
    if result != "ok":
        raise DatabaseFileError(f"{path}: {what} is corrupt ({result})")


def read_only_reason(path: Path) -> str | None:
    """Why a writer could not use the database at `path` (the file, or its directory where the
    -wal and -shm files go), or None when it can. `path` may not exist yet."""
    directory = path.parent
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent  # the one the missing directories would be made in
    for target, kind in ((path, "file"), (directory, "directory")):
        if kind == "file" and not path.exists():
            continue
        if os.access(target, os.W_OK):
            continue
        if _read_only_filesystem(target):
            return f"{target} is on a read-only file system"
        return (
            "the file is not writable"
            if kind == "file"
            else f"the directory {target} is not writable"
        )
    return None


def _read_only_filesystem(target: Path) -> bool:
    try:
        return bool(os.statvfs(target).f_flag & os.ST_RDONLY)
    except OSError as exc:
        return exc.errno == errno.EROFS
