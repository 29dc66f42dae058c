"""Run a model over a dataset: concurrent streaming chat completions, each committed to the
workspace as it finishes, resumable, cancellable, with retries and a live cost.

One engine serves the Generate screen, `distill-tui run` and the tests. It reports progress
as plain dataclass events through a callback, and keeps running totals in `RunStats`, which
a screen can read at its own pace instead of repainting per token.

The configured concurrency is a ceiling: the in-flight count follows the backend's rate
limits (`ratelimit.AdaptiveLimit`: lowered as the x-ratelimit-* headers near zero or on a
429, raised back one per round trip), reported as `ConcurrencyChanged` and in
`RunStats.concurrency_limit`. What retrying cannot fix ends at once: an account with no quota
left stops the run; an error event or a malformed chunk inside a stream fails that item with
the server's message. Whether a failed request is sent again is decided in one place
(`retry.request_failure`), which the request synthesizer (synthetic.py) and the graders'
judge calls (graders.py) follow too; what a start of a run has to do (`open_run`) is read
the same way by the batch path (batch.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypeVar

import openai

from tui.engine.progress import Progress, Stoppable
from tui.engine.ratelimit import AdaptiveLimit
from tui.engine.retrieval import SimilarExamples
from tui.engine.retry import NO_QUOTA, StreamBroken, no_quota, request_failure, retry_after
from tui.engine.settings import Price
from tui.engine.store import Item, RunInfo, Store
from tui.engine.voting import rule, vote

# -- what a run is -----------------------------------------------------------------------


@dataclass
class SamplingParams:
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)

    def request_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {}
        if self.temperature is not None:
            args["temperature"] = self.temperature
        if self.top_p is not None:
            args["top_p"] = self.top_p
        if self.max_tokens is not None:
            args["max_tokens"] = self.max_tokens
        if self.seed is not None:
            args["seed"] = self.seed
        if self.stop:
            args["stop"] = list(self.stop)
        return args


@dataclass
class RunSpec:
    """A run = dataset (or a split, or a selection) × model × prompt × params × metadata."""

    dataset_id: int
    model: str
    role: str = ""  # "student" | "teacher" | "fine-tuned" | anything
    system_prompt: str = ""
    split: str | None = None  # "train" | "eval" | None for every item
    item_ids: list[int] | None = None
    params: SamplingParams = field(default_factory=SamplingParams)
    metadata: dict[str, str] = field(default_factory=dict)
    # Fixed example turns (request, answer) sent before each request, and/or the k most
    # similar train-split examples retrieved per request: context distillation for a teacher.
    few_shot: list[tuple[str, str]] = field(default_factory=list)
    retrieve_k: int = 0
    # Where retrieved examples come from: these items' (input, reference) pairs, e.g. the
    # recipe's labelled pool; None = every train-split item with a reference.
    retrieve_from: list[int] | None = None
    # Self-consistency: n samples per request (OpenAI's `n`), the label the one most of them
    # agree on under `vote` ("command_match" | "normalised"; tui/engine/voting.py).
    samples: int = 1
    vote: str = "normalised"
    name: str = ""


def create_run(store: Store, spec: RunSpec) -> int:
    params = {
        "sampling": asdict(spec.params),
        "few_shot": [list(pair) for pair in spec.few_shot],
        "retrieve_k": spec.retrieve_k,
    }
    if spec.retrieve_from is not None:
        params["retrieve_from"] = list(spec.retrieve_from)
    if spec.samples > 1:
        params["samples"] = spec.samples
        params["vote"] = spec.vote
    if spec.item_ids is not None:
        params["item_ids"] = list(spec.item_ids)
    return store.create_run(
        dataset_id=spec.dataset_id,
        model=spec.model,
        role=spec.role,
        split=spec.split or "",
        system_prompt=spec.system_prompt,
        params=params,
        metadata=spec.metadata,
        name=spec.name,
    )


def sampling_of(run: RunInfo) -> SamplingParams:
    return SamplingParams(**run.params.get("sampling", {}))


def chat_request(
    run: RunInfo,
    messages: list[dict[str, str]],
    sampling: SamplingParams,
    *,
    store_completions: bool,
) -> dict[str, Any]:
    """An item's chat completion request as every path sends it: a live one adds `stream`,
    a batch's line (batch.py) carries it as it is."""
    request: dict[str, Any] = {"model": run.model, "messages": messages}
    request.update(sampling.request_args())
    if store_completions:
        request["store"] = True
        if run.metadata:
            request["metadata"] = run.metadata
    n = int(run.params.get("samples", 1))
    if n > 1:
        request["n"] = n
    return request


