"""A read-only workspace is called read-only (and where), not corrupt; it can still be opened
read-only to look; and checking a database that is refused leaves nothing beside it (no
empty -wal/-shm files). The same for the local server's own database.

Root writes anywhere, so the read-only cases run in a child process that drops to an
unprivileged user once its imports are done (CI runs as root); run by any other user, the
child is unprivileged already."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from tests.helpers.unprivileged import BECOME_NOBODY, NOBODY, run_as_nobody
from tui.engine.datasets import ItemDraft
from tui.engine.store import SCHEMA_VERSION, Store, WorkspaceError
from tui.local.db import LocalDB, LocalDBError

# Run as nobody: open the workspace (for writing, then read-only) and the local server's
# database, and report what happened and which files exist afterwards.
CHILD = (
    """
import json, sys
from pathlib import Path
from tui.engine.store import Store, WorkspaceError
from tui.local.db import LocalDB, LocalDBError
"""
    + BECOME_NOBODY
    + """
ws = Path(sys.argv[1])
out = {}
try:
    Store.open(ws).close()
    out["open"] = "opened"
except WorkspaceError as exc:
    out["open"] = str(exc)
try:
    store = Store.open(ws, read_only=True)
    out["datasets"] = [d.name for d in store.list_datasets()]
    try:
        store.create_dataset("new")
        out["write"] = "written"
    except Exception as exc:
        out["write"] = f"{type(exc).__name__}: {exc}"
    store.close()
except WorkspaceError as exc:
    out["datasets"] = str(exc)
try:
    LocalDB(ws).close()
    out["local"] = "opened"
except LocalDBError as exc:
    out["local"] = str(exc)
out["files"] = sorted(str(p.relative_to(ws)) for p in ws.rglob("*"))
print(json.dumps(out))
"""
)


def as_unprivileged(workspace: Path) -> dict[str, object]:
    return run_as_nobody(CHILD, str(workspace))  # type: ignore[no-any-return]


def make_workspace(directory: Path) -> None:
    store = Store.open(directory)
    store.create_dataset("kept", "", [ItemDraft("list branches", "git branch")])
    store.close()
    LocalDB(directory).close()
    if os.geteuid() == 0:  # the child's user owns it, as a user owns their workspace
        for p in [directory, *directory.rglob("*")]:
            os.chown(p, NOBODY, NOBODY)


def test_a_read_only_directory_is_read_only_not_corrupt(reachable_dir: Path) -> None:
    ws = reachable_dir / "ws"
    make_workspace(ws)
    for p in [ws, *ws.rglob("*")]:
        if p.is_dir():
            p.chmod(0o555)
    files = sorted(str(p.relative_to(ws)) for p in ws.rglob("*"))
    out = as_unprivileged(ws)
    message = str(out["open"])
    assert message == (
        f"{ws / 'distill.db'}: the workspace is read-only (the directory {ws} is not writable); "
        "nothing was changed. distill-tui writes every completion as it finishes: make the "
        "workspace writable, or choose another one with --workspace."
    )
    assert "corrupt" not in message
    # Looking is enough to open it read-only; a write is refused, saying why.
    assert out["datasets"] == ["kept"]
    assert str(out["write"]).startswith("StoreError: ")
    assert "open read-only" in str(out["write"])
    assert str(out["local"]) == (
        f"{ws / 'local' / 'server.db'}: the local server's data is read-only (the directory "
        f"{ws / 'local'} is not writable); nothing was changed. Make the workspace writable or "
        "use another one."
    )
    assert out["files"] == files  # nothing left beside the databases


def test_a_read_only_database_file_is_read_only_and_leaves_nothing(reachable_dir: Path) -> None:
    ws = reachable_dir / "ws"
    make_workspace(ws)
    (ws / "distill.db").chmod(0o444)
    (ws / "local" / "server.db").chmod(0o444)
    files = sorted(str(p.relative_to(ws)) for p in ws.rglob("*"))
    out = as_unprivileged(ws)
    assert str(out["open"]).startswith(
        f"{ws / 'distill.db'}: the workspace is read-only (the file is not writable)"
    )
    assert out["datasets"] == ["kept"]
    assert str(out["local"]).startswith(
        f"{ws / 'local' / 'server.db'}: the local server's data is read-only (the file is not "
        "writable)"
    )
    # The directory is writable: a careless check would have left -wal/-shm files here.
    assert out["files"] == files


@pytest.mark.parametrize("damage", ["newer", "corrupt"])
def test_a_refused_database_gets_no_wal_or_shm_beside_it(tmp_path: Path, damage: str) -> None:
    ws = tmp_path / "ws"
    store = Store.open(ws)
    store.create_dataset("d", items=[ItemDraft(f"request {i}") for i in range(2000)])
    store.close()
    db = ws / "distill.db"
    if damage == "newer":
        conn = sqlite3.connect(db)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
        conn.commit()
        conn.close()
        expected = "newer distill-tui"
    else:
        data = bytearray(db.read_bytes())
        data[4096:12288] = b"\xff" * 8192  # keep the header, scribble over the b-tree
        db.write_bytes(bytes(data))
        expected = "is corrupt"
    files = sorted(p.name for p in ws.iterdir())
    before = db.read_bytes()
    for read_only in (False, True):
        with pytest.raises(WorkspaceError, match=expected):
            Store.open(ws, read_only=read_only)
        assert sorted(p.name for p in ws.iterdir()) == files
        assert db.read_bytes() == before
    # The local server's database: the same checks, the same care.
    local = ws / "local"
    LocalDB(ws).close()
    server_db = local / "server.db"
    conn = sqlite3.connect(server_db)
    conn.execute("PRAGMA user_version=99")
    conn.commit()
    conn.close()
    files = sorted(p.name for p in local.iterdir())
    with pytest.raises(LocalDBError, match="newer distill-tui"):
        LocalDB(ws)
    assert sorted(p.name for p in local.iterdir()) == files
