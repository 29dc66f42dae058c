"""A key written into a base URL (`http://user:KEY@host/v1`) is refused wherever a URL comes
in, with one message saying where the key goes instead: the Settings screen (nothing saved),
the config file and the environment (`distill-tui` stops before opening anything), a recipe's
`*_backend` (`distill-tui run` stops), and `save_settings` itself for settings that skipped
validation. The openai client would send such a key as HTTP Basic auth in place of the API
key, and the config file would keep it. Each test greps what was written for the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import Static

from screens.settings import SettingsScreen
from tests.tui.conftest import drive, plain
from tui.app import DistillApp
from tui.cli import main
from tui.engine.settings import Settings, config_path, load_settings, save_settings
from tui.engine.store import Store

KEY = "sk-url-planted-7d41c0ffee93"
REFUSED = "holds a user name or password"


def assert_no_key(*texts: str) -> None:
    for text in texts:
        assert KEY not in text and KEY[-8:] not in text, text


async def test_settings_screen_refuses_a_key_in_a_url_and_saves_nothing(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "ws")
    app = DistillApp(
        settings=load_settings(workspace=store.directory), store=store, start_backend=False
    )
    try:
        async with drive(app) as t:
            await t.press("7")
            screen = await t.screen_of(SettingsScreen)
            await t.pilot.click("#base_url")
            await t.paste("http://gpu-box:8000/v1")
            await t.press("ctrl+s")
            await t.settle()
            assert plain(screen.query_one("#settings-error")) == ""
            saved = config_path().read_bytes()

            # The user writes the key into the URL they just saved, and one into a role's.
            await t.press("home", *["right"] * len("http://"))
            await t.paste(f"user:{KEY}@")
            await t.pilot.click("#teacher_base_url")
            await t.paste(f"http://:{KEY}@[::1]:8000/v1")
            await t.press("ctrl+s")
            await t.settle()

            error = plain(screen.query_one("#settings-error"))
            assert error.startswith("Not saved: ")
            assert f"base_url {REFUSED} (http://***@gpu-box:8000/v1)" in error
            assert "set DISTILL_API_KEY (or OPENAI_API_KEY) in the environment or .env" in error
            assert f"teacher_base_url {REFUSED} (http://***@[::1]:8000/v1)" in error
            assert "set DISTILL_TEACHER_API_KEY in the environment or .env" in error
            shown = [plain(w) for w in screen.query(Static)]
            assert_no_key(*shown, *(m for _, _, m in t.notifications()))
            assert app.settings.base_url == "http://gpu-box:8000/v1"
            assert app.settings.teacher_base_url is None
    finally:
        store.close()
    assert config_path().read_bytes() == saved
    assert_no_key(config_path().read_text(encoding="utf-8"))
    assert not list(config_path().parent.glob("*.tmp"))


def test_save_settings_refuses_settings_that_skipped_validation(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    save_settings(Settings(concurrency=3), path)
    before = path.read_bytes()
    for field in ("base_url", "teacher_base_url", "student_base_url", "judge_base_url"):
        unchecked = Settings().model_copy(update={field: f"https://{KEY}@api.example.com/v1"})
        with pytest.raises(ValueError, match=f"{field} {REFUSED}") as refused:
            save_settings(unchecked, path)
        assert_no_key(str(refused.value))
        assert path.read_bytes() == before


@pytest.mark.parametrize("source", ["config file", "DISTILL_BASE_URL", "OPENAI_BASE_URL"])
def test_the_command_refuses_a_key_in_a_url_from_anywhere(
    source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://me:{KEY}@gpu-box:8000/v1"
    if source == "config file":  # written by hand: the Settings screen would not have
        config_path().write_text(f'backend = "url"\nbase_url = "{url}"\n', encoding="utf-8")
    else:
        monkeypatch.setenv(source, url)
    workspace = tmp_path / "ws"
    code = main(["--workspace", str(workspace), "run", "--yes"])
    out, err = capsys.readouterr()
    assert code == 2
    assert err.startswith("distill-tui: invalid settings (")
    assert f"{REFUSED} (http://***@gpu-box:8000/v1)" in err
    assert "set DISTILL_API_KEY (or OPENAI_API_KEY) in the environment or .env" in err
    assert_no_key(out, err)
    assert not workspace.exists()  # stopped before opening anything


def test_a_recipe_backend_holding_a_key_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        f'[recipe]\nteacher_backend = "https://team:{KEY}@gpu-box:8000/v1"\n', encoding="utf-8"
    )
    workspace = tmp_path / "ws"
    code = main(["--workspace", str(workspace), "run", "--config", str(recipe), "--yes"])
    out, err = capsys.readouterr()
    assert code == 1
    assert err.startswith(f"distill-tui run: {recipe}: teacher_backend: ")
    assert f"the backend's URL {REFUSED} (https://***@gpu-box:8000/v1)" in err
    assert "DISTILL_<ROLE>_API_KEY" in err
    assert_no_key(out, err)
    # Nothing about the recipe reached the workspace.
    written = [p for p in workspace.rglob("*") if p.is_file()]
    for path in written:
        assert KEY.encode() not in path.read_bytes(), path
    assert not (workspace / "reports").exists()
