"""Settings from the environment, .env and the TOML config file named by DISTILL_CONFIG."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from tui.engine.settings import (
    LOCAL_DEFAULT_MODEL,
    Settings,
    config_path,
    load_settings,
    save_settings,
)


def test_defaults_pick_the_local_backend() -> None:
    s = load_settings()
    assert s.backend_kind() == "local"
    assert s.teacher == s.student == LOCAL_DEFAULT_MODEL
    assert s.concurrency == 8
    assert s.workspace == Path("distill-workspace")
    assert s.price("smollm2-135m-instruct").output == 0


def test_openai_key_is_honoured_and_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-abcdefghijklmnop")
    s = load_settings()
    assert s.backend_kind() == "openai"
    assert (s.teacher, s.student) == ("gpt-4o", "gpt-4o-mini")
    assert s.api_key is not None
    assert "sk-test" not in repr(s) and "sk-test" not in str(s.model_dump())


def test_base_url_wins_over_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1/")
    s = load_settings()
    assert s.backend_kind() == "url"
    assert s.base_url == "http://127.0.0.1:8000/v1"
    monkeypatch.setenv("DISTILL_BASE_URL", "http://other:1/v1")
    assert load_settings().base_url == "http://other:1/v1"


def test_explicit_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    monkeypatch.setenv("DISTILL_BACKEND", "local")
    assert load_settings().backend_kind() == "local"


def test_dotenv_in_working_directory(isolated_env: Path) -> None:
    (isolated_env / ".env").write_text("DISTILL_CONCURRENCY=32\nDISTILL_STUDENT_MODEL=tiny\n")
    s = load_settings()
    assert s.concurrency == 32
    assert s.student == "tiny"


def test_toml_config_and_precedence(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = isolated_env / "custom.toml"
    cfg.write_text(
        'teacher_model = "big"\nconcurrency = 16\nworkspace = "~/ws"\n'
        "[prices.big]\ninput = 1.0\noutput = 2.0\n"
    )
    monkeypatch.setenv("DISTILL_CONFIG", str(cfg))
    assert config_path() == cfg
    s = load_settings()
    assert s.teacher == "big"
    assert s.concurrency == 16
    assert s.workspace == Path("~/ws").expanduser()
    assert s.price("big").output == 2.0
    monkeypatch.setenv("DISTILL_CONCURRENCY", "4")
    assert load_settings().concurrency == 4  # the environment beats the file


def test_invalid_values_say_which_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISTILL_CONCURRENCY", "1000")
    with pytest.raises(ValidationError, match="concurrency"):
        load_settings()
    monkeypatch.setenv("DISTILL_CONCURRENCY", "8")
    monkeypatch.setenv("DISTILL_BASE_URL", "localhost:8000")
    with pytest.raises(ValidationError, match="http"):
        load_settings()


def test_save_writes_no_secrets(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-very-secret-value")
    monkeypatch.setenv("DISTILL_LOCAL_API_KEY", "local-secret")
    s = Settings(teacher_model="gpt-4.1", concurrency=12)
    path = save_settings(s)
    assert path == config_path()
    text = path.read_text()
    assert "secret" not in text
    data = tomllib.loads(text)
    assert data["teacher_model"] == "gpt-4.1"
    assert data["concurrency"] == 12
    assert data["prices"]["gpt-4o"]["output"] == 10.0
    monkeypatch.delenv("OPENAI_API_KEY")
    reloaded = load_settings()
    assert (reloaded.teacher, reloaded.concurrency) == ("gpt-4.1", 12)
    assert not any(p.suffix == ".tmp" for p in path.parent.iterdir())


def test_fine_tuned_models_cost_their_own_rates() -> None:
    s = load_settings()
    # OpenAI bills gpt-4o-mini fine-tuned at $0.30 / $1.20, twice the base: a real id (with
    # its snapshot) and a short one are both priced so, never as the base or as free.
    for model in ("ft:gpt-4o-mini-2024-07-18:org:suffix:abc123", "ft:gpt-4o-mini:org::x"):
        price = s.price(model)
        assert (price.input, price.output) == (0.30, 1.20)
    assert s.price("gpt-4o-mini-2024-07-18") == s.prices["gpt-4o-mini"]  # a snapshot: its alias
    assert s.price("unknown-model").input == 0
    # Overridable: a fine-tuned base the table doesn't know bills as its base.
    custom = load_settings(prices={"my-model": {"input": 1, "output": 2}}, fine_tuned_prices={})
    assert custom.price("ft:my-model:org:x:1").output == 2
    assert custom.price("ft:gpt-4o-mini-2024-07-18:org:x:1").output == 0  # no base price now


def test_loading_settings_does_not_touch_the_workspace(isolated_env: Path) -> None:
    load_settings()
    assert not (isolated_env / "distill-workspace").exists()
    assert os.listdir(isolated_env) == ["home"]
