"""Completions stored on the backend (`store=True`), brought in as a run: the seed's dashboard
flow, where a production app's logged completions are filtered by model and metadata, then
evaluated and distilled.

The backend lists them (`GET /v1/chat/completions?model=&metadata[k]=v&order=&after=&limit=`,
followed page by page) and gives each one's input messages (`GET …/{id}/messages`, paged
too). The filter is the dashboard's: a model, metadata key=value pairs, created after/before;
the API has no parameter for the dates, so they (and, in case a backend ignores a parameter,
the rest) are also checked here. A completion becomes an item (its last user message is the
request) and a completion of the run (the assistant's reply, model, usage, metadata, the
stored id, the time it was created).

One filter on one backend has one run: importing it again adds only the completions the run
does not hold yet (a unique index on the stored id makes that hold even when two imports
race), so an import that was interrupted, or hit a network error, is resumed by importing
again. Listing and reading messages are safe to repeat and are retried with backoff; a
completion that cannot be imported (gone meanwhile, no user message, no text reply) is
reported and left out.

`fill_run_from_stored` is the recipe's variant (`teacher_source = {stored = {...}}`): the
stored completions answer an existing run's items, matched by request text, instead of
bringing in new requests.
"""

from __future__ import annotations

import asyncio
import re
import shlex
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import openai
from pydantic import BaseModel, Field, field_validator

from tui.engine.datasets import _chat_item, _ItemProblem, normalise_request
from tui.engine.redact import redact_url
from tui.engine.retry import describe
from tui.engine.store import Item, Store, StoredRow, dumps

PAGE_SIZE = 100  # completions per list request (OpenAI's largest page)
# Listing and reading messages are safe to repeat: the SDK retries them (connection errors,
# 408, 409, 429, 5xx; after the server's Retry-After, else with backoff) this many times.
RETRIES = 4
MESSAGES_PAGE = 100
# Pages are listed oldest first; a page whose every completion was created this long after
# `created_before` ends the listing (the backend orders by creation time, to the second; the
# margin allows for a completion stored a little after it was created).
ORDER_SLACK_SECONDS = 600
# OpenAI's limits for metadata: 16 pairs, keys up to 64 characters, values up to 512.
METADATA_MAX_PAIRS = 16
METADATA_MAX_KEY = 64
METADATA_MAX_VALUE = 512
_SNAPSHOT = re.compile(r"-\d{4}-\d{2}-\d{2}$")


class StoredImportError(RuntimeError):
    """The import stopped; the message says why and what was kept."""


class StoredCompletionsUnsupported(StoredImportError):
    """The backend has no stored-completions listing (404/405 on GET /chat/completions)."""


# -- the filter ----------------------------------------------------------------------------


def parse_metadata(text: str) -> dict[str, str]:
    """`task=git env=prod` (or comma-separated; quote a value with spaces) → a dict. Raises
    ValueError naming the pair that is not key=value or is over OpenAI's limits."""
    lexer = shlex.shlex(text, posix=True)
    lexer.whitespace += ","
    lexer.whitespace_split = True
    try:
        words = list(lexer)
    except ValueError as error:
        raise ValueError(f"metadata: {error} in {text!r}") from None
    pairs: dict[str, str] = {}
    for word in words:
        key, eq, value = word.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ValueError(f"metadata: {word!r} is not key=value (e.g. task=git)")
        pairs[key] = value
    return check_metadata(pairs)


def check_metadata(pairs: dict[str, str]) -> dict[str, str]:
    if len(pairs) > METADATA_MAX_PAIRS:
        raise ValueError(f"metadata: {len(pairs)} pairs; at most {METADATA_MAX_PAIRS}")
    for key, value in pairs.items():
        if len(key) > METADATA_MAX_KEY:
            raise ValueError(f"metadata: the key {key[:20]!r}… is over {METADATA_MAX_KEY} chars")
        if len(value) > METADATA_MAX_VALUE:
            raise ValueError(f"metadata: the value of {key!r} is over {METADATA_MAX_VALUE} chars")
    return pairs


