"""When a request to the backend is worth repeating, and how long to wait first.

Shared by the generation engine and the eval runner, so a judge call and a generated
completion follow the same rules. They turn the SDK's own retries off (a stream that breaks
after partial output must restart the item, and each retry is recorded), so they follow the
openai SDK's rules instead (`_base_client._should_retry`, `_parse_retry_after_header`):

- a connection error or timeout is retried;
- a server that says `x-should-retry: true` or `false` is obeyed;
- otherwise 408 (request timeout), 409 (lock timeout), 429 (rate limit) and 5xx are retried;
- a server asking to wait longer than two minutes (`Retry-After`) is not retried;
- the wait is the server's (`retry-after-ms`, else `Retry-After` in seconds or as an
  HTTP-date) when it asks for one between 0 and two minutes, else exponential backoff with
  full jitter, so many clients retrying don't stampede.

What retrying cannot fix stops the whole run: a bad key, a forbidden request, an unknown
model, an account with no quota left (a 429 whose code is `insufficient_quota`: waiting does
not refill it). Any other 4xx is this request's own fault and is not repeated.

`request_failure` makes that decision for one failed request, the same way for a run's items
(generation.py), synthetic requests (synthetic.py) and judge and embedding calls
(graders.py)."""

from __future__ import annotations

import contextlib
import email.utils
import math
import random
import time
from dataclasses import dataclass
from typing import Literal

import openai

FATAL = (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError)
NO_QUOTA = "the account has no quota left"
# The SDK's MAX_RETRY_AFTER_DELAY: a server asking for a longer wait is not retried.
MAX_RETRY_AFTER = 120.0
RETRIED_STATUSES = (408, 409, 429)  # and every 5xx


def no_quota(error: BaseException) -> bool:
    """A 429 that retrying cannot fix: OpenAI's `insufficient_quota` (no credit left)."""
    if not isinstance(error, openai.RateLimitError):
        return False
    body: dict[str, object] = error.body if isinstance(error.body, dict) else {}
    inner = body.get("error")
    if not isinstance(inner, dict):
        inner = body  # the SDK already unwrapped {"error": {...}}
    return "insufficient_quota" in (error.code, inner.get("type"), inner.get("code"))


def retry_after(error: BaseException) -> float | None:
    """The server's requested wait in seconds: `retry-after-ms`, else `retry-after` as
    seconds, else `retry-after` as an HTTP-date (the seconds until then, negative if past)."""
    response = getattr(error, "response", None)
    if response is None:
        return None
    headers = response.headers
    for header, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(header)
        if value is None:
            continue
        with contextlib.suppress(ValueError):
            seconds = float(value)
            if math.isnan(seconds):
                continue
            return seconds / divisor
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        date = email.utils.parsedate_tz(value)
        if date is None:
            return None
        return float(email.utils.mktime_tz(date) - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


def should_retry(error: BaseException) -> bool:
    """Whether the openai SDK would repeat the request that failed with `error`."""
    if isinstance(error, openai.APIConnectionError):  # APITimeoutError included
        return True
    if not isinstance(error, openai.APIStatusError):
        return False
    wait = retry_after(error)
    if wait is not None and wait > MAX_RETRY_AFTER:
        return False
    said = error.response.headers.get("x-should-retry")
    if said == "true":
        return True
    if said == "false":
        return False
    return error.status_code in RETRIED_STATUSES or error.status_code >= 500


def not_retried(error: BaseException) -> str:
    """Why a failure that is usually retried was not (for its message), or ""."""
    if not isinstance(error, openai.APIStatusError):
        return ""
    wait = retry_after(error)
    if wait is not None and wait > MAX_RETRY_AFTER:
        return (
            f" (the server asked to wait {wait:.0f} s, more than {MAX_RETRY_AFTER:.0f} s:"
            " not retried)"
        )
    if error.response.headers.get("x-should-retry") == "false":
        return " (the server said not to retry: x-should-retry: false)"
    return ""


def backoff_delay(error: BaseException, attempt: int, base: float, cap: float) -> float:
    """How long to wait before attempt `attempt + 1`: the server's wait when it asks for one
    (up to MAX_RETRY_AFTER, as the SDK), else full jitter over an exponential window capped
    at `cap` seconds."""
    wait = retry_after(error)
    if wait is not None and 0 < wait <= MAX_RETRY_AFTER:
        return wait
    return random.uniform(0, min(cap, base * 2 ** (attempt - 1)))


def describe(error: BaseException) -> str:
    """One line for a person: what went wrong with the request."""
    if isinstance(error, openai.APIStatusError):
        return f"HTTP {error.status_code}: {error.message}"
    if isinstance(error, openai.APITimeoutError):
        return "timed out waiting for the backend"
    if isinstance(error, openai.APIConnectionError):
        return f"connection error: {error.__cause__ or error}"
    return f"{type(error).__name__}: {error}"


class StreamBroken(Exception):
    """The stream ended without a finish_reason: the reply is incomplete (worth retrying)."""


def describe_break(error: BaseException) -> str:
    """One line for a person: what went wrong with the request, or with its stream."""
    return str(error) if isinstance(error, StreamBroken) else describe(error)


@dataclass(frozen=True)
class RequestFailure:
    """What to do about a request that failed (the rules above): "retry" after `delay`
    seconds, or give up with `message` — "gave up" after the retries, "not retried" (this
    request is wrong, or the server said not to), "no quota"."""

    kind: Literal["retry", "gave up", "not retried", "no quota"]
    message: str  # the error for a person: why it was not retried, or how many attempts
    delay: float = 0.0  # before the next attempt, for "retry"
    fatal: bool = False  # a bad key, forbidden, an unknown model: no other request can do better


def request_failure(
    error: openai.APIStatusError | openai.APIConnectionError | StreamBroken,
    attempt: int,
    *,
    max_retries: int,
    backoff_base: float,
    backoff_cap: float,
    model: str | None = None,
) -> RequestFailure:
    """`attempt`: the attempts made so far, this one included. `model`, when given, is named
    in the message of a 404 (the backend does not know it); without it the caller words
    that case itself."""
    if no_quota(error):
        # Waiting does not refill an account: nothing sent to it will do better.
        return RequestFailure("no quota", f"{NO_QUOTA} ({describe(error)})", fatal=True)
    if not (isinstance(error, StreamBroken) or should_retry(error)):
        # A bad key, forbidden, an unknown model: fatal. 400/413/422…: this request is wrong,
        # retrying would fail the same way (or the server said not to).
        message = describe(error) + not_retried(error)
        if model is not None and isinstance(error, openai.NotFoundError):
            message = f"model {model!r} not found at the backend ({message})"
        return RequestFailure("not retried", message, fatal=isinstance(error, FATAL))
    last = describe_break(error)
    if attempt > max_retries:
        return RequestFailure("gave up", f"{last} (gave up after {attempt} attempts)")
    delay = backoff_delay(error, attempt, backoff_base, backoff_cap)
    return RequestFailure("retry", last, delay=delay)
