"""`POST /v1/chat/completions`: the request checked the way OpenAI checks it, then generated
by the model's engine, streamed or not (see chat_response.py), with `usage` always reported.

`n` asks for several choices sampled from one prompt (at most `MAX_CHOICES`). The engine
evaluates the shared prompt once for all of them. Choice 0 samples with the request's `seed`
and the others with seeds derived from it (tui.local.protocol.choice_seed), so a seeded
request repeats all its choices, and its first choice is what `n=1` gives.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from tui.local.config import ServerConfig
from tui.local.errors import APIError, bad_request, type_name
from tui.local.protocol import Engine, GenChunk, GenRequest, QueueFull
from tui.local.request_checks import INT64_MAX, INT64_MIN, check_range
from tui.local.routes.chat_response import (
    ClientGone,
    Completion,
    SSEResponse,
    close_streams,
    collect,
    stream_events,
    unless_disconnected,
    until_disconnected,
)
from tui.local.routes.common import Local, validate_metadata
from tui.local.routes.models import model_info
from tui.local.routes.stored_completions import StoredRequest

MAX_STOP_SEQUENCES = 4
# At most this many choices per request. OpenAI allows 128; here every choice is a sequence
# of a CPU engine's few parallel slots, and more than this would only queue.
MAX_CHOICES = 16
MAX_TOP_LOGPROBS = 20

_ROLES = ("system", "assistant", "user", "function", "tool", "developer")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    include_usage: bool | None = None


class ChatRequest(BaseModel):
    # Unknown fields are accepted and ignored (clients send vendor extras); the ones that
    # would change the output and that we cannot honour are refused explicitly below.
    model_config = ConfigDict(extra="allow", strict=True)

    model: str
    messages: list[Any]
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    store: bool | None = None
    metadata: dict[str, Any] | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    logit_bias: dict[str, Any] | None = None
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None
    user: str | None = None


# ---- checking the request ---------------------------------------------------------------------


def _text_content(content: list[Any], where: str) -> str:
    texts = []
    for j, part in enumerate(content):
        part_where = f"{where}.content[{j}]"
        if not isinstance(part, dict) or part.get("type") != "text":
            kind = part.get("type") if isinstance(part, dict) else type_name(part)
            raise bad_request(
                f"Invalid content part {kind!r} in '{part_where}': this server's models "
                "take text parts only.",
                part_where,
                "unsupported_value",
            )
        if not isinstance(part.get("text"), str):
            raise bad_request(
                f"Missing required parameter: '{part_where}.text'.",
                f"{part_where}.text",
                "missing_required_parameter",
            )
        texts.append(part["text"])
    return "".join(texts)


def _message(message: Any, where: str) -> dict[str, str]:
    if not isinstance(message, dict):
        raise bad_request(
            f"Invalid type for '{where}': expected an object, but got "
            f"{type_name(message)} instead.",
            where,
            "invalid_type",
        )
    if "role" not in message:
        raise bad_request(
            f"Missing required parameter: '{where}.role'.",
            f"{where}.role",
            "missing_required_parameter",
        )
    role = message["role"]
    if role not in _ROLES:
        raise bad_request(
            f"Invalid value: {json.dumps(role)}. Supported values are: 'system', "
            "'assistant', 'user', 'function', 'tool', and 'developer'.",
            f"{where}.role",
            "invalid_value",
        )
    if role in ("tool", "function") or message.get("tool_calls"):
        raise bad_request(
            "Tool and function calls are not supported by this server.",
            f"{where}.role",
            "unsupported_value",
        )
    if message.get("content") is None:
        raise bad_request(
            f"Missing required parameter: '{where}.content'.",
            f"{where}.content",
            "missing_required_parameter",
        )
    content = message["content"]
    if isinstance(content, list):
        content = _text_content(content, where)
    elif not isinstance(content, str):
        raise bad_request(
            f"Invalid type for '{where}.content': expected one of a string or array of "
            f"objects, but got {type_name(content)} instead.",
            f"{where}.content",
            "invalid_type",
        )
    # The engines know the three classic roles; "developer" is OpenAI's new name for system.
    return {"role": "system" if role == "developer" else role, "content": content}


def validate_messages(raw: list[Any]) -> list[dict[str, str]]:
    """OpenAI chat messages -> the engine's {role, content} with text content."""
    if not raw:
        raise bad_request(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but "
            "got an empty array instead.",
            "messages",
            "empty_array",
        )
    return [_message(message, f"messages[{i}]") for i, message in enumerate(raw)]


