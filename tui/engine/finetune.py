"""Fine-tuning, step 6 of the recipe: the training file built from a teacher's outputs,
validated as OpenAI's data-preparation cookbook does, uploaded, the job created and recorded
the moment its id is known, and watched until it ends (events fetched once each).

Works against OpenAI and the embedded local backend alike, through the same AsyncOpenAI
client; a backend without fine-tuning endpoints gets a clear message, not a traceback."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import openai

from tui.engine.datasets import normalise_request
from tui.engine.redact import redact_url
from tui.engine.settings import Price
from tui.engine.store import TERMINAL_JOB_STATUSES, CompletionRow, JobEvent, JobInfo, Store
from tui.engine.training_data import (
    FormatReport,
    TokenCounter,
    TokenStats,
    check_chat_jsonl,
    token_stats,
)

DEFAULT_VALIDATION_FRACTION = 0.1


class FineTuneError(RuntimeError):
    """Fine-tuning cannot go ahead; the message says why and what to do."""


class FineTuneUnsupported(FineTuneError):
    """The backend has no files / fine-tuning endpoints (e.g. a plain vLLM server)."""


# -- the training set ----------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Where the assistant turns come from: a run's done completions (optionally only those
    that passed every grader of an eval run, or an explicit selection), the completions picked
    on the Completions screen across runs (`run_ids` with `completion_ids`: its "Distill"), or
    a dataset's references."""

    run_id: int | None = None
    completion_ids: list[int] | None = None
    passing_eval_run_id: int | None = None
    dataset_id: int | None = None  # references of this dataset, when no run is given
    run_ids: tuple[int, ...] = ()  # a selection's runs, when no single run is given
    # A teacher run's labels below this vote share are left out (the run sampled n > 1).
    min_confidence: float = 0.0
    # These items' references are trained on as they are, beside the run's labels (the
    # recipe's labelled pool); alone with `dataset_id`, only these references.
    reference_item_ids: list[int] | None = None


@dataclass
class TrainingSet:
    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)
    dataset_id: int | None = None

    def jsonl(self, which: str = "train") -> bytes:
        examples = self.train if which == "train" else self.validation
        return "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples).encode()


@dataclass(frozen=True)
class _Pair:
    item_id: int
    input: str
    output: str
    split: str
    # The output stopped at max tokens (finish_reason "length"). Known for a one-sample
    # reply only: a voted label may be another sample than the one the reason is of.
    cut: bool = False


def _cut(row: CompletionRow) -> bool:
    return row.finish_reason == "length" and not row.samples


def _pairs(store: Store, source: Source) -> tuple[list[_Pair], int | None]:
    if source.run_id is not None:
        run = store.get_run(source.run_id)
        rows = [r for r in store.completions(source.run_id) if r.status == "done"]
        if source.completion_ids is not None:
            wanted = set(source.completion_ids)
            rows = [r for r in rows if r.id in wanted]
        if source.passing_eval_run_id is not None:
            passing = passing_completions(store, source.passing_eval_run_id)
            rows = [r for r in rows if r.id in passing]
        if source.min_confidence > 0:
            rows = [
                r
                for r in rows
                if (1.0 if r.confidence is None else r.confidence) >= source.min_confidence
            ]
        splits = {i.id: i.split for i in store.items(run.dataset_id)} if run.dataset_id else {}
        pairs = [
            _Pair(r.item_id, r.input, r.output, splits.get(r.item_id, ""), _cut(r))
            for r in rows
            if r.output.strip()
        ]
        if source.reference_item_ids and run.dataset_id is not None:
            labelled = {p.item_id for p in pairs}
            pairs += [
                p
                for p in _reference_pairs(store, run.dataset_id, source.reference_item_ids)
                if p.item_id not in labelled
            ]
        return pairs, run.dataset_id
    if source.run_ids:
        return _selected_pairs(store, source.run_ids, source.completion_ids)
    if source.dataset_id is not None:
        return _reference_pairs(
            store, source.dataset_id, source.reference_item_ids
        ), source.dataset_id
    raise FineTuneError("choose a run (the teacher's outputs) or a dataset's references")


