"""Files and fine-tuning jobs through the openai SDK over real HTTP: uploads, the cookbook's
format errors failing a job in validating_files, a complete (tiny, real) fine-tune whose
model is then served, cancelling, and a server killed while a job runs."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.helpers.tiny_model import build_tiny_gguf, git_pairs
from tests.local.server_harness import (
    TERMINAL,
    client,
    model_id,
    start_process_server,
    start_thread_server,
    wait_job,
)
from tui.engine.host import pid_alive
from tui.local.db import LocalDB

SYSTEM = "Reply with the git command only."


def example(request: str, command: str) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": request},
            {"role": "assistant", "content": command},
        ]
    }


def jsonl(rows: list[Any]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def good_file(n: int = 12, seed: int = 0) -> bytes:
    return jsonl([example(q, a) for q, a in git_pairs(n, seed=seed)])


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gguf(tmp_path_factory.mktemp("model") / "tiny-ft.gguf")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Iterator[Any]:
    ws = tmp_path_factory.mktemp("jobs") / "ws"
    running = start_thread_server(ws, [tiny_gguf])
    running.workspace = ws
    yield running
    running.stop()


@pytest.fixture
async def c(server: Any) -> AsyncIterator[openai.AsyncOpenAI]:
    async with client(server.url) as cl:
        yield cl


@pytest.fixture
async def tiny(c: openai.AsyncOpenAI) -> str:
    return model_id((await c.models.list()).data, "tiny-ft")


# ---- files ----------------------------------------------------------------


async def test_file_upload_list_retrieve_content_delete(c: openai.AsyncOpenAI) -> None:
    data = good_file()
    f = await c.files.create(file=("train.jsonl", data), purpose="fine-tune")
    assert f.object == "file"
    assert f.bytes == len(data)
    assert f.filename == "train.jsonl"
    assert f.purpose == "fine-tune"
    assert f.status == "processed"
    assert f.created_at > 0

    got = await c.files.retrieve(f.id)
    assert got.model_dump() == f.model_dump()
    content = await c.files.content(f.id)
    assert content.read() == data

    g = await c.files.create(file=("other.jsonl", b"{}\n"), purpose="user_data")
    listed = [x.id for x in (await c.files.list()).data]
    assert listed.index(g.id) < listed.index(f.id)  # newest first, as OpenAI lists files
    only_ft = [x.id for x in (await c.files.list(purpose="fine-tune")).data]
    assert f.id in only_ft and g.id not in only_ft
    oldest_first = [x.id for x in (await c.files.list(order="asc")).data]
    assert oldest_first.index(f.id) < oldest_first.index(g.id)
    page = await c.files.list(limit=1, order="asc", after=f.id)
    assert page.data[0].id != f.id

    deleted = await c.files.delete(g.id)
    assert deleted.deleted is True and deleted.id == g.id
    with pytest.raises(openai.NotFoundError):
        await c.files.retrieve(g.id)
    assert g.id not in [x.id for x in (await c.files.list()).data]


# ---- job creation errors ----------------------------------------------------------------


async def test_job_create_rejects_bad_requests(c: openai.AsyncOpenAI, tiny: str) -> None:
    f = await c.files.create(file=("t.jsonl", good_file()), purpose="fine-tune")
    other = await c.files.create(file=("u.jsonl", good_file()), purpose="user_data")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"model": "gpt-99", "training_file": f.id}, "model"),
        ({"model": tiny, "training_file": "file-missing"}, "training_file"),
        ({"model": tiny, "training_file": other.id}, "training_file"),
        ({"model": tiny, "training_file": f.id, "validation_file": "file-x"}, "validation_file"),
        ({"model": tiny, "training_file": f.id, "suffix": "bad:suffix"}, "suffix"),
        ({"model": tiny, "training_file": f.id, "method": {"type": "dpo"}}, "method.type"),
        (
            {"model": tiny, "training_file": f.id, "hyperparameters": {"n_epochs": 0}},
            "hyperparameters.n_epochs",
        ),
        (
            {
                "model": tiny,
                "training_file": f.id,
                "method": {
                    "type": "supervised",
                    "supervised": {"hyperparameters": {"batch_size": 1000}},
                },
            },
            "hyperparameters.batch_size",
        ),
        (
            {
                "model": tiny,
                "training_file": f.id,
                "hyperparameters": {"n_epochs": 1},
                "method": {"type": "supervised", "supervised": {"hyperparameters": {}}},
            },
            "hyperparameters",
        ),
        (
            {
                "model": tiny,
                "training_file": f.id,
                "hyperparameters": {"learning_rate_multiplier": "fast"},
            },
            "hyperparameters.learning_rate_multiplier",
        ),
    ]
    for kwargs, param in cases:
        with pytest.raises(openai.BadRequestError) as err:
            await c.fine_tuning.jobs.create(**kwargs)
        assert err.value.param == param, kwargs


# ---- cookbook format errors fail the job in validating_files ------------------------------------

_ok = example("Show the status.", "git status")
FORMAT_ERRORS: dict[str, bytes] = {
    "example_missing_assistant_message": jsonl(
        [_ok] * 10 + [{"messages": [{"role": "user", "content": "hi"}]}]
    ),
    "unrecognized_role": jsonl(
        [_ok] * 10
        + [{"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}]
    ),
    "missing_content": jsonl(
        [_ok] * 10
        + [{"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "y"}]}]
    ),
    "too_few_examples": jsonl([_ok] * 3),
    "invalid_json": jsonl([_ok] * 10) + b"this is not json\n",
    "missing_messages_list": jsonl([_ok] * 10 + [{"prompt": "x", "completion": "y"}]),
    "message_missing_key": jsonl(
        [_ok] * 10 + [{"messages": [{"content": "x"}, {"role": "assistant", "content": "y"}]}]
    ),
    "message_unrecognized_key": jsonl(
        [_ok] * 10
        + [
            {
                "messages": [
                    {"role": "user", "content": "x", "mood": "happy"},
                    {"role": "assistant", "content": "y"},
                ]
            }
        ]
    ),
    "data_type": jsonl([_ok] * 10 + [["not", "an", "object"]]),
}


@pytest.mark.parametrize("error", sorted(FORMAT_ERRORS))
async def test_format_error_fails_job_in_validation(
    c: openai.AsyncOpenAI, tiny: str, error: str
) -> None:
    f = await c.files.create(file=(f"{error}.jsonl", FORMAT_ERRORS[error]), purpose="fine-tune")
    job = await c.fine_tuning.jobs.create(model=tiny, training_file=f.id)
    assert job.status == "validating_files"
    job = await wait_job(c, job.id, timeout=30)
    assert job.status == "failed"
    assert job.error is not None
    assert job.error.code == "invalid_training_file"
    assert job.error.param == "training_file"
    assert error in job.error.message
    assert job.fine_tuned_model is None
    assert job.finished_at is not None
    events = (await c.fine_tuning.jobs.list_events(job.id)).data
    assert events[0].level == "error" and error in events[0].message
    # It never reached training.
    assert not any(e.message == "Fine-tuning job started" for e in events)


async def test_not_utf8_training_file_fails_validation(c: openai.AsyncOpenAI, tiny: str) -> None:
    f = await c.files.create(file=("bin.jsonl", b"\xff\xfe\x00garbage"), purpose="fine-tune")
    job = await wait_job(c, (await c.fine_tuning.jobs.create(model=tiny, training_file=f.id)).id)
    assert job.status == "failed"
    assert job.error is not None and job.error.code == "invalid_training_file"


# ---- a real fine-tune on the tiny model ---------------------------------------------------------


async def test_complete_fine_tune_then_chat_with_the_model(
    c: openai.AsyncOpenAI, tiny: str
) -> None:
    train = await c.files.create(file=("train.jsonl", good_file(24, seed=1)), purpose="fine-tune")
    valid = await c.files.create(file=("valid.jsonl", good_file(6, seed=2)), purpose="fine-tune")
    job = await c.fine_tuning.jobs.create(
        model=tiny,
        training_file=train.id,
        validation_file=valid.id,
        suffix="unit",
        seed=3,
        metadata={"case": "complete"},
        method={
            "type": "supervised",
            "supervised": {
                "hyperparameters": {
                    "n_epochs": 2,
                    "batch_size": 8,
                    "learning_rate_multiplier": "auto",
                }
            },
        },
    )
    assert job.object == "fine_tuning.job"
    assert job.id.startswith("ftjob-")
    assert job.model == tiny
    assert job.seed == 3
    assert job.training_file == train.id and job.validation_file == valid.id
    assert job.metadata == {"case": "complete"}

    seen = {job.status}
    deadline = time.monotonic() + 300
    while job.status not in TERMINAL and time.monotonic() < deadline:
        job = await c.fine_tuning.jobs.retrieve(job.id)
        seen.add(job.status)
    assert job.status == "succeeded", job.error
    assert "running" in seen or "queued" in seen
    assert job.error is None
    assert job.finished_at is not None and job.finished_at >= job.created_at
    assert job.trained_tokens and job.trained_tokens > 0
    assert job.fine_tuned_model is not None
    base = tiny
    prefix = f"ft:{base}:local:unit:"
    assert job.fine_tuned_model.startswith(prefix)
    assert len(job.fine_tuned_model) == len(prefix) + 8
    assert job.hyperparameters.n_epochs == 2
    assert job.hyperparameters.batch_size == 8
    # "auto" is resolved once training starts, as OpenAI reports it.
    assert isinstance(job.hyperparameters.learning_rate_multiplier, float)
    assert job.method is not None and job.method.supervised is not None
    assert job.method.supervised.hyperparameters is not None
    assert job.method.supervised.hyperparameters.n_epochs == 2
    assert job.result_files and len(job.result_files) == 1
    csv_text = (await c.files.content(job.result_files[0])).read().decode()
    assert csv_text.startswith("step,train_loss")

    events = [e async for e in c.fine_tuning.jobs.list_events(job.id, limit=5)]
    assert events[0].created_at >= events[-1].created_at  # newest first
    messages = [e.message for e in events]
    assert messages[0] == "The job has successfully completed"
    assert "Validating training file: " + train.id in messages
    assert "Files validated, moving job to queued state" in messages
    assert "Fine-tuning job started" in messages
    metrics = [e for e in events if e.type == "metrics"]
    assert metrics, messages
    data = metrics[0].data
    assert isinstance(data, dict)
    assert data["step"] >= 1 and data["total_steps"] >= data["step"]
    assert isinstance(data["train_loss"], float)
    assert any("valid_loss" in e.data for e in metrics if isinstance(e.data, dict))

    checkpoints = (await c.fine_tuning.jobs.checkpoints.list(job.id)).data
    assert checkpoints
    ck = checkpoints[0]
    assert ck.object == "fine_tuning.job.checkpoint"
    assert ck.fine_tuning_job_id == job.id
    assert ck.fine_tuned_model_checkpoint.startswith(job.fine_tuned_model + ":ckpt-step-")
    assert ck.metrics.train_loss is not None
    assert ck.step_number >= 1

    listed = [j.id for j in (await c.fine_tuning.jobs.list(limit=100)).data]
    assert job.id in listed
    filtered = [j.id for j in (await c.fine_tuning.jobs.list(metadata={"case": "complete"})).data]
    assert filtered == [job.id]

    models = [m.id for m in (await c.models.list()).data]
    assert job.fine_tuned_model in models
    model = await c.models.retrieve(job.fine_tuned_model)
    assert model.owned_by
    r = await c.chat.completions.create(
        model=job.fine_tuned_model,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Push dev."}],
        max_tokens=4,
        temperature=0,
    )
    assert r.model == job.fine_tuned_model
    assert r.usage is not None and r.usage.completion_tokens >= 1

    # A finished job cannot be cancelled.
    with pytest.raises(openai.BadRequestError):
        await c.fine_tuning.jobs.cancel(job.id)


async def test_cancel_running_and_queued_jobs(
    c: openai.AsyncOpenAI, tiny: str, server: Any
) -> None:
    train = await c.files.create(file=("long.jsonl", good_file(40, seed=4)), purpose="fine-tune")
    long = dict(
        model=tiny,
        training_file=train.id,
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 50, "batch_size": 1}},
        },
    )
    first = await c.fine_tuning.jobs.create(**long)  # type: ignore[arg-type]
    second = await c.fine_tuning.jobs.create(**long)  # type: ignore[arg-type]
    first = await wait_job(c, first.id, until=("running", *TERMINAL))
    assert first.status == "running"
    # One training at a time: the second waits in the queue.
    second = await wait_job(c, second.id, until=("queued", "running", *TERMINAL))
    assert second.status == "queued"

    cancelled = await c.fine_tuning.jobs.cancel(second.id)
    assert cancelled.status == "cancelled"

    cancelled = await c.fine_tuning.jobs.cancel(first.id)
    assert cancelled.status == "cancelled"
    assert cancelled.fine_tuned_model is None
    events = [e.message for e in (await c.fine_tuning.jobs.list_events(first.id)).data]
    assert events[0] == "Fine-tuning job cancelled"
    # Stays cancelled once the job manager has seen its trainer exit (the exit does not turn
    # it into failed). White-box: when the manager is done with the job.
    jobs = server.app.state.local.jobs
    deadline = time.monotonic() + 60
    while jobs._running_id == first.id:
        assert time.monotonic() < deadline, "the trainer was not stopped"
        await asyncio.sleep(0.05)
    assert (await c.fine_tuning.jobs.retrieve(first.id)).status == "cancelled"
    assert (await c.fine_tuning.jobs.retrieve(second.id)).status == "cancelled"
    with pytest.raises(openai.BadRequestError):
        await c.fine_tuning.jobs.cancel(first.id)


def _trainer_pids(parent: int) -> list[int]:
    """The trainer processes that `parent` (our server) started; other trainers on the
    machine (another test run) are none of our business."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            ppid = int((proc / "stat").read_text().rsplit(") ", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if b"tui.local.trainer" in cmd and ppid == parent:
            found.append(int(proc.name))
    return found


