"""What a training-set source keeps and why it leaves the rest out (`training_set_report`),
checked against what `build_training_set` really puts in the files: a teacher run's labels
gated by an eval run and by the teacher's vote share, a dataset's own references as the
teacher, the labelled pool's references beside a run's labels, and Distill's selection."""

from __future__ import annotations

import pytest

from tui.engine.datasets import ItemDraft
from tui.engine.finetune import (
    BELOW_CONFIDENCE,
    EMPTY,
    FAILED_GATE,
    NO_REFERENCE,
    NOT_FINISHED,
    NOT_GRADED,
    FineTuneError,
    Source,
    TrainingSetReport,
    build_training_set,
    training_set_report,
)
from tui.engine.store import Store

N = 20


def examples(store: Store, source: Source) -> int:
    training = build_training_set(store, source, system_prompt="s", validation_fraction=0.1)
    return len(training.train) + len(training.validation)


def teacher(store: Store) -> tuple[int, int, int]:
    """20 requests labelled by a teacher that sampled 4 times a request:
    #0 failed, #1 cancelled, #2 an empty vote, #3–#5 only 2 of 4 samples agreed (0.5), the
    rest 4 of 4 (1.0); an eval run passed #6–#15, failed #16–#18 and never graded #19."""
    drafts = [
        ItemDraft(f"Create the branch topic-{i}", f"git branch topic-{i}", "train")
        for i in range(N)
    ]
    dataset = store.create_dataset("git", "Reply with one git command.", drafts)
    run = store.create_run(
        dataset_id=dataset,
        model="gpt-4o",
        role="teacher",
        params={"samples": 4, "vote": "normalised"},
    )
    items = store.items(dataset)
    for n, item in enumerate(items):
        status = {0: "failed", 1: "cancelled"}.get(n, "done")
        output = "" if n in (0, 1, 2) else f"git branch topic-{n}"
        confidence = 0.0 if n == 2 else 0.5 if n in (3, 4, 5) else 1.0
        store.save_completion(
            run, item.id, output=output, status=status, confidence=confidence, samples="[]"
        )
    rows = {r.item_id: r.id for r in store.completions(run)}
    eval_id = store.create_eval("gate", [{"type": "python", "name": "one command"}])
    gate = store.create_eval_run(eval_id, run, [{"type": "python", "name": "one command"}])
    grades = [(rows[items[n].id], "one command", 1.0, True, "") for n in range(2, 16)]
    grades += [(rows[items[n].id], "one command", 0.0, False, "") for n in range(16, 19)]
    store.save_grades(gate, grades)
    return dataset, run, gate


def test_a_teacher_runs_labels_and_why_the_rest_were_dropped(store: Store) -> None:
    _, run, gate = teacher(store)

    plain = training_set_report(store, Source(run_id=run))
    assert plain.considered == N
    assert plain.dropped == {NOT_FINISHED: 2, EMPTY: 1}
    assert plain.kept == examples(store, Source(run_id=run)) == 17

    confident = Source(run_id=run, min_confidence=0.75)
    report = training_set_report(store, confident)
    assert report.dropped == {NOT_FINISHED: 2, BELOW_CONFIDENCE: 3, EMPTY: 1}
    assert report.kept == examples(store, confident) == 14

    gated = Source(run_id=run, passing_eval_run_id=gate, min_confidence=0.75)
    report = training_set_report(store, gated)
    # #2 passed the gate but is empty; #3–#5 passed it but are below the confidence.
    assert report.dropped == {
        NOT_FINISHED: 2,
        EMPTY: 1,
        BELOW_CONFIDENCE: 3,
        FAILED_GATE: 3,
        NOT_GRADED: 1,
    }
    assert report.kept == examples(store, gated) == 10
    assert report.note() == (
        f"kept 10 of 20 completions · dropped: 2 not finished, "
        f"1 not graded by the gate (eval run {gate}), 3 failed the gate (eval run {gate}), "
        "3 below confidence 75%, 1 empty"
    )


def test_the_pools_references_count_beside_the_labels(store: Store) -> None:
    dataset, run, gate = teacher(store)
    items = store.items(dataset)
    # The pool: #0 (its label failed: the reference stands in), #16 (failed the gate: the
    # reference stands in) and #10 (its label is kept: the reference is not added).
    pool = [items[0].id, items[16].id, items[10].id]
    source = Source(run_id=run, passing_eval_run_id=gate, reference_item_ids=pool)
    report = training_set_report(store, source)
    assert report.references == 2
    assert report.kept == examples(store, source) == 13 + 2
    assert "kept 13 of 20 completions + 2 references of the labelled pool" in report.note()


def test_references_as_the_teacher(store: Store) -> None:
    drafts = [ItemDraft(f"r{i}", "" if i % 4 == 0 else f"git r{i}", "train") for i in range(12)]
    dataset = store.create_dataset("refs", items=drafts)
    report = training_set_report(store, Source(dataset_id=dataset))
    assert (report.kept, report.considered, report.unit) == (9, 12, "items")
    assert report.dropped == {NO_REFERENCE: 3}
    assert report.kept == examples(store, Source(dataset_id=dataset))
    assert report.note() == "kept 9 of 12 items · dropped: 3 no reference"
    some = [i.id for i in store.items(dataset)[:4]]
    assert training_set_report(store, Source(dataset_id=dataset, reference_item_ids=some)) == (
        TrainingSetReport(3, 4, {NO_REFERENCE: 1}, unit="items")
    )
    with pytest.raises(FineTuneError, match="choose a run"):
        training_set_report(store, Source())


def test_a_selection_counts_only_its_own_completions(store: Store) -> None:
    _, run, _ = teacher(store)
    rows = store.completions(run)
    picked = [r.id for r in rows[:6]]  # failed, cancelled, empty, three kept
    source = Source(run_ids=(run,), completion_ids=picked)
    report = training_set_report(store, source)
    assert report.considered == 6
    assert report.dropped == {NOT_FINISHED: 2, EMPTY: 1}
    assert report.kept == examples(store, source) == 3
