"""The local server refuses what it cannot honour, as OpenAI does: every numeric parameter of
every route out of range or not finite, control characters in any JSON body, a control
character in an uploaded file's name, and a fine-tuning upload that is not JSONL of chat
examples (kept, with status "error" and a message saying why). A 400 names the parameter."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2
import pytest

from tests.helpers.tiny_model import build_tiny_gguf
from tests.local.server_harness import KEY, client, model_id, start_thread_server

USER = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("refusals")
    gguf = build_tiny_gguf(root / "tiny-ref.gguf")
    running = start_thread_server(root / "ws", [gguf])
    running.workspace = root / "ws"
    yield running
    running.stop()


@pytest.fixture
async def http(server: Any) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(
        base_url=server.url + "/", headers={"authorization": f"Bearer {KEY}"}, timeout=60
    ) as h:
        yield h


@pytest.fixture
async def tiny(server: Any) -> str:
    async with client(server.url) as c:
        return model_id((await c.models.list()).data, "tiny-ref")


def refused(response: httpx2.Response, param: str | None) -> dict[str, Any]:
    assert response.status_code == 400, (param, response.status_code, response.text)
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param, error
    return error  # type: ignore[no-any-return]


# Sent as raw JSON text: Python's json (and so FastAPI) reads NaN and Infinity as numbers.
NON_FINITE = ["NaN", "Infinity", "-Infinity"]
CHAT_NUMBERS = [
    "temperature",
    "top_p",
    "frequency_penalty",
    "presence_penalty",
    "max_tokens",
    "max_completion_tokens",
    "seed",
    "n",
    "top_logprobs",
]


@pytest.mark.parametrize("literal", NON_FINITE)
@pytest.mark.parametrize("param", CHAT_NUMBERS)
async def test_non_finite_chat_numbers_are_400(
    http: httpx2.AsyncClient, tiny: str, param: str, literal: str
) -> None:
    body = f'{{"model": "{tiny}", "messages": [{{"role": "user", "content": "hi"}}], '
    body += f'"{param}": {literal}}}'
    r = await http.post(
        "chat/completions", content=body, headers={"content-type": "application/json"}
    )
    error = refused(r, param)
    assert "finite" in error["message"]


OUT_OF_RANGE = [
    ("temperature", -0.1, "decimal_below_min_value"),
    ("temperature", 2.01, "decimal_above_max_value"),
    ("top_p", -0.5, "decimal_below_min_value"),
    ("top_p", 1.5, "decimal_above_max_value"),
    ("frequency_penalty", -2.5, "decimal_below_min_value"),
    ("frequency_penalty", 3, "decimal_above_max_value"),
    ("presence_penalty", 2.5, "decimal_above_max_value"),
    ("presence_penalty", -3, "decimal_below_min_value"),
    ("max_tokens", 0, "integer_below_min_value"),
    ("max_tokens", -5, "integer_below_min_value"),
    ("max_completion_tokens", 0, "integer_below_min_value"),
    ("n", 0, "integer_below_min_value"),
    ("n", 10_000, "integer_above_max_value"),
    ("seed", 2**64, "integer_above_max_value"),
    ("seed", -(2**64), "integer_below_min_value"),
    ("top_logprobs", 21, "integer_above_max_value"),
    ("top_logprobs", -1, "integer_below_min_value"),
]


@pytest.mark.parametrize(("param", "value", "code"), OUT_OF_RANGE)
async def test_out_of_range_chat_numbers_are_400(
    http: httpx2.AsyncClient, tiny: str, param: str, value: float, code: str
) -> None:
    extra: dict[str, Any] = {param: value}
    if param == "top_logprobs":
        extra["logprobs"] = True
    r = await http.post("chat/completions", json={"model": tiny, "messages": USER, **extra})
    assert refused(r, param)["code"] == code


async def test_logit_bias_and_top_logprobs_rules(http: httpx2.AsyncClient, tiny: str) -> None:
    for bias, param in [
        ({"50256": 101}, "logit_bias.50256"),
        ({"50256": -100.5}, "logit_bias.50256"),
        ({"50256": "high"}, "logit_bias.50256"),
        ({"not-a-token": 1}, "logit_bias.not-a-token"),
    ]:
        r = await http.post(
            "chat/completions", json={"model": tiny, "messages": USER, "logit_bias": bias}
        )
        refused(r, param)
    r = await http.post(
        "chat/completions", json={"model": tiny, "messages": USER, "top_logprobs": 3}
    )
    assert "logprobs" in refused(r, "top_logprobs")["message"]


async def test_values_in_range_still_answer(http: httpx2.AsyncClient, tiny: str) -> None:
    """The edges of every range are accepted (what the server cannot do is a separate 400)."""
    r = await http.post(
        "chat/completions",
        json={
            "model": tiny,
            "messages": USER,
            "temperature": 2,
            "top_p": 0,
            "frequency_penalty": 0,
            "presence_penalty": 0.0,
            "seed": 2**63 - 1,
            "max_completion_tokens": 1,
            "n": 1,
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 1


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"messages": [{"role": "user", "content": "hi\u0000there"}]}, "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "a\u001bb"}]}]},
            "messages[0].content[0].text",
        ),
        ({"messages": USER, "metadata": {"task": "git\u0007"}}, "metadata.task"),
        ({"messages": USER, "metadata": {"ta\u0000sk": "git"}}, "metadata.ta\u0000sk"),
        ({"messages": USER, "stop": ["\u0000"]}, "stop[0]"),
        ({"messages": USER, "user": "\u007f"}, "user"),
    ],
)
async def test_control_characters_in_a_body_are_400(
    http: httpx2.AsyncClient, tiny: str, payload: dict[str, Any], param: str
) -> None:
    # json= escapes them (\\u0000): exactly what a raw control character cannot be.
    r = await http.post("chat/completions", json={"model": tiny, **payload})
    assert "control character" in refused(r, param)["message"]


async def test_tab_newline_and_carriage_return_are_text(
    http: httpx2.AsyncClient, tiny: str
) -> None:
    messages = [{"role": "user", "content": "line one\r\n\tline two"}]
    r = await http.post(
        "chat/completions", json={"model": tiny, "messages": messages, "max_tokens": 1}
    )
    assert r.status_code == 200, r.text


async def test_fine_tuning_numbers_are_checked(http: httpx2.AsyncClient, tiny: str) -> None:
    good = b"".join(
        b'{"messages": [{"role": "user", "content": "q%d"}, {"role": "assistant", '
        b'"content": "a"}]}\n' % i
        for i in range(10)
    )
    up = await http.post("files", files={"file": ("t.jsonl", good)}, data={"purpose": "fine-tune"})
    assert up.status_code == 200, up.text
    file_id = up.json()["id"]
    jobs_before = (await http.get("fine_tuning/jobs")).json()["data"]
    hp = "method.supervised.hyperparameters"
    cases: list[tuple[str, str]] = [
        ('"seed": -1', "seed"),
        (f'"seed": {2**31}', "seed"),
        ('"seed": NaN', "seed"),
        (
            '"method": {"type": "supervised", "supervised": {"hyperparameters": '
            '{"learning_rate_multiplier": Infinity}}}',
            f"{hp}.learning_rate_multiplier",
        ),
        ('"hyperparameters": {"n_epochs": 0}', "hyperparameters.n_epochs"),
        ('"hyperparameters": {"batch_size": 257}', "hyperparameters.batch_size"),
        (
            '"hyperparameters": {"learning_rate_multiplier": 0}',
            "hyperparameters.learning_rate_multiplier",
        ),
    ]
    for extra, param in cases:
        body = f'{{"model": "{tiny}", "training_file": "{file_id}", {extra}}}'
        r = await http.post(
            "fine_tuning/jobs", content=body, headers={"content-type": "application/json"}
        )
        refused(r, param)
    jobs = await http.get("fine_tuning/jobs")
    assert jobs.json()["data"] == jobs_before  # nothing was created by any of them


@pytest.mark.parametrize("route", ["fine_tuning/jobs", "files", "chat/completions"])
async def test_list_limits_are_checked(http: httpx2.AsyncClient, route: str) -> None:
    for limit in ("0", "-1", "100001", "nan", "1e3"):
        r = await http.get(route, params={"limit": limit})
        refused(r, "limit")


async def test_uploaded_file_name_with_a_control_character_is_refused(
    http: httpx2.AsyncClient, server: Any
) -> None:
    before = sorted(p.name for p in (server.workspace / "local" / "files").iterdir())
    # Written by hand: HTTP clients percent-encode a NUL in a file name, a hostile one need not.
    boundary = "b0undary"
    body = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="purpose"\r\n\r\nuser_data\r\n'
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="file"; filename="train\x00.jsonl"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
        '{"messages": []}\n\r\n'
        f"--{boundary}--\r\n"
    ).encode()
    r = await http.post(
        "files",
        content=body,
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert "control character" in refused(r, "file")["message"]
    after = sorted(p.name for p in (server.workspace / "local" / "files").iterdir())
    assert after == before


async def test_binary_junk_for_fine_tuning_is_an_error_file(server: Any, tiny: str) -> None:
    async with client(server.url) as c:
        junk = await c.files.create(file=("junk.jsonl", bytes(range(256)) * 4), purpose="fine-tune")
        assert junk.status == "error"
        assert junk.status_details is not None and "UTF-8" in junk.status_details
        again = await c.files.retrieve(junk.id)
        assert (again.status, again.status_details) == (junk.status, junk.status_details)

        not_chat = await c.files.create(
            file=("rows.jsonl", b'{"input": "x", "output": "y"}\n'), purpose="fine-tune"
        )
        assert not_chat.status == "error"
        assert not_chat.status_details is not None and "line 1" in not_chat.status_details

        fine = await c.files.create(
            file=(
                "ok.jsonl",
                b'{"messages": [{"role": "user", "content": "q"}, '
                b'{"role": "assistant", "content": "a"}]}\n',
            ),
            purpose="fine-tune",
        )
        assert (fine.status, fine.status_details) == ("processed", None)
        # Other purposes are not fine-tuning data: kept as they are.
        other = await c.files.create(file=("junk.bin", bytes(range(256))), purpose="user_data")
        assert other.status == "processed"

        # A job on the error file fails in validation, saying why, as before.
        job = await c.fine_tuning.jobs.create(model=tiny, training_file=junk.id)
        assert job.status == "validating_files"


async def test_the_checks_cover_every_json_route(
    server: Any, http: httpx2.AsyncClient, tiny: str
) -> None:
    """The body checks are app-wide (a route added later gets them too): here on the route
    that updates a stored completion's metadata, which has no number of its own."""
    from tui.local.request_checks import check_json_body

    assert check_json_body in [d.dependency for d in server.app.router.dependencies]
    made = await http.post(
        "chat/completions",
        json={"model": tiny, "messages": USER, "max_tokens": 1, "store": True},
    )
    assert made.status_code == 200, made.text
    one = f"chat/completions/{made.json()['id']}"
    r = await http.post(one, json={"metadata": {"task": "a\u0000b"}})
    refused(r, "metadata.task")
    r = await http.post(
        one, content=b'{"metadata": {"n": NaN}}', headers={"content-type": "application/json"}
    )
    refused(r, "metadata.n")
    assert (await http.get(one)).json()["metadata"] == {}