async def test_restart_with_a_running_job_marks_it_failed(tmp_path: Path, tiny_gguf: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    # A fine-tuned model from an earlier life of this workspace (its weights: a copy of the
    # tiny model) and one whose weights have since been deleted.
    db = LocalDB(ws)
    kept_model = "ft:tiny-ft:local:old:abcdefgh"
    kept_path = ws / "local" / "models" / "old.gguf"
    shutil.copy(tiny_gguf, kept_path)
    db.add_ft_model(kept_model, "tiny-ft", "gguf", kept_path, "ftjob-old")
    db.add_ft_model("ft:tiny-ft:local:gone:zzzzzzzz", "tiny-ft", "gguf", ws / "nope.gguf", "j")
    db.close()
    srv = start_process_server(ws, [tiny_gguf])
    try:
        async with client(srv.url) as cl:
            tiny = model_id((await cl.models.list()).data, "tiny-ft")
            train = await cl.files.create(file=("t.jsonl", good_file(40)), purpose="fine-tune")
            r = await cl.chat.completions.create(
                model=tiny, messages=[{"role": "user", "content": "x"}], max_tokens=1,
                store=True, metadata={"kept": "yes"},
            )  # fmt: skip
            job = await cl.fine_tuning.jobs.create(
                model=tiny,
                training_file=train.id,
                hyperparameters={"n_epochs": 50, "batch_size": 1},
            )
            job = await wait_job(cl, job.id, until=("running", *TERMINAL))
            assert job.status == "running"
        trainers_before = _trainer_pids(srv.proc.pid)
        assert trainers_before
        srv.kill()  # SIGKILL: no chance to clean up
        # The trainer dies with its server (parent-death signal).
        deadline = time.monotonic() + 15
        while any(pid_alive(p) for p in trainers_before) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(pid_alive(p) for p in trainers_before)

        srv = start_process_server(ws, [tiny_gguf])
        async with client(srv.url) as cl:
            job = await cl.fine_tuning.jobs.retrieve(job.id)
            assert job.status == "failed"
            assert job.error is not None
            assert job.error.code == "server_stopped"
            assert "stopped while this job was running" in job.error.message
            events = (await cl.fine_tuning.jobs.list_events(job.id)).data
            assert events[0].level == "error"
            # Everything else survived the restart.
            assert (await cl.files.retrieve(train.id)).bytes == len(good_file(40))
            kept = await cl.chat.completions.list(metadata={"kept": "yes"})
            assert [x.id for x in kept.data] == [r.id]
            ids = [m.id for m in (await cl.models.list()).data]
            assert kept_model in ids
            assert "ft:tiny-ft:local:gone:zzzzzzzz" not in ids
            answer = await cl.chat.completions.create(
                model=kept_model, messages=[{"role": "user", "content": "x"}], max_tokens=1
            )
            assert answer.model == kept_model
    finally:
        srv.stop()
