"""What the Evals and Compare screens show, without the screens: presets added twice, the
selection split by run and its eval run found again, a live table's tallies, filters and
sorting, and the comparison the Compare screen opens on."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.tui.eval_data import GIT_GRADERS, ITEMS, OUTPUTS, VERDICTS, build
from tui.engine.datasets import ItemDraft
from tui.engine.eval_views import (
    ALL,
    ERRORED,
    FAILING,
    LiveResults,
    Tally,
    add_graders,
    default_comparison,
    find_eval_run,
    grader_presets,
    result_view,
    selection_targets,
    ungraded_runs,
)
from tui.engine.evals import EvalRunner, compare, create_eval, result_rows, start_eval_run
from tui.engine.selection import CompletionSelection
from tui.engine.store import GradeRow, Item, Store


def test_the_fixed_workspace_is_graded_as_its_verdicts_say(tmp_path: Path) -> None:
    """The screens' tests derive their figures from eval_data's hand-made verdicts; here the
    graders must agree with them, output by output."""
    store = Store.open(tmp_path / "ws")
    try:
        work = build(store)
        eval_id = create_eval(store, "git", GIT_GRADERS)
        for role, run_id in work.runs.items():
            eval_run_id = start_eval_run(store, eval_id, run_id)
            asyncio.run(EvalRunner(store).run(eval_run_id))
            rows = result_rows(store, eval_run_id)
            assert [r.output for r in rows] == list(OUTPUTS[role])
            got = [(r.grades["command match"].passed, r.grades["exact match"].passed) for r in rows]
            assert got == list(VERDICTS[role]), role
    finally:
        store.close()


def test_presets_added_twice_get_distinct_names() -> None:
    git = next(p for p in grader_presets() if p.name == "command match + exact")
    graders = add_graders([], git.graders)
    graders = add_graders(graders, git.graders)
    assert [g["name"] for g in graders] == [
        "command match",
        "exact match",
        "command match 2",
        "exact match 2",
    ]
    judges = {p.name: p.graders[0]["type"] for p in grader_presets()}
    assert judges["criteria match"] == "label_model"
    assert judges["custom prompt"] == "score_model"


def test_tally_replaces_a_grade_given_again() -> None:
    tally = Tally(["g"])
    tally.add(GradeRow(1, "g", None, None, "backend error: 503"))
    assert tally.summary("g").errored == 1
    tally.replace(GradeRow(1, "g", None, None, "x"), GradeRow(1, "g", 0.5, False, "ok"))
    summary = tally.summary("g")
    assert (summary.passed, summary.failed, summary.errored) == (0, 1, 0)
    assert summary.mean_score == 0.5


def test_selection_targets_eval_runs_and_views(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "ws")
    try:
        work = build(store, roles=("student", "teacher"))
        student, teacher = work.runs["student"], work.runs["teacher"]
        eval_id = create_eval(store, "git", GIT_GRADERS)
        picked = [c.id for c in store.completions(student)][:3]
        picked += [c.id for c in store.completions(teacher)][:2]
        selection = CompletionSelection((student, teacher), tuple(picked), "some")
        targets = selection_targets(store, selection)
        assert [(t.run_id, len(t.completion_ids or ())) for t in targets] == [
            (student, 3),
            (teacher, 2),
        ]
        assert find_eval_run(store, eval_id, targets[0]) is None
        eval_run_id = start_eval_run(
            store, eval_id, student, completion_ids=list(targets[0].completion_ids or [])
        )
        asyncio.run(EvalRunner(store).run(eval_run_id))
        found = find_eval_run(store, eval_id, targets[0])
        assert found is not None and found.id == eval_run_id
        assert find_eval_run(store, eval_id, targets[1]) is None  # another run's selection

        live = LiveResults.load(store, eval_run_id)
        assert [live.position(r) for r in live.rows] == [1, 2, 3]
        assert result_view(live.rows, ALL) == [0, 1, 2]
        assert result_view(live.rows, FAILING) == [1, 2]  # item 1 ("git status") passes
        assert result_view(live.rows, f"{FAILING}:command match") == [1, 2]
        assert result_view(live.rows, ERRORED) == []
        by_score = result_view(live.rows, ALL, sort="command match")
        scores = [live.rows[i].grades["command match"].score for i in by_score]
        assert scores == sorted(scores)  # type: ignore[type-var]

        # Compare opens on the eval just graded, baseline the student, with the ungraded
        # teacher beside it (first, as in the recipe's report), ready for one key to grade it.
        choice = default_comparison(store)
        assert choice is not None
        assert choice.run_ids == [teacher, student] and choice.baseline_run_id == student
        comparison = compare(store, choice.eval_id, choice.run_ids, choice.baseline_run_id)
        assert ungraded_runs(comparison) == [teacher]
    finally:
        store.close()


def test_compare_opens_on_the_recipes_rows_with_the_teacher(tmp_path: Path) -> None:
    """After `distill-tui run`: the teacher's eval run, the untuned, pool-only and fine-tuned
    students side by side as the report shows them — not the rounds' validation runs, nor
    the teacher's labels of the train split (graded by the gate's eval)."""
    store = Store.open(tmp_path / "ws")
    try:
        train = [ItemDraft(f"train request {i}", f"git train-{i}", "train") for i in range(4)]
        drafts = [ItemDraft(request, reference, "eval") for request, reference in ITEMS]
        dataset_id = store.create_dataset("git", "", [*drafts, *train])
        items = store.items(dataset_id)
        eval_items, train_items = items[: len(ITEMS)], items[len(ITEMS) :]

        def run(
            name: str, role: str, model: str, on: list[Item], outputs: tuple[str, ...], split: str
        ) -> int:
            pairs = zip(on, outputs, strict=True)
            done = [(item.id, {"output": output, "status": "done"}) for item, output in pairs]
            return store.add_finished_run(
                done, dataset_id=dataset_id, name=name, role=role, model=model, split=split
            )

        ft = "ft:smollm2:local:distill-r1:1"
        main = create_eval(store, "git", GIT_GRADERS)
        gate = create_eval(store, "gate", [GIT_GRADERS[0]])
        baseline = run(
            "recipe: student (eval)", "student", "smollm2", eval_items, OUTPUTS["student"], "eval"
        )
        pool_only = run(
            "recipe: pool-only student (eval)",
            "fine-tuned",
            "ft:smollm2:pool",
            eval_items,
            OUTPUTS["student"],
            "eval",
        )
        labels = run(
            "recipe: teacher, round 1 (train)",
            "teacher",
            "smollm2",
            train_items,
            ("git x",) * 4,
            "",
        )
        validation = run(
            "recipe: round 1 student (pool validation)",
            "fine-tuned",
            ft,
            train_items[:2],
            ("git x",) * 2,
            "",
        )
        teacher = run(
            "recipe: teacher of round 1 (eval)",
            "teacher",
            "smollm2",
            eval_items,
            OUTPUTS["teacher"],
            "eval",
        )
        tuned = run(
            "recipe: fine-tuned student (eval)",
            "fine-tuned",
            ft,
            eval_items,
            OUTPUTS["fine-tuned"],
            "eval",
        )

        async def grade() -> None:
            await EvalRunner(store).run(start_eval_run(store, gate, labels))
            for run_id in (baseline, pool_only, validation, teacher, tuned):
                await EvalRunner(store).run(start_eval_run(store, main, run_id))

        asyncio.run(grade())
        choice = default_comparison(store)
        assert choice is not None and choice.eval_id == main
        assert choice.run_ids == [teacher, baseline, pool_only, tuned]
        assert choice.baseline_run_id == baseline
    finally:
        store.close()
