"""The Evals screen while model judges grade: the app's event-loop lag (issue 15).

    .venv/bin/python bench/judges_tui.py [--items 1000] [--concurrency 64 128]
                                         [--token-delay 0.1] [--keys 10]

Prints a table; asserts nothing. A fresh workspace holds --items requests of the shipped git
dataset with their references and a finished run answering them (half the reference, half
prose), and an eval of three graders: a label_model judge (tests/helpers/judges.py) that the
fake OpenAI-compatible server answers in a child process (tests/helpers/fake_openai.py
--reply judge: "pass" for an answer that is a git command; its JSON verdict's ~8 word-tokens
take 7 × --token-delay seconds, ~0.7 s), plus string_check and command_match. (A run shorter
than ~10 s measures its start more than its course: the first judge call's imports and
connections are a one-off 100-150 ms.) For each
--concurrency:
  - the eval runner alone (EvalRunner.run on this process's loop, no UI): wall time, CPU and
    the event-loop lag p99 of its loop (a 10 ms ticker);
  - the Evals screen grading the same run headless (DistillApp under `run_test`: layout and
    rendering included, only the terminal writes skipped): `4`, then `g` as a user does, with
    the lag p99 of the app's own loop while the judges answer, the wall time against the
    runner alone, and the CPU of each of the app's threads (the UI's MainThread, the runner's
    eval-run thread, the store's writer);
  - with --keys RATE (10): a second pass pressing down/up in the results table at RATE keys
    a second while the judges answer, with its lag p99.
Goal (issue 15, "the same for the Evals screen while judges stream"): lag p99 < 50 ms at 64.
The machine's load average and the share of CPU time the host stole are printed with it.

Measured (defaults, quiet: load 0.4-0.9, 0-1 % stolen):
  before (the runner already on a thread of its own): 64 judges lag p99 130 ms, +6 % wall
  against the runner alone; pressing keys 178 ms, +14 %; 128 judges 177 ms, keys 210 ms; the
  UI's thread 5.1 s of CPU (8.4 s with keys) for 3.3 s of the runner's. Profiled: every
  redraw of the results (up to 15 a second) laid the whole screen out (Static.update does),
  ~40 ms each: the grader summary's counts, the view line, the detail of the row under the
  cursor, whose height changed as the cursor moved between rows with more or fewer
  failures; the summary's rich Table took ~7 ms a draw, as long as the whole results table.
  after (SteadyStatic: a layout only when a text needs another height; the detail a fixed 5
  lines; the summary redrawn 4 times a second and at once when grading ends), two passes:
  64 judges 27 and 25 ms, +3 and +1 %; keys 40 and 41 ms, +7 and +3 %; 128 judges 83 and
  72 ms, keys 106 and 105 ms (a shorter run, 8 s, whose start weighs more: the runner
  alone's own loop lags 160-193 ms there); the UI's thread 3.2 s (5.0 s with keys).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.generation import (  # noqa: E402
    LagMonitor,
    ThreadCpu,
    app_settings,
    cpu_times,
    steal_since,
)
from tests.helpers.fake_openai import FakeOpenAIProcess  # noqa: E402
from tests.helpers.judges import JUDGE  # noqa: E402
from tui.engine.datasets import ItemDraft  # noqa: E402
from tui.engine.evals import EvalRunner, create_eval, start_eval_run  # noqa: E402
from tui.engine.examples import load_git_requests  # noqa: E402
from tui.engine.store import Store  # noqa: E402

MODEL = "fake-model"  # one of the fake server's models
GRADERS: list[dict[str, Any]] = [
    JUDGE,
    {"type": "string_check", "name": "exact", "operation": "eq"},
    {"type": "command_match", "name": "command"},
]


def build_workspace(path: Path, n: int) -> tuple[Store, int, int]:
    """(store, eval id, run id): n requests, a finished run over them, the eval."""
    shipped = [d for d in load_git_requests() if d.reference]
    drafts = [
        ItemDraft(
            shipped[i % len(shipped)].input + (f" (#{i})" if i >= len(shipped) else ""),
            shipped[i % len(shipped)].reference,
        )
        for i in range(n)
    ]
    store = Store.open(path)
    dataset_id = store.create_dataset("git", "", drafts)
    completions = [
        (
            item.id,
            {
                "output": item.reference if i % 2 == 0 else "You could try a git command.",
                "status": "done",
            },
        )
        for i, item in enumerate(store.items(dataset_id))
    ]
    run_id = store.add_finished_run(completions, dataset_id=dataset_id, model="student")
    return store, create_eval(store, "judged", GRADERS), run_id


async def runner_alone(server: FakeOpenAIProcess, n: int, concurrency: int) -> dict[str, Any]:
    import openai

    with tempfile.TemporaryDirectory(prefix="bench-judges-") as tmp:
        store, eval_id, run_id = build_workspace(Path(tmp) / "ws", n)
        async with openai.AsyncOpenAI(
            base_url=server.base_url, api_key=server.api_key, max_retries=0, timeout=60
        ) as client:
            runner = EvalRunner(store, client, judge_model=MODEL, concurrency=concurrency)
            eval_run_id = start_eval_run(store, eval_id, run_id)
            with LagMonitor() as lag:
                started, cpu = time.perf_counter(), time.process_time()
                finished = await runner.run(eval_run_id)
                seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        graded = len(store.grades(eval_run_id))
        store.close()
    return {
        "name": f"runner alone, concurrency {concurrency}",
        "seconds": seconds,
        "cpu": cpu,
        "lag": lag.p99_ms(),
        "status": finished.status,
        "grades": graded,
    }


async def press_keys(app: Any, rate: float, sent: list[int]) -> None:
    """down, down, …, up, up, … in the results table at `rate` keys a second, on a fixed
    schedule, sent to the driver as a terminal would (not waiting for the app to settle)."""
    from textual import events

    keys = ["down"] * 10 + ["up"] * 10
    started = time.perf_counter()
    while True:
        await asyncio.sleep(max(0.0, started + sent[0] / rate - time.perf_counter()))
        key = keys[sent[0] % len(keys)]
        event = events.Key(key, None)
        event.set_sender(app)
        app._driver.send_message(event)
        sent[0] += 1


async def screen_run(
    server: FakeOpenAIProcess, n: int, concurrency: int, keys_per_second: float = 0.0
) -> dict[str, Any]:
    """The Evals screen grading the run with `g`, headless; the app's loop lag meanwhile."""
    from screens.evals import EvalsScreen
    from tui.app import DistillApp

    with tempfile.TemporaryDirectory(prefix="bench-judges-tui-") as tmp:
        store, _eval_id, _run_id = build_workspace(Path(tmp) / "ws", n)
        settings = app_settings(server, Path(tmp) / "ws", concurrency, MODEL)
        app = DistillApp(settings=settings, store=store, start_backend=True)
        sent = [0]
        async with app.run_test(size=(160, 50)) as pilot:
            while app.backend is None:
                await pilot.pause(0.05)
            await pilot.press("4")
            while not isinstance(app.screen, EvalsScreen) or app.screen.target is None:
                await pilot.pause(0.05)
            screen = app.screen
            await pilot.pause(0.5)
            typing: asyncio.Task[None] | None = None
            with ThreadCpu() as threads, LagMonitor() as lag:
                started, cpu = time.perf_counter(), time.process_time()
                await pilot.press("g")
                deadline = time.monotonic() + 30
                while screen.runner is None:  # the eval run is created in a store thread
                    if time.monotonic() > deadline:
                        said = "; ".join(n.message for n in app._notifications)
                        raise SystemExit(f"the Evals screen did not start grading: {said}")
                    await asyncio.sleep(0.01)
                if keys_per_second:
                    screen.results.table.focus()
                    typing = asyncio.create_task(press_keys(app, keys_per_second, sent))
                while screen.runner is not None:
                    await asyncio.sleep(0.05)
                seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
                if typing is not None:
                    typing.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await typing
                    await pilot.pause()  # the keys sent so far, handled while the app is up
            live = screen.live
            status = live.info.status if live is not None else "?"
            graded = len(store.grades(live.info.id)) if live is not None else 0
        store.close()
    name = f"Evals screen, concurrency {concurrency}"
    if keys_per_second:
        name += f", {keys_per_second:g} keys/s"
    return {
        "name": name,
        "seconds": seconds,
        "cpu": cpu,
        "lag": lag.p99_ms(),
        "status": status,
        "grades": graded,
        "threads": threads.by_name(),
        "keys": sent[0],
    }


