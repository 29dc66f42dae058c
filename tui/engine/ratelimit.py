"""How many requests a run keeps in flight when the backend rations them: additive increase,
multiplicative decrease (AIMD) on the in-flight count, never above the configured concurrency.

OpenAI meters requests and tokens per minute per model (tier 1: 500 requests, 200k tokens for
gpt-4o-mini) and says where a client stands on every response: `x-ratelimit-limit-requests`,
`x-ratelimit-remaining-requests`, `x-ratelimit-reset-requests` (the time until the budget is
full again, as "1s", "6m0s", "120ms") and the same three for tokens. A run at concurrency 64
of one-second replies asks for ~3,800 requests a minute, so on tier 1 it empties the budget
in seconds; without a governor every further request is a 429 and each item burns its retries
(a retry storm). With it:
  - the limit halves when a response says the budget left is less than one more round of the
    requests in flight (or less than the tokens they would use), and on a 429 — once per
    round trip: a signal from a request sent before the last cut says nothing new;
  - a 429 also holds every new request back for the wait it names (`retry-after-ms`,
    Retry-After, else the time the x-ratelimit headers say one request takes to come back):
    a slot freed by a 429 must not go straight to the next request, which would meet the
    same empty budget (and OpenAI counts refused requests against the budget too);
  - it grows by one per round trip (1/limit per success) while the budget left is over two
    rounds, and holds between the two;
  - a backend that sends no such headers (the local backend, most vLLM servers) is governed by
    its 429s only, so without them the run keeps the configured concurrency.
Measured against the fake OpenAI server (tests/helpers/fake_openai.py, which meters as OpenAI
does and counts refused requests against the budget), 2 cores under load 6-7:
  - 2,000 items at concurrency 64, 65 of the budget left at the start, 0 429s each time:
    500 requests per 8 s "minute", 40.6 s against an ideal 31.0 s; per 16.7 s, 67.0 s
    against 64.6 s (tests/unit/test_rate_limits.py, which sets the minute from the machine's
    speed so that the budget, not the CPU, is the limit);
  - 400 items, 500 per 50 s, 1.5 s replies, 100 left: 35.7 s against 30.0 s, 0 429s, the
    limit settling between 9 and 20 (the budget's rate × the reply time is 15);
  - before a 429 held new requests back, a run that started on a spent budget got 615 429s
    for 2,000 items and 18 items used up their retries: each slot a 429 freed went straight
    to another request that met the same empty budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str | None) -> float | None:
    """Seconds in OpenAI's reset headers: "1s", "6m0s", "20ms", "1h2m3.5s", or a bare number."""
    if not text:
        return None
    text = text.strip()
    parts = _DURATION.findall(text)
    if parts and "".join(n + u for n, u in parts) == text:
        return sum(float(n) * _UNIT[u] for n, u in parts)
    with contextlib.suppress(ValueError):
        return float(text)
    return None


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    with contextlib.suppress(ValueError):
        return int(float(value))
    return None


@dataclass(frozen=True)
class Headroom:
    """Where the client stands against the backend's limits, from one response's headers."""

    remaining_requests: int | None
    limit_requests: int | None
    reset_requests: float | None  # seconds until the request budget is full again
    remaining_tokens: int | None
    limit_tokens: int | None
    reset_tokens: float | None


def headroom(headers: Mapping[str, str]) -> Headroom | None:
    """The `x-ratelimit-*` headers of a response; None when it has none."""
    h = {k.lower(): v for k, v in headers.items() if k.lower().startswith("x-ratelimit-")}
    if not h:
        return None
    return Headroom(
        remaining_requests=_int(h.get("x-ratelimit-remaining-requests")),
        limit_requests=_int(h.get("x-ratelimit-limit-requests")),
        reset_requests=parse_duration(h.get("x-ratelimit-reset-requests")),
        remaining_tokens=_int(h.get("x-ratelimit-remaining-tokens")),
        limit_tokens=_int(h.get("x-ratelimit-limit-tokens")),
        reset_tokens=parse_duration(h.get("x-ratelimit-reset-tokens")),
    )