def vote_samples(run: RunInfo, samples: list[str]) -> tuple[str, float]:
    """The answer most of an item's n samples agree on under the run's vote, and its share."""
    verdict = vote([s.strip() for s in samples], rule(str(run.params.get("vote"))))
    return verdict.answer, verdict.share


# -- events ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunStarted:
    run_id: int
    total: int  # items the run covers
    todo: int  # items this start will generate (the rest were done before)


@dataclass(frozen=True)
class ItemStarted:
    item_id: int
    attempt: int


@dataclass(frozen=True)
class ItemDelta:
    item_id: int
    text: str


@dataclass(frozen=True)
class ItemRetry:
    item_id: int
    attempt: int
    error: str
    delay: float


@dataclass(frozen=True)
class ItemFinished:
    item_id: int
    status: Literal["done", "failed", "cancelled"]
    output: str
    error: str | None
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_ms: float | None
    first_token_ms: float | None
    cost: float
    attempts: int = 1  # requests sent for this item (1 + its retries)


@dataclass(frozen=True)
class ConcurrencyChanged:
    """The in-flight limit moved: lowered as the backend's rate limits near or are hit,
    raised back slowly, never above the configured concurrency (`ceiling`). For the
    Generate screen's status line, e.g. "concurrency 12/64 (rate limited (429))"."""

    limit: int
    ceiling: int
    reason: str  # "the rate limit is near" | "rate limited (429)" | "recovering"


@dataclass(frozen=True)
class RunFinished:
    run_id: int
    status: str  # "done" | "cancelled" | "failed" | "budget"
    message: str


Event = (
    RunStarted
    | ItemStarted
    | ItemDelta
    | ItemRetry
    | ItemFinished
    | ConcurrencyChanged
    | RunFinished
)


@dataclass
class RunStats(Progress):
    """Running totals, updated in place; safe to read from the UI loop at any time."""

    done: int = 0
    failed: int = 0
    cancelled: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    concurrency_limit: int = 0  # requests allowed in flight now (≤ the configured concurrency)
    rate_limited: int = 0  # 429s for a rate limit so far

    @property
    def finished_items(self) -> int:
        return self.done + self.failed + self.cancelled

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.elapsed if self.elapsed > 0 else 0.0


StatsT = TypeVar("StatsT", bound=RunStats)


async def open_run(
    store: Store, run_id: int, stats: type[StatsT], *, held: int = 0
) -> tuple[RunInfo, list[Item], StatsT]:
    """What a start of the run has to do, the same for the live path (`Generator`) and the
    batch path (batch.BatchRunner): the run, its pending items, and fresh totals. `held`:
    items already sent that this start follows to the end (a batch's), counted as to do."""
    run = await store.in_thread(store.get_run, run_id)
    total = len(await store.in_thread(store.run_items, run_id))
    pending = await store.in_thread(store.pending_items, run_id)
    todo = len(pending) + held
    return run, pending, stats(total=total, todo=todo, done_before=max(0, total - todo))


# -- cost ----------------------------------------------------------------------------------


def cost_of(price: Price, prompt_tokens: int | None, completion_tokens: int | None) -> float:
    return ((prompt_tokens or 0) * price.input + (completion_tokens or 0) * price.output) / 1e6


