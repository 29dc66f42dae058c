"""Batch generation: a run sent through a Batch API (OpenAI's `/v1/batches`, which the local
backend implements too) instead of one live request per item: half the price on OpenAI, the
answers within a 24-hour window.

The run's pending items become JSONL lines, `{"custom_id": <item id>, "method": "POST",
"url": "/v1/chat/completions", "body": <the request the live path sends, without stream>}`
(generation.chat_request builds both), split into files within the API's limits. Each file
is uploaded (`files.create(purpose="batch")`), recorded in the workspace with the items it
holds, and made a batch (`batches.create(endpoint=…, completion_window="24h", metadata)`)
whose id is recorded the moment it returns, like a fine-tuning job's. Then every batch is
polled, the interval growing from `poll_interval` to `max_poll_interval` (errors back off
the same way), and when one ends its output and error files are downloaded and mapped back
to its items: done, or failed with the backend's error. Items a batch never answered (it
expired, was cancelled or failed) are failed with the reason and stay pending, so resuming
the run (live or as a new batch) sends exactly them.

Restarts: `BatchRunner.run` first resumes the run's batches that are not yet collected (a
batch whose create may or may not have reached the backend is looked up by its input file
before anything is sent again), and only then sends the pending items no batch holds. No
item is ever in two batches at once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import openai

from tui.engine.generation import (
    Estimate,
    ItemFinished,
    PromptBuilder,
    RunFinished,
    RunStarted,
    RunStats,
    SamplingParams,
    chat_request,
    completion_outcome,
    cost_of,
    estimate_run,
    open_run,
    sampling_of,
    vote_samples,
)
from tui.engine.progress import Stoppable
from tui.engine.redact import redact_url
from tui.engine.retry import describe
from tui.engine.settings import Price
from tui.engine.store import BatchInfo, Item, RunInfo, Store

ENDPOINT: Final = "/v1/chat/completions"
# The only completion window OpenAI offers (platform.openai.com/docs/guides/batch).
COMPLETION_WINDOW: Final = "24h"
# OpenAI's limits on one batch (platform.openai.com/docs/guides/batch, "Rate limits"): its
# input file holds at most 50,000 requests and is at most 200 MB. Bigger runs are split.
MAX_REQUESTS = 50_000
MAX_FILE_BYTES = 200 * 1000 * 1000
# OpenAI's batch statuses: validating → in_progress → finalizing → completed, or failed
# (the file was refused), expired (the window ended first), cancelling → cancelled.
TERMINAL = ("completed", "failed", "expired", "cancelled")
# A batch whose `batches.create` broke off before its id came back is looked for among
# this many of the backend's newest batches (by its input file) before it is created again.
LOOKUP_PAGES = 5


class BatchError(RuntimeError):
    """The run cannot go as a batch; the message says why and what to do."""


def batch_price(price: Price, discount: float) -> Price:
    """What a model costs through the Batch API: the live price less `discount` (OpenAI's
    batches are half price: settings.batch_discount = 0.5)."""
    factor = 1.0 - discount
    return Price(input=price.input * factor, output=price.output * factor, training=price.training)


def batch_estimate(estimate: Estimate, price: Price, discount: float) -> float:
    """The estimate's cost at the batch price."""
    return cost_of(batch_price(price, discount), estimate.prompt_tokens, estimate.completion_tokens)


# -- events ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchUpdate:
    """What the backend last said about one of the run's batches."""

    batch_id: int  # the workspace's
    remote_id: str | None
    status: str
    total: int  # requests in it
    completed: int
    failed: int
    expires_at: int | None  # unix seconds: the end of the completion window
    window: str = COMPLETION_WINDOW
    error: str | None = None


@dataclass
class BatchStats(RunStats):
    """A batch run's totals: the run's (done, failed, tokens, cost) and each batch's last
    update, by the workspace's batch id."""

    batches: dict[int, BatchUpdate] = field(default_factory=dict)

    @property
    def requests(self) -> tuple[int, int, int]:
        """(completed, failed, total) over the batches still at the backend or collected by
        this start, as the backend counts them."""
        completed = sum(b.completed for b in self.batches.values())
        failed = sum(b.failed for b in self.batches.values())
        total = sum(b.total for b in self.batches.values())
        return completed, failed, total


BatchEvent = RunStarted | BatchUpdate | ItemFinished | RunFinished


# -- the request file -----------------------------------------------------------------------


