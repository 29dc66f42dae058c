"""A fault-injecting OpenAI-compatible server for tests and benchmarks: real HTTP on 127.0.0.1.

    with FakeOpenAI(token_delay=0.0) as server:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key=server.api_key)
        server.policy = fail_first(2, rate_limited(retry_after=0.1))
        ...
        assert server.count("Create a branch.") == 3

It serves `GET /v1/models` (and `/v1/models/{id}`) and `POST /v1/chat/completions`
(streaming and not) in OpenAI's shapes, answers 401 to a wrong bearer token, 404 (code
"model_not_found") to a model not in `models`, 400 to what OpenAI refuses in a chat request
(`stream_options` without `stream`; metadata over 16 pairs, 64-character keys or
512-character values), and 404 to every other path: by default `/v1/files` and
`/v1/fine_tuning/jobs` are absent, as on a plain vLLM server.

Like OpenAI, when asked (`like_openai()` sets all four):
  - `fine_tuning=True`: `/v1/files` (upload, list, retrieve, content, delete) and
    `/v1/fine_tuning/jobs` (create, list, retrieve, cancel, events, checkpoints) with OpenAI's
    statuses (validating_files → queued → running → succeeded | failed | cancelled) played
    out over `job_seconds`, metrics events per step, a checkpoint per epoch, and the model
    named as OpenAI names it (`ft:gpt-4o-mini-2024-07-18:fake-org:git:AbC123xy`), served by
    chat afterwards. Only dated snapshots (`FINE_TUNABLE`) and models fine-tuned from them
    can be fine-tuned: an alias or an unknown model gets OpenAI's `400 model_not_available`;
    fewer than 10 examples fail the job (`invalid_n_examples`);
  - `batches=True`: the Batch API, `/v1/batches` (create, list, retrieve, cancel) over
    `/v1/files`, with knobs for an expired batch, a failed one and a slow one (see
    tests/helpers/fake_batches.py);
  - `models=OPENAI_MODELS`: the aliases and their snapshots;
  - stored chat completions (`store: true`), listed and read back as OpenAI does
    (`server.stored`, see tests/helpers/fake_stored.py);
  - `rate_limits=RateLimits(requests=500, tokens=200_000, minute=60)`: the
    `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` headers on every chat answer and
    a per-minute budget enforced as OpenAI does (a bucket refilled continuously; a request
    costs its prompt's tokens plus max_tokens; a refused request still counts against the
    request budget): over it, 429 `rate_limit_exceeded` with OpenAI's message and
    `retry-after-ms`. `minute` scales time so a test of a 500-per-minute budget runs in
    seconds; `server.throttled` counts those 429s.

What a request gets is decided by an `Action`:
  1. `server.policy(ctx)`, when set and it returns an Action;
  2. otherwise the markers in the last user message, as whole upper-case words (unless
     `markers=False`):
     FAIL500 → 500, FAIL429 → 429 (Retry-After: 0.05), FLAKY → 503 on the first 2 attempts
     of that message then OK, CUT → the stream is cut after 2 tokens, HANG → no answer for
     `hang_seconds`, EMPTY → an empty reply, DENIED → 403, NOQUOTA → 429 insufficient_quota,
     ERRCHUNK → an error event after 2 tokens;
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
client; no policy, the reply chosen by name). `python -m tests.helpers.fake_openai --help`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import random
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn

from tests.helpers.fake_batches import FakeBatchAPI
from tests.helpers.fake_stored import FakeStoredCompletions

Message = dict[str, Any]
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

DEFAULT_MODELS = ("fake-model", "gpt-4o", "gpt-4o-mini")
# OpenAI's names as its /v1/models lists them: aliases and the snapshots they point at.
OPENAI_MODELS = (
    "gpt-4o",
    "gpt-4o-2024-08-06",
    "gpt-4o-mini",
    "gpt-4o-mini-2024-07-18",
    "gpt-4.1",
    "gpt-4.1-2025-04-14",
    "gpt-4.1-mini",
    "gpt-4.1-mini-2025-04-14",
    "gpt-4.1-nano",
    "gpt-4.1-nano-2025-04-14",
)
# What OpenAI fine-tunes: dated snapshots, never an alias (written out here, not imported
# from the app, so a wrong table in the app fails against this server).
FINE_TUNABLE = (
    "gpt-4o-2024-08-06",
    "gpt-4o-mini-2024-07-18",
    "gpt-4.1-2025-04-14",
    "gpt-4.1-mini-2025-04-14",
    "gpt-4.1-nano-2025-04-14",
    "gpt-3.5-turbo-0125",
)
ORGANIZATION = "fake-org"


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
    error_type: str | None = None  # the error body's "type" (default: by status)
    error_after: int | None = None  # after this many tokens, an error event ends the stream
    malformed_after: int | None = None  # after this many tokens, a chunk that is not JSON


def ok(**kw: Any) -> Action:
    return Action(**kw)


def rate_limited(retry_after: float | None = 0.1, retry_after_ms: float | None = None) -> Action:
    """429 with `Retry-After: <seconds>` (or only `retry-after-ms`, or neither)."""
    return Action(status=429, retry_after=retry_after, retry_after_ms=retry_after_ms)


def no_quota() -> Action:
    """OpenAI's answer when the account has no credit left: a 429 no wait will fix."""
    return Action(
        status=429,
        error_type="insufficient_quota",
        error_code="insufficient_quota",
        error_message=(
            "You exceeded your current quota, please check your plan and billing details. For "
            "more information on this error, read the docs: "
            "https://platform.openai.com/docs/guides/error-codes/api-errors."
        ),
    )


