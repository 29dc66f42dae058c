"""Eval runs over runs stored in a real SQLite workspace, judged through the fake OpenAI
server over real HTTP: grades and summaries stored, cancel and resume (each grade decided
once), backend failures redone, a fatal judge error, selections, comparisons, exports."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.helpers.fake_openai import Action, FakeOpenAI, last_user, server_error, slow, when
from tui.engine.datasets import ItemDraft
from tui.engine.evals import (
    BACKEND_ERROR,
    EvalFinished,
    EvalRunner,
    EvalStarted,
    GradesRecorded,
    compare,
    create_eval,
    export_results,
    highlight_differences,
    result_rows,
    start_eval_run,
    update_eval,
)
from tui.engine.graders import GraderConfigError
from tui.engine.settings import Price
from tui.engine.store import GraderSummary, Store, StoreError

REQUESTS = [
    ("Show the status.", "git status"),
    ("Create a branch called 'dev' and switch to it.", "git switch -c dev"),
    ("Force-push main to origin.", "git push --force origin main"),
    ("Commit everything with the message 'Fix bug'.", 'git commit -am "Fix bug"'),
    ("Delete the branch 'old', even if unmerged.", "git branch -D old"),
    ("List all tags.", "git tag"),
]
STUDENT = [
    "git status",  # exact
    "```bash\ngit checkout -b dev\n```",  # other subcommand
    "git push -f origin main",  # equivalent
    "git commit -a -m 'Fix bug'",  # equivalent
    "git branch -d old",  # missing --force
    "git tags",  # wrong subcommand
]
TEACHER = [
    "git status",
    "git switch -c dev",
    "git push --force origin main",
    'git commit -am "Fix bug"',
    "git branch -D old",
    "git tag --list",  # extra flag: a regression against... nothing; the student failed too
]
CPU_GRADERS = [
    {"type": "string_check", "name": "exact", "operation": "eq"},
    {"type": "command_match", "name": "command"},
]
JUDGE = {
    "type": "label_model",
    "name": "judge",
    "input": [
        {"role": "user", "content": "Request: {{item.input}}\nAnswer: {{sample.output_text}}"}
    ],
    "labels": ["pass", "fail"],
    "passing_labels": ["pass"],
}


def judge_reply(messages: Sequence[dict[str, Any]]) -> str:
    """Passes answers that contain the word 'switch' or 'status'; anything else fails."""
    text = last_user(messages)
    answer = text.split("Answer: ", 1)[1].split("\n\n", 1)[0]
    ok = "switch" in answer or "status" in answer
    return json.dumps({"label": "pass" if ok else "fail", "reason": "checked"})


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(reply=judge_reply, markers=False, models=("judge-model",)) as s:
        yield s


@pytest.fixture
def judge(server: FakeOpenAI) -> Iterator[FakeOpenAI]:
    server.reset()
    yield server


def client_for(server: FakeOpenAI) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.base_url, api_key=server.api_key)


def make_dataset(
    store: Store, requests: Sequence[tuple[str, str]] = REQUESTS, name: str = "git"
) -> int:
    return store.create_dataset(name, items=[ItemDraft(r, ref) for r, ref in requests])


def make_run(
    store: Store,
    dataset_id: int,
    outputs: Sequence[str | None],
    *,
    model: str = "student-model",
    role: str = "student",
    latency: float = 100.0,
) -> int:
    """A finished run; None stands for a failed completion (not graded)."""
    completions = []
    for item, output in zip(store.items(dataset_id), outputs, strict=True):
        values: dict[str, Any] = {
            "output": output or "",
            "status": "done" if output is not None else "failed",
            "latency_ms": latency,
            "prompt_tokens": 10,
            "completion_tokens": 5,
        }
        completions.append((item.id, values))
    return store.add_finished_run(completions, dataset_id=dataset_id, model=model, role=role)


def runner(store: Store, server: FakeOpenAI | None = None, **kw: Any) -> EvalRunner:
    kw.setdefault("judge_model", "judge-model")
    kw.setdefault("backoff_base", 0.01)
    return EvalRunner(store, client_for(server) if server else None, **kw)


def judge_key(request: str, output: str) -> str:
    """The last user message the judge gets for a completion (the fake's attempt key)."""
    return (
        f"Request: {request}\nAnswer: {output}\n\nReply with JSON only, in this form: "
        '{"label": "<one of: pass, fail>", "reason": "<one sentence>"}'
    )


# -- evals ---------------------------------------------------------------------------------


def test_evals_are_stored_validated_and_editable(store: Store) -> None:
    eval_id = create_eval(store, "git checks", json.dumps({"testing_criteria": CPU_GRADERS}))
    info = store.get_eval(eval_id)
    assert [g["name"] for g in info.graders] == ["exact", "command"]
    assert info.graders[0]["input"] == "{{sample.output_text}}"  # defaults made explicit

    with pytest.raises(GraderConfigError, match="grader 1 \\(x\\): operation"):
        create_eval(store, "broken", [{"type": "string_check", "name": "x", "operation": "?"}])
    assert store.eval_by_name("broken") is None
    with pytest.raises(StoreError, match="already exists"):
        create_eval(store, "git checks", CPU_GRADERS)

    update_eval(store, eval_id, name="git", graders=[*CPU_GRADERS, JUDGE])
    info = store.get_eval(eval_id)
    assert info.name == "git" and [g["name"] for g in info.graders][-1] == "judge"
    assert [e.name for e in store.list_evals()] == ["git"]

    dataset = make_dataset(store)
    run_id = make_run(store, dataset, STUDENT)
    start_eval_run(store, eval_id, run_id)
    store.delete_eval(eval_id)
    assert store.list_eval_runs() == []


# -- eval runs -------------------------------------------------------------------------------


async def test_eval_run_over_a_stored_run(store: Store, judge: FakeOpenAI) -> None:
    dataset = make_dataset(store)
    outputs: list[str | None] = [*STUDENT[:5], None]  # the last completion failed
    run_id = make_run(store, dataset, outputs)
    eval_id = create_eval(store, "git", [*CPU_GRADERS, JUDGE])
    eval_run_id = start_eval_run(store, eval_id, run_id)

    events: list[Any] = []
    grader_runner = runner(store, judge, concurrency=3)
    finished = await grader_runner.run(eval_run_id, on_event=events.append)

    assert finished.status == "done"
    assert isinstance(events[0], EvalStarted) and (events[0].total, events[0].todo) == (15, 15)
    assert isinstance(events[-1], EvalFinished)
    recorded = [g for e in events if isinstance(e, GradesRecorded) for g in e.grades]
    assert len(recorded) == 15

    grades = {(g.completion_id, g.grader): g for g in store.grades(eval_run_id)}
    assert len(grades) == 15  # 5 done completions × 3 graders; the failed one is not graded
    rows = result_rows(store, eval_run_id)
    assert [r.output for r in rows] == STUDENT[:5]
    verdicts = {
        name: [r.grades[name].passed for r in rows] for name in ("exact", "command", "judge")
    }
    assert verdicts == {
        "exact": [True, False, False, False, False],
        "command": [True, False, True, True, False],
        "judge": [True, False, False, False, False],
    }
    assert rows[4].grades["command"].detail == "flags differ: missing --force"
    assert rows[0].grades["judge"].detail == "label 'pass': checked"

    expected = {
        "exact": GraderSummary(1, 4, 0, 0.2),
        "command": GraderSummary(3, 2, 0, pytest.approx(rows[1].grades["command"].score)),
    }
    info = store.get_eval_run(eval_run_id)
    assert info.status == "done" and info.finished_at
    assert info.results["exact"] == expected["exact"]
    assert info.results["command"].passed == 3 and info.results["command"].failed == 2
    assert info.results["command"].pass_rate == pytest.approx(0.6)
    assert info.results["judge"] == GraderSummary(1, 4, 0, 0.2)
    assert finished.results == info.results
    assert finished.message == "15 grades: 5 passed, 10 failed, 0 errored"
    assert len(judge.chat_requests) == 5
    requests, prompt_tokens, completion_tokens = grader_runner.judge_usage
    assert requests == 5 and prompt_tokens > 0 and completion_tokens > 0


async def test_cancelled_eval_resumes_and_decides_each_grade_once(
    store: Store, judge: FakeOpenAI
) -> None:
    requests = [(f"Request number {i}.", f"git tag v{i}") for i in range(12)]
    dataset = make_dataset(store, requests)
    outputs = [f"git tag v{i}" if i % 2 else f"git tag -a v{i}" for i in range(12)]
    run_id = make_run(store, dataset, outputs)
    eval_id = create_eval(store, "git", [*CPU_GRADERS, JUDGE])
    eval_run_id = start_eval_run(store, eval_id, run_id)
    judge.policy = lambda ctx: slow(first_token=0.15)

    first = runner(store, judge, concurrency=2)
    judged_before: set[int] = set()

    def on_event(event: Any) -> None:
        if isinstance(event, GradesRecorded):
            judged_before.update(g.completion_id for g in event.grades if g.grader == "judge")
            if len(judged_before) >= 3:
                first.cancel()

    finished = await first.run(eval_run_id, on_event=on_event)
    assert finished.status == "cancelled"
    stored = store.grades(eval_run_id)
    judged = {g.completion_id for g in stored if g.grader == "judge"}
    assert judged == judged_before and 3 <= len(judged) < 12
    assert store.get_eval_run(eval_run_id).status == "cancelled"

    judge.policy = None
    events: list[Any] = []
    again = await runner(store, judge, concurrency=4).run(eval_run_id, on_event=events.append)
    assert again.status == "done"
    started = events[0]
    assert started.total == 36 and started.todo == 36 - len(stored)

    grades = store.grades(eval_run_id)
    assert len(grades) == 36
    assert len({(g.completion_id, g.grader) for g in grades}) == 36
    by_id = {c.id: c for c in store.completions(run_id)}
    for cid in judged:  # judged before the cancel: never asked again
        assert judge.count(judge_key(by_id[cid].input, by_id[cid].output)) == 1
    # Only the calls in flight at the cancel (2 at most) were made again.
    assert 12 <= len(judge.chat_requests) <= 12 + 2
    # Half the outputs are the reference (1.0); half add -a, an option the reference lacks:
    # the same subcommand (0.3), no option in common (0.35 × 0), the same arguments (0.35 × 1).
    extra_flag = 0.3 + 0.35 * 0 + 0.35 * 1
    assert store.get_eval_run(eval_run_id).results["command"] == GraderSummary(
        6, 6, 0, pytest.approx((6 * 1.0 + 6 * extra_flag) / 12)
    )

    # A third start has nothing left to do.
    third = await runner(store, judge).run(eval_run_id)
    assert third.status == "done" and "(36 decided before this start)" in third.message


async def test_judge_failures_are_errored_then_redone_on_resume(
    store: Store, judge: FakeOpenAI
) -> None:
    dataset = make_dataset(store)
    run_id = make_run(store, dataset, STUDENT)
    eval_id = create_eval(store, "judge only", [JUDGE])
    eval_run_id = start_eval_run(store, eval_id, run_id)
    judge.policy = when("git tags", server_error(500))

    finished = await runner(store, judge, max_retries=1).run(eval_run_id)
    assert finished.status == "done"
    assert finished.results["judge"] == GraderSummary(1, 4, 1, 0.2)
    (failed,) = [g for g in store.grades(eval_run_id) if g.passed is None]
    assert failed.detail.startswith(BACKEND_ERROR + "HTTP 500")
    assert "gave up after 2 attempts" in failed.detail

    judge.policy = None
    before = len(judge.chat_requests)
    again = await runner(store, judge).run(eval_run_id)
    assert len(judge.chat_requests) == before + 1  # only the errored one is asked again
    assert again.results["judge"] == GraderSummary(1, 5, 0, pytest.approx(1 / 6))


async def test_an_unreadable_judge_reply_stays_errored(store: Store, judge: FakeOpenAI) -> None:
    dataset = make_dataset(store)
    run_id = make_run(store, dataset, STUDENT)
    eval_run_id = start_eval_run(store, create_eval(store, "j", [JUDGE]), run_id)
    judge.policy = when("git tags", Action(reply="Honestly, hard to say."))
    finished = await runner(store, judge).run(eval_run_id)
    assert finished.results["judge"].errored == 1
    (bad,) = [g for g in store.grades(eval_run_id) if g.passed is None]
    assert "could not be read" in bad.detail and "Honestly, hard to say." in bad.detail
    before = len(judge.chat_requests)
    await runner(store, judge).run(eval_run_id)
    assert len(judge.chat_requests) == before  # an outcome, not a failure to redo


async def test_an_unknown_judge_model_stops_the_run_and_a_rerun_finishes_it(
    store: Store, judge: FakeOpenAI
) -> None:
    dataset = make_dataset(store)
    run_id = make_run(store, dataset, STUDENT)
    eval_run_id = start_eval_run(store, create_eval(store, "git", [*CPU_GRADERS, JUDGE]), run_id)

    finished = await runner(store, judge, judge_model="gpt-9").run(eval_run_id)
    assert finished.status == "failed"
    assert "judge: judge model 'gpt-9' not found at the backend" in finished.message
    grades = store.grades(eval_run_id)
    assert {g.grader for g in grades} == {"exact", "command"}  # the CPU grades are kept
    assert store.get_eval_run(eval_run_id).status == "failed"

    again = await runner(store, judge).run(eval_run_id)
    assert again.status == "done" and len(store.grades(eval_run_id)) == 18


async def test_eval_over_a_selection_of_completions(store: Store) -> None:
    dataset = make_dataset(store)
    run_id = make_run(store, dataset, STUDENT)
    other = make_run(store, dataset, TEACHER, model="teacher-model", role="teacher")
    eval_id = create_eval(
        store,
        "git",
        [
            *CPU_GRADERS,
            {
                "type": "python",
                "name": "short",
                "source": "def grade(sample, item):\n    return len(sample['output_text']) < 12\n",
            },
        ],
    )
    chosen = [c.id for c in store.completions(run_id)][:2]
    eval_run_id = start_eval_run(store, eval_id, completion_ids=chosen)
    assert store.get_eval_run(eval_run_id).run_id == run_id
    finished = await runner(store).run(eval_run_id)
    assert finished.status == "done"
    assert {g.completion_id for g in store.grades(eval_run_id)} == set(chosen)
    assert finished.results["short"] == GraderSummary(1, 1, 0, 0.5)

    mixed = [chosen[0], store.completions(other)[0].id]
    with pytest.raises(StoreError, match="one run"):
        start_eval_run(store, eval_id, completion_ids=mixed)
    with pytest.raises(StoreError, match="not completions of run"):
        start_eval_run(store, eval_id, run_id, completion_ids=mixed)


async def test_an_eval_run_keeps_the_graders_it_started_with(store: Store) -> None:
    dataset = make_dataset(store)
    run_id = make_run(store, dataset, STUDENT)
    eval_id = create_eval(store, "git", CPU_GRADERS)
    eval_run_id = start_eval_run(store, eval_id, run_id)
    update_eval(store, eval_id, graders=[{"type": "string_check", "name": "ne", "operation": "ne"}])
    finished = await runner(store).run(eval_run_id)
    assert list(finished.results) == ["exact", "command"]


# -- comparison and exports --------------------------------------------------------------------


async def test_compare_runs_side_by_side(store: Store) -> None:
    dataset = make_dataset(store)
    student = make_run(store, dataset, STUDENT, latency=100)
    teacher = make_run(store, dataset, TEACHER, model="gpt-4o", role="teacher", latency=300)
    tuned_outputs = [*STUDENT[:5], "git tag"]
    tuned_outputs[0] = "git status -s"  # regresses on both graders
    tuned = make_run(store, dataset, tuned_outputs, model="ft:student", role="fine-tuned")
    not_evaluated = make_run(store, dataset, STUDENT, model="other")
    eval_id = create_eval(store, "git", CPU_GRADERS)
    for run_id in (student, teacher, tuned):
        await runner(store).run(start_eval_run(store, eval_id, run_id))

    prices = {"gpt-4o": Price(input=2.5, output=10.0)}
    comparison = compare(
        store,
        eval_id,
        [student, teacher, tuned, not_evaluated],
        baseline_run_id=student,
        price=lambda model: prices.get(model, Price()),
    )
    assert comparison.graders == ["exact", "command"]
    columns = {c.run_id: c for c in comparison.runs}
    s, t, f, n = (columns[i] for i in (student, teacher, tuned, not_evaluated))
    assert s.pass_rates == {"exact": pytest.approx(1 / 6), "command": pytest.approx(3 / 6)}
    assert t.pass_rates == {"exact": pytest.approx(5 / 6), "command": pytest.approx(5 / 6)}
    assert t.deltas == {"exact": pytest.approx(4 / 6), "command": pytest.approx(2 / 6)}
    assert s.deltas == {"exact": None, "command": None}
    # tuned: "git status -s" fails both; "git tag" is exact: exact 1/6, command 3/6.
    assert f.pass_rates == {"exact": pytest.approx(1 / 6), "command": pytest.approx(3 / 6)}
    assert f.deltas == {"exact": pytest.approx(0.0), "command": pytest.approx(0.0)}
    assert n.eval_run_id is None and n.pass_rates == {"exact": None, "command": None}
    assert (s.mean_latency_ms, t.mean_latency_ms) == (100, 300)
    assert (t.prompt_tokens, t.completion_tokens) == (60, 30)
    assert t.cost == pytest.approx((60 * 2.5 + 30 * 10.0) / 1e6) and t.priced
    assert s.cost == 0 and not s.priced

    assert len(comparison.rows()) == 6
    regressions = comparison.rows("regressions")
    assert [r.input for r in regressions] == ["Show the status."]
    assert regressions[0].regressions == {tuned: ["exact", "command"]}
    improvements = {r.input: r.improvements for r in comparison.rows("improvements")}
    assert improvements["List all tags."] == {tuned: ["exact", "command"]}
    assert improvements["Force-push main to origin."] == {teacher: ["exact"]}
    assert all(r.differ for r in comparison.rows("differ"))
    first = comparison.rows()[0]
    assert first.cells[student].output == "git status"
    assert first.cells[tuned].passed == {"exact": False, "command": False}

    other_dataset = make_dataset(store, [("x", "y")], name="other")
    elsewhere = make_run(store, other_dataset, ["y"])
    with pytest.raises(StoreError, match="same dataset"):
        compare(store, eval_id, [student, elsewhere], student)
    with pytest.raises(StoreError, match="baseline"):
        compare(store, eval_id, [student], teacher)


def test_differences_are_highlighted_word_by_word() -> None:
    left, right = highlight_differences("git push origin master", "git push origin main")
    assert left == [("git push origin ", False), ("master", True)]
    assert right == [("git push origin ", False), ("main", True)]
    assert highlight_differences("", "x") == ([], [("x", True)])


async def test_export_results_as_csv_and_jsonl(store: Store, tmp_path: Path) -> None:
    dataset = make_dataset(store)
    run_id = make_run(store, dataset, STUDENT)
    eval_run_id = start_eval_run(store, create_eval(store, "git", CPU_GRADERS), run_id)
    await runner(store).run(eval_run_id)

    assert export_results(store, eval_run_id, tmp_path / "r.csv") == 6
    with (tmp_path / "r.csv").open(encoding="utf-8", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert table[1]["output"] == STUDENT[1]  # multi-line output survives
    assert table[4]["command result"] == "fail"
    assert table[4]["command explanation"] == "flags differ: missing --force"
    assert table[0]["exact score"] == "1.0"

    assert export_results(store, eval_run_id, tmp_path / "r.jsonl") == 6
    records = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert records[2]["grades"]["command"] == {
        "score": 1.0,
        "result": "pass",
        "explanation": "equivalent to the reference",
    }
