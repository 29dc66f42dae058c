"""What the server asks of an engine, and what both engines (llama.cpp in models.py,
transformers in hf_engine.py) implement: the request and chunk types, the Engine protocol and
its errors. Neither engine module imports the other; both import this."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

END = object()  # a stream's queue gets this after its last chunk


@dataclass
class GenRequest:
    messages: list[dict[str, str]]  # role in {system,user,assistant}, content str
    max_tokens: int | None = None  # None -> up to the context
    temperature: float = 1.0  # OpenAI's default; 0 -> greedy
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)  # stop text is NOT included in the output
    seed: int | None = None


@dataclass
class GenChunk:
    text: str  # delta text (may be "")
    finish_reason: str | None = None  # "stop" | "length" on the last chunk
    prompt_tokens: int = 0  # filled on the last chunk
    completion_tokens: int = 0  # filled on the last chunk


class ChunkStream(AsyncIterator[GenChunk]):
    """A generation's chunks as an async iterator, fed through an asyncio queue by an
    engine's worker thread (GenChunks, an exception, then END). Leaving early (aclose(), or
    cancelling the task that awaits a chunk) calls `_cancel`, which each engine implements
    to free its decoding slot."""

    def __init__(self, error: BaseException | None = None) -> None:
        self._error = error  # refused before it started: raised on the first read
        self._finished = False

    def _chunks(self) -> asyncio.Queue[Any] | None:
        raise NotImplementedError

    def _cancel(self) -> None:
        raise NotImplementedError

    def __aiter__(self) -> ChunkStream:
        return self

    async def __anext__(self) -> GenChunk:
        if self._error is not None:
            error, self._error = self._error, None
            self._finished = True
            raise error
        queue = self._chunks()
        if self._finished or queue is None:
            raise StopAsyncIteration
        try:
            item = await queue.get()
        except BaseException:
            self._cancel()
            raise
        if item is END:
            self._finished = True
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._finished = True
            raise item
        return item  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        self._cancel()


class QueueFull(Exception):
    """More requests are waiting for this model than its queue allows (HTTP 429)."""


@runtime_checkable
class Engine(Protocol):
    model_id: str
    context_length: int

    def generate(self, req: GenRequest) -> AsyncIterator[GenChunk]:
        """Stream the completion. Closing the iterator early (aclose, or cancelling the task
        awaiting it) frees the slot. QueueFull / ValueError surface on the first ``__anext__``
        at the latest."""
        ...

    def generate_choices(self, req: GenRequest, n: int) -> Sequence[AsyncIterator[GenChunk]]:
        """``n`` samples of one prompt (OpenAI's ``n``), one stream per choice, the prompt
        evaluated once for all of them. Choice ``i`` samples with ``choice_seed(req.seed, i)``.
        The choices are admitted together or not at all: QueueFull / ValueError surface on
        the first ``__anext__`` of every stream. Each stream is closed on its own."""
        ...

    def count_tokens(self, messages: list[dict[str, str]]) -> int: ...

    async def aclose(self) -> None: ...


def choice_seed(seed: int | None, index: int) -> int | None:
    """The seed of choice ``index`` of a request seeded with ``seed``.

    Choice 0 keeps the request's seed, so ``n=1`` and the first of ``n`` choices agree; the
    others get seeds derived from (seed, index), so the choices differ from each other and
    a request repeated with the same seed repeats all of them. Unseeded stays unseeded (each
    choice draws its own random seed)."""
    if seed is None or index == 0:
        return seed
    digest = hashlib.blake2b(f"{seed}/{index}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big")


def choice_requests(req: GenRequest, n: int) -> list[GenRequest]:
    """The request of each of ``n`` choices: the same but for the seed."""
    return [replace(req, seed=choice_seed(req.seed, i)) for i in range(n)]
