"""Rate limits and the errors retrying cannot fix, against the fake server speaking OpenAI's
x-ratelimit-* headers and error bodies: a budgeted run slows itself instead of storming the
server with retries; an empty account stops the run at once; retry-after-ms is honoured; an
error event or a malformed chunk inside a stream fails that item with the server's words."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from tests.helpers.fake_openai import (
    FakeOpenAI,
    RateLimits,
    fail_first,
    malformed,
    no_quota,
    rate_limited,
    stream_error,
    when,
)
from tests.helpers.runs import client, new_run
from tui.engine.generation import (
    ConcurrencyChanged,
    Event,
    Generator,
    ItemFinished,
)
from tui.engine.ratelimit import AdaptiveLimit, headroom, parse_duration
from tui.engine.store import Store


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(token_delay=0.0, tokens_per_reply=5) as server:
        yield server


# -- the governor on its own ------------------------------------------------------------------


def test_openai_durations_and_headers() -> None:
    assert parse_duration("120ms") == pytest.approx(0.12)
    assert parse_duration("6m0s") == pytest.approx(360)
    assert parse_duration("1h2m3.5s") == pytest.approx(3723.5)
    assert parse_duration("2") == 2.0
    assert parse_duration("soon") is None
    room = headroom(
        {
            "X-RateLimit-Remaining-Requests": "499",
            "x-ratelimit-limit-requests": "500",
            "x-ratelimit-reset-requests": "120ms",
            "x-ratelimit-remaining-tokens": "199950",
        }
    )
    assert room is not None
    assert (room.remaining_requests, room.limit_requests) == (499, 500)
    assert room.reset_requests == pytest.approx(0.12)
    assert (room.remaining_tokens, room.limit_tokens) == (199950, None)
    assert headroom({"content-type": "text/event-stream"}) is None


async def test_the_limit_halves_once_per_round_trip_and_grows_back_to_the_ceiling() -> None:
    clock = [0.0]
    changes: list[tuple[int, str]] = []
    limit = AdaptiveLimit(
        16, on_change=lambda n, why: changes.append((n, why)), clock=lambda: clock[0]
    )
    sent = [await limit.acquire() for _ in range(16)]
    clock[0] = 1.0
    limit.throttled(sent[0])
    limit.throttled(sent[1])  # sent before the cut: the same load, no second cut
    assert limit.current == 8 and changes == [(8, "rate limited (429)")]
    limit.observe({"x-ratelimit-remaining-requests": "3"}, sent[2])  # also old news
    assert limit.current == 8
    for _ in range(16):
        limit.release()
    newer = await limit.acquire()
    limit.observe({"x-ratelimit-remaining-requests": "3"}, newer)  # < 8 in flight: cut
    assert limit.current == 4
    limit.release()
    # Room again: one more per round trip (1/limit per success), never above the ceiling.
    limit.observe({"x-ratelimit-remaining-requests": "400"}, newer)
    for _ in range(500):
        limit.succeeded(20)
    assert limit.current == 16 and limit.limit == 16.0
    # Nothing is let in beyond the limit.
    clock[0] = 2.0
    limit.throttled(clock[0])
    held = [await limit.acquire() for _ in range(limit.current)]
    blocked = asyncio.ensure_future(limit.acquire())
    for _ in range(10):  # loop turns, not time: as many as it could want to get in
        await asyncio.sleep(0)
    assert not blocked.done()
    limit.release()
    await asyncio.wait_for(blocked, 30)  # a deadline for a stuck test, not a measure
    assert limit.in_flight == len(held)


# -- against the server -------------------------------------------------------------------------


async def requests_per_second(store: Store, reply_seconds: float) -> float:
    """How many requests a second this machine's client and server manage right now."""
    run_id = new_run(store, [f"warm-up {i}" for i in range(256)])
    with FakeOpenAI(tokens_per_reply=5, token_delay=reply_seconds / 4, markers=False) as fake:
        async with client(fake, timeout=30) as c:
            started = time.monotonic()
            await Generator(store, c, concurrency=64).run(run_id)
            return 256 / (time.monotonic() - started)


# A 500-requests-per-minute budget (OpenAI's tier 1) with the minute scaled down, so that the
# run is paced by the budget and not by this machine: the budget's rate is at most 0.6 of
# what the client can send here (a request costs it 6-9 ms of CPU, server included: ~110 a
# second on a quiet core, ~34 at load 7), and at most 500 per 8 s. Replies are as long
# against the minute as a 2 s reply against a real one. 65 requests of the budget are left
# at the start (an earlier run spent the rest), so the first wave of 64 meets the limit.
LEFT = 65


