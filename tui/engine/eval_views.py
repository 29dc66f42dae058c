"""What the Evals and Compare screens show, worked out without Textual: ready-made grader
sets, the runs (or the Completions screen's selection) an eval can be run on, the eval run a
screen shows for them, running per-grader tallies for a live result table, its sorting and
filtering, and the comparison a user most likely wants to see first.

The grading itself, result rows, exports and comparisons are in `tui.engine.evals`."""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tui.engine.evals import (
    Comparison,
    EvalEvent,
    EvalFinished,
    EvalStarted,
    GradeRetry,
    GradesRecorded,
    ResultRow,
    result_rows,
)
from tui.engine.graders import criteria_match, custom_prompt, parse_graders
from tui.engine.offloop import Receiver
from tui.engine.report import ROW_ORDER, row_name, row_rank
from tui.engine.selection import CompletionSelection
from tui.engine.store import EvalRunInfo, GradeRow, GraderSummary, RunInfo, Store

# -- ready-made graders ----------------------------------------------------------------------


@dataclass(frozen=True)
class GraderPreset:
    name: str
    description: str
    graders: list[dict[str, object]]


def grader_presets() -> list[GraderPreset]:
    """The git task's graders (as `distill-tui run` uses them) and the recipe's two judges."""
    from tui.engine.recipe import DEFAULT_GRADERS

    return [
        GraderPreset(
            "command match + exact",
            "for the git task: shell-aware command_match and an exact string_check",
            [dict(g) for g in DEFAULT_GRADERS],
        ),
        GraderPreset(
            "criteria match",
            "LLM judge: does the output satisfy the criteria and match the reference? (pass/fail)",
            [criteria_match().to_json()],
        ),
        GraderPreset(
            "custom prompt",
            "LLM judge with your own prompt, scoring 1–10 (passes at 7)",
            [custom_prompt().to_json()],
        ),
    ]


def add_graders(
    existing: Sequence[dict[str, object]], new: Iterable[dict[str, object]]
) -> list[dict[str, object]]:
    """`existing` plus `new`, each new grader renamed ("name 2", "name 3"...) when its name is
    taken, so adding a preset twice gives two graders rather than an error."""
    graders = [dict(g) for g in existing]
    taken = {g.name for g in parse_graders(graders)}
    for config in new:
        added = dict(config)
        name = parse_graders([added])[0].name
        base, n = name, 2
        while name in taken:
            name = f"{base} {n}"
            n += 1
        added["name"] = name
        taken.add(name)
        graders.append(added)
    return graders


# -- what an eval runs on --------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A run to grade: all its done completions, or a selection of them."""

    run_id: int
    completion_ids: tuple[int, ...] | None
    label: str
    dataset_id: int | None = None

    @property
    def is_selection(self) -> bool:
        return self.completion_ids is not None


def run_label(run: RunInfo) -> str:
    role = f" ({run.role})" if run.role else ""
    name = f" “{run.name}”" if run.name else ""
    return f"run {run.id}{name} · {run.model}{role}"


def run_targets(store: Store) -> list[Target]:
    """Every run with a finished completion, newest first."""
    return [
        Target(r.id, None, f"{run_label(r)} · {r.n_done:,} done", r.dataset_id)
        for r in store.list_runs()
        if r.n_done
    ]


def selection_targets(store: Store, selection: CompletionSelection) -> list[Target]:
    """The selection handed over from the Completions screen, one target per run (an eval run
    grades the completions of one run)."""
    if not selection.run_ids:
        return []
    wanted = set(selection.completion_ids)
    per_run: dict[int, list[int]] = collections.defaultdict(list)
    for row in store.search_completions(run_ids=selection.run_ids, statuses=("done",)):
        if row.id in wanted:
            per_run[row.run_id].append(row.id)
    targets = []
    for run_id in sorted(per_run):
        run = store.get_run(run_id)
        ids = tuple(sorted(per_run[run_id]))
        label = (
            f"{run_label(run)} · {len(ids):,} selected of {run.n_done:,} ({selection.description})"
        )
        targets.append(Target(run_id, ids, label, run.dataset_id))
    return targets