def completion_outcome(
    item_id: int,
    status: Literal["done", "failed", "cancelled"],
    *,
    output: str,
    error: str | None,
    finish_reason: str | None,
    prompt_tokens: int | None,
    completion_tokens: int | None,
    remote_id: str | None,
    latency_ms: float | None,
    first_token_ms: float | None,
    price: Price,
    attempts: int = 1,
    confidence: float | None = None,
    samples: list[str] | None = None,
) -> tuple[dict[str, Any], ItemFinished]:
    """An item's outcome as every path records it (a live reply, a batch's result line): the
    completion's fields (for Store.save_completion) and the event; `samples` and their vote's
    `confidence` when the run sampled n > 1 times."""
    fields: dict[str, Any] = {
        "output": output,
        "status": status,
        "error": error,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "latency_ms": latency_ms,
        "first_token_ms": first_token_ms,
        "finish_reason": finish_reason,
        "remote_id": remote_id,
        "attempts": attempts,
    }
    if samples is not None:
        fields["confidence"] = confidence
        fields["samples"] = json.dumps(samples, ensure_ascii=False)
    finished = ItemFinished(
        item_id=item_id,
        status=status,
        output=output,
        error=error,
        finish_reason=finish_reason,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        latency_ms=latency_ms,
        first_token_ms=first_token_ms,
        cost=cost_of(price, prompt_tokens, completion_tokens),
        attempts=attempts,
    )
    return fields, finished


@dataclass(frozen=True)
class Estimate:
    items: int
    prompt_tokens: int
    completion_tokens: int  # of every sample: n samples a request cost n replies
    cost: float
    priced: bool  # False when the model has no price (local, unknown URL)
    samples: int = 1  # replies a request (OpenAI's `n`)


def estimate_run(store: Store, run_id: int, price: Price) -> Estimate:
    """Before (re)starting a run: what its pending items will cost (see `_estimate`)."""
    run = store.get_run(run_id)
    items = store.pending_items(run_id)
    samples = int(run.params.get("samples", 1))
    return _estimate(items, PromptBuilder.for_run(store, run), sampling_of(run), price, samples)


def estimate_spec(store: Store, spec: RunSpec, price: Price) -> Estimate:
    """The same estimate for a run not created yet (the Generate screen's form)."""
    if spec.item_ids is not None:
        wanted = set(spec.item_ids)
        items = [i for i in store.items(spec.dataset_id) if i.id in wanted]
    else:
        items = store.items(spec.dataset_id, split=spec.split or None)
    retriever = None
    if spec.retrieve_k > 0:
        if spec.retrieve_from is None:
            pool = store.items(spec.dataset_id, "train")
        else:
            wanted = set(spec.retrieve_from)
            pool = [i for i in store.items(spec.dataset_id) if i.id in wanted]
        retriever = SimilarExamples([(i.input, i.reference) for i in pool if i.reference])
    builder = PromptBuilder(spec.system_prompt, spec.few_shot, retriever, spec.retrieve_k)
    return _estimate(items, builder, spec.params, price, spec.samples)


def _estimate(
    items: Sequence[Item],
    builder: PromptBuilder,
    sampling: SamplingParams,
    price: Price,
    samples: int = 1,
) -> Estimate:
    """Tokens ≈ characters / 4; replies as long as the references (× 1.5), or max_tokens,
    or 256 when there are neither. With n samples a request, the prompt is billed once and
    the reply n times (OpenAI's `n`)."""
    prompt_chars = sum(
        sum(len(m["content"]) for m in builder.messages(item)) + 16 for item in items
    )
    refs = [len(item.reference) for item in items if item.reference]
    if refs:
        per_reply = int(sum(refs) / len(refs) / 4 * 1.5) + 4
        if sampling.max_tokens:
            per_reply = min(per_reply, sampling.max_tokens)
    else:
        per_reply = sampling.max_tokens or 256
    prompt_tokens = prompt_chars // 4
    samples = max(1, samples)
    completion_tokens = per_reply * len(items) * samples
    return Estimate(
        items=len(items),
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost=cost_of(price, prompt_tokens, completion_tokens),
        priced=bool(price.input or price.output),
        samples=samples,
    )


# -- prompts -------------------------------------------------------------------------------


