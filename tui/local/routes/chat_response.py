"""From engine streams to OpenAI's chat completion responses: the `chat.completion` body, or
its server-sent `chat.completion.chunk`s, for one or several choices.

The choices of one request are read concurrently and their chunks go out as they come, each
tagged with its choice's `index` (OpenAI's streams interleave choices the same way). `usage`
counts the prompt once and the completion tokens of all choices together. A stored
completion (`store=true`) is saved, with all its choices, once every choice has finished,
and before a stream's `[DONE]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import string
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from tui.local.db import LocalDB
from tui.local.protocol import GenChunk
from tui.local.routes.stored_completions import StoredRequest, store_completion

log = logging.getLogger("distill.local.server")

SYSTEM_FINGERPRINT = "fp_distill_local"
_ID_CHARS = string.ascii_letters + string.digits
T = TypeVar("T")


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


@dataclass
class _Choice:
    parts: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, chunk: GenChunk) -> None:
        self.parts.append(chunk.text)
        if chunk.finish_reason is not None:
            self.finish_reason = chunk.finish_reason
            self.prompt_tokens = chunk.prompt_tokens
            self.completion_tokens = chunk.completion_tokens


@dataclass
class Completion:
    """One response being built: its id, the choices' text so far, what to store."""

    model: str
    n: int
    db: LocalDB
    stored: StoredRequest | None
    id: str = field(
        default_factory=lambda: "chatcmpl-" + "".join(secrets.choice(_ID_CHARS) for _ in range(29))
    )
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        self.choices = [_Choice() for _ in range(self.n)]

    def usage(self) -> dict[str, Any]:
        # The prompt is one prompt however many choices were sampled from it.
        prompt = max((c.prompt_tokens for c in self.choices), default=0)
        return usage(prompt, sum(c.completion_tokens for c in self.choices))

    def finish_reason(self, index: int) -> str:
        return self.choices[index].finish_reason or "stop"

    def body(self) -> dict[str, Any]:
        """OpenAI's chat.completion object."""
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": i,
                    "message": {
                        "role": "assistant",
                        "content": "".join(c.parts),
                        "refusal": None,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": self.finish_reason(i),
                }
                for i, c in enumerate(self.choices)
            ],
            "usage": self.usage(),
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }

    async def store(self) -> dict[str, Any]:
        """The finished body, saved first when the request asked for `store`."""
        body = self.body()
        if self.stored is not None:
            await store_completion(self.db, body, self.stored)
        return body


# ---- reading the engine's streams ---------------------------------------------------------------


async def next_chunk(stream: AsyncIterator[GenChunk]) -> GenChunk | None:
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return None


async def close_streams(streams: Sequence[AsyncIterator[GenChunk]]) -> None:
    """Close the engine's streams even while being cancelled: that frees their slots."""
    with anyio.CancelScope(shield=True):
        for stream in streams:
            closer = getattr(stream, "aclose", None)
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer()


async def _chunks_of_one(
    stream: AsyncIterator[GenChunk], first: GenChunk | None
) -> AsyncGenerator[tuple[int, GenChunk | None], None]:
    chunk = first
    while chunk is not None:
        yield 0, chunk
        if chunk.finish_reason is not None:
            break
        chunk = await next_chunk(stream)
    yield 0, None


async def merged_chunks(
    streams: Sequence[AsyncIterator[GenChunk]], first: GenChunk | None
) -> AsyncGenerator[tuple[int, GenChunk | None], None]:
    """(choice index, chunk) from every stream as chunks arrive, then (index, None) once
    that choice has ended. ``first`` is choice 0's first chunk, already read. An engine error
    in any choice is raised here. The streams are left open (callers close them)."""
    if len(streams) == 1:
        async for pair in _chunks_of_one(streams[0], first):
            yield pair
        return
    queue: asyncio.Queue[tuple[int, GenChunk | BaseException | None]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[GenChunk], head: GenChunk | None) -> None:
        try:
            chunk = head if head is not None else await next_chunk(stream)
            while chunk is not None:
                queue.put_nowait((index, chunk))
                if chunk.finish_reason is not None:
                    break
                chunk = await next_chunk(stream)
        except Exception as exc:
            queue.put_nowait((index, exc))
        finally:
            queue.put_nowait((index, None))

    tasks = [
        asyncio.ensure_future(pump(i, s, first if i == 0 else None)) for i, s in enumerate(streams)
    ]
    try:
        running = len(tasks)
        while running:
            index, item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            if item is None:
                running -= 1
            yield index, item
    finally:
        for task in tasks:
            task.cancel()