def _selected_pairs(
    store: Store, run_ids: tuple[int, ...], completion_ids: list[int] | None
) -> tuple[list[_Pair], int | None]:
    """The done completions of a selection (all of the runs' when `completion_ids` is None),
    in the order the Completions screen lists them. Its runs may be over several datasets."""
    rows = store.search_completions(run_ids=run_ids, statuses=("done",))
    if completion_ids is not None:
        wanted = set(completion_ids)
        rows = [r for r in rows if r.id in wanted]
    dataset_ids = {d for d in (store.get_run(r).dataset_id for r in run_ids) if d is not None}
    splits = {i.id: i.split for d in sorted(dataset_ids) for i in store.items(d)}
    pairs = [
        _Pair(r.item_id, r.input, r.output, splits.get(r.item_id, ""), _cut(r))
        for r in rows
        if r.output.strip()
    ]
    return pairs, next(iter(dataset_ids)) if len(dataset_ids) == 1 else None


def _reference_pairs(store: Store, dataset_id: int, item_ids: list[int] | None) -> list[_Pair]:
    wanted = set(item_ids) if item_ids is not None else None
    return [
        _Pair(i.id, i.input, i.reference, i.split)
        for i in store.items(dataset_id)
        if i.reference.strip() and (wanted is None or i.id in wanted)
    ]


def passing_completions(store: Store, eval_run_id: int) -> set[int]:
    """Completions that passed every grader of the eval run (none errored or failed)."""
    rows = store.query(
        "SELECT completion_id, MIN(COALESCE(passed, 0)) AS ok FROM grades"
        " WHERE eval_run_id = ? GROUP BY completion_id",
        (eval_run_id,),
    )
    return {r["completion_id"] for r in rows if r["ok"]}


def build_training_set(
    store: Store,
    source: Source,
    *,
    system_prompt: str,
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
    seed: int = 0,
) -> TrainingSet:
    """Each example: the STUDENT's system prompt, the request, the teacher's output. Example
    turns the teacher was given are not copied in: the student must learn to answer without
    them (that is the point of context distillation)."""
    if not 0 <= validation_fraction < 0.5:
        raise FineTuneError("the validation fraction must be between 0 and 0.5 (e.g. 0.1)")
    pairs, dataset_id = _pairs(store, source)
    if not pairs:
        raise FineTuneError(
            "the selection has no teacher outputs: generate the teacher's run first, or pick "
            "a run with finished completions"
        )
    warnings: list[str] = []
    leaked = sum(1 for p in pairs if p.split == "eval")
    if leaked:
        warnings.append(
            f"{leaked} example(s) come from the dataset's eval split: the fine-tuned model will "
            "have seen them, so its eval scores will be flattering (leakage)"
        )
    cut = sum(1 for p in pairs if p.cut)
    if cut:
        warnings.append(
            f"{cut} example(s) are outputs cut off at max tokens: the student would learn to "
            "stop mid-answer (generate them again with a higher max tokens)"
        )
    # Group by normalised request so the same request never lands in both files.
    groups: dict[str, list[_Pair]] = {}
    for pair in pairs:
        groups.setdefault(normalise_request(pair.input), []).append(pair)
    repeated = sum(len(g) - 1 for g in groups.values())
    if repeated:
        warnings.append(f"{repeated} example(s) repeat a request already in the training set")
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    n_validation = round(len(keys) * validation_fraction)
    if validation_fraction > 0 and n_validation == 0 and len(keys) >= 20:
        n_validation = 1
    validation_keys = set(keys[:n_validation])

    def example(pair: _Pair) -> dict[str, Any]:
        messages = []
        if system_prompt.strip():
            messages.append({"role": "system", "content": system_prompt})
        messages.append({"role": "user", "content": pair.input})
        messages.append({"role": "assistant", "content": pair.output})
        return {"messages": messages}

    train = [example(p) for k in keys if k not in validation_keys for p in groups[k]]
    validation = [example(p) for k in keys if k in validation_keys for p in groups[k]]
    return TrainingSet(train, validation, warnings, dataset_id)


# -- validation and cost --------------------------------------------------------------------


@dataclass
class Validation:
    report: FormatReport
    validation_report: FormatReport | None
    stats: TokenStats | None
    tokens_are_estimates: bool
    cost: float | None  # None when the model has no training price
    warnings: list[str]

    @property
    def ok(self) -> bool:
        return self.report.ok() and (self.validation_report is None or self.validation_report.ok())

    def errors(self) -> str:
        parts = []
        if not self.report.ok():
            parts.append(f"training file: {self.report.summary()}")
        if self.validation_report is not None and not self.validation_report.ok():
            parts.append(f"validation file: {self.validation_report.summary()}")
        return "; ".join(parts)


