"""Grow a dataset with a model: ask it (the teacher by default) for new requests in the style
of the dataset's own, keep the ones that are new, and let a person choose what to add.

The seed warns that a dataset must be large and diverse enough ("a few hundred may be enough;
thousands can be better"). `RequestSynthesizer` asks in batches (e.g. 20 at a time) until it
has the number wanted or has asked `max_batches` times: each request shows a few of the
dataset's requests as examples (train and unassigned ones only: an eval request shown to the
writer would come back paraphrased into train), optionally a list of topics, and asks for a
JSON array of strings. The reply streams (`stream_chat`, the generation engine's), and its
requests are read as they arrive: a JSON array (also inside `{"requests": [...]}`, or fenced
in ```json), else a numbered or bulleted list, else one request per line.

Every request is checked against the dataset (exact, and after `normalise_request`: case,
spaces, punctuation, quotes) and against the other new ones. What is wrong with a reply is an
event (`BadReply`: not a list, empty, only duplicates, cut off, broken), and every request
left out says why (`RequestRejected`); nothing is dropped or added silently. Nothing is
written to the workspace here: `add_synthetic` adds the requests a person accepted, tagged
`source = "synthetic"`, without references (the teacher answers them later, as in the
seed), and always in the train split, never eval: a model's own inventions must not grade
the student.

Requests go one batch at a time (the preview streams one reply); a failed request is retried
or given up as the generation engine decides for an item (`retry.request_failure`, on
the rules of tui/engine/retry.py); `cancel()` stops at once, keeping what was proposed so far."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import openai

from tui.engine.datasets import INPUT_KEYS, ItemDraft, normalise_request, validate_request
from tui.engine.generation import StreamedReply, StreamFailed, cost_of, stream_chat
from tui.engine.progress import Progress, Stoppable
from tui.engine.retry import StreamBroken, describe_break, request_failure
from tui.engine.settings import Price
from tui.engine.store import Item, Store

SYNTHETIC = "synthetic"  # items.source of the requests added from here

SYSTEM_PROMPT = (
    "You write new user requests for a dataset that is used to evaluate and fine-tune an "
    "assistant. You reply with a JSON array of strings and nothing else."
)

# -- what to ask for -----------------------------------------------------------------------


@dataclass(frozen=True)
class SynthesisSpec:
    dataset_id: int
    model: str
    count: int  # new requests wanted
    examples: int = 8  # the dataset's requests shown in each batch's prompt
    topics: tuple[str, ...] = ()
    batch_size: int = 20  # requests asked for in one reply
    max_batches: int | None = None  # None: twice the batches `count` needs, plus 2
    max_bad_in_row: int = 3  # stop after this many unusable replies in a row
    temperature: float | None = 1.0
    # Which examples are shown, and the sampling seed sent (+ the reply's number); None:
    # different every time.
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError("ask for at least one request")
        if not 1 <= self.batch_size <= 100:
            raise ValueError("a batch is 1 to 100 requests")
        if self.examples < 0:
            raise ValueError("the number of examples cannot be negative")

    @property
    def batch_cap(self) -> int:
        if self.max_batches is not None:
            return max(1, self.max_batches)
        return 2 * math.ceil(self.count / self.batch_size) + 2


def build_prompt(
    examples: Sequence[str], n: int, topics: Sequence[str] = (), system_prompt: str = ""
) -> list[dict[str, str]]:
    """The messages asking for `n` new requests like `examples`."""
    lines: list[str] = []
    if examples:
        lines.append(f"Here are {len(examples)} requests from the dataset:")
        lines += [json.dumps(text, ensure_ascii=False) for text in examples]
        lines.append("")
    if system_prompt:
        lines.append(f"The assistant that answers them is instructed: {system_prompt}")
        lines.append("")
    what = "in the same style, language and task" if examples else "for this assistant"
    lines.append(f"Write {n} new requests {what}.")
    if topics:
        lines.append("Cover these topics: " + "; ".join(topics) + ".")
    lines.append(
        "Each must differ from the examples and from each other: vary the wording, the "
        "details and the difficulty, as real users would."
    )
    # No sample array here: a model that echoes its prompt would hand it back as requests.
    lines.append(f"Reply with only a JSON array of {n} strings, one request each.")
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "\n".join(lines)},
    ]


def example_pool(items: Iterable[Item]) -> list[str]:
    """The requests that may be shown as examples: train and unassigned, never eval."""
    return [item.input for item in items if item.split != "eval"]


def _max_tokens(examples: Sequence[str], n: int) -> int:
    """Room for n requests about as long as the examples (≈ 4 characters a token), twice
    over, so a normal reply is never cut; a runaway one is."""
    average = sum(len(e) for e in examples) / len(examples) / 4 if examples else 40
    return min(8192, max(128, int(n * (2 * average + 12) + 64)))


# -- reading a reply -----------------------------------------------------------------------

_DECODER = json.JSONDecoder()
_WS = " \t\r\n"
_FENCE = re.compile(r"^\s*```[\w-]*[ \t]*$")
_MARKED = re.compile(r"^\s*(?:\(?\d{1,4}[.):]|[-*•–])\s+(.*\S)\s*$")
_QUOTES = ('""', "''", "“”", "‘’", "«»", "``")


class ArrayReader:
    """Reads the JSON array in a reply as it streams: `feed` returns each element once, as
    soon as it is complete. The array is the first `[` followed by a string, an object or `]`
    (so `{"requests": [...]}` and a fenced block are read too, and prose before it skipped)."""

    def __init__(self) -> None:
        self.text = ""
        self.start: int | None = None  # where the array's elements begin
        self.pos = 0  # where reading resumes
        self.count = 0  # elements read
        self.closed = False  # its `]` was read
        self.broken: str | None = None  # why what follows is not JSON
        self._after_value = False
        self._scan = 0  # where to look for the `[` next

    def feed(self, text: str) -> list[Any]:
        self.text += text
        return self._read(final=False)

    def finish(self) -> list[Any]:
        """The end of the reply: a last element needing no delimiter after it (a number)."""
        return self._read(final=True)

    def _find_start(self, final: bool) -> bool:
        text = self.text
        while True:
            i = text.find("[", self._scan)
            if i < 0:
                self._scan = len(text)
                return False
            j = i + 1
            while j < len(text) and text[j] in _WS:
                j += 1
            if j == len(text) and not final:
                self._scan = i  # what follows the `[` has not arrived yet
                return False
            if j < len(text) and text[j] in '"]{':
                self.start = self.pos = i + 1
                return True
            self._scan = i + 1

    def _read(self, final: bool) -> list[Any]:
        out: list[Any] = []
        if self.closed or self.broken is not None:
            return out
        if self.start is None and not self._find_start(final):
            return out
        text = self.text
        while True:
            i = self.pos
            while i < len(text) and text[i] in _WS:
                i += 1
            if i == len(text):
                return out
            char = text[i]
            if char == "]":
                self.closed = True
                self.pos = i + 1
                return out
            if self._after_value:
                if char != ",":
                    self.broken = f"expected ',' or ']' after element {self.count}"
                    return out
                self.pos = i + 1
                self._after_value = False
                continue
            try:
                value, end = _DECODER.raw_decode(text, i)
            except ValueError:
                # Incomplete so far, or not JSON: the end of the reply tells which.
                if final:
                    tail = text[i:].strip()
                    if not tail.startswith(('"', "{", "[")) or _complete_json_prefix(tail):
                        self.broken = f"element {self.count + 1} is not valid JSON"
                return out
            if end == len(text) and not final and not isinstance(value, (str, dict, list)):
                return out  # a number or literal may go on in the next chunk
            out.append(value)
            self.count += 1
            self.pos = end
            self._after_value = True


def _complete_json_prefix(tail: str) -> bool:
    """Whether a string element that failed to decode is closed (so it is broken, not cut)."""
    if not tail.startswith('"'):
        return False
    escaped = False
    for char in tail[1:]:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            return True
    return False


def element_text(value: Any) -> tuple[str | None, str | None]:
    """(the request in an array element, or why there is none). An object with one of the
    usual keys ("request", "input", "prompt", "question") counts as that request."""
    if isinstance(value, str):
        return value, None
    if isinstance(value, dict):
        for key in INPUT_KEYS:
            if isinstance(value.get(key), str):
                return value[key], None
        return None, "an object without a request in it"
    kind = {bool: "true/false", int: "a number", float: "a number", list: "a list"}
    return None, f"not a string ({kind.get(type(value), 'null')})"


def list_lines(text: str) -> tuple[list[str], bool]:
    """The reply read as a list when it is not JSON: (requests, whether they were marked
    with numbers or bullets). Marked lines win when at least two are and they make up half
    the reply (prose around them is skipped); else every line is one request, except a
    heading ending in ':'. Quotes around a request and a trailing comma are removed."""
    lines = [line for line in text.splitlines() if line.strip() and not _FENCE.match(line)]
    marked = [m.group(1) for m in map(_MARKED.match, lines) if m]
    if len(marked) >= 2 and 2 * len(marked) >= len(lines):
        return [_unquote(t) for t in marked], True
    plain = [line.strip() for line in lines if not line.rstrip().endswith(":")]
    return [_unquote(t) for t in plain], False


def _unquote(text: str) -> str:
    text = text.strip().removesuffix(",").strip()
    for pair in _QUOTES:
        if len(text) >= 2 and text[0] == pair[0] and text[-1] == pair[1]:
            return text[1:-1].strip()
    return text


class Deduplicator:
    """Says why a new request cannot be added (already in the dataset, or a repeat of an
    earlier new one; exact or after `normalise_request`), or None and remembers it."""

    def __init__(self, existing: Iterable[str]) -> None:
        self.exact = set(existing)
        self.normal = {normalise_request(text) for text in self.exact}
        self.new_exact: set[str] = set()
        self.new_normal: set[str] = set()

    def check(self, text: str) -> str | None:
        if text in self.exact:
            return "already in the dataset"
        key = normalise_request(text)
        if not key:
            return "has no words (only punctuation)"
        if key in self.normal:
            return "already in the dataset (ignoring case, spaces and punctuation)"
        if text in self.new_exact:
            return "a repeat of another new request"
        if key in self.new_normal:
            return "a repeat of another new request (ignoring case, spaces and punctuation)"
        self.new_exact.add(text)
        self.new_normal.add(key)
        return None


# -- events --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SynthesisStarted:
    wanted: int
    batch_size: int
    max_batches: int
    examples: int  # requests the examples are drawn from (train and unassigned)


@dataclass(frozen=True)
class BatchStarted:
    batch: int  # 1-based
    asked: int  # requests asked for
    attempt: int


@dataclass(frozen=True)
class BatchDelta:
    batch: int
    text: str


@dataclass(frozen=True)
class BatchRetry:
    batch: int
    attempt: int
    error: str
    delay: float


@dataclass(frozen=True)
class RequestProposed:
    """A new request, not in the dataset nor a repeat: shown for a person to accept."""

    batch: int
    index: int  # 0-based, over the whole synthesis
    text: str


@dataclass(frozen=True)
class RequestRejected:
    """Something in a reply that is not proposed, and why."""

    batch: int
    text: str
    reason: str


BadKind = Literal[
    "not_a_list", "empty", "duplicates", "unusable", "truncated", "malformed", "failed"
]


@dataclass(frozen=True)
class BadReply:
    """A reply that was not (wholly) what was asked for; what it did give is still proposed."""

    batch: int
    kind: BadKind
    message: str
    excerpt: str  # the start of the reply, for the person to see


@dataclass(frozen=True)
class BatchFinished:
    batch: int
    proposed: int
    rejected: int
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cost: float


@dataclass(frozen=True)
class SynthesisFinished:
    status: str  # "done" | "short" (asked max_batches times) | "cancelled" | "failed"
    message: str
    requests: tuple[str, ...]  # every proposed request, in order


SynthesisEvent = (
    SynthesisStarted
    | BatchStarted
    | BatchDelta
    | BatchRetry
    | RequestProposed
    | RequestRejected
    | BadReply
    | BatchFinished
    | SynthesisFinished
)


@dataclass
class SynthesisStats(Progress):
    """Running totals (total = the requests wanted); read by a screen at its own pace."""

    proposed: int = 0
    rejected: int = 0
    bad_replies: int = 0
    batches: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0

    @property
    def finished_items(self) -> int:
        return self.proposed


# -- the engine ----------------------------------------------------------------------------


@dataclass
class _Batch:
    number: int
    asked: int
    proposed: int = 0
    rejected: int = 0
    reasons: list[str] = field(default_factory=list)
    candidates: int = 0
    reported: bool = False  # a BadReply was sent for this reply


class RequestSynthesizer(Stoppable):
    """Asks a model for new requests (`run`); see the module docstring."""

    def __init__(
        self,
        store: Store,
        client: openai.AsyncOpenAI,
        *,
        price: Price | None = None,
        max_retries: int = 5,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
    ) -> None:
        self.store = store
        # Retries are ours (the generation engine's rules), not the SDK's.
        self.client = client.with_options(max_retries=0)
        self.price = price or Price()
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.stats = SynthesisStats()
        self.requests: list[str] = []
        self._init_stop()

    def cancel(self) -> None:
        """Stop now: the reply being read is dropped; what was proposed before stays."""
        self._stop("cancelled", "stopped by the user")

    async def run(
        self,
        spec: SynthesisSpec,
        on_event: Callable[[SynthesisEvent], None] | None = None,
    ) -> SynthesisFinished:
        emit = on_event or (lambda event: None)
        store = self.store
        dataset = await store.in_thread(store.get_dataset, spec.dataset_id)
        items = await store.in_thread(store.items, spec.dataset_id)
        pool = example_pool(items)
        self.stats = SynthesisStats(total=spec.count, todo=spec.count)
        self.requests = []
        dedupe = Deduplicator(item.input for item in items)
        rng = random.Random(spec.seed)
        cap = spec.batch_cap
        emit(SynthesisStarted(spec.count, spec.batch_size, cap, len(pool)))
        finished: SynthesisFinished | None = None
        try:
            if not pool and not spec.topics and not dataset.system_prompt:
                raise _Stop(
                    "failed",
                    "nothing to go by: the dataset has no train or unassigned requests to "
                    "show as examples (eval requests are never shown), no system prompt, and "
                    "no topics were given",
                )
            bad_in_row = 0
            number = 0
            while len(self.requests) < spec.count and not self._cancel.is_set():
                if number == cap:
                    raise _Stop("short", self._short_message(spec, number))
                number += 1
                asked = min(spec.batch_size, spec.count - len(self.requests))
                shown = rng.sample(pool, min(spec.examples, len(pool)))
                messages = build_prompt(shown, asked, spec.topics, dataset.system_prompt)
                batch = _Batch(number, asked)
                good = await self._batch(
                    spec, batch, messages, _max_tokens(shown, asked), dedupe, emit
                )
                bad_in_row = 0 if good else bad_in_row + 1
                if bad_in_row >= spec.max_bad_in_row:
                    raise _Stop(
                        "failed",
                        f"stopped after {bad_in_row} unusable replies in a row from "
                        f"{spec.model} (see the reports above)",
                    )
        except _Stop as stop:
            self._stop(stop.status, stop.message)
        except asyncio.CancelledError:
            self._stop("cancelled", "cancelled")
            finished = self._finished(spec)
            emit(finished)
            raise
        finished = self._finished(spec)
        emit(finished)
        return finished

    def _short_message(self, spec: SynthesisSpec, batches: int) -> str:
        return (
            f"{len(self.requests)} of {spec.count} new requests after {batches} replies; the "
            f"rest were repeats or unusable ({self.stats.rejected} left out)"
        )

    def _finished(self, spec: SynthesisSpec) -> SynthesisFinished:
        self.stats.finished = time.monotonic()
        got = tuple(self.requests)
        if self._stop_reason is not None:
            status, message = self._stop_reason
            if status == "cancelled":
                message = f"{message}: {len(got)} new requests so far"
        else:
            status, message = "done", f"{len(got)} new requests from {spec.model}"
        return SynthesisFinished(status, message, got)

    async def _batch(
        self,
        spec: SynthesisSpec,
        batch: _Batch,
        messages: list[dict[str, str]],
        max_tokens: int,
        dedupe: Deduplicator,
        emit: Callable[[SynthesisEvent], None],
    ) -> bool:
        """Ask for one batch (retrying what is worth retrying); True if it gave a request."""
        request: dict[str, Any] = {
            "model": spec.model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": max_tokens,
        }
        if spec.temperature is not None:
            request["temperature"] = spec.temperature
        if spec.seed is not None:
            request["seed"] = spec.seed + batch.number  # reproducible, yet each reply its own
        attempt = 0
        while True:
            attempt += 1
            reader = ArrayReader()
            reply = StreamedReply()
            batch.proposed = batch.rejected = batch.candidates = 0
            batch.reasons.clear()
            batch.reported = False
            emit(BatchStarted(batch.number, batch.asked, attempt))

            def arrived(text: str, reader: ArrayReader = reader) -> None:
                emit(BatchDelta(batch.number, text))
                for value in reader.feed(text):
                    if self._cancel.is_set():
                        break
                    self._consider(spec, batch, value, dedupe, emit)
                if self._cancel.is_set():
                    # cancel() from an event handler, inside this very stream: stop reading.
                    raise asyncio.CancelledError

            task = asyncio.ensure_future(
                stream_chat(self.client, request, reply, started=time.monotonic(), on_text=arrived)
            )
            self._tasks.add(task)
            try:
                await task
            except asyncio.CancelledError:
                if self._cancel.is_set() and not _being_cancelled():
                    return False  # cancel(): what this reply proposed stays
                raise
            except StreamFailed as error:
                self._count_usage(reply)
                self._report(batch, "failed", str(error), reply.output, emit)
                self._batch_done(batch, reply, emit)
                return False
            except (openai.APIStatusError, openai.APIConnectionError, StreamBroken) as error:
                failure = request_failure(
                    error,
                    attempt,
                    model=spec.model,
                    max_retries=self.max_retries,
                    backoff_base=self.backoff_base,
                    backoff_cap=self.backoff_cap,
                )
                if failure.kind in ("no quota", "not retried"):
                    # No quota, a bad key, an unknown model, a request the backend refuses
                    # (400…): every batch would fail the same way.
                    raise _Stop("failed", failure.message) from error
                if batch.proposed:
                    # Part of the reply arrived and was proposed: keep it, cut off.
                    self._count_usage(reply)
                    message = f"the reply broke off ({describe_break(error)})"
                    self._report(batch, "truncated", message, reply.output, emit)
                    self._batch_done(batch, reply, emit)
                    return True
                if failure.kind == "gave up":
                    raise _Stop("failed", failure.message) from error
                self.stats.retries += 1
                emit(BatchRetry(batch.number, attempt, failure.message, failure.delay))
                with contextlib.suppress(TimeoutError):  # cancel() ends the wait
                    await asyncio.wait_for(self._cancel.wait(), failure.delay)
                if self._cancel.is_set():
                    return False
                continue
            finally:
                self._tasks.discard(task)
            self._count_usage(reply)
            self._read_reply(spec, batch, reader, reply, dedupe, emit)
            self._batch_done(batch, reply, emit)
            return batch.proposed > 0

    def _read_reply(
        self,
        spec: SynthesisSpec,
        batch: _Batch,
        reader: ArrayReader,
        reply: StreamedReply,
        dedupe: Deduplicator,
        emit: Callable[[SynthesisEvent], None],
    ) -> None:
        """The reply is complete: read what the streaming reader could not, and report what
        is wrong with it."""
        text = reply.output
        for value in reader.finish():
            self._consider(spec, batch, value, dedupe, emit)
        if not text.strip():
            what = "empty" if not text else "only whitespace"
            if reply.finish_reason == "length":
                what += " up to max_tokens"
            self._report(batch, "empty", f"the reply was {what}", text, emit)
        elif reader.start is not None:
            self._check_array(batch, reader, reply.finish_reason == "length", text, emit)
        else:
            self._read_other(spec, batch, reply, dedupe, emit)
        if batch.candidates and not batch.proposed and not batch.reported:
            duplicates = all(_is_duplicate(reason) for reason in batch.reasons)
            self._report(
                batch,
                "duplicates" if duplicates else "unusable",
                f"nothing {'new' if duplicates else 'usable'} in the reply: all "
                f"{batch.candidates} requests were left out ({_most_common(batch.reasons)})",
                text,
                emit,
            )

    def _check_array(
        self,
        batch: _Batch,
        reader: ArrayReader,
        cut: bool,
        text: str,
        emit: Callable[[SynthesisEvent], None],
    ) -> None:
        """What was wrong with a reply holding a JSON array (its elements are read)."""
        if reader.closed:
            if reader.count == 0:
                self._report(batch, "empty", "the reply was an empty list", text, emit)
            return
        kept = (
            f"; the {batch.proposed} complete requests before it are kept" if batch.proposed else ""
        )
        if reader.broken is not None and not cut:
            message = f"the reply's list is not valid JSON: {reader.broken}{kept}"
            self._report(batch, "malformed", message, text, emit)
        else:
            where = "at max_tokens" if cut else "before its end"
            message = f"the reply was cut off {where}, inside its list{kept}"
            self._report(batch, "truncated", message, text, emit)

    def _read_other(
        self,
        spec: SynthesisSpec,
        batch: _Batch,
        reply: StreamedReply,
        dedupe: Deduplicator,
        emit: Callable[[SynthesisEvent], None],
    ) -> None:
        """A reply with no JSON array of text in it: a JSON list of other things, other JSON,
        a numbered or bulleted list, lines of text, or none of those."""
        text = reply.output
        cut = reply.finish_reason == "length"
        document = _whole_json(text)
        if isinstance(document, list):  # a list of what is not text: said per element
            for value in document:
                self._consider(spec, batch, value, dedupe, emit)
            return
        if document is not None:
            message = f"the reply is JSON but not a list ({_json_kind(document)})"
            self._report(batch, "not_a_list", message, text, emit)
            return
        lines, marked = list_lines(text)
        if cut and lines:
            lines = lines[:-1]  # the last line may be cut mid-way
        why = None if marked else _not_plain_list(lines, batch.asked, cut)
        if why is not None:
            message = f"the reply is not a list of requests ({why}); nothing taken from it"
            self._report(batch, "not_a_list", message, text, emit)
            return
        form = "a numbered list" if marked else "one request per line"
        cut_note = "; cut off at max_tokens, its last line is left out" if cut else ""
        message = f"the reply is not JSON; read as {form} ({len(lines)} lines){cut_note}"
        self._report(batch, "not_a_list", message, text, emit)
        for line in lines:
            self._consider(spec, batch, line, dedupe, emit)

    def _consider(
        self,
        spec: SynthesisSpec,
        batch: _Batch,
        value: Any,
        dedupe: Deduplicator,
        emit: Callable[[SynthesisEvent], None],
    ) -> None:
        batch.candidates += 1
        text, problem = element_text(value)
        if text is not None:
            try:
                text = validate_request(text)
            except ValueError as error:
                problem = str(error).rstrip(".").lower()
            else:
                if "\ufffd" in text:
                    problem = "holds broken characters (U+FFFD: the model wrote invalid UTF-8)"
        if text is not None and problem is None:
            if len(self.requests) >= spec.count:
                problem = f"more than the {spec.count} asked for"
            else:
                problem = dedupe.check(text)
        if problem is not None or text is None:
            batch.rejected += 1
            batch.reasons.append(problem or "")
            self.stats.rejected += 1
            shown = (
                text.strip() if text is not None else json.dumps(value, ensure_ascii=False)[:200]
            )
            emit(RequestRejected(batch.number, shown, problem or ""))
            return
        batch.proposed += 1
        self.stats.proposed += 1
        self.requests.append(text)
        emit(RequestProposed(batch.number, len(self.requests) - 1, text))

    def _report(
        self,
        batch: _Batch,
        kind: BadKind,
        message: str,
        text: str,
        emit: Callable[[SynthesisEvent], None],
    ) -> None:
        self.stats.bad_replies += 1
        batch.reported = True
        emit(BadReply(batch.number, kind, message, text[:300]))

    def _count_usage(self, reply: StreamedReply) -> None:
        stats = self.stats
        stats.prompt_tokens += reply.prompt_tokens or 0
        stats.completion_tokens += reply.completion_tokens or 0
        stats.cost += cost_of(self.price, reply.prompt_tokens, reply.completion_tokens)

    def _batch_done(
        self, batch: _Batch, reply: StreamedReply, emit: Callable[[SynthesisEvent], None]
    ) -> None:
        self.stats.batches += 1
        emit(
            BatchFinished(
                batch.number,
                batch.proposed,
                batch.rejected,
                reply.finish_reason,
                reply.prompt_tokens,
                reply.completion_tokens,
                cost_of(self.price, reply.prompt_tokens, reply.completion_tokens),
            )
        )


class _Stop(Exception):
    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _being_cancelled() -> bool:
    """Whether the task running this is itself being cancelled (a UI closing), as opposed to
    `cancel()` having cancelled the request it awaited."""
    current = asyncio.current_task()
    return current is not None and current.cancelling() > 0


def _not_plain_list(lines: Sequence[str], asked: int, cut: bool) -> str | None:
    """Why unmarked lines of text are not read as one request each, or None. Prose, an echo
    of the prompt or a small model's ramble is lines too: only a reply that ended normally
    with about as many lines as requests asked for counts."""
    if cut:
        return "not JSON, and cut off at max_tokens"
    if len(lines) < 2:
        return "not JSON, and one line of text"
    if not asked / 2 <= len(lines) <= asked + 2:
        return f"not JSON, and its {len(lines)} lines are not the {asked} requests asked for"
    return None


def _whole_json(text: str) -> Any | None:
    stripped = "\n".join(line for line in text.strip().splitlines() if not _FENCE.match(line))
    try:
        return json.loads(stripped)
    except ValueError:
        return None


def _json_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool) or value is None:
        return "a literal"
    return "a number"


def _is_duplicate(reason: str) -> bool:
    return reason.startswith(("already in the dataset", "a repeat of"))


def _most_common(reasons: Sequence[str]) -> str:
    counts: dict[str, int] = {}
    for reason in reasons:
        counts[reason] = counts.get(reason, 0) + 1
    return "; ".join(f"{n} {reason}" for reason, n in sorted(counts.items(), key=lambda kv: -kv[1]))


# -- adding what was accepted --------------------------------------------------------------


@dataclass(frozen=True)
class Added:
    ids: list[int]
    skipped: list[str]  # accepted, but meanwhile already in the dataset


def add_synthetic(store: Store, dataset_id: int, requests: Sequence[str]) -> Added:
    """Add accepted requests to the dataset: tagged synthetic, no reference, train split.
    Checked once more against the dataset as it is now (it may have changed meanwhile)."""
    dedupe = Deduplicator(item.input for item in store.items(dataset_id))
    keep: list[ItemDraft] = []
    skipped: list[str] = []
    for text in requests:
        if dedupe.check(text) is None:
            keep.append(ItemDraft(text, "", "train"))
        else:
            skipped.append(text)
    ids = store.add_items(dataset_id, keep, source=SYNTHETIC) if keep else []
    return Added(ids, skipped)
