"""The Settings screen: what the app runs with, where each value comes from, and a form that
saves the non-secret ones to the TOML config file. Keys are shown masked and never saved.

A backend per role: the teacher, the student and the judge each have a backend choice and a
base URL (saved like the rest), and a line saying whether a key of their own is set in the
environment (the key itself is neither shown nor saved)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.markup import escape
from textual.widgets import Button, Input, Label, Select, Static

from screens.base import DistillScreen
from tui.engine.settings import ROLES, Role, Settings, config_path, save_settings

BACKENDS = [
    ("auto: the base URL if set, else OpenAI if a key is set, else local", "auto"),
    ("local: the embedded backend", "local"),
    ("openai: api.openai.com", "openai"),
    ("url: any OpenAI-compatible server", "url"),
]
ROLE_BACKENDS = [
    ("auto: its own base URL or key if set, else the default backend", "auto"),
    ("default: the backend above", "default"),
    ("local: the embedded backend", "local"),
    ("openai: api.openai.com", "openai"),
    ("url: any OpenAI-compatible server (its base URL)", "url"),
]
# Never copied from the form nor written to the config: they come from the environment.
SECRETS = ("api_key", "local_api_key", *(f"{role}_api_key" for role in ROLES))


def mask(secret: Any) -> str:
    if secret is None:
        return "not set"
    value = secret.get_secret_value()
    if not value:
        return "not set"
    return f"set ({value[:3]}…{value[-4:]})" if len(value) > 12 else "set (****)"


def role_key_text(settings: Settings, role: Role) -> str:
    """Whether the role has a key of its own, and where it would come from; never the key."""
    key = getattr(settings, f"{role}_api_key")
    env = f"DISTILL_{role.upper()}_API_KEY"
    if key is not None and key.get_secret_value():
        return f"set in {env} (environment or .env; never saved)"
    return f"not set ({env}) — the shared key is used where it is meant for this server"


class SettingsScreen(DistillScreen):
    CSS_PATH = "settings.tcss"
    BINDINGS = [Binding("ctrl+s", "save", "Save", id="settings.save")]

    def compose_body(self) -> ComposeResult:
        s = self.distill.settings
        with VerticalScroll(id="settings-form"):
            yield Static(
                f"Saved to [b]{escape(str(config_path()))}[/b] (DISTILL_CONFIG changes it). "
                "Environment variables (DISTILL_*, OPENAI_API_KEY, OPENAI_BASE_URL) and .env "
                "override it. "
                "Backend changes apply at the next launch.",
                id="settings-intro",
            )
            yield from self._field(
                "Backend", Select(BACKENDS, value=s.backend, id="backend", allow_blank=False)
            )
            yield from self._field(
                "Base URL",
                Input(s.base_url or "", id="base_url", placeholder="http://localhost:8000/v1"),
            )
            yield from self._field(
                "API key",
                Static(
                    f"{escape(mask(s.api_key))} — set OPENAI_API_KEY or DISTILL_API_KEY in the "
                    "environment or .env; keys are never saved",
                    id="api_key",
                ),
            )
            for role in ROLES:
                title = role.capitalize()
                yield from self._field(
                    f"{title} backend",
                    Select(
                        ROLE_BACKENDS,
                        value=getattr(s, f"{role}_backend"),
                        id=f"{role}_backend",
                        allow_blank=False,
                    ),
                )
                yield from self._field(
                    f"{title} base URL",
                    Input(
                        getattr(s, f"{role}_base_url") or "",
                        id=f"{role}_base_url",
                        placeholder="http://gpu-box:8000/v1 (backend url)",
                    ),
                )
                yield from self._field(
                    f"{title} API key",
                    Static(role_key_text(s, role), id=f"{role}_api_key", classes="key-status"),
                )
            yield from self._field(
                "Teacher model",
                Input(s.teacher_model or "", id="teacher_model", placeholder=s.teacher),
            )
            yield from self._field(
                "Student model",
                Input(s.student_model or "", id="student_model", placeholder=s.student),
            )
            yield from self._field(
                "Judge model", Input(s.judge_model or "", id="judge_model", placeholder=s.judge)
            )
            yield from self._field(
                "Concurrency (1–256)", Input(str(s.concurrency), id="concurrency", type="integer")
            )
            yield from self._field(
                "Request timeout (s)",
                Input(str(s.request_timeout), id="request_timeout", type="number"),
            )
            yield from self._field(
                "Retries", Input(str(s.max_retries), id="max_retries", type="integer")
            )
            yield from self._field("Workspace", Input(str(s.workspace), id="workspace"))
            yield from self._field(
                "Local models",
                Input(
                    ", ".join(str(p) for p in s.local_models),
                    id="local_models",
                    placeholder="paths to .gguf files or transformers folders, comma-separated",
                ),
            )
            yield from self._field(
                "Prices ($ per 1M tokens)",
                Input(json.dumps({k: v.model_dump() for k, v in s.prices.items()}), id="prices"),
            )
            # What was refused quotes the values typed (a URL, JSON): shown as written.
            yield Static("", id="settings-error", markup=False)
            with Horizontal(id="settings-buttons"):
                yield Button("Save", variant="primary", id="save")

    def _field(self, label: str, widget: Any) -> ComposeResult:
        with Horizontal(classes="field"):
            yield Label(label, classes="field-label")
            yield widget

    def on_mount(self) -> None:
        self.sub_title = "Settings"

    def _value(self, field: str) -> Any:
        return self.query_one(f"#{field}", Input).value.strip()

    def collect(self) -> dict[str, Any]:
        backend = self.query_one("#backend", Select).value
        prices_raw = self._value("prices") or "{}"
        try:
            prices = json.loads(prices_raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"Prices: not valid JSON ({exc.msg} at column {exc.colno})") from exc
        roles: dict[str, Any] = {}
        for role in ROLES:
            roles[f"{role}_backend"] = self.query_one(f"#{role}_backend", Select).value
            roles[f"{role}_base_url"] = self._value(f"{role}_base_url") or None
        return {
            **roles,
            "backend": backend,
            "base_url": self._value("base_url") or None,
            "teacher_model": self._value("teacher_model") or None,
            "student_model": self._value("student_model") or None,
            "judge_model": self._value("judge_model") or None,
            "concurrency": self._value("concurrency"),
            "request_timeout": self._value("request_timeout"),
            "max_retries": self._value("max_retries"),
            "workspace": Path(self._value("workspace") or "distill-workspace"),
            "local_models": [
                Path(p.strip()) for p in self._value("local_models").split(",") if p.strip()
            ],
            "prices": prices,
        }

    @on(Button.Pressed, "#save")
    def action_save(self) -> None:
        error = self.query_one("#settings-error", Static)
        current = self.distill.settings
        try:
            values = self.collect()
            # Validate through the same model as the environment; secrets stay as they are.
            merged = Settings.model_validate(
                {
                    **current.model_dump(exclude=set(SECRETS)),
                    **values,
                    **{name: getattr(current, name) for name in SECRETS},
                }
            )
        except ValueError as exc:
            if isinstance(exc, ValidationError):
                message = "; ".join(
                    f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
                )
            else:
                message = str(exc)
            error.update(f"Not saved: {message}")
            return
        try:
            path = save_settings(merged)
        except ValueError as exc:
            error.update(f"Not saved: {exc}")
            return
        except OSError as exc:
            error.update(
                f"Not saved: cannot write {exc.filename or config_path()} ({exc.strerror})"
            )
            return
        self.distill.settings = merged
        error.update("")
        for status in self.app.query("StatusLine"):
            status.refresh()
        self.notify(f"Saved to {path}.", markup=False)
