"""Eval runs: grade a run's completions with an eval's graders, store every grade, summarise
per grader, resume after an interruption, and compare runs side by side.

One engine serves the Evals and Compare screens, `distill-tui run` and the tests. Like the
generation engine it reports progress as plain dataclass events through a callback and keeps
running totals in `EvalStats` for a screen to read at its own pace.

How the work is done: CPU graders (string_check, text_similarity but cosine, command_match)
are cheap, so they run inline, a few thousand completions at a time in a worker thread, each
batch written in one transaction. Graders that wait (judges, python, cosine) run as tasks, at
most `concurrency` at a time, with the generation engine's retry rules; their grades are
written as they come in (batched when they come in fast).

Resuming: a grade is stored once it is decided, so a rerun of the same eval run grades only
what is missing — plus grades that errored because the backend kept failing (their detail
starts with BACKEND_ERROR), which are worth another try. A grader's own error (a bad
template, an unreadable judge reply, a python grader that timed out) is an outcome and stays.
"""

from __future__ import annotations

import asyncio
import collections
import csv
import difflib
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import openai

from tui.engine.generation import cost_of
from tui.engine.graders import (
    BackendError,
    GraderConfig,
    GradingContext,
    errored,
    parse_graders,
)
from tui.engine.progress import Progress, Stoppable
from tui.engine.settings import Price, Settings
from tui.engine.store import (
    CompletionRow,
    GradeInput,
    GradeRow,
    GraderSummary,
    Store,
    StoreError,
)

BACKEND_ERROR = "backend error: "

# -- evals ---------------------------------------------------------------------------------


def create_eval(store: Store, name: str, graders: Any) -> int:
    """A new eval from grader configs (OpenAI testing_criteria JSON, as data or text).
    Raises GraderConfigError naming the grader and field at fault."""
    parsed = parse_graders(graders)
    return store.create_eval(name, [g.to_json() for g in parsed])


def update_eval(
    store: Store, eval_id: int, *, name: str | None = None, graders: Any = None
) -> None:
    configs = None
    if graders is not None:
        configs = [g.to_json() for g in parse_graders(graders)]
    store.update_eval(eval_id, name=name, graders=configs)


def eval_graders(store: Store, eval_id: int) -> list[GraderConfig]:
    return parse_graders(store.get_eval(eval_id).graders)


def start_eval_run(
    store: Store,
    eval_id: int,
    run_id: int | None = None,
    completion_ids: Sequence[int] | None = None,
) -> int:
    """A new eval run of the eval's current graders over a run (every done completion) or
    over a selection of completions of one run. Returns its id; `EvalRunner.run` grades."""
    graders = eval_graders(store, eval_id)
    if not graders:
        raise StoreError("the eval has no graders: add at least one")
    return store.create_eval_run(
        eval_id, run_id, [g.to_json() for g in graders], completion_ids=completion_ids
    )


# -- events ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalStarted:
    eval_run_id: int
    total: int  # grades the eval run is made of (completions × graders)
    todo: int  # grades this start will decide (the rest were stored before)


@dataclass(frozen=True)
class GradesRecorded:
    """Grades just written to the workspace (one event per write, not per grade)."""

    grades: list[GradeRow]


@dataclass(frozen=True)
class GradeRetry:
    completion_id: int
    grader: str
    attempt: int
    error: str
    delay: float


@dataclass(frozen=True)
class EvalFinished:
    eval_run_id: int
    status: str  # "done" | "cancelled" | "failed"
    message: str
    results: dict[str, GraderSummary]


EvalEvent = EvalStarted | GradesRecorded | GradeRetry | EvalFinished


@dataclass
class EvalStats(Progress):
    """Running totals, updated in place; safe to read from the UI loop at any time."""

    passed: int = 0
    failed: int = 0
    errored: int = 0

    @property
    def graded(self) -> int:
        return self.passed + self.failed + self.errored

    @property
    def finished_items(self) -> int:
        return self.graded


# -- the runner ------------------------------------------------------------------------------

Grade = tuple[int, str, float | None, bool | None, str]


