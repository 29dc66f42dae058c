"""Figures for the generation engine against the recipe's sequential loop.

    .venv/bin/python bench/generation.py [--requests 400] [--tokens 50] [--token-delay 0.02]
                                         [--concurrency 1 8 32 64] [--server process|thread]
                                         [--sequential-sample N] [--raw-sse C ...]
                                         [--tui C ... [--keys RATE] [--no-profile]
                                          [--profile-top N] [--profile-dump PREFIX]]
                                         [--budget RPM [--budget-items N] [--budget-minute S]
                                          [--budget-only]]

Prints a table; asserts nothing. Over the first --requests requests of data/git_requests.json,
against the fake OpenAI-compatible server (tests/helpers/fake_openai.py) streaming --tokens
tokens per reply, one every --token-delay seconds:
  - the recipe's loop: one non-streaming `await client.chat.completions.create(...)` after
    another (store=True, metadata={"task": "git"}, system + user message), as its
    generate_responses does;
  - our engine (Generator over a run in a fresh workspace) at each --concurrency;
  - for each: wall time, speed-up against the recipe's loop, completion tokens/s, time to
    first token p50, retries and failures, this process's CPU seconds (the client's work;
    the server's too with --server thread), and the event-loop lag p99 of the benchmark's own
    loop while the engine ran (a 10 ms ticker);
  - with --raw-sse C…: the same streams at concurrency C parsed with json.loads instead of
    the SDK's chunk models (not the engine; it shows what the SDK's parsing costs);
  - the TUI (issue 15): the Generate screen running the same requests at each --tui
    concurrency (64 and 128), headless (see tui_run()), with the event-loop lag p99 of the
    app's own loop, and for each concurrency:
      · its wall time against the engine alone at that concurrency (goal: within 10 %) and
        CPU against CPU;
      · the CPU of each thread of the app's process (the UI's MainThread, a batch run's
        thread, the store's writer), read from /proc: the kernel's accounting, which
        waiting for a CPU on a loaded machine does not inflate; and that of the run's own
        process (tui/engine/run_process.py; its imports included), once it has ended;
      · per second: chunks streamed, repaints of the live view, frames composed, events
        applied to the live view, completions committed;
      · with --keys RATE (10): a second pass typing into the item filter (/) at RATE keys a
        second while the run goes, with its lag p99 and each key's time until the filter box
        changed;
      · unless --no-profile: a third pass under cProfile, every thread of the app's process
        (not the run's own process) with its own CPU clock (time.thread_time), its CPU
        split into phases by the code that spent it (SSE
        parsing and HTTP in the SDK, the engine's bookkeeping, store commits, the live
        view's repaints, Textual's messages/layout and its rendering, the asyncio loop;
        --profile-top N lists the costliest functions of each phase, --profile-dump writes
        the stats). The profiler slows the run several times over: read its shares, not
        its wall time or lag.
  - with --budget RPM: the rate-limited row (issue 16): the engine at the last --concurrency
    (64) over --budget-items requests (2,000) against a server that meters RPM requests per
    minute as OpenAI does (x-ratelimit-* headers, 429s over budget, tokens not binding).
    Time is scaled so it runs in seconds: a minute lasts --budget-minute seconds (12) and the
    per-token delay shrinks by the same factor, so replies keep their length relative to the
    minute. It prints the wall time against the budget's ideal ((items - RPM) / rate: the
    first RPM go at once, the rest at the refill rate) and the 429s; --budget-only skips
    everything else.
Goals (issue 4): ≥ 25× the sequential loop at concurrency 32; TUI lag p99 < 50 ms.
Goals (issue 15): the TUI at 64 streams with lag p99 < 50 ms, also while 10 keys a second are
typed, and within 10 % of the engine alone's wall time; 128 streams printed too.
Measured (2 cores shared with a model training run; nice 10; server in a child process):
  before (the engine on the UI's loop; load 3.3-4.5): at 64 streams the TUI took 41.7 s
  against 25.8 s for the engine alone, lag p99 2,399 ms (engine alone 1,444), CPU 10.2 s
  against 5.6 s; at 128, lag p99 3,390 ms. The UI loop's CPU by phase (profiled): HTTP and
  SSE parsing in the SDK 49 %, Textual's messages, layout and CSS 25 % (the stream panel and
  the progress line asked for a layout of the whole screen on every update: one nearly every
  frame), Textual's rendering 9 %, asyncio and sockets 7 %, the engine's bookkeeping 4 %,
  the live view's own code 2 %.
  after (the engine on its own thread and loop, per-frame work cut), two runs:
    load 1.3: 64 streams 11.5 s against 11.2 s for the engine alone (+3 %), lag p99 102 ms
    (the engine alone's own loop: 344 ms), CPU 11.0 s against 8.7 s: UI thread 3.4 s,
    generation thread 7.3 s, store 0.3 s; 14 frames and 1,810 events a second. 128
    streams: 9.3 s against 6.8 s (+38 %), lag p99 140 ms (engine alone 308 ms), UI thread
    3.0 s. Typing 10 keys a second into the filter: lag p99 194 ms at 64 (378 at 128),
    each key 6 ms p50 / 447 ms p99 until the box changed, the UI thread's CPU 8.9 s:
    typing costs Textual ~35 ms of CPU a key on this machine, with or without a run.
    load 1.2-1.6 (the profiled passes too): 64 streams 16.7 s against 11.6 s (+44 %), lag
    p99 185 ms (engine alone 235 ms); 128 streams 11.3 s against 10.6 s (+7 %), lag p99
    254 ms; typing: lag p99 618 ms at 64, 461 ms at 128.
    The UI thread's CPU by phase (profiled): Textual's messages, timers and CSS 61 %, its
    rendering 26 %, asyncio 5 %, the live view 4 %, the inbox drained 0.7 %; the
    generation thread's: HTTP and SSE parsing in the SDK 77 %, asyncio 12 %, the engine 6 %.
  What is left is contention: the generation thread needs ~65 % of a core at 64 streams and
  holds the GIL meanwhile, and the machine's other load takes the rest; the engine alone
  misses 50 ms on this machine too. Re-measure on a quiet one.
  quiet (load 0.0-0.7), the engine still on a thread: 64 streams lag p99 36-63 ms, +7 to
  +15 %; typing 10 keys a second 106-185 ms, of which the filter laid the whole screen out
  again whenever the box emptied or filled and the table's scrollbar came or went (46 layouts
  in a pass). Those gone: typing 64 ms, 29-179 ms in other passes (the GIL, shared).
  after (the run in a process of its own, run_process.py; the filter no longer lays the
  screen out), five passes at load 0.0-1.3 (the host stealing up to half the CPU time in the
  last two; the steal is printed now): 64 streams lag p99 13-19 ms, wall +5 to +14 % (median
  +9 %) against the engine alone; typing 10 keys a second 29, 38, 42, 48 and 51 ms, wall +4
  to +12 % (median +10 %); 128 streams 23-28 ms, typing 51-75 ms, +6 to +22 %. The slowest
  key is the first or last of a run (108-339 ms): the run form is disabled or enabled then,
  which restyles all its widgets (45-55 ms of it in set_running alone). The UI's thread now
  spends 1.2-1.9 s of CPU on a 64-stream run (the run's process 6.2-7.1 s, ~1.2 s of it its
  imports); a key costs it ~13 ms with no run going, one frame of 19 widgets (two frames
  and 15 ms while the filter came through a message).
  after (the form hidden while a run goes, its place showing the run's settings: disabling
  it took 150-290 ms at a run's start and end in a headless app, hiding it ~40 ms), two
  passes at load 1.1-1.7: 64 streams lag p99 13 and 12 ms, wall +7 and +6 %; typing 23 and
  38 ms, wall +5 and +8 %, a key to the filter p99 29 and 27 ms (max 55 and 35; before, in
  the same session: 109, max 232); the UI's thread 1.2-1.3 s of CPU (2.4-2.7 s typing);
  128 streams 19 ms, typing 27 ms, wall +26 and +22 % (a 4.8 s run).
Goal (issue 16): under a 500-per-minute budget, 2,000 items at concurrency 64 with at most a
handful of 429s. Measured (2 cores, load 5.4-6.1, server in a child process), with a 6 s
minute (83 requests/s): 2,000 done, wall 38.0 s vs ideal 18.0 s, 0 429s, but the limit never
moved: the client spent 19.5 s of CPU (~10 ms a request with 50-token replies) and could not
send 83 a second, so the CPU, not the budget, set the pace. Hence the 12 s default (42/s).
Where the budget does bind (tests/unit/test_rate_limits.py: 65 left at the start, in-thread
server, load ~7): 500 per 8 s, 40.6 s vs ideal 31.0 s; 500 per 16.7 s, 67.0 s vs 64.6 s; 0
429s and the limit down from 64 both times.

The server runs as a child process by default, so its work doesn't compete with the client
for the GIL; --server thread runs it in this process. --sequential-sample N times the first N
requests of the sequential loops only and extrapolates to --requests (marked "≈"); the full
sequential loop takes --requests × --tokens × --token-delay seconds (400 s by default).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import re
import resource
import statistics
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import openai

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers.fake_openai import FakeOpenAI, FakeOpenAIProcess, RateLimits  # noqa: E402
from tui.engine.datasets import ItemDraft  # noqa: E402
from tui.engine.generation import (  # noqa: E402
    ConcurrencyChanged,
    Event,
    Generator,
    ItemFinished,
    ItemRetry,
    RunSpec,
    SamplingParams,
    create_run,
)
from tui.engine.store import Store  # noqa: E402

SYSTEM = "You are a helpful assistant that turns a request into the git command that does it."
MODEL = "fake-model"
S = TypeVar("S")
METADATA = {"task": "git"}


@dataclass
class Row:
    name: str
    seconds: float
    extrapolated: bool = False
    completion_tokens: int = 0
    ttft_p50_ms: float | None = None
    retries: int = 0
    failed: int = 0
    lag_p99_ms: float | None = None
    cpu_seconds: float | None = None  # this process's CPU time (the client's work)
    errors: dict[str, int] = field(default_factory=dict)  # retried errors, by message


def load_requests(n: int) -> list[str]:
    requests: list[str] = json.loads((ROOT / "data" / "git_requests.json").read_text())["requests"]
    if n > len(requests):
        raise SystemExit(f"--requests {n}: the dataset has {len(requests)}")
    return requests[:n]


@contextmanager
def fake_server(kind: str, tokens: int, token_delay: float) -> Iterator[Any]:
    server: FakeOpenAI | FakeOpenAIProcess
    if kind == "thread":
        server = FakeOpenAI(tokens_per_reply=tokens, token_delay=token_delay, markers=False)
    else:
        server = FakeOpenAIProcess(tokens_per_reply=tokens, token_delay=token_delay, markers=False)
    with server:
        yield server


class LagMonitor:
    """How late a 10 ms ticker wakes up on this event loop: the loop's responsiveness."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(self.interval)
            self.lags.append(time.perf_counter() - before - self.interval)

    def __enter__(self) -> LagMonitor:
        self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()

    def p99_ms(self) -> float | None:
        if len(self.lags) < 2:
            return None
        return statistics.quantiles(self.lags, n=100)[98] * 1000