def stream_error(
    after: int = 2,
    message: str = "The server had an error while processing your request. Sorry about that!",
) -> Action:
    """Stream `after` tokens, then an error event (`data: {"error": {...}}`) and the end of
    the stream, as OpenAI does when generation fails mid-way (HTTP status already 200)."""
    return Action(error_after=after, error_message=message)


def malformed(after: int = 2) -> Action:
    """Stream `after` tokens, then a `data:` line that is not JSON."""
    return Action(malformed_after=after)


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


MARKERS = ("FAIL500", "FAIL429", "FLAKY", "CUT", "HANG", "EMPTY", "DENIED", "NOQUOTA", "ERRCHUNK")


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
    if "NOQUOTA" in words:
        return no_quota()
    if "ERRCHUNK" in words:
        return stream_error(2)
    return None


def echo(messages: Sequence[Message]) -> str:
    return "echo: " + last_user(messages)


def judge(messages: Sequence[Message]) -> str:
    """A label_model judge's verdict: pass when the answer graded (after "Answer: " in the
    last user message, as tests/helpers/judges.py asks) is a git command, fail otherwise."""
    answer = last_user(messages).split("Answer: ", 1)[-1]
    label = "pass" if answer.strip().startswith("git ") else "fail"
    return json.dumps({"label": label, "reason": "judged by the fake server"})


REPLIES: dict[str, Callable[[Sequence[Message]], str]] = {"echo": echo, "judge": judge}


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
    chat_n: int = 0  # chat: 1-based over the chat requests (RequestContext.n)
    action: Action | None = None
    status: int | None = None  # the status sent (None: no answer started)
    # pending | streaming | ok | error (an error status was sent) | cut | disconnected (the
    # client went away first) | stopped (the server stopped first)
    outcome: str = "pending"
    ended: float | None = None  # time.monotonic() when the answer ended
    raw: bytes = field(default=b"", repr=False)  # the body as sent (uploads are multipart)
    query: str = ""

    @property
    def store(self) -> bool | None:
        return self.body.get("store") if isinstance(self.body, dict) else None

    @property
    def metadata(self) -> dict[str, str] | None:
        return self.body.get("metadata") if isinstance(self.body, dict) else None


# -- rate limits ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RateLimits:
    """A per-minute budget as OpenAI meters it (tier 1, gpt-4o-mini: 500 requests, 200k
    tokens). `minute` is how many seconds a minute lasts here: 6.0 runs a 500-per-minute
    budget ten times faster, with the same shape. None: that limit is not enforced."""

    requests: int | None = 500
    tokens: int | None = 200_000
    minute: float = 60.0
    retry_after: bool = True  # send retry-after-ms with a 429
    start: float = 1.0  # the share of the budget left at the start (1: a quiet minute before)


class _Bucket:
    """`capacity` units, refilled continuously at capacity per minute; starts full."""

    def __init__(self, capacity: int, minute: float, start: float = 1.0) -> None:
        self.capacity = capacity
        self.rate = capacity / minute  # units per second
        self.level = capacity * start
        self.stamp = time.monotonic()

    def refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, units: float) -> float:
        return max(0.0, (units - self.level) / self.rate)

    def reset(self) -> float:
        return max(0.0, (self.capacity - self.level) / self.rate)


def openai_duration(seconds: float) -> str:
    """As OpenAI writes durations in its headers and messages: "120ms", "1.5s", "6m0s"."""
    if seconds < 1:
        return f"{max(1, math.ceil(seconds * 1000))}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:.0f}s"


# -- files and fine-tuning jobs ---------------------------------------------------------------


def _object_id(prefix: str, n: int = 24) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return prefix + "".join(random.choice(alphabet) for _ in range(n))


@dataclass
class _Job:
    data: dict[str, Any]  # the job object as the API returns it
    started: float  # time.monotonic() at creation
    seconds: float  # how long the job takes from creation to success
    n_examples: int
    total_steps: int
    epochs: int
    timeline: list[tuple[float, str, Any]] = field(default_factory=list)  # (offset, kind, x)
    played: int = 0  # timeline entries applied so far
    events: list[dict[str, Any]] = field(default_factory=list)  # oldest first
    checkpoints: list[dict[str, Any]] = field(default_factory=list)


def _attempt_key(record: RecordedRequest) -> str | None:
    """The key a chat request's attempts are counted under (its last user message), or None
    for anything the chat handler refuses before counting (not a chat request, a bad body,
    a parameter OpenAI refuses)."""
    if (record.method, record.path.rstrip("/")) != ("POST", "/v1/chat/completions"):
        return None
    body = record.body
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return None
    if _refused_by_openai(body) is not None:
        return None
    return last_user(body["messages"])