def _grade_batch(
    rows: Sequence[GradeInput], graders: Sequence[GraderConfig], done: set[tuple[int, str]]
) -> list[Grade]:
    """CPU graders over a batch of completions, skipping grades already stored."""
    out: list[Grade] = []
    append = out.append
    for grader in graders:
        name = grader.name
        grade = grader.scorer()
        for row in rows:
            cid = row.completion_id
            if done and (cid, name) in done:
                continue
            try:
                score, passed, detail = grade(row)
            except Exception as error:  # a grader bug must not sink 100,000 grades
                score, passed, detail = errored(f"the grader failed: {type(error).__name__}")
            append((cid, name, score, passed, detail))
    return out


class _GradeWriter:
    """Writes grades as they come: whatever accumulated while the previous write ran goes in
    the next transaction, so fast graders are batched and slow ones are stored at once."""

    def __init__(
        self,
        store: Store,
        eval_run_id: int,
        stats: EvalStats,
        emit: Callable[[EvalEvent], None] | None,
        high_water: int,
    ) -> None:
        self.store = store
        self.eval_run_id = eval_run_id
        self.stats = stats
        self.emit = emit
        self.high_water = high_water
        self.buffer: list[Grade] = []
        self.wake = asyncio.Event()
        self.drained = asyncio.Event()
        self.closing = False
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._loop())

    def add(self, grades: list[Grade]) -> None:
        self.buffer.extend(grades)
        self.wake.set()

    async def put(self, grades: list[Grade]) -> None:
        """Add, then wait while the writer is far behind (a bound on memory)."""
        self.add(grades)
        while len(self.buffer) > self.high_water and self.task is not None:
            if self.task.done():
                self.task.result()  # the writer failed: raise its error here
                return
            self.drained.clear()
            await self.drained.wait()

    async def _loop(self) -> None:
        store = self.store
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.buffer:
                batch, self.buffer = self.buffer, []
                await store.in_thread(store.save_grades, self.eval_run_id, batch)
                self._count(batch)
                self.drained.set()
            if self.closing:
                return

    def _count(self, batch: list[Grade]) -> None:
        stats = self.stats
        for _, _, _, passed, _ in batch:
            if passed is None:
                stats.errored += 1
            elif passed:
                stats.passed += 1
            else:
                stats.failed += 1
        if self.emit is not None:
            self.emit(GradesRecorded([GradeRow(*g) for g in batch]))

    async def close(self) -> None:
        """Write what is left and stop. Raises what a write raised."""
        self.closing = True
        self.wake.set()
        if self.task is not None:
            await self.task