def find_eval_run(store: Store, eval_id: int, target: Target) -> EvalRunInfo | None:
    """The newest eval run of the eval over exactly this target (the whole run, or the same
    selection of it)."""
    wanted = None if target.completion_ids is None else sorted(target.completion_ids)
    for info in store.list_eval_runs(eval_id, target.run_id):
        ids = None if info.completion_ids is None else sorted(info.completion_ids)
        if ids == wanted:
            return info
    return None


# -- a result table while it fills -----------------------------------------------------------


class Tally:
    """Per-grader passed/failed/errored counts and mean score, kept up to date one grade at a
    time (a grade given again replaces the old one)."""

    def __init__(self, graders: Iterable[str] = ()) -> None:
        self._counts: dict[str, list[float]] = {name: [0, 0, 0, 0.0, 0] for name in graders}

    def add(self, grade: GradeRow, sign: int = 1) -> None:
        t = self._counts.setdefault(grade.grader, [0, 0, 0, 0.0, 0])
        if grade.passed is None:
            t[2] += sign
            return
        t[0 if grade.passed else 1] += sign
        if grade.score is not None:
            t[3] += sign * grade.score
            t[4] += sign

    def replace(self, old: GradeRow | None, new: GradeRow) -> None:
        if old is not None:
            self.add(old, -1)
        self.add(new)

    def summary(self, grader: str) -> GraderSummary:
        t = self._counts.get(grader, [0, 0, 0, 0.0, 0])
        return GraderSummary(int(t[0]), int(t[1]), int(t[2]), t[3] / t[4] if t[4] else None)

    @classmethod
    def of(cls, graders: Iterable[str], rows: Iterable[ResultRow]) -> Tally:
        tally = cls(graders)
        for row in rows:
            for grade in row.grades.values():
                tally.add(grade)
        return tally


class LiveResults(Receiver[EvalEvent]):
    """An eval run's result table as the screen shows it: the rows, each grader's running
    tally, and a version that moves when something changed. Runner events only write here;
    the screen redraws from it at its own pace. A runner on another thread (offloop.py) puts
    its events in `receive()`'s inbox instead, applied by `catch_up()` on the UI's thread."""

    def __init__(self, info: EvalRunInfo, rows: list[ResultRow], positions: dict[int, int]) -> None:
        self.info = info
        self.graders = [str(g.get("name") or "") for g in info.graders]
        self.rows = rows
        self.positions = positions  # item id → its number in the dataset
        self.index = {row.completion_id: i for i, row in enumerate(rows)}
        self.tally = Tally.of(self.graders, rows)
        self.version = 0
        self.retries = 0
        self.last_retry = ""
        self.finished: EvalFinished | None = None

    @classmethod
    def load(cls, store: Store, eval_run_id: int) -> LiveResults:
        info = store.get_eval_run(eval_run_id)
        dataset_id = store.get_run(info.run_id).dataset_id
        items = store.items(dataset_id) if dataset_id is not None else []
        positions = {item.id: item.position for item in items}
        return cls(info, result_rows(store, eval_run_id), positions)

    def on_event(self, event: EvalEvent) -> None:
        if isinstance(event, GradesRecorded):
            rows, index, tally = self.rows, self.index, self.tally
            for grade in event.grades:
                i = index.get(grade.completion_id)
                if i is None:
                    continue
                grades = rows[i].grades
                tally.replace(grades.get(grade.grader), grade)
                grades[grade.grader] = grade
        elif isinstance(event, GradeRetry):
            self.retries += 1
            self.last_retry = f"{event.grader}: {event.error}"
        elif isinstance(event, EvalFinished):
            self.finished = event
        elif isinstance(event, EvalStarted):
            self.finished = None
        self.version += 1

    def graded(self) -> int:
        return sum(self.tally.summary(g).total for g in self.graders)

    def position(self, row: ResultRow) -> int | None:
        return self.positions.get(row.item_id)


# A result table's filter: everything, rows some grader failed, rows a given grader failed
# ("failing:<grader>"), rows some grader errored on.
ALL = "all"
FAILING = "failing"
ERRORED = "errored"


def result_filters(graders: Sequence[str]) -> list[str]:
    return [ALL, FAILING, *(f"{FAILING}:{g}" for g in graders), ERRORED]