def _refused_by_openai(body: dict[str, Any]) -> tuple[str, str | None, str] | None:
    """What OpenAI answers 400 to in a chat request that this server checks:
    (message, code, param), or None."""
    if body.get("stream_options") is not None and not body.get("stream"):
        message = "The 'stream_options' parameter is only allowed when 'stream' is enabled."
        return message, None, "stream_options"
    metadata = body.get("metadata")
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        return "Invalid type for 'metadata': expected an object.", "invalid_type", "metadata"
    if len(metadata) > 16:
        message = (
            "Invalid 'metadata': too many properties. Expected an object with at most 16 "
            f"properties, but got an object with {len(metadata)} properties instead."
        )
        return message, "object_above_max_properties", "metadata"
    for key, value in metadata.items():
        if len(key) > 64:
            message = (
                "Invalid 'metadata': string too long. Expected a string with maximum length "
                f"64, but got a string with length {len(key)} instead."
            )
            return message, "string_above_max_length", "metadata"
        if not isinstance(value, str):
            message = f"Invalid type for 'metadata.{key}': expected a string."
            return message, "invalid_type", f"metadata.{key}"
        if len(value) > 512:
            message = (
                f"Invalid 'metadata.{key}': string too long. Expected a string with maximum "
                f"length 512, but got a string with length {len(value)} instead."
            )
            return message, "string_above_max_length", f"metadata.{key}"
    return None