async def recipe_loop(client: openai.AsyncOpenAI, requests: list[str]) -> Row:
    """The recipe's generate_responses: one request after another, not streamed."""
    tokens = 0
    started, cpu = time.perf_counter(), time.process_time()
    for request in requests:
        response = await client.chat.completions.create(
            model=MODEL,
            messages=[
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": request},
            ],
            store=True,
            metadata=METADATA,
        )
        tokens += response.usage.completion_tokens if response.usage else 0
    return Row(
        "recipe loop (sequential)",
        time.perf_counter() - started,
        completion_tokens=tokens,
        cpu_seconds=time.process_time() - cpu,
    )


async def engine_run(
    store: Store, dataset_id: int, client: openai.AsyncOpenAI, concurrency: int
) -> Row:
    run_id = create_run(
        store,
        RunSpec(
            dataset_id=dataset_id,
            model=MODEL,
            role="student",
            system_prompt=SYSTEM,
            params=SamplingParams(max_tokens=64),
            metadata=METADATA,
        ),
    )
    finished: list[ItemFinished] = []
    errors: dict[str, int] = {}

    def on_event(event: Event) -> None:
        if isinstance(event, ItemFinished):
            finished.append(event)
        elif isinstance(event, ItemRetry):
            errors[event.error] = errors.get(event.error, 0) + 1

    gen = Generator(store, client, concurrency=concurrency, max_retries=5, store_completions=True)
    with LagMonitor() as lag:
        started, cpu = time.perf_counter(), time.process_time()
        summary = await gen.run(run_id, on_event=on_event)
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu
    if summary.status != "done":
        print(f"  ! concurrency {concurrency}: {summary.status}: {summary.message}")
    ttfts = [f.first_token_ms for f in finished if f.first_token_ms is not None]
    return Row(
        f"engine, concurrency {concurrency}",
        seconds,
        completion_tokens=gen.stats.completion_tokens,
        ttft_p50_ms=statistics.median(ttfts) if ttfts else None,
        retries=gen.stats.retries,
        failed=gen.stats.failed,
        lag_p99_ms=lag.p99_ms(),
        cpu_seconds=cpu,
        errors=errors,
    )


