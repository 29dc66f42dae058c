"""A generation run in a process of its own: the Generate screen's streaming runs.

On a thread of the app's process (offloop.EngineThread) the engine still shares the GIL with
the UI: at 64 streams reading the replies takes ~65 % of a core, and each time the UI's loop
wakes it waits for the engine's thread to let go. bench/generation.py --tui measured the
lag p99 at 36-64 ms with the engine on a thread while 10 keys a second were typed into the
filter, 106-181 ms before the filter stopped laying the screen out (2 cores, load < 1); in
a process of its own the UI's thread has the interpreter to itself.

`RunProcess` stands in for a `Generator` in the parent: the same `run(run_id, on_event)`,
`stats` and `cancel()`. The child (`python -m tui.engine.run_process`) is the same
`Generator` over the same workspace:

- the job comes on its stdin as one JSON line: the workspace, the run, the backend's
  address and key (never in argv or the environment), the engine's settings; later lines
  say "cancel". The end of its stdin cancels too: if the app dies, even by kill -9, the run
  stops as a cancel does (in-flight items recorded as cancelled, the rest left to resume);
- it writes the workspace itself, under the lock its parent holds (`Store.open_for_run`);
- its events go back in frames (4-byte length, then a pickle of the events, the totals and,
  last, the `RunFinished`), one frame per 50 ms at most: the deltas of one reply within a
  frame are joined, so the UI applies a few hundred events a second, not thousands. The
  frames are written without ever blocking the run: a parent that reads late (its loop
  held) gets them late, and the run goes on meanwhile;
- its stdout is the frames' alone: what a library prints goes to stderr, whose last lines
  say why if the process ends without finishing the run. Then the parent records the run
  as failed and gives back the claims it left, so a resume generates them again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import pickle
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import openai

from tui.engine.generation import Event, Generator, ItemDelta, RunFinished, RunStats
from tui.engine.settings import Price
from tui.engine.store import Store

FRAME = struct.Struct(">I")
FLUSH_INTERVAL = 0.05  # seconds between frames: a few per repaint of the live view (~14/s)
STDERR_LINES = 20  # kept of the child's stderr, for the message if it dies


@dataclass
class Job:
    """What the child needs to run: everything but the key is plain settings."""

    workspace: str
    run_id: int
    base_url: str
    api_key: str
    timeout: float | dict[str, float | None] | None
    concurrency: int
    max_retries: int
    price: dict[str, float]
    budget: float | None
    store_completions: bool


def _timeout_of(client: openai.AsyncOpenAI) -> float | dict[str, float | None] | None:
    timeout = client.timeout
    if isinstance(timeout, int | float):
        return float(timeout)
    if isinstance(timeout, openai.Timeout):
        return {
            "connect": timeout.connect,
            "read": timeout.read,
            "write": timeout.write,
            "pool": timeout.pool,
        }
    return None


class RunProcess:
    """Generates a run in a child process; reads like a `Generator` to the screen."""

    def __init__(
        self,
        store: Store,
        client: openai.AsyncOpenAI,
        *,
        concurrency: int = 8,
        max_retries: int = 5,
        price: Price | None = None,
        budget: float | None = None,
        store_completions: bool = False,
        process: asyncio.subprocess.Process | None = None,
        python: str = sys.executable,
    ) -> None:
        if not 1 <= concurrency <= 256:
            raise ValueError("concurrency must be between 1 and 256")
        self.store = store
        self.client = client
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.price = price or Price()
        self.budget = budget
        self.store_completions = store_completions
        self.python = python
        self.spare = process  # started ahead (`spawn`): used if it is still waiting
        self.stats = RunStats()
        self.pid: int | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._cancelled = False

    def cancel(self) -> None:
        """Stop promptly, as `Generator.cancel`: said to the child, which records the
        in-flight items as cancelled and ends."""
        self._cancelled = True
        self._say("cancel")

    @staticmethod
    async def spawn(python: str = sys.executable) -> asyncio.subprocess.Process:
        """A run's process, started: it imports the engine and waits for a job on its stdin.
        Importing takes ~1.2 s on a 2-core machine (0.74 s of it the openai SDK), 15 % of a
        400-request run at 64 streams: a screen starts one ahead (`RunProcess(process=)`)
        and closes its stdin when it no longer needs it, which ends it."""
        return await asyncio.create_subprocess_exec(
            python,
            "-m",
            "tui.engine.run_process",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            # Out of the terminal's session: a hangup or ^C reaches the app, which cancels.
            start_new_session=True,
        )

    @staticmethod
    async def stop_spare(proc: asyncio.subprocess.Process | None) -> None:
        """End a process `spawn` started that got no job (it has written nothing)."""
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()

    def _say(self, line: str) -> None:
        proc = self._proc
        if proc is None or _closing(proc):
            return
        assert proc.stdin is not None
        with contextlib.suppress(ConnectionError, RuntimeError):
            proc.stdin.write(f"{line}\n".encode())

    def job(self, run_id: int) -> Job:
        client = self.client
        return Job(
            workspace=str(self.store.directory),
            run_id=run_id,
            base_url=str(client.base_url),
            api_key=client.api_key,
            timeout=_timeout_of(client),
            concurrency=self.concurrency,
            max_retries=self.max_retries,
            price=self.price.model_dump(),
            budget=self.budget,
            store_completions=self.store_completions,
        )

    async def run(
        self, run_id: int, on_event: Callable[[Event], None] | None = None
    ) -> RunFinished:
        with self.store.generating(run_id):  # in this process: the child writes the run
            return await self._run(run_id, on_event)

    async def _run(self, run_id: int, on_event: Callable[[Event], None] | None) -> RunFinished:
        emit = on_event or (lambda event: None)
        self.stats = RunStats(started=time.monotonic())
        proc, self.spare = self.spare, None
        if proc is None or proc.returncode is not None or _closing(proc):
            proc = await self.spawn(self.python)
        self._proc, self.pid = proc, proc.pid
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        proc.stdin.write(json.dumps(asdict(self.job(run_id))).encode() + b"\n")
        if self._cancelled:  # cancelled before the child was there to hear it
            self._say("cancel")
        stderr: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
        reading_stderr = asyncio.create_task(_tail(proc.stderr, stderr))
        reading = asyncio.create_task(self._read(proc.stdout, emit))
        try:
            finished = await asyncio.shield(reading)
            await proc.wait()
        except asyncio.CancelledError:
            # The worker waiting on us is cancelled (the screen or the app closes): the run
            # is cancelled as on a thread, its records written (and its last frames read:
            # a child whose pipe is full cannot end) before this returns.
            self.cancel()
            await asyncio.wait({reading}, timeout=30)
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            raise
        finally:
            await asyncio.wait({reading_stderr}, timeout=5)
            if proc.stdin is not None:
                proc.stdin.close()
            self._proc = None
        if finished is None:
            finished = await self._died(run_id, proc.returncode, list(stderr))
            emit(finished)
        return finished

    async def _read(
        self, stdout: asyncio.StreamReader, emit: Callable[[Event], None]
    ) -> RunFinished | None:
        """The child's frames, as they come, to the end: its `RunFinished`, or None if it
        ended without one."""
        while True:
            try:
                (size,) = FRAME.unpack(await stdout.readexactly(FRAME.size))
                events, totals, finished = pickle.loads(await stdout.readexactly(size))
            except asyncio.IncompleteReadError:
                return None
            for event in events:
                emit(event)
            for name, value in totals.items():
                setattr(self.stats, name, value)
            if finished is not None:
                return finished  # type: ignore[no-any-return]

    async def _died(self, run_id: int, code: int | None, stderr: list[str]) -> RunFinished:
        """The child ended without finishing the run (killed, or an error of its own): the
        run failed, and what it left claimed is pending again for a resume."""
        last = next((line for line in reversed(stderr) if line.strip()), "")
        message = f"the run's process ended unexpectedly (exit code {code})"
        if last:
            message += f": {last.strip()}"
        store = self.store
        await store.in_thread(store.release_run_claims, run_id)
        await store.in_thread(store.set_run_status, run_id, "failed", finished=True)
        self.stats.finished = time.monotonic()
        return RunFinished(run_id, "failed", message)


def _closing(proc: asyncio.subprocess.Process) -> bool:
    return proc.stdin is None or proc.stdin.is_closing()


async def _tail(stream: asyncio.StreamReader, lines: collections.deque[str]) -> None:
    """Keep the last lines of `stream` (read in chunks: a line may be longer than a
    StreamReader's limit)."""
    pending = b""
    while chunk := await stream.read(65536):
        *complete, pending = (pending + chunk).split(b"\n")
        lines.extend(line.decode(errors="replace") for line in complete)
        pending = pending[-4096:]
    if pending:
        lines.append(pending.decode(errors="replace"))


# -- the child ---------------------------------------------------------------------------


class Frames:
    """The child's side of the channel: events gathered and sent one frame per interval."""

    def __init__(self, writer: asyncio.StreamWriter, stats: Callable[[], RunStats]) -> None:
        self.writer = writer
        self.stats = stats
        self.events: list[Event] = []
        self._deltas: dict[int, int] = {}  # item → index of its open delta in `events`
        self._names = [f.name for f in fields(RunStats)]

    def put(self, event: Event) -> None:
        item_id = getattr(event, "item_id", None)
        if isinstance(event, ItemDelta):
            at = self._deltas.get(event.item_id)
            if at is not None:
                joined = self.events[at]
                assert isinstance(joined, ItemDelta)
                self.events[at] = ItemDelta(event.item_id, joined.text + event.text)
                return
            self._deltas[event.item_id] = len(self.events)
        elif item_id is not None:
            # Anything else of that item comes after its text: later deltas start anew.
            self._deltas.pop(item_id, None)
        self.events.append(event)

    def send(self, finished: RunFinished | None = None) -> None:
        stats = self.stats()
        totals = {name: getattr(stats, name) for name in self._names}
        body = pickle.dumps((self.events, totals, finished), protocol=pickle.HIGHEST_PROTOCOL)
        self.events, self._deltas = [], {}
        self.writer.write(FRAME.pack(len(body)) + body)  # buffered: never waits on the reader

    async def pump(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            if self.events:
                self.send()


async def _child(job: Job, stdin: asyncio.StreamReader, out: asyncio.StreamWriter) -> None:
    store = Store.open_for_run(Path(job.workspace))
    client = openai.AsyncOpenAI(
        api_key=job.api_key,
        base_url=job.base_url,
        timeout=openai.Timeout(**job.timeout) if isinstance(job.timeout, dict) else job.timeout,
        max_retries=0,
    )
    try:
        generator = Generator(
            store,
            client,
            concurrency=job.concurrency,
            max_retries=job.max_retries,
            price=Price(**job.price),
            budget=job.budget,
            store_completions=job.store_completions,
        )
        frames = Frames(out, lambda: generator.stats)

        async def listen() -> None:
            # "cancel", or the end of stdin: the parent is gone or wants us gone.
            while (line := await stdin.readline()) and line.strip() != b"cancel":
                pass
            generator.cancel()

        listening = asyncio.create_task(listen())
        pumping = asyncio.create_task(frames.pump())
        try:
            finished = await generator.run(job.run_id, on_event=frames.put)
        finally:
            listening.cancel()
            pumping.cancel()
        frames.send(finished)
        with contextlib.suppress(ConnectionError):
            await out.drain()
    finally:
        await client.close()
        store.close()


async def _child_main() -> None:
    loop = asyncio.get_running_loop()
    # The frames go to what was stdout; fd 1 becomes stderr, so a stray print can't break them.
    frames_fd = os.dup(1)
    os.dup2(2, 1)
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(frames_fd, "wb", buffering=0)
    )
    out = asyncio.StreamWriter(transport, protocol, None, loop)
    line = await stdin.readline()
    if not line:
        return  # the parent went before saying what to run
    job = Job(**json.loads(line))
    await _child(job, stdin, out)
    transport.close()


if __name__ == "__main__":
    asyncio.run(_child_main())
