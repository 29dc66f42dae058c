"""What the Pilot tests of panels share: the messages a panel posted, and waiting for it."""

from __future__ import annotations

from typing import Any, TypeVar

from textual.message import Message
from textual.pilot import Pilot

M = TypeVar("M", bound=Message)


def posted(messages: list[Message], kind: type[M]) -> list[M]:
    """The messages of a kind, once each (a message hook sees a message again at every node
    it bubbles up to)."""
    return list({id(m): m for m in messages if isinstance(m, kind)}.values())


async def settle(pilot: Pilot[Any]) -> None:
    """Let the app process what is queued and finish its workers."""
    await pilot.pause()
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


class Harness:
    """A running panel app, its pilot, and every message the hook saw."""

    def __init__(self, app: Any, pilot: Pilot[None], messages: list[Message]) -> None:
        self.app, self.pilot, self.messages = app, pilot, messages

    def posted(self, kind: type[M]) -> list[M]:
        return posted(self.messages, kind)

    async def settle(self) -> None:
        await settle(self.pilot)
