"""`distill-tui serve`: an OpenAI-compatible HTTP API over local models.

Routes and response bodies follow OpenAI's (the openai SDK's types are the reference):
models, chat completions (streamed or not, `usage` always reported), stored completions
(`store=true` + `metadata`), files, and fine-tuning jobs with events and checkpoints. Errors
are `{"error": {"message", "type", "param", "code"}}` with OpenAI's statuses. In particular
an invalid request body is a 400 `invalid_request_error`, as on api.openai.com, not FastAPI's
422, so a client handles both backends with the same `openai.BadRequestError`.

Every request needs `Authorization: Bearer <key>`. Bodies are limited in size (413): JSON
bodies by `max_body_bytes`, uploads by `max_upload_bytes`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import secrets
import string
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio
from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tui.local.db import LocalDB, Page, new_id
from tui.local.jobs import JobError, JobManager, job_object

log = logging.getLogger("distill.local.server")

MiB = 1024 * 1024

# OpenAI's limits for `metadata` (chat completions, jobs): 16 pairs, keys up to 64
# characters, values up to 512.
METADATA_MAX_PAIRS = 16
METADATA_MAX_KEY = 64
METADATA_MAX_VALUE = 512
MAX_STOP_SEQUENCES = 4
FILE_PURPOSES = ("fine-tune", "assistants", "batch", "vision", "user_data", "evals")
SYSTEM_FINGERPRINT = "fp_distill_local"


@dataclass
class ServerConfig:
    workspace: Path
    api_key: str
    models: list[Path] = field(default_factory=list)  # extra GGUF files / HF directories
    max_body_bytes: int = 16 * MiB
    max_upload_bytes: int = 512 * MiB  # OpenAI's per-file limit
    max_queue: int = 64  # waiting generation requests per model before 429
    n_threads: int | None = None
    # Model ids to load before serving; None = the first listed model (the default one).
    preload: list[str] | None = field(default_factory=list)
    trainer_python: str = sys.executable


class APIError(Exception):
    """An error response in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers

    def response(self) -> JSONResponse:
        return error_response(
            self.status, self.message, self.type, self.param, self.code, self.headers
        )


