"""Stored chat completions (`store=true`): listed by model and `metadata[k]=v`, retrieved,
their metadata updated, their request messages listed, deleted. The stored object is the
response body as the client got it (all its choices), plus `metadata` and the sampling
parameters, as OpenAI keeps them."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict

from tui.local.config import ServerConfig
from tui.local.db import LocalDB
from tui.local.errors import not_found
from tui.local.routes.common import (
    Local,
    list_object,
    metadata_filter,
    page_or_404,
    validate_metadata,
)


@dataclass
class StoredRequest:
    """What a stored completion keeps besides the response body."""

    messages: list[dict[str, Any]]
    metadata: dict[str, str]
    params: dict[str, Any]


async def store_completion(db: LocalDB, response: dict[str, Any], stored: StoredRequest) -> None:
    body = dict(response)
    body["metadata"] = stored.metadata
    body.update(stored.params)
    await asyncio.to_thread(db.add_completion, body, stored.messages, stored.metadata)


class MetadataUpdate(BaseModel):
    model_config = ConfigDict(strict=True)
    metadata: dict[str, Any] | None


def stored_completion(db: LocalDB, completion_id: str) -> dict[str, Any]:
    row = db.get_completion(completion_id)
    if row is None:
        raise not_found(
            f"No stored chat completion found with id '{completion_id}'.",
            "completion_id",
            "not_found",
        )
    return row


def list_chat_completions(
    request: Request,
    local: Local,
    model: str | None = None,
    after: str | None = None,
    limit: int = Query(20, ge=1, le=1000),
    order: Literal["asc", "desc"] = "asc",
) -> dict[str, Any]:
    page = page_or_404(
        local.db.list_completions(
            model=model,
            metadata=metadata_filter(request),
            after=after,
            limit=limit,
            order=order,
        ),
        after,
    )
    return list_object([r["body"] for r in page.rows], page.has_more)


def retrieve_chat_completion(completion_id: str, local: Local) -> dict[str, Any]:
    return stored_completion(local.db, completion_id)["body"]  # type: ignore[no-any-return]


def update_chat_completion(
    completion_id: str, body: MetadataUpdate, local: Local
) -> dict[str, Any]:
    stored_completion(local.db, completion_id)
    metadata = validate_metadata(body.metadata)
    row = local.db.update_completion_metadata(completion_id, metadata)
    if row is None:  # deleted meanwhile
        stored_completion(local.db, completion_id)
    assert row is not None
    return row["body"]  # type: ignore[no-any-return]


def list_chat_completion_messages(
    completion_id: str,
    local: Local,
    after: str | None = None,
    limit: int = Query(20, ge=1, le=1000),
    order: Literal["asc", "desc"] = "asc",
) -> dict[str, Any]:
    row = stored_completion(local.db, completion_id)
    messages = []
    for i, m in enumerate(row["request_messages"]):
        content = m.get("content")
        parts = None
        if isinstance(content, list):
            parts = content
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        messages.append(
            {
                "id": f"{completion_id}-{i}",
                "role": m.get("role"),
                "content": content,
                "name": m.get("name"),
                "content_parts": parts,
            }
        )
    if order == "desc":
        messages.reverse()
    if after is not None:
        ids = [m["id"] for m in messages]
        if after not in ids:
            raise not_found(f"No message found for 'after' cursor: {after}.", "after")
        messages = messages[ids.index(after) + 1 :]
    return list_object(messages[:limit], len(messages) > limit)


def delete_chat_completion(completion_id: str, local: Local) -> dict[str, Any]:
    stored_completion(local.db, completion_id)
    local.db.delete_completion(completion_id)
    return {"object": "chat.completion.deleted", "id": completion_id, "deleted": True}


def router(config: ServerConfig) -> APIRouter:
    r = APIRouter()
    one = "/v1/chat/completions/{completion_id}"
    r.add_api_route("/v1/chat/completions", list_chat_completions, methods=["GET"])
    r.add_api_route(one, retrieve_chat_completion, methods=["GET"])
    r.add_api_route(
        one, update_chat_completion, methods=["POST"], max_body_size=config.max_body_bytes
    )
    r.add_api_route(one + "/messages", list_chat_completion_messages, methods=["GET"])
    r.add_api_route(one, delete_chat_completion, methods=["DELETE"])
    return r