def parse_time(text: str) -> int | None:
    """When a completion was created, as people write it: "" → None; unix seconds
    ("1735689600"); a date ("2025-03-01": its midnight) or a date and time ("2025-03-01
    14:30", "2025-03-01T14:30:00Z"), in local time unless it names a zone. Raises ValueError
    saying what is expected."""
    text = text.strip()
    if not text:
        return None
    if text.isdigit():
        return int(text)
    try:
        when = datetime.fromisoformat(text.replace(" ", "T", 1) if " " in text else text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a date: use 2025-03-01, 2025-03-01 14:30 or unix seconds"
        ) from None
    if when.tzinfo is None:
        when = when.astimezone()  # the local zone
    return int(when.timestamp())


def format_time(seconds: int) -> str:
    """Unix seconds as a local date and time ("2025-03-01 14:30"; the date alone at midnight)."""
    when = datetime.fromtimestamp(seconds).astimezone()
    midnight = when.strftime("%H:%M:%S") == "00:00:00"
    return when.strftime("%Y-%m-%d" if midnight else "%Y-%m-%d %H:%M")


def model_matches(wanted: str, model: str) -> bool:
    """The filter's model, or a dated snapshot of it: OpenAI stores a `gpt-4o` request under
    the model that answered it (`gpt-4o-2024-08-06`)."""
    if not wanted or model == wanted:
        return True
    return model.startswith(wanted + "-") and bool(_SNAPSHOT.fullmatch(model[len(wanted) :]))


@dataclass(frozen=True)
class StoredFilter:
    """The dashboard's filter. `created_after` is inclusive, `created_before` exclusive (unix
    seconds)."""

    model: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    created_after: int | None = None
    created_before: int | None = None

    def __post_init__(self) -> None:
        if (
            self.created_after is not None
            and self.created_before is not None
            and self.created_before <= self.created_after
        ):
            raise ValueError("'created before' must be later than 'created after'")

    def matches(self, completion: StoredCompletion) -> bool:
        if not model_matches(self.model, completion.model):
            return False
        if any(completion.metadata.get(k) != v for k, v in self.metadata.items()):
            return False
        if self.created_after is not None and completion.created < self.created_after:
            return False
        return self.created_before is None or completion.created < self.created_before

    def describe(self) -> str:
        """In words: "gpt-4o task=git from 2025-03-01" ("every stored completion" without)."""
        parts = [self.model] if self.model else []
        parts += [f"{k}={v}" for k, v in sorted(self.metadata.items())]
        if self.created_after is not None:
            parts.append(f"from {format_time(self.created_after)}")
        if self.created_before is not None:
            parts.append(f"before {format_time(self.created_before)}")
        return " ".join(parts) or "every stored completion"

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "metadata": dict(sorted(self.metadata.items())),
            "created_after": self.created_after,
            "created_before": self.created_before,
        }

    def key(self, backend: str) -> str:
        """What names this filter's run: the filter and the backend it lists from."""
        return dumps({"backend": backend, **self.as_dict()})


def backend_key(kind: str, base_url: str | None) -> str:
    """Which backend a run was imported from, stable across launches: the embedded local
    backend gets a new port each time, so it is "local"; others are their URL."""
    if kind == "local":
        return "local"
    return redact_url(base_url or "https://api.openai.com/v1").rstrip("/")


class StoredSourceConfig(BaseModel):
    """The recipe config's `teacher_source = {stored = {model = "gpt-4o", metadata = {task =
    "git"}}}` (dates as parse_time reads them)."""

    model: str = ""
    metadata: dict[str, str] = Field(default_factory=dict)
    created_after: str | None = None
    created_before: str | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str]) -> dict[str, str]:
        return check_metadata(value)

    @field_validator("created_after", "created_before")
    @classmethod
    def _time(cls, value: str | None) -> str | None:
        if value is not None:
            parse_time(value)
        return value

    def to_filter(self) -> StoredFilter:
        return StoredFilter(
            model=self.model,
            metadata=dict(self.metadata),
            created_after=parse_time(self.created_after or ""),
            created_before=parse_time(self.created_before or ""),
        )


class TeacherSourceConfig(BaseModel):
    """Where the recipe's teacher outputs come from when they are not generated."""

    stored: StoredSourceConfig