def request_line(
    item: Item,
    run: RunInfo,
    builder: PromptBuilder,
    sampling: SamplingParams,
    *,
    store_completions: bool,
) -> bytes:
    body = chat_request(run, builder.messages(item), sampling, store_completions=store_completions)
    line = {"custom_id": str(item.id), "method": "POST", "url": ENDPOINT, "body": body}
    return json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def batch_files(
    items: Iterable[Item],
    run: RunInfo,
    builder: PromptBuilder,
    *,
    store_completions: bool,
    max_requests: int = MAX_REQUESTS,
    max_bytes: int = MAX_FILE_BYTES,
) -> list[tuple[list[int], bytes]]:
    """The run's requests as batch input files within the limits: (item ids, JSONL) each."""
    sampling = sampling_of(run)
    files: list[tuple[list[int], bytes]] = []
    ids: list[int] = []
    lines: list[bytes] = []
    size = 0
    for item in items:
        line = request_line(item, run, builder, sampling, store_completions=store_completions)
        if len(line) > max_bytes:
            raise BatchError(
                f"item #{item.position}: its request is {len(line):,} bytes, over the "
                f"{max_bytes:,} a batch file may hold; generate it live"
            )
        if ids and (len(ids) >= max_requests or size + len(line) > max_bytes):
            files.append((ids, b"".join(lines)))
            ids, lines, size = [], [], 0
        ids.append(item.id)
        lines.append(line)
        size += len(line)
    if ids:
        files.append((ids, b"".join(lines)))
    return files


# -- the results ----------------------------------------------------------------------------


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        code, message = error.get("code"), error.get("message")
        if message:
            return f"{code}: {message}" if code else str(message)
    return str(error)


@dataclass
class _Reply:
    """What a result line says of its request's reply."""

    output: str = ""
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    remote_id: str | None = None


def _result(
    line: dict[str, Any], run: RunInfo
) -> tuple[Literal["done", "failed"], _Reply, str | None, Any]:
    """One line of an output or error file: (status, reply, error, samples or None)."""
    reply = _Reply()
    if line.get("error"):
        return "failed", reply, _error_text(line["error"]), None
    response = line.get("response") or {}
    status_code = response.get("status_code")
    body = response.get("body")
    if not isinstance(body, dict):
        return "failed", reply, f"HTTP {status_code}: the backend sent no response body", None
    reply.remote_id = body.get("id")
    if status_code != 200:
        error = body.get("error")
        message = _error_text(error.get("message") if isinstance(error, dict) else error)
        return "failed", reply, f"HTTP {status_code}: {message}", None
    usage = body.get("usage") or {}
    reply.prompt_tokens = usage.get("prompt_tokens")
    reply.completion_tokens = usage.get("completion_tokens")
    choices = sorted(body.get("choices") or [], key=lambda c: c.get("index") or 0)
    if not choices:
        return "failed", reply, "the backend's reply had no choices", None
    texts = [str((c.get("message") or {}).get("content") or "") for c in choices]
    reply.output = texts[0]
    reply.finish_reason = choices[0].get("finish_reason")
    if int(run.params.get("samples", 1)) > 1:
        return "done", reply, None, texts
    return "done", reply, None, None


def unanswered_reason(status: str, error: str | None) -> str:
    """Why a batch that ended left an item without an answer."""
    if status == "expired":
        return (
            f"the batch expired: its {COMPLETION_WINDOW} window ended before this request was "
            "answered (resend it, live or as a new batch)"
        )
    if status == "cancelled":
        return "the batch was cancelled before this request was answered"
    if status == "failed":
        return f"the batch failed: {error or 'the backend gave no reason'}"
    return "the batch ended without an answer for this request"


# -- the runner -----------------------------------------------------------------------------