class EvalRunner(Stoppable):
    """Grades an eval run's missing grades. `run()` returns when every grade is decided, the
    run was cancelled, or the backend refused the judge (bad key, unknown model)."""

    def __init__(
        self,
        store: Store,
        client: openai.AsyncOpenAI | None = None,
        *,
        concurrency: int = 8,
        max_retries: int = 5,
        judge_model: str | None = None,
        embedding_model: str | None = None,
        python_timeout: float = 10.0,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        batch_size: int = 20_000,
    ) -> None:
        if not 1 <= concurrency <= 256:
            raise ValueError("concurrency must be between 1 and 256")
        self.store = store
        self.concurrency = concurrency
        self.batch_size = batch_size
        self.ctx = GradingContext(
            client,
            judge_model=judge_model,
            embedding_model=embedding_model,
            max_retries=max_retries,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            python_timeout=python_timeout,
            python_concurrency=min(concurrency, 4),
        )
        self.stats = EvalStats()
        self._init_stop()

    @classmethod
    def from_settings(
        cls, store: Store, client: openai.AsyncOpenAI | None, settings: Settings, **kw: Any
    ) -> EvalRunner:
        """A runner with the user's judge model, concurrency and retries; on OpenAI, cosine
        uses text-embedding-3-small."""
        kw.setdefault("judge_model", settings.judge)
        kw.setdefault("concurrency", settings.concurrency)
        kw.setdefault("max_retries", settings.max_retries)
        if settings.backend_kind("judge") == "openai":  # the client is the judge's backend
            kw.setdefault("embedding_model", "text-embedding-3-small")
        return cls(store, client, **kw)

    @property
    def judge_usage(self) -> tuple[int, int, int]:
        """(requests, prompt tokens, completion tokens) of the judge calls so far."""
        return self.ctx.usage

    def cancel(self) -> None:
        """Stop promptly: nothing new starts; grades being decided are dropped (a rerun
        decides them); everything already decided is kept."""
        self._stop("cancelled", "cancelled by the user")

    async def run(
        self, eval_run_id: int, on_event: Callable[[EvalEvent], None] | None = None
    ) -> EvalFinished:
        store = self.store
        info = await store.in_thread(store.get_eval_run, eval_run_id)
        graders = parse_graders(info.graders)
        rows = await store.in_thread(store.eval_run_completions, eval_run_id)
        done = await store.in_thread(
            store.graded_keys, eval_run_id, redo_detail_prefix=BACKEND_ERROR.rstrip()
        )
        names = {g.name for g in graders}
        total = len(rows) * len(graders)
        ids = {r.completion_id for r in rows}
        before = sum(1 for cid, name in done if cid in ids and name in names)
        self.stats = EvalStats(total=total, todo=total - before, done_before=before)
        # Claimed, not just marked: two graders of one eval run would send every judge
        # request twice. The final status below releases it.
        if not await store.in_thread(store.claim_eval_run, eval_run_id):
            raise StoreError(
                f"eval run {eval_run_id} is being graded already (here or by another "
                "process); wait for it to finish"
            )
        if on_event is not None:
            on_event(EvalStarted(eval_run_id, total, total - before))

        writer = _GradeWriter(store, eval_run_id, self.stats, on_event, 4 * self.batch_size)
        writer.start()
        cpu = [g for g in graders if not g.is_async]
        waiting = [g for g in graders if g.is_async]
        if total == before:  # a finished eval run started again: nothing to decide
            cpu, waiting = [], []
        parts = [
            asyncio.create_task(self._cpu(rows, cpu, done, writer)),
            asyncio.create_task(self._waiting(rows, waiting, done, writer, on_event)),
        ]
        failure: BaseException | None = None
        try:
            for result in await asyncio.gather(*parts, return_exceptions=True):
                if isinstance(result, BaseException) and not isinstance(
                    result, asyncio.CancelledError
                ):
                    failure = failure or result
        except asyncio.CancelledError:
            self._stop("cancelled", "cancelled")
            for part in parts:
                part.cancel()
            await asyncio.gather(*parts, return_exceptions=True)
            raise
        finally:
            try:
                await asyncio.shield(writer.close())
            except Exception as error:
                failure = failure or error
            if failure is not None:
                self._stop_reason = ("failed", f"the eval run failed: {failure}")
            self.stats.finished = time.monotonic()
            counts = await store.in_thread(store.grade_counts, eval_run_id)
            results = {g.name: counts.get(g.name, GraderSummary(0, 0, 0, None)) for g in graders}
            status, message = self._final_status(results)
            await store.in_thread(
                store.set_eval_run_status,
                eval_run_id,
                status,
                results={name: _summary_json(s) for name, s in results.items()},
                finished=True,
            )
            finished = EvalFinished(eval_run_id, status, message, results)
            if on_event is not None:
                on_event(finished)
        return finished

    def _final_status(self, results: dict[str, GraderSummary]) -> tuple[str, str]:
        if self._stop_reason is not None:
            return self._stop_reason
        passed = sum(r.passed for r in results.values())
        failed = sum(r.failed for r in results.values())
        errors = sum(r.errored for r in results.values())
        before = self.stats.done_before
        return "done", (
            f"{passed + failed + errors} grades: {passed} passed, {failed} failed, "
            f"{errors} errored" + (f" ({before} decided before this start)" if before else "")
        )

    async def _cpu(
        self,
        rows: Sequence[GradeInput],
        graders: Sequence[GraderConfig],
        done: set[tuple[int, str]],
        writer: _GradeWriter,
    ) -> None:
        if not graders:
            return
        for start in range(0, len(rows), self.batch_size):
            if self._cancel.is_set():
                return
            batch = rows[start : start + self.batch_size]
            # A worker thread, so a screen stays responsive while 100,000 grades are made.
            grades = await asyncio.to_thread(_grade_batch, batch, graders, done)
            await writer.put(grades)

    async def _waiting(
        self,
        rows: Sequence[GradeInput],
        graders: Sequence[GraderConfig],
        done: set[tuple[int, str]],
        writer: _GradeWriter,
        emit: Callable[[EvalEvent], None] | None,
    ) -> None:
        queue = collections.deque(
            (row, g) for row in rows for g in graders if (row.completion_id, g.name) not in done
        )
        if not queue:
            return
        workers = [
            asyncio.create_task(self._worker(queue, writer, emit))
            for _ in range(min(self.concurrency, len(queue)))
        ]
        await asyncio.gather(*workers, return_exceptions=True)

    async def _worker(
        self,
        queue: collections.deque[tuple[GradeInput, GraderConfig]],
        writer: _GradeWriter,
        emit: Callable[[EvalEvent], None] | None,
    ) -> None:
        while queue and not self._cancel.is_set():
            row, grader = queue.popleft()
            task = asyncio.create_task(self._grade(row, grader, writer, emit))
            self._tasks.add(task)
            try:
                await task
            except asyncio.CancelledError:
                # A grade cancelled by _stop() is dropped and the worker goes on to see the
                # flag; but when this worker is the one being cancelled (the task running the
                # eval run was cancelled: the app quits, Ctrl-C of `run`), it must stop, not
                # take the next grade. run() then records the eval run as cancelled.
                current = asyncio.current_task()
                if not task.cancelled() or (current is not None and current.cancelling()):
                    raise
            finally:
                self._tasks.discard(task)

    async def _grade(
        self,
        row: GradeInput,
        grader: GraderConfig,
        writer: _GradeWriter,
        emit: Callable[[EvalEvent], None] | None,
    ) -> None:
        stats = self.stats

        def on_retry(attempt: int, error: str, delay: float) -> None:
            stats.retries += 1
            if emit is not None:
                emit(GradeRetry(row.completion_id, grader.name, attempt, error, delay))

        stats.in_flight += 1
        try:
            result = await grader.agrade(self.ctx.bind(on_retry), row)
        except BackendError as error:
            if error.fatal:
                # Every judge call would fail the same way; nothing is stored for this one,
                # so a rerun after fixing the key or model grades it.
                self._stop("failed", f"{grader.name}: {error}")
                return
            if error.transient:
                result = errored(f"{BACKEND_ERROR}{error}")
            else:
                result = errored(f"the backend refused the request: {error}")
        except Exception as error:
            result = errored(f"the grader failed: {type(error).__name__}: {error}")
        finally:
            stats.in_flight -= 1
        writer.add([(row.completion_id, grader.name, *result)])