# -- listing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredCompletion:
    """One stored completion as the list gives it (its input messages are fetched apart)."""

    id: str
    created: int
    model: str
    metadata: dict[str, str]
    output: str | None  # the first choice's text (None: a tool call or a refusal only)
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None

    @classmethod
    def from_api(cls, data: Any) -> StoredCompletion:
        body: dict[str, Any] = data if isinstance(data, dict) else data.model_dump()
        choices = body.get("choices") or []
        first = choices[0] if choices and isinstance(choices[0], dict) else {}
        message = first.get("message") or {}
        content = message.get("content") if isinstance(message, dict) else None
        usage = body.get("usage") or {}
        metadata = body.get("metadata") or {}
        return cls(
            id=str(body.get("id")),
            created=int(body.get("created") or 0),
            model=str(body.get("model") or ""),
            metadata={str(k): str(v) for k, v in metadata.items()},
            output=content if isinstance(content, str) else None,
            finish_reason=first.get("finish_reason"),
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
        )


def _unsupported(error: BaseException) -> bool:
    return isinstance(error, openai.APIStatusError) and error.status_code in (404, 405)


async def stored_pages(
    client: openai.AsyncOpenAI,
    query: StoredFilter,
    *,
    page_size: int = PAGE_SIZE,
    retries: int = RETRIES,
) -> AsyncIterator[list[StoredCompletion]]:
    """The completions matching the filter, a page at a time, oldest first."""
    client = client.with_options(max_retries=retries)
    model = query.model or openai.omit
    metadata = dict(query.metadata) if query.metadata else openai.omit
    after: str | None = None
    while True:
        try:
            page = await client.chat.completions.list(
                model=model,
                metadata=metadata,
                order="asc",
                limit=page_size,
                after=after or openai.omit,
            )
        except openai.APIStatusError as error:
            if after is None and _unsupported(error):
                raise StoredCompletionsUnsupported(
                    f"this backend does not list stored completions ({describe(error)} from "
                    f"GET {redact_url(client.base_url)}chat/completions)"
                ) from error
            raise
        listed = [StoredCompletion.from_api(c) for c in page.data]
        yield [c for c in listed if query.matches(c)]
        if not page.has_more or not listed:
            return
        if query.created_before is not None and all(
            c.created >= query.created_before + ORDER_SLACK_SECONDS for c in listed
        ):
            return
        after = listed[-1].id


async def list_stored(
    client: openai.AsyncOpenAI,
    query: StoredFilter,
    *,
    on_page: Callable[[int], None] | None = None,
    page_size: int = PAGE_SIZE,
    retries: int = RETRIES,
) -> list[StoredCompletion]:
    """Every completion matching the filter (oldest first); `on_page(n so far)` after each
    page. Raises StoredCompletionsUnsupported, or StoredImportError saying what failed."""
    found: list[StoredCompletion] = []
    try:
        async for page in stored_pages(client, query, page_size=page_size, retries=retries):
            found.extend(page)
            if on_page is not None:
                on_page(len(found))
    except openai.OpenAIError as error:
        raise StoredImportError(f"listing stored completions failed: {describe(error)}") from error
    return found


@dataclass(frozen=True)
class StoredCount:
    """What an import of this filter would bring: counted before importing."""

    matching: int  # stored completions matching the filter
    imported: int  # of which the filter's run already holds
    run_id: int | None  # that run (None: the first import of this filter)
    listing: list[StoredCompletion]  # what was listed (an import right after reuses it)

    @property
    def new(self) -> int:
        return self.matching - self.imported


async def count_stored(
    store: Store,
    client: openai.AsyncOpenAI,
    query: StoredFilter,
    *,
    backend: str,
    on_page: Callable[[int], None] | None = None,
    page_size: int = PAGE_SIZE,
    retries: int = RETRIES,
) -> StoredCount:
    listing = await list_stored(
        client, query, on_page=on_page, page_size=page_size, retries=retries
    )
    run_id = await store.in_thread(store.stored_run, query.key(backend))
    held = await store.in_thread(store.stored_ids, run_id) if run_id is not None else set()
    imported = sum(1 for c in listing if c.id in held)
    return StoredCount(len(listing), imported, run_id, listing)


# -- importing -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportProgress:
    """After each page: how far the import is."""

    listed: int  # stored completions matching the filter seen so far
    added: int  # imported by this import
    already: int  # held by the run before
    failed: int  # could not be imported
    total: int | None  # matching completions, when they were counted first


