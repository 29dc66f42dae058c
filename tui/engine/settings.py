"""Settings: DISTILL_* environment variables, a .env file, and a TOML config file.

Precedence, highest first: values passed in code, environment, `.env` in the working
directory, the TOML config file (`DISTILL_CONFIG`, else the platform's config dir), defaults.
`OPENAI_API_KEY` and `OPENAI_BASE_URL` are honoured as the openai SDK's users expect.
Secrets are `SecretStr` and are never written back to the config file.

A backend per role: the teacher, the student and the judge may each name their own backend
(`DISTILL_TEACHER_BACKEND=openai|url|local|default`, `DISTILL_TEACHER_BASE_URL`,
`DISTILL_TEACHER_API_KEY`, `teacher_prices`; the same for STUDENT and JUDGE). A role that names
none, and has no URL or key of its own, uses the default backend (`DISTILL_BACKEND`...); a
judge with no model of its own is the teacher, on the teacher's backend.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import tomli_w
from platformdirs import user_config_dir
from pydantic import (
    AliasChoices,
    BaseModel,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from tui.engine import openai_models
from tui.engine.local_model import LOCAL_DEFAULT_MODEL
from tui.engine.redact import redact_url

OPENAI_TEACHER = "gpt-4o"
OPENAI_STUDENT = "gpt-4o-mini"

BackendName = Literal["auto", "local", "openai", "url"]
BackendKind = Literal["local", "openai", "url"]
Role = Literal["teacher", "student", "judge"]
ROLES: tuple[Role, ...] = ("teacher", "student", "judge")
# A role's backend: "auto" = its own URL (-> url) or key (-> openai) if it has one, else the
# default backend; "default" = the default backend whatever else is set.
RoleBackendName = Literal["auto", "default", "local", "openai", "url"]
ROLE_BACKEND_NAMES: tuple[str, ...] = ("auto", "default", "local", "openai", "url")


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


def _key_variable(what: str) -> str:
    """Where the key of the backend `what` names belongs instead of its URL."""
    role = what.removesuffix("_base_url")
    if role in ROLES:
        return f"DISTILL_{role.upper()}_API_KEY"
    if what == "base_url":
        return "DISTILL_API_KEY (or OPENAI_API_KEY)"
    return "DISTILL_API_KEY, or the role's own DISTILL_<ROLE>_API_KEY,"


def _url(value: str | None, what: str = "base_url") -> str | None:
    """A backend's base URL as given (environment, .env, config file, the Settings screen, a
    recipe's `*_backend`): http(s), and never holding a user name or password. A key written
    into the URL would be saved, exported and shown with it, and the openai client would send
    it as HTTP Basic auth in place of the API key; so it is refused, saying where it goes."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if not value.startswith(("http://", "https://")):
        shown = repr(value) if "@" not in value else "a value holding '@', not shown"
        raise ValueError(f"{what} must start with http:// or https:// (got {shown})")
    try:
        netloc = urlsplit(value).netloc
    except ValueError as exc:
        raise ValueError(f"{what} is not a valid URL ({redact_url(value)}: {exc})") from exc
    if "@" in netloc:
        raise ValueError(
            f"{what} holds a user name or password ({redact_url(value)}); a key never goes "
            f"into the URL, where it would be saved and sent in place of the API key: give "
            f"the URL without it and set {_key_variable(what)} in the environment or .env"
        )
    return value.rstrip("/")


def parse_backend_choice(value: str) -> tuple[RoleBackendName, str | None]:
    """A role's backend as a user names it (recipe config `teacher_backend = ...`): a kind
    (auto, default, local, openai, url) or the URL of an OpenAI-compatible server."""
    text = value.strip()
    if text.lower() in ROLE_BACKEND_NAMES:
        return text.lower(), None  # type: ignore[return-value]
    if text.startswith(("http://", "https://")):
        return "url", _url(text, "the backend's URL")
    shown = repr(value) if "@" not in value else "a value holding '@', not shown"
    raise ValueError(
        f"a backend is one of {', '.join(ROLE_BACKEND_NAMES)} or an http(s) URL (got {shown})"
    )


