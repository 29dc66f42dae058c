"""The local backend's Batch API through the openai SDK over real HTTP, against a tiny
random-weight GGUF model: a batch answered in the background into output and error files,
a bad input file failing the batch, cancelling, the engine's BatchRunner end to end, and a
server killed mid-batch that finishes it after a restart without answering anything twice."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.helpers.tiny_model import build_tiny_gguf
from tests.local.server_harness import client, model_id, start_process_server, start_thread_server
from tui.engine.batch import BatchRunner
from tui.engine.datasets import ItemDraft
from tui.engine.generation import RunSpec, SamplingParams, create_run
from tui.engine.store import Store

TERMINAL = ("completed", "failed", "expired", "cancelled")


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gguf(tmp_path_factory.mktemp("model") / "tiny-batch.gguf")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Iterator[Any]:
    running = start_thread_server(tmp_path_factory.mktemp("batches") / "ws", [tiny_gguf])
    yield running
    running.stop()


@pytest.fixture
async def c(server: Any) -> AsyncIterator[openai.AsyncOpenAI]:
    async with client(server.url) as cl:
        yield cl


@pytest.fixture
async def tiny(c: openai.AsyncOpenAI) -> str:
    return model_id((await c.models.list()).data, "tiny-batch")


def line(custom_id: str, model: str, text: str, **params: Any) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": text}], **params}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


async def wait_batch(
    c: openai.AsyncOpenAI, batch_id: str, until: tuple[str, ...] = TERMINAL, timeout: float = 120
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        batch = await c.batches.retrieve(batch_id)
        if batch.status in until:
            return batch
        assert time.monotonic() < deadline, f"batch {batch_id} still {batch.status}"
        await asyncio.sleep(0.05)


async def lines_of(c: openai.AsyncOpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    content = await c.files.content(file_id)
    return [json.loads(raw) for raw in content.content.splitlines()]


async def test_batch_answers_into_output_and_error_files(c: openai.AsyncOpenAI, tiny: str) -> None:
    rows = [line(f"req-{i}", tiny, f"Show branch {i}", max_tokens=4, seed=i) for i in range(4)]
    rows.append(line("too-hot", tiny, "Show the log", temperature=5.0))
    upload = await c.files.create(file=("in.jsonl", jsonl(rows)), purpose="batch")
    created = await c.batches.create(
        input_file_id=upload.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"task": "git"},
    )
    assert created.status == "validating" and created.metadata == {"task": "git"}
    assert created.expires_at == created.created_at + 24 * 3600
    batch = await wait_batch(c, created.id)
    assert batch.status == "completed"
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed) == (5, 4)
    assert batch.request_counts.failed == 1
    assert batch.completed_at and batch.in_progress_at and batch.finalizing_at
    output = await lines_of(c, batch.output_file_id)
    assert sorted(o["custom_id"] for o in output) == [f"req-{i}" for i in range(4)]
    for o in output:
        assert o["response"]["status_code"] == 200 and o["error"] is None
        body = o["response"]["body"]
        assert body["object"] == "chat.completion" and body["model"] == tiny
        assert 1 <= body["usage"]["completion_tokens"] <= 4
    (error,) = await lines_of(c, batch.error_file_id)
    assert error["custom_id"] == "too-hot" and error["response"]["status_code"] == 400
    assert error["response"]["body"]["error"]["param"] == "temperature"
    # The result files are files like any other; the batch is listed and can't be cancelled.
    assert (await c.files.retrieve(batch.output_file_id)).purpose == "batch_output"  # type: ignore[arg-type]
    assert created.id in [b.id for b in (await c.batches.list(limit=100)).data]
    with pytest.raises(openai.ConflictError):
        await c.batches.cancel(created.id)


async def test_bad_input_file_fails_the_batch_with_the_line(
    c: openai.AsyncOpenAI, tiny: str
) -> None:
    rows = [line("same", tiny, "one"), line("same", tiny, "two")]
    upload = await c.files.create(file=("dup.jsonl", jsonl(rows)), purpose="batch")
    created = await c.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    batch = await wait_batch(c, created.id)
    assert batch.status == "failed" and batch.failed_at
    assert batch.errors is not None and batch.errors.data
    assert batch.errors.data[0].code == "duplicate_custom_id"
    assert batch.errors.data[0].line == 2
    assert batch.output_file_id is None


async def test_create_refuses_a_wrong_file_window_or_endpoint(
    c: openai.AsyncOpenAI, tiny: str
) -> None:
    tuning = await c.files.create(
        file=("t.jsonl", jsonl([line("a", tiny, "x")])), purpose="fine-tune"
    )
    with pytest.raises(openai.BadRequestError, match="purpose 'batch'"):
        await c.batches.create(
            input_file_id=tuning.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    good = await c.files.create(file=("b.jsonl", jsonl([line("a", tiny, "x")])), purpose="batch")
    with pytest.raises(openai.BadRequestError, match="24h"):
        await c.batches.create(
            input_file_id=good.id,
            endpoint="/v1/chat/completions",
            completion_window="1h",  # type: ignore[arg-type]
        )
    with pytest.raises(openai.BadRequestError, match="endpoint"):
        await c.batches.create(
            input_file_id=good.id, endpoint="/v1/embeddings", completion_window="24h"
        )
    with pytest.raises(openai.NotFoundError):
        await c.batches.retrieve("batch_nope")


async def test_cancel_stops_a_batch_and_keeps_what_it_answered(
    c: openai.AsyncOpenAI, tiny: str
) -> None:
    rows = [line(f"c{i}", tiny, f"Stage file {i}", max_tokens=64) for i in range(200)]
    upload = await c.files.create(file=("many.jsonl", jsonl(rows)), purpose="batch")
    created = await c.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    await wait_batch(c, created.id, until=("in_progress", *TERMINAL))
    cancelling = await c.batches.cancel(created.id)
    assert cancelling.status in ("cancelling", "cancelled")
    batch = await wait_batch(c, created.id)
    assert batch.status == "cancelled" and batch.cancelled_at
    assert batch.request_counts is not None
    answered = await lines_of(c, batch.output_file_id)
    assert len(answered) == batch.request_counts.completed < 200


async def test_batch_runner_end_to_end_on_the_local_backend(
    c: openai.AsyncOpenAI, tiny: str, tmp_path: Path
) -> None:
    store = Store.open(tmp_path / "app")
    try:
        requests = [f"Create a branch called local-{i}" for i in range(5)]
        dataset = store.create_dataset("local batch", "", [ItemDraft(r) for r in requests])
        run_id = create_run(
            store,
            RunSpec(
                dataset_id=dataset,
                model=tiny,
                params=SamplingParams(max_tokens=6, seed=1),
                metadata={"task": "git"},
            ),
        )
        finished = await BatchRunner(
            store, c, store_completions=True, poll_interval=0.05, max_poll_interval=0.2
        ).run(run_id)
        assert finished.status == "done", finished
        rows = store.completions(run_id)
        assert [r.status for r in rows] == ["done"] * 5
        assert all(r.completion_tokens and r.remote_id for r in rows)
        # store=True went through the chat route: the answers are stored completions there.
        stored = await c.chat.completions.list(model=tiny, metadata={"task": "git"})
        assert {r.remote_id for r in rows} <= {s.id for s in stored.data}
    finally:
        store.close()


async def test_a_batch_survives_a_server_restart(tmp_path: Path, tiny_gguf: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    proc = start_process_server(workspace, [tiny_gguf])
    try:
        async with client(proc.url) as c:
            tiny = model_id((await c.models.list()).data, "tiny-batch")
            rows = [line(f"r{i}", tiny, f"Merge branch {i}", max_tokens=64) for i in range(120)]
            upload = await c.files.create(file=("r.jsonl", jsonl(rows)), purpose="batch")
            created = await c.batches.create(
                input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            deadline = time.monotonic() + 120
            while True:
                batch = await c.batches.retrieve(created.id)
                assert batch.request_counts is not None
                if batch.request_counts.completed >= 3:
                    break
                assert time.monotonic() < deadline and batch.status not in TERMINAL
                await asyncio.sleep(0.02)
        proc.kill()
        assert batch.status == "in_progress" and batch.request_counts.completed < 120
        proc = start_process_server(workspace, [tiny_gguf])
        async with client(proc.url) as c:
            done = await wait_batch(c, created.id, timeout=300)
            assert done.status == "completed"
            assert done.request_counts is not None and done.request_counts.completed == 120
            output = await lines_of(c, done.output_file_id)
        ids = [o["custom_id"] for o in output]
        assert sorted(ids) == sorted(f"r{i}" for i in range(120))  # each answered once
    finally:
        proc.stop()
