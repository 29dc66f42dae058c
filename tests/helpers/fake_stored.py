"""The fake OpenAI server's stored chat completions (`like_openai()`, or
`server.stored.enabled = True`): a chat request with `store: true` is kept, and tests can seed
any number directly (`server.stored.add(...)`), as a production app's logs would be.

Routes, in OpenAI's shapes: `GET /v1/chat/completions` (`model`, `metadata[k]=v`, `after`,
`limit` 1–100 (default 20), `order` asc|desc (default asc); `first_id`, `last_id`,
`has_more`), `GET /v1/chat/completions/{id}`, `GET /v1/chat/completions/{id}/messages`
(`after`, `limit`, `order`; each message with an `id`), `DELETE /v1/chat/completions/{id}`.
`policy(method, path, query)` may answer any of them with an error instead (an Action), to
fail a page or a message read."""

from __future__ import annotations

import re
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# (status, the object or an error's {message, code}, the error's param)
Answer = tuple[int, dict[str, Any], str | None]


def _not_found(message: str, param: str | None = None) -> Answer:
    return 404, {"message": message, "code": None}, param


def _page(data: list[dict[str, Any]], query: dict[str, str]) -> Answer:
    """OpenAI's cursor page over `data` (oldest first): order, after, limit."""
    try:
        limit = int(query.get("limit", "20"))
    except ValueError:
        return 400, {"message": "Invalid 'limit': expected an integer.", "code": None}, "limit"
    if not 1 <= limit <= 100:
        message = f"Invalid 'limit': integer below minimum value or above 100 ({limit})."
        return 400, {"message": message, "code": "invalid_value"}, "limit"
    order = query.get("order", "asc")
    if order not in ("asc", "desc"):
        message = f"Invalid 'order': expected one of asc, desc, got {order!r}."
        return 400, {"message": message, "code": "invalid_value"}, "order"
    if order == "desc":
        data = data[::-1]
    after = query.get("after")
    if after:
        ids = [d["id"] for d in data]
        if after not in ids:
            return _not_found(f"No object found for 'after' cursor: {after}.", "after")
        data = data[ids.index(after) + 1 :]
    page = data[:limit]
    return (
        200,
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(data) > limit,
        },
        None,
    )


@dataclass
class FakeStoredCompletions:
    enabled: bool = False
    # id → (the chat.completion as stored, with `metadata`; its input messages), oldest first
    items: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = field(default_factory=dict)
    policy: Callable[[str, str, dict[str, str]], Any] | None = None  # → an Action or None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(
        self,
        messages: list[dict[str, Any]],
        reply: str | None,
        *,
        model: str = "gpt-4o",
        metadata: dict[str, str] | None = None,
        created: int | None = None,
        usage: dict[str, int] | None = None,
        completion_id: str | None = None,
        finish_reason: str = "stop",
    ) -> str:
        """Keep a completion as if a chat request with store=true had made it; its id. A
        reply of None is a tool call without text."""
        cid = completion_id or "chatcmpl-" + uuid.uuid4().hex[:24]
        prompt = sum(len(str(m.get("content")).split()) + 4 for m in messages)
        completion = len((reply or "").split())
        body = {
            "id": cid,
            "object": "chat.completion",
            "created": int(time.time()) if created is None else created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply, "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish_reason if reply is not None else "tool_calls",
                }
            ],
            "usage": usage
            or {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
            "metadata": dict(metadata or {}),
            "system_fingerprint": "fp_fake",
        }
        with self.lock:
            self.items[cid] = (body, [dict(m) for m in messages])
        return cid

    def keep(self, request: dict[str, Any], response: dict[str, Any]) -> None:
        """A chat request with store=true was answered: keep it."""
        if not self.enabled or request.get("store") is not True:
            return
        body = dict(response)
        body["metadata"] = dict(request.get("metadata") or {})
        with self.lock:
            self.items[body["id"]] = (body, [dict(m) for m in request.get("messages") or []])

    def route(self, method: str, path: str, query: dict[str, str], raw_query: str) -> Answer:
        """Answer a request under /v1/chat/completions other than POST (the chat itself)."""
        rest = [part for part in path[len("/v1/chat/completions") :].split("/") if part]
        with self.lock:
            if not rest and method == "GET":
                wanted = {
                    m.group(1): v
                    for k, v in urllib.parse.parse_qsl(raw_query, keep_blank_values=True)
                    if (m := re.fullmatch(r"metadata\[(.+)\]", k))
                }
                model = query.get("model")
                data = [
                    body
                    for body, _ in self.items.values()
                    if (not model or body["model"] == model)
                    and all(body["metadata"].get(k) == v for k, v in wanted.items())
                ]
                return _page(data, query)
            if not rest:
                return 405, {"message": f"Method {method} not allowed.", "code": None}, None
            stored = self.items.get(rest[0])
            if stored is None:
                return _not_found(
                    f"Chat completion with id '{rest[0]}' not found.", "completion_id"
                )
            body, messages = stored
            if len(rest) == 1 and method == "GET":
                return 200, body, None
            if len(rest) == 1 and method == "DELETE":
                del self.items[rest[0]]
                return (
                    200,
                    {"object": "chat.completion.deleted", "id": rest[0], "deleted": True},
                    None,
                )
            if rest[1:] == ["messages"] and method == "GET":
                listed = [
                    {
                        "id": f"{rest[0]}-{i}",
                        "role": m.get("role"),
                        "content": m.get("content") if isinstance(m.get("content"), str) else None,
                        "name": m.get("name"),
                        "content_parts": m.get("content")
                        if isinstance(m.get("content"), list)
                        else None,
                    }
                    for i, m in enumerate(messages)
                ]
                return _page(listed, query)
        return _not_found(f"Not found: {path}")