class PromptBuilder:
    """The chat messages sent for an item: system, example turns, then the request."""

    def __init__(
        self,
        system_prompt: str,
        few_shot: Sequence[tuple[str, str]] = (),
        retriever: SimilarExamples | None = None,
        retrieve_k: int = 0,
    ) -> None:
        self.system_prompt = system_prompt
        self.few_shot = list(few_shot)
        self.retriever = retriever
        self.retrieve_k = retrieve_k

    @classmethod
    def for_run(cls, store: Store, run: RunInfo) -> PromptBuilder:
        few_shot = [(a, b) for a, b in run.params.get("few_shot", [])]
        k = int(run.params.get("retrieve_k", 0))
        retriever = None
        if k > 0 and run.dataset_id is not None:
            pool = run.params.get("retrieve_from")
            if pool is None:
                items = store.items(run.dataset_id, "train")
            else:
                wanted = set(pool)
                items = [i for i in store.items(run.dataset_id) if i.id in wanted]
            retriever = SimilarExamples([(i.input, i.reference) for i in items if i.reference])
        return cls(run.system_prompt, few_shot, retriever, k)

    def messages(self, item: Item) -> list[dict[str, str]]:
        messages: list[dict[str, str]] = []
        if self.system_prompt:
            messages.append({"role": "system", "content": self.system_prompt})
        examples = list(self.few_shot)
        if self.retriever is not None:
            # Most similar last, nearest the request; never the item's own answer.
            examples += reversed(
                self.retriever.top(item.input, self.retrieve_k, exclude=item.input)
            )
        for request, answer in examples:
            messages.append({"role": "user", "content": request})
            messages.append({"role": "assistant", "content": answer})
        messages.append({"role": "user", "content": item.input})
        return messages


# -- one streamed reply ---------------------------------------------------------------------


class StreamFailed(Exception):
    """The backend said inside the stream that the reply failed (an error event), or sent a
    chunk that is not JSON: this reply fails with that message, not retried."""


@dataclass
class StreamedReply:
    """What one streamed chat completion said, filled in as it arrives (a reply that broke
    off still holds what came)."""

    output: str = ""  # choice 0's text
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    first_token_ms: float | None = None
    remote_id: str | None = None


async def stream_chat(
    client: openai.AsyncOpenAI,
    request: dict[str, Any],
    reply: StreamedReply,
    *,
    started: float,
    on_text: Callable[[str], None] | None = None,
    on_headers: Callable[[Any], None] | None = None,
) -> list[str]:
    """Send `request` (a chat completion with `stream: True`) and read the reply into `reply`;
    `on_text` gets choice 0's text as it arrives, `on_headers` the response's headers (rate
    limits). Returns the other choices' texts (n > 1), by index.

    Raises the SDK's errors for the request itself, `StreamBroken` when the reply broke off
    (worth retrying) and `StreamFailed` when the backend said mid-stream that it failed. Used
    by every streamed request: a run's items here, synthetic requests (synthetic.py)."""
    # The SSE lines are parsed with json.loads rather than into the SDK's chunk models:
    # building a model per chunk costs ~30x more CPU, which at 64 concurrent streams is
    # most of a core and shows as UI lag. Errors still come as the SDK's exceptions.
    streaming: Any = client.chat.completions.with_streaming_response
    parts: list[str] = []  # choice 0, the one shown as it streams
    others: dict[int, list[str]] = {}  # the other samples, when n > 1
    try:
        async with streaming.create(**request) as response:
            if on_headers is not None:
                on_headers(response.headers)
            async for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                try:
                    chunk = json.loads(data)
                except ValueError:
                    chunk = None
                if not isinstance(chunk, dict):
                    raise StreamFailed(f"the backend sent a malformed stream chunk: {data[:200]!r}")
                if chunk.get("error") and not chunk.get("choices"):
                    error = chunk["error"]
                    message = error.get("message") if isinstance(error, dict) else error
                    raise StreamFailed(f"the backend reported an error mid-stream: {message}")
                reply.remote_id = reply.remote_id or chunk.get("id")
                usage = chunk.get("usage")
                if usage:
                    reply.prompt_tokens = usage.get("prompt_tokens")
                    reply.completion_tokens = usage.get("completion_tokens")
                for choice in chunk.get("choices") or ():
                    text = (choice.get("delta") or {}).get("content")
                    index = choice.get("index") or 0
                    if index:
                        others.setdefault(index, []).append(text or "")
                        continue
                    if text:
                        if reply.first_token_ms is None:
                            reply.first_token_ms = (time.monotonic() - started) * 1000
                        parts.append(text)
                        if on_text is not None:
                            on_text(text)
                    if choice.get("finish_reason"):
                        reply.finish_reason = choice["finish_reason"]
    except openai.APITimeoutError:
        raise
    except openai.APIConnectionError as error:
        # A connection dropped after the reply began: say what it means for this reply.
        raise StreamBroken(f"the stream broke mid-way ({error.__cause__ or error})") from error
    except (openai.APIError, asyncio.CancelledError, StreamBroken, StreamFailed):
        raise
    except Exception as error:  # the transport failed mid-stream (httpx2 errors and kin)
        # Raw reads raise the HTTP library's own errors (the SDK wraps only the request).
        if any("Timeout" in cls.__name__ for cls in type(error).__mro__):
            raise StreamBroken("timed out waiting for the backend") from error
        raise StreamBroken(f"the stream broke mid-way ({error or type(error).__name__})") from error
    finally:
        reply.output = "".join(parts)
    if reply.finish_reason is None:
        raise StreamBroken("the stream ended before the reply was complete")
    return ["".join(others[i]) for i in sorted(others)]


