"""A body over the local server's limit is always answered 413 with OpenAI's JSON error, never
a reset connection: declared far over the limit (more than the server ever used to read and
throw away), sent chunked with no length (cut off at the limit while the client is still
sending), and many at once. Real HTTP on 127.0.0.1; a reset shows up as an httpx2 transport
error instead of a response.

The bug these catch: the server answered early and closed the connection while the client was
still sending (a chunked body past the limit, a declared one past 64 MiB, or any declared
one it had not finished reading within 5 s, which under load happened to 4 of 12)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.local.server_harness import KEY, start_thread_server

MAX_BODY = 64 * 1024
MAX_UPLOAD = 256 * 1024
PIECE = 64 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("oversized")
    running = start_thread_server(
        root / "ws", [], max_body_bytes=MAX_BODY, max_upload_bytes=MAX_UPLOAD
    )
    yield running
    running.stop()


@pytest.fixture
async def http(server: Any) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(
        base_url=server.url + "/", headers={"authorization": f"Bearer {KEY}"}, timeout=120
    ) as h:
        yield h


async def pieces(total: int) -> AsyncIterator[bytes]:
    """`total` bytes of a JSON string's inside, a piece at a time (never all in memory)."""
    yield b'{"model": "m", "messages": [{"role": "user", "content": "'
    sent = 0
    while sent < total:
        n = min(PIECE, total - sent)
        yield b"x" * n
        sent += n
    yield b'"}]}'


def body_size(total: int) -> int:
    return len(b'{"model": "m", "messages": [{"role": "user", "content": "' + b'"}]}') + total


def assert_too_large(r: httpx2.Response, limit: int) -> None:
    assert r.status_code == 413, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == {
        "error": {
            "message": (
                f"The request body is too large: this server accepts at most {limit} bytes here."
            ),
            "type": "invalid_request_error",
            "param": None,
            "code": "request_too_large",
        }
    }


async def post(
    http: httpx2.AsyncClient, path: str, total: int, *, chunked: bool, key: str = KEY
) -> httpx2.Response:
    headers = {"content-type": "application/json", "authorization": f"Bearer {key}"}
    if not chunked:
        headers["content-length"] = str(body_size(total))
    return await http.post(path, content=pieces(total), headers=headers)


async def test_a_declared_length_far_over_the_limit_is_413(
    http: httpx2.AsyncClient,
) -> None:
    # 80 MiB: more than the 64 MiB the server used to read before closing on the client.
    r = await post(http, "chat/completions", 80 * 1024 * 1024, chunked=False)
    assert_too_large(r, MAX_BODY)
    assert (await http.get("models")).status_code == 200


@pytest.mark.parametrize(("path", "limit"), [("chat/completions", MAX_BODY), ("files", MAX_UPLOAD)])
async def test_a_chunked_body_over_the_limit_is_413(
    http: httpx2.AsyncClient, path: str, limit: int
) -> None:
    # 8 MiB with no length: the limit is passed early and the client is still sending.
    r = await post(http, path, 8 * 1024 * 1024, chunked=True)
    assert_too_large(r, limit)
    assert (await http.get("models")).status_code == 200


async def test_many_oversized_bodies_at_once_are_all_413(http: httpx2.AsyncClient) -> None:
    kinds = [i % 2 == 0 for i in range(12)]  # half chunked, half with a declared length
    answers = await asyncio.gather(
        *(post(http, "chat/completions", 4 * 1024 * 1024, chunked=c) for c in kinds),
        return_exceptions=True,
    )
    failures = [a for a in answers if isinstance(a, BaseException)]
    assert failures == []
    for r in answers:
        assert isinstance(r, httpx2.Response)
        assert_too_large(r, MAX_BODY)
    assert (await http.get("models")).status_code == 200


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_wrong_key_with_a_body_is_401_not_a_reset(
    http: httpx2.AsyncClient, chunked: bool
) -> None:
    # Within what a request may hold (a stranger sending more has the connection closed).
    r = await post(http, "chat/completions", MAX_UPLOAD // 2, chunked=chunked, key="sk-wrong")
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"


async def test_a_body_under_the_limit_still_reaches_the_route(http: httpx2.AsyncClient) -> None:
    # Chunked and under the limit: read whole, refused by the route for its unknown model.
    r = await post(http, "chat/completions", MAX_BODY // 2, chunked=True)
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "model_not_found"


def test_no_leftovers(server: Any) -> None:
    files = Path(server.app.state.local.config.workspace) / "local" / "files"
    assert not files.exists() or list(files.iterdir()) == []


async def test_a_client_waiting_for_100_continue_gets_the_413_at_once(server: Any) -> None:
    """It has sent only its headers: asked for the body, it would be told 100 Continue and
    send megabytes only to have them thrown away (the old way even waited 5 s for them)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
            + f"authorization: Bearer {KEY}\r\n".encode()
            + b"content-type: application/json\r\n"
            + f"content-length: {MAX_BODY * 100}\r\n".encode()
            + b"expect: 100-continue\r\n\r\n"
        )
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status, *lines = head.decode("latin-1").split("\r\n")
        assert status.startswith("HTTP/1.1 413 "), status
        fields = dict(line.split(": ", 1) for line in lines if line)
        body = await reader.readexactly(int(fields["content-length"]))
        assert json.loads(body)["error"]["code"] == "request_too_large"
    finally:
        writer.close()