async def raw_sse_run(client: openai.AsyncOpenAI, requests: list[str], concurrency: int) -> Row:
    """Not the engine: the same streaming requests at the same concurrency, but each SSE line
    parsed with json.loads instead of into the SDK's ChatCompletionChunk models — what the
    client side costs without them. Stores nothing."""
    queue = list(reversed(requests))
    tokens = 0
    ttfts: list[float] = []

    async def worker() -> None:
        nonlocal tokens
        while queue:
            request = queue.pop()
            sent = time.perf_counter()
            first = True
            async with client.chat.completions.with_streaming_response.create(
                model=MODEL,
                messages=[
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": request},
                ],
                stream=True,
                stream_options={"include_usage": True},
                max_tokens=64,
                store=True,
                metadata=METADATA,
            ) as response:
                async for line in response.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if chunk.get("usage"):
                        tokens += chunk["usage"]["completion_tokens"]
                    for choice in chunk["choices"]:
                        if first and choice["delta"].get("content"):
                            ttfts.append((time.perf_counter() - sent) * 1000)
                            first = False

    with LagMonitor() as lag:
        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return Row(
        f"raw SSE, concurrency {concurrency}",
        seconds,
        completion_tokens=tokens,
        ttft_p50_ms=statistics.median(ttfts) if ttfts else None,
        lag_p99_ms=lag.p99_ms(),
        cpu_seconds=cpu,
    )


async def timed_sequential(make: Any, requests: list[str], sample: int | None, total: int) -> Row:
    """Run a sequential measurement over all requests, or over a sample and extrapolate."""
    part = requests[:sample] if sample else requests
    row: Row = await make(part)
    if sample and sample < total:
        scale = total / sample
        row.seconds *= scale
        row.completion_tokens = int(row.completion_tokens * scale)
        if row.cpu_seconds is not None:
            row.cpu_seconds *= scale
        row.extrapolated = True
    return row


# -- the TUI: lag, where its CPU goes, keys typed during the run ---------------------------

