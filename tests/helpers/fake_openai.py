"""A fault-injecting OpenAI-compatible server for tests and benchmarks: real HTTP on 127.0.0.1.

    with FakeOpenAI(token_delay=0.0) as server:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key=server.api_key)
        server.policy = fail_first(2, rate_limited(retry_after=0.1))
        ...
        assert server.count("Create a branch.") == 3

It serves `GET /v1/models` and `POST /v1/chat/completions` (streaming and not) in OpenAI's
shapes, answers 401 to a wrong bearer token, 404 (code "model_not_found") to a model not in
`models`, and 404 to every other path (so `/v1/files` and `/v1/fine_tuning/jobs` are absent,
as on a plain vLLM server).

What a request gets is decided by an `Action`:
  1. `server.policy(ctx)`, when set and it returns an Action;
  2. otherwise the markers in the last user message, as whole upper-case words (unless
     `markers=False`):
     FAIL500 → 500, FAIL429 → 429 (Retry-After: 0.05), FLAKY → 503 on the first 2 attempts
     of that message then OK, CUT → the stream is cut after 2 tokens, HANG → no answer for
     `hang_seconds`, EMPTY → an empty reply, DENIED → 403;
  3. otherwise a normal reply.
The reply is `reply(messages)` (default: "echo: " + the last user message), made exactly
`tokens_per_reply` word-tokens long when that is set, streamed one token per chunk with
`token_delay` seconds between tokens (on a fixed schedule, so late wake-ups don't add up); a
request's `max_tokens` cuts it (finish_reason "length"). Non-streaming replies take the same
time as streamed ones.

Every request is recorded in `server.requests` (body, arrival and end times, outcome);
attempts are counted per distinct last user message (`server.count(text)`).

The server runs uvicorn in a background thread with its own event loop (`FakeOpenAI`), or as
a child process (`FakeOpenAIProcess`, for benchmarks that must not share the GIL with the
client; default behaviour only, no policy). `python -m tests.helpers.fake_openai --help`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn

Message = dict[str, Any]
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

DEFAULT_MODELS = ("fake-model", "gpt-4o", "gpt-4o-mini")


# -- what to do with a request ---------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    """How the server answers one chat request. The default is a normal, complete reply."""

    status: int = 200  # anything but 200 answers an OpenAI-shaped error instead of a reply
    error_message: str | None = None
    error_code: str | None = None
    retry_after: float | None = None  # seconds, sent as `Retry-After` (with status 429/503)
    retry_after_ms: float | None = None  # sent as `retry-after-ms` (OpenAI's own header)
    headers: dict[str, str] = field(default_factory=dict)
    hang: float = 0.0  # wait this long before answering at all (no headers yet)
    first_token_delay: float = 0.0  # after the headers (and the role chunk), before token 1
    token_delay: float | None = None  # between tokens; None = the server's token_delay
    stall_after: int | None = None  # after this many tokens, pause `stall` seconds
    stall: float = 0.0
    cut_after: int | None = None  # drop the connection after this many tokens: no finish
    reply: str | None = None  # this text instead of reply(messages)
    tokens: int | None = None  # this many tokens instead of tokens_per_reply
    finish_reason: str | None = None  # force it ("length", "content_filter"...)


def ok(**kw: Any) -> Action:
    return Action(**kw)


def rate_limited(retry_after: float | None = 0.1, retry_after_ms: float | None = None) -> Action:
    """429 with `Retry-After: <seconds>` (or only `retry-after-ms`, or neither)."""
    return Action(status=429, retry_after=retry_after, retry_after_ms=retry_after_ms)


def server_error(status: int = 500, retry_after: float | None = None) -> Action:
    return Action(status=status, retry_after=retry_after)


def unauthorized() -> Action:
    return Action(status=401)


def forbidden() -> Action:
    return Action(status=403)


def cut(after: int = 2) -> Action:
    """Stream `after` tokens (at most the reply's), then drop the connection: no finish chunk,
    no usage, no [DONE]. A non-streaming answer is cut half-way through its JSON body."""
    return Action(cut_after=after)


def hang(seconds: float = 60.0) -> Action:
    """Say nothing for `seconds` (ends early when the client goes away or the server stops)."""
    return Action(hang=seconds)


def stall(after: int, seconds: float) -> Action:
    """Stream `after` tokens, then go silent for `seconds` mid-stream, then finish."""
    return Action(stall_after=after, stall=seconds)


def slow(first_token: float = 0.0, per_token: float | None = None) -> Action:
    return Action(first_token_delay=first_token, token_delay=per_token)


def empty() -> Action:
    return Action(reply="", tokens=0)


def truncated(tokens: int = 3) -> Action:
    """A reply cut by max_tokens: `tokens` tokens, finish_reason "length"."""
    return Action(tokens=tokens, finish_reason="length")


@dataclass(frozen=True)
class RequestContext:
    """What a policy sees about a chat request."""

    n: int  # 1-based, over every chat request this server got
    key: str  # the last user message: requests with the same key are attempts of one item
    attempt: int  # 1-based, per key
    body: dict[str, Any]
    headers: dict[str, str]

    @property
    def messages(self) -> list[Message]:
        return list(self.body.get("messages") or [])

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))


Policy = Callable[[RequestContext], Action | None]


def fail_first(n: int, action: Action, *, per_key: bool = True) -> Policy:
    """`action` for the first n attempts of each distinct message (or the first n requests of
    the server with per_key=False); then no opinion (markers or a normal reply)."""

    def policy(ctx: RequestContext) -> Action | None:
        return action if (ctx.attempt if per_key else ctx.n) <= n else None

    return policy


def when(text: str, action: Action) -> Policy:
    """`action` for every request whose last user message contains `text`."""
    return lambda ctx: action if text in ctx.key else None


def first_of(*policies: Policy) -> Policy:
    """The first policy with an opinion decides."""

    def policy(ctx: RequestContext) -> Action | None:
        for p in policies:
            action = p(ctx)
            if action is not None:
                return action
        return None

    return policy


MARKERS = ("FAIL500", "FAIL429", "FLAKY", "CUT", "HANG", "EMPTY", "DENIED")


def marker_action(ctx: RequestContext, hang_seconds: float) -> Action | None:
    """The markers, as whole upper-case words ("CHANGELOG.md" doesn't hang)."""
    words = set(re.findall(r"\b[A-Z0-9]+\b", ctx.key)) & set(MARKERS)
    if "FAIL500" in words:
        return server_error(500)
    if "FAIL429" in words:
        return rate_limited(0.05)
    if "FLAKY" in words and ctx.attempt <= 2:
        return server_error(503)
    if "CUT" in words:
        return cut(2)
    if "HANG" in words:
        return hang(hang_seconds)
    if "EMPTY" in words:
        return empty()
    if "DENIED" in words:
        return forbidden()
    return None


def echo(messages: Sequence[Message]) -> str:
    return "echo: " + last_user(messages)


def last_user(messages: Sequence[Message]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):  # content parts
                return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


def tokenize(text: str, n: int | None = None) -> list[str]:
    """Word tokens whose concatenation is the text; with n, exactly n of them (the words
    repeated or cut)."""
    if n is None:
        tokens = re.findall(r"\s*\S+", text)
        tail = text[len("".join(tokens)) :]
        if tokens and tail:
            tokens[-1] += tail
        return tokens
    words = text.split() or ["token"]
    return [("" if i == 0 else " ") + words[i % len(words)] for i in range(n)]


# -- what was received -----------------------------------------------------------------------


@dataclass
class RecordedRequest:
    n: int  # 1-based over every request (chat or not)
    method: str
    path: str
    body: Any  # the parsed JSON body (None when there was none or it wasn't JSON)
    headers: dict[str, str]
    time: float  # time.monotonic() when it arrived
    key: str = ""  # chat: the last user message
    attempt: int = 0  # chat: attempt number for that key
    action: Action | None = None
    status: int | None = None  # the status sent (None: no answer started)
    # pending | streaming | ok | error (an error status was sent) | cut | disconnected (the
    # client went away first) | stopped (the server stopped first)
    outcome: str = "pending"
    ended: float | None = None  # time.monotonic() when the answer ended

    @property
    def store(self) -> bool | None:
        return self.body.get("store") if isinstance(self.body, dict) else None

    @property
    def metadata(self) -> dict[str, str] | None:
        return self.body.get("metadata") if isinstance(self.body, dict) else None


# -- the ASGI app ----------------------------------------------------------------------------


class _Gone(Exception):
    """The client went away or the server is stopping."""


class FakeOpenAIApp:
    """The ASGI application; its state is read by tests from another thread (under `lock`)."""

    def __init__(
        self,
        *,
        api_key: str,
        models: Sequence[str] = DEFAULT_MODELS,
        reply: Callable[[Sequence[Message]], str] = echo,
        tokens_per_reply: int | None = None,
        token_delay: float = 0.0,
        markers: bool = True,
        hang_seconds: float = 60.0,
    ) -> None:
        self.api_key = api_key
        self.models = list(models)
        self.reply = reply
        self.tokens_per_reply = tokens_per_reply
        self.token_delay = token_delay
        self.markers = markers
        self.hang_seconds = hang_seconds
        self.policy: Policy | None = None
        self.lock = threading.Lock()
        self.requests: list[RecordedRequest] = []
        self.attempts: dict[str, int] = {}
        self.chat_count = 0
        self.stopping: asyncio.Event | None = None  # created on the server's loop
        self.loop: asyncio.AbstractEventLoop | None = None

    def reset(self) -> None:
        with self.lock:
            self.policy = None
            self.requests.clear()
            self.attempts.clear()
            self.chat_count = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.stopping = asyncio.Event()
                    self.loop = asyncio.get_running_loop()
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        with self.lock:
            record = RecordedRequest(
                n=len(self.requests) + 1,
                method=scope["method"],
                path=scope["path"],
                body=body,
                headers=headers,
                time=time.monotonic(),
            )
            self.requests.append(record)
        gone = asyncio.Event()
        watcher = asyncio.ensure_future(self._watch(receive, gone))
        try:
            await self._dispatch(record, send, gone)
        except _Gone:
            if not self._stopping():
                record.outcome = "disconnected"
            elif record.status is None:
                await self._error(record, send, Action(status=503, error_message="Shutting down."))
                record.outcome = "stopped"
            else:
                record.outcome = "stopped"  # mid-answer: the connection is dropped
        finally:
            watcher.cancel()
            record.ended = time.monotonic()

    def _stopping(self) -> bool:
        return self.stopping is not None and self.stopping.is_set()

    async def _watch(self, receive: Receive, gone: asyncio.Event) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()

    async def _sleep(self, seconds: float, gone: asyncio.Event) -> None:
        """Sleep, unless the client goes away or the server stops first (→ _Gone)."""
        if seconds <= 0:
            if gone.is_set() or self._stopping():
                raise _Gone
            return
        waits = [asyncio.ensure_future(gone.wait())]
        if self.stopping is not None:
            waits.append(asyncio.ensure_future(self.stopping.wait()))
        done, pending = await asyncio.wait(
            waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED
        )
        for task in pending:
            task.cancel()
        if done:
            raise _Gone

    async def _dispatch(self, record: RecordedRequest, send: Send, gone: asyncio.Event) -> None:
        auth = record.headers.get("authorization", "")
        if not secrets.compare_digest(auth.encode(), f"Bearer {self.api_key}".encode()):
            await self._error(record, send, Action(status=401))
            return
        route = (record.method, record.path.rstrip("/"))
        if route == ("GET", "/v1/models"):
            data = [
                {"id": m, "object": "model", "created": 1700000000, "owned_by": "fake"}
                for m in self.models
            ]
            await self._json(record, send, 200, {"object": "list", "data": data})
        elif route == ("POST", "/v1/chat/completions"):
            await self._chat(record, send, gone)
        else:
            await self._error(
                record, send, Action(status=404, error_message=f"Not found: {record.path}")
            )

    async def _chat(self, record: RecordedRequest, send: Send, gone: asyncio.Event) -> None:
        body = record.body
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            await self._error(record, send, Action(status=400, error_message="bad request body"))
            return
        key = last_user(body["messages"])
        with self.lock:
            self.chat_count += 1
            self.attempts[key] = self.attempts.get(key, 0) + 1
            ctx = RequestContext(
                n=self.chat_count,
                key=key,
                attempt=self.attempts[key],
                body=body,
                headers=record.headers,
            )
            policy = self.policy
        record.key, record.attempt = key, ctx.attempt
        action = policy(ctx) if policy is not None else None
        if action is None and self.markers:
            action = marker_action(ctx, self.hang_seconds)
        action = action or Action()
        if body.get("model") not in self.models and action.status == 200:
            action = Action(
                status=404,
                error_message=f"The model `{body.get('model')}` does not exist.",
                error_code="model_not_found",
            )
        record.action = action
        await self._sleep(action.hang, gone)
        if action.status != 200:
            await self._error(record, send, action)
            return

        text = action.reply if action.reply is not None else self.reply(body["messages"])
        n = action.tokens if action.tokens is not None else self.tokens_per_reply
        tokens = tokenize(text, n)
        finish = action.finish_reason or "stop"
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(limit, int) and len(tokens) > limit:
            tokens, finish = tokens[:limit], "length"
        usage = {
            "prompt_tokens": sum(len(str(m.get("content")).split()) + 4 for m in body["messages"]),
            "completion_tokens": len(tokens),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        common = {
            "id": "chatcmpl-" + uuid.uuid4().hex[:24],
            "created": int(time.time()),
            "model": body["model"],
            "system_fingerprint": "fp_fake",
        }
        delay = self.token_delay if action.token_delay is None else action.token_delay
        if body.get("stream"):
            await self._stream(record, send, gone, action, common, tokens, finish, usage, delay)
        else:
            await self._complete(record, send, gone, action, common, tokens, finish, usage, delay)

    async def _pace(
        self, action: Action, i: int, delay: float, t0: float, gone: asyncio.Event
    ) -> None:
        """Wait until token i (0-based) is due. Tokens are due on a fixed schedule from t0,
        so a late wake-up doesn't push every later token back: a reply of n tokens takes
        first_token_delay + (n - 1) × delay (+ stall), however busy the machine."""
        due = t0 + action.first_token_delay + i * delay
        if action.stall_after is not None and i >= action.stall_after:
            due += action.stall
        await self._sleep(due - asyncio.get_running_loop().time(), gone)

    async def _stream(
        self,
        record: RecordedRequest,
        send: Send,
        gone: asyncio.Event,
        action: Action,
        common: dict[str, Any],
        tokens: list[str],
        finish: str,
        usage: dict[str, int],
        delay: float,
    ) -> None:
        include_usage = bool((record.body.get("stream_options") or {}).get("include_usage"))

        def chunk(choices: list[dict[str, Any]], with_usage: dict[str, int] | None = None) -> bytes:
            data: dict[str, Any] = {**common, "object": "chat.completion.chunk", "choices": choices}
            if include_usage:
                data["usage"] = with_usage
            return b"data: " + json.dumps(data).encode() + b"\n\n"

        def choice(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

        await self._start(record, send, 200, "text/event-stream", action)
        record.outcome = "streaming"
        t0 = asyncio.get_running_loop().time()
        await self._body(
            send, chunk([choice({"role": "assistant", "content": "", "refusal": None})])
        )
        for i, token in enumerate(tokens):
            if action.cut_after is not None and i >= action.cut_after:
                break
            await self._pace(action, i, delay, t0, gone)
            await self._body(send, chunk([choice({"content": token})]))
        if action.cut_after is not None:
            # Return without finishing the chunked body: uvicorn drops the connection.
            record.outcome = "cut"
            return
        if not tokens:
            await self._pace(action, 0, delay, t0, gone)
        await self._body(send, chunk([choice({}, finish)]))
        if include_usage:
            await self._body(send, chunk([], usage))
        await self._body(send, b"data: [DONE]\n\n", more=False)
        record.outcome = "ok"

    async def _complete(
        self,
        record: RecordedRequest,
        send: Send,
        gone: asyncio.Event,
        action: Action,
        common: dict[str, Any],
        tokens: list[str],
        finish: str,
        usage: dict[str, int],
        delay: float,
    ) -> None:
        # The time a model would take to write the reply, as when streamed.
        await self._pace(
            action, max(len(tokens) - 1, 0), delay, asyncio.get_running_loop().time(), gone
        )
        message = {"role": "assistant", "content": "".join(tokens), "refusal": None}
        data = {
            **common,
            "object": "chat.completion",
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            ],
            "usage": usage,
        }
        payload = json.dumps(data).encode()
        if action.cut_after is not None:
            await self._start(record, send, 200, "application/json", action, len(payload))
            await self._body(send, payload[: len(payload) // 2])
            record.outcome = "cut"
            return
        await self._json(record, send, 200, data, action)
        record.outcome = "ok"

    # -- HTTP plumbing

    async def _start(
        self,
        record: RecordedRequest,
        send: Send,
        status: int,
        content_type: str,
        action: Action | None = None,
        length: int | None = None,
    ) -> None:
        headers = [(b"content-type", content_type.encode())]
        if length is not None:
            headers.append((b"content-length", str(length).encode()))
        if action is not None:
            if action.retry_after is not None:
                headers.append((b"retry-after", f"{action.retry_after:g}".encode()))
            if action.retry_after_ms is not None:
                headers.append((b"retry-after-ms", f"{action.retry_after_ms:g}".encode()))
            headers += [(k.lower().encode(), v.encode()) for k, v in action.headers.items()]
        headers.append((b"x-request-id", f"req_{record.n}".encode()))
        record.status = status
        await send({"type": "http.response.start", "status": status, "headers": headers})

    async def _body(self, send: Send, data: bytes, more: bool = True) -> None:
        await send({"type": "http.response.body", "body": data, "more_body": more})

    async def _json(
        self,
        record: RecordedRequest,
        send: Send,
        status: int,
        data: Any,
        action: Action | None = None,
    ) -> None:
        payload = json.dumps(data).encode()
        await self._start(record, send, status, "application/json", action, len(payload))
        await self._body(send, payload, more=False)
        record.outcome = "ok" if status == 200 else "error"

    async def _error(self, record: RecordedRequest, send: Send, action: Action) -> None:
        kind, code, message = _ERRORS.get(
            action.status, ("server_error", None, "The server had an error.")
        )
        error = {
            "message": action.error_message or message,
            "type": kind,
            "param": None,
            "code": action.error_code or code,
        }
        await self._json(record, send, action.status, {"error": error}, action)


_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Forbidden."),
    404: ("invalid_request_error", None, "Not found."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached. Please try again later."),
    500: ("server_error", None, "The server had an error while processing your request."),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}


class _QuietCuts(logging.Filter):
    """Cutting a stream is the point here, not an error worth a log line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "without completing response" not in record.getMessage()


# -- running it ------------------------------------------------------------------------------


class FakeOpenAI:
    """The fake server in a background thread. Use as a (sync or async) context manager, or
    call start()/stop(). Attributes a test reads: base_url, api_key, requests, policy."""

    def __init__(
        self,
        *,
        api_key: str = "sk-fake-test-key",
        models: Sequence[str] = DEFAULT_MODELS,
        reply: Callable[[Sequence[Message]], str] = echo,
        tokens_per_reply: int | None = None,
        token_delay: float = 0.0,
        markers: bool = True,
        hang_seconds: float = 60.0,
        port: int = 0,
    ) -> None:
        self.app = FakeOpenAIApp(
            api_key=api_key,
            models=models,
            reply=reply,
            tokens_per_reply=tokens_per_reply,
            token_delay=token_delay,
            markers=markers,
            hang_seconds=hang_seconds,
        )
        self._port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    # configuration and records, through the app

    @property
    def api_key(self) -> str:
        return self.app.api_key

    @property
    def policy(self) -> Policy | None:
        return self.app.policy

    @policy.setter
    def policy(self, policy: Policy | None) -> None:
        self.app.policy = policy

    @property
    def token_delay(self) -> float:
        return self.app.token_delay

    @token_delay.setter
    def token_delay(self, seconds: float) -> None:
        self.app.token_delay = seconds

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request so far (a copy), in arrival order."""
        with self.app.lock:
            return list(self.app.requests)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.rstrip("/") == "/v1/chat/completions"]

    def for_key(self, text: str) -> list[RecordedRequest]:
        """The chat requests whose last user message is `text`, in arrival order."""
        return [r for r in self.chat_requests if r.key == text]

    def count(self, text: str) -> int:
        """How many chat requests had `text` as their last user message."""
        with self.app.lock:
            return self.app.attempts.get(text, 0)

    def duplicates(self) -> list[str]:
        """Messages that were requested again after a request for them had succeeded."""
        seen_ok: set[str] = set()
        dups: list[str] = []
        for r in self.chat_requests:
            if r.key in seen_ok and r.key not in dups:
                dups.append(r.key)
            if r.outcome == "ok" and r.status == 200:
                seen_ok.add(r.key)
        return dups

    def reset(self) -> None:
        """Forget requests, counts and the policy (for a server shared between tests)."""
        self.app.reset()

    @property
    def port(self) -> int:
        if self._sock is None:
            raise RuntimeError("the server is not running")
        return int(self._sock.getsockname()[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 30.0) -> FakeOpenAI:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._port))
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="fake-openai", daemon=True
        )
        logging.getLogger("uvicorn.error").addFilter(_QuietCuts())
        self._sock, self._server, self._thread = sock, server, thread
        thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the fake OpenAI server failed to start")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the fake OpenAI server did not start within {timeout} s")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        loop = self.app.loop
        if self.app.stopping is not None and loop is not None:
            # Wake hanging and slow answers so shutdown doesn't wait for them.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self.app.stopping.set)
        server.should_exit = True
        thread.join(timeout=30)
        if self._sock is not None:
            self._sock.close()
        self._server = self._thread = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> FakeOpenAI:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)


