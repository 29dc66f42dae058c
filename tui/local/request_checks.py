"""Checks every route's JSON body gets, and the number checks routes share.

JSON as Python parses it accepts `NaN`, `Infinity` and `-Infinity`, and its `\\u0000` escapes
decode to control characters that the same body could not carry raw (a raw control character
in a JSON string is a parse error). A model cannot honour `temperature: NaN`, and a NUL in a
message or metadata value ends up in stored completions and files. So, before a route sees its
body, `check_json_body` walks it and refuses, as a 400 `invalid_request_error` naming the
parameter (`messages[0].content`), any number that is not finite and any string (or object
key) holding a control character other than tab, newline and carriage return. It is installed
on the whole app, so a route added later gets it too.
"""

from __future__ import annotations

import math
import re
from typing import Any

from fastapi import Request
from fastapi.routing import APIRoute

from tui.local.errors import bad_request

# C0 controls but tab, newline and carriage return, and DEL.
CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


def _is_json(request: Request) -> bool:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return content_type == "application/json" or content_type.endswith("+json")


async def check_json_body(request: Request) -> None:
    """An app-wide dependency: refuse a JSON body with a non-finite number or a control
    character. It only looks at a body the route itself parses as JSON (already read and
    cached by FastAPI), so it never reads a body a route would not."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or route.body_field is None or not _is_json(request):
        return
    try:
        body = await request.json()
    except ValueError:
        return  # FastAPI has answered it already: "We could not parse the JSON body"
    refuse_bad_values(body)


def refuse_bad_values(value: Any, param: str = "") -> None:
    """Raise the 400 for the first non-finite number or control character in a decoded JSON
    value; `param` is where `value` sits ("" for a whole body)."""
    stack: list[tuple[str, Any]] = [(param, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            name = where or "body"
            raise bad_request(
                f"Invalid '{name}': expected a finite number, but got {item} instead.",
                where or None,
                "invalid_value",
            )
        if isinstance(item, str):
            _refuse_control(item, where)
        elif isinstance(item, dict):
            children = []
            for key, child in item.items():
                path = f"{where}.{key}" if where else str(key)
                _refuse_control(str(key), path, key=True)
                children.append((path, child))
            stack.extend(reversed(children))
        elif isinstance(item, list):
            stack.extend(reversed([(f"{where}[{i}]", child) for i, child in enumerate(item)]))


def _refuse_control(text: str, where: str, *, key: bool = False) -> None:
    found = CONTROL.search(text)
    if found is None:
        return
    what = "key" if key else "string"
    name = where or "body"
    raise bad_request(
        f"Invalid '{name}': the {what} contains a control character (U+{ord(found.group()):04X} "
        f"at position {found.start()}). Only tab, newline and carriage return are accepted.",
        where or None,
        "invalid_value",
    )


def check_range(param: str, value: float | None, lo: float, hi: float) -> None:
    """OpenAI's 400 for a number outside [lo, hi] (or not finite), worded for an integer or a
    decimal as the value is."""
    if value is None:
        return
    kind = "integer" if isinstance(value, int) else "decimal"
    if isinstance(value, float) and not math.isfinite(value):
        raise bad_request(
            f"Invalid '{param}': expected a finite number, but got {value} instead.",
            param,
            "invalid_value",
        )
    if value < lo:
        raise bad_request(
            f"Invalid '{param}': {kind} below minimum value. Expected a value >= {_num(lo)}, "
            f"but got {_num(value)} instead.",
            param,
            f"{kind}_below_min_value",
        )
    if value > hi:
        raise bad_request(
            f"Invalid '{param}': {kind} above maximum value. Expected a value <= {_num(hi)}, "
            f"but got {_num(value)} instead.",
            param,
            f"{kind}_above_max_value",
        )


def _num(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"
