"""kill -9 at random points of a generation run and of an eval run (real child processes,
several seeds, two kills each), then a resume: nothing lost (every item answered, every
completion graded, each once) and nothing paid for twice (what was stored before a kill is
never asked for again; only what was in flight at a kill is asked again).

tests/unit/test_generation_faults.py kills one generation at one point; this goes through
random points, more than once per run, and does the same for grading."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.helpers.fake_openai import FakeOpenAI
from tui.engine.datasets import ItemDraft
from tui.engine.evals import EvalRunner, create_eval, start_eval_run
from tui.engine.generation import Generator, RunSpec, create_run
from tui.engine.store import Store

ROOT = Path(__file__).resolve().parents[2]
N = 40
CONCURRENCY = 4
KILLS = 2
SEEDS = [0, 1, 2]

GENERATE = textwrap.dedent(
    """
    import asyncio, sys, openai
    from tui.engine.generation import Generator
    from tui.engine.store import Store
    async def main():
        store = Store.open(sys.argv[1])
        client = openai.AsyncOpenAI(base_url=sys.argv[2], api_key=sys.argv[3], max_retries=0)
        await Generator(store, client, concurrency=int(sys.argv[5])).run(int(sys.argv[4]))
    asyncio.run(main())
    """
)

GRADE = textwrap.dedent(
    """
    import asyncio, sys, openai
    from tui.engine.evals import EvalRunner
    from tui.engine.store import Store
    async def main():
        store = Store.open(sys.argv[1])
        client = openai.AsyncOpenAI(base_url=sys.argv[2], api_key=sys.argv[3], max_retries=0)
        runner = EvalRunner(store, client, judge_model="judge-model",
                            concurrency=int(sys.argv[5]))
        await runner.run(int(sys.argv[4]))
    asyncio.run(main())
    """
)

# What the Generate screen does: the run in a process of its own (tui/engine/run_process.py),
# the workspace's lock held here. Prints the run process's pid once it has one.
GENERATE_IN_A_RUN_PROCESS = textwrap.dedent(
    """
    import asyncio, sys, openai
    from tui.engine.run_process import RunProcess
    from tui.engine.store import Store
    async def main():
        store = Store.open(sys.argv[1])
        client = openai.AsyncOpenAI(base_url=sys.argv[2], api_key=sys.argv[3], max_retries=0)
        process = RunProcess(store, client, concurrency=int(sys.argv[5]))
        said = []
        def on_event(event):
            if not said:
                said.append(print(process.pid, flush=True))
        await process.run(int(sys.argv[4]), on_event)
    asyncio.run(main())
    """
)

JUDGE = {
    "type": "label_model",
    "name": "judge",
    "input": [
        {"role": "user", "content": "Request: {{item.input}}\nAnswer: {{sample.output_text}}"}
    ],
    "labels": ["pass", "fail"],
    "passing_labels": ["pass"],
}


def judge_reply(messages: Sequence[dict[str, Any]]) -> str:
    return json.dumps({"label": "pass", "reason": "fine"})


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    # Slow enough that a run takes a few seconds, so a kill lands in the middle of it.
    with FakeOpenAI(token_delay=0.05, tokens_per_reply=5) as server:
        yield server


@pytest.fixture
def judge() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(
        token_delay=0.05, reply=judge_reply, markers=False, models=("judge-model",)
    ) as server:
        yield server


def make_run(workspace: Path, requests: list[str]) -> tuple[int, int]:
    """A workspace holding a dataset of `requests` and a run over it: (dataset, run)."""
    store = Store.open(workspace)
    try:
        dataset = store.create_dataset("d", items=[ItemDraft(r) for r in requests])
        return dataset, create_run(store, RunSpec(dataset_id=dataset, model="fake-model"))
    finally:
        store.close()


def start_child(
    script: str, workspace: Path, server: FakeOpenAI, target: int, **popen: Any
) -> subprocess.Popen[str]:
    """`script` in a child process: the workspace, the server and the run (or eval run)."""
    args = [str(workspace), server.base_url, server.api_key, str(target), str(CONCURRENCY)]
    return subprocess.Popen([sys.executable, "-c", script, *args], cwd=ROOT, text=True, **popen)


def kill_at_random_point(
    script: str,
    workspace: Path,
    server: FakeOpenAI,
    target: int,
    progress: Callable[[Store], int],
    at: int,
    rng: random.Random,
) -> int:
    """Start the child on the workspace, wait (with a deadline) until `progress` reaches `at`,
    wait a random moment more, SIGKILL it. Returns the progress seen after the kill."""
    proc = start_child(script, workspace, server, target)
    try:
        deadline = time.monotonic() + 120
        while True:
            looking = Store.open(workspace, read_only=True)
            try:
                seen = progress(looking)
            finally:
                looking.close()
            if seen >= at:
                break
            assert proc.poll() is None, "the child ended before the kill point"
            assert time.monotonic() < deadline, f"no progress to {at} within 120 s ({seen})"
            time.sleep(0.02)
        # A random moment after the threshold: mid-request, mid-write, between the two.
        time.sleep(rng.uniform(0, 0.3))
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    looking = Store.open(workspace, read_only=True)
    try:
        return progress(looking)
    finally:
        looking.close()


def client(server: FakeOpenAI) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0)


@pytest.mark.parametrize("seed", SEEDS)
async def test_generation_killed_at_random_points(
    fake: FakeOpenAI, tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    workspace = tmp_path / "ws"
    requests = [f"kill nine generation {seed} item {i}" for i in range(N)]
    dataset, run_id = make_run(workspace, requests)

    def done(s: Store) -> int:
        return s.get_run(run_id).n_done

    asked_before: dict[str, int] = {}
    done_before: set[int] = set()
    for kill in range(KILLS):
        low = len(done_before) + 2
        at = rng.randint(low, low + (N - low) // 3)
        seen = kill_at_random_point(GENERATE, workspace, fake, run_id, done, at, rng)
        assert seen < N, f"kill {kill + 1} came after the run finished: nothing was tested"
        looking = Store.open(workspace, read_only=True)
        done_before = {r.item_id for r in looking.completions(run_id) if r.status == "done"}
        inputs = {i.id: i.input for i in looking.items(dataset)}
        looking.close()
        asked_before = {inputs[i]: fake.count(inputs[i]) for i in done_before}

    store = Store.open(workspace)  # the dead children's claims are released here
    try:
        async with client(fake) as c:
            finished = await Generator(store, c, concurrency=CONCURRENCY).run(run_id)
        assert finished.status == "done"
        rows = store.completions(run_id)
        # Nothing lost, nothing twice: one completion per item, every one done.
        assert sorted(r.item_id for r in rows) == sorted(i.id for i in store.items(dataset))
        assert all(r.status == "done" for r in rows)
    finally:
        store.close()
    # What was stored before the last kill was never asked for again.
    for text, count in asked_before.items():
        assert fake.count(text) == count, text
    # Each request was sent once, except those in flight at a kill (at most CONCURRENCY each).
    counts = [fake.count(r) for r in requests]
    assert all(c >= 1 for c in counts)
    assert sum(counts) - N <= CONCURRENCY * KILLS, counts


async def test_the_app_killed_mid_run_stops_its_run_process(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    """kill -9 of the app while its run generates in a process of its own: that process
    notices (its stdin ends), records its in-flight items as cancelled, marks the run
    cancelled and ends, instead of generating on without the lock; a resume does the rest,
    asking again only what was in flight."""
    workspace = tmp_path / "ws"
    requests = [f"kill nine app item {i}" for i in range(N)]
    dataset, run_id = make_run(workspace, requests)
    app = start_child(GENERATE_IN_A_RUN_PROCESS, workspace, fake, run_id, stdout=subprocess.PIPE)
    try:
        assert app.stdout is not None
        child = int(app.stdout.readline())
        deadline = time.monotonic() + 120
        while True:
            looking = Store.open(workspace, read_only=True)
            done = looking.get_run(run_id).n_done
            looking.close()
            if done >= 3:
                break
            assert time.monotonic() < deadline, "no progress within 120 s"
            time.sleep(0.02)
    finally:
        os.kill(app.pid, signal.SIGKILL)
        app.wait()
    deadline = time.monotonic() + 30
    while Path(f"/proc/{child}").exists() and b"zombie" not in _state(child):
        assert time.monotonic() < deadline, "the run's process went on after its app died"
        time.sleep(0.05)
    looking = Store.open(workspace, read_only=True)
    try:
        assert looking.get_run(run_id).status == "cancelled"
        rows = looking.completions(run_id)
        statuses = {r.status for r in rows}
        assert statuses <= {"done", "cancelled"} and "cancelled" in statuses, statuses
        done_before = {r.item_id for r in rows if r.status == "done"}
        assert len(done_before) < N
    finally:
        looking.close()

    store = Store.open(workspace)
    try:
        async with client(fake) as c:
            finished = await Generator(store, c, concurrency=CONCURRENCY).run(run_id)
        assert finished.status == "done"
        assert all(r.status == "done" for r in store.completions(run_id))
        inputs = {i.id: i.input for i in store.items(dataset)}
    finally:
        store.close()
    assert all(fake.count(inputs[i]) == 1 for i in done_before)
    counts = [fake.count(r) for r in requests]
    assert min(counts) >= 1 and sum(counts) - N <= CONCURRENCY, counts


def _state(pid: int) -> bytes:
    """The State line of /proc/<pid>/status ("zombie" once it ended, not yet waited for)."""
    try:
        status = Path(f"/proc/{pid}/status").read_bytes()
    except OSError:
        return b"zombie"
    return next((line for line in status.splitlines() if line.startswith(b"State:")), b"")


@pytest.mark.parametrize("seed", SEEDS)
async def test_eval_run_killed_at_random_points(
    judge: FakeOpenAI, tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    workspace = tmp_path / "ws"
    store = Store.open(workspace)
    items = [ItemDraft(f"kill nine eval {seed} request {i}", "git status") for i in range(N)]
    dataset = store.create_dataset("d", items=items)
    run_id = store.add_finished_run(
        [
            (item.id, {"output": f"git status # {item.id}", "status": "done"})
            for item in store.items(dataset)
        ],
        dataset_id=dataset,
        model="student-model",
        role="student",
    )
    eval_id = create_eval(store, "judged", [JUDGE])
    eval_run_id = start_eval_run(store, eval_id, run_id)
    completion_ids = sorted(r.id for r in store.completions(run_id))
    store.close()

    def graded(s: Store) -> int:
        return len(s.graded_keys(eval_run_id))

    def graded_rows(s: Store) -> dict[int, tuple[Any, ...]]:
        rows = s.query(
            "SELECT completion_id, grader, score, passed, detail FROM grades WHERE eval_run_id = ?",
            (eval_run_id,),
        )
        return {r[0]: tuple(r) for r in rows}

    before: dict[int, tuple[Any, ...]] = {}
    for kill in range(KILLS):
        low = len(before) + 2
        at = rng.randint(low, low + (N - low) // 3)
        seen = kill_at_random_point(GRADE, workspace, judge, eval_run_id, graded, at, rng)
        assert seen < N, f"kill {kill + 1} came after grading finished: nothing was tested"
        looking = Store.open(workspace, read_only=True)
        before = graded_rows(looking)
        looking.close()
    asked_before = len(judge.chat_requests)
    assert len(before) < N

    store = Store.open(workspace)  # the dead children's claim on the eval run is released
    try:
        async with client(judge) as c:
            runner = EvalRunner(store, c, judge_model="judge-model", concurrency=CONCURRENCY)
            await runner.run(eval_run_id)
        after = graded_rows(store)
        n_rows = store.query("SELECT COUNT(*) FROM grades WHERE eval_run_id = ?", (eval_run_id,))[
            0
        ][0]
    finally:
        store.close()
    # Nothing lost: every completion graded, once; what was graded before is kept as it was.
    assert sorted(after) == completion_ids and n_rows == N
    assert {cid: after[cid] for cid in before} == before
    assert all(row[3] == 1 for row in after.values())  # the judge's "pass", read back
    # Nothing paid twice: the resume asked the judge only about what had no grade.
    resumed = judge.chat_requests[asked_before:]
    assert len(resumed) == N - len(before)
    # Overall, only the requests in flight at a kill were sent again.
    assert len(judge.chat_requests) - N <= CONCURRENCY * KILLS