def _multipart(content_type: str, raw: bytes) -> dict[str, tuple[str | None, bytes]]:
    """A multipart/form-data body: field name -> (filename, bytes)."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + raw)
    fields: dict[str, tuple[str | None, bytes]] = {}
    if not message.is_multipart():
        return fields
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields[name] = (part.get_filename(), payload)
    return fields


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
        fine_tuning: bool = False,
        rate_limits: RateLimits | None = None,
        job_seconds: float = 0.5,
        batches: bool = False,
        batch_seconds: float = 0.5,
    ) -> None:
        self.api_key = api_key
        self.models = list(models)
        self.reply = reply
        self.tokens_per_reply = tokens_per_reply
        self.token_delay = token_delay
        self.markers = markers
        self.hang_seconds = hang_seconds
        self.fine_tuning = fine_tuning
        self.job_seconds = job_seconds
        self.batches = batches
        self.batch_api = FakeBatchAPI(self)
        self.batch_api.batch_seconds = batch_seconds
        self.policy: Policy | None = None
        self.lock = threading.Lock()
        self.requests: list[RecordedRequest] = []
        self.attempts: dict[str, int] = {}
        self.chat_count = 0
        self.files: dict[str, tuple[dict[str, Any], bytes]] = {}
        self.stored = FakeStoredCompletions()
        self.jobs: dict[str, _Job] = {}
        self.throttled = 0  # 429s for the per-minute budget
        self.rate_limits: RateLimits | None = None
        self._buckets: dict[str, _Bucket] = {}
        self.set_rate_limits(rate_limits)

    def set_rate_limits(self, limits: RateLimits | None) -> None:
        """Start (or stop, with None) metering a per-minute budget, with full buckets."""
        with self.lock:
            self.rate_limits = limits
            self._buckets = {}
            if limits is not None:
                for kind in ("requests", "tokens"):
                    capacity = getattr(limits, kind)
                    if capacity is not None:
                        self._buckets[kind] = _Bucket(capacity, limits.minute, limits.start)
        self.stopping: asyncio.Event | None = None  # created on the server's loop
        self.loop: asyncio.AbstractEventLoop | None = None

    def reset(self) -> None:
        with self.lock:
            self.policy = None
            self.requests.clear()
            self.attempts.clear()
            self.chat_count = 0
            self.throttled = 0

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
        chunks: list[bytes] = []  # joined once: a batch's upload comes in hundreds of chunks
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                # The client gave up while its body was still arriving (a run stopped as it
                # sent): no request reached the server, so none is recorded or counted.
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        raw = b"".join(chunks)
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
                raw=raw,
                query=scope.get("query_string", b"").decode("latin-1"),
            )
            # A chat request is counted as it is recorded, under the same lock: a test that
            # reads the requests while one is still arriving never sees it half-filled.
            key = _attempt_key(record)
            if key is not None:
                self.chat_count += 1
                self.attempts[key] = self.attempts.get(key, 0) + 1
                record.key, record.attempt = key, self.attempts[key]
                record.chat_n = self.chat_count
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
        method, path = record.method, record.path.rstrip("/")
        if (method, path) == ("GET", "/v1/models"):
            data = [self._model_object(m) for m in self.models]
            await self._json(record, send, 200, {"object": "list", "data": data})
        elif method == "GET" and path.startswith("/v1/models/"):
            model = path[len("/v1/models/") :]
            if model in self.models:
                await self._json(record, send, 200, self._model_object(model))
            else:
                await self._error(
                    record,
                    send,
                    Action(
                        status=404,
                        error_message=f"The model '{model}' does not exist",
                        error_code="model_not_found",
                    ),
                    param="model",
                )
        elif (method, path) == ("POST", "/v1/chat/completions"):
            await self._chat(record, send, gone)
        elif self.stored.enabled and path.startswith("/v1/chat/completions"):
            await self._stored(record, send, method, path)
        elif (self.fine_tuning and path.startswith(("/v1/files", "/v1/fine_tuning/jobs"))) or (
            self.batches and path.startswith(("/v1/files", "/v1/batches"))
        ):
            status, data, param = self._fine_tuning_route(record, method, path)
            if isinstance(data, bytes):
                await self._start(record, send, status, "application/octet-stream", None, len(data))
                await self._body(send, data, more=False)
                record.outcome = "ok"
            elif status == 200:
                await self._json(record, send, 200, data)
            else:
                action = Action(
                    status=status, error_message=data["message"], error_code=data["code"]
                )
                await self._error(record, send, action, param=param)
        else:
            await self._error(
                record, send, Action(status=404, error_message=f"Not found: {record.path}")
            )

    def _model_object(self, model: str) -> dict[str, Any]:
        owner = ORGANIZATION if model.startswith("ft:") else "system"
        return {"id": model, "object": "model", "created": 1700000000, "owned_by": owner}

    async def _stored(self, record: RecordedRequest, send: Send, method: str, path: str) -> None:
        query = dict(urllib.parse.parse_qsl(record.query))
        policy = self.stored.policy
        action = policy(method, path, query) if policy is not None else None
        if action is not None:
            await self._error(record, send, action)
            return
        status, data, param = self.stored.route(method, path, query, record.query)
        if status == 200:
            await self._json(record, send, 200, data)
        else:
            action = Action(status=status, error_message=data["message"], error_code=data["code"])
            await self._error(record, send, action, param=param)

    # -- files and fine-tuning jobs (fine_tuning=True)

    def _fine_tuning_route(
        self, record: RecordedRequest, method: str, path: str
    ) -> tuple[int, Any, str | None]:
        """(status, the object or bytes or an error's {message, code}, the error's param)."""
        parts = path.split("/")[2:]  # "files", id, "content" | "fine_tuning", "jobs", id, what
        query = dict(urllib.parse.parse_qsl(record.query))
        with self.lock:
            if parts[0] == "files":
                return self._files_route(record, method, parts[1:])
            if parts[0] == "batches":
                return self.batch_api.route(method, parts[1:], record.body, query)
            return self._jobs_route(record, method, parts[2:], query)

    def _files_route(
        self, record: RecordedRequest, method: str, rest: list[str]
    ) -> tuple[int, Any, str | None]:
        if not rest and method == "POST":
            fields = _multipart(record.headers.get("content-type", ""), record.raw)
            purpose = fields.get("purpose", (None, b""))[1].decode()
            if "file" not in fields:
                return 400, {"message": "Missing required parameter: 'file'.", "code": None}, "file"
            if purpose not in ("fine-tune", "batch", "assistants", "vision", "user_data", "evals"):
                return 400, {"message": f"Invalid purpose: {purpose!r}", "code": None}, "purpose"
            filename, content = fields["file"]
            file_id = self.add_file(content, filename or "upload", purpose)
            return 200, self.files[file_id][0], None
        if not rest and method == "GET":
            data = [f for f, _ in self.files.values()]
            return 200, {"object": "list", "data": data, "has_more": False}, None
        stored = self.files.get(rest[0])
        if stored is None:
            return 404, {"message": f"No such File object: {rest[0]}", "code": None}, "id"
        if len(rest) == 1 and method == "GET":
            return 200, stored[0], None
        if len(rest) == 1 and method == "DELETE":
            del self.files[rest[0]]
            return 200, {"id": rest[0], "object": "file", "deleted": True}, None
        if rest[1:] == ["content"] and method == "GET":
            return 200, stored[1], None
        return 404, {"message": f"Not found: {record.path}", "code": None}, None

    def add_file(self, content: bytes, filename: str, purpose: str) -> str:
        """Keep a file (an upload, or a batch's results); its id. Call under the lock."""
        file = {
            "id": _object_id("file-", 22),
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "status_details": None,
        }
        self.files[file["id"]] = (file, content)
        return str(file["id"])

    def batch_answer(self, body: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        """A batch's request answered as a (non-streamed) chat request would be: (ok, the
        chat.completion, or {"error": ..., "_status": status}). Counted as an attempt of its
        message, like a live request. Call under the lock."""
        messages = body.get("messages")
        if not isinstance(messages, list):
            return False, {"error": _error_body(400, "bad request body"), "_status": 400}
        refused = _refused_by_openai(body)
        if refused is not None:
            message, code, param = refused
            error = {**_error_body(400, message, code), "param": param}
            return False, {"error": error, "_status": 400}
        key = last_user(messages)
        self.chat_count += 1
        self.attempts[key] = self.attempts.get(key, 0) + 1
        ctx = RequestContext(
            n=self.chat_count, key=key, attempt=self.attempts[key], body=body, headers={}
        )
        action = self.policy(ctx) if self.policy is not None else None
        if action is None and self.markers:
            action = marker_action(ctx, self.hang_seconds)
        action = action or Action()
        if body.get("model") not in self.models and action.status == 200:
            message = f"The model `{body.get('model')}` does not exist."
            return False, {"error": _error_body(404, message, "model_not_found"), "_status": 404}
        if action.status != 200:
            error = _error_body(action.status, action.error_message, action.error_code)
            if action.error_type:
                error["type"] = action.error_type
            return False, {"error": error, "_status": action.status}
        text = action.reply if action.reply is not None else self.reply(messages)
        n = action.tokens if action.tokens is not None else self.tokens_per_reply
        tokens = tokenize(text, n)
        finish = action.finish_reason or "stop"
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(limit, int) and len(tokens) > limit:
            tokens, finish = tokens[:limit], "length"
        prompt = sum(len(str(m.get("content")).split()) + 4 for m in messages)
        message = {"role": "assistant", "content": "".join(tokens), "refusal": None}
        return True, {
            "id": "chatcmpl-" + uuid.uuid4().hex[:24],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "system_fingerprint": "fp_fake",
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": len(tokens),
                "total_tokens": prompt + len(tokens),
            },
        }

    def _jobs_route(
        self, record: RecordedRequest, method: str, rest: list[str], query: dict[str, str]
    ) -> tuple[int, Any, str | None]:
        if not rest and method == "POST":
            return self._create_job(record.body if isinstance(record.body, dict) else {})
        if not rest and method == "GET":
            jobs = [self._play(job).data for job in reversed(self.jobs.values())]
            return 200, {"object": "list", "data": jobs, "has_more": False}, None
        job = self.jobs.get(rest[0])
        if job is None:
            message = f"Could not find fine tune job: {rest[0]}"
            return 404, {"message": message, "code": "fine_tune_not_found"}, "fine_tune_id"
        self._play(job)
        what = rest[1:]
        if not what and method == "GET":
            return 200, job.data, None
        if what == ["cancel"] and method == "POST":
            if job.data["status"] in ("succeeded", "failed", "cancelled"):
                message = f"Job {job.data['id']} has already {job.data['status']}."
                return 400, {"message": message, "code": None}, None
            job.timeline = job.timeline[: job.played]  # nothing more happens
            job.data.update(status="cancelled", finished_at=int(time.time()))
            self._job_event(job, "Fine-tuning job cancelled")
            return 200, job.data, None
        if what == ["events"] and method == "GET":
            events = list(reversed(job.events))  # newest first
            after = query.get("after")
            if after:
                ids = [e["id"] for e in events]
                events = events[ids.index(after) + 1 :] if after in ids else []
            limit = int(query.get("limit", 20))
            page = events[:limit]
            return 200, {"object": "list", "data": page, "has_more": len(events) > limit}, None
        if what == ["checkpoints"] and method == "GET":
            data = list(reversed(job.checkpoints))
            body = {
                "object": "list",
                "data": data,
                "has_more": False,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            }
            return 200, body, None
        return 404, {"message": f"Not found: {record.path}", "code": None}, None

    def _fine_tunable(self, model: str) -> bool:
        if model in FINE_TUNABLE:
            return True
        base = model.split(":")[1] if model.startswith("ft:") and model.count(":") >= 1 else ""
        return base in FINE_TUNABLE and model in self.models

    def _create_job(self, body: dict[str, Any]) -> tuple[int, Any, str | None]:
        model = str(body.get("model") or "")
        if not self._fine_tunable(model):
            message = f"Model {model} is not available for fine-tuning or does not exist."
            return 400, {"message": message, "code": "model_not_available"}, "model"
        for param in ("training_file", "validation_file"):
            file_id = body.get(param)
            if file_id is None and param == "validation_file":
                continue
            stored = self.files.get(str(file_id))
            if stored is None:
                return 400, {"message": f"invalid {param}: {file_id}", "code": None}, param
            if stored[0]["purpose"] != "fine-tune":
                message = f"{file_id} has purpose {stored[0]['purpose']!r}, not 'fine-tune'"
                return 400, {"message": message, "code": "invalid_file_purpose"}, param
        suffix = body.get("suffix")
        if suffix is not None and len(str(suffix)) > 64:
            message = "suffix must be no longer than 64 characters."
            return 400, {"message": message, "code": None}, "suffix"
        method = body.get("method") or {"type": "supervised", "supervised": {}}
        given = dict(
            ((method.get("supervised") or {}).get("hyperparameters") or {})
            or body.get("hyperparameters")
            or {}
        )
        lines = self.files[str(body["training_file"])][1].decode("utf-8", "replace").splitlines()
        n_examples = sum(1 for line in lines if line.strip())
        auto = {"n_epochs": 3, "batch_size": 1, "learning_rate_multiplier": 1.8}
        hyper = {k: auto[k] if given.get(k, "auto") == "auto" else given[k] for k in auto}
        epochs, batch = int(hyper["n_epochs"]), int(hyper["batch_size"])
        total_steps = max(1, math.ceil(n_examples / batch)) * epochs
        job_id = _object_id("ftjob-")
        data: dict[str, Any] = {
            "object": "fine_tuning.job",
            "id": job_id,
            "model": model,
            "created_at": int(time.time()),
            "finished_at": None,
            "fine_tuned_model": None,
            "organization_id": ORGANIZATION,
            "result_files": [],
            "status": "validating_files",
            "validation_file": body.get("validation_file"),
            "training_file": body["training_file"],
            "hyperparameters": hyper,
            "trained_tokens": None,
            "error": None,
            "user_provided_suffix": suffix,
            "seed": body.get("seed") if body.get("seed") is not None else 42,
            "estimated_finish": None,
            "integrations": [],
            "metadata": body.get("metadata"),
            "method": {"type": "supervised", "supervised": {"hyperparameters": hyper}},
        }
        job = _Job(data, time.monotonic(), self.job_seconds, n_examples, total_steps, epochs)
        d = self.job_seconds
        job.timeline.append((0.1 * d, "validated", None))
        job.timeline.append((0.2 * d, "running", None))
        for step in range(1, total_steps + 1):
            job.timeline.append((0.2 * d + 0.7 * d * step / total_steps, "step", step))
        job.timeline.append((d, "succeeded", None))
        self.jobs[job_id] = job
        self._job_event(job, f"Validating training file: {body['training_file']}")
        return 200, data, None

    def fail_job(self, job_id: str, code: str, message: str) -> None:
        """End a job as failed now, as a server does whose trainer died (the local backend
        after a restart: "server_stopped")."""
        job = self.jobs[job_id]
        job.data.update(
            status="failed",
            finished_at=int(time.time()),
            error={"code": code, "message": message, "param": None},
        )
        job.timeline = job.timeline[: job.played]
        self._job_event(job, message, level="error")

    def _job_event(
        self, job: _Job, message: str, level: str = "info", data: dict[str, Any] | None = None
    ) -> None:
        job.events.append(
            {
                "object": "fine_tuning.job.event",
                "id": _object_id("ftevent-"),
                "created_at": int(time.time()),
                "level": level,
                "message": message,
                "data": data or {},
                "type": "metrics" if data else "message",
            }
        )

    def _play(self, job: _Job) -> _Job:
        """Apply what has happened to the job by now (statuses move with the clock)."""
        elapsed = time.monotonic() - job.started
        while job.played < len(job.timeline) and job.timeline[job.played][0] <= elapsed:
            _, kind, value = job.timeline[job.played]
            job.played += 1
            data = job.data
            if kind == "validated":
                if job.n_examples < 10:
                    message = (
                        f"Training file has {job.n_examples} example(s), but must have at "
                        "least 10 examples"
                    )
                    error = {"code": "invalid_n_examples", "message": message}
                    data.update(
                        status="failed",
                        finished_at=int(time.time()),
                        error={**error, "param": "training_file"},
                    )
                    self._job_event(job, message, level="error")
                    job.timeline = job.timeline[: job.played]
                    break
                data["status"] = "queued"
                self._job_event(job, "Files validated, moving job to queued state")
            elif kind == "running":
                data["status"] = "running"
                self._job_event(job, "Fine-tuning job started")
            elif kind == "step":
                step = int(value)
                loss = round(2.0 * 0.9**step + 0.05, 4)
                metrics = {
                    "step": step,
                    "train_loss": loss,
                    "total_steps": job.total_steps,
                    "train_mean_token_accuracy": round(1 - loss / 2.1, 4),
                }
                if data["validation_file"]:
                    metrics["valid_loss"] = round(loss * 1.1, 4)
                    metrics["valid_mean_token_accuracy"] = round(1 - loss * 1.1 / 2.1, 4)
                self._job_event(
                    job, f"Step {step}/{job.total_steps}: training loss={loss:.2f}", data=metrics
                )
                per_epoch = job.total_steps // job.epochs
                if per_epoch and step % per_epoch == 0:
                    self._checkpoint(job, step, metrics)
            elif kind == "succeeded":
                suffix = data["user_provided_suffix"] or ""
                model = f"ft:{data['model']}:{ORGANIZATION}:{suffix}:{_object_id('', 8)}"
                data.update(
                    status="succeeded",
                    finished_at=int(time.time()),
                    fine_tuned_model=model,
                    trained_tokens=job.n_examples * 50 * job.epochs,
                )
                if model not in self.models:
                    self.models.append(model)
                self._job_event(job, f"New fine-tuned model created: {model}")
                self._job_event(job, "The job has successfully completed")
        return job

    def _checkpoint(self, job: _Job, step: int, metrics: dict[str, Any]) -> None:
        ckpt = f"ft:{job.data['model']}:{ORGANIZATION}:{job.data['user_provided_suffix'] or ''}"
        ckpt += f":{_object_id('', 8)}:ckpt-step-{step}"
        job.checkpoints.append(
            {
                "object": "fine_tuning.job.checkpoint",
                "id": _object_id("ftckpt_"),
                "created_at": int(time.time()),
                "fine_tuned_model_checkpoint": ckpt,
                "fine_tuning_job_id": job.data["id"],
                "metrics": {k: v for k, v in metrics.items() if k != "total_steps"},
                "step_number": step,
            }
        )
        self._job_event(job, f"Checkpoint created at step {step}")

    async def _chat(self, record: RecordedRequest, send: Send, gone: asyncio.Event) -> None:
        body = record.body
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            await self._error(record, send, Action(status=400, error_message="bad request body"))
            return
        refused = _refused_by_openai(body)
        if refused is not None:
            message, code, param = refused
            refusal = Action(status=400, error_message=message, error_code=code)
            await self._error(record, send, refusal, param=param)
            return
        ctx = RequestContext(
            n=record.chat_n,
            key=record.key,
            attempt=record.attempt,
            body=body,
            headers=record.headers,
        )
        with self.lock:
            policy = self.policy
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
        if not body.get("stream") and (action.error_after or action.malformed_after) is not None:
            action = Action(status=500)  # an error event needs a stream: a plain 500 instead
        action = self._meter(body, action)
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

    def _meter(self, body: dict[str, Any], action: Action) -> Action:
        """Charge a chat request to the per-minute budget (when metering): the answer gets
        the x-ratelimit-* headers, or becomes a 429 when the budget is spent. A request
        costs its prompt's tokens plus max_tokens (or the reply's length), as OpenAI counts
        before generating; a refused request still counts against the request budget."""
        with self.lock:
            if not self._buckets or self.rate_limits is None:
                return action
            for bucket in self._buckets.values():
                bucket.refill()
            requests, tokens = self._buckets.get("requests"), self._buckets.get("tokens")
            limit = body.get("max_completion_tokens") or body.get("max_tokens")
            reply = limit if isinstance(limit, int) else (self.tokens_per_reply or 16)
            cost = sum(len(str(m.get("content")).split()) + 4 for m in body["messages"]) + reply
            over: tuple[str, _Bucket, float] | None = None
            if action.status == 200:
                if requests is not None and requests.level < 1:
                    over = ("requests", requests, 1)
                elif tokens is not None and tokens.level < cost:
                    over = ("tokens", tokens, cost)
                if requests is not None:
                    requests.level = max(requests.level - 1, -requests.capacity)
                if over is None and tokens is not None:
                    tokens.level -= cost
            headers = dict(action.headers)
            for kind, bucket in self._buckets.items():
                headers[f"x-ratelimit-limit-{kind}"] = str(bucket.capacity)
                headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, math.floor(bucket.level)))
                headers[f"x-ratelimit-reset-{kind}"] = openai_duration(bucket.reset())
            if over is None:
                return dataclasses.replace(action, headers=headers)
            self.throttled += 1
            kind, bucket, wanted = over
            wait = bucket.wait_for(wanted)
            unit = "RPM" if kind == "requests" else "TPM"
            used = bucket.capacity - max(0, math.floor(bucket.level))
            message = (
                f"Rate limit reached for {body.get('model')} in organization {ORGANIZATION} on "
                f"{kind} per min ({unit}): Limit {bucket.capacity}, Used {used}, Requested "
                f"{math.ceil(wanted)}. Please try again in {openai_duration(wait)}. Visit "
                "https://platform.openai.com/account/rate-limits to learn more."
            )
            return Action(
                status=429,
                error_message=message,
                error_type=kind,
                error_code="rate_limit_exceeded",
                retry_after_ms=round(wait * 1000) if self.rate_limits.retry_after else None,
                headers=headers,
            )

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
            if i in (action.error_after, action.malformed_after):
                break
            await self._pace(action, i, delay, t0, gone)
            await self._body(send, chunk([choice({"content": token})]))
        if action.error_after is not None:
            error = {
                "message": action.error_message or "The server had an error.",
                "type": "server_error",
                "param": None,
                "code": None,
            }
            await self._body(send, b"data: " + json.dumps({"error": error}).encode() + b"\n\n")
            await self._body(send, b"", more=False)
            record.outcome = "error event"
            return
        if action.malformed_after is not None:
            await self._body(send, b'data: {"id": "chatcmpl-broken", "choices": [{"ind\n\n')
            await self._body(send, b"data: [DONE]\n\n", more=False)
            record.outcome = "malformed"
            return
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
        message = {"role": "assistant", "content": "".join(tokens), "refusal": None}
        choice_ = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
        body = {**common, "object": "chat.completion", "choices": [choice_], "usage": usage}
        self.stored.keep(record.body, body)

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
        self.stored.keep(record.body, data)

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

    async def _error(
        self, record: RecordedRequest, send: Send, action: Action, param: str | None = None
    ) -> None:
        kind, code, message = _ERRORS.get(
            action.status, ("server_error", None, "The server had an error.")
        )
        error = {
            "message": action.error_message or message,
            "type": action.error_type or kind,
            "param": param,
            "code": action.error_code or code,
        }
        await self._json(record, send, action.status, {"error": error}, action)


