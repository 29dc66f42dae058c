"""The Recipe view's generation at high concurrency: does the UI stay responsive?

    .venv/bin/python bench/recipe_view.py [--requests 400] [--tokens 50] [--token-delay 0.02]
                                          [--concurrency 64] [--repeats 2]

Prints a table; asserts nothing. ctrl+s on the Recipe view (screens/recipe) runs the recipe's
engine on a thread of the app's process. Its generation steps are the heavy part: at 64
streams reading the replies takes most of a core (bench/generation.py), and on a thread of
the app's process that work holds the interpreter the UI's loop needs. This measures it as a
user meets it: the whole app headless (`run_test`: layout and rendering included, only the
terminal writes skipped), a fresh workspace whose dataset's eval split holds --requests
requests, the fake OpenAI-compatible server in a child process streaming --tokens tokens a
reply, one every --token-delay seconds, the Recipe view's ctrl+s, and a 10 ms ticker on the
app's loop from the key until the recipe's first step (the untuned student on the eval
split, at --concurrency) has every reply; then the recipe is stopped. Printed per pass: the
step's wall time, the loop's lag p99 and max, and the CPU seconds of this process and of its
children (the run's own process, when the step runs in one); the machine's load before and
after.

Goal (issue 15, the Generate screen's figure): lag p99 < 50 ms at 64 streams.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tui/, screens/ and bench/

from bench.generation import (
    SYSTEM,
    LagMonitor,
    TuiFigures,
    app_settings,
    load_requests,
    on_screen,
    type_keys,
)
from tests.helpers.fake_openai import FakeOpenAIProcess
from tui.engine.datasets import ItemDraft
from tui.engine.store import Store

STUDENT, TEACHER = "gpt-4o-mini", "gpt-4o"  # two models: the recipe's plain path


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def one_pass(
    server: Any, requests: list[str], concurrency: int, keys: float, recipe: bool = True
) -> dict[str, float]:
    """One pass; without `recipe`, the same keys typed for 7.5 s with no recipe going (what
    the typing costs the loop by itself)."""
    from textual.widgets import Input

    from screens.dialogs import ConfirmDialog
    from screens.recipe import RecipeScreen
    from tui.app import DistillApp
    from tui.engine.recipe import STATE_FILE, RecipeState

    with tempfile.TemporaryDirectory(prefix="bench-recipe-") as tmp:
        workspace = Path(tmp) / "ws"
        store = Store.open(workspace)
        # Every request in the eval split but a few: the first step generates them all.
        items = [ItemDraft(r, "git status", "eval") for r in requests]
        items += [ItemDraft(f"train request {i}", "git status", "train") for i in range(20)]
        store.create_dataset("git", SYSTEM, items)
        settings = app_settings(server, workspace, concurrency, STUDENT)
        settings = settings.model_copy(update={"teacher_model": TEACHER})
        app = DistillApp(settings=settings, store=store, start_backend=True)
        async with app.run_test(size=(160, 50)) as pilot:
            screen = await on_screen(app, pilot, "recipe", RecipeScreen)
            await asyncio.sleep(1.0)

            def baseline_done() -> bool:
                state = RecipeState.load(workspace / STATE_FILE)
                return "baseline" in state.finished

            if recipe:
                screen.action_run_recipe()
                # On a priced model the recipe asks about the cost first: yes, then time it.
                while not isinstance(app.screen, ConfirmDialog):
                    await pilot.pause(0.05)
            with LagMonitor() as lag:
                started, cpu, children = time.perf_counter(), time.process_time(), _children_cpu()
                if recipe:
                    await pilot.press("enter")
                typing: asyncio.Task[None] | None = None
                figures = TuiFigures()
                if keys:
                    # Another screen used meanwhile: the Dataset screen's filter, typed into.
                    await app.action_switch_mode("dataset")
                    box = app.screen.query_one("#filter", Input)
                    box.focus()
                    typing = asyncio.create_task(type_keys(app, box, keys, figures))
                while not (baseline_done() if recipe else time.perf_counter() - started > 7.5):
                    if recipe and screen.engine is None and time.perf_counter() - started > 5:
                        from screens.recipe.board import RecipeBoard

                        said = screen.query_one(RecipeBoard).query("Static")
                        text = " / ".join(str(getattr(w, "content", "")) for w in said)
                        raise SystemExit(f"the recipe stopped before its first step: {text}")
                    await asyncio.sleep(0.05)
                seconds = time.perf_counter() - started
                cpu = time.process_time() - cpu
                if typing is not None:
                    typing.cancel()
            screen.action_stop_recipe()
            while screen.engine is not None:
                await pilot.pause(0.05)
            children = _children_cpu() - children
        store.close()
    lags = sorted(lag.lags)
    return {
        "seconds": seconds,
        "p99": lag.p99_ms() or 0.0,
        "max": lags[-1] * 1000 if lags else 0.0,
        "cpu": cpu,
        "children": children,
        "key_p99": statistics.quantiles(figures.key_ms, n=100)[98]
        if len(figures.key_ms) > 1
        else 0.0,
    }


async def amain(args: argparse.Namespace) -> None:
    requests = load_requests(args.requests)
    print(f"load before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        f"Recipe view, first step: {len(requests)} requests × {args.tokens} tokens at "
        f"{args.token_delay * 1000:.0f} ms a token, concurrency {args.concurrency}"
    )
    if args.keys:
        print(f"typing {args.keys:g} keys a second into the Dataset screen's filter meanwhile")
    print(
        f"{'pass':>4}  {'wall s':>7}  {'lag p99 ms':>10}  {'lag max ms':>10}  {'CPU s':>6}  "
        f"{'children CPU s':>14}  {'key p99 ms':>10}"
    )
    server = FakeOpenAIProcess(
        tokens_per_reply=args.tokens,
        token_delay=args.token_delay,
        markers=False,
        fine_tuning=True,  # the recipe checks for it before its first request
    )
    with server:
        for n in range(1, args.repeats + 1):
            if args.keys:  # the keys alone first, then the same keys with the recipe going
                f = await one_pass(server, requests, args.concurrency, args.keys, recipe=False)
                print(
                    f"{'keys':>4}  {f['seconds']:>7.1f}  {f['p99']:>10.0f}  {f['max']:>10.0f}  "
                    f"{f['cpu']:>6.1f}  {f['children']:>14.1f}  {f['key_p99']:>10.0f}"
                )
            f = await one_pass(server, requests, args.concurrency, args.keys)
            print(
                f"{n:>4}  {f['seconds']:>7.1f}  {f['p99']:>10.0f}  {f['max']:>10.0f}  "
                f"{f['cpu']:>6.1f}  {f['children']:>14.1f}  {f['key_p99'] or 0:>10.0f}"
            )
    print(f"load after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--tokens", type=int, default=50)
    parser.add_argument("--token-delay", type=float, default=0.02)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--keys", type=float, default=0.0, help="keys a second typed on another screen (10)"
    )
    asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    main()
