"""The recipe as it runs, for a view on another thread: the Recipe view runs every step with
one key and shows each step's progress while it goes.

The recipe reports through a `Reporter` (tui/engine/recipe.py): a step starts, advances,
finishes or is skipped (done by an earlier run). `InboxReporter` turns each call into a plain
`StepEvent` put in an `Inbox` (the recipe runs on an `EngineThread`, tui/engine/offloop.py),
and `LiveRecipe` applies them on the view's thread when it repaints, however many arrived
meanwhile. A generation step advances once per finished item (hundreds a minute at most), a
fine-tune once per metrics event: a few events a second, so the view's fixed repaint rate,
not the events, sets the cost.

`LiveRecipe.version` moves with every change, so a view redraws only when something changed
(plus once a second for the running step's clock).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import openai

from tui.engine.backend import Backend, client_for_thread
from tui.engine.generation import Estimate
from tui.engine.offloop import Inbox, Receiver
from tui.engine.recipe import Recipe, RecipeConfig, Reporter
from tui.engine.run_process import RunProcess
from tui.engine.settings import Settings
from tui.engine.store import Store

EventKind = Literal["start", "advance", "finish", "skip"]
StepStatus = Literal["running", "done", "skipped", "failed", "stopped"]


@dataclass(frozen=True)
class StepEvent:
    kind: EventKind
    key: str
    title: str = ""
    done: int | None = None
    total: int | None = None
    note: str = ""
    at: float = field(default_factory=time.monotonic)


class InboxReporter(Reporter):
    """A `Reporter` whose calls become `StepEvent`s in an inbox another thread drains."""

    def __init__(self, inbox: Inbox[StepEvent]) -> None:
        self.inbox = inbox

    def step(self, key: str, title: str, total: int | None) -> None:
        self.inbox.put(StepEvent("start", key, title, total=total))

    def advance(self, key: str, done: int, total: int | None, note: str = "") -> None:
        self.inbox.put(StepEvent("advance", key, done=done, total=total, note=note))

    def finish(self, key: str, note: str) -> None:
        self.inbox.put(StepEvent("finish", key, note=note))

    def skip(self, key: str, title: str, note: str) -> None:
        self.inbox.put(StepEvent("skip", key, title, note=note))


@dataclass
class StepLine:
    """One step of the recipe as the view shows it."""

    key: str
    title: str
    status: StepStatus = "running"
    done: int | None = None
    total: int | None = None
    note: str = ""
    started: float = 0.0
    ended: float | None = None

    def elapsed(self, now: float | None = None) -> float:
        end = self.ended if self.ended is not None else (now or time.monotonic())
        return max(0.0, end - self.started)


class LiveRecipe(Receiver[StepEvent]):
    """Every step reported so far, in the order the recipe reached them."""

    def __init__(self) -> None:
        self.steps: dict[str, StepLine] = {}
        self.version = 0
        self.started = time.monotonic()
        self.ended: float | None = None

    def reporter(self) -> InboxReporter:
        """The reporter for a new run, with a fresh inbox (`Receiver.receive`)."""
        return InboxReporter(self.receive())

    @property
    def running(self) -> StepLine | None:
        return next((s for s in self.steps.values() if s.status == "running"), None)

    def on_event(self, event: StepEvent) -> None:
        line = self.steps.get(event.key)
        if event.kind in ("start", "skip"):
            # A step started again (a resumed run, or a round's repeat) starts its line over.
            line = StepLine(event.key, event.title, total=event.total, started=event.at)
            self.steps.pop(event.key, None)
            self.steps[event.key] = line
            if event.kind == "skip":
                line.status, line.note, line.ended = "skipped", event.note, event.at
        elif line is None:
            return  # an advance or finish of a step never started: nothing to draw it on
        elif event.kind == "advance":
            line.done, line.total = event.done, event.total
            if event.note:
                line.note = event.note
        else:  # finish
            line.status, line.ended = "done", event.at
            if line.total is not None:
                line.done = line.total
            line.note = event.note or line.note
        self.version += 1

    def end(self, status: StepStatus | None = None, note: str = "") -> None:
        """The run is over: the step still running (if any) ends with `status` ("failed",
        "stopped") and `note`."""
        self.catch_up()
        now = time.monotonic()
        line = self.running
        if line is not None and status is not None:
            line.status, line.ended = status, now
            if note:
                line.note = note
        self.ended = now
        self.version += 1


@dataclass(frozen=True)
class Preflight:
    """What the recipe says before its first step."""

    description: str  # Recipe.describe()
    estimates: list[tuple[str, Estimate]]


class RecipeJob:
    """The recipe for an `EngineThread`: `preflight()` (what `distill-tui run` checks and
    estimates before it asks to spend) and `run()`, each a job of its own thread's loop.

    Each job makes its own clients from the roles' open backends (`client_for_thread`: a
    client's connections belong to the loop that opened them), one per distinct backend, and
    closes them when it ends. `run()` returns None when its task is cancelled (the view's
    esc, the app's quit): the steps that finished are saved in the recipe's state, the
    generation that was going recorded its in-flight items as cancelled, and the next run
    resumes from there."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        config: RecipeConfig,
        backends: dict[str, Backend],
        reporter: Reporter | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.config = config
        self.backends = backends  # by role: student, teacher, judge
        self.reporter = reporter

    async def preflight(self) -> Preflight | None:
        """Who teaches whom, and the estimates of the paid steps still to run; None when
        cancelled."""

        async def check(recipe: Recipe) -> Preflight | None:
            try:
                await recipe.check_before_spending()
            except asyncio.CancelledError:
                return None
            return Preflight(recipe.describe(), recipe.estimates())

        return await self._with_recipe(check)

    async def run(self) -> dict[str, Any] | None:
        async def run(recipe: Recipe) -> dict[str, Any] | None:
            try:
                return await recipe.run()
            except asyncio.CancelledError:
                return None

        return await self._with_recipe(run)

    async def _with_recipe(self, job: Any) -> Any:
        clients: dict[int, openai.AsyncOpenAI] = {}
        runners = RunProcesses()

        def client(role: str) -> openai.AsyncOpenAI:
            backend = self.backends[role]
            if id(backend) not in clients:
                clients[id(backend)] = client_for_thread(backend.client)
            return clients[id(backend)]

        try:
            recipe = Recipe(
                self.store,
                client("student"),
                self.settings,
                self.config,
                backend_kind=self.backends["student"].spec.kind,
                reporter=self.reporter,
                teacher_client=client("teacher"),
                teacher_backend_kind=self.backends["teacher"].spec.kind,
                judge_client=client("judge"),
                runner=runners,
            )
            return await job(recipe)
        finally:
            await runners.close()
            for c in clients.values():
                await c.close()


class RunProcesses:
    """The recipe's generation steps, each in a process of its own as the Generate screen's
    runs are. bench/recipe_view.py, 400 requests at 64 streams, 2 cores, load < 1: on the
    recipe's thread, reading the replies held the UI's loop 10-14 ms p99, and 63-123 ms while
    10 keys a second were typed on another screen; in a process 4-7 ms and 26-48 ms (the
    keys alone: 12-17 ms). A process spends ~1.2 s importing the engine before its first
    request (the step took 8.2 s against 7.4), so each step's process starts the next
    one's, which waits for its job.

    Called as the recipe calls a `Generator`; `close()` ends the spare left over."""

    def __init__(self) -> None:
        self._spare: asyncio.Task[asyncio.subprocess.Process] | None = None

    def __call__(self, store: Store, client: openai.AsyncOpenAI, **options: Any) -> RunProcess:
        process = None
        spare = self._spare
        if spare is not None and spare.done():  # not started yet: kept for the next step
            self._spare = None
            if not spare.cancelled() and spare.exception() is None:
                process = spare.result()
        if self._spare is None:
            self._spare = asyncio.get_running_loop().create_task(RunProcess.spawn())
        return RunProcess(store, client, process=process, **options)

    async def close(self) -> None:
        spare, self._spare = self._spare, None
        if spare is None:
            return
        with contextlib.suppress(Exception):  # a spawn that failed left nothing to end
            await RunProcess.stop_spare(await spare)