def error_response(
    status: int,
    message: str,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def not_found(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(404, message, param=param, code=code)


# ---- auth and size guard (pure ASGI: it must not buffer streamed responses) -----------------


class Guard:
    """Checks the bearer token before anything else runs, and refuses a declared
    Content-Length over the route's limit before reading the body. Bodies without a length
    (chunked) are cut off while being read by FastAPI's own `max_body_size`."""

    def __init__(self, app: ASGIApp, api_key: str, max_body: int, max_upload: int) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()
        self.max_body = max_body
        self.max_upload = max_upload

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        auth = headers.get(b"authorization")
        if auth is None or not auth.strip():
            await _send_early(
                scope,
                receive,
                send,
                error_response(
                    401,
                    "You didn't provide an API key. You need to provide your API key in an "
                    "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                ),
            )
            return
        if not hmac.compare_digest(auth.strip(), self.expected):
            # Never echo the key back, not even masked: it may be someone else's secret.
            await _send_early(
                scope,
                receive,
                send,
                error_response(401, "Incorrect API key provided.", code="invalid_api_key"),
            )
            return
        limit = self.max_upload if _is_upload(scope) else self.max_body
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _send_early(scope, receive, send, too_large(limit))
            return
        await self.app(scope, receive, send)


def _is_upload(scope: Scope) -> bool:
    return bool(scope["method"] == "POST" and scope["path"].rstrip("/") == "/v1/files")


def too_large(limit: int) -> JSONResponse:
    return error_response(
        413,
        f"The request body is too large: this server accepts at most {limit} bytes here.",
        code="request_too_large",
    )


# How much of a refused body we read and throw away so that the client, still sending, sees
# our answer instead of a reset connection. Beyond that the connection is simply closed.
_DRAIN_LIMIT = 64 * MiB


async def _send_early(scope: Scope, receive: Receive, send: Send, response: JSONResponse) -> None:
    headers = dict(scope["headers"])
    declared = headers.get(b"content-length", b"0")
    if declared.isdigit() and 0 < int(declared) <= _DRAIN_LIMIT:
        with anyio.move_on_after(5):
            more = True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    break
                more = message.get("more_body", False)
    response.headers["connection"] = "close"
    await response(scope, receive, send)


# ---- request bodies ---------------------------------------------------------------------------


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


class MetadataUpdate(BaseModel):
    model_config = ConfigDict(strict=True)
    metadata: dict[str, Any] | None


class SupervisedHyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    n_epochs: int | Literal["auto"] | None = None
    batch_size: int | Literal["auto"] | None = None
    learning_rate_multiplier: float | Literal["auto"] | None = None
    # A local extension: LoRA (default) or a full fine-tune. OpenAI has no such knob.
    training_type: Literal["lora", "full"] | None = None


class SupervisedMethod(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    hyperparameters: SupervisedHyperparameters | None = None


class Method(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedMethod | None = None


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    model: str
    training_file: str
    validation_file: str | None = None
    suffix: str | None = None
    seed: int | None = None
    hyperparameters: SupervisedHyperparameters | None = None
    method: Method | None = None
    metadata: dict[str, Any] | None = None
    integrations: list[Any] | None = None


# ---- validation helpers -------------------------------------------------------------------------

_ROLES = ("system", "assistant", "user", "function", "tool", "developer")


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def validate_metadata(metadata: dict[str, Any] | None, param: str = "metadata") -> dict[str, str]:
    if metadata is None:
        return {}
    if len(metadata) > METADATA_MAX_PAIRS:
        raise bad_request(
            f"Invalid '{param}': too many properties. Expected an object with at most "
            f"{METADATA_MAX_PAIRS} properties, but got an object with {len(metadata)} "
            "properties instead.",
            param,
            "object_above_max_properties",
        )
    for key, value in metadata.items():
        if len(key) > METADATA_MAX_KEY:
            raise bad_request(
                f"Invalid '{param}': key too long. Expected a key with maximum length "
                f"{METADATA_MAX_KEY}, but got a key with length {len(key)} instead.",
                param,
                "invalid_value",
            )
        if not isinstance(value, str):
            raise bad_request(
                f"Invalid type for '{param}.{key}': expected a string, but got "
                f"{_type_name(value)} instead.",
                f"{param}.{key}",
                "invalid_type",
            )
        if len(value) > METADATA_MAX_VALUE:
            raise bad_request(
                f"Invalid '{param}.{key}': string too long. Expected a string with maximum "
                f"length {METADATA_MAX_VALUE}, but got a string with length {len(value)} "
                "instead.",
                f"{param}.{key}",
                "string_above_max_length",
            )
    return {str(k): str(v) for k, v in metadata.items()}


def validate_messages(raw: list[Any]) -> list[dict[str, str]]:
    """OpenAI chat messages -> the engine's {role, content} with text content."""
    if not raw:
        raise bad_request(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but "
            "got an empty array instead.",
            "messages",
            "empty_array",
        )
    out: list[dict[str, str]] = []
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad_request(
                f"Invalid type for '{where}': expected an object, but got "
                f"{_type_name(message)} instead.",
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
            texts = []
            for j, part in enumerate(content):
                part_where = f"{where}.content[{j}]"
                if not isinstance(part, dict) or part.get("type") != "text":
                    kind = part.get("type") if isinstance(part, dict) else _type_name(part)
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
            content = "".join(texts)
        elif not isinstance(content, str):
            raise bad_request(
                f"Invalid type for '{where}.content': expected one of a string or array of "
                f"objects, but got {_type_name(content)} instead.",
                f"{where}.content",
                "invalid_type",
            )
        # The engines know the three classic roles; "developer" is OpenAI's new name for system.
        out.append({"role": "system" if role == "developer" else role, "content": content})
    return out


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


def _check_range(name: str, value: float | None, lo: float, hi: float) -> None:
    if value is None:
        return
    if value < lo:
        raise bad_request(
            f"Invalid '{name}': decimal below minimum value. Expected a value >= {lo:g}, but "
            f"got {value:g} instead.",
            name,
            "decimal_below_min_value",
        )
    if value > hi:
        raise bad_request(
            f"Invalid '{name}': decimal above maximum value. Expected a value <= {hi:g}, but "
            f"got {value:g} instead.",
            name,
            "decimal_above_max_value",
        )


def _refuse_unsupported(body: ChatRequest) -> None:
    if body.n is not None and body.n != 1:
        raise bad_request(
            f"Invalid 'n': this server generates one choice per request (n=1), got {body.n}.",
            "n",
            "unsupported_value",
        )
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


# ---- the app ------------------------------------------------------------------------------------

_ID_CHARS = string.ascii_letters + string.digits


def _completion_id() -> str:
    return "chatcmpl-" + "".join(secrets.choice(_ID_CHARS) for _ in range(29))


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _completion_body(
    completion_id: str, created: int, model: str, text: str, last: Any
) -> dict[str, Any]:
    """OpenAI's chat.completion object; `last` is the engine's final chunk (or None)."""
    finish = (last.finish_reason if last is not None else None) or "stop"
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": text,
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
        "usage": _usage(
            last.prompt_tokens if last is not None else 0,
            last.completion_tokens if last is not None else 0,
        ),
        "service_tier": "default",
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }


def _list(data: list[dict[str, Any]], has_more: bool, *, ids: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"object": "list", "data": data}
    if ids:
        out["first_id"] = data[0]["id"] if data else None
        out["last_id"] = data[-1]["id"] if data else None
    out["has_more"] = has_more
    return out


def _page_or_404(page: Page | None, after: str | None) -> Page:
    if page is None:
        raise not_found(f"No object found for 'after' cursor: {after}.", "after")
    return page


def _metadata_filter(request: Request) -> dict[str, str]:
    # The SDK sends metadata={"k": "v"} as metadata[k]=v.
    found = {}
    for key, value in request.query_params.multi_items():
        m = re.fullmatch(r"metadata\[(.+)\]", key)
        if m:
            found[m.group(1)] = value
    return found


@dataclass
class _Stored:
    """What a stored completion keeps besides the response body."""

    messages: list[dict[str, Any]]
    metadata: dict[str, str]
    params: dict[str, Any]


def create_app(config: ServerConfig) -> FastAPI:
    """The server as an ASGI app; state (database, models, jobs) lives from startup to shutdown."""
    from tui.local.models import GenRequest, ModelInfo, ModelRegistry, QueueFull

    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = await asyncio.to_thread(LocalDB, config.workspace)
        registry = ModelRegistry(
            extra_paths=list(config.models), n_threads=config.n_threads, max_queue=config.max_queue
        )
        for row in await asyncio.to_thread(db.ft_models):
            path = Path(row["path"])
            if not path.exists():
                log.warning("fine-tuned model %s is missing at %s; not served", row["id"], path)
                continue
            registry.add(
                ModelInfo(
                    id=row["id"],
                    kind=row["kind"],
                    path=path,
                    created=row["created"],
                    owned_by="ft",
                    base=row["base"],
                )
            )
        jobs = JobManager(db, registry, python=config.trainer_python)
        await jobs.start()
        listed = registry.list()
        preload = config.preload if config.preload is not None else [m.id for m in listed[:1]]
        for model_id in preload:
            await registry.engine(model_id)
        state.update(db=db, registry=registry, jobs=jobs)
        try:
            yield
        finally:
            await jobs.aclose()
            await registry.aclose()
            await asyncio.to_thread(db.close)

    app = FastAPI(
        title="distill-tui local backend",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    # Size limits are per route (FastAPI's max_body_size), not app-wide: an app-wide limiter
    # sits outside Guard and would replace its JSON 413 with a plain-text one.
    body_limit = config.max_body_bytes
    app.add_middleware(
        Guard,
        api_key=config.api_key,
        max_body=config.max_body_bytes,
        max_upload=config.max_upload_bytes,
    )
    _install_error_handlers(app, config)
    app.state.local = state  # tests and benchmarks look at the registry through this

    def db() -> LocalDB:
        return state["db"]  # type: ignore[no-any-return]

    def registry() -> Any:
        return state["registry"]

    def jobs() -> JobManager:
        return state["jobs"]  # type: ignore[no-any-return]

    # ---- models -------------------------------------------------------------------------------

    def model_object(info: Any) -> dict[str, Any]:
        return {
            "id": info.id,
            "object": "model",
            "created": info.created,
            "owned_by": info.owned_by,
        }

    def model_info(model_id: str, param: str | None = "model") -> Any:
        try:
            return registry().info(model_id)
        except KeyError:
            raise not_found(
                f"The model `{model_id}` does not exist or you do not have access to it.",
                param,
                "model_not_found",
            ) from None

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_object(m) for m in registry().list()]}

    @app.get("/v1/models/{model_id:path}")
    async def retrieve_model(model_id: str) -> dict[str, Any]:
        return model_object(model_info(model_id, None))

    # ---- chat completions ---------------------------------------------------------------------

    @app.post("/v1/chat/completions", response_model=None, max_body_size=body_limit)
    async def create_chat_completion(
        body: ChatRequest, request: Request
    ) -> dict[str, Any] | SSEResponse:
        _refuse_unsupported(body)
        messages = validate_messages(body.messages)
        metadata = validate_metadata(body.metadata)
        _check_range("temperature", body.temperature, 0, 2)
        _check_range("top_p", body.top_p, 0, 1)
        stop = _stop_list(body.stop)
        if body.max_tokens is not None and body.max_completion_tokens is not None:
            raise bad_request(
                "max_tokens and max_completion_tokens cannot both be set; use "
                "max_completion_tokens.",
                "max_tokens",
            )
        max_tokens = body.max_completion_tokens or body.max_tokens
        limit_name = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        if max_tokens is not None and max_tokens < 1:
            raise bad_request(
                f"Invalid '{limit_name}': integer below minimum value. Expected a value >= 1, "
                f"but got {max_tokens} instead.",
                limit_name,
                "integer_below_min_value",
            )
        if body.stream_options is not None and not body.stream:
            raise bad_request(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                "stream_options",
            )
        model_info(body.model)
        try:
            engine = await registry().engine(body.model)
        except KeyError:
            model_info(body.model)
            raise
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
        gen_request = GenRequest(
            messages=messages,
            max_tokens=max_tokens,
            temperature=1.0 if body.temperature is None else float(body.temperature),
            top_p=1.0 if body.top_p is None else float(body.top_p),
            stop=stop,
            seed=body.seed,
        )
        stored = (
            _Stored(
                messages=[dict(m) for m in body.messages],
                metadata=metadata,
                params={"seed": body.seed, "temperature": body.temperature, "top_p": body.top_p},
            )
            if body.store
            else None
        )
        completion_id = _completion_id()
        created = int(time.time())

        gen = engine.generate(gen_request)
        # The first chunk is awaited before answering, so a full queue is a real HTTP 429
        # and not an error in the middle of a 200 stream.
        try:
            first = await _first(gen)
        except QueueFull:
            await gen.aclose()
            raise APIError(
                429,
                f"The local model {body.model} is busy: its queue of waiting requests is full. "
                "Retry shortly or send fewer requests at once.",
                type="requests",
                code="rate_limit_exceeded",
                headers={"retry-after": "1"},
            ) from None
        except ValueError as exc:
            # The engine's own checks (context length, max_tokens) after ours: still a 400.
            await _close(gen)
            code = "context_length_exceeded" if "context length" in str(exc) else None
            raise bad_request(str(exc), "messages" if code else None, code) from None
        except BaseException:
            await _close(gen)
            raise

        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return SSEResponse(
                _stream_events(
                    gen, first, completion_id, created, body.model, include_usage, stored
                )
            )

        async def collect() -> dict[str, Any]:
            try:
                return await _collect(gen, first, completion_id, created, body.model, stored)
            finally:
                await _close(gen)

        result = await _unless_disconnected(request, collect())
        return result

    async def _store(response: dict[str, Any], stored: _Stored) -> None:
        body = dict(response)
        body["metadata"] = stored.metadata
        body.update({k: v for k, v in stored.params.items()})
        await asyncio.to_thread(db().add_completion, body, stored.messages, stored.metadata)

    async def _collect(
        gen: Any,
        first: Any,
        completion_id: str,
        created: int,
        model: str,
        stored: _Stored | None,
    ) -> dict[str, Any]:
        parts: list[str] = []
        chunk = first
        last = first
        while chunk is not None:
            parts.append(chunk.text)
            last = chunk
            if chunk.finish_reason is not None:
                break
            chunk = await _next(gen)
        response = _completion_body(completion_id, created, model, "".join(parts), last)
        if stored is not None:
            await _store(response, stored)
        return response

    async def _stream_events(
        gen: Any,
        first: Any,
        completion_id: str,
        created: int,
        model: str,
        include_usage: bool,
        stored: _Stored | None,
    ) -> AsyncIterator[bytes]:
        def chunk(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
            payload: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "service_tier": "default",
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "choices": choices,
            }
            if include_usage:
                payload["usage"] = usage
            return b"data: " + json.dumps(payload).encode() + b"\n\n"

        def delta(d: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
            return [{"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}]

        try:
            yield chunk(delta({"role": "assistant", "content": "", "refusal": None}))
            parts: list[str] = []
            item = first
            last = first
            while item is not None:
                last = item
                if item.text:
                    parts.append(item.text)
                    yield chunk(delta({"content": item.text}))
                if item.finish_reason is not None:
                    break
                item = await _next(gen)
            response = _completion_body(completion_id, created, model, "".join(parts), last)
            yield chunk(delta({}, response["choices"][0]["finish_reason"]))
            if include_usage:
                yield chunk([], response["usage"])
            if stored is not None:
                # Stored before [DONE], so a client that lists right after the stream sees it.
                await _store(response, stored)
            yield b"data: [DONE]\n\n"
        except Exception as exc:
            # The 200 is already sent: report in-band, as OpenAI does; the SDK raises it.
            log.exception("generation failed mid-stream")
            error = {
                "error": {
                    "message": f"The server had an error while generating: {exc}",
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
            }
            yield b"data: " + json.dumps(error).encode() + b"\n\n"
        finally:
            await _close(gen)

    @app.get("/v1/chat/completions")
    def list_chat_completions(
        request: Request,
        model: str | None = None,
        after: str | None = None,
        limit: int = Query(20, ge=1, le=1000),
        order: Literal["asc", "desc"] = "asc",
    ) -> dict[str, Any]:
        page = _page_or_404(
            db().list_completions(
                model=model,
                metadata=_metadata_filter(request),
                after=after,
                limit=limit,
                order=order,
            ),
            after,
        )
        return _list([r["body"] for r in page.rows], page.has_more)

    def stored_completion(completion_id: str) -> dict[str, Any]:
        row = db().get_completion(completion_id)
        if row is None:
            raise not_found(
                f"No stored chat completion found with id '{completion_id}'.",
                "completion_id",
                "not_found",
            )
        return row

    @app.get("/v1/chat/completions/{completion_id}")
    def retrieve_chat_completion(completion_id: str) -> dict[str, Any]:
        return stored_completion(completion_id)["body"]  # type: ignore[no-any-return]

    @app.post("/v1/chat/completions/{completion_id}", max_body_size=body_limit)
    def update_chat_completion(completion_id: str, body: MetadataUpdate) -> dict[str, Any]:
        stored_completion(completion_id)
        metadata = validate_metadata(body.metadata)
        row = db().update_completion_metadata(completion_id, metadata)
        if row is None:
            stored_completion(completion_id)
        assert row is not None
        return row["body"]  # type: ignore[no-any-return]

    @app.get("/v1/chat/completions/{completion_id}/messages")
    def list_chat_completion_messages(
        completion_id: str,
        after: str | None = None,
        limit: int = Query(20, ge=1, le=1000),
        order: Literal["asc", "desc"] = "asc",
    ) -> dict[str, Any]:
        row = stored_completion(completion_id)
        messages = []
        for i, m in enumerate(row["request_messages"]):
            content = m.get("content")
            parts = None
            if isinstance(content, list):
                parts = content
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            messages.append(
                {
                    "id": f"{completion_id}-{i}",
                    "role": m.get("role"),
                    "content": content,
                    "name": m.get("name"),
                    "content_parts": parts,
                }
            )
        if order == "desc":
            messages.reverse()
        if after is not None:
            ids = [m["id"] for m in messages]
            if after not in ids:
                raise not_found(f"No message found for 'after' cursor: {after}.", "after")
            messages = messages[ids.index(after) + 1 :]
        return _list(messages[:limit], len(messages) > limit)

    @app.delete("/v1/chat/completions/{completion_id}")
    def delete_chat_completion(completion_id: str) -> dict[str, Any]:
        stored_completion(completion_id)
        db().delete_completion(completion_id)
        return {"object": "chat.completion.deleted", "id": completion_id, "deleted": True}

    # ---- files --------------------------------------------------------------------------------

    def file_object(row: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": row["id"],
            "object": "file",
            "bytes": row["bytes"],
            "created_at": row["created_at"],
            "expires_at": None,
            "filename": row["filename"],
            "purpose": row["purpose"],
            "status": row["status"],
            "status_details": None,
        }

    def stored_file(file_id: str) -> dict[str, Any]:
        row = db().get_file(file_id)
        if row is None:
            raise not_found(f"No such File object: {file_id}", "id")
        return row

    @app.post("/v1/files", max_body_size=config.max_upload_bytes)
    async def upload_file(
        file: UploadFile = File(...),  # noqa: B008 - FastAPI's declaration style
        purpose: str = Form(...),
    ) -> dict[str, Any]:
        if purpose not in FILE_PURPOSES:
            raise bad_request(
                f"Invalid value: {purpose!r}. Supported values are: "
                + ", ".join(repr(p) for p in FILE_PURPOSES)
                + ".",
                "purpose",
                "invalid_value",
            )
        file_id = new_id("file-")
        # The client's name is only a label: it is shown, never used as a path.
        filename = Path((file.filename or "upload").replace("\\", "/")).name[:255] or "upload"
        target = db().file_path(file_id)
        size = await asyncio.to_thread(_copy_upload, file, target, config.max_upload_bytes)
        if size is None:
            raise APIError(
                413, too_large_message(config.max_upload_bytes), code="request_too_large"
            )
        row = await asyncio.to_thread(db().add_file, file_id, size, filename, purpose)
        return file_object(row)

    @app.get("/v1/files")
    def list_files(
        purpose: str | None = None,
        after: str | None = None,
        limit: int = Query(10000, ge=1, le=10000),
        order: Literal["asc", "desc"] = "desc",
    ) -> dict[str, Any]:
        page = _page_or_404(
            db().list_files(purpose=purpose, after=after, limit=limit, order=order), after
        )
        return _list([file_object(r) for r in page.rows], page.has_more)

    @app.get("/v1/files/{file_id}")
    def retrieve_file(file_id: str) -> dict[str, Any]:
        return file_object(stored_file(file_id))

    @app.get("/v1/files/{file_id}/content", response_model=None)
    def file_content(file_id: str) -> FileResponse:
        row = stored_file(file_id)
        return FileResponse(
            db().file_path(row["id"]),
            media_type="application/octet-stream",
            headers={"content-disposition": f'attachment; filename="{row["id"]}"'},
        )

    @app.delete("/v1/files/{file_id}")
    def delete_file(file_id: str) -> dict[str, Any]:
        stored_file(file_id)
        db().delete_file(file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    # ---- fine-tuning --------------------------------------------------------------------------

    def stored_job(job_id: str) -> dict[str, Any]:
        row = db().get_job(job_id)
        if row is None:
            raise not_found(
                f"Could not find fine-tuning job: {job_id}",
                "fine_tuning_job_id",
                "fine_tuning_job_not_found",
            )
        return row

    @app.post("/v1/fine_tuning/jobs", max_body_size=body_limit)
    async def create_job(body: JobRequest) -> dict[str, Any]:
        try:
            info = registry().info(body.model)
        except KeyError:
            raise bad_request(
                f"Model {body.model} is not available for fine-tuning or does not exist.",
                "model",
                "model_not_available",
            ) from None
        for param in ("training_file", "validation_file"):
            file_id = getattr(body, param)
            if file_id is None:
                continue
            row = await asyncio.to_thread(db().get_file, file_id)
            if row is None:
                raise bad_request(f"invalid {param}: {file_id}", param, "invalid_file")
            if row["purpose"] != "fine-tune":
                raise bad_request(
                    f"invalid {param}: {file_id} was uploaded with purpose "
                    f"{row['purpose']!r}; fine-tuning needs purpose 'fine-tune'.",
                    param,
                    "invalid_file",
                )
        suffix = body.suffix or None
        if suffix is not None and not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", suffix):
            raise bad_request(
                "Invalid 'suffix': up to 64 letters, digits, '-', '_' or '.' (it becomes part "
                "of the model id).",
                "suffix",
                "invalid_value",
            )
        if body.method is not None and body.method.type != "supervised":
            raise bad_request(
                f"Fine-tuning method {body.method.type!r} is not supported by this server; "
                "use 'supervised'.",
                "method.type",
                "unsupported_value",
            )
        from_method = (
            body.method.supervised.hyperparameters
            if body.method is not None and body.method.supervised is not None
            else None
        )
        if from_method is not None and body.hyperparameters is not None:
            raise bad_request(
                "Pass hyperparameters either in 'method' or at the top level (deprecated), "
                "not both.",
                "hyperparameters",
            )
        hp_in = from_method or body.hyperparameters or SupervisedHyperparameters()
        hp = _hyperparameters(hp_in)
        metadata = validate_metadata(body.metadata) if body.metadata is not None else None
        seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
        job = await jobs().create(
            {
                "model": info.id,
                "training_file": body.training_file,
                "validation_file": body.validation_file,
                "suffix": suffix,
                "seed": seed,
                "hyperparameters": hp,
                "train_method": hp_in.training_type or "lora",
                "metadata": metadata,
            }
        )
        return job_object(job)

    @app.get("/v1/fine_tuning/jobs")
    def list_jobs(
        request: Request,
        after: str | None = None,
        limit: int = Query(20, ge=1, le=1000),
    ) -> dict[str, Any]:
        page = _page_or_404(
            db().list_jobs(after=after, limit=limit, metadata=_metadata_filter(request)), after
        )
        return _list([job_object(r) for r in page.rows], page.has_more, ids=False)

    @app.get("/v1/fine_tuning/jobs/{job_id}")
    def retrieve_job(job_id: str) -> dict[str, Any]:
        return job_object(stored_job(job_id))

    @app.post("/v1/fine_tuning/jobs/{job_id}/cancel")
    async def cancel_job(job_id: str) -> dict[str, Any]:
        await asyncio.to_thread(stored_job, job_id)
        try:
            job = await jobs().cancel(job_id)
        except JobError as exc:
            raise bad_request(exc.message, exc.param, exc.code) from None
        return job_object(job)

    @app.get("/v1/fine_tuning/jobs/{job_id}/events")
    def list_job_events(
        job_id: str, after: str | None = None, limit: int = Query(20, ge=1, le=1000)
    ) -> dict[str, Any]:
        stored_job(job_id)
        page = _page_or_404(db().list_events(job_id, after=after, limit=limit), after)
        return _list(page.rows, page.has_more, ids=False)

    @app.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
    def list_job_checkpoints(
        job_id: str, after: str | None = None, limit: int = Query(10, ge=1, le=1000)
    ) -> dict[str, Any]:
        stored_job(job_id)
        page = _page_or_404(db().list_checkpoints(job_id, after=after, limit=limit), after)
        return _list(page.rows, page.has_more)

    return app


def too_large_message(limit: int) -> str:
    return f"The request body is too large: this server accepts at most {limit} bytes here."


def _copy_upload(upload: UploadFile, target: Path, limit: int) -> int | None:
    """Copy the spooled upload to its final place; None (and nothing kept) if over the limit."""
    upload.file.seek(0)
    size = 0
    tmp = target.with_name(target.name + ".part")
    try:
        with open(tmp, "wb") as out:
            while chunk := upload.file.read(1 << 20):
                size += len(chunk)
                if size > limit:
                    tmp.unlink(missing_ok=True)
                    return None
                out.write(chunk)
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return size


def _hyperparameters(hp: SupervisedHyperparameters) -> dict[str, Any]:
    n_epochs = "auto" if hp.n_epochs is None else hp.n_epochs
    batch_size = "auto" if hp.batch_size is None else hp.batch_size
    lrm = "auto" if hp.learning_rate_multiplier is None else hp.learning_rate_multiplier
    if n_epochs != "auto" and not 1 <= int(n_epochs) <= 50:
        raise bad_request(
            "Invalid 'n_epochs': expected an integer from 1 to 50 or 'auto'.",
            "hyperparameters.n_epochs",
            "invalid_value",
        )
    if batch_size != "auto" and not 1 <= int(batch_size) <= 256:
        raise bad_request(
            "Invalid 'batch_size': expected an integer from 1 to 256 or 'auto'.",
            "hyperparameters.batch_size",
            "invalid_value",
        )
    if lrm != "auto" and not 0 < float(lrm) <= 10:
        raise bad_request(
            "Invalid 'learning_rate_multiplier': expected a number above 0 and at most 10, "
            "or 'auto'.",
            "hyperparameters.learning_rate_multiplier",
            "invalid_value",
        )
    return {"batch_size": batch_size, "learning_rate_multiplier": lrm, "n_epochs": n_epochs}


# ---- generation plumbing ------------------------------------------------------------------


async def _first(gen: Any) -> Any:
    try:
        return await gen.__anext__()
    except StopAsyncIteration:
        return None


async def _next(gen: Any) -> Any:
    try:
        return await gen.__anext__()
    except StopAsyncIteration:
        return None


async def _close(gen: Any) -> None:
    """Close the engine's generator even while being cancelled: that frees its slot."""
    with anyio.CancelScope(shield=True):
        with contextlib.suppress(Exception):
            await gen.aclose()


async def _unless_disconnected(request: Request, work: Awaitable[dict[str, Any]]) -> Any:
    """Run `work`, but cancel it if the client goes away first (a non-streaming request that
    was abandoned must not keep its generation slot until the end)."""
    task: asyncio.Task[dict[str, Any]] = asyncio.ensure_future(work)

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(watch())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    if task in done:
        return task.result()
    # Nobody is listening; this response goes nowhere.
    return JSONResponse({}, status_code=499)


class SSEResponse(StreamingResponse):
    """A server-sent-events response that closes its generator however the stream ends.

    Starlette's StreamingResponse leaves an abandoned generator to the garbage collector; here
    the generator (and with it the engine's slot) is closed as soon as the client disconnects
    or the send fails.
    """

    def __init__(self, events: AsyncIterator[bytes]) -> None:
        super().__init__(
            events,
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )
        self.events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )

        async def pump() -> None:
            async for data in self.events:
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def watch() -> None:
            while True:
                message: Message = await receive()
                if message["type"] == "http.disconnect":
                    return

        try:
            async with anyio.create_task_group() as tg:

                async def run(fn: Callable[[], Awaitable[None]]) -> None:
                    await fn()
                    tg.cancel_scope.cancel()

                tg.start_soon(run, pump)
                tg.start_soon(run, watch)
        except OSError:
            pass  # the client went away while we were sending
        finally:
            closer = getattr(self.events, "aclose", None)
            if closer is not None:
                with anyio.CancelScope(shield=True):
                    with contextlib.suppress(Exception):
                        await closer()


# ---- error handlers -----------------------------------------------------------------------------


def _param_from_loc(loc: tuple[Any, ...]) -> str | None:
    parts = [p for p in loc if p not in ("body", "query", "path", "header")]
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out or None


_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "float_type": "a decimal",
    "float_parsing": "a decimal",
    "bool_type": "a boolean",
    "bool_parsing": "a boolean",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "list_type": "an array",
}


def _validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None, str | None]:
    """FastAPI/pydantic validation errors -> OpenAI's (message, param, code)."""
    if not errors:
        return "Invalid request.", None, None
    err = errors[0]
    kind = err.get("type", "")
    loc = tuple(err.get("loc", ()))
    if kind == "json_invalid":
        return (
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
            "but what was sent was not valid JSON.)",
            None,
            None,
        )
    # Pydantic reports a union's members as extra loc parts (e.g. 'int', "literal['auto']").
    loc = _strip_union_tags(loc)
    param = _param_from_loc(loc)
    if loc == ("body",) or (kind == "missing" and param is None):
        return (
            "The request body is missing or is not a JSON object. The OpenAI API expects a "
            "JSON payload.",
            None,
            None,
        )
    if kind == "missing":
        return f"Missing required parameter: '{param}'.", param, "missing_required_parameter"
    if kind == "extra_forbidden":
        return f"Unrecognized request argument supplied: {param}", param, "unknown_parameter"
    if kind in ("literal_error", "enum"):
        expected = (err.get("ctx") or {}).get("expected", "")
        return (
            f"Invalid value: {json.dumps(err.get('input'))}. Supported values are: {expected}.",
            param,
            "invalid_value",
        )
    if kind in _EXPECTED:
        # With unions pydantic reports one error per member; name them all.
        names: list[str] = []
        for e in errors:
            same = _param_from_loc(_strip_union_tags(tuple(e.get("loc", ())))) == param
            name = _EXPECTED.get(e.get("type", ""))
            if same and name and name not in names:
                names.append(name)
        expected = names[0] if len(names) == 1 else "one of " + " or ".join(names)
        return (
            f"Invalid type for '{param}': expected {expected}, but got "
            f"{_type_name(err.get('input'))} instead.",
            param,
            "invalid_type",
        )
    return f"Invalid '{param}': {err.get('msg', 'invalid value')}.", param, "invalid_value"


_UNION_TAGS = {"str", "int", "float", "bool", "list", "dict", "function-after", "function-plain"}


def _strip_union_tags(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    # Pydantic names a union's members in the loc (e.g. 'int', "literal['auto']").
    return tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in _UNION_TAGS)))


def _install_error_handlers(app: FastAPI, config: ServerConfig) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param, code = _validation_message(list(exc.errors()))
        return error_response(400, message, param=param, code=code)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        where = f"({request.method} {request.url.path})"
        if exc.status_code == 404:
            return error_response(404, f"Invalid URL {where}")
        if exc.status_code == 405:
            return error_response(405, f"Invalid method for URL {where}")
        if exc.status_code == 413:
            limit = config.max_upload_bytes if _is_upload(request.scope) else config.max_body_bytes
            return too_large(limit)
        detail = exc.detail if isinstance(exc.detail, str) else "Invalid request."
        headers = dict(exc.headers) if exc.headers else None
        return error_response(exc.status_code, detail, headers=headers)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(
            500,
            f"The server had an error while processing your request: {type(exc).__name__}: {exc}",
            type="server_error",
        )


def serve_in_thread(config: ServerConfig, host: str = "127.0.0.1", port: int = 0) -> Any:
    """Start the server with uvicorn in a background thread (tests and benchmarks).

    Returns an object with `.port` and `.stop()`.
    """
    import socket
    import threading

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(
        uvicorn.Config(create_app(config), log_level="warning", access_log=False, lifespan="on")
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="local-server", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the local server failed to start (see the log)")
        if time.monotonic() > deadline:
            raise TimeoutError("the local server did not start within 120 s")
        time.sleep(0.02)

    class Running:
        app = server.config.app
        port = sock.getsockname()[1]
        url = f"http://{host}:{sock.getsockname()[1]}/v1"

        @staticmethod
        def stop() -> None:
            server.should_exit = True
            thread.join(timeout=30)
            sock.close()

    return Running()