# -- the engine ----------------------------------------------------------------------------


@dataclass
class _Attempt(StreamedReply):
    sent: float = 0.0  # when the request took its slot (AdaptiveLimit's clock)
    confidence: float | None = None  # the vote share, when n > 1 samples were voted on
    samples: list[str] | None = None


class Generator(Stoppable):
    """Generates a run's missing completions. `run()` returns when every item has finished,
    the run was cancelled, the budget was reached, or the backend refused the run."""

    def __init__(
        self,
        store: Store,
        client: openai.AsyncOpenAI,
        *,
        concurrency: int = 8,
        max_retries: int = 5,
        price: Price | None = None,
        budget: float | None = None,
        store_completions: bool = False,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
    ) -> None:
        if not 1 <= concurrency <= 256:
            raise ValueError("concurrency must be between 1 and 256")
        self.store = store
        # Retries are ours (with Retry-After, jitter and a per-item record), not the SDK's.
        self.client = client.with_options(max_retries=0)
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.price = price or Price()
        self.budget = budget
        self.store_completions = store_completions
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.stats = RunStats()
        self.limit = AdaptiveLimit(concurrency)
        self._init_stop()
        self._recorded: set[int] = set()
        self._claims: set[int] = set()  # items this generator claimed (Store.claim_item)

    def cancel(self) -> None:
        """Stop promptly: nothing new starts, in-flight items are recorded as cancelled."""
        self._stop("cancelled", "cancelled by the user")

    async def run(
        self, run_id: int, on_event: Callable[[Event], None] | None = None
    ) -> RunFinished:
        with self.store.generating(run_id):
            return await self._run(run_id, on_event)

    async def _run(self, run_id: int, on_event: Callable[[Event], None] | None) -> RunFinished:
        emit = on_event or (lambda event: None)
        store = self.store
        run, pending, self.stats = await open_run(store, run_id, RunStats)
        builder = await store.in_thread(PromptBuilder.for_run, store, run)
        self.stats.concurrency_limit = self.concurrency

        def limit_changed(limit: int, reason: str) -> None:
            self.stats.concurrency_limit = limit
            emit(ConcurrencyChanged(limit, self.concurrency, reason))

        self.limit = AdaptiveLimit(self.concurrency, on_change=limit_changed)
        await store.in_thread(store.set_run_status, run_id, "running")
        emit(RunStarted(run_id, self.stats.total, self.stats.todo))

        queue: asyncio.Queue[Item] = asyncio.Queue()
        for item in pending:
            queue.put_nowait(item)
        sampling = sampling_of(run)
        workers = [
            asyncio.create_task(self._worker(run, queue, builder, sampling, emit))
            for _ in range(min(self.concurrency, len(pending)) or 0)
        ]
        try:
            await asyncio.gather(*workers, return_exceptions=True)
        except asyncio.CancelledError:
            self._stop("cancelled", "cancelled")
            await asyncio.gather(*workers, return_exceptions=True)
            raise
        finally:
            self.stats.finished = time.monotonic()
            # Claims with no outcome recorded (an unexpected error) go back: pending again.
            unrecorded = self._claims - self._recorded
            self._claims = set()
            if unrecorded:
                await store.in_thread(store.release_claims, run_id, unrecorded)
            status, message = self._final_status()
            await store.in_thread(store.set_run_status, run_id, status, finished=True)
            finished = RunFinished(run_id, status, message)
            emit(finished)
        return finished

    async def _claim(self, run_id: int, item_id: int) -> bool:
        """Claim the item before sending its request (Store.claim_item: atomic across
        processes). A claim that completes while we are being cancelled is given back."""
        store = self.store
        claim = asyncio.ensure_future(store.in_thread(store.claim_item, run_id, item_id))
        try:
            won = await asyncio.shield(claim)
        except asyncio.CancelledError:

            def give_back(done: asyncio.Future[bool]) -> None:
                if not done.cancelled() and done.exception() is None and done.result():
                    store.release_claims(run_id, [item_id])

            claim.add_done_callback(give_back)
            raise
        if won:
            self._claims.add(item_id)
        return won

    def _final_status(self) -> tuple[str, str]:
        s = self.stats
        if self._stop_reason is not None:
            return self._stop_reason
        if s.failed:
            return "done", f"{s.done} done, {s.failed} failed"
        return "done", f"{s.done + s.done_before} done"

    async def _worker(
        self,
        run: RunInfo,
        queue: asyncio.Queue[Item],
        builder: PromptBuilder,
        sampling: SamplingParams,
        emit: Callable[[Event], None],
    ) -> None:
        while not self._cancel.is_set():
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            task = asyncio.create_task(self._item(run, item, builder, sampling, emit))
            self._tasks.add(task)
            try:
                await task
            except asyncio.CancelledError:
                # An item cancelled by _stop() ends that item only; but when this worker is
                # the one being cancelled (the run's task was cancelled from outside, as a
                # UI does when it closes), it must stop, not take the next item.
                current = asyncio.current_task()
                if not task.cancelled() or (current is not None and current.cancelling()):
                    raise
            finally:
                self._tasks.discard(task)

    async def _item(
        self,
        run: RunInfo,
        item: Item,
        builder: PromptBuilder,
        sampling: SamplingParams,
        emit: Callable[[Event], None],
    ) -> None:
        stats = self.stats
        messages = builder.messages(item)
        started = time.monotonic()
        attempt_no = 0
        sent = 0  # requests that reached the backend (attempt_no counts those waiting too)
        self._recorded.discard(item.id)
        if not await self._claim(run.id, item.id):
            # Done, or being generated by another generator, since this start listed it.
            stats.todo -= 1
            return
        try:
            while True:
                attempt_no += 1
                attempt = _Attempt()
                try:
                    async with self._slot(attempt):
                        sent += 1
                        emit(ItemStarted(item.id, attempt_no))
                        started = time.monotonic()
                        await self._stream(run, messages, sampling, attempt, item.id, started, emit)
                except StreamFailed as error:
                    await self._record(
                        run, item, "failed", attempt, started, str(error), emit, sent
                    )
                    return
                except (openai.APIStatusError, openai.APIConnectionError, StreamBroken) as error:
                    failure = request_failure(
                        error,
                        attempt_no,
                        model=run.model,
                        max_retries=self.max_retries,
                        backoff_base=self.backoff_base,
                        backoff_cap=self.backoff_cap,
                    )
                    if failure.kind == "retry":
                        stats.retries += 1
                        emit(ItemRetry(item.id, attempt_no, failure.message, failure.delay))
                        await asyncio.sleep(failure.delay)
                        continue
                    await self._record(
                        run, item, "failed", attempt, started, failure.message, emit, sent
                    )
                    if failure.kind == "no quota":
                        # Stop before every item burns its retries on the same answer.
                        self._stop("failed", f"stopped: {NO_QUOTA}; add credit and resume")
                    elif failure.fatal:
                        self._stop("failed", failure.message)
                    return
                self.limit.succeeded(
                    (attempt.prompt_tokens or 0)
                    + (sampling.max_tokens or attempt.completion_tokens or 0)
                )
                await self._record(run, item, "done", attempt, started, None, emit, sent)
                return
        except asyncio.CancelledError:
            if item.id not in self._recorded:
                # Written synchronously: the task is being torn down and must not await.
                fields, finished = self._finish(
                    item, "cancelled", _Attempt(), started, "cancelled", sent
                )
                self._recorded.add(item.id)
                self._count(finished)
                emit(finished)
                self.store.save_completion(run.id, item.id, **fields)
            raise

    @contextlib.asynccontextmanager
    async def _slot(self, attempt: _Attempt) -> AsyncIterator[None]:
        """One request in flight: waits for the rate-limit-aware limit to allow it, and tells
        the limit what the backend said about its budget (headers, 429s)."""
        attempt.sent = await self.limit.acquire()
        self.stats.in_flight += 1
        try:
            yield
        except openai.APIStatusError as error:
            if isinstance(error, openai.RateLimitError) and not no_quota(error):
                self.stats.rate_limited += 1
                self.limit.throttled(attempt.sent, retry_after(error), error.response.headers)
            self.limit.observe(error.response.headers, attempt.sent)
            raise
        finally:
            self.stats.in_flight -= 1
            self.limit.release()

    async def _stream(
        self,
        run: RunInfo,
        messages: list[dict[str, str]],
        sampling: SamplingParams,
        attempt: _Attempt,
        item_id: int,
        started: float,
        emit: Callable[[Event], None],
    ) -> None:
        request = chat_request(run, messages, sampling, store_completions=self.store_completions)
        request.update(stream=True, stream_options={"include_usage": True})
        n = int(run.params.get("samples", 1))
        others = await stream_chat(
            self.client,
            request,
            attempt,
            started=started,
            on_text=lambda text: emit(ItemDelta(item_id, text)),
            on_headers=lambda headers: self.limit.observe(headers, attempt.sent),
        )
        if n > 1:
            # A backend without `n` answers once: the vote is then over that one sample.
            attempt.samples = [attempt.output, *others]
            attempt.output, attempt.confidence = vote_samples(run, attempt.samples)

    async def _record(
        self,
        run: RunInfo,
        item: Item,
        status: Literal["done", "failed", "cancelled"],
        attempt: _Attempt,
        started: float,
        error: str | None,
        emit: Callable[[Event], None],
        attempts: int,
    ) -> None:
        fields, finished = self._finish(item, status, attempt, started, error, attempts)
        # The outcome is decided here: a cancel arriving during the write must not turn a
        # finished item into a cancelled one, nor lose the write.
        self._recorded.add(item.id)
        self._count(finished)
        emit(finished)
        await asyncio.shield(
            self.store.in_thread(self.store.save_completion, run.id, item.id, **fields)
        )

    def _finish(
        self,
        item: Item,
        status: Literal["done", "failed", "cancelled"],
        attempt: _Attempt,
        started: float,
        error: str | None,
        attempts: int,
    ) -> tuple[dict[str, Any], ItemFinished]:
        """The completion's row and event; `attempts` = the requests this start sent for it
        (added to those of earlier starts when a failed item is generated again)."""
        return completion_outcome(
            item.id,
            status,
            output=attempt.output,
            error=error,
            finish_reason=attempt.finish_reason,
            prompt_tokens=attempt.prompt_tokens,
            completion_tokens=attempt.completion_tokens,
            remote_id=attempt.remote_id,
            latency_ms=(time.monotonic() - started) * 1000,
            first_token_ms=attempt.first_token_ms,
            price=self.price,
            attempts=attempts,
            confidence=attempt.confidence,
            samples=attempt.samples,
        )

    def _count(self, finished: ItemFinished) -> None:
        stats = self.stats
        if finished.status == "done":
            stats.done += 1
        elif finished.status == "failed":
            stats.failed += 1
        else:
            stats.cancelled += 1
        stats.prompt_tokens += finished.prompt_tokens or 0
        stats.completion_tokens += finished.completion_tokens or 0
        stats.cost += finished.cost
        if self.budget is not None and stats.cost >= self.budget:
            self._stop("budget", f"stopped: the budget of ${self.budget:.2f} was reached")
