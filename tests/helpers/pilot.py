"""What the Pilot tests of panels share: the messages a panel posted, waiting for it, and
counting the screen's layouts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from textual.message import Message
from textual.pilot import Pilot
from textual.screen import Screen

M = TypeVar("M", bound=Message)


def posted(messages: list[Message], kind: type[M]) -> list[M]:
    """The messages of a kind, once each (a message hook sees a message again at every node
    it bubbles up to)."""
    return list({id(m): m for m in messages if isinstance(m, kind)}.values())


def count_layouts(screen: Screen[Any]) -> list[int]:
    """From now on, one entry a layout of the whole screen (Textual's private
    `Screen._refresh_layout`, the ~40 ms that a redraw in place saves): clear it to start
    counting again."""
    layouts: list[int] = []
    original = screen._refresh_layout

    def counted(*args: Any, **kwargs: Any) -> None:
        layouts.append(1)
        original(*args, **kwargs)

    screen._refresh_layout = counted  # type: ignore[method-assign]
    return layouts


async def settle(pilot: Pilot[Any]) -> None:
    """Let the app process what is queued and finish its workers."""
    await pilot.pause()
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


async def wait_until(
    pilot: Pilot[Any], condition: Callable[[], bool], timeout: float = 30, what: str = ""
) -> None:
    """Let the app work until `condition` holds; fail if it does not within `timeout` s (a
    deadline for a stuck test, not a measure: a busy machine only makes it wait longer)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"still not true after {timeout} s: {what or condition}")
        await pilot.pause(0.02)


async def timer_ticks(pilot: Pilot[Any], interval: float, ticks: int) -> None:
    """Let the app run until a timer of its own, every `interval` s, has fired `ticks` times:
    long enough for any other timer of that period to have fired about as often, however
    slow the machine (they share the loop), where a fixed pause may not be."""
    fired = 0

    def tick() -> None:
        nonlocal fired
        fired += 1

    timer = pilot.app.set_interval(interval, tick)
    try:
        await wait_until(pilot, lambda: fired >= ticks, what=f"{ticks} ticks")
    finally:
        timer.stop()


class Harness:
    """A running panel app, its pilot, and every message the hook saw."""

    def __init__(self, app: Any, pilot: Pilot[None], messages: list[Message]) -> None:
        self.app, self.pilot, self.messages = app, pilot, messages

    def posted(self, kind: type[M]) -> list[M]:
        return posted(self.messages, kind)

    async def settle(self) -> None:
        await settle(self.pilot)

    async def wait_until(self, condition: Callable[[], bool], what: str = "") -> None:
        await wait_until(self.pilot, condition, what=what)
