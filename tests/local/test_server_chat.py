"""Chat completions and stored completions through the openai SDK over real HTTP, against a
tiny random-weight GGUF model served by llama.cpp (one server for the whole module)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.helpers.tiny_model import build_tiny_gguf
from tests.local.server_harness import client, model_id, start_thread_server
from tui.local.protocol import ChunkStream

USER = [{"role": "user", "content": "Create a new branch called 'feature-login'."}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("chat")
    gguf = build_tiny_gguf(root / "tiny-chat.gguf")
    running = start_thread_server(root / "ws", [gguf], max_queue=2)
    yield running
    running.stop()


@pytest.fixture
async def c(server: Any) -> Any:
    async with client(server.url) as cl:
        yield cl


@pytest.fixture
async def tiny(c: openai.AsyncOpenAI) -> str:
    return model_id((await c.models.list()).data, "tiny-chat")


async def test_models_list_and_retrieve(c: openai.AsyncOpenAI, tiny: str) -> None:
    models = (await c.models.list()).data
    ids = [m.id for m in models]
    assert tiny in ids
    assert "smollm2-135m-instruct" in ids  # the default model is always listed
    model = await c.models.retrieve(tiny)
    assert model.id == tiny
    assert model.object == "model"
    assert model.created > 0
    with pytest.raises(openai.NotFoundError) as err:
        await c.models.retrieve("no-such-model")
    assert err.value.code == "model_not_found"


async def test_chat_reports_usage_and_length(c: openai.AsyncOpenAI, tiny: str) -> None:
    r = await c.chat.completions.create(model=tiny, messages=USER, max_tokens=6, temperature=0)
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-")
    assert r.model == tiny
    assert len(r.choices) == 1
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    assert choice.finish_reason in ("length", "stop")
    assert r.usage is not None
    assert r.usage.prompt_tokens > 5
    assert 1 <= r.usage.completion_tokens <= 6
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


async def test_max_completion_tokens_and_multi_turn(c: openai.AsyncOpenAI, tiny: str) -> None:
    messages = [
        {"role": "system", "content": "Answer with one git command."},
        {"role": "user", "content": "Switch to the dev branch."},
        {"role": "assistant", "content": "git switch dev"},
        {"role": "user", "content": "Now delete the branch docs."},
    ]
    one = await c.chat.completions.create(
        model=tiny, messages=USER, max_completion_tokens=3, temperature=0
    )
    assert one.usage is not None and one.usage.completion_tokens <= 3
    multi = await c.chat.completions.create(
        model=tiny, messages=messages, max_completion_tokens=3, temperature=0
    )
    assert multi.usage is not None
    # All four messages reach the prompt.
    assert multi.usage.prompt_tokens > one.usage.prompt_tokens


async def test_stream_matches_non_stream_and_reports_usage(
    c: openai.AsyncOpenAI, tiny: str
) -> None:
    plain = await c.chat.completions.create(model=tiny, messages=USER, max_tokens=8, temperature=0)
    stream = await c.chat.completions.create(
        model=tiny,
        messages=USER,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)
    assert len({ch.id for ch in chunks}) == 1
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == plain.choices[0].message.content
    finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices]
    assert finish[-1] == plain.choices[0].finish_reason
    assert all(f is None for f in finish[:-1])
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert plain.usage is not None
    assert last.usage.completion_tokens == plain.usage.completion_tokens
    assert last.usage.prompt_tokens == plain.usage.prompt_tokens
    assert all(ch.usage is None for ch in chunks[:-1])


async def test_stream_without_usage_has_no_usage_chunk(c: openai.AsyncOpenAI, tiny: str) -> None:
    stream = await c.chat.completions.create(
        model=tiny, messages=USER, max_tokens=3, temperature=0, stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert all(ch.choices for ch in chunks)
    assert all(ch.usage is None for ch in chunks)


async def test_stop_sequences_cut_the_output(c: openai.AsyncOpenAI, tiny: str) -> None:
    # Seeded sampling: the random tiny model then says something varied, and says it again.
    params: dict[str, Any] = {"max_tokens": 12, "temperature": 1.0, "seed": 11}
    full = await c.chat.completions.create(model=tiny, messages=USER, **params)
    text = full.choices[0].message.content or ""
    assert len(text) >= 6, f"the tiny model said too little to test stop: {text!r}"
    stop = text[3:5]
    expected = text[: text.index(stop)]
    for value in (stop, [stop], ["\u2603never", stop]):
        cut = await c.chat.completions.create(model=tiny, messages=USER, stop=value, **params)
        assert cut.choices[0].message.content == expected
        assert cut.choices[0].finish_reason == "stop"
    streamed = await c.chat.completions.create(
        model=tiny, messages=USER, stop=stop, stream=True, **params
    )
    chunks = [ch async for ch in streamed]
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_seed_makes_sampling_repeatable(c: openai.AsyncOpenAI, tiny: str) -> None:
    async def sample(seed: int) -> str:
        r = await c.chat.completions.create(
            model=tiny, messages=USER, max_tokens=8, temperature=1.0, top_p=0.95, seed=seed
        )
        return r.choices[0].message.content or ""

    assert await sample(7) == await sample(7)


async def test_store_metadata_and_filters(c: openai.AsyncOpenAI, tiny: str) -> None:
    tag = f"t{time.monotonic_ns()}"
    made = []
    for i, task in enumerate(["git", "git", "other"]):
        r = await c.chat.completions.create(
            model=tiny,
            messages=[{"role": "user", "content": f"request {i}"}],
            max_tokens=2,
            temperature=0,
            store=True,
            metadata={"task": task, "run": tag},
        )
        made.append(r.id)
    # A streamed completion is stored too, once it is complete.
    stream = await c.chat.completions.create(
        model=tiny,
        messages=USER,
        max_tokens=2,
        stream=True,
        store=True,
        metadata={"task": "git", "run": tag, "streamed": "yes"},
    )
    chunks = [ch async for ch in stream]
    streamed_id = chunks[0].id
    made.append(streamed_id)
    # Not stored without store=true.
    await c.chat.completions.create(
        model=tiny, messages=USER, max_tokens=1, metadata={"task": "git", "run": tag}
    )

    page = await c.chat.completions.list(metadata={"run": tag})
    assert [r.id for r in page.data] == made
    git = await c.chat.completions.list(metadata={"run": tag, "task": "git"}, model=tiny)
    assert [r.id for r in git.data] == [made[0], made[1], made[3]]
    assert git.data[0].metadata == {"task": "git", "run": tag}
    newest_first = await c.chat.completions.list(metadata={"run": tag}, order="desc")
    assert [r.id for r in newest_first.data] == made[::-1]
    assert (await c.chat.completions.list(model="other-model", metadata={"run": tag})).data == []

    # Cursor pagination, as the SDK's auto-pager drives it.
    first = await c.chat.completions.list(metadata={"run": tag}, limit=2)
    assert first.has_more is True
    assert [r.id for r in first.data] == made[:2]
    rest = await c.chat.completions.list(metadata={"run": tag}, limit=2, after=made[1])
    assert [r.id for r in rest.data] == made[2:]
    assert rest.has_more is False
    collected = [r.id async for r in c.chat.completions.list(metadata={"run": tag}, limit=1)]
    assert collected == made

    stored = await c.chat.completions.retrieve(made[0])
    assert stored.id == made[0]
    assert stored.usage is not None
    msgs = await c.chat.completions.messages.list(made[0])
    assert [(m.role, m.content) for m in msgs.data] == [("user", "request 0")]
    assert msgs.data[0].id

    updated = await c.chat.completions.update(made[2], metadata={"task": "git", "run": tag})
    assert updated.metadata == {"task": "git", "run": tag}
    git = await c.chat.completions.list(metadata={"run": tag, "task": "git"})
    assert len(git.data) == 4

    deleted = await c.chat.completions.delete(made[0])
    assert deleted.deleted is True and deleted.id == made[0]
    with pytest.raises(openai.NotFoundError):
        await c.chat.completions.retrieve(made[0])
    with pytest.raises(openai.NotFoundError):
        await c.chat.completions.delete(made[0])


async def test_queue_full_is_429_and_disconnect_frees_slots(
    server: Any, c: openai.AsyncOpenAI, tiny: str
) -> None:
    """With a queue of 2 per model, a burst gets some 429s; streams abandoned mid-way give
    their slots back, so the server serves normally afterwards."""

    async def one() -> str:
        try:
            await c.chat.completions.create(
                model=tiny, messages=USER, max_tokens=400, temperature=0
            )
            return "ok"
        except openai.RateLimitError as exc:
            assert exc.status_code == 429
            assert exc.code == "rate_limit_exceeded"
            return "429"

    results = await asyncio.gather(*(one() for _ in range(24)))
    assert "429" in results
    assert "ok" in results

    # Open streams and walk away after the first chunks.
    for _ in range(6):
        stream = await c.chat.completions.create(
            model=tiny, messages=USER, max_tokens=400, temperature=0, stream=True
        )
        async for _chunk in stream:
            break
        await stream.close()
    # The engine has no request left running or waiting (its slots are free again).
    engine = server.app.state.local.registry._engines[tiny]  # white-box: no HTTP for this
    deadline = time.monotonic() + 10
    while engine.stats()["active"] or engine.stats()["waiting"]:
        assert time.monotonic() < deadline, engine.stats()
        await asyncio.sleep(0.05)
    after = await asyncio.gather(
        *(
            c.chat.completions.create(model=tiny, messages=USER, max_tokens=3, temperature=0)
            for _ in range(2)
        )
    )
    assert all(r.choices[0].message.content is not None for r in after)


async def test_abandoned_requests_free_their_slots(
    server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that gives up (timeout, closed stream) stops its generation at once. The real
    default model, asked for a long story, is slow enough to give up on."""
    model = "smollm2-135m-instruct"
    story = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
    long = {"model": model, "messages": story, "max_tokens": 400, "temperature": 0}
    async with client(server.url) as c:
        await c.chat.completions.create(model=model, messages=story, max_tokens=1)
        engine = server.app.state.local.registry._engines[model]  # white-box: no HTTP for it
        # The engine's requests, to see how far each got (white-box too).
        requests: list[Any] = []
        generate_choices = engine.generate_choices

        def recording(req: Any, n: int) -> list[Any]:
            streams = generate_choices(req, n)
            requests.extend(s._request for s in streams if s._request is not None)
            return streams

        monkeypatch.setattr(engine, "generate_choices", recording)

        async def wait_idle() -> None:
            deadline = time.monotonic() + 60
            while engine.stats()["active"] or engine.stats()["waiting"]:
                assert time.monotonic() < deadline, engine.stats()
                await asyncio.sleep(0.01)

        # A client that gives up waiting (its timeout is how it gives up, not a measure).
        async with client(server.url, timeout=1.0) as impatient:
            with pytest.raises(openai.APITimeoutError):
                await impatient.chat.completions.create(**long)
        await wait_idle()
        # Stopped where the client left: far short of the 400 tokens it asked for.
        (gave_up,) = requests
        assert gave_up.cancelled and gave_up.n_generated < 400

        stream = await c.chat.completions.create(**long, stream=True)
        async for _chunk in stream:
            break
        assert engine.stats()["active"] == 1
        await stream.close()
        await wait_idle()
        closed = requests[-1]
        assert closed is not gave_up and closed.cancelled and closed.n_generated < 400


