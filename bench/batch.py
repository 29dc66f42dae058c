"""Figures for batch generation (tui/engine/batch.py) against the fake OpenAI server's Batch
API: the client's side of N requests sent as a batch.

    .venv/bin/python bench/batch.py [--requests 10000 100000] [--batch-seconds 1.0]
                                    [--tracemalloc]

Prints a table; asserts nothing. For each N, in a fresh process (so its peak memory is its
own) and a fresh workspace holding a dataset of N distinct git requests, one BatchRunner run:
build the JSONL, upload it, create the batch, poll it, download the output file and map
every line back to its item (one transaction). The server runs as a child process
(FakeOpenAIProcess, default answers), so its work doesn't compete with the client's; it
takes --batch-seconds to "answer" a batch, polls start every 0.1 s.

Columns: wall time of the run (end to end, the server's batch time included), the client's
own time (wall less the time the batch spent at the server, i.e. build + upload + create +
download + map back), the client's CPU seconds, its peak memory (the process's peak RSS,
interpreter and imports included; with --tracemalloc also the peak of Python allocations
during the run, which slows it), and the machine's load. On a loaded machine under `nice`
the wall times mostly measure the wait for a CPU: the CPU seconds are the client's cost.
Goals (issue 12): the client side under 10 s and 300 MB for 10,000 requests; 100,000 in
under 60 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers.fake_openai import FakeOpenAIProcess  # noqa: E402
from tui.engine.batch import BatchRunner, BatchUpdate  # noqa: E402
from tui.engine.datasets import ItemDraft  # noqa: E402
from tui.engine.generation import RunSpec, SamplingParams, create_run  # noqa: E402
from tui.engine.store import Store  # noqa: E402

VERBS = ["Create a branch called", "Delete the branch", "Push", "Merge", "Rebase onto", "Tag"]


def requests(n: int) -> list[str]:
    return [f"{VERBS[i % len(VERBS)]} feature-{i} and show the result." for i in range(n)]


async def one(n: int, batch_seconds: float, trace: bool) -> dict[str, float]:
    with (
        tempfile.TemporaryDirectory() as tmp,
        FakeOpenAIProcess(batches=True, batch_seconds=batch_seconds, markers=False) as server,
    ):
        import openai

        store = Store.open(Path(tmp) / "ws")
        dataset = store.create_dataset(
            "bench", "Answer with one git command.", [ItemDraft(r) for r in requests(n)]
        )
        run_id = create_run(
            store,
            RunSpec(dataset_id=dataset, model="gpt-4o-mini", params=SamplingParams(max_tokens=40)),
        )
        # The time the batch spent at the server: from its first update to the last poll
        # before it was collected (the client only waits then).
        at_server: list[float] = []

        def on_event(event: object) -> None:
            if isinstance(event, BatchUpdate):
                at_server.append(time.monotonic())

        async with openai.AsyncOpenAI(
            base_url=server.base_url, api_key=server.api_key, timeout=600
        ) as client:
            runner = BatchRunner(store, client, poll_interval=0.1, max_poll_interval=0.5)
            if trace:
                tracemalloc.start()
            cpu0, t0 = time.process_time(), time.monotonic()
            finished = await runner.run(run_id, on_event)
            wall = time.monotonic() - t0
            cpu = time.process_time() - cpu0
            peak = tracemalloc.get_traced_memory()[1] if trace else 0
            tracemalloc.stop()
        done = store.get_run(run_id).n_done
        store.close()
    waited = at_server[-1] - at_server[0] if len(at_server) > 1 else 0.0
    return {
        "n": n,
        "status": finished.status == "done",
        "done": done,
        "wall": wall,
        "client": wall - waited,
        "cpu": cpu,
        "peak_mb": peak / 1e6,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--batch-seconds", type=float, default=1.0)
    parser.add_argument("--tracemalloc", action="store_true", help="also Python's peak")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(asyncio.run(one(args.one, args.batch_seconds, args.tracemalloc))))
        return
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f} at the start")
    header = f"{'requests':>9} {'done':>8} {'wall s':>8} {'client s':>9} {'cpu s':>7}"
    header += f" {'peak MB':>8} {'RSS MB':>7} {'load':>5}"
    print(header)
    for n in args.requests:
        out = subprocess.run(
            [sys.executable, __file__, "--one", str(n), "--batch-seconds", str(args.batch_seconds)]
            + (["--tracemalloc"] if args.tracemalloc else []),
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        if out.returncode != 0:
            print(f"{n:>9} failed: {out.stderr[-2000:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"{n:>9,} {r['done']:>8,} {r['wall']:>8.2f} {r['client']:>9.2f} {r['cpu']:>7.2f}"
            f" {r['peak_mb'] or float('nan'):>8.1f} {r['rss_mb']:>7.0f} {os.getloadavg()[0]:>5.2f}"
        )


if __name__ == "__main__":
    main()
