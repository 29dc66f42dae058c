"""An engine job on a thread of its own, with an event loop of its own.

At 64 concurrent streams the engine reads thousands of SSE chunks a second, and on the UI's
event loop that work is felt as a stuttering terminal (bench/generation.py --tui measures
it). A screen's worker hands the job to an `EngineThread` instead: the job runs on a new
thread's loop, and the UI's loop only waits for its end. While it runs:

- its events go into an `Inbox` (a deque: appending and taking are safe across threads),
  which the screen drains when it repaints: per frame, not per chunk;
- its running totals (`RunStats`, `EvalStats`) are plain numbers, read at any time;
- a cancel is passed to the job's loop (`EngineThread.call(generator.cancel)`);
- if the waiting worker is itself cancelled (the app quits), the job is cancelled on its
  loop as it would be on the caller's (in-flight items recorded as cancelled) and waited for.

The Evals and Compare screens grade on such a thread, and the Generate screen follows a batch
run on one; its streaming runs go a step further, to a process of their own
(run_process.py), since a thread still shares the interpreter's lock with the UI.

The job must share nothing bound to the caller's loop: an openai client's connection pool
belongs to the loop that opened its connections, so the job gets a client of its own
(`backend.client_for_thread`) and closes it when it ends."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

T = TypeVar("T")
E = TypeVar("E")


class Inbox(Generic[E]):
    """Events put by one thread, taken in order by another."""

    def __init__(self) -> None:
        self._events: collections.deque[E] = collections.deque()

    def put(self, event: E) -> None:
        self._events.append(event)

    def drain(self) -> list[E]:
        """Every event put so far, oldest first."""
        events: list[E] = []
        take = self._events.popleft
        while True:
            try:
                events.append(take())
            except IndexError:
                return events

    def __len__(self) -> int:
        return len(self._events)


class Receiver(Generic[E]):
    """What a live view fed by a job on another thread has in common: the job puts its
    events in ``receive()``'s inbox, and the view applies them (``on_event``) when it
    repaints (``catch_up``), on its own thread, however many arrived meanwhile."""

    inbox: Inbox[E] | None = None

    def receive(self) -> Inbox[E]:
        """A fresh inbox for the events of a job on another thread."""
        self.inbox = Inbox()
        return self.inbox

    def catch_up(self) -> None:
        """Apply the events put in the inbox since the last time."""
        if self.inbox is not None:
            for event in self.inbox.drain():
                self.on_event(event)

    def on_event(self, event: E) -> None:
        raise NotImplementedError


class EngineThread(Generic[T]):
    """Runs one job (`run`) on a new thread with its own event loop."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._pending: list[Callable[[], object]] = []  # calls made before the loop ran
        self._ended = False

    def call(self, fn: Callable[[], object]) -> None:
        """Call `fn` on the job's loop, from any thread (before the job starts: as it starts;
        after it ended: not at all)."""
        with self._lock:
            if self._ended:
                return
            loop = self._loop
            if loop is None:
                self._pending.append(fn)
                return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: the job is over
            loop.call_soon_threadsafe(fn)

    def cancel(self) -> None:
        """Cancel the job's task on its loop (as a caller's loop cancels a task)."""
        self.call(self._cancel_task)

    def _cancel_task(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def run(self, job: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Start `job()` on the thread and wait for its result (or exception) on this loop."""
        caller = asyncio.get_running_loop()
        done: asyncio.Future[T] = caller.create_future()

        def settle(result: T | None, error: BaseException | None) -> None:
            if done.done():
                return
            if isinstance(error, asyncio.CancelledError):
                done.cancel()
            elif error is not None:
                done.set_exception(error)
            else:
                done.set_result(result)  # type: ignore[arg-type]

        async def main() -> T:
            with self._lock:
                self._loop = asyncio.get_running_loop()
                self._task = asyncio.current_task()
                pending, self._pending = self._pending, []
            for fn in pending:
                fn()
            return await job()

        def thread_main() -> None:
            result: T | None = None
            error: BaseException | None = None
            try:
                result = asyncio.run(main())
            except BaseException as failure:  # handed to the waiting loop as it is
                error = failure
            finally:
                with self._lock:
                    self._ended = True
                    self._loop = None
            with contextlib.suppress(RuntimeError):  # the caller's loop closed: nobody waits
                caller.call_soon_threadsafe(settle, result, error)

        threading.Thread(target=thread_main, name=self.name, daemon=True).start()
        try:
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            if not done.done():
                # The waiting worker is cancelled (the screen or the app closes): so is the
                # job, and its records are written before this worker ends.
                self.cancel()
                with contextlib.suppress(BaseException):
                    await done
            raise