# What the profiled pass sorts the CPU of each thread into, by the code that spent it (the
# first rule whose path fragment is in the function's file wins; C functions count for the
# code that called them).
PHASES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("benchmark (lag ticker, CPU sampler)", ("/bench/",)),
    (
        "HTTP + SSE parsing (openai SDK, httpx2, json)",
        (
            "/openai/",
            "/httpx2/",
            "/httpcore",
            "/h11/",
            "/anyio/",
            "/sniffio/",
            "/json/",
            "/pydantic",
            "/idna/",
            "/certifi/",
            "/ssl.py",
            "/socket.py",
            "/email/",
            "/http/",
        ),
    ),
    ("store (SQLite commits and reads)", ("/tui/engine/store.py", "sqlite3", "/concurrent/")),
    ("engine bookkeeping (tui/engine)", ("/tui/engine/",)),
    ("live view: events, table, stream panel (screens/, widgets/)", ("/screens/", "/tui/widgets/")),
    (
        "Textual rendering + compositor (and rich)",
        (
            "textual/_compositor",
            "textual/strip",
            "textual/_styles_cache",
            "textual/_segment",
            "textual/filter",
            "textual/renderables/",
            "textual/content",
            "textual/visual",
            "textual/_border",
            "textual/_spatial_map",
            "textual/_cells",
            "/rich/",
        ),
    ),
    ("Textual messages, timers, layout, CSS", ("/textual/",)),
    ("asyncio loop + sockets", ("/asyncio/", "/selectors.py", "/threading.py", "/queue.py")),
)
OTHER = "other"


# The standard library's helpers (typing, contextlib, enum, functools...) count for the code
# that called them, like C functions: the SDK's request building is mostly typing's work.
STDLIB = sysconfig.get_paths()["stdlib"]
STDLIB_OWN = (
    "/asyncio/",
    "/selectors.py",
    "/threading.py",
    "/queue.py",
    "/json/",
    "/ssl.py",
    "/socket.py",
    "/sqlite3/",
    "/concurrent/",
)


def phase_of(filename: str) -> str | None:
    """The phase of a Python function's file; None for a C function ('~') or a standard
    library helper, which count for their callers."""
    if filename == "~":
        return None
    stdlib = filename.startswith(STDLIB) and "site-packages" not in filename
    if stdlib and not any(f in filename for f in STDLIB_OWN):
        return None
    for name, fragments in PHASES:
        if any(f in filename for f in fragments):
            return name
    return OTHER


def profile_phases(
    stats: dict[Any, Any], top: dict[str, dict[str, float]] | None = None
) -> dict[str, float]:
    """CPU seconds by phase from a cProfile's raw stats (self time of each function; a C
    function's self time split among its callers' phases by what each caller spent in it).
    With `top`, also the seconds of each function within its phase."""
    totals: dict[str, float] = {}

    def add(key: Any, seconds: float, label: str, depth: int = 0) -> None:
        phase = phase_of(key[0])
        if phase is None:
            callers = stats.get(key, (0, 0, 0, 0, {}))[4]
            spent = sum(c[2] for c in callers.values())
            if depth > 4 or not callers or spent <= 0:
                phase = OTHER
            else:
                for caller, c in callers.items():
                    add(caller, seconds * c[2] / spent, label, depth + 1)
                return
        totals[phase] = totals.get(phase, 0.0) + seconds
        if top is not None:
            functions = top.setdefault(phase, {})
            functions[label] = functions.get(label, 0.0) + seconds

    for key, (_cc, _nc, tt, _ct, _callers) in stats.items():
        if tt > 0:
            filename, line, function = key
            where = "/".join(Path(filename).parts[-2:]) if filename != "~" else ""
            add(key, tt, f"{where}:{line}({function})" if where else function)
    return totals


class ThreadProfiles:
    """cProfile on the calling thread and on every thread started while it is on, each with
    its thread's own CPU clock (time.thread_time): time spent waiting for a CPU on a loaded
    machine, or for the GIL, is not counted, so the phases' shares hold under load."""

    def __init__(self) -> None:
        self.profiles: dict[str, cProfile.Profile] = {}

    def _bootstrap(self, frame: Any, event: str, arg: Any) -> None:
        # The first profile event of a new thread: hand the thread to a profiler of its own
        # (enable() replaces this hook for that thread).
        profile = cProfile.Profile(time.thread_time)
        self.profiles[threading.current_thread().name] = profile
        profile.enable()

    def __enter__(self) -> ThreadProfiles:
        main = cProfile.Profile(time.thread_time)
        self.profiles[threading.current_thread().name] = main
        threading.setprofile(self._bootstrap)
        main.enable()
        return self

    def __exit__(self, *exc: object) -> None:
        self.profiles[threading.current_thread().name].disable()
        threading.setprofile(None)  # type: ignore[arg-type]

    def phases(
        self, top: dict[str, dict[str, dict[str, float]]] | None = None
    ) -> dict[str, dict[str, float]]:
        """Each thread's CPU seconds by phase; with `top`, by function within each phase."""
        out: dict[str, dict[str, float]] = {}
        for name, profile in self.profiles.items():
            profile.snapshot_stats()
            functions = top.setdefault(name, {}) if top is not None else None
            out[name] = profile_phases(profile.stats, functions)  # type: ignore[attr-defined]
        return out