def _summary_json(s: GraderSummary) -> dict[str, Any]:
    return {
        "passed": s.passed,
        "failed": s.failed,
        "errored": s.errored,
        "mean_score": s.mean_score,
        "pass_rate": s.pass_rate,
    }


# -- result tables ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ResultRow:
    """One completion of an eval run with each grader's grade (missing: not graded yet)."""

    completion_id: int
    item_id: int
    input: str
    reference: str
    output: str
    grades: dict[str, GradeRow]

    def failing(self, grader: str | None = None) -> bool:
        """Failed `grader` (or any grader when None); errored grades are not failures."""
        if grader is not None:
            grade = self.grades.get(grader)
            return grade is not None and grade.passed is False
        return any(g.passed is False for g in self.grades.values())


def result_rows(store: Store, eval_run_id: int) -> list[ResultRow]:
    """The eval run's result table, in item order."""
    grades: dict[int, dict[str, GradeRow]] = collections.defaultdict(dict)
    for grade in store.grades(eval_run_id):
        grades[grade.completion_id][grade.grader] = grade
    return [
        ResultRow(
            r.completion_id, r.item_id, r.input, r.reference, r.output, grades[r.completion_id]
        )
        for r in store.eval_run_completions(eval_run_id)
    ]


def export_results(
    store: Store, eval_run_id: int, path: Path, fmt: Literal["csv", "jsonl"] | None = None
) -> int:
    """Write the result table as CSV (a score and a pass column per grader) or JSONL (one
    object per completion with every grade and its explanation). Returns the rows written."""
    info = store.get_eval_run(eval_run_id)
    names = [g.get("name") or "" for g in info.graders]
    rows = result_rows(store, eval_run_id)
    fmt = fmt or ("csv" if path.suffix.lower() in (".csv", ".tsv") else "jsonl")

    def verdict(grade: GradeRow | None) -> str:
        if grade is None:
            return ""
        return "errored" if grade.passed is None else ("pass" if grade.passed else "fail")

    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="") as fh:
        if fmt == "csv":
            writer = csv.writer(fh)
            header = ["item_id", "input", "reference", "output"]
            for name in names:
                header += [f"{name} score", f"{name} result", f"{name} explanation"]
            writer.writerow(header)
            for row in rows:
                line: list[Any] = [row.item_id, row.input, row.reference, row.output]
                for name in names:
                    grade = row.grades.get(name)
                    score = "" if grade is None or grade.score is None else grade.score
                    line += [score, verdict(grade), grade.detail if grade else ""]
                writer.writerow(line)
        else:
            for row in rows:
                record = {
                    "item_id": row.item_id,
                    "input": row.input,
                    "reference": row.reference,
                    "output": row.output,
                    "grades": {
                        name: {
                            "score": g.score,
                            "result": verdict(g),
                            "explanation": g.detail,
                        }
                        for name in names
                        if (g := row.grades.get(name)) is not None
                    },
                }
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return len(rows)