async def collect(
    completion: Completion, streams: Sequence[AsyncIterator[GenChunk]], first: GenChunk | None
) -> dict[str, Any]:
    """The whole chat.completion body (stored if asked)."""
    try:
        async with contextlib.aclosing(merged_chunks(streams, first)) as chunks:
            async for index, chunk in chunks:
                if chunk is not None:
                    completion.choices[index].add(chunk)
        return await completion.store()
    finally:
        await close_streams(streams)


async def stream_events(
    completion: Completion,
    streams: Sequence[AsyncIterator[GenChunk]],
    first: GenChunk | None,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    """The server-sent events of a streamed completion, ending with `data: [DONE]`."""

    def event(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
        payload: dict[str, Any] = {
            "id": completion.id,
            "object": "chat.completion.chunk",
            "created": completion.created,
            "model": completion.model,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
        }
        if include_usage:
            payload["usage"] = usage
        return b"data: " + json.dumps(payload).encode() + b"\n\n"

    def delta(index: int, d: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
        return [{"index": index, "delta": d, "logprobs": None, "finish_reason": finish}]

    try:
        for i in range(completion.n):
            yield event(delta(i, {"role": "assistant", "content": "", "refusal": None}))
        async with contextlib.aclosing(merged_chunks(streams, first)) as chunks:
            async for index, chunk in chunks:
                if chunk is None:
                    yield event(delta(index, {}, completion.finish_reason(index)))
                    continue
                completion.choices[index].add(chunk)
                if chunk.text:
                    yield event(delta(index, {"content": chunk.text}))
        # Stored before [DONE], so a client that lists right after the stream sees it.
        body = await completion.store()
        if include_usage:
            yield event([], body["usage"])
        yield b"data: [DONE]\n\n"
    except Exception as exc:
        # The 200 is already sent: report in-band, as OpenAI does; the SDK raises it.
        log.exception("generation failed mid-stream")
        error = {
            "error": {
                "message": f"The server had an error while generating: {exc}",
                "type": "server_error",
                "param": None,
                "code": None,
            }
        }
        yield b"data: " + json.dumps(error).encode() + b"\n\n"
    finally:
        await close_streams(streams)


# ---- responses that end when the client goes away ---------------------------------------------


class ClientGone(Exception):
    """The client went away before its answer began."""


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """`work`'s result, unless the client goes away first: then `work` is cancelled (and with
    it the generation it waits on) and ClientGone raised."""
    task: asyncio.Task[T] = asyncio.ensure_future(work)

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(watch())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    if task in done:
        return task.result()
    raise ClientGone


async def unless_disconnected(request: Request, work: Awaitable[dict[str, Any]]) -> Any:
    """Run `work`, but cancel it if the client goes away first (a non-streaming request that
    was abandoned must not keep its generation slot until the end)."""
    try:
        return await until_disconnected(request, work)
    except ClientGone:
        # Nobody is listening; this response goes nowhere.
        return JSONResponse({}, status_code=499)


class SSEResponse(StreamingResponse):
    """A server-sent-events response that closes its generator however the stream ends.

    Starlette's StreamingResponse leaves an abandoned generator to the garbage collector; here
    the generator (and with it the engine's slots) is closed as soon as the client disconnects
    or the send fails.
    """

    def __init__(self, events: AsyncIterator[bytes]) -> None:
        super().__init__(
            events,
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )
        self.events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )

        async def pump() -> None:
            async for data in self.events:
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def watch() -> None:
            while True:
                message: Message = await receive()
                if message["type"] == "http.disconnect":
                    return

        try:
            async with anyio.create_task_group() as tg:

                async def run(fn: Callable[[], Awaitable[None]]) -> None:
                    await fn()
                    tg.cancel_scope.cancel()

                tg.start_soon(run, pump)
                tg.start_soon(run, watch)
        except OSError:
            pass  # the client went away while we were sending
        finally:
            closer = getattr(self.events, "aclose", None)
            if closer is not None:
                with anyio.CancelScope(shield=True):
                    with contextlib.suppress(Exception):
                        await closer()
