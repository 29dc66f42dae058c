"""Errors in OpenAI's shape, for every route: `{"error": {"message", "type", "param",
"code"}}` with OpenAI's statuses. Routes raise `APIError` (or use `bad_request` /
`not_found`); `install_error_handlers` turns that, FastAPI's validation errors, unknown routes
and unexpected exceptions into such bodies. An invalid request body in particular is a 400
`invalid_request_error`, as on api.openai.com, not FastAPI's 422, so a client handles both
backends with the same `openai.BadRequestError`."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from tui.local.config import ServerConfig

log = logging.getLogger("distill.local.server")


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


def too_large_message(limit: int) -> str:
    return f"The request body is too large: this server accepts at most {limit} bytes here."


def too_large(limit: int) -> JSONResponse:
    return error_response(413, too_large_message(limit), code="request_too_large")


def is_upload(scope: Scope) -> bool:
    """Whether the request is a file upload (which has its own, larger, size limit)."""
    return bool(scope["method"] == "POST" and scope["path"].rstrip("/") == "/v1/files")


def type_name(value: Any) -> str:
    """How OpenAI's messages name a JSON value's type ("a string", "an array"...)."""
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


# ---- FastAPI/pydantic validation errors -> OpenAI's -------------------------------------------

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

_UNION_TAGS = {"str", "int", "float", "bool", "list", "dict", "function-after", "function-plain"}

_NOT_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
    "sent was not valid JSON.)"
)
_NOT_AN_OBJECT = (
    "The request body is missing or is not a JSON object. The OpenAI API expects a JSON payload."
)


def _param_from_loc(loc: tuple[Any, ...]) -> str | None:
    parts = [p for p in loc if p not in ("body", "query", "path", "header")]
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out or None


def _strip_union_tags(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    # Pydantic names a union's members in the loc (e.g. 'int', "literal['auto']").
    return tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in _UNION_TAGS)))


def validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None, str | None]:
    """FastAPI/pydantic validation errors -> OpenAI's (message, param, code)."""
    if not errors:
        return "Invalid request.", None, None
    err = errors[0]
    kind = err.get("type", "")
    loc = tuple(err.get("loc", ()))
    if kind == "json_invalid":
        return _NOT_JSON, None, None
    loc = _strip_union_tags(loc)
    param = _param_from_loc(loc)
    if loc == ("body",) or (kind == "missing" and param is None):
        return _NOT_AN_OBJECT, None, None
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
            f"{type_name(err.get('input'))} instead.",
            param,
            "invalid_type",
        )
    return f"Invalid '{param}': {err.get('msg', 'invalid value')}.", param, "invalid_value"


def install_error_handlers(app: FastAPI, config: ServerConfig) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param, code = validation_message(list(exc.errors()))
        return error_response(400, message, param=param, code=code)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        where = f"({request.method} {request.url.path})"
        if exc.status_code == 404:
            return error_response(404, f"Invalid URL {where}")
        if exc.status_code == 405:
            return error_response(405, f"Invalid method for URL {where}")
        if exc.status_code == 413:
            limit = config.max_upload_bytes if is_upload(request.scope) else config.max_body_bytes
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