def _refill_wait(room: Headroom | None) -> float | None:
    """How long until one more request may go, from headers that say the budget is spent:
    the reset time (until full) over the budget's size, i.e. one request's share."""
    if room is None:
        return None
    waits = []
    if room.remaining_requests == 0 and room.reset_requests and room.limit_requests:
        waits.append(room.reset_requests / room.limit_requests)
    if room.remaining_tokens == 0 and room.reset_tokens and room.limit_tokens:
        waits.append(room.reset_tokens * 0.05)  # a twentieth of the way back to full
    return max(waits) if waits else None


class AdaptiveLimit:
    """The in-flight limit of one run (see the module docstring). A request takes a slot with
    `acquire()` (which returns its send time, the stamp its signals are judged by), reports
    its response's headers with `observe()`, a 429 with `throttled()`, a success with
    `succeeded()`, and gives the slot back with `release()`. `on_change(limit, reason)` is
    called when the whole-number limit moves."""

    def __init__(
        self,
        ceiling: int,
        *,
        on_change: Callable[[int, str], None] | None = None,
        decrease: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ceiling < 1:
            raise ValueError("the concurrency must be at least 1")
        self.ceiling = ceiling
        self.limit = float(ceiling)
        self.in_flight = 0
        self.throttles = 0  # 429s seen
        self.last_headroom: Headroom | None = None
        self._on_change = on_change
        self._decrease = decrease
        self._clock = clock
        self._last_cut = float("-inf")
        self._resume_at = float("-inf")  # no request starts before this (after a 429)
        self._roomy = True
        self._tokens_per_request: float | None = None
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def current(self) -> int:
        return max(1, int(self.limit))

    async def acquire(self) -> float:
        while True:
            while self.in_flight >= self.current:
                waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._waiters.append(waiter)
                try:
                    await waiter
                except BaseException:
                    if waiter.done() and not waiter.cancelled():
                        self._wake()  # woken, then cancelled: hand the wake-up on
                    raise
                finally:
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)
            pause = self._resume_at - self._clock()
            if pause <= 0:
                break
            await asyncio.sleep(pause)  # then look at the slots again
        self.in_flight += 1
        return self._clock()

    def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        """Wake as many waiters, oldest first, as there are free slots (each re-checks)."""
        free = self.current - self.in_flight
        for waiter in self._waiters:
            if free <= 0:
                break
            if not waiter.done():
                waiter.set_result(None)
                free -= 1

    def observe(self, headers: Mapping[str, str], sent: float) -> None:
        """A response (or an error's response) arrived: lower the limit if the budget left
        would not cover another round of what is in flight; note whether there is room."""
        room = headroom(headers)
        if room is None:
            return
        self.last_headroom = room
        n = self.current
        low, roomy = False, True
        if room.remaining_requests is not None:
            low = room.remaining_requests < n
            roomy = room.remaining_requests >= 2 * n
        if room.remaining_tokens is not None and self._tokens_per_request:
            need = n * self._tokens_per_request
            low = low or room.remaining_tokens < need
            roomy = roomy and room.remaining_tokens >= 2 * need
        self._roomy = roomy
        if low:
            self._cut(sent, "the rate limit is near")

    def throttled(
        self, sent: float, wait: float | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        """A 429 for a rate limit (not an empty account: that is no reason to slow down).
        `wait`: the server's retry-after; without one, the headers' time for one request
        (or token budget's worth) to come back, when they say the budget is spent."""
        self.throttles += 1
        self._roomy = False
        if wait is None and headers is not None:
            wait = _refill_wait(headroom(headers))
        if wait:
            self._resume_at = max(self._resume_at, self._clock() + wait)
        self._cut(sent, "rate limited (429)")

    def succeeded(self, tokens: int | None = None) -> None:
        """A request finished well; `tokens` is what it counted against the token budget."""
        if tokens:
            if self._tokens_per_request is None:
                self._tokens_per_request = float(tokens)
            else:
                self._tokens_per_request += (tokens - self._tokens_per_request) * 0.1
        if self._roomy and self.limit < self.ceiling:
            self._set(min(float(self.ceiling), self.limit + 1 / self.current), "recovering")

    def _cut(self, sent: float, reason: str) -> None:
        if sent < self._last_cut:
            return  # sent before the last cut: that cut already answered this load
        self._last_cut = self._clock()
        self._set(max(1.0, self.limit * self._decrease), reason)

    def _set(self, limit: float, reason: str) -> None:
        before = self.current
        self.limit = limit
        if self.current != before:
            if self.current > before:
                self._wake()
            if self._on_change is not None:
                self._on_change(self.current, reason)