class FakeOpenAIProcess:
    """The fake server as a child process (default behaviour; no policy, no records): for
    benchmarks, so the server's work doesn't compete with the client for the GIL."""

    def __init__(
        self,
        *,
        api_key: str = "sk-fake-test-key",
        tokens_per_reply: int | None = None,
        token_delay: float = 0.0,
        markers: bool = True,
    ) -> None:
        self.api_key = api_key
        self.tokens_per_reply = tokens_per_reply
        self.token_delay = token_delay
        self.markers = markers
        self.port = 0
        self._proc: subprocess.Popen[str] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 30.0) -> FakeOpenAIProcess:
        args = [sys.executable, "-m", "tests.helpers.fake_openai", "--api-key", self.api_key]
        args += ["--token-delay", str(self.token_delay)]
        if self.tokens_per_reply is not None:
            args += ["--tokens", str(self.tokens_per_reply)]
        if not self.markers:
            args.append("--no-markers")
        root = Path(__file__).resolve().parents[2]
        # stdin is a pipe the child reads until EOF: it exits when this process does, even
        # killed, so no orphan server outlives a benchmark.
        proc = subprocess.Popen(
            args, cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self._proc = proc
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "listening on PORT", printed once it answers
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"the fake OpenAI server process did not start: {line!r}")
        self.port = int(line.split()[-1])
        return self

    def stop(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()  # EOF: the child stops its server and exits
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()
        self._proc = None

    def __enter__(self) -> FakeOpenAIProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A fake OpenAI-compatible server.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default="sk-fake-test-key")
    parser.add_argument("--tokens", type=int, default=None, help="tokens per reply")
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds between tokens")
    parser.add_argument("--no-markers", action="store_true", help="ignore FAIL500, HANG...")
    args = parser.parse_args(argv)
    server = FakeOpenAI(
        api_key=args.api_key,
        tokens_per_reply=args.tokens,
        token_delay=args.token_delay,
        markers=not args.no_markers,
        port=args.port,
    ).start()
    print(f"listening on {server.port}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        sys.stdin.read()  # until EOF: the parent closed the pipe or died
    server.stop()


if __name__ == "__main__":
    main()