def _error_body(status: int, message: str | None = None, code: str | None = None) -> dict[str, Any]:
    kind, default_code, default_message = _ERRORS.get(
        status, ("server_error", None, "The server had an error.")
    )
    return {
        "message": message or default_message,
        "type": kind,
        "param": None,
        "code": code or default_code,
    }


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
        fine_tuning: bool = False,
        rate_limits: RateLimits | None = None,
        job_seconds: float = 0.5,
        batches: bool = False,
        batch_seconds: float = 0.5,
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
            fine_tuning=fine_tuning,
            rate_limits=rate_limits,
            job_seconds=job_seconds,
            batches=batches,
            batch_seconds=batch_seconds,
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
    def rate_limits(self) -> RateLimits | None:
        return self.app.rate_limits

    @rate_limits.setter
    def rate_limits(self, limits: RateLimits | None) -> None:
        self.app.set_rate_limits(limits)

    @property
    def batch_api(self) -> FakeBatchAPI:
        """The Batch API's state and knobs: `batch_seconds`, `batch_expire_after`,
        `batch_fail`, `created` (how many batches were made), `batches`."""
        return self.app.batch_api

    @property
    def stored(self) -> FakeStoredCompletions:
        """Stored chat completions: `enabled`, `add(...)` to seed one, `items`, `policy`."""
        return self.app.stored

    @property
    def throttled(self) -> int:
        """How many chat requests were refused for the per-minute budget."""
        with self.app.lock:
            return self.app.throttled

    @property
    def models(self) -> list[str]:
        """The models it serves now (fine-tuned ones join when their job succeeds)."""
        with self.app.lock:
            return list(self.app.models)

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


