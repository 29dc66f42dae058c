"""What every router shares: the server's state as a dependency, OpenAI's list envelope and
cursor pages, and `metadata` (its limits, and the `metadata[k]=v` filters of list routes)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from tui.local.batches import BatchManager
from tui.local.config import ServerConfig
from tui.local.db import LocalDB, Page
from tui.local.errors import bad_request, not_found, type_name
from tui.local.jobs import JobManager
from tui.local.models import ModelRegistry

# OpenAI's limits for `metadata` (chat completions, jobs): 16 pairs, keys up to 64
# characters, values up to 512.
METADATA_MAX_PAIRS = 16
METADATA_MAX_KEY = 64
METADATA_MAX_VALUE = 512


@dataclass
class LocalState:
    """What the routes work with, from the app's startup to its shutdown."""

    config: ServerConfig
    db: LocalDB
    registry: ModelRegistry
    jobs: JobManager
    batches: BatchManager


async def local_state(request: Request) -> LocalState:
    # async: FastAPI would run a plain function in its thread pool, once per request.
    return request.app.state.local  # type: ignore[no-any-return]


# A route parameter `local: Local` receives the running server's state.
Local = Annotated[LocalState, Depends(local_state)]


def list_object(data: list[dict[str, Any]], has_more: bool, *, ids: bool = True) -> dict[str, Any]:
    """OpenAI's list envelope; ``ids`` adds first_id/last_id (not every list has them)."""
    out: dict[str, Any] = {"object": "list", "data": data}
    if ids:
        out["first_id"] = data[0]["id"] if data else None
        out["last_id"] = data[-1]["id"] if data else None
    out["has_more"] = has_more
    return out


def page_or_404(page: Page | None, after: str | None) -> Page:
    """A database page, or the 404 for an ``after`` cursor that names nothing (None)."""
    if page is None:
        raise not_found(f"No object found for 'after' cursor: {after}.", "after")
    return page


def metadata_filter(request: Request) -> dict[str, str]:
    # The SDK sends metadata={"k": "v"} as metadata[k]=v.
    found = {}
    for key, value in request.query_params.multi_items():
        m = re.fullmatch(r"metadata\[(.+)\]", key)
        if m:
            found[m.group(1)] = value
    return found


def validate_metadata(metadata: dict[str, Any] | None, param: str = "metadata") -> dict[str, str]:
    if metadata is None:
        return {}
    if len(metadata) > METADATA_MAX_PAIRS:
        raise bad_request(
            f"Invalid '{param}': too many properties. Expected an object with at most "
            f"{METADATA_MAX_PAIRS} properties, but got an object with {len(metadata)} "
            "properties instead.",
            param,
            "object_above_max_properties",
        )
    for key, value in metadata.items():
        if len(key) > METADATA_MAX_KEY:
            raise bad_request(
                f"Invalid '{param}': key too long. Expected a key with maximum length "
                f"{METADATA_MAX_KEY}, but got a key with length {len(key)} instead.",
                param,
                "invalid_value",
            )
        if not isinstance(value, str):
            raise bad_request(
                f"Invalid type for '{param}.{key}': expected a string, but got "
                f"{type_name(value)} instead.",
                f"{param}.{key}",
                "invalid_type",
            )
        if len(value) > METADATA_MAX_VALUE:
            raise bad_request(
                f"Invalid '{param}.{key}': string too long. Expected a string with maximum "
                f"length {METADATA_MAX_VALUE}, but got a string with length {len(value)} "
                "instead.",
                f"{param}.{key}",
                "string_above_max_length",
            )
    return {str(k): str(v) for k, v in metadata.items()}
