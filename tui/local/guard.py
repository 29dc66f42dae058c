"""Auth and size limits in front of every route (pure ASGI: it must not buffer streamed
responses). Every request needs `Authorization: Bearer <key>`; a body over the route's limit
(JSON bodies `max_body_bytes`, uploads `max_upload_bytes`) is a 413 with OpenAI's JSON error.

A refused request is answered only once its body has been read and thrown away. An HTTP
client writes the whole body before it reads the answer (httpx and so the openai SDK do), and
a connection closed under a client still sending is reset: the client sees a connection
error instead of the 413 or 401. So the body is read to its end, however long that takes
while it keeps coming, and the connection stays open for the next request. Only a client that
stops sending for `IDLE_SECONDS`, or a stranger (wrong or no key) sending more than any
request may hold, has the connection closed on it. A client that asked `Expect:
100-continue` has sent nothing yet and will send nothing: it is answered at once."""

from __future__ import annotations

import hmac

import anyio
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tui.local.errors import error_response, is_upload, too_large

_NO_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)

# A refused body is given up on (and the connection closed) when nothing more of it arrives
# for this long. Not a limit on the whole body: under load a large body may take much longer
# to arrive, and giving up on it while it still comes is what reset the connection.
IDLE_SECONDS = 60.0


class BodyTooLarge(HTTPException):
    """A body sent without a length (chunked) went past the limit while the route read it;
    the app's HTTPException handler turns it into the 413 JSON error."""

    def __init__(self) -> None:
        super().__init__(status_code=413, detail="Content Too Large")


class Guard:
    """Checks the bearer token before anything else runs; refuses a declared Content-Length
    over the route's limit before the route reads any of it; stops a body sent without a
    length (chunked) at the limit. Every refusal is sent after the rest of the body."""

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
            await _refuse(scope, receive, send, error_response(401, _NO_KEY), self.max_upload)
            return
        if not hmac.compare_digest(auth.strip(), self.expected):
            # Never echo the key back, not even masked: it may be someone else's secret.
            refusal = error_response(401, "Incorrect API key provided.", code="invalid_api_key")
            await _refuse(scope, receive, send, refusal, self.max_upload)
            return
        limit = self.max_upload if is_upload(scope) else self.max_body
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _refuse(scope, receive, send, too_large(limit), None)
            return
        await self.app(scope, _Limited(receive, limit), send)


class _Limited:
    """The app's `receive`, counting body bytes: past `limit`, the rest of the body is read
    and thrown away, then BodyTooLarge is raised (and raised again if asked once more)."""

    def __init__(self, receive: Receive, limit: int) -> None:
        self.receive = receive
        self.limit = limit
        self.seen = 0
        self.over = False

    async def __call__(self) -> Message:
        if self.over:
            raise BodyTooLarge()
        message = await self.receive()
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            if self.seen > self.limit:
                self.over = True
                if message.get("more_body", False):
                    await _discard_body(self.receive, None)
                raise BodyTooLarge()
        return message


async def _discard_body(receive: Receive, cap: int | None) -> bool:
    """Read the rest of the request body and throw it away. True once it has all been read;
    False if the client went away, stopped sending for IDLE_SECONDS, or sent more than `cap`
    bytes (None: no cap)."""
    read = 0
    while True:
        message: Message | None = None
        with anyio.move_on_after(IDLE_SECONDS):
            message = await receive()
        if message is None or message["type"] != "http.request":
            return False  # idle, or gone
        read += len(message.get("body", b""))
        if not message.get("more_body", False):
            return True
        if cap is not None and read > cap:
            return False


async def _refuse(
    scope: Scope, receive: Receive, send: Send, response: JSONResponse, cap: int | None
) -> None:
    """Answer a request before its route runs: after the whole body, unless the client is
    waiting for a 100 Continue (it has not sent the body and, answered, will not)."""
    expect = dict(scope["headers"]).get(b"expect", b"").strip().lower()
    if expect != b"100-continue" and not await _discard_body(receive, cap):
        response.headers["connection"] = "close"
    await response(scope, receive, send)