class BatchRunner(Stoppable):
    """Sends a run's pending items as batches and follows them until every batch's results
    are mapped back to its items. `run()` returns when that is done, or when `stop()` was
    called (the batches go on at the backend; running again resumes them)."""

    def __init__(
        self,
        store: Store,
        client: openai.AsyncOpenAI,
        *,
        price: Price | None = None,
        budget: float | None = None,
        store_completions: bool = False,
        poll_interval: float = 5.0,
        max_poll_interval: float = 60.0,
        max_requests: int = MAX_REQUESTS,
        max_bytes: int = MAX_FILE_BYTES,
    ) -> None:
        self.store = store
        self.client = client.with_options(max_retries=2)
        self.price = price or Price()  # the batch price (batch_price)
        self.budget = budget
        self.store_completions = store_completions
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        # Kept in the workspace and shown in messages: never with credentials written into it.
        self.base_url = redact_url(client.base_url).rstrip("/")
        self.stats = BatchStats()
        self._init_stop()

    def stop(self) -> None:
        """Stop following: the batches go on at the backend and nothing is lost; running the
        run again picks them up."""
        self._stop("batch", "following stopped: the batches go on at the backend")

    # -- the run ------------------------------------------------------------------------

    async def run(
        self, run_id: int, on_event: Callable[[BatchEvent], None] | None = None
    ) -> RunFinished:
        with self.store.generating(run_id):
            return await self._run(run_id, on_event)

    async def _run(self, run_id: int, on_event: Callable[[BatchEvent], None] | None) -> RunFinished:
        emit = on_event or (lambda event: None)
        store = self.store
        # The batches sent before (resumed first), and the items no batch holds.
        batches = await store.in_thread(store.unfinished_batches, run_id)
        held = sum(len(b.item_ids) for b in batches)
        run, pending, self.stats = await open_run(store, run_id, BatchStats, held=held)
        await store.in_thread(store.set_run_status, run_id, "running")
        emit(RunStarted(run_id, self.stats.total, self.stats.todo))
        status = "failed"
        try:
            if pending and not self._cancel.is_set():
                batches += await self._send(run, pending, emit)
            await self._follow(run, batches, emit)
            status, message = self._final_status()
        except BatchError as error:
            self._stop("failed", str(error))
            status, message = self._final_status()
        except openai.APIError as error:
            # Polling gives up on nothing transient; this is a refusal (a key, a permission).
            self._stop("failed", f"stopped: {describe(error)}; resume to try again")
            status, message = self._final_status()
        except asyncio.CancelledError:
            self._stop("batch", "following stopped: the batches go on at the backend")
            raise
        finally:
            self.stats.finished = time.monotonic()
            if self._stop_reason is not None:
                status, message = self._stop_reason
            if status == "batch" and not await store.in_thread(store.unfinished_batches, run_id):
                status = "done"
            await asyncio.shield(
                store.in_thread(store.set_run_status, run_id, status, finished=True)
            )
        finished = RunFinished(run_id, status, message)
        emit(finished)
        return finished

    def _final_status(self) -> tuple[str, str]:
        if self._stop_reason is not None:
            return self._stop_reason
        s = self.stats
        if s.failed:
            return "done", f"{s.done} done, {s.failed} failed (batch)"
        return "done", f"{s.done + s.done_before} done (batch)"

    # -- sending ------------------------------------------------------------------------

    async def _send(
        self, run: RunInfo, items: Sequence[Item], emit: Callable[[BatchEvent], None]
    ) -> list[BatchInfo]:
        store = self.store
        builder = await store.in_thread(PromptBuilder.for_run, store, run)
        files = await asyncio.to_thread(
            batch_files,
            items,
            run,
            builder,
            store_completions=self.store_completions,
            max_requests=self.max_requests,
            max_bytes=self.max_bytes,
        )
        if self.budget is not None and self.price.input + self.price.output > 0:
            estimate = await store.in_thread(estimate_run, store, run.id, self.price)
            if estimate.cost > self.budget:
                raise BatchError(
                    f"not sent: the batch would cost ≈${estimate.cost:,.4f}, over the budget of "
                    f"${self.budget:,.2f} (a batch cannot stop half-way)"
                )
        sent: list[BatchInfo] = []
        for number, (ids, data) in enumerate(files, start=1):
            if self._cancel.is_set():
                break
            name = f"run-{run.id}-batch-{number}-of-{len(files)}.jsonl"
            try:
                uploaded = await self.client.files.create(file=(name, data), purpose="batch")
            except openai.NotFoundError as error:
                raise BatchError(self._unsupported(error)) from error
            except openai.APIError as error:
                raise BatchError(
                    f"the batch file could not be uploaded: {describe(error)}"
                ) from error
            batch_id = await store.in_thread(
                store.add_batch,
                run.id,
                base_url=self.base_url,
                input_file=uploaded.id,
                item_ids=ids,
            )
            info = await self._create(run, await store.in_thread(store.get_batch, batch_id), emit)
            sent.append(info)
        return sent

    def _unsupported(self, error: Exception) -> str:
        return (
            f"the backend at {self.base_url} has no Batch API ({describe(error)}); "
            "generate live instead"
        )

    async def _create(
        self, run: RunInfo, batch: BatchInfo, emit: Callable[[BatchEvent], None]
    ) -> BatchInfo:
        """Create the batch of a recorded input file and record its id as soon as it is known.
        A refusal forgets the record (its items are free to be sent again); a create that
        broke off leaves it, to be looked up by its input file when the run resumes."""
        store = self.store
        metadata = {"distill_run": str(run.id), **dict(list(run.metadata.items())[:15])}
        try:
            remote = await self.client.batches.create(
                input_file_id=batch.input_file,
                endpoint=ENDPOINT,
                completion_window=COMPLETION_WINDOW,
                metadata=metadata,
            )
        except openai.APIStatusError as error:
            reason = (
                self._unsupported(error)
                if isinstance(error, openai.NotFoundError)
                else f"the backend refused the batch: {describe(error)}"
            )
            await store.in_thread(
                store.update_batch, batch.id, status="refused", error=reason, collected=1
            )
            raise BatchError(reason) from error
        await self._record(batch, remote, emit)
        return await store.in_thread(store.get_batch, batch.id)

    async def _find_created(self, batch: BatchInfo) -> Any | None:
        """The backend's batch made from this input file, if `batches.create` got through
        before the app stopped (its answer lost)."""
        after: str | None = None
        for _ in range(LOOKUP_PAGES):
            kwargs: dict[str, Any] = {"limit": 100}
            if after:
                kwargs["after"] = after
            page = await self.client.batches.list(**kwargs)
            data = list(page.data)
            for remote in data:
                if remote.input_file_id == batch.input_file:
                    return remote
            if not data or not getattr(page, "has_more", False):
                return None
            after = data[-1].id
        return None

    # -- following ----------------------------------------------------------------------

    async def _record(
        self, batch: BatchInfo, remote: Any, emit: Callable[[BatchEvent], None]
    ) -> BatchUpdate:
        counts = remote.request_counts
        total = counts.total if counts is not None else len(batch.item_ids)
        completed = counts.completed if counts is not None else 0
        failed = counts.failed if counts is not None else 0
        error = None
        errors = getattr(remote, "errors", None)
        if errors is not None and errors.data:
            error = "; ".join(
                (f"line {e.line}: " if e.line is not None else "") + str(e.message)
                for e in errors.data[:5]
            )
        await self.store.in_thread(
            self.store.update_batch,
            batch.id,
            remote_id=remote.id,
            status=remote.status,
            request_counts={"total": total, "completed": completed, "failed": failed},
            output_file=remote.output_file_id,
            error_file=remote.error_file_id,
            error=error,
            expires_at=remote.expires_at,
        )
        update = BatchUpdate(
            batch_id=batch.id,
            remote_id=remote.id,
            status=remote.status,
            total=total or len(batch.item_ids),
            completed=completed,
            failed=failed,
            expires_at=remote.expires_at,
            window=remote.completion_window or COMPLETION_WINDOW,
            error=error,
        )
        self.stats.batches[batch.id] = update
        emit(update)
        return update

    async def _follow(
        self, run: RunInfo, batches: list[BatchInfo], emit: Callable[[BatchEvent], None]
    ) -> None:
        active = {b.id: b for b in batches}
        delay = self.poll_interval
        while active and not self._cancel.is_set():
            failing = False
            for batch in list(active.values()):
                if self._cancel.is_set():
                    return
                try:
                    remote = await self._retrieve(run, batch, emit)
                except (
                    openai.APIConnectionError,
                    openai.RateLimitError,
                    openai.InternalServerError,
                ):
                    failing = True
                    continue
                if remote is None:  # never created: it was, now (see _retrieve)
                    active[batch.id] = await self.store.in_thread(self.store.get_batch, batch.id)
                    continue
                update = await self._record(batch, remote, emit)
                if update.status in TERMINAL:
                    await self._collect(run, batch, remote, emit)
                    del active[batch.id]
            if not active:
                return
            wait = delay * (2.0 if failing else 1.0)
            await self._pause(wait * random.uniform(0.8, 1.0))
            delay = min(self.max_poll_interval, wait * 1.5)

    async def _retrieve(
        self, run: RunInfo, batch: BatchInfo, emit: Callable[[BatchEvent], None]
    ) -> Any | None:
        """The batch as the backend has it; for a batch whose id was never recorded, the one
        found by its input file, else None after creating it now."""
        if batch.remote_id is None:
            found = await self._find_created(batch)
            if found is None:
                await self._create(run, batch, emit)
                return None
            return found
        try:
            return await self.client.batches.retrieve(batch.remote_id)
        except openai.NotFoundError as error:
            raise BatchError(
                f"batch {batch.remote_id} of run {run.id} is not known to the backend at "
                f"{self.base_url} (it was sent to {batch.base_url}): {describe(error)}. "
                "Connect to that backend to collect it."
            ) from error

    async def _pause(self, seconds: float) -> None:
        """Sleep between polls; `stop()` wakes it."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._cancel.wait(), timeout=seconds)

    # -- collecting ---------------------------------------------------------------------

    async def _download(self, file_id: str | None) -> bytes:
        if not file_id:
            return b""
        content = await self.client.files.content(file_id)
        return bytes(content.content)

    async def _collect(
        self, run: RunInfo, batch: BatchInfo, remote: Any, emit: Callable[[BatchEvent], None]
    ) -> None:
        """Map a finished batch's output and error files back to its items, in one
        transaction; items it did not answer fail with the reason."""
        store = self.store
        output = await self._download(remote.output_file_id)
        errors = await self._download(remote.error_file_id)
        update = self.stats.batches.get(batch.id)
        reason = unanswered_reason(remote.status, update.error if update else None)
        outcomes = await asyncio.to_thread(self._outcomes, run, batch, (output, errors), reason)
        done = {
            row[0]
            for row in await store.in_thread(
                store.query,
                "SELECT item_id FROM completions WHERE run_id = ? AND status = 'done'",
                (run.id,),
            )
        }
        # An item done meanwhile (a live resume) keeps its answer.
        outcomes = [
            (fields, finished) for fields, finished in outcomes if finished.item_id not in done
        ]
        await asyncio.shield(
            store.in_thread(
                self._save, run.id, batch.id, [(f.item_id, fields) for fields, f in outcomes]
            )
        )
        for _fields, finished in outcomes:
            self._count(finished)
            emit(finished)

    def _save(self, run_id: int, batch_id: int, rows: list[tuple[int, dict[str, Any]]]) -> None:
        self.store.save_completions(run_id, rows)
        self.store.update_batch(batch_id, collected=1)

    def _outcomes(
        self, run: RunInfo, batch: BatchInfo, files: tuple[bytes, bytes], reason: str
    ) -> list[tuple[dict[str, Any], ItemFinished]]:
        wanted = set(batch.item_ids)
        answered: dict[int, tuple[dict[str, Any], ItemFinished]] = {}
        for data in files:
            for raw in data.splitlines():
                if not raw.strip():
                    continue
                try:
                    line = json.loads(raw)
                    item_id = int(line["custom_id"])
                except (ValueError, KeyError, TypeError):
                    continue  # not one of ours: nothing to map it to
                if item_id not in wanted or item_id in answered:
                    continue
                status, reply, error, samples = _result(line, run)
                answered[item_id] = self._outcome(run, item_id, status, reply, error, samples)
        for item_id in batch.item_ids:
            if item_id not in answered:
                answered[item_id] = self._outcome(run, item_id, "failed", _Reply(), reason, None)
        return [answered[i] for i in batch.item_ids]

    def _outcome(
        self,
        run: RunInfo,
        item_id: int,
        status: Literal["done", "failed"],
        reply: _Reply,
        error: str | None,
        samples: list[str] | None,
    ) -> tuple[dict[str, Any], ItemFinished]:
        confidence = None
        if samples is not None:
            reply.output, confidence = vote_samples(run, samples)
        return completion_outcome(
            item_id,
            status,
            output=reply.output,
            error=error,
            finish_reason=reply.finish_reason,
            prompt_tokens=reply.prompt_tokens,
            completion_tokens=reply.completion_tokens,
            remote_id=reply.remote_id,
            latency_ms=None,  # a batch has no per-request time
            first_token_ms=None,
            price=self.price,
            confidence=confidence,
            samples=samples,
        )

    def _count(self, finished: ItemFinished) -> None:
        stats = self.stats
        if finished.status == "done":
            stats.done += 1
        else:
            stats.failed += 1
        stats.prompt_tokens += finished.prompt_tokens or 0
        stats.completion_tokens += finished.completion_tokens or 0
        stats.cost += finished.cost


# -- cancelling and finding batches ---------------------------------------------------------


async def cancel_batches(store: Store, client: openai.AsyncOpenAI, run_id: int) -> list[str]:
    """Ask the backend to cancel the run's batches still going; following them (BatchRunner)
    then collects what they answered and fails the rest. Returns the remote ids asked."""
    asked = []
    for batch in await store.in_thread(store.unfinished_batches, run_id):
        if batch.remote_id is None or batch.status in TERMINAL:
            continue
        remote = await client.batches.cancel(batch.remote_id)
        await store.in_thread(store.update_batch, batch.id, status=remote.status)
        asked.append(batch.remote_id)
    return asked


def runs_with_batches(store: Store) -> list[int]:
    """Runs whose batches are not all collected (what a restarted app follows again)."""
    return sorted({b.run_id for b in store.unfinished_batches()})