def estimate_tokens(text: str) -> int:
    """≈ 4 characters a token; used, and labelled as an estimate, where the model's own
    tokenizer is not at hand (nothing is downloaded at run time)."""
    return max(1, (len(text) + 3) // 4)


def validate_training_set(
    training: TrainingSet,
    *,
    count: TokenCounter | None = None,
    price: Price | None = None,
    n_epochs: int | None = None,
    context_limit: int = 16385,
) -> Validation:
    report = check_chat_jsonl(training.jsonl("train").decode())
    validation_report = (
        check_chat_jsonl(training.jsonl("validation").decode(), min_examples=1)
        if training.validation
        else None
    )
    warnings = list(training.warnings) + list(report.warnings)
    stats = None
    cost = None
    if report.ok():
        stats = token_stats(
            training.train,
            count or estimate_tokens,
            max_tokens_per_example=context_limit,
            n_epochs=n_epochs,
        )
        if stats.n_too_long:
            warnings.append(
                f"{stats.n_too_long} example(s) are over the model's {context_limit:,}-token "
                "context and will be truncated"
            )
        if price is not None and price.training:
            cost = stats.trained_tokens * price.training / 1e6
    return Validation(report, validation_report, stats, count is None, cost, warnings)


def local_token_counter(model_path: Path) -> TokenCounter | None:
    """The local model's own tokenizer (vocabulary only, a few MB), or None if unavailable."""
    try:
        from llama_cpp import Llama

        # llama.cpp reports on its context through Python's stderr: keep that off the screen.
        with contextlib.redirect_stderr(io.StringIO()):
            vocab = Llama(model_path=str(model_path), vocab_only=True, verbose=False)
    except Exception:
        return None

    def count(text: str) -> int:
        return len(vocab.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    return count


def token_counter_for(
    backend_kind: str, model: str, local_models: Iterable[Path] = ()
) -> TokenCounter | None:
    """The model's own tokenizer where the backend is local and the model is a GGUF we can
    find (the default model, or one added by path); None means "estimate"."""
    if backend_kind != "local":
        return None
    from tui.engine.local_model import default_gguf_path
    from tui.engine.settings import LOCAL_DEFAULT_MODEL

    candidates: list[Path] = []
    if model == LOCAL_DEFAULT_MODEL:
        with contextlib.suppress(FileNotFoundError):
            candidates.append(default_gguf_path())
    candidates += [p for p in local_models if p.suffix == ".gguf" and p.stem.lower() == model]
    for path in candidates:
        counter = local_token_counter(path)
        if counter is not None:
            return counter
    return None


# -- launching ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hyperparameters:
    n_epochs: int | str = "auto"
    batch_size: int | str = "auto"
    learning_rate_multiplier: float | str = "auto"

    def as_dict(self) -> dict[str, Any]:
        return {
            "n_epochs": self.n_epochs,
            "batch_size": self.batch_size,
            "learning_rate_multiplier": self.learning_rate_multiplier,
        }


def _unsupported(base_url: str, error: Exception) -> FineTuneUnsupported:
    return FineTuneUnsupported(
        f"the backend at {base_url} has no fine-tuning endpoint ({error}); fine-tune on OpenAI "
        "or the local backend, or import a fine-tuned model's outputs as a run"
    )


async def launch_job(
    store: Store,
    client: openai.AsyncOpenAI,
    training: TrainingSet,
    *,
    base_model: str,
    hyperparameters: Hyperparameters = Hyperparameters(),
    suffix: str | None = None,
    seed: int | None = None,
    validation: Validation | None = None,
) -> JobInfo:
    """Upload the files and create the job; the job is in the workspace the moment the
    backend returns its id. Refuses, before uploading anything, a file with format errors."""
    validation = validation or validate_training_set(training)
    if not validation.ok:
        raise FineTuneError(f"not uploaded: {validation.errors()}")
    # Kept in the workspace and shown in messages: never with credentials written into it.
    base_url = redact_url(client.base_url).rstrip("/")
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    exports = store.exports_dir
    train_path = exports / f"train-{stamp}.jsonl"
    train_path.write_bytes(training.jsonl("train"))
    try:
        train_file = await client.files.create(
            file=(train_path.name, training.jsonl("train")), purpose="fine-tune"
        )
        validation_file = None
        if training.validation:
            valid_path = exports / f"validation-{stamp}.jsonl"
            valid_path.write_bytes(training.jsonl("validation"))
            validation_file = await client.files.create(
                file=(valid_path.name, training.jsonl("validation")), purpose="fine-tune"
            )
    except openai.NotFoundError as error:
        raise _unsupported(base_url, error) from error
    request: dict[str, Any] = {
        "model": base_model,
        "training_file": train_file.id,
        "method": {
            "type": "supervised",
            "supervised": {"hyperparameters": hyperparameters.as_dict()},
        },
    }
    if validation_file is not None:
        request["validation_file"] = validation_file.id
    if suffix:
        request["suffix"] = suffix
    if seed is not None:
        request["seed"] = seed
    jobs: Any = client.fine_tuning.jobs
    try:
        job = await jobs.create(**request)
    except openai.NotFoundError as error:
        if "model" in str(error).lower() and "fine_tuning" not in str(error.request.url):
            raise
        raise _unsupported(base_url, error) from error
    except openai.BadRequestError as error:
        body = error.body if isinstance(error.body, dict) else {}
        text = str(body.get("message") or error.message)
        if error.code == "model_not_available":
            # OpenAI trains dated snapshots only (preflight.fine_tune_base resolves aliases).
            text += " Name a fine-tunable model (on OpenAI a dated snapshot, e.g. "
            text += "gpt-4o-mini-2024-07-18)."
        raise FineTuneError(f"the backend refused to fine-tune {base_model!r}: {text}") from error
    job_id = await store.in_thread(
        store.save_job,
        remote_id=job.id,
        base_url=base_url,
        base_model=base_model,
        status=job.status,
        training_file=train_file.id,
        validation_file=validation_file.id if validation_file else None,
        hyperparameters=hyperparameters.as_dict(),
    )
    return await store.in_thread(store.get_job, job_id)


# -- watching -------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobUpdate:
    job: JobInfo
    new_events: list[JobEvent]
    trained_tokens: int | None
    estimated_finish: int | None
    checkpoints: list[dict[str, Any]]


def _event(raw: Any) -> JobEvent:
    created = getattr(raw, "created_at", None)
    created_at = (
        datetime.fromtimestamp(created, UTC).isoformat(timespec="seconds")
        if isinstance(created, int | float)
        else str(created)
    )
    data = getattr(raw, "data", None)
    metrics = dict(data) if isinstance(data, dict) and data else None
    return JobEvent(
        remote_id=raw.id,
        created_at=created_at,
        level=getattr(raw, "level", "info") or "info",
        message=getattr(raw, "message", "") or "",
        metrics=metrics,
    )


class JobWatcher:
    """Polls a job: status, new events (newest-first pages, stopping at the first event
    already stored, so none is fetched twice in steady state), checkpoints. Network errors
    back off and retry; the job id is never lost because it is in the workspace."""

    def __init__(
        self,
        store: Store,
        client: openai.AsyncOpenAI,
        *,
        interval: float = 2.0,
        max_interval: float = 60.0,
    ) -> None:
        self.store = store
        self.client = client.with_options(max_retries=0)
        self.interval = interval
        self.max_interval = max_interval
        self._known: dict[int, set[str]] = {}

    async def poll_once(self, job_id: int) -> JobUpdate:
        job = await self.store.in_thread(self.store.get_job, job_id)
        known = self._known.get(job_id)
        if known is None:
            stored = await self.store.in_thread(self.store.job_events, job_id)
            known = self._known[job_id] = {e.remote_id for e in stored}
        remote = await self.client.fine_tuning.jobs.retrieve(job.remote_id)
        fresh: list[Any] = []
        after: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": 100}
            if after:
                kwargs["after"] = after
            page = await self.client.fine_tuning.jobs.list_events(job.remote_id, **kwargs)
            data = list(page.data)
            stop = False
            for raw in data:
                if raw.id in known:
                    stop = True
                    break
                fresh.append(raw)
            if stop or not data or not getattr(page, "has_more", False):
                break
            after = data[-1].id
        events = [_event(raw) for raw in reversed(fresh)]  # oldest first
        if events:
            await self.store.in_thread(self.store.add_job_events, job_id, events)
            known.update(e.remote_id for e in events)
        checkpoints: list[dict[str, Any]] = []
        with contextlib.suppress(openai.NotFoundError):
            cps = await self.client.fine_tuning.jobs.checkpoints.list(job.remote_id)
            checkpoints = [c.model_dump() for c in cps.data]
        error = None
        if remote.error is not None and remote.error.message:
            error = f"{remote.error.code}: {remote.error.message}"
        ended = getattr(remote, "finished_at", None)
        await self.store.in_thread(
            self.store.update_job,
            job_id,
            status=remote.status,
            fine_tuned_model=remote.fine_tuned_model,
            error=error,
            finished_at=(
                datetime.fromtimestamp(ended, UTC).isoformat(timespec="seconds")
                if isinstance(ended, int | float)
                else None
            ),
        )
        job = await self.store.in_thread(self.store.get_job, job_id)
        return JobUpdate(
            job=job,
            new_events=events,
            trained_tokens=remote.trained_tokens,
            estimated_finish=getattr(remote, "estimated_finish", None),
            checkpoints=checkpoints,
        )

    async def watch(
        self, job_id: int, on_update: Callable[[JobUpdate], None] | None = None
    ) -> JobInfo:
        """Poll until the job ends. Transient errors back off (up to max_interval)."""
        delay = self.interval
        while True:
            try:
                update = await self.poll_once(job_id)
            except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError):
                delay = min(self.max_interval, delay * 2)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                continue
            delay = self.interval
            if on_update is not None:
                on_update(update)
            if update.job.status in TERMINAL_JOB_STATUSES:
                return update.job
            await asyncio.sleep(self.interval)


async def cancel_job(store: Store, client: openai.AsyncOpenAI, job_id: int) -> JobInfo:
    """Ask the job's backend to cancel it and record what the backend answers (OpenAI says
    "cancelled" at once; what was trained is gone). A job that has already ended is left as
    it is. Safe to retry: cancelling a cancelled job changes nothing."""
    job = await store.in_thread(store.get_job, job_id)
    if job.finished:
        return job
    try:
        remote = await client.fine_tuning.jobs.cancel(job.remote_id)
    except (openai.NotFoundError, openai.BadRequestError) as error:
        # Ended on its own meanwhile (OpenAI refuses to cancel a finished job), or gone.
        raise FineTuneError(f"the backend did not cancel {job.remote_id}: {error}") from error
    await store.in_thread(store.update_job, job_id, status=remote.status)
    return await store.in_thread(store.get_job, job_id)


def unfinished_jobs(
    store: Store, base_url: str | None = None, *, any_port: bool = False
) -> list[JobInfo]:
    """Jobs to resume polling when the app starts (optionally only this backend's). The
    embedded local backend listens on a new port each time it starts, and its server keeps
    the workspace's jobs across starts: for it (`any_port`) the port does not tell backends
    apart, so a job an earlier session started is polled again rather than left "running"."""

    def where(url: str) -> str:
        address = urlsplit(redact_url(url).rstrip("/"))
        host = (address.hostname or "") if any_port else address.netloc
        return f"{address.scheme}://{host}{address.path}"

    return [
        j
        for j in store.list_jobs()
        if not j.finished and (base_url is None or where(j.base_url) == where(base_url))
    ]


def metrics_series(events: Iterable[JobEvent]) -> dict[str, list[tuple[int, float]]]:
    """Loss/accuracy per step from "metrics" events, for the chart: name -> [(step, value)]."""
    series: dict[str, list[tuple[int, float]]] = {}
    for event in events:
        m = event.metrics or {}
        step = m.get("step")
        if not isinstance(step, int):
            continue
        for name in (
            "train_loss",
            "valid_loss",
            "train_mean_token_accuracy",
            "valid_mean_token_accuracy",
            "full_valid_loss",
        ):
            value = m.get(name)
            if isinstance(value, int | float):
                series.setdefault(name, []).append((step, float(value)))
    return series


# -- what a source keeps, and why the rest is left out ----------------------------------------

# Why a completion (or an item) of a source gives no example, in the order the filters apply
# (a completion left out for two reasons counts under the first).
NOT_FINISHED = "not finished"  # failed or cancelled
NOT_GRADED = "not graded by the gate"  # the gate's eval run has no grade for it
FAILED_GATE = "failed the gate"
BELOW_CONFIDENCE = "below the confidence"
EMPTY = "empty"
NO_REFERENCE = "no reference"


@dataclass(frozen=True)
class TrainingSetReport:
    """How many examples a `Source` gives (before the validation split) and why the rest of
    what it covers gives none: the same filters as `build_training_set`, counted."""

    kept: int
    considered: int  # the completions (or, for references, the items) the source covers
    dropped: dict[str, int]  # reason → how many, in the filters' order; only those that did
    references: int = 0  # of `kept`: the pool's references added beside a run's labels
    unit: str = "completions"  # what `considered` counts: "completions" or "items"
    min_confidence: float = 0.0
    gate: int | None = None  # the eval run that gated the labels

    def reason_text(self, reason: str) -> str:
        if reason == BELOW_CONFIDENCE:
            return f"below confidence {self.min_confidence:.0%}"
        if reason in (FAILED_GATE, NOT_GRADED) and self.gate is not None:
            return f"{reason} (eval run {self.gate})"
        return reason

    def note(self) -> str:
        """ "kept 180 of 200 completions · dropped: 12 failed the gate (eval run 4), 6 below
        confidence 75%, 2 empty" (+ the pool's references trained on beside them)."""
        labelled = self.kept - self.references
        text = f"kept {labelled:,} of {self.considered:,} {self.unit}"
        if self.references:
            text += f" + {self.references:,} references of the labelled pool"
        if self.dropped:
            text += " · dropped: " + ", ".join(
                f"{n:,} {self.reason_text(why)}" for why, n in self.dropped.items()
            )
        return text


def training_set_report(store: Store, source: Source) -> TrainingSetReport:
    """What `build_training_set` would keep of `source`, and why it would leave out the rest:
    not finished (failed or cancelled), not graded by or failed the gate (an eval run whose
    graders must all pass), below the minimum confidence (a teacher's vote share), empty."""
    dropped: dict[str, int] = {}

    def drop(reason: str) -> None:
        dropped[reason] = dropped.get(reason, 0) + 1

    if source.run_id is None and not source.run_ids:
        if source.dataset_id is None:
            raise FineTuneError("choose a run (the teacher's outputs) or a dataset's references")
        wanted = set(source.reference_item_ids) if source.reference_item_ids is not None else None
        items = [i for i in store.items(source.dataset_id) if wanted is None or i.id in wanted]
        for item in items:
            if not item.reference.strip():
                drop(NO_REFERENCE)
        kept = len(items) - sum(dropped.values())
        return TrainingSetReport(kept, len(items), dropped, unit="items")

    if source.run_id is not None:
        rows = store.completions(source.run_id)
        gate, least = source.passing_eval_run_id, source.min_confidence
    else:
        rows = store.search_completions(run_ids=source.run_ids)
        gate, least = None, 0.0  # a selection is filtered on the Completions screen
    if source.completion_ids is not None:
        wanted = set(source.completion_ids)
        rows = [r for r in rows if r.id in wanted]
    passing: set[int] = set()
    graded: set[int] = set()
    if gate is not None:
        passing = passing_completions(store, gate)
        graded = {
            r["completion_id"]
            for r in store.query(
                "SELECT DISTINCT completion_id FROM grades WHERE eval_run_id = ?", (gate,)
            )
        }
    labelled: set[int] = set()
    for row in rows:
        if row.status != "done":
            drop(NOT_FINISHED)
        elif gate is not None and row.id not in passing:
            drop(FAILED_GATE if row.id in graded else NOT_GRADED)
        elif least > 0 and (row.confidence or 1.0) < least:
            drop(BELOW_CONFIDENCE)
        elif not row.output.strip():
            drop(EMPTY)
        else:
            labelled.add(row.item_id)
    references = 0
    if source.run_id is not None and source.reference_item_ids:
        dataset_id = store.get_run(source.run_id).dataset_id
        if dataset_id is not None:
            references = sum(
                1
                for p in _reference_pairs(store, dataset_id, source.reference_item_ids)
                if p.item_id not in labelled
            )
    kept = len(rows) - sum(dropped.values()) + references
    order = (NOT_FINISHED, NOT_GRADED, FAILED_GATE, BELOW_CONFIDENCE, EMPTY)
    return TrainingSetReport(
        kept,
        len(rows),
        {reason: dropped[reason] for reason in order if reason in dropped},
        references=references,
        min_confidence=least,
        gate=gate,
    )
