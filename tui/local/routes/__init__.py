"""The local server's routes, one module per endpoint family. Each module has a
`router(config) -> APIRouter`; a new family is a new module added to `FAMILIES`. What they
share lives beside them: state, lists and metadata in `common`, errors in tui/local/errors.py,
auth and size limits in tui/local/guard.py."""

from __future__ import annotations

from fastapi import APIRouter

from tui.local.config import ServerConfig
from tui.local.routes import batches, chat, files, fine_tuning, models, stored_completions

FAMILIES = (models, chat, stored_completions, files, fine_tuning, batches)


def routers(config: ServerConfig) -> list[APIRouter]:
    return [family.router(config) for family in FAMILIES]