def describe_filter(which: str) -> str:
    if which == ALL:
        return "all items"
    if which == FAILING:
        return "failing any grader"
    if which == ERRORED:
        return "a grader errored"
    return f"failing {which.partition(':')[2]}"


def _keep(row: ResultRow, which: str) -> bool:
    if which == ALL:
        return True
    if which == FAILING:
        return row.failing()
    if which == ERRORED:
        return any(g.passed is None for g in row.grades.values())
    return row.failing(which.partition(":")[2])


def result_view(rows: Sequence[ResultRow], which: str = ALL, sort: str | None = None) -> list[int]:
    """Indices of the rows to show: those `which` keeps, in item order or by `sort` grader's
    score, lowest first (errored and ungraded rows first of all: they need looking at)."""
    if which == ALL:
        shown = list(range(len(rows)))  # redrawn 12 times a second while 100,000 fill
    else:
        shown = [i for i, row in enumerate(rows) if _keep(row, which)]
    if sort is not None:

        def key(i: int) -> tuple[int, float]:
            grade = rows[i].grades.get(sort)
            if grade is None:
                return (0, 0.0)
            if grade.passed is None or grade.score is None:
                return (1, 0.0)
            return (2, grade.score)

        shown.sort(key=key)
    return shown


# -- comparisons -------------------------------------------------------------------------------


def pick_baseline(runs: Sequence[RunInfo]) -> int:
    """The run the others are measured against: the oldest student run, else the oldest."""
    ordered = sorted(runs, key=lambda r: r.id)
    students = [r for r in ordered if r.role.casefold() in ("student", "baseline")]
    return (students or ordered)[0].id


@dataclass(frozen=True)
class CompareChoice:
    eval_id: int
    run_ids: list[int]
    baseline_run_id: int


def run_row(run: RunInfo) -> str:
    """The report row a run stands for ("teacher", "baseline student"...; see `row_name`)."""
    return row_name(run.role, run.name, run.model)


def side_by_side(runs: Sequence[RunInfo]) -> list[int]:
    """The runs' ids in the order the recipe's report shows them: teacher, baseline student,
    pool-only student, fine-tuned student, then any other; oldest first within a row."""
    return [r.id for r in sorted(runs, key=lambda r: (row_rank(run_row(r)), r.id))]


def default_comparison(store: Store) -> CompareChoice | None:
    """What the Compare screen opens on: the eval graded most recently, over up to four runs
    of that dataset side by side — the baseline, then one run of each other row of the
    recipe's report (teacher, pool-only student, fine-tuned student...: the newest, graded
    and on the eval split first), then the other runs it has graded, then the newest it has not,
    so a new fine-tuned run shows up ready to be graded."""
    eval_runs = store.list_eval_runs()
    if not eval_runs:
        return None
    latest = eval_runs[0]
    dataset_id = store.get_run(latest.run_id).dataset_id
    graded = {er.run_id for er in eval_runs if er.eval_id == latest.eval_id}
    runs = [r for r in store.list_runs(dataset_id) if r.n_done]
    graded_runs = sorted((r for r in runs if r.id in graded), key=lambda r: r.id)
    if not graded_runs:
        return None
    baseline = pick_baseline(graded_runs)
    chosen = [baseline]
    baseline_row = run_row(next(r for r in graded_runs if r.id == baseline))
    for row in ROW_ORDER:
        kind = [r for r in runs if run_row(r) == row and r.id != baseline]
        if kind and row != baseline_row:
            best = max(kind, key=lambda r: (r.id in graded, r.split == "eval", r.id))
            chosen.append(best.id)
    chosen += [r.id for r in graded_runs if r.id not in chosen]
    chosen += sorted((r.id for r in runs if r.id not in chosen), reverse=True)
    picked = set(chosen[:4])
    return CompareChoice(
        latest.eval_id, side_by_side([r for r in runs if r.id in picked]), baseline
    )


def ungraded_runs(comparison: Comparison) -> list[int]:
    """Runs of a comparison with no finished eval run of its eval (to grade or resume)."""
    return [c.run_id for c in comparison.runs if c.eval_status != "done"]
