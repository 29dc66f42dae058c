"""Fine-tuning from the client's side: the training file from teacher outputs, the cookbook
checks before upload, and a real job on the local backend watched to the end."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.helpers.tiny_model import build_tiny_gguf
from tests.local.server_harness import client, model_id, start_thread_server
from tui.engine.datasets import ItemDraft
from tui.engine.finetune import (
    FineTuneError,
    Hyperparameters,
    JobWatcher,
    Source,
    TrainingSet,
    build_training_set,
    cancel_job,
    launch_job,
    metrics_series,
    unfinished_jobs,
    validate_training_set,
)
from tui.engine.generation import Generator, RunSpec, SamplingParams, create_run
from tui.engine.settings import Price
from tui.engine.store import Store

STUDENT_PROMPT = "Reply with one git command."


def teacher_run(store: Store, n: int = 40, eval_every: int = 0) -> tuple[int, int]:
    verbs = [
        ("Create a new branch called", "git branch"),
        ("Delete the branch", "git branch -d"),
        ("Switch to the branch", "git switch"),
        ("Push the branch", "git push origin"),
    ]
    pairs = [(f"{verbs[i % 4][0]} 'topic-{i}'.", f"{verbs[i % 4][1]} topic-{i}") for i in range(n)]
    drafts = [
        ItemDraft(q, a, "eval" if eval_every and i % eval_every == 0 else "train")
        for i, (q, a) in enumerate(pairs)
    ]
    dataset = store.create_dataset("git", "teacher prompt", drafts)
    completions = [
        (item.id, {"output": item.reference, "status": "done", "finish_reason": "stop"})
        for item in store.items(dataset)
    ]
    run_id = store.add_finished_run(
        completions,
        dataset_id=dataset,
        model="teacher",
        role="teacher",
        params={"few_shot": [["example request", "git example"]]},
        system_prompt="You are the teacher. Examples follow.",
    )
    return dataset, run_id


def test_examples_use_the_student_prompt_and_no_teacher_turns(store: Store) -> None:
    _, run_id = teacher_run(store)
    training = build_training_set(store, Source(run_id=run_id), system_prompt=STUDENT_PROMPT)
    for example in training.train + training.validation:
        roles = [m["role"] for m in example["messages"]]
        assert roles == ["system", "user", "assistant"]
        assert example["messages"][0]["content"] == STUDENT_PROMPT
        assert "example request" not in json.dumps(example)
    assert len(training.train) + len(training.validation) == 40
    assert len(training.validation) == 4  # 10 % by request
    assert training.warnings == []


def test_validation_never_shares_a_request_with_training(store: Store) -> None:
    dataset, run_id = teacher_run(store, n=30)
    # Same request (up to case and punctuation) answered twice.
    first = store.items(dataset)[0]
    extra = store.add_item(dataset, first.input.upper() + "!!", first.reference, "train")
    store.save_completion(run_id, extra.id, output=first.reference, status="done")
    training = build_training_set(
        store, Source(run_id=run_id), system_prompt=STUDENT_PROMPT, validation_fraction=0.3
    )
    train_requests = {e["messages"][1]["content"].casefold().strip("!") for e in training.train}
    valid_requests = {
        e["messages"][1]["content"].casefold().strip("!") for e in training.validation
    }
    assert not train_requests & valid_requests
    assert any("repeat a request" in w for w in training.warnings)


def test_leakage_and_empty_selection(store: Store) -> None:
    _, run_id = teacher_run(store, n=20, eval_every=4)
    training = build_training_set(store, Source(run_id=run_id), system_prompt=STUDENT_PROMPT)
    assert any("eval split" in w and "leakage" in w for w in training.warnings)
    empty = store.create_dataset("empty", items=[ItemDraft("x")])
    empty_run = store.create_run(dataset_id=empty, model="m")
    with pytest.raises(FineTuneError, match="no teacher outputs"):
        build_training_set(store, Source(run_id=empty_run), system_prompt="")


def test_outputs_cut_off_at_max_tokens_are_warned_about(store: Store) -> None:
    """A reply that stopped at max tokens teaches the student to stop mid-answer: the training
    set says how many it holds (for one-sample replies, whose finish reason is the label's)."""
    dataset, run_id = teacher_run(store, n=20)
    first, second = store.items(dataset)[:2]
    cut = {"status": "done", "finish_reason": "length"}
    store.save_completion(run_id, first.id, output="git branch topic-0 and then", **cut)
    voted = {"samples": json.dumps([second.reference, "git x"]), "confidence": 0.5}
    store.save_completion(run_id, second.id, output=second.reference, **cut, **voted)
    training = build_training_set(store, Source(run_id=run_id), system_prompt=STUDENT_PROMPT)
    (warning,) = [w for w in training.warnings if "cut off" in w]
    assert warning.startswith("1 example(s) are outputs cut off at max tokens")
    selection = build_training_set(
        store, Source(run_ids=(run_id,), completion_ids=None), system_prompt=STUDENT_PROMPT
    )
    assert any(w.startswith("1 example(s) are outputs cut off") for w in selection.warnings)


def test_a_selection_across_runs_trains_on_exactly_its_done_completions(store: Store) -> None:
    """Distill's selection: picked completions of two runs; a failed one and the rest of
    the runs are left out."""
    dataset, first = teacher_run(store, n=12)
    items = store.items(dataset)
    second = store.create_run(dataset_id=dataset, model="teacher-2", role="teacher")
    for item in items:
        store.save_completion(second, item.id, output=f"{item.reference} # 2", status="done")
    store.save_completion(second, items[0].id, output="", status="failed", error="boom")
    picked = [r.id for r in store.completions(first)[:5]]
    picked += [r.id for r in store.completions(second)[:7]]  # the first of these failed
    training = build_training_set(
        store,
        Source(run_ids=(first, second), completion_ids=picked),
        system_prompt=STUDENT_PROMPT,
        validation_fraction=0,
    )
    answers = sorted(e["messages"][2]["content"] for e in training.train)
    want = [i.reference for i in items[:5]] + [f"{i.reference} # 2" for i in items[1:7]]
    assert answers == sorted(want)
    assert training.dataset_id == dataset
    assert any("repeat a request" in w for w in training.warnings)  # both runs answered #2-#5


def test_cookbook_errors_are_named_and_counted() -> None:
    good = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    bad = [
        {"messages": [{"role": "user", "content": "a"}]},  # no assistant message
        {"messages": [{"role": "robot", "content": "a"}, {"role": "assistant", "content": "b"}]},
        {"messages": [{"role": "user"}, {"role": "assistant", "content": "b"}]},
    ]
    report = validate_training_set(TrainingSet([good] * 10 + bad, []))
    assert not report.ok
    errors = report.errors()
    for name in ("example_missing_assistant_message", "unrecognized_role", "missing_content"):
        assert name in errors
    few = validate_training_set(TrainingSet([good] * 3, []))
    assert not few.ok and "too_few_examples" in few.errors()


def test_token_figures_and_cost_estimate() -> None:
    example = {
        "messages": [
            {"role": "system", "content": STUDENT_PROMPT},
            {"role": "user", "content": "Create a branch called dev."},
            {"role": "assistant", "content": "git branch dev"},
        ]
    }
    v = validate_training_set(TrainingSet([example] * 50, []), price=Price(training=3.0))
    assert v.ok and v.stats is not None
    assert v.tokens_are_estimates
    assert v.stats.n_epochs == 3  # 50 examples × 3 epochs ≥ 100: the default 3
    assert v.cost == pytest.approx(v.stats.trained_tokens * 3.0 / 1e6)
    assert v.stats.assistant_tokens.mean > 0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("ft")
    gguf = build_tiny_gguf(root / "tiny-student.gguf")
    running = start_thread_server(root / "ws", [gguf])
    yield running
    running.stop()


async def test_refused_before_upload(server: Any, store: Store) -> None:
    bad = TrainingSet([{"messages": [{"role": "user", "content": "a"}]}] * 12, [])
    async with client(server.url) as c:
        before = len((await c.files.list()).data)
        with pytest.raises(FineTuneError, match="example_missing_assistant_message"):
            await launch_job(store, c, bad, base_model="smollm2-135m-instruct")
        assert len((await c.files.list()).data) == before
    assert store.list_jobs() == []


async def test_a_real_job_end_to_end(server: Any, store: Store) -> None:
    dataset, run_id = teacher_run(store, n=24)
    training = build_training_set(store, Source(run_id=run_id), system_prompt=STUDENT_PROMPT)
    async with client(server.url) as c:
        tiny = model_id((await c.models.list()).data, "tiny-student")
        job = await launch_job(
            store,
            c,
            training,
            base_model=tiny,
            hyperparameters=Hyperparameters(n_epochs=2, batch_size=8),
            suffix="git",
            seed=1,
        )
        # Recorded the moment the id came back, before any polling, as a job still to watch:
        # an app stopped now finds it at its next start and polls it again.
        recorded = store.get_job(job.id)
        assert recorded.remote_id.startswith("ftjob-") and not recorded.finished
        assert [j.id for j in unfinished_jobs(store)] == [job.id]
        assert [j.id for j in unfinished_jobs(store, str(c.base_url))] == [job.id]
        assert unfinished_jobs(store, "http://127.0.0.1:9/v1") == []  # another backend's
        # The local backend listens on a new port each start; its server keeps the jobs.
        assert [j.id for j in unfinished_jobs(store, "http://127.0.0.1:9/v1", any_port=True)] == [
            job.id
        ]
        assert unfinished_jobs(store, "http://10.0.0.9:9/v1", any_port=True) == []

        updates: list[Any] = []
        watcher = JobWatcher(store, c, interval=0.2)
        final = await watcher.watch(job.id, on_update=updates.append)
        assert final.status == "succeeded", final.error
        assert final.fine_tuned_model and final.fine_tuned_model.startswith(f"ft:{tiny}:")
        events = store.job_events(job.id)
        assert len({e.remote_id for e in events}) == len(events)  # none stored twice
        series = metrics_series(events)
        assert series["train_loss"] and series["valid_loss"]
        assert any(u.checkpoints for u in updates)

        # A watcher after an app restart resumes from the workspace and adds nothing twice.
        again = await JobWatcher(store, c).poll_once(job.id)
        assert again.new_events == []
        assert len(store.job_events(job.id)) == len(events)
        # When it ended is the backend's word, not when the workspace last heard of it (the
        # Fine-tune screen's clock of a job that ended while no app watched).
        remote = await c.fine_tuning.jobs.retrieve(job.remote_id)
        assert remote.finished_at is not None
        ended = datetime.fromtimestamp(remote.finished_at, UTC)
        assert again.job.finished_at is not None
        assert datetime.fromisoformat(again.job.finished_at) == ended
        assert datetime.fromisoformat(again.job.updated_at) >= ended

        # Step 7: generate with the fine-tuned model.
        run = create_run(
            store,
            RunSpec(
                dataset_id=dataset,
                model=final.fine_tuned_model,
                role="fine-tuned",
                system_prompt=STUDENT_PROMPT,
                params=SamplingParams(max_tokens=4, temperature=0),
                item_ids=[i.id for i in store.items(dataset)[:3]],
            ),
        )
        finished = await Generator(store, c, concurrency=2).run(run)
        assert finished.status == "done"
        assert all(r.status == "done" for r in store.completions(run))


async def test_cancel_a_job_then_cancel_it_again(server: Any, store: Store) -> None:
    """Cancelling is recorded from the backend's answer; a job already ended is left alone,
    and one that ended behind the workspace's back is named, not cancelled twice."""
    _, run_id = teacher_run(store, n=24)
    training = build_training_set(store, Source(run_id=run_id), system_prompt=STUDENT_PROMPT)
    async with client(server.url) as c:
        tiny = model_id((await c.models.list()).data, "tiny-student")
        job = await launch_job(store, c, training, base_model=tiny, suffix="stop")
        cancelled = await cancel_job(store, c, job.id)
        assert cancelled.status == "cancelled" and store.get_job(job.id).finished
        assert (await c.fine_tuning.jobs.retrieve(job.remote_id)).status == "cancelled"
        assert (await cancel_job(store, c, job.id)).status == "cancelled"  # asks nothing
        store.update_job(job.id, status="running")  # the workspace did not hear of the end
        with pytest.raises(FineTuneError, match=f"did not cancel {job.remote_id}"):
            await cancel_job(store, c, job.id)


async def test_a_backend_without_fine_tuning_says_so(store: Store) -> None:
    from tests.helpers.fake_openai import FakeOpenAI
    from tui.engine.finetune import FineTuneUnsupported

    _, run_id = teacher_run(store, n=20)
    training = build_training_set(store, Source(run_id=run_id), system_prompt=STUDENT_PROMPT)
    with FakeOpenAI() as fake:  # like a plain vLLM server: no /v1/files, no fine-tuning
        async with client(fake.base_url, key=fake.api_key) as c:
            with pytest.raises(FineTuneUnsupported, match="has no fine-tuning endpoint"):
                await launch_job(store, c, training, base_model="fake-model")
    assert store.list_jobs() == []
