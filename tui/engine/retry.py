"""When a request to the backend is worth repeating, and how long to wait first.

Shared by the generation engine and the eval runner, so a judge call and a generated
completion follow the same rules: 429, 5xx and connection errors are retried (after the
server's `retry-after-ms` or Retry-After when it sends one, else exponential backoff with
full jitter); a bad key, a forbidden request, an unknown model or an account with no quota
left (a 429 whose code is `insufficient_quota`: waiting does not refill it) stops the whole
run; any other 4xx is this request's own fault and is not repeated."""

from __future__ import annotations

import contextlib
import random

import openai

RETRYABLE = (
    openai.RateLimitError,
    openai.InternalServerError,
    openai.APIConnectionError,  # includes APITimeoutError
)
FATAL = (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError)
NO_QUOTA = "the account has no quota left"


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
    """The server's requested wait in seconds (`retry-after-ms`, else `retry-after`)."""
    response = getattr(error, "response", None)
    if response is None:
        return None
    value = response.headers.get("retry-after-ms")
    if value:
        with contextlib.suppress(ValueError):
            return float(value) / 1000
    value = response.headers.get("retry-after")
    if value:
        with contextlib.suppress(ValueError):
            return float(value)
    return None


def backoff_delay(error: BaseException, attempt: int, base: float, cap: float) -> float:
    """How long to wait before attempt `attempt + 1`: Retry-After when given, else full
    jitter over an exponential window, so many clients retrying don't stampede. Never more
    than `cap` seconds."""
    delay = retry_after(error)
    if delay is None:
        delay = random.uniform(0, min(cap, base * 2 ** (attempt - 1)))
    return min(delay, cap)


def describe(error: BaseException) -> str:
    """One line for a person: what went wrong with the request."""
    if isinstance(error, openai.APIStatusError):
        return f"HTTP {error.status_code}: {error.message}"
    if isinstance(error, openai.APITimeoutError):
        return "timed out waiting for the backend"
    if isinstance(error, openai.APIConnectionError):
        return f"connection error: {error.__cause__ or error}"
    return f"{type(error).__name__}: {error}"