def _has_key(key: SecretStr | None) -> bool:
    return key is not None and bool(key.get_secret_value())


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
        # A refused value may be a key (or a URL holding one): errors never repeat it.
        hide_input_in_errors=True,
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
    # The share of the live price a Batch API run saves (tui/engine/batch.py): OpenAI bills
    # batches at half price (platform.openai.com/docs/guides/batch).
    batch_discount: float = Field(default=0.5, ge=0.0, lt=1.0)
    # OpenAI alias -> the dated snapshot fine-tuning jobs (and the recipe's baseline) use.
    fine_tunable: dict[str, str] = Field(default_factory=lambda: dict(openai_models.FINE_TUNABLE))
    workspace: Path = Path("distill-workspace")
    local_models: list[Path] = Field(default_factory=list)
    local_api_key: SecretStr | None = None
    # A backend per role (DISTILL_TEACHER_BACKEND, DISTILL_TEACHER_BASE_URL,
    # DISTILL_TEACHER_API_KEY...). Keys come from the environment or .env only; a role's
    # prices override the shared table for the models on its backend.
    teacher_backend: RoleBackendName = "auto"
    teacher_base_url: str | None = None
    teacher_api_key: SecretStr | None = None
    teacher_prices: dict[str, Price] = Field(default_factory=dict)
    student_backend: RoleBackendName = "auto"
    student_base_url: str | None = None
    student_api_key: SecretStr | None = None
    student_prices: dict[str, Price] = Field(default_factory=dict)
    judge_backend: RoleBackendName = "auto"
    judge_base_url: str | None = None
    judge_api_key: SecretStr | None = None
    judge_prices: dict[str, Price] = Field(default_factory=dict)

    @field_validator("base_url", "teacher_base_url", "student_base_url", "judge_base_url")
    @classmethod
    def _url_shape(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _url(value, info.field_name or "base_url")

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

    # What the backend rule decides; backend.resolve_backend() and resolve_role_backend()
    # are the one place that acts on it.
    def backend_kind(self, role: Role | None = None) -> BackendKind:
        """The default backend's kind, or (with a role) the kind of the backend that role uses."""
        owner = self.backend_owner(role) if role is not None else None
        if owner is not None:
            choice = getattr(self, f"{owner}_backend")
            if choice in ("local", "openai", "url"):
                return choice  # type: ignore[no-any-return]
            return "url" if getattr(self, f"{owner}_base_url") else "openai"
        if self.backend != "auto":
            return self.backend
        if self.base_url:
            return "url"
        if _has_key(self.api_key):
            return "openai"
        return "local"

    def backend_owner(self, role: Role) -> Role | None:
        """Whose backend settings a role uses: its own (it names a backend, or has a URL or key
        of its own), the teacher's for a judge that is the teacher (no judge model or backend
        of its own), else None: the default backend."""
        choice = getattr(self, f"{role}_backend")
        if choice == "default":
            return None
        if (
            choice != "auto"
            or getattr(self, f"{role}_base_url")
            or _has_key(getattr(self, f"{role}_api_key"))
        ):
            return role
        if role == "judge" and not self.judge_model:
            return self.backend_owner("teacher")
        return None

    def with_backends(self, **choices: str | None) -> Settings:
        """These settings with some roles' backends replaced (`teacher="http://gpu:8000/v1"`,
        `student="local"`): what the recipe config's `*_backend` keys do. None changes
        nothing; keys still come from the environment."""
        update: dict[str, Any] = {}
        for role, value in choices.items():
            if role not in ROLES:
                raise ValueError(f"unknown role {role!r}: use {', '.join(ROLES)}")
            if value is None:
                continue
            kind, url = parse_backend_choice(value)
            update[f"{role}_backend"] = kind
            if url is not None:
                update[f"{role}_base_url"] = url
        return self.model_copy(update=update) if update else self

    @property
    def teacher(self) -> str:
        if self.teacher_model:
            return self.teacher_model
        return OPENAI_TEACHER if self.backend_kind("teacher") == "openai" else LOCAL_DEFAULT_MODEL

    @property
    def student(self) -> str:
        if self.student_model:
            return self.student_model
        return OPENAI_STUDENT if self.backend_kind("student") == "openai" else LOCAL_DEFAULT_MODEL

    @property
    def judge(self) -> str:
        return self.judge_model or self.teacher

    def price(self, model: str, role: Role | None = None) -> Price:
        """What a model costs (estimates, live cost, budget stops, Compare). With a role, the
        role's own prices (`teacher_prices`...) come first: by the model's name, its
        fine-tuned base or its alias. Then a model priced by name wins; a fine-tuned model
        (`ft:gpt-4o-mini-2024-07-18:org:suffix:id`) bills at the fine-tuned rate of its base,
        or as its base where no such rate is set (a model on another backend priced by the
        user); a snapshot bills as its alias."""
        own: dict[str, Price] = getattr(self, f"{role}_prices") if role is not None else {}
        if own:
            base = openai_models.fine_tuned_base(model)
            names = [model] if base is None else [model, base, openai_models.alias_of(base)]
            names.append(openai_models.alias_of(model))
            for name in names:
                if name in own:
                    return own[name]
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
    "batch_discount",
    "fine_tunable",
    "workspace",
    "local_models",
    "teacher_backend",
    "teacher_base_url",
    "teacher_prices",
    "student_backend",
    "student_base_url",
    "student_prices",
    "judge_backend",
    "judge_base_url",
    "judge_prices",
)


def load_settings(**overrides: Any) -> Settings:
    return Settings(**overrides)


def save_settings(settings: Settings, path: Path | None = None) -> Path:
    """Write the non-secret settings to the TOML config (atomically). Returns the path.
    A base URL holding a user name or password is refused (ValueError) and nothing is written,
    even from settings that skipped validation (`model_copy(update=...)`)."""
    path = path or config_path()
    data: dict[str, Any] = {}
    for name in SAVED_FIELDS:
        value = getattr(settings, name)
        if value is None:
            continue
        if name.endswith("base_url"):
            _url(value, name)
        if name.endswith("prices"):
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
