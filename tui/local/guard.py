"""Auth and size limits in front of every route (pure ASGI: it must not buffer streamed
responses). Every request needs `Authorization: Bearer <key>`; a declared Content-Length over
the route's limit (JSON bodies `max_body_bytes`, uploads `max_upload_bytes`) is a 413 before
the body is read."""

from __future__ import annotations

import hmac

import anyio
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from tui.local.config import MiB
from tui.local.errors import error_response, is_upload, too_large

_NO_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)

# How much of a refused body we read and throw away so that the client, still sending, sees
# our answer instead of a reset connection. Beyond that the connection is simply closed.
_DRAIN_LIMIT = 64 * MiB


class Guard:
    """Checks the bearer token before anything else runs, and refuses a declared
    Content-Length over the route's limit before reading the body. Bodies without a length
    (chunked) are cut off while being read by FastAPI's own `max_body_size`."""

    def __init__(self, app: ASGIApp, api_key: str, max_body: int, max_upload: int) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()
        self.max_body = max_body
        self.max_upload = max_upload

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        auth = headers.get(b"authorization")
        if auth is None or not auth.strip():
            await _send_early(scope, receive, send, error_response(401, _NO_KEY))
            return
        if not hmac.compare_digest(auth.strip(), self.expected):
            # Never echo the key back, not even masked: it may be someone else's secret.
            refusal = error_response(401, "Incorrect API key provided.", code="invalid_api_key")
            await _send_early(scope, receive, send, refusal)
            return
        limit = self.max_upload if is_upload(scope) else self.max_body
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _send_early(scope, receive, send, too_large(limit))
            return
        await self.app(scope, receive, send)


async def _send_early(scope: Scope, receive: Receive, send: Send, response: JSONResponse) -> None:
    headers = dict(scope["headers"])
    declared = headers.get(b"content-length", b"0")
    if declared.isdigit() and 0 < int(declared) <= _DRAIN_LIMIT:
        with anyio.move_on_after(5):
            more = True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    break
                more = message.get("more_body", False)
    response.headers["connection"] = "close"
    await response(scope, receive, send)
