"""Eval scale: grade 100,000 stored completions with string_check + command_match +
fuzzy_match and store the 300,000 grades.

The completions are realistic variations of the shipped git dataset's references: exact,
fenced, after a "$ " prompt, flags reordered or spelled long, wrong arguments, prose, empty,
unbalanced quotes. Prints the wall time of the eval run (goal: < 10 s on a 2-core machine)
and a breakdown; asserts nothing. Run: .venv/bin/python bench/evals.py [--completions N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def variant(reference: str, rng: random.Random, i: int) -> str:
    kind = rng.random()
    if kind < 0.35:
        return reference
    if kind < 0.45:
        return f"```bash\n{reference}\n```"
    if kind < 0.5:
        return f"$ {reference}"
    if kind < 0.6:
        words = reference.split()
        return " ".join(words[:2] + list(reversed(words[2:])))
    if kind < 0.7:
        return reference.replace(" -f", " --force").replace(" -m ", " --message ")
    if kind < 0.8:
        return f"{reference} extra-{i % 97}"
    if kind < 0.88:
        return f"You can do this with:\n\n{reference}\n\nThis runs git for you."
    if kind < 0.93:
        return reference.replace("git ", "git -c core.pager=cat ", 1)
    if kind < 0.96:
        return ""
    return reference + ' "unbalanced'


async def main(n: int) -> None:
    from tui.engine.datasets import ItemDraft
    from tui.engine.evals import EvalRunner, create_eval, start_eval_run
    from tui.engine.examples import load_git_requests
    from tui.engine.store import Store

    shipped = [d for d in load_git_requests() if d.reference]
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp) / "ws")
        t0 = time.perf_counter()
        drafts = [
            ItemDraft(
                f"{shipped[i % len(shipped)].input} (#{i})", shipped[i % len(shipped)].reference
            )
            for i in range(n)
        ]
        dataset_id = store.create_dataset("big", "", drafts)
        items = store.items(dataset_id)
        completions = [
            (item.id, {"output": variant(item.reference, rng, i), "status": "done"})
            for i, item in enumerate(items)
        ]
        run_id = store.add_finished_run(completions, dataset_id=dataset_id, model="bench")
        t_setup = time.perf_counter() - t0

        eval_id = create_eval(
            store,
            "bench",
            [
                {"type": "string_check", "name": "exact", "operation": "eq"},
                {"type": "command_match", "name": "command"},
                {
                    "type": "text_similarity",
                    "name": "fuzzy",
                    "evaluation_metric": "fuzzy_match",
                    "pass_threshold": 0.8,
                },
            ],
        )
        eval_run_id = start_eval_run(store, eval_id, run_id)
        runner = EvalRunner(store)
        t0, cpu0 = time.perf_counter(), time.process_time()
        finished = await runner.run(eval_run_id)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0

        n_grades = len(store.grades(eval_run_id))
        print(f"setup: {n:,} completions stored in {t_setup:.2f} s")
        print(
            f"eval run: {n_grades:,} grades decided and stored in {wall:.2f} s "
            f"({n_grades / wall:,.0f} grades/s) — goal < 10 s"
        )
        # On a shared machine the wall time includes waiting for the CPU; this is the work.
        load = os.getloadavg()[0]
        print(
            f"CPU time of this process during the eval run: {cpu:.2f} s (load average {load:.1f})"
        )
        print(f"status: {finished.status} — {finished.message}")
        for name, s in finished.results.items():
            rate = f"{s.pass_rate:.1%}" if s.pass_rate is not None else "n/a"
            print(
                f"  {name:8} pass rate {rate:>6}  passed {s.passed:,}  failed {s.failed:,}  "
                f"errored {s.errored:,}  mean score {s.mean_score or 0:.3f}"
            )
        print(f"peak memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")

        # Resuming a finished run decides nothing again.
        t0 = time.perf_counter()
        again = await EvalRunner(store).run(eval_run_id)
        print(f"rerun of the finished eval run: {time.perf_counter() - t0:.2f} s ({again.message})")
        store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--completions", type=int, default=100_000)
    asyncio.run(main(parser.parse_args().completions))