async def main_async(args: argparse.Namespace) -> None:
    load_before, cpu_before = os.getloadavg()[0], cpu_times()
    rows: list[dict[str, Any]] = []
    with FakeOpenAIProcess(reply="judge", token_delay=args.token_delay, markers=False) as server:
        for concurrency in args.concurrency:
            print(f"runner alone at concurrency {concurrency}…", flush=True)
            alone = await runner_alone(server, args.items, concurrency)
            rows.append(alone)
            passes = [0.0] + ([args.keys] if args.keys else [])
            for keys in passes:
                print(f"Evals screen at concurrency {concurrency}, keys {keys:g}/s…", flush=True)
                row = await screen_run(server, args.items, concurrency, keys)
                row["alone"] = alone["seconds"]
                rows.append(row)
    print()
    print(
        f"{args.items} completions × {len(GRADERS)} graders, one a label_model judge on the "
        f"fake server (child process, ~{7 * args.token_delay:.2f} s a verdict); load average "
        f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after ({os.cpu_count()} CPUs)"
        f"{steal_since(cpu_before)}"
    )
    header = f"{'':38} {'wall s':>7} {'vs alone':>9} {'lag p99 ms':>11} {'cpu s':>6}  status"
    print(header)
    print("-" * len(header))
    for row in rows:
        versus = f"{(row['seconds'] / row['alone'] - 1) * 100:+.0f} %" if "alone" in row else ""
        lag = "—" if row["lag"] is None else f"{row['lag']:.0f}"
        print(
            f"{row['name']:38} {row['seconds']:7.1f} {versus:>9} {lag:>11} {row['cpu']:6.1f}  "
            f"{row['status']}, {row['grades']:,} grades"
        )
    for row in rows:
        if "threads" in row:
            threads = ", ".join(f"{k} {v:.2f} s" for k, v in sorted(row["threads"].items()))
            keys = f"; {row['keys']} keys pressed" if row.get("keys") else ""
            print(f"{row['name']}: CPU by thread: {threads}{keys}")
    screen_lags = [r["lag"] for r in rows if "threads" in r and r["lag"] is not None]
    if screen_lags:
        print(
            f"event-loop lag p99 in the Evals screen: median {statistics.median(screen_lags):.0f}"
            f" ms, worst {max(screen_lags):.0f} ms (goal < 50)"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=1000, help="completions graded")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 128])
    parser.add_argument(
        "--token-delay",
        type=float,
        default=0.1,
        help="seconds per word-token of the judge's verdict (default 0.1: ~0.7 s a verdict)",
    )
    parser.add_argument(
        "--keys",
        type=float,
        default=10.0,
        metavar="RATE",
        help="a pass more, pressing down/up in the results at RATE keys/s (0: skip)",
    )
    asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
