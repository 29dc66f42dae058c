"""The installed `distill-tui` command, run as a user would."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from tui import __version__
from tui.engine.store import SCHEMA_VERSION, Store

COMMAND = Path(sys.executable).parent / "distill-tui"


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(COMMAND), *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_help_names_the_commands(isolated_env: Path) -> None:
    result = run("--help", cwd=isolated_env)
    assert result.returncode == 0
    for word in ("--workspace", "--version", "serve"):
        assert word in result.stdout


def test_version(isolated_env: Path) -> None:
    result = run("--version", cwd=isolated_env)
    assert result.returncode == 0
    assert result.stdout.strip() == f"distill-tui {__version__}"


def test_corrupt_workspace_exits_non_zero_untouched(isolated_env: Path) -> None:
    ws = isolated_env / "ws"
    ws.mkdir()
    db = ws / "distill.db"
    db.write_bytes(b"garbage" * 1000)
    before = (db.read_bytes(), db.stat().st_mtime_ns)
    result = run("--workspace", str(ws), cwd=isolated_env)
    assert result.returncode != 0
    assert "not SQLite" in result.stderr and str(db) in result.stderr
    assert (db.read_bytes(), db.stat().st_mtime_ns) == before
    assert sorted(p.name for p in ws.iterdir()) == ["distill.db"]


def test_newer_workspace_exits_non_zero(isolated_env: Path) -> None:
    ws = isolated_env / "ws"
    Store.open(ws).close()
    conn = sqlite3.connect(ws / "distill.db")
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    result = run("--workspace", str(ws), cwd=isolated_env)
    assert result.returncode == 1
    assert "newer distill-tui" in result.stderr


def test_workspace_that_is_a_file(isolated_env: Path) -> None:
    (isolated_env / "afile").write_text("x")
    result = run("--workspace", "afile", cwd=isolated_env)
    assert result.returncode == 1
    assert "not a directory" in result.stderr


def test_invalid_settings_name_the_field(isolated_env: Path) -> None:
    (isolated_env / ".env").write_text("DISTILL_CONCURRENCY=0\n")
    result = run(cwd=isolated_env)
    assert result.returncode == 2
    assert "concurrency" in result.stderr


def test_web_refuses_a_public_address_without_the_flag(isolated_env: Path) -> None:
    result = run("web", "--host", "0.0.0.0", cwd=isolated_env)
    assert result.returncode == 2
    assert "--allow-remote" in result.stderr


def test_loopback_detection() -> None:
    from tui.web_command import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
    assert not is_loopback("example.org")