# -- comparison ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunColumn:
    """One run in a comparison: its eval results and what it cost."""

    run_id: int
    label: str
    model: str
    role: str
    eval_run_id: int | None  # the newest eval run of this eval over the run; None: not run
    eval_status: str | None
    results: dict[str, GraderSummary]
    pass_rates: dict[str, float | None]
    deltas: dict[str, float | None]  # pass rate minus the baseline's (None for the baseline)
    n_completions: int
    mean_latency_ms: float | None
    prompt_tokens: int
    completion_tokens: int
    cost: float
    priced: bool


@dataclass(frozen=True)
class ItemCell:
    """One run's completion of an item, with its grades."""

    completion_id: int | None  # None: the run has no completion of this item
    output: str
    status: str
    passed: dict[str, bool | None]  # grader → passed (None: errored); absent: not graded
    scores: dict[str, float | None]


@dataclass(frozen=True)
class ItemRow:
    item_id: int
    position: int
    input: str
    reference: str
    cells: dict[int, ItemCell]  # run id → cell
    differ: bool  # the outputs, or some grader's verdicts, differ between runs
    regressions: dict[int, list[str]]  # run id → graders passed by the baseline, failed here
    improvements: dict[int, list[str]]  # run id → graders failed by the baseline, passed here


CompareFilter = Literal["all", "differ", "regressions", "improvements"]


@dataclass(frozen=True)
class Comparison:
    eval_id: int
    eval_name: str
    graders: list[str]
    baseline_run_id: int
    runs: list[RunColumn]
    items: list[ItemRow]

    def rows(self, which: CompareFilter = "all") -> list[ItemRow]:
        if which == "differ":
            return [r for r in self.items if r.differ]
        if which == "regressions":
            return [r for r in self.items if r.regressions]
        if which == "improvements":
            return [r for r in self.items if r.improvements]
        return list(self.items)


