"""Running totals of a long job (a generation run, an eval run), updated in place by the
engine and read by a screen at its own pace."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Progress:
    total: int = 0  # what the job covers
    todo: int = 0  # what this start has to do (the rest was done before)
    done_before: int = 0
    in_flight: int = 0
    retries: int = 0
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    @property
    def finished_items(self) -> int:
        """How many of `todo` have an outcome; subclasses say what counts."""
        return 0

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    @property
    def eta(self) -> float | None:
        """Seconds left at the rate so far; None until something finished."""
        left = self.todo - self.finished_items
        if self.finished_items == 0 or left <= 0:
            return None if left > 0 else 0.0
        return self.elapsed / self.finished_items * left


class Stoppable:
    """What a runner needs to stop promptly: a reason, a flag its workers check, and its
    in-flight tasks to cancel (not the one asking, which finishes its own record first)."""

    def _init_stop(self) -> None:
        self._cancel = asyncio.Event()
        self._stop_reason: tuple[str, str] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def _stop(self, status: str, message: str) -> None:
        if self._stop_reason is None:
            self._stop_reason = (status, message)
        self._cancel.set()
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