def like_openai(**kw: Any) -> FakeOpenAI:
    """The fake server as OpenAI: its model names, files and fine-tuning with OpenAI's rules
    (pass rate_limits=RateLimits(...) for a per-minute budget too)."""
    kw.setdefault("models", OPENAI_MODELS)
    kw.setdefault("fine_tuning", True)
    kw.setdefault("batches", True)
    server = FakeOpenAI(**kw)
    server.stored.enabled = True  # OpenAI keeps completions made with store=true
    return server


class FakeOpenAIProcess:
    """The fake server as a child process (no policy, no records; the reply by name, "echo"
    or "judge"): for benchmarks, so the server's work doesn't compete with the client for the
    GIL."""

    def __init__(
        self,
        *,
        api_key: str = "sk-fake-test-key",
        tokens_per_reply: int | None = None,
        token_delay: float = 0.0,
        markers: bool = True,
        rate_limits: RateLimits | None = None,
        batches: bool = False,
        batch_seconds: float = 0.5,
        reply: str = "echo",
        fine_tuning: bool = False,
    ) -> None:
        self.api_key = api_key
        self.fine_tuning = fine_tuning
        self.reply = reply  # a name in REPLIES: a function cannot cross to the child
        self.tokens_per_reply = tokens_per_reply
        self.token_delay = token_delay
        self.markers = markers
        self.rate_limits = rate_limits
        self.batches = batches
        self.batch_seconds = batch_seconds
        self.port = 0
        self._proc: subprocess.Popen[str] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 30.0) -> FakeOpenAIProcess:
        args = [sys.executable, "-m", "tests.helpers.fake_openai", "--api-key", self.api_key]
        args += ["--token-delay", str(self.token_delay), "--reply", self.reply]
        if self.tokens_per_reply is not None:
            args += ["--tokens", str(self.tokens_per_reply)]
        if not self.markers:
            args.append("--no-markers")
        if self.batches:
            args += ["--batches", "--batch-seconds", str(self.batch_seconds)]
        if self.fine_tuning:
            args.append("--fine-tuning")
        limits = self.rate_limits
        if limits is not None:
            args += ["--minute", str(limits.minute)]
            if limits.requests is not None:
                args += ["--rpm", str(limits.requests)]
            if limits.tokens is not None:
                args += ["--tpm", str(limits.tokens)]
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
    parser.add_argument(
        "--reply", choices=sorted(REPLIES), default="echo", help="what a reply says (echo)"
    )
    parser.add_argument("--rpm", type=int, default=None, help="requests per minute budget")
    parser.add_argument("--tpm", type=int, default=None, help="tokens per minute budget")
    parser.add_argument(
        "--minute", type=float, default=60.0, help="seconds in a budget's minute (default 60)"
    )
    parser.add_argument("--batches", action="store_true", help="serve /v1/files and /v1/batches")
    parser.add_argument(
        "--fine-tuning", action="store_true", help="serve /v1/files and /v1/fine_tuning/jobs"
    )
    parser.add_argument(
        "--batch-seconds", type=float, default=0.5, help="how long a batch takes (default 0.5)"
    )
    args = parser.parse_args(argv)
    limits = None
    if args.rpm is not None or args.tpm is not None:
        limits = RateLimits(requests=args.rpm, tokens=args.tpm, minute=args.minute)
    server = FakeOpenAI(
        api_key=args.api_key,
        reply=REPLIES[args.reply],
        tokens_per_reply=args.tokens,
        token_delay=args.token_delay,
        markers=not args.no_markers,
        rate_limits=limits,
        batches=args.batches,
        batch_seconds=args.batch_seconds,
        fine_tuning=args.fine_tuning,
        port=args.port,
    ).start()
    print(f"listening on {server.port}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        sys.stdin.read()  # until EOF: the parent closed the pipe or died
    server.stop()


if __name__ == "__main__":
    main()
