"""What offline distillation buys, variant by variant: prints a table, asserts nothing.

    python bench/distill_quality.py                                # every variant
    python bench/distill_quality.py --workspace W --variants default,references

Each variant is the real recipe (`distill-tui run`'s engine) on the embedded local backend
with the shipped git dataset, judged on its eval split (never tuned on):

    default      the recipe's defaults: labelled pool (the requests that best stand for
                 the rest); the teacher is the pool-only
                 student, 5 samples at T 0.6 with a command_match vote, every voted label
                 the git gate passes; one round
    two-rounds   the same with expert iteration: 20 % of the pool held out to judge the
                 rounds, round 2 taught by round 1's student
    greedy       one greedy label a request, every label the gate passes, one round
    no-gate      the default's labels (the same teacher run), every voted label trained
                 on: what the gate adds
    context-only the untuned model as the teacher, given the 10 nearest pool examples
                 (context distillation), one greedy label a request, no gate
    context      the same teacher with 5 samples and the vote, gated, one round
    references   the student fine-tuned on every train reference (the ceiling)
    random-pool  the default with a random pool of the same size (its own pool-only
                 student, teacher and fine-tune)

Rows: the untuned student and the pool-only student (shared by the variants, random-pool
training its own pool-only student), each variant's teacher on the eval split (with the
context it taught with) and its fine-tuned student: exact and command match, mean latency,
tokens per request, and the wall minutes of
each variant's own steps. Variants share what they have in common (the default's state is
the workspace's own recipe-state.json, so a finished `distill-tui run` is reused as is):
only the steps a variant changes run again. The machine's load average is printed before
and after; other work slows every minute figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tui.engine.backend import open_backend  # noqa: E402
from tui.engine.recipe import STATE_FILE, Recipe, RecipeConfig, RecipeState, Reporter  # noqa: E402
from tui.engine.settings import Settings  # noqa: E402
from tui.engine.store import Store  # noqa: E402
from tui.engine.teaching import split_validation  # noqa: E402

# variant → (recipe config overrides, parent variant, the parent's steps it reuses)
VARIANTS: dict[str, tuple[dict[str, Any], str | None, tuple[str, ...]]] = {
    "default": ({}, None, ()),
    "two-rounds": ({"rounds": 2}, "default", ("baseline",)),
    "greedy": ({"rounds": 1, "teacher_samples": 1}, "default", ("baseline", "pool-only")),
    "no-gate": ({"gate": []}, "default", ("baseline", "pool-only", "teacher", "round-1/teacher")),
    "context-only": (
        {
            "rounds": 1,
            "pool_teacher": False,
            "teacher_examples": 10,
            "teacher_samples": 1,
            "gate": [],
        },
        "default",
        ("baseline", "pool-only"),
    ),
    "context": (
        {"rounds": 1, "pool_teacher": False, "teacher_examples": 10},
        "default",
        ("baseline", "pool-only"),
    ),
    "references": ({"teacher_model": "references"}, "default", ("baseline", "pool-only")),
    # the pool chosen at random instead of as the requests that best stand for the rest
    "random-pool": ({"teacher_pool_choice": "random"}, "default", ("baseline",)),
}
POOL_KEYS = ("pool", "pool_validation", "pool_choice")
SHARED = ("dataset_id", "eval_id", "gate_eval_id", *POOL_KEYS)
# the report rows of the steps a variant may take from its parent
SHARED_ROWS = {"baseline student": "baseline", "pool-only student": "pool-only"}


def state_file(variant: str) -> str:
    return STATE_FILE if variant == "default" else f"bench-{variant}.json"


def _reused(key: str, prefixes: tuple[str, ...], gate: bool = True) -> bool:
    """Whether a step of the parent's is the variant's too; a variant with a gate of its own
    takes the parent's labels but not the parent's gate."""
    if not gate and key.endswith("/gate"):
        return False
    return any(key == p or key.startswith(p + "/") for p in prefixes)


def seed(store: Store, variant: str) -> None:
    """Start a variant from the steps it shares with its parent (once)."""
    _, parent, prefixes = VARIANTS[variant]
    path = store.directory / state_file(variant)
    if parent is None or path.exists():
        return
    source = RecipeState.load(store.directory / state_file(parent))
    own_pool = "teacher_pool_choice" in VARIANTS[variant][0]
    shared = [k for k in SHARED if not (own_pool and k in POOL_KEYS)]
    state = RecipeState(**{k: getattr(source, k) for k in shared})
    rounds = VARIANTS[variant][0].get("rounds", 1)
    if rounds > 1 and not state.pool_validation and state.pool:
        # the default (one round) trains on the whole pool; rounds need a share held out
        config = RecipeConfig(**VARIANTS[variant][0])
        _, state.pool_validation = split_validation(
            state.pool, config.pool_validation, config.finetune.seed
        )
    same_gate = "gate" not in VARIANTS[variant][0]
    for name in ("runs", "eval_runs", "jobs", "models", "training_files", "notes"):
        mine = {k: v for k, v in getattr(source, name).items() if _reused(k, prefixes, same_gate)}
        setattr(state, name, mine)
    state.finished = [k for k in source.finished if _reused(k, prefixes, same_gate)]
    if _reused("round-1/train", prefixes) and source.best_round is not None:
        state.best_round = 1
    path.write_text(json.dumps(asdict(state), indent=1), encoding="utf-8")


class Timer(Reporter):
    """Wall seconds of each step that ran (skipped steps cost nothing)."""

    def __init__(self, variant: str) -> None:
        self.variant = variant
        self.started: dict[str, float] = {}
        self.seconds: dict[str, float] = {}

    def step(self, key: str, title: str, total: int | None) -> None:
        self.started[key] = time.monotonic()
        print(f"  [{self.variant}] {key}: {title}", flush=True)

    def finish(self, key: str, note: str) -> None:
        if key in self.started:
            self.seconds[key] = time.monotonic() - self.started[key]
            print(
                f"  [{self.variant}] {key}: {note} ({self.seconds[key] / 60:.1f} min)", flush=True
            )


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} CPUs"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workspace", type=Path, default=Path("bench-distill-workspace"))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)} (known: {', '.join(VARIANTS)})")
    print(f"distill_quality: {load()} before", flush=True)
    settings = Settings(workspace=args.workspace)  # the local backend keeps its models there
    store = Store.open(args.workspace)
    backend = await open_backend(settings)
    results: dict[str, tuple[dict[str, Any], Timer]] = {}
    try:
        for variant in variants:
            parent = VARIANTS[variant][1]
            if (
                parent
                and parent not in results
                and not (store.directory / state_file(parent)).exists()
            ):
                raise SystemExit(f"variant {variant!r} builds on {parent!r}: run that first")
            seed(store, variant)
            config = RecipeConfig(**VARIANTS[variant][0])
            timer = Timer(variant)
            recipe = Recipe(
                store,
                backend.client,
                settings,
                config,
                backend_kind=backend.spec.kind,
                reporter=timer,
                state_file=state_file(variant),
            )
            results[variant] = (await recipe.run(), timer)
    finally:
        await backend.aclose()
        store.close()
    print_table(results)
    print(f"distill_quality: {load()} after")


def print_table(results: dict[str, tuple[dict[str, Any], Timer]]) -> None:
    print()
    header = (
        f"{'variant':<11} {'row':<22} {'exact':>15} {'command':>15} {'latency':>9} {'tok/req':>8}"
    )
    print(header + "  minutes of its own steps")
    shown: set[str] = set()
    for variant, (report, timer) in results.items():
        graders = report["graders"]
        exact = next((g for g in graders if "exact" in g), graders[-1])
        command = next((g for g in graders if "command" in g), graders[0])
        minutes = sum(timer.seconds.values()) / 60
        # rows of steps a variant took from its parent are printed once
        _, parent, reused = VARIANTS[variant]
        if parent is None:
            reused = tuple(SHARED_ROWS.values())
        for row in report["rows"]:
            name = row["run"]
            if SHARED_ROWS.get(name) in reused:
                if name in shown:
                    continue
                shown.add(name)
                label = "(shared)"
            else:
                label = variant
            print(
                f"{label:<11} {name:<22} {row[exact]:>15} {row[command]:>15} "
                f"{row['mean latency']:>9} {row['tokens / request']:>8}"
                + (f"  {minutes:.1f}" if name == "fine-tuned student" else "")
            )
        notes = report.get("teaching", {}).get("notes", {})
        for key, note in notes.items():
            if key.endswith("/labels"):
                print(f"{'':<11} {key}: {note}")
        if report.get("summary"):
            print(f"{'':<11} {report['summary']}")


if __name__ == "__main__":
    asyncio.run(main())