def _thread_cpu() -> dict[int, float]:
    """CPU seconds (user + system) of each of this process's threads, by native id, from
    /proc (Linux): the kernel's own accounting, untouched by how loaded the machine is."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for entry in os.scandir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{entry.name}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended meanwhile
        out[int(entry.name)] = (int(rest[11]) + int(rest[12])) / tick
    return out


class ThreadCpu:
    """Each thread's CPU over a stretch, by thread name, sampled every `interval` s so that
    threads which end before the stretch does (an engine thread) are counted too."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._names: dict[int, str] = {}
        self._task: asyncio.Task[None] | None = None

    def _sample(self) -> None:
        for thread in threading.enumerate():
            if thread.native_id is not None:
                self._names[thread.native_id] = thread.name
        self._last.update(_thread_cpu())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self._sample()

    def __enter__(self) -> ThreadCpu:
        self._first = _thread_cpu()
        self._sample()
        self._task = asyncio.get_running_loop().create_task(self._loop())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
        self._sample()

    def by_name(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for tid, seconds in self._last.items():
            name = self._names.get(tid, f"thread {tid}")
            # Executor threads are numbered (store_0, asyncio_3): one figure per pool.
            name = re.sub(r"_\d+$", "", name)
            out[name] = out.get(name, 0.0) + seconds - self._first.get(tid, 0.0)
        return {k: v for k, v in out.items() if v >= 0.005}


@dataclass
class TuiFigures:
    """One TUI run's figures beyond its Row."""

    threads: dict[str, float] = field(default_factory=dict)  # CPU s by thread
    counts: dict[str, int] = field(default_factory=dict)  # events, repaints, frames, commits
    phases: dict[str, dict[str, float]] = field(default_factory=dict)  # profiled pass only
    functions: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # by phase
    keys: int = 0  # keys typed into the filter during the run
    key_ms: list[float] = field(default_factory=list)  # key sent → filter box changed
    run_process_cpu: float | None = None  # CPU s of the run's own process (run_process.py)
    profiled: bool = False


@contextmanager
def counting(counts: dict[str, int]) -> Iterator[None]:
    """Count, per run, the live view's events and repaints, the screen's frames and the
    store's commits, by wrapping those methods (a counter each; restored afterwards)."""
    from textual.screen import Screen

    from screens.generate.live import LiveRunView
    from screens.generate.live_run import LiveRun

    def wrap(owner: Any, attr: str, name: str) -> Any:
        original = getattr(owner, attr)

        def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
            counts[name] = counts.get(name, 0) + 1
            return original(self, *args, **kwargs)

        setattr(owner, attr, counted)
        return original

    patched = [
        (LiveRun, "on_event", wrap(LiveRun, "on_event", "events applied to the live view")),
        # Called once by each repaint that found the run changed.
        (LiveRunView, "_paint_batches", wrap(LiveRunView, "_paint_batches", "repaints")),
        (Screen, "_compositor_refresh", wrap(Screen, "_compositor_refresh", "frames")),
        (Store, "save_completion", wrap(Store, "save_completion", "commits")),
    ]
    try:
        yield
    finally:
        for owner, attr, original in patched:
            setattr(owner, attr, original)


async def type_keys(app: Any, box: Any, rate: float, figures: TuiFigures) -> None:
    """Type into `box` at `rate` keys a second on a fixed schedule, as a terminal delivers
    keys (sent to the driver, not waiting for the app to go idle as Pilot.press does): a word,
    then backspaces, over and over. Records when each key changed the box's value."""
    from textual import events

    word = "branch"
    keys = [*word, *["backspace"] * len(word)]
    sent: list[float] = []

    def changed(_value: str) -> None:
        if sent:
            figures.key_ms.append((time.perf_counter() - sent.pop(0)) * 1000)

    app.watch(box, "value", changed, init=False)
    started = time.perf_counter()
    n = 0
    while True:
        await asyncio.sleep(max(0.0, started + n / rate - time.perf_counter()))
        key = keys[n % len(keys)]
        event = events.Key(key, key if len(key) == 1 else None)
        event.set_sender(app)
        sent.append(time.perf_counter())
        app._driver.send_message(event)
        n += 1
        figures.keys = n


def _children_cpu() -> float:
    """CPU seconds of this process's children that have ended and been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def app_settings(server: Any, workspace: Path, concurrency: int, model: str) -> Any:
    """The app's settings for a headless benchmark: the fake server as an OpenAI-compatible
    URL for every role, `model` for each, and a config file of its own beside the workspace
    (never the user's, which could name another backend or key)."""
    from tui.engine.settings import Settings

    os.environ["DISTILL_CONFIG"] = str(workspace.parent / "config.toml")
    return Settings(
        backend="url",
        base_url=server.base_url,
        api_key=server.api_key,
        student_model=model,
        teacher_model=model,
        judge_model=model,
        concurrency=concurrency,
        workspace=workspace,
    )


async def on_screen(app: Any, pilot: Any, mode: str, kind: type[S]) -> S:
    """The headless app's `mode` screen, once its backend is connected."""
    while app.backend is None:
        await pilot.pause(0.05)
    await app.action_switch_mode(mode)
    await pilot.pause()
    screen = app.screen
    assert isinstance(screen, kind), screen
    return screen


async def tui_run(
    server: Any,
    requests: list[str],
    concurrency: int = 64,
    *,
    size: tuple[int, int] = (160, 50),
    profile: bool = False,
    keys_per_second: float = 0.0,
    dump: str | None = None,
) -> tuple[Row, TuiFigures]:
    """The Generate screen running `requests` at `concurrency`, and the app's event-loop lag
    p99 meanwhile (goal, issue 15: < 50 ms).

    DistillApp runs headless (`run_test`: the whole app, layout and rendering included, only
    the terminal writes are skipped) on a fresh workspace holding the requests, connected to
    the fake server as an OpenAI-compatible URL. The Generate screen's form gets the model,
    then its start action runs; the LagMonitor ticks on the app's own event loop until the
    run ends. Also: each thread's CPU, the live view's events and repaints, the screen's
    frames and the store's commits; with `profile`, every thread's CPU by phase (cProfile
    with thread clocks: it slows the run, so read its shares, not its wall time); with
    `keys_per_second`, keys typed into the item filter while the run goes."""
    from textual.widgets import Input

    from screens.generate import GenerateScreen
    from tui.app import DistillApp

    figures = TuiFigures(profiled=profile)
    with tempfile.TemporaryDirectory(prefix="bench-tui-") as tmp:
        store = Store.open(Path(tmp) / "ws")
        store.create_dataset("git", SYSTEM, [ItemDraft(r) for r in requests])
        settings = app_settings(server, Path(tmp) / "ws", concurrency, MODEL)
        app = DistillApp(settings=settings, store=store, start_backend=True)
        # Wrapped before the screen mounts (its repaint timer holds the method it was given).
        async with contextlib.AsyncExitStack() as stack:
            stack.enter_context(counting(figures.counts))
            pilot = await stack.enter_async_context(app.run_test(size=size))
            screen = await on_screen(app, pilot, "generate", GenerateScreen)
            screen.query_one("#model", Input).value = MODEL
            await pilot.pause()
            # The screen starts a run's process ahead, whose imports take ~1.2 s: a user
            # reads the form for longer than that before starting a run.
            while screen.spare is None:
                await pilot.pause(0.05)
            await asyncio.sleep(2.0)
            typing: asyncio.Task[None] | None = None
            profiles = ThreadProfiles()
            figures.counts.clear()
            with (
                ThreadCpu() as threads,
                profiles if profile else contextlib.nullcontext(),
                LagMonitor() as lag,
            ):
                started, cpu = time.perf_counter(), time.process_time()
                children = _children_cpu()
                await screen.action_start()
                await pilot.pause()
                if keys_per_second:
                    box = screen.query_one("#item-filter", Input)
                    box.focus()
                    typing = asyncio.create_task(type_keys(app, box, keys_per_second, figures))
                while screen.generator is not None:
                    await asyncio.sleep(0.05)
                seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
                # The run's process has ended and been waited for by now: counted here.
                figures.run_process_cpu = _children_cpu() - children
                cpu += figures.run_process_cpu
                if typing is not None:
                    typing.cancel()
                    await pilot.pause()  # the keys sent so far, handled while the app is up
            figures.threads = threads.by_name()
            if profile:
                figures.phases = profiles.phases(figures.functions)
                if dump:
                    for thread, prof in profiles.profiles.items():
                        prof.dump_stats(f"{dump}.{concurrency}.{thread}.pstats")
            stats = screen.stats
        store.close()
    name = f"TUI generate, concurrency {concurrency}"
    if keys_per_second:
        name += f", {keys_per_second:g} keys/s"
    if profile:
        name += " (profiled)"
    row = Row(
        name,
        seconds,
        completion_tokens=stats.completion_tokens if stats else 0,
        retries=stats.retries if stats else 0,
        failed=stats.failed if stats else 0,
        lag_p99_ms=lag.p99_ms(),
        cpu_seconds=cpu,
    )
    return row, figures


def print_tui_figures(row: Row, figures: TuiFigures, engine: Row | None, top: int = 0) -> None:
    """Where the TUI's CPU went: per thread, per phase (profiled pass) and per second."""
    print(f"{row.name}:")
    if engine is not None and not figures.profiled:
        print(
            f"  wall {row.seconds:.1f} s vs {engine.seconds:.1f} s for the engine alone "
            f"({(row.seconds / engine.seconds - 1) * 100:+.0f} %, goal within 10 %); "
            f"CPU {row.cpu_seconds or 0:.1f} s vs {engine.cpu_seconds or 0:.1f} s"
        )
    threads = ", ".join(f"{k} {v:.2f} s" for k, v in sorted(figures.threads.items()))
    if figures.run_process_cpu is not None:
        threads += f"; the run's own process {figures.run_process_cpu:.2f} s"
    print(f"  CPU by thread: {threads}")
    per_s = ", ".join(f"{v / row.seconds:,.0f} {k}" for k, v in figures.counts.items())
    print(f"  a second: {row.completion_tokens / row.seconds:,.0f} chunks, {per_s}")
    if figures.keys:
        keys = sorted(figures.key_ms)
        p99 = statistics.quantiles(keys, n=100, method="inclusive")[98] if len(keys) > 1 else None
        print(
            f"  {figures.keys} keys typed into the filter; key → filter changed: p50 "
            f"{fmt_ms(statistics.median(keys) if keys else None)} ms, p99 {fmt_ms(p99)} ms, "
            f"max {fmt_ms(keys[-1] if keys else None)} ms"
        )
    for thread, phases in sorted(figures.phases.items()):
        total = sum(phases.values())
        if total < 0.05:
            continue
        print(f"  thread {thread}: {total:.2f} s of CPU (profiled), by phase:")
        for phase, seconds in sorted(phases.items(), key=lambda kv: -kv[1]):
            if seconds / total >= 0.005:
                print(f"    {seconds / total * 100:5.1f} %  {seconds:6.2f} s  {phase}")
                functions = figures.functions.get(thread, {}).get(phase, {})
                for function, spent in sorted(functions.items(), key=lambda kv: -kv[1])[:top]:
                    print(f"{'':18}{spent / total * 100:5.1f} %  {function}")


async def budget_run(args: argparse.Namespace) -> str:
    """The rate-limited row: a budgeted server as a child process, the engine at the last
    --concurrency, the wall time against the budget's ideal and the 429s (see the module
    docstring)."""
    base = load_requests(min(args.budget_items, 454))
    requests = [
        f"{base[i % len(base)]} (#{i // len(base)})" if i >= len(base) else base[i]
        for i in range(args.budget_items)
    ]
    scale = args.budget_minute / 60.0
    token_delay = args.token_delay * scale
    limits = RateLimits(requests=args.budget, tokens=None, minute=args.budget_minute)
    concurrency = args.concurrency[-1]
    changes: list[ConcurrencyChanged] = []

    def on_event(event: Event) -> None:
        if isinstance(event, ConcurrencyChanged):
            changes.append(event)

    with (
        FakeOpenAIProcess(
            tokens_per_reply=args.tokens, token_delay=token_delay, markers=False, rate_limits=limits
        ) as server,
        tempfile.TemporaryDirectory(prefix="bench-budget-") as tmp,
    ):
        store = Store.open(Path(tmp) / "ws")
        dataset_id = store.create_dataset("git", SYSTEM, [ItemDraft(r) for r in requests])
        run_id = create_run(
            store, RunSpec(dataset_id=dataset_id, model=MODEL, system_prompt=SYSTEM)
        )
        async with openai.AsyncOpenAI(
            base_url=server.base_url, api_key=server.api_key, max_retries=0, timeout=60
        ) as client:
            gen = Generator(store, client, concurrency=concurrency, max_retries=5)
            started, cpu = time.perf_counter(), time.process_time()
            summary = await gen.run(run_id, on_event=on_event)
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        store.close()
    rate = args.budget / args.budget_minute
    ideal = max(0, args.budget_items - args.budget) / rate
    lowest = min((c.limit for c in changes), default=concurrency)
    return (
        f"rate-limited: {args.budget_items} requests at concurrency {concurrency}, budget "
        f"{args.budget}/min with a {args.budget_minute:g} s minute ({rate:.0f} req/s), "
        f"{args.tokens} tokens × {token_delay * 1000:.1f} ms per reply\n"
        f"  {summary.status}: {gen.stats.done} done, {gen.stats.failed} failed; wall "
        f"{seconds:.1f} s vs ideal {ideal:.1f} s ({seconds / ideal if ideal else 0:.2f}×); "
        f"429s {gen.stats.rate_limited}; retries {gen.stats.retries}; in-flight limit "
        f"lowest {lowest}, final {gen.stats.concurrency_limit}, {len(changes)} changes; "
        f"client CPU {cpu:.1f} s"
    )


def fmt_ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}"


def print_table(rows: list[Row], baseline: Row, args: argparse.Namespace) -> None:
    print()
    print(
        f"{args.requests} requests, {args.tokens} tokens per reply, "
        f"{args.token_delay * 1000:g} ms per token, server in a {args.server}; "
        f"load average {args.load_before:.1f} before, {os.getloadavg()[0]:.1f} after "
        f"({os.cpu_count()} CPUs){steal_since(args.cpu_before)}"
    )
    header = (
        f"{'':28} {'wall s':>9} {'speed-up':>9} {'tok/s':>8} {'ttft p50 ms':>12} "
        f"{'retries':>8} {'failed':>7} {'lag p99 ms':>11} {'cpu s':>7}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        approx = "≈" if row.extrapolated else " "
        speedup = baseline.seconds / row.seconds if row.seconds else 0.0
        print(
            f"{row.name:28} {approx}{row.seconds:8.1f} {speedup:8.1f}× "
            f"{row.completion_tokens / row.seconds if row.seconds else 0:8.0f} "
            f"{fmt_ms(row.ttft_p50_ms):>12} {row.retries:8d} {row.failed:7d} "
            f"{fmt_ms(row.lag_p99_ms):>11} "
            f"{'—' if row.cpu_seconds is None else f'{row.cpu_seconds:.1f}':>7}"
        )
    print()
    for row in rows:
        for error, n in row.errors.items():
            print(f"{row.name}: retried {n}× after: {error}")
    for tui in (r for r in rows if r.name.startswith("TUI") and "profiled" not in r.name):
        print(f"event-loop lag p99 in the {tui.name}: {fmt_ms(tui.lag_p99_ms)} ms (goal < 50)")
    at32 = next((r for r in rows if r.name == "engine, concurrency 32"), None)
    if at32 is not None:
        print(f"speed-up at concurrency 32: {baseline.seconds / at32.seconds:.1f}× (goal ≥ 25×)")


def cpu_times() -> list[int] | None:
    """The machine's CPU time by kind (/proc/stat's first line), None where there is none."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            return [int(x) for x in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None


def steal_since(before: list[int] | None) -> str:
    """ "; 23 % of the CPU time stolen by the host": a virtual machine's CPUs taken by its
    neighbours, which no load average shows and which slows every figure (None: nothing)."""
    after = cpu_times()
    if before is None or after is None or len(after) < 8:
        return ""
    spent = [a - b for a, b in zip(after, before, strict=False)]
    total = sum(spent[:8])
    return f"; {spent[7] / total * 100:.0f} % of the CPU time stolen by the host" if total else ""


async def main_async(args: argparse.Namespace) -> None:
    args.load_before = os.getloadavg()[0]
    args.cpu_before = cpu_times()
    budget_line = None
    if args.budget:
        print(f"engine under a {args.budget}/min budget…", flush=True)
        budget_line = await budget_run(args)
    if args.budget_only:
        print()
        print(
            f"load average {args.load_before:.1f} before, {os.getloadavg()[0]:.1f} after "
            f"({os.cpu_count()} CPUs)"
        )
        print(budget_line)
        return
    requests = load_requests(args.requests)
    with (
        fake_server(args.server, args.tokens, args.token_delay) as server,
        tempfile.TemporaryDirectory(prefix="bench-gen-") as tmp,
    ):
        store = Store.open(Path(tmp) / "ws")
        dataset_id = store.create_dataset("git", SYSTEM, [ItemDraft(r) for r in requests])
        async with openai.AsyncOpenAI(
            base_url=server.base_url, api_key=server.api_key, max_retries=0, timeout=60
        ) as client:
            rows: list[Row] = []
            print("recipe loop…", flush=True)
            baseline = await timed_sequential(
                lambda part: recipe_loop(client, part),
                requests,
                args.sequential_sample,
                len(requests),
            )
            rows.append(baseline)
            for concurrency in args.concurrency:
                print(f"engine at concurrency {concurrency}…", flush=True)
                if concurrency == 1 and args.sequential_sample:
                    sample_ds = store.create_dataset(
                        "git-sample",
                        SYSTEM,
                        [ItemDraft(r) for r in requests[: args.sequential_sample]],
                    )
                    row = await timed_sequential(
                        lambda _part, ds=sample_ds: engine_run(store, ds, client, 1),
                        requests,
                        args.sequential_sample,
                        len(requests),
                    )
                else:
                    row = await engine_run(store, dataset_id, client, concurrency)
                rows.append(row)
            for concurrency in args.raw_sse or []:
                print(f"raw SSE at concurrency {concurrency}…", flush=True)
                rows.append(await raw_sse_run(client, requests, concurrency))
            # The engine alone at each TUI concurrency, for the TUI's wall time to be held to.
            for concurrency in args.tui:
                if not any(r.name == f"engine, concurrency {concurrency}" for r in rows):
                    print(f"engine at concurrency {concurrency}…", flush=True)
                    rows.append(await engine_run(store, dataset_id, client, concurrency))
        store.close()
        tui: list[tuple[Row, TuiFigures]] = []
        for concurrency in args.tui:
            passes = [{}]
            if args.keys:
                passes.append({"keys_per_second": args.keys})
            if args.profile:
                passes.append({"profile": True, "dump": args.profile_dump})
            for options in passes:
                what = ", ".join(f"{k} {v}" for k, v in options.items())
                print(f"TUI Generate screen at concurrency {concurrency} {what}…", flush=True)
                tui.append(await tui_run(server, requests, concurrency, **options))
    rows += [row for row, _ in tui]
    print_table(rows, baseline, args)
    for row, figures in tui:
        concurrency = int(re.findall(r"concurrency (\d+)", row.name)[0])
        engine = next((r for r in rows if r.name == f"engine, concurrency {concurrency}"), None)
        print_tui_figures(row, figures, engine, args.profile_top)
    if budget_line:
        print(budget_line)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--tokens", type=int, default=50, help="tokens per reply")
    parser.add_argument(
        "--token-delay", type=float, default=0.02, help="seconds per token (default 0.02)"
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--server", choices=["process", "thread"], default="process")
    parser.add_argument(
        "--raw-sse",
        type=int,
        nargs="*",
        metavar="C",
        help="also stream the requests without the SDK's chunk models at these concurrencies",
    )
    parser.add_argument(
        "--tui",
        type=int,
        nargs="*",
        default=[64, 128],
        metavar="C",
        help="also run the Generate screen headless at these concurrencies (none: skip)",
    )
    parser.add_argument(
        "--keys",
        type=float,
        default=10.0,
        metavar="RATE",
        help="a TUI pass more, typing into the item filter at RATE keys/s (0: skip)",
    )
    parser.add_argument(
        "--no-profile",
        dest="profile",
        action="store_false",
        help="skip the profiled TUI pass that splits each thread's CPU into phases",
    )
    parser.add_argument(
        "--profile-top",
        type=int,
        default=0,
        metavar="N",
        help="in the profiled TUI pass, also the N functions that spent most in each phase",
    )
    parser.add_argument(
        "--profile-dump",
        metavar="PREFIX",
        help="write the profiled pass's stats per thread to PREFIX.<C>.<thread>.pstats",
    )
    parser.add_argument(
        "--sequential-sample",
        type=int,
        default=None,
        metavar="N",
        help="time only N requests of the sequential runs and extrapolate",
    )
    parser.add_argument(
        "--budget",
        type=int,
        default=None,
        metavar="RPM",
        help="also run the rate-limited row against a server with this requests/min budget",
    )
    parser.add_argument("--budget-items", type=int, default=2000, metavar="N")
    parser.add_argument(
        "--budget-minute",
        type=float,
        default=12.0,
        metavar="S",
        help="seconds in the budget's minute (default 12: five times faster than real)",
    )
    parser.add_argument("--budget-only", action="store_true", help="only the rate-limited row")
    args = parser.parse_args(argv)
    if args.budget_only and not args.budget:
        parser.error("--budget-only needs --budget RPM")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