async def test_a_budgeted_run_slows_down_instead_of_storming(store: Store) -> None:
    rate = min(500 / 8.0, 0.6 * await requests_per_second(store, 8.0 / 30))
    minute = 500 / rate
    limits = RateLimits(requests=500, tokens=200_000, minute=minute, start=LEFT / 500)
    requests = [f"Create a branch called 'topic-{i}'." for i in range(2000)]
    run_id = new_run(store, requests)
    changes: list[ConcurrencyChanged] = []

    def on_event(event: Event) -> None:
        if isinstance(event, ConcurrencyChanged):
            changes.append(event)

    reply_seconds = minute / 30
    with FakeOpenAI(
        tokens_per_reply=5, token_delay=reply_seconds / 4, markers=False, rate_limits=limits
    ) as fake:
        async with client(fake, timeout=30) as c:
            gen = Generator(store, c, concurrency=64, max_retries=5, backoff_base=0.05)
            started = time.monotonic()
            finished = await gen.run(run_id, on_event=on_event)
            elapsed = time.monotonic() - started
        throttled = fake.throttled
    assert finished.status == "done", finished.message
    assert gen.stats.done == 2000 and gen.stats.failed == 0
    # The budget was reached (the limit came down), yet only a handful of requests were
    # refused for it: not a retry storm.
    assert changes and min(c.limit for c in changes) < 64
    assert max(c.limit for c in changes) <= 64
    assert throttled <= 5, f"{throttled} 429s"
    assert gen.stats.rate_limited == throttled
    ideal = (2000 - LEFT) / rate
    print(f"500 per {minute:.1f} s: {elapsed:.1f} s (ideal {ideal:.1f}), {throttled} 429s")


async def test_an_empty_account_stops_the_run_at_once(fake: FakeOpenAI, store: Store) -> None:
    fake.policy = lambda ctx: no_quota()
    run_id = new_run(store, [f"request {i}" for i in range(20)])
    async with client(fake, timeout=30) as c:
        gen = Generator(store, c, concurrency=4, max_retries=5, backoff_base=0.01)
        finished = await gen.run(run_id)
    assert finished.status == "failed"
    assert "the account has no quota left" in finished.message
    # No retries: the first answers stop the run (at most the first wave was sent).
    assert len(fake.chat_requests) <= 4
    assert all(r.attempt == 1 for r in fake.chat_requests)
    failed = [r for r in store.completions(run_id) if r.status == "failed"]
    assert failed and "no quota left" in (failed[0].error or "")
    assert gen.stats.rate_limited == 0  # not a rate limit: the limit stays where it was
    assert gen.stats.concurrency_limit == 4


async def test_retry_after_ms_is_honoured(fake: FakeOpenAI, store: Store) -> None:
    fake.policy = fail_first(1, rate_limited(retry_after=None, retry_after_ms=400))
    run_id = new_run(store, ["only one"])
    async with client(fake, timeout=30) as c:
        # With no header to follow, backoff_base 0 would retry at once.
        await Generator(store, c, concurrency=1, backoff_base=0.0).run(run_id)
    first, second = fake.chat_requests[0], fake.chat_requests[1]
    assert first.ended is not None
    assert second.time - first.ended >= 0.35
    assert store.completions(run_id)[0].status == "done"


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        (stream_error(2, "The model produced invalid content."), "The model produced invalid"),
        (malformed(2), "malformed stream chunk"),
    ],
)
async def test_a_failure_inside_the_stream_fails_the_item_with_its_message(
    fake: FakeOpenAI, store: Store, action: object, expected: str
) -> None:
    fake.policy = when("broken", action)  # type: ignore[arg-type]
    run_id = new_run(store, ["a fine request", "a broken request"])
    events: list[Event] = []
    async with client(fake, timeout=30) as c:
        finished = await Generator(store, c, concurrency=2, max_retries=3).run(
            run_id, on_event=events.append
        )
    assert finished.status == "done"
    rows = {r.input: r for r in store.completions(run_id)}
    assert rows["a fine request"].status == "done"
    broken = rows["a broken request"]
    assert broken.status == "failed" and expected in (broken.error or "")
    assert fake.count("a broken request") == 1  # the server's verdict: not retried
    (outcome,) = [e for e in events if isinstance(e, ItemFinished) and e.status == "failed"]
    assert expected in (outcome.error or "")