def _stop_list(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else list(stop)
    if len(stops) > MAX_STOP_SEQUENCES:
        raise bad_request(
            f"Invalid 'stop': array too long. Expected an array with maximum length "
            f"{MAX_STOP_SEQUENCES}, but got an array with length {len(stops)} instead.",
            "stop",
            "array_above_max_length",
        )
    return [s for s in stops if s]


def _choices(n: int | None) -> int:
    if n is None:
        return 1
    if n < 1:
        raise bad_request(
            f"Invalid 'n': integer below minimum value. Expected a value >= 1, but got {n} "
            "instead.",
            "n",
            "integer_below_min_value",
        )
    if n > MAX_CHOICES:
        raise bad_request(
            f"Invalid 'n': integer above maximum value. Expected a value <= {MAX_CHOICES}, "
            f"but got {n} instead.",
            "n",
            "integer_above_max_value",
        )
    return n


def _check_numbers(body: ChatRequest) -> None:
    """Every numeric parameter in OpenAI's ranges, before asking whether we support it: a
    value out of range is a bad request on any backend."""
    check_range("temperature", body.temperature, 0, 2)
    check_range("top_p", body.top_p, 0, 1)
    check_range("frequency_penalty", body.frequency_penalty, -2, 2)
    check_range("presence_penalty", body.presence_penalty, -2, 2)
    check_range("seed", body.seed, INT64_MIN, INT64_MAX)
    check_range("top_logprobs", body.top_logprobs, 0, MAX_TOP_LOGPROBS)
    if body.top_logprobs is not None and not body.logprobs:
        raise bad_request(
            "Invalid value for 'top_logprobs': 'logprobs' must be set to true when "
            "'top_logprobs' is given.",
            "top_logprobs",
            "invalid_value",
        )
    for token, bias in (body.logit_bias or {}).items():
        param = f"logit_bias.{token}"
        if not token.isdigit():
            raise bad_request(
                f"Invalid key in 'logit_bias': {token!r}. Keys are token ids (integers).",
                param,
                "invalid_value",
            )
        if isinstance(bias, bool) or not isinstance(bias, int | float):
            raise bad_request(
                f"Invalid type for '{param}': expected a number, but got {type_name(bias)} "
                "instead.",
                param,
                "invalid_type",
            )
        check_range(param, bias, -100, 100)


def _refuse_unsupported(body: ChatRequest) -> None:
    if body.logprobs:
        raise bad_request("logprobs are not supported by this server.", "logprobs")
    if body.tools:
        raise bad_request("tools are not supported by this server.", "tools")
    if body.logit_bias:
        raise bad_request("logit_bias is not supported by this server.", "logit_bias")
    for name in ("frequency_penalty", "presence_penalty"):
        value = getattr(body, name)
        if value:
            raise bad_request(f"{name} is not supported by this server (use 0).", name)
    if body.response_format and body.response_format.get("type") not in (None, "text"):
        raise bad_request(
            "Only response_format {'type': 'text'} is supported by this server.",
            "response_format",
        )


def _max_tokens(body: ChatRequest) -> int | None:
    if body.max_tokens is not None and body.max_completion_tokens is not None:
        raise bad_request(
            "max_tokens and max_completion_tokens cannot both be set; use max_completion_tokens.",
            "max_tokens",
        )
    # `is not None`, not `or`: max_completion_tokens=0 must be refused, not ignored.
    limit_name = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    max_tokens = (
        body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    )
    check_range(limit_name, max_tokens, 1, INT64_MAX)
    return max_tokens


@dataclass
class _Checked:
    """A chat request that passed every check that needs no model."""

    messages: list[dict[str, str]]
    metadata: dict[str, str]
    stop: list[str]
    max_tokens: int | None
    n: int


def check_request(body: ChatRequest) -> _Checked:
    n = _choices(body.n)
    _check_numbers(body)
    _refuse_unsupported(body)
    messages = validate_messages(body.messages)
    metadata = validate_metadata(body.metadata)
    stop = _stop_list(body.stop)
    max_tokens = _max_tokens(body)
    if body.stream_options is not None and not body.stream:
        raise bad_request(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "stream_options",
        )
    return _Checked(messages, metadata, stop, max_tokens, n)


def _check_context(engine: Engine, messages: list[dict[str, str]], max_tokens: int | None) -> None:
    prompt_tokens = engine.count_tokens(messages)
    context = engine.context_length
    wanted = prompt_tokens + (max_tokens or 1)
    if prompt_tokens >= context or wanted > context:
        detail = (
            f"you requested {wanted} tokens ({prompt_tokens} in the messages, "
            f"{max_tokens} in the completion)"
            if max_tokens
            else f"your messages resulted in {prompt_tokens} tokens"
        )
        raise bad_request(
            f"This model's maximum context length is {context} tokens. However, {detail}. "
            "Please reduce the length of the messages or completion.",
            "messages",
            "context_length_exceeded",
        )


# ---- the route --------------------------------------------------------------------------------


async def _first_chunk(streams: Sequence[AsyncIterator[GenChunk]], model: str) -> GenChunk | None:
    """Choice 0's first chunk, awaited before answering, so that a full queue is a real HTTP
    429 (and an engine's refusal a 400), not an error in the middle of a 200 stream. The
    engine admits a request's choices together, so choice 0 speaks for all of them."""
    try:
        return await streams[0].__anext__()
    except StopAsyncIteration:
        return None
    except QueueFull:
        await close_streams(streams)
        raise APIError(
            429,
            f"The local model {model} is busy: its queue of waiting requests is full. "
            "Retry shortly or send fewer requests at once.",
            type="requests",
            code="rate_limit_exceeded",
            headers={"retry-after": "1"},
        ) from None
    except ValueError as exc:
        # The engine's own checks (context length, max_tokens) after ours: still a 400.
        await close_streams(streams)
        code = "context_length_exceeded" if "context length" in str(exc) else None
        raise bad_request(str(exc), "messages" if code else None, code) from None
    except BaseException:
        await close_streams(streams)
        raise


async def create_chat_completion(
    body: ChatRequest, request: Request, local: Local
) -> dict[str, Any] | SSEResponse | JSONResponse:
    checked = check_request(body)
    model_info(local.registry, body.model)
    try:
        engine = await local.registry.engine(body.model)
    except KeyError:  # the model went away while loading
        model_info(local.registry, body.model)
        raise
    _check_context(engine, checked.messages, checked.max_tokens)
    gen_request = GenRequest(
        messages=checked.messages,
        max_tokens=checked.max_tokens,
        temperature=1.0 if body.temperature is None else float(body.temperature),
        top_p=1.0 if body.top_p is None else float(body.top_p),
        stop=checked.stop,
        seed=body.seed,
    )
    stored = (
        StoredRequest(
            messages=[dict(m) for m in body.messages],
            metadata=checked.metadata,
            params={"seed": body.seed, "temperature": body.temperature, "top_p": body.top_p},
        )
        if body.store
        else None
    )
    completion = Completion(model=body.model, n=checked.n, db=local.db, stored=stored)
    streams = engine.generate_choices(gen_request, checked.n)
    try:
        # A busy model's first token can be seconds away; a client that leaves meanwhile (a
        # cancelled run, a quitting app) gives its place in the queue back at once, instead
        # of being generated for no one and holding the server's shutdown.
        first = await until_disconnected(request, _first_chunk(streams, body.model))
    except ClientGone:
        return JSONResponse({}, status_code=499)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return SSEResponse(stream_events(completion, streams, first, include_usage))
    return await unless_disconnected(request, collect(completion, streams, first))


def router(config: ServerConfig) -> APIRouter:
    r = APIRouter()
    r.add_api_route(
        "/v1/chat/completions",
        create_chat_completion,
        methods=["POST"],
        response_model=None,
        max_body_size=config.max_body_bytes,
    )
    return r
