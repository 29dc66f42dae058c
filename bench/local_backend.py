"""Figures for the local backend's engine, next to plain llama-cpp-python on the same GGUF.

    .venv/bin/python bench/local_backend.py [--model ID_OR_PATH ...] [--tokens 64] [--repeats 3]
                                            [--loaded] [--threads N] [--tuned-anchor]

Prints a table; asserts nothing. Measured on the default model (SmolLM2-135M-Instruct Q4_1):
  - single stream: time to first token and tokens/s (end to end, and decode only);
  - 8 concurrent streams: aggregate tokens/s;
  - the same for each --model (a fine-tuned GGUF, an id known to the registry, or a path);
  - peak RSS of this process (our engine) and of the anchor's process;
  - the anchor: llama_cpp.Llama(...).create_chat_completion(stream=True) with its defaults
    ("plain", one thread per core), serving the 8 requests one after another as
    llama_cpp.server does; with --tuned-anchor also with flash attention and
    OMP_WAIT_POLICY=PASSIVE (the engine's settings before issue 15);
  - with --loaded, everything again while a busy loop holds one core (a trainer, a test
    suite or the app on the other core), printed beside the quiet figures.
Our engine picks its thread count by the machine's load (tui/local/threads.py) unless
--threads fixes it.
The anchor runs in a child process (its memory does not inflate ours) and its trials alternate
with ours, so a machine busy with other work slows both sides alike. Each figure is the
median of --repeats trials.

Hooks for the other parts of the backend (main() prints what they return):
  - http_rows(): figures over HTTP via the openai SDK against `distill-tui serve`
    (bench/local_http.py; --no-http skips it);
  - finetune_rows(): fine-tuning seconds per epoch on 400 short examples (with --finetune;
    bench/finetune.py's finetune_rows(args) when it has one).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tui/ and bench/ importable

from tui.local.models import (
    DEFAULT_MODEL_ID,
    GenRequest,
    LlamaEngine,
    ModelInfo,
    ModelRegistry,
)
from tui.local.threads import usable_cores

# Prompts that make SmolLM2 write on for a while, so runs reach --tokens instead of EOS.
PROMPTS = [
    "Write a long story about a lighthouse keeper who finds a message in a bottle.",
    "Explain in detail how a bicycle works, part by part.",
    "Describe a busy market in a small coastal town in the morning.",
    "Write a long letter to a friend about learning to cook.",
    "Explain step by step how to plant and care for a vegetable garden.",
    "Tell a long story about a robot who wants to become a painter.",
    "Describe the history of the printing press in detail.",
    "Write a long diary entry of a sailor crossing the Atlantic.",
]


def messages(i: int, trial: int) -> list[dict[str, str]]:
    # The request number comes first, so the only prefix two requests share is the model's
    # default system prompt: caching cannot skip a whole prompt between trials.
    return [{"role": "user", "content": f"Request {trial}.{i}: {PROMPTS[i % len(PROMPTS)]}"}]


@dataclass
class Row:
    section: str
    figure: str
    value: float | str
    unit: str = ""
    note: str = ""


@dataclass
class Trial:
    ttft: float  # seconds to the first streamed text
    total: float  # seconds for the whole request (or the whole batch)
    tokens: int  # completion tokens

    @property
    def rate(self) -> float:
        return self.tokens / self.total

    @property
    def decode_rate(self) -> float:
        return (self.tokens - 1) / max(self.total - self.ttft, 1e-9)


def rss_mb() -> float:
    import psutil

    return float(psutil.Process().memory_info().rss) / 2**20


def peak_rss_mb() -> float:
    # VmHWM is this address space's high-water mark. ru_maxrss is not usable for the anchor's
    # child: Linux carries the parent's maximum over fork+exec, so the child reported ours.
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- the anchor: plain llama-cpp-python, in its own process ------------------------------------


def _anchor_worker(conn: Any, path: str, n_threads: int, tuned: bool) -> None:
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=path, n_ctx=2048, n_threads=n_threads, flash_attn=tuned, verbose=False
    )
    conn.send(("ready", peak_rss_mb()))
    while True:
        cmd = conn.recv()
        if cmd is None:
            break
        i, trial, max_tokens = cmd
        t0 = time.perf_counter()
        ttft = 0.0
        text: list[str] = []
        tokens = 0
        stream: Any = llm.create_chat_completion(
            messages=messages(i, trial),  # type: ignore[arg-type]
            max_tokens=max_tokens,
            temperature=0.0,
            stream=True,
        )
        for chunk in stream:
            delta = chunk["choices"][0]["delta"].get("content")
            if delta:
                if not ttft:
                    ttft = time.perf_counter() - t0
                text.append(delta)
                tokens += 1
        total = time.perf_counter() - t0
        # llama-cpp-python streams one chunk per token (a character split over tokens is
        # held back and sent joined): re-tokenising gives the count when they differ.
        counted = len(llm.tokenize("".join(text).encode(), add_bos=False, special=False))
        conn.send((ttft, total, max(tokens, counted), peak_rss_mb()))
    conn.close()


class Anchor:
    """llama_cpp.Llama in a child process. ``tuned`` gives it the settings our engine uses
    (flash attention, OMP_WAIT_POLICY=PASSIVE), to show what batching adds beyond them."""

    def __init__(self, path: Path, n_threads: int, tuned: bool) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=_anchor_worker, args=(child, str(path), n_threads, tuned), daemon=True
        )
        saved = os.environ.pop("OMP_WAIT_POLICY", None)
        if tuned:
            os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        try:
            self.proc.start()  # the child inherits the environment as it is now
        finally:
            os.environ.pop("OMP_WAIT_POLICY", None)
            if saved is not None:
                os.environ["OMP_WAIT_POLICY"] = saved
        _, self.rss = self.conn.recv()

    def one(self, i: int, trial: int, max_tokens: int) -> Trial:
        self.conn.send((i, trial, max_tokens))
        ttft, total, tokens, self.rss = self.conn.recv()
        return Trial(ttft, total, tokens)

    def sequential(self, n: int, trial: int, max_tokens: int) -> Trial:
        t0 = time.perf_counter()
        trials = [self.one(i, trial, max_tokens) for i in range(n)]
        return Trial(trials[0].ttft, time.perf_counter() - t0, sum(t.tokens for t in trials))

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.kill()


# ---- load on one core -----------------------------------------------------------------------


def _spin(deadline: float) -> None:
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    while time.time() < deadline:  # bounded: never outlives a crashed benchmark by long
        pass


class OneCoreBusy:
    """A child process spinning on one core, for the "loaded" figures."""

    def __enter__(self) -> OneCoreBusy:
        self.proc = mp.get_context("spawn").Process(
            target=_spin, args=(time.time() + 3600,), daemon=True
        )
        self.proc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.join()


# ---- our engine --------------------------------------------------------------------------------


async def engine_one(engine: Any, i: int, trial: int, max_tokens: int) -> Trial:
    t0 = time.perf_counter()
    ttft = 0.0
    tokens = 0
    async for chunk in engine.generate(
        GenRequest(messages(i, trial), max_tokens=max_tokens, temperature=0.0)
    ):
        if chunk.text and not ttft:
            ttft = time.perf_counter() - t0
        if chunk.finish_reason is not None:
            tokens = chunk.completion_tokens
    return Trial(ttft, time.perf_counter() - t0, tokens)


async def engine_concurrent(engine: Any, n: int, trial: int, max_tokens: int) -> Trial:
    t0 = time.perf_counter()
    trials = await asyncio.gather(*(engine_one(engine, i, trial, max_tokens) for i in range(n)))
    return Trial(
        statistics.median(t.ttft for t in trials),
        time.perf_counter() - t0,
        sum(t.tokens for t in trials),
    )


async def loop_gap(work: Any) -> tuple[Any, float]:
    """Await `work` while a 10 ms ticker measures the event loop: the result and the longest
    the loop went without turning (seconds). Decoding belongs on the engine's thread; a loop
    that stalls for the length of a decoding step shows here."""
    loop = asyncio.get_running_loop()
    longest = 0.0

    async def ticker() -> None:
        nonlocal longest
        last = loop.time()
        while True:
            await asyncio.sleep(0.01)
            now = loop.time()
            longest = max(longest, now - last - 0.01)
            last = now

    tick = asyncio.create_task(ticker())
    try:
        result = await work
    finally:
        tick.cancel()
    return result, longest


# ---- hooks for the server and trainer helpers --------------------------------------------------


def http_rows(args: argparse.Namespace) -> list[Row]:
    """HTTP-level figures: `distill-tui serve` on 127.0.0.1 driven by the openai SDK (single
    stream TTFT and tok/s, 8 concurrent streams). Lives in bench/local_http.py (the server's
    owner's); it runs on its own thread and loop."""
    if args.no_http:
        return []
    from bench.local_http import http_rows as server_rows

    return [Row(r.section, r.figure, r.value, r.unit, r.note) for r in server_rows(args)]


def finetune_rows(args: argparse.Namespace) -> list[Row]:
    """Fine-tuning seconds per epoch on 400 short examples (tui.local.trainer). The trainer's
    owner can provide ``finetune_rows(args) -> rows`` in bench/finetune.py; it is run with
    --finetune (it trains for minutes)."""
    if not args.finetune:
        return []
    import bench.finetune as finetune

    hook = getattr(finetune, "finetune_rows", None)
    if hook is None:
        return [Row("fine-tuning", "seconds per epoch", "n/a", "", "run bench/finetune.py")]
    return [Row(r.section, r.figure, r.value, r.unit, r.note) for r in hook(args)]


HOOKS: list[Callable[[argparse.Namespace], list[Row]]] = [http_rows, finetune_rows]


# ---- the run -----------------------------------------------------------------------------------


def med(values: list[float]) -> float:
    return statistics.median(values)


async def bench_model(
    info: ModelInfo,
    args: argparse.Namespace,
    anchors: list[tuple[str, Anchor]],
) -> list[Row]:
    rows: list[Row] = []
    t0 = time.perf_counter()
    engine = await asyncio.to_thread(
        LlamaEngine, info.id, info.path, n_threads=args.threads, n_parallel=args.streams
    )
    load_s = time.perf_counter() - t0
    sec = info.id + args.situation
    rows.append(Row(sec, "load", load_s, "s", f"{info.path.name}"))
    try:
        # Warm-up: the first decode allocates llama.cpp's compute buffers, on both sides.
        await engine_one(engine, 0, -1, 4)
        for _, anchor in anchors:
            anchor.one(0, -1, 4)

        ours_single: list[Trial] = []
        ours_multi: list[Trial] = []
        gaps: list[float] = []
        theirs: dict[str, tuple[list[Trial], list[Trial]]] = {n: ([], []) for n, _ in anchors}
        for rep in range(args.repeats):
            # Alternate sides so background load hits both alike. Single-stream trials use
            # request 100+rep so they share nothing but the system prompt with the others.
            for name, anchor in anchors:
                theirs[name][0].append(anchor.one(100, rep, args.tokens))
            ours_single.append(await engine_one(engine, 100, rep, args.tokens))
            trial, gap = await loop_gap(engine_concurrent(engine, args.streams, rep, args.tokens))
            ours_multi.append(trial)
            gaps.append(gap)
            for name, anchor in anchors:
                theirs[name][1].append(anchor.sequential(args.streams, rep, args.tokens))

        n = args.streams
        rows += [
            Row(sec, "single stream: first token", med([t.ttft for t in ours_single]), "s"),
            Row(
                sec,
                "single stream",
                med([t.rate for t in ours_single]),
                "tok/s",
                f"end to end, {med([t.tokens for t in ours_single]):.0f} tokens",
            ),
            Row(sec, "single stream, decode", med([t.decode_rate for t in ours_single]), "tok/s"),
            Row(
                sec,
                f"{n} concurrent streams",
                med([t.rate for t in ours_multi]),
                "tok/s",
                "aggregate",
            ),
            Row(
                sec,
                f"{n} concurrent: first token",
                med([t.ttft for t in ours_multi]),
                "s",
                "median of the streams",
            ),
            Row(
                sec,
                f"{n} concurrent: event-loop stall",
                med(gaps) * 1000,
                "ms",
                "longest the asyncio loop went without turning",
            ),
        ]
        rows.append(Row(sec, "threads at the end", engine.stats()["threads"], "", "chosen by load"))
        for name, (single, seq) in theirs.items():
            a = f"anchor {name}{args.situation}"
            rows += [
                Row(a, "single stream: first token", med([t.ttft for t in single]), "s"),
                Row(a, "single stream", med([t.rate for t in single]), "tok/s", "end to end"),
                Row(a, "single stream, decode", med([t.decode_rate for t in single]), "tok/s"),
                Row(a, f"{n} requests one after another", med([t.rate for t in seq]), "tok/s"),
            ]
        for name, (single, _) in theirs.items():
            base = med([t.rate for t in single])
            rows += [
                Row(
                    sec,
                    "single ÷ anchor single",
                    med([t.rate for t in ours_single]) / base,
                    "×",
                    f"vs {name}; goal ≥ 0.9 quiet",
                ),
                Row(
                    sec,
                    f"{n} streams ÷ anchor single",
                    med([t.rate for t in ours_multi]) / base,
                    "×",
                    f"vs {name}; goal ≥ 2.5",
                ),
            ]
        rows.append(Row(sec, "RSS with the engine loaded", rss_mb(), "MB", "after the trials"))
    finally:
        await engine.aclose()
    rows.append(Row(sec, "peak RSS (this process)", peak_rss_mb(), "MB", "so far in this run"))
    return rows


def resolve(spec: str, registry: ModelRegistry) -> ModelInfo:
    try:
        return registry.info(spec)
    except KeyError:
        pass
    path = Path(spec).expanduser()
    if path.suffix.lower() != ".gguf" or not path.is_file():
        raise SystemExit(f"--model {spec}: not a registry id nor a .gguf file")
    return ModelInfo(path.stem.lower(), "gguf", path, int(path.stat().st_mtime), "user")


def print_table(rows: list[Row]) -> None:
    head = ("section", "figure", "value", "unit", "note")
    cells = [
        (
            r.section,
            r.figure,
            f"{r.value:.3g}" if isinstance(r.value, float) else str(r.value),
            r.unit,
            r.note,
        )
        for r in rows
    ]
    widths = [max(len(c[i]) for c in [head, *cells]) for i in range(5)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    print(line.format(*head))
    print("  ".join("-" * w for w in widths))
    last = None
    for c in cells:
        shown = ("" if c[0] == last else c[0], *c[1:])
        last = c[0]
        print(line.format(*shown).rstrip())


async def amain(args: argparse.Namespace) -> None:
    registry = ModelRegistry()
    infos = [registry.info(DEFAULT_MODEL_ID)] + [resolve(m, registry) for m in args.model]
    rows: list[Row] = []
    load = os.getloadavg()
    threads = args.threads or "by load"
    print(
        f"cpus={os.cpu_count()} threads={threads} load average={load[0]:.2f} "
        f"tokens={args.tokens} streams={args.streams} repeats={args.repeats}",
        flush=True,
    )
    situations = [""] + ([" (one core busy)"] if args.loaded else [])
    for situation in situations:
        args.situation = situation
        busy = OneCoreBusy() if situation else None
        if busy is not None:
            busy.__enter__()
        try:
            rows += await bench_situation(infos, args)
        finally:
            if busy is not None:
                busy.__exit__()
    for hook in HOOKS:
        rows += hook(args)
    load = os.getloadavg()
    print(f"load average at the end={load[0]:.2f}\n")
    print_table(rows)


async def bench_situation(infos: list[ModelInfo], args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    anchor_threads = args.threads or usable_cores()
    for info in infos:
        anchors: list[tuple[str, Anchor]] = []
        if not args.no_anchor:
            anchors.append(("plain llama-cpp-python", Anchor(info.path, anchor_threads, False)))
            if args.tuned_anchor:
                tuned = Anchor(info.path, anchor_threads, True)
                anchors.append(("llama-cpp-python +flash +passive", tuned))
        try:
            rows += await bench_model(info, args, anchors)
        finally:
            for name, anchor in anchors:
                section = f"anchor {name}{args.situation}"
                rows.append(Row(section, "peak RSS (its process)", anchor.rss, "MB"))
                anchor.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", default=[], help="extra model: id or .gguf")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per request")
    parser.add_argument("--streams", type=int, default=8, help="concurrent streams")
    parser.add_argument("--repeats", type=int, default=3, help="trials per figure (median)")
    parser.add_argument(
        "--threads", type=int, default=None, help="fix the engine's threads (default: by load)"
    )
    parser.add_argument(
        "--loaded", action="store_true", help="also measure with one core busy elsewhere"
    )
    parser.add_argument("--no-anchor", action="store_true", help="skip plain llama-cpp-python")
    parser.add_argument("--no-http", action="store_true", help="skip the HTTP section")
    parser.add_argument("--workspace", default=None, help="workspace to serve (ft: models)")
    parser.add_argument("--finetune", action="store_true", help="also time fine-tuning (minutes)")
    parser.add_argument(
        "--tuned-anchor",
        action="store_true",
        help="also run the anchor with flash attention and OMP_WAIT_POLICY=PASSIVE",
    )
    args = parser.parse_args()
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