async def test_a_request_abandoned_before_its_first_token_leaves_the_queue(
    server: Any, c: openai.AsyncOpenAI, tiny: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A streamed request still waiting for its first token (a busy model: the rest of a
    cancelled run's requests) whose client gives up is dropped at once. Before, the server
    waited for that first token with no ear for the client: the request kept its place in
    the queue, was generated for no one, and held the server's shutdown for its 3 s grace."""
    await c.chat.completions.create(model=tiny, messages=USER, max_tokens=1)
    engine = server.app.state.local.registry._engines[tiny]  # white-box: the engine's side
    closed = threading.Event()

    class NeverStarts(ChunkStream):
        """A request the model never gets to: no chunk ever comes."""

        def __init__(self) -> None:
            super().__init__()
            self.queue: asyncio.Queue[Any] = asyncio.Queue()

        def _chunks(self) -> asyncio.Queue[Any]:
            return self.queue

        def _cancel(self) -> None:
            closed.set()

    monkeypatch.setattr(engine, "generate_choices", lambda req, n: [NeverStarts()])
    async with client(server.url, timeout=1.0) as impatient:
        with pytest.raises(openai.APITimeoutError):
            await impatient.chat.completions.create(model=tiny, messages=USER, stream=True)
    # Closed when the client left (the request's slot freed), not when a token came.
    assert await asyncio.to_thread(closed.wait, 10), "the abandoned request is still queued"


@pytest.mark.slow
async def test_real_smollm2_answers(tmp_path: Path) -> None:
    """The shipped default model, loaded for real, generates a few tokens over HTTP."""
    running = start_thread_server(tmp_path / "ws", [], preload=["smollm2-135m-instruct"])
    try:
        async with client(running.url) as cl:
            r = await cl.chat.completions.create(
                model="smollm2-135m-instruct",
                messages=[
                    {"role": "system", "content": "Reply with one git command."},
                    {"role": "user", "content": "Create a new branch called 'feature-login'."},
                ],
                max_tokens=8,
                temperature=0,
            )
            assert r.usage is not None and r.usage.completion_tokens >= 1
            assert (r.choices[0].message.content or "").strip()
    finally:
        running.stop()
