"""Bad requests get OpenAI's error shape and status: auth, malformed bodies, unknown models,
invalid messages and parameters, size limits, unknown routes and objects."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from tests.helpers.tiny_model import build_tiny_gguf
from tests.local.server_harness import KEY, client, model_id, start_thread_server

MAX_BODY = 64 * 1024
MAX_UPLOAD = 256 * 1024
USER = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("errors")
    gguf = build_tiny_gguf(root / "tiny-err.gguf")
    running = start_thread_server(
        root / "ws", [gguf], max_body_bytes=MAX_BODY, max_upload_bytes=MAX_UPLOAD
    )
    running.workspace = root / "ws"
    yield running
    running.stop()


@pytest.fixture
async def c(server: Any) -> AsyncIterator[openai.AsyncOpenAI]:
    async with client(server.url) as cl:
        yield cl


@pytest.fixture
async def http(server: Any) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(
        base_url=server.url + "/", headers={"authorization": f"Bearer {KEY}"}, timeout=30
    ) as h:
        yield h


@pytest.fixture
async def tiny(c: openai.AsyncOpenAI) -> str:
    return model_id((await c.models.list()).data, "tiny-err")


def assert_openai_error(body: Any, code: str | None = None, param: str | None = None) -> None:
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    assert body["error"]["type"]
    if code is not None:
        assert body["error"]["code"] == code
    if param is not None:
        assert body["error"]["param"] == param


# ---- auth ----------------------------------------------------------------


@pytest.mark.parametrize("key", ["wrong-key", KEY + "x", KEY[:-1]])
async def test_wrong_key_is_401(server: Any, key: str) -> None:
    async with client(server.url, key=key) as bad:
        with pytest.raises(openai.AuthenticationError) as err:
            await bad.models.list()
        assert err.value.status_code == 401
        with pytest.raises(openai.AuthenticationError):
            await bad.chat.completions.create(model="x", messages=USER)
        with pytest.raises(openai.AuthenticationError):
            await bad.files.list()


async def test_missing_bearer_is_401_everywhere(server: Any) -> None:
    async with httpx2.AsyncClient(base_url=server.url + "/", timeout=30) as h:
        for method, path in [
            ("GET", "models"),
            ("POST", "chat/completions"),
            ("GET", "files"),
            ("GET", "fine_tuning/jobs"),
            ("GET", "no/such/route"),
        ]:
            r = await h.request(method, path, json={"model": "x"})
            assert r.status_code == 401, path
            assert_openai_error(r.json())
        for header in ("Basic " + KEY, "Bearer", KEY, f"Bearer  {KEY}x"):
            r = await h.get("models", headers={"authorization": header})
            assert r.status_code == 401, header
            assert_openai_error(r.json())
        # The key is never echoed back.
        r = await h.get("models", headers={"authorization": "Bearer sk-secret-guess"})
        assert "sk-secret-guess" not in r.text


# ---- malformed bodies ----------------------------------------------------------------


async def test_malformed_json_is_400(http: httpx2.AsyncClient) -> None:
    for body in (b"{not json", b'{"model": "x",', b"\xff\xfe"):
        r = await http.post(
            "chat/completions", content=body, headers={"content-type": "application/json"}
        )
        assert r.status_code == 400, body
        assert_openai_error(r.json())
        assert "JSON" in r.json()["error"]["message"]


async def test_body_not_an_object_or_missing_is_400(http: httpx2.AsyncClient) -> None:
    for payload in ([1, 2], "text", None):
        r = await http.post("chat/completions", json=payload)
        assert r.status_code == 400, payload
        assert_openai_error(r.json())
    r = await http.post("chat/completions")
    assert r.status_code == 400
    assert_openai_error(r.json())


async def test_missing_required_parameters(http: httpx2.AsyncClient, tiny: str) -> None:
    r = await http.post("chat/completions", json={"messages": USER})
    assert r.status_code == 400
    assert_openai_error(r.json(), "missing_required_parameter", "model")
    r = await http.post("chat/completions", json={"model": tiny})
    assert r.status_code == 400
    assert_openai_error(r.json(), "missing_required_parameter", "messages")


async def test_wrong_types_are_400(http: httpx2.AsyncClient, tiny: str) -> None:
    cases = {
        "temperature": "hot",
        "max_tokens": 2.5,
        "stream": "yes",
        "messages": "hi",
        "seed": "1",
        "stop": 5,
        "metadata": ["a"],
    }
    for name, value in cases.items():
        body: dict[str, Any] = {"model": tiny, "messages": USER, name: value}
        r = await http.post("chat/completions", json=body)
        assert r.status_code == 400, name
        assert_openai_error(r.json(), "invalid_type", name)


# ---- chat parameters ----------------------------------------------------------------


async def test_unknown_model_is_404(c: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        await c.chat.completions.create(model="gpt-9", messages=USER)
    assert err.value.code == "model_not_found"
    assert err.value.param == "model"
    assert "gpt-9" in err.value.message
    with pytest.raises(openai.NotFoundError):
        await c.chat.completions.create(model="gpt-9", messages=USER, stream=True)


@pytest.mark.parametrize(
    ("messages", "param", "code"),
    [
        ([{"content": "hi"}], "messages[0].role", "missing_required_parameter"),
        ([{"role": "user"}], "messages[0].content", "missing_required_parameter"),
        (
            [{"role": "system", "content": "s"}, {"role": "user", "content": None}],
            "messages[1].content",
            "missing_required_parameter",
        ),
        ([{"role": "robot", "content": "hi"}], "messages[0].role", "invalid_value"),
        ([{"role": "user", "content": 42}], "messages[0].content", "invalid_type"),
        (["hi"], "messages[0]", "invalid_type"),
        ([], "messages", "empty_array"),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
            "messages[0].content[0]",
            "unsupported_value",
        ),
        ([{"role": "tool", "content": "x", "tool_call_id": "1"}], "messages[0].role", None),
    ],
)
async def test_invalid_messages_are_400(
    c: openai.AsyncOpenAI, tiny: str, messages: Any, param: str, code: str | None
) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        await c.chat.completions.create(model=tiny, messages=messages)
    assert err.value.param == param
    if code:
        assert err.value.code == code


async def test_text_content_parts_and_developer_role_work(c: openai.AsyncOpenAI, tiny: str) -> None:
    r = await c.chat.completions.create(
        model=tiny,
        messages=[
            {"role": "developer", "content": "Be brief."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "Show "}, {"type": "text", "text": "status"}],
            },
        ],
        max_tokens=2,
    )
    assert r.usage is not None and r.usage.completion_tokens >= 1


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 0}, "n"),
        ({"n": 17}, "n"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 5, "max_completion_tokens": 5}, "max_tokens"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"logprobs": True}, "logprobs"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"metadata": {"k" * 65: "v"}}, "metadata"),
        ({"metadata": {"k": "v" * 513}}, "metadata.k"),
        ({"metadata": {"k": 1}}, "metadata.k"),
    ],
)
async def test_invalid_parameters_are_400(
    c: openai.AsyncOpenAI, tiny: str, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        await c.chat.completions.create(model=tiny, messages=USER, **extra)
    assert err.value.param == param
    assert err.value.type == "invalid_request_error"


async def test_metadata_at_the_limits_is_accepted(c: openai.AsyncOpenAI, tiny: str) -> None:
    metadata = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}
    r = await c.chat.completions.create(
        model=tiny, messages=USER, max_tokens=1, store=True, metadata=metadata
    )
    assert (await c.chat.completions.retrieve(r.id)).metadata == metadata


async def test_context_overflow_is_400(c: openai.AsyncOpenAI, tiny: str) -> None:
    long = " ".join(["git"] * 4000)
    with pytest.raises(openai.BadRequestError) as err:
        await c.chat.completions.create(
            model=tiny, messages=[{"role": "user", "content": long}], max_tokens=2
        )
    assert err.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as err:
        await c.chat.completions.create(model=tiny, messages=USER, max_tokens=100_000)
    assert err.value.code == "context_length_exceeded"


# ---- sizes ----------------------------------------------------------------


async def test_chat_body_over_the_limit_is_413(c: openai.AsyncOpenAI, tiny: str) -> None:
    with pytest.raises(openai.APIStatusError) as err:
        await c.chat.completions.create(
            model=tiny, messages=[{"role": "user", "content": "x" * (MAX_BODY + 10)}]
        )
    assert err.value.status_code == 413
    assert err.value.code == "request_too_large"


async def test_chunked_body_over_the_limit_is_413(http: httpx2.AsyncClient, tiny: str) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b'{"model": "' + tiny.encode() + b'", "messages": [{"role": "user", "content": "'
        for _ in range(MAX_BODY // 1024 + 2):
            yield b"x" * 1024
        yield b'"}]}'

    r = await http.post(
        "chat/completions", content=body(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413
    assert_openai_error(r.json(), "request_too_large")


async def test_upload_over_the_limit_is_413_and_keeps_nothing(
    c: openai.AsyncOpenAI, server: Any
) -> None:
    before = {f.id for f in (await c.files.list()).data}
    with pytest.raises(openai.APIStatusError) as err:
        await c.files.create(file=("big.jsonl", b"x" * (MAX_UPLOAD + 1)), purpose="fine-tune")
    assert err.value.status_code == 413
    # Far over the limit: refused from the declared length, answer still readable.
    with pytest.raises(openai.APIStatusError) as err:
        await c.files.create(file=("huge.jsonl", b"x" * (8 * MAX_UPLOAD)), purpose="fine-tune")
    assert err.value.status_code == 413
    assert {f.id for f in (await c.files.list()).data} == before
    leftovers = [p for p in (server.workspace / "local" / "files").iterdir()]
    assert all(p.name in before for p in leftovers)
    # Uploads may be larger than JSON bodies.
    ok = await c.files.create(file=("ok.jsonl", b"x" * (MAX_BODY * 2)), purpose="fine-tune")
    assert ok.bytes == MAX_BODY * 2


async def test_upload_names_are_labels_not_paths(c: openai.AsyncOpenAI, server: Any) -> None:
    f = await c.files.create(file=("../../../etc/evil.jsonl", b"{}\n"), purpose="fine-tune")
    assert f.filename == "evil.jsonl"
    assert f.id.startswith("file-")
    stored = server.workspace / "local" / "files" / f.id
    assert stored.read_bytes() == b"{}\n"
    assert not (server.workspace / "etc").exists()
    assert not Path("/etc/evil.jsonl").exists()


async def test_upload_needs_file_and_valid_purpose(
    c: openai.AsyncOpenAI, http: httpx2.AsyncClient
) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        await c.files.create(file=("a.jsonl", b"{}"), purpose="bogus")  # type: ignore[arg-type]
    assert err.value.param == "purpose"
    r = await http.post("files", data={"purpose": "fine-tune"}, files={"other": ("a", b"x")})
    assert r.status_code == 400
    assert_openai_error(r.json(), "missing_required_parameter", "file")


# ---- unknown routes and objects ----------------------------------------------------------------


async def test_unknown_route_and_method(http: httpx2.AsyncClient) -> None:
    r = await http.get("no/such/thing")
    assert r.status_code == 404
    assert_openai_error(r.json())
    assert "GET /v1/no/such/thing" in r.json()["error"]["message"]
    r = await http.delete("models")
    assert r.status_code == 405
    assert_openai_error(r.json())


async def test_unknown_objects_are_404(c: openai.AsyncOpenAI) -> None:
    for call in (
        c.files.retrieve("file-nope"),
        c.files.content("file-nope"),
        c.files.delete("file-nope"),
        c.chat.completions.retrieve("chatcmpl-nope"),
        c.chat.completions.messages.list("chatcmpl-nope"),
        c.fine_tuning.jobs.retrieve("ftjob-nope"),
        c.fine_tuning.jobs.cancel("ftjob-nope"),
        c.fine_tuning.jobs.list_events("ftjob-nope"),
        c.fine_tuning.jobs.checkpoints.list("ftjob-nope"),
    ):
        with pytest.raises(openai.NotFoundError) as err:
            await call
        assert err.value.type == "invalid_request_error"


async def test_bad_query_parameters_are_400(http: httpx2.AsyncClient) -> None:
    r = await http.get("chat/completions", params={"limit": "lots"})
    assert r.status_code == 400
    assert_openai_error(r.json(), "invalid_type", "limit")
    r = await http.get("chat/completions", params={"order": "sideways"})
    assert r.status_code == 400
    assert_openai_error(r.json(), "invalid_value", "order")
    r = await http.get("files", params={"after": "file-unknown"})
    assert r.status_code == 404


async def test_errors_are_json_even_for_server_errors(
    http: httpx2.AsyncClient, server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fault inside a route (here the model registry failing) is a bug of ours, but the
    # client still gets OpenAI's 500 shape, not Starlette's plain-text "Internal Server Error".
    def broken() -> list[Any]:
        raise RuntimeError("registry on fire")

    monkeypatch.setattr(server.app.state.local.registry, "list", broken)
    r = await http.get("models")
    assert r.status_code == 500
    assert r.headers["content-type"].startswith("application/json")
    body = json.loads(r.text)
    assert_openai_error(body)
    assert body["error"]["type"] == "server_error"
    assert "registry on fire" in body["error"]["message"]
    monkeypatch.undo()
    # The server is still healthy after (on a new connection: uvicorn closes the one an
    # unhandled error was raised on).
    async with httpx2.AsyncClient(
        base_url=server.url + "/", headers={"authorization": f"Bearer {KEY}"}, timeout=30
    ) as fresh:
        assert (await fresh.get("models")).status_code == 200