def compare(
    store: Store,
    eval_id: int,
    run_ids: Sequence[int],
    baseline_run_id: int,
    price: Callable[[str], Price] | None = None,
) -> Comparison:
    """Runs of one dataset side by side under one eval (each run's newest eval run of it):
    pass rates per grader with deltas against the baseline, latency, tokens and cost, and a
    per-item table with each run's output and verdicts."""
    if not run_ids:
        raise StoreError("choose runs to compare")
    if baseline_run_id not in run_ids:
        raise StoreError("the baseline must be one of the compared runs")
    evaluation = store.get_eval(eval_id)
    infos = [store.get_run(run_id) for run_id in run_ids]
    datasets = {info.dataset_id for info in infos}
    if len(datasets) > 1:
        raise StoreError("the runs must be over the same dataset to be compared")

    graders: list[str] = [g.get("name") or "" for g in evaluation.graders]
    eval_runs = {run_id: store.latest_eval_run(eval_id, run_id) for run_id in run_ids}
    for er in eval_runs.values():
        for config in er.graders if er else []:
            name = config.get("name") or ""
            if name not in graders:
                graders.append(name)

    counts: dict[int, dict[str, GraderSummary]] = {}
    grades: dict[int, dict[int, dict[str, GradeRow]]] = {}
    for run_id, er in eval_runs.items():
        counts[run_id] = store.grade_counts(er.id) if er else {}
        per_completion: dict[int, dict[str, GradeRow]] = collections.defaultdict(dict)
        for grade in store.grades(er.id) if er else []:
            per_completion[grade.completion_id][grade.grader] = grade
        grades[run_id] = per_completion

    base_rates = {name: _rate(counts[baseline_run_id].get(name)) for name in graders}
    columns: list[RunColumn] = []
    for info in infos:
        er = eval_runs[info.id]
        rates = {name: _rate(counts[info.id].get(name)) for name in graders}
        deltas: dict[str, float | None] = {}
        for name in graders:
            rate, base = rates[name], base_rates[name]
            deltas[name] = (
                None if info.id == baseline_run_id or rate is None or base is None else rate - base
            )
        model_price = price(info.model) if price is not None else Price()
        columns.append(
            RunColumn(
                run_id=info.id,
                label=info.label,
                model=info.model,
                role=info.role,
                eval_run_id=er.id if er else None,
                eval_status=er.status if er else None,
                results={
                    name: counts[info.id].get(name, GraderSummary(0, 0, 0, None))
                    for name in graders
                },
                pass_rates=rates,
                deltas=deltas,
                n_completions=info.n_done,
                mean_latency_ms=info.mean_latency_ms,
                prompt_tokens=info.prompt_tokens,
                completion_tokens=info.completion_tokens,
                cost=cost_of(model_price, info.prompt_tokens, info.completion_tokens),
                priced=bool(model_price.input or model_price.output),
            )
        )

    completions: dict[int, dict[int, CompletionRow]] = {
        run_id: {c.item_id: c for c in store.completions(run_id)} for run_id in run_ids
    }
    items: dict[int, CompletionRow] = {}
    for per_run in completions.values():
        for item_id, completion in per_run.items():
            items.setdefault(item_id, completion)
    rows: list[ItemRow] = []
    for item_id, first in sorted(items.items(), key=lambda kv: kv[1].position):
        cells: dict[int, ItemCell] = {}
        for run_id in run_ids:
            c = completions[run_id].get(item_id)
            if c is None:
                cells[run_id] = ItemCell(None, "", "missing", {}, {})
                continue
            g = grades[run_id].get(c.id, {})
            cells[run_id] = ItemCell(
                c.id,
                c.output,
                c.status,
                {name: row.passed for name, row in g.items()},
                {name: row.score for name, row in g.items()},
            )
        rows.append(_item_row(item_id, first, cells, graders, baseline_run_id))
    return Comparison(eval_id, evaluation.name, graders, baseline_run_id, columns, rows)


def _rate(summary: GraderSummary | None) -> float | None:
    return summary.pass_rate if summary is not None else None


def _item_row(
    item_id: int,
    first: CompletionRow,
    cells: dict[int, ItemCell],
    graders: Sequence[str],
    baseline_run_id: int,
) -> ItemRow:
    present = [c for c in cells.values() if c.completion_id is not None]
    outputs = {" ".join(c.output.split()) for c in present}
    verdicts_differ = any(
        len({c.passed.get(name) for c in present if name in c.passed}) > 1 for name in graders
    )
    base = cells[baseline_run_id]
    regressions: dict[int, list[str]] = {}
    improvements: dict[int, list[str]] = {}
    for run_id, cell in cells.items():
        if run_id == baseline_run_id or cell.completion_id is None:
            continue
        worse = [n for n in graders if base.passed.get(n) is True and cell.passed.get(n) is False]
        better = [n for n in graders if base.passed.get(n) is False and cell.passed.get(n) is True]
        if worse:
            regressions[run_id] = worse
        if better:
            improvements[run_id] = better
    return ItemRow(
        item_id=item_id,
        position=first.position,
        input=first.input,
        reference=first.reference,
        cells=cells,
        differ=len(outputs) > 1 or verdicts_differ or len(present) != len(cells),
        regressions=regressions,
        improvements=improvements,
    )


_PIECES = re.compile(r"\s+|\w+|[^\w\s]")


def highlight_differences(a: str, b: str) -> tuple[list[tuple[str, bool]], list[tuple[str, bool]]]:
    """Two outputs cut into (text, differs) pieces, word by word, for side-by-side display."""
    pa, pb = _PIECES.findall(a), _PIECES.findall(b)
    left: list[tuple[str, bool]] = []
    right: list[tuple[str, bool]] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, pa, pb, autojunk=False).get_opcodes():
        same = op == "equal"
        if i2 > i1:
            left.append(("".join(pa[i1:i2]), not same))
        if j2 > j1:
            right.append(("".join(pb[j1:j2]), not same))
    return left, right
