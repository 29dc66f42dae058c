"""Settings: DISTILL_* environment variables, a .env file, and a TOML config file.

Precedence, highest first: values passed in code, environment, `.env` in the working
directory, the TOML config file (`DISTILL_CONFIG`, else the platform's config dir), defaults.
`OPENAI_API_KEY` and `OPENAI_BASE_URL` are honoured as the openai SDK's users expect.
Secrets are `SecretStr` and are never written back to the config file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import tomli_w
from platformdirs import user_config_dir
from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from tui.engine import openai_models
from tui.engine.local_model import LOCAL_DEFAULT_MODEL

OPENAI_TEACHER = "gpt-4o"
OPENAI_STUDENT = "gpt-4o-mini"

BackendName = Literal["auto", "local", "openai", "url"]


class Price(BaseModel):
    """US dollars per million tokens."""

    input: float = 0.0
    output: float = 0.0
    training: float = 0.0


def _prices(table: dict[str, tuple[float, float, float]]) -> dict[str, Price]:
    return {m: Price(input=i, output=o, training=t) for m, (i, o, t) in table.items()}


# OpenAI's list prices (per 1M tokens, see openai_models.PUBLISHED); anything unknown costs 0,
# which is right for the local backend and shown as "unpriced" for other URLs.
DEFAULT_PRICES: dict[str, Price] = _prices(openai_models.BASE_PRICES)
# What a fine-tuned model costs, by its base (alias or snapshot): its own rates, not the base's.
DEFAULT_FINE_TUNED_PRICES: dict[str, Price] = _prices(openai_models.FINE_TUNED_PRICES)


def config_path() -> Path:
    """Where the TOML config lives: DISTILL_CONFIG, else the platform's config directory."""
    env = os.environ.get("DISTILL_CONFIG")
    if env:
        return Path(env).expanduser()
    return Path(user_config_dir("distill-tui")) / "config.toml"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="DISTILL_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        validate_default=True,
    )

    backend: BackendName = "auto"
    base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DISTILL_BASE_URL", "OPENAI_BASE_URL")
    )
    api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("DISTILL_API_KEY", "OPENAI_API_KEY")
    )
    teacher_model: str | None = None
    student_model: str | None = None
    judge_model: str | None = None
    concurrency: int = Field(default=8, ge=1, le=256)
    request_timeout: float = Field(default=60.0, gt=0, le=3600)
    max_retries: int = Field(default=5, ge=0, le=20)
    prices: dict[str, Price] = Field(default_factory=lambda: dict(DEFAULT_PRICES))
    fine_tuned_prices: dict[str, Price] = Field(
        default_factory=lambda: dict(DEFAULT_FINE_TUNED_PRICES)
    )
    # OpenAI alias -> the dated snapshot fine-tuning jobs (and the recipe's baseline) use.
    fine_tunable: dict[str, str] = Field(default_factory=lambda: dict(openai_models.FINE_TUNABLE))
    workspace: Path = Path("distill-workspace")
    local_models: list[Path] = Field(default_factory=list)
    local_api_key: SecretStr | None = None

    @field_validator("base_url")
    @classmethod
    def _url_shape(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https:// (got {value!r})")
        return value.rstrip("/")

    @field_validator("workspace", mode="after")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = TomlConfigSettingsSource(settings_cls, toml_file=config_path())
        return (init_settings, env_settings, dotenv_settings, toml)

    # What the backend rule decides; backend.resolve_backend() is the one place that acts on it.
    def backend_kind(self) -> Literal["local", "openai", "url"]:
        if self.backend != "auto":
            return self.backend
        if self.base_url:
            return "url"
        if self.api_key is not None and self.api_key.get_secret_value():
            return "openai"
        return "local"

    @property
    def teacher(self) -> str:
        if self.teacher_model:
            return self.teacher_model
        return OPENAI_TEACHER if self.backend_kind() == "openai" else LOCAL_DEFAULT_MODEL

    @property
    def student(self) -> str:
        if self.student_model:
            return self.student_model
        return OPENAI_STUDENT if self.backend_kind() == "openai" else LOCAL_DEFAULT_MODEL

    @property
    def judge(self) -> str:
        return self.judge_model or self.teacher

    def price(self, model: str) -> Price:
        """What a model costs (estimates, live cost, budget stops, Compare). A model priced
        by name wins; a fine-tuned model (`ft:gpt-4o-mini-2024-07-18:org:suffix:id`) bills
        at the fine-tuned rate of its base, or as its base where no such rate is set (a
        model on another backend priced by the user); a snapshot bills as its alias."""
        if model in self.prices:
            return self.prices[model]
        base = openai_models.fine_tuned_base(model)
        if base is not None:
            for name in (base, openai_models.alias_of(base)):
                if name in self.fine_tuned_prices:
                    return self.fine_tuned_prices[name]
            return self.price(base)
        return self.prices.get(openai_models.alias_of(model), Price())


# Fields a user may edit in the Settings screen and that are saved to the TOML file. Secrets
# are deliberately absent: they come from the environment or .env only.
SAVED_FIELDS = (
    "backend",
    "base_url",
    "teacher_model",
    "student_model",
    "judge_model",
    "concurrency",
    "request_timeout",
    "max_retries",
    "prices",
    "fine_tuned_prices",
    "fine_tunable",
    "workspace",
    "local_models",
)


def load_settings(**overrides: Any) -> Settings:
    return Settings(**overrides)


def save_settings(settings: Settings, path: Path | None = None) -> Path:
    """Write the non-secret settings to the TOML config (atomically). Returns the path."""
    path = path or config_path()
    data: dict[str, Any] = {}
    for name in SAVED_FIELDS:
        value = getattr(settings, name)
        if value is None:
            continue
        if name in ("prices", "fine_tuned_prices"):
            value = {model: price.model_dump() for model, price in value.items()}
        elif name == "workspace":
            value = str(value)
        elif name == "local_models":
            value = [str(p) for p in value]
        data[name] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(tomli_w.dumps(data), encoding="utf-8")
    os.replace(tmp, path)
    return path