@dataclass
class ImportResult:
    run_id: int
    dataset_id: int | None
    matching: int = 0
    added: int = 0
    already: int = 0  # imported before: importing again added nothing for them
    failed: list[tuple[str, str]] = field(default_factory=list)  # (stored id, why)
    unmatched: list[str] = field(default_factory=list)  # recipe: requests matching no item
    duplicates: int = 0  # recipe: another stored completion answered the item first

    def summary(self) -> str:
        text = f"{self.added:,} imported"
        if self.already:
            text += f", {self.already:,} already in run {self.run_id}"
        if self.unmatched:
            text += f", {len(self.unmatched):,} match no request of the run"
        if self.duplicates:
            text += f", {self.duplicates:,} repeat a request already answered"
        if self.failed:
            shown = "; ".join(f"{cid}: {why}" for cid, why in self.failed[:3])
            text += f", {len(self.failed):,} could not be imported ({shown})"
        return text


async def _messages(client: openai.AsyncOpenAI, completion_id: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        page = await client.chat.completions.messages.list(
            completion_id, limit=MESSAGES_PAGE, order="asc", after=after or openai.omit
        )
        for m in page.data:
            data = m.model_dump()
            if data.get("content") is None and data.get("content_parts"):
                data["content"] = data["content_parts"]
            messages.append(data)
        if not page.has_more or not page.data:
            return messages
        after = page.data[-1].id


# A placer says which item a stored completion answers: an item id, None for a new item,
# or a string: why it is left out.
Placer = Callable[[StoredCompletion, str], "int | str | None"]


async def _import_listing(
    store: Store,
    client: openai.AsyncOpenAI,
    run_id: int,
    listing: Sequence[StoredCompletion],
    place: Placer,
    result: ImportResult,
    *,
    concurrency: int,
    retries: int,
    on_progress: Callable[[ImportProgress], None] | None,
) -> None:
    """Fetch the messages of what the run does not hold yet and write it, a page at a time
    (each page one transaction: an interruption loses at most the page in flight)."""
    client = client.with_options(max_retries=retries)
    held = await store.in_thread(store.stored_ids, run_id)
    limit = asyncio.Semaphore(concurrency)

    async def fetch(c: StoredCompletion) -> list[dict[str, Any]] | str:
        async with limit:
            try:
                return await _messages(client, c.id)
            except openai.NotFoundError:
                return "gone from the backend (404 on its messages)"
            except openai.APIStatusError as error:
                if error.status_code in (401, 403, 408, 409, 429) or error.status_code >= 500:
                    raise  # still failing after the retries, refused, or no quota: stop
                return describe(error)  # this completion's own fault: the rest go on

    result.matching = len(listing)
    for start in range(0, len(listing), PAGE_SIZE):
        page = listing[start : start + PAGE_SIZE]
        todo = [c for c in page if c.id not in held]
        result.already += len(page) - len(todo)
        ready = [c for c in todo if c.output is not None]
        result.failed += [
            (c.id, "no text reply (a tool call or a refusal)") for c in todo if c.output is None
        ]
        # Every read of the page finishes (what was read is kept) before an error stops it.
        fetched = await asyncio.gather(*(fetch(c) for c in ready), return_exceptions=True)
        rows: list[StoredRow] = []
        system = ""
        stop: BaseException | None = None
        for c, messages in zip(ready, fetched, strict=True):
            if isinstance(messages, BaseException):
                stop = stop or messages
                continue
            if isinstance(messages, str):
                result.failed.append((c.id, messages))
                continue
            try:
                draft, system_prompt = _chat_item(messages)
            except (_ItemProblem, ValueError) as problem:
                result.failed.append((c.id, str(problem)))
                continue
            system = system or system_prompt or ""
            placed = place(c, draft.input)
            if not isinstance(placed, str):
                rows.append(StoredRow(c.id, placed, draft.input, _values(c)))
        if rows:
            result.added += await store.in_thread(
                store.add_stored_completions, run_id, rows, system_prompt=system
            )
            held.update(r.stored_id for r in rows)
        if stop is not None:
            raise stop
        if on_progress is not None:
            done = min(start + PAGE_SIZE, len(listing))
            on_progress(
                ImportProgress(done, result.added, result.already, len(result.failed), len(listing))
            )


def _values(c: StoredCompletion) -> dict[str, Any]:
    return {
        "output": c.output or "",
        "status": "done",
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "finish_reason": c.finish_reason,
        "remote_id": c.id,
        "metadata": dumps(c.metadata),
        "created_at": datetime.fromtimestamp(c.created, UTC).isoformat(timespec="milliseconds"),
    }


async def _guarded(
    store: Store,
    run_id: int,
    result: ImportResult,
    work: Awaitable[None],
) -> ImportResult:
    """Run an import with the run's status kept: running, then done, failed or cancelled
    (what was imported stays: importing again resumes)."""
    await store.in_thread(store.set_run_status, run_id, "running")
    try:
        await work
    except asyncio.CancelledError:
        await asyncio.shield(
            store.in_thread(store.set_run_status, run_id, "cancelled", finished=True)
        )
        raise
    except openai.OpenAIError as error:
        await store.in_thread(store.set_run_status, run_id, "failed", finished=True)
        kept = f"; the {result.added:,} imported into run {run_id} are kept" if result.added else ""
        raise StoredImportError(
            f"importing stored completions stopped: {describe(error)}{kept}; import again to resume"
        ) from error
    await store.in_thread(store.set_run_status, run_id, "done", finished=True)
    return result


async def import_stored(
    store: Store,
    client: openai.AsyncOpenAI,
    query: StoredFilter,
    *,
    backend: str,
    role: str = "teacher",
    listing: Sequence[StoredCompletion] | None = None,
    on_progress: Callable[[ImportProgress], None] | None = None,
    on_page: Callable[[int], None] | None = None,
    concurrency: int = 8,
    page_size: int = PAGE_SIZE,
    retries: int = RETRIES,
) -> ImportResult:
    """Import the stored completions matching the filter as a run, each one's request a new
    item of the run's own dataset. The filter's run on this backend is reused: only what it
    does not hold yet is added. `listing` (from count_stored) saves listing them again."""
    if listing is None:
        listing = await list_stored(
            client, query, on_page=on_page, page_size=page_size, retries=retries
        )
    key = query.key(backend)
    if not listing and await store.in_thread(store.stored_run, key) is None:
        raise StoredImportError(f"no stored completion matches {query.describe()}")
    models = {c.model for c in listing}
    model = query.model or (models.pop() if len(models) == 1 else "stored completions")
    name = f"stored: {query.describe()}"[:200]
    run_id, _ = await store.in_thread(
        store.open_stored_run,
        key,
        name,
        model=model,
        role=role,
        metadata=dict(query.metadata),
        params={"stored": {**query.as_dict(), "backend": backend}},
        name=name,
    )
    run = await store.in_thread(store.get_run, run_id)
    result = ImportResult(run_id, run.dataset_id)
    work = _import_listing(
        store,
        client,
        run_id,
        listing,
        lambda c, request: None,
        result,
        concurrency=concurrency,
        retries=retries,
        on_progress=on_progress,
    )
    return await _guarded(store, run_id, result, work)


async def fill_run_from_stored(
    store: Store,
    client: openai.AsyncOpenAI,
    run_id: int,
    query: StoredFilter,
    *,
    on_progress: Callable[[ImportProgress], None] | None = None,
    concurrency: int = 8,
    page_size: int = PAGE_SIZE,
    retries: int = RETRIES,
) -> ImportResult:
    """The recipe's teacher from stored completions: answer a run's items with the stored
    completions whose request is the item's (exactly, else ignoring case, spaces and
    punctuation). Requests matching no item are reported, not added; an item two stored
    completions answer keeps the older. Idempotent like import_stored."""
    listing = await list_stored(client, query, page_size=page_size, retries=retries)
    items: list[Item] = await store.in_thread(store.run_items, run_id)
    exact = {item.input: item.id for item in items}
    loose: dict[str, int] = {}
    for item in items:
        loose.setdefault(normalise_request(item.input), item.id)
    answered = {c.item_id for c in await store.in_thread(store.completions, run_id)}
    run = await store.in_thread(store.get_run, run_id)
    result = ImportResult(run_id, run.dataset_id)

    def place(c: StoredCompletion, request: str) -> int | str | None:
        item_id = exact.get(request) or loose.get(normalise_request(request))
        if item_id is None:
            result.unmatched.append(request)
            return "no item"
        if item_id in answered:
            result.duplicates += 1
            return "answered"
        answered.add(item_id)
        return item_id

    work = _import_listing(
        store,
        client,
        run_id,
        listing,
        place,
        result,
        concurrency=concurrency,
        retries=retries,
        on_progress=on_progress,
    )
    return await _guarded(store, run_id, result, work)
