"""One writer per workspace (issue 14, must fix 1), with real processes.

Two `distill-tui run` started at the same moment on one workspace used to both generate every
item: twice the requests, every completion's attempt count 2, two eval runs of one baseline.
Now the workspace has an OS lock: the second process is told who holds it and exits 2 (the
TUI opens it read-only instead and says so), a holder killed with -9 leaves no lock and no
claim behind, and claiming an item is atomic, so no interleaving sends a request twice."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.helpers.fake_openai import OPENAI_MODELS, FakeOpenAI
from tests.helpers.processes import child_env, wait_for
from tui import cli
from tui.engine.datasets import ItemDraft
from tui.engine.evals import EvalRunner, create_eval, start_eval_run
from tui.engine.generation import Generator, RunSpec, create_run
from tui.engine.store import LOCK_NAME, Store, StoreError, WorkspaceBusy

BUSY = re.compile(
    r"the workspace is in use by (?P<command>[^,]+), pid (?P<pid>\d+), since "
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d; open it read-only or wait"
)


def _items(n: int) -> list[ItemDraft]:
    return [
        ItemDraft(f"Create a new branch called 'race-{i}'.", f"git branch race-{i}")
        for i in range(n)
    ]


class _GatedChat:
    """The fake server's app, with chat requests held until `open` is set: the first writer
    cannot finish before the second has tried to open the workspace. Attribute reads go to
    the wrapped app, so the FakeOpenAI's records still work."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.open = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].endswith("/chat/completions"):
            while not self.open.is_set():
                await asyncio.sleep(0.01)
        await self.inner(scope, receive, send)


@pytest.fixture
def gated_fake() -> Iterator[tuple[FakeOpenAI, _GatedChat]]:
    fake = FakeOpenAI(models=OPENAI_MODELS, fine_tuning=True, job_seconds=0.2)
    gate = _GatedChat(fake.app)
    fake.app = gate  # type: ignore[assignment]
    with fake:
        yield fake, gate
    gate.open.set()


def test_two_runs_at_the_same_moment_one_refuses_and_no_request_is_sent_twice(
    tmp_path: Path, gated_fake: tuple[FakeOpenAI, _GatedChat]
) -> None:
    fake, gate = gated_fake
    ws = tmp_path / "ws"
    store = Store.open(ws)
    ds = store.create_dataset("race", "Reply with a git command.", _items(30))
    store.random_split(ds, 0.25, seed=3)
    store.close()
    config = tmp_path / "recipe.toml"
    config.write_text(
        '[recipe]\ndataset = "race"\nstudent_model = "gpt-4o-mini-2024-07-18"\n'
        'teacher_model = "gpt-4o"\nmax_tokens = 16\nconcurrency = 4\n'
        "[recipe.finetune]\nn_epochs = 1\n",
        encoding="utf-8",
    )
    env = child_env() | {"DISTILL_BASE_URL": fake.base_url, "DISTILL_API_KEY": fake.api_key}
    command = [sys.executable, "-m", "tui.cli", "--workspace", str(ws), "run", "--yes"]
    command += ["--config", str(config)]
    procs = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    try:
        # Whichever loses the race for the workspace exits while the winner's requests are
        # held at the server: the two overlap however the machine schedules them.
        wait_for(lambda: any(p.poll() is not None for p in procs), 180, "one run to exit")
        loser = next(p for p in procs if p.poll() is not None)
        winner = next(p for p in procs if p is not loser)
        _, err = loser.communicate(timeout=30)
        assert loser.returncode == 2, err.decode()
        refusal = BUSY.search(err.decode())
        assert refusal is not None, err.decode()
        assert refusal["command"] == "distill-tui run"
        assert int(refusal["pid"]) == winner.pid
        assert winner.poll() is None  # still holding, its requests still held
        gate.open.set()
        out, err = winner.communicate(timeout=600)
        assert winner.returncode == 0, (out + err).decode()[-3000:]
    finally:
        gate.open.set()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    # One run's worth of requests: every completion asked for once, one eval run per run.
    store = Store.open(ws)
    try:
        completions = store.query("SELECT status, attempts FROM completions")
        assert completions and {tuple(r) for r in completions} == {("done", 1)}
        chats = Counter((r.body["model"], r.key) for r in fake.chat_requests)
        assert chats and max(chats.values()) == 1, chats.most_common(3)
        assert sum(chats.values()) == len(completions)
        eval_runs = store.query("SELECT eval_id, run_id FROM eval_runs")
        assert len(eval_runs) == len({tuple(r) for r in eval_runs})
        assert len(store.list_jobs()) == 1
    finally:
        store.close()


_HOLD = textwrap.dedent(
    """
    import sys
    from tui.engine.store import Store

    store = Store.open(sys.argv[1])
    for line in sys.argv[2:]:
        run_id, item_id = map(int, line.split(":"))
        assert store.claim_item(run_id, item_id)
    print("held", flush=True)
    sys.stdin.read()  # until the test closes our stdin (or kills us)
    """
)


def _holder(ws: Path, *claims: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(ws), *claims],
        env=child_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line != b"held\n":
        proc.kill()
        raise AssertionError(f"the holder did not start: {line!r}")
    return proc


def test_run_refuses_a_workspace_another_process_holds(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    Store.open(ws).close()
    holder = _holder(ws)
    try:
        before = (ws / "distill.db").read_bytes()
        r = subprocess.run(
            [sys.executable, "-m", "tui.cli", "--workspace", str(ws), "run", "--yes"],
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 2, r.stderr
        refusal = BUSY.search(r.stderr)
        assert refusal is not None and int(refusal["pid"]) == holder.pid, r.stderr
        assert r.stderr.startswith(f"distill-tui run: {ws}: the workspace is in use by ")
        assert (ws / "distill.db").read_bytes() == before
    finally:
        holder.kill()
        holder.wait()


async def test_the_tui_opens_a_busy_workspace_read_only_and_says_so(tmp_path: Path) -> None:
    from textual.content import Content
    from textual.message import Message
    from textual.notifications import Notify

    from tui.app import DistillApp
    from tui.widgets.status_line import StatusLine

    ws = tmp_path / "ws"
    store = Store.open(ws)
    store.create_dataset("kept", "", _items(3))
    store.close()
    holder = _holder(ws)
    try:
        opened = cli._open(ws, "tui")
        assert not isinstance(opened, int)
        settings, store = opened
        try:
            assert store.read_only
            with pytest.raises(StoreError, match="read-only"):
                store.create_dataset("new", "", _items(1))
            assert [d.name for d in store.list_datasets()] == ["kept"]  # it can look
            app = DistillApp(settings=settings, store=store, start_backend=False)
            posted: list[Message] = []
            async with app.run_test(size=(120, 40), message_hook=posted.append) as pilot:
                await pilot.pause()
                notes = [
                    (m.notification.severity, m.notification.message)
                    for m in posted
                    if isinstance(m, Notify)
                ]
                assert any(
                    severity == "warning"
                    and f"in use by distill-tui, pid {holder.pid}, since" in text
                    and "changes are refused" in text
                    for severity, text in notes
                ), notes
                rendered = app.screen.query_one(StatusLine).render()
                assert isinstance(rendered, str)
                assert Content.from_markup(rendered).plain.startswith(" READ-ONLY ")
        finally:
            store.close()
        # `run` is refused instead (exit code 2, the same message).
        assert cli._open(ws, "run") == 2
    finally:
        holder.kill()
        holder.wait()


def test_a_writable_window_has_no_read_only_flag(tmp_path: Path) -> None:
    opened = cli._open(tmp_path / "ws", "tui")
    assert not isinstance(opened, int)
    _, store = opened
    try:
        assert not store.read_only
    finally:
        store.close()


def test_a_killed_holder_leaves_no_lock_and_no_claim_behind(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    store = Store.open(ws)
    ds = store.create_dataset("d", "", _items(3))
    items = store.items(ds)
    run_id = create_run(store, RunSpec(dataset_id=ds, model="m"))
    store.save_completion(run_id, items[1].id, status="failed", error="503")
    store.close()
    holder = _holder(ws, f"{run_id}:{items[0].id}", f"{run_id}:{items[1].id}")
    try:
        with pytest.raises(WorkspaceBusy, match=f"pid {holder.pid}, since"):
            Store.open(ws)
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        store = Store.open(ws)  # the kernel released the lock with the process
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    try:
        rows = store.query("SELECT item_id, status, attempts FROM completions ORDER BY item_id")
        # The new claim is gone (never started, as far as anyone can tell); the failed item
        # it claimed again is cancelled, with the attempt it had.
        assert [tuple(r) for r in rows] == [(items[1].id, "cancelled", 1)]
        assert [i.id for i in store.pending_items(run_id)] == [i.id for i in items]
        assert (ws / LOCK_NAME).exists()  # left in place for the next holder
    finally:
        store.close()


_CLAIMER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from tui.engine.store import Store

    # Past the workspace lock on purpose: the claim itself must hold when two writers race.
    ws = Path(sys.argv[1])
    store = Store._open_locked(ws, ws / "distill.db")
    run_id, items = int(sys.argv[2]), json.loads(sys.argv[3])
    print("ready", flush=True)
    sys.stdin.readline()
    won = [i for i in items if store.claim_item(run_id, i)]
    print(json.dumps(won), flush=True)
    """
)


def test_claims_are_atomic_between_processes(tmp_path: Path) -> None:
    import json

    ws = tmp_path / "ws"
    store = Store.open(ws)
    ds = store.create_dataset("d", "", _items(200))
    run_id = create_run(store, RunSpec(dataset_id=ds, model="m"))
    ids = [i.id for i in store.items(ds)]
    store.close()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CLAIMER, str(ws), str(run_id), json.dumps(ids)],
            env=child_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline() == "ready\n"
        for p in procs:  # all at once
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        won = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    claims = Counter(i for w in won for i in w)
    assert set(claims) == set(ids) and set(claims.values()) == {1}


def test_two_generators_on_one_run_send_each_request_once(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "ws")
    ds = store.create_dataset("d", "", _items(40))
    run_id = create_run(store, RunSpec(dataset_id=ds, model="fake-model"))

    # The second on a connection of its own, as a run's process has (Store.open_for_run):
    # within one Store a second generator of a run going is refused (Store.generating).
    other = Store._open_locked(store.directory, store.path)

    async def both() -> None:
        with FakeOpenAI(token_delay=0.001, tokens_per_reply=5) as fake:
            client = openai.AsyncOpenAI(base_url=fake.base_url, api_key=fake.api_key)
            # Both list the same 40 pending items at the start: only the claims keep them
            # from sending the same requests.
            await asyncio.gather(
                Generator(store, client, concurrency=4).run(run_id),
                Generator(other, client, concurrency=4).run(run_id),
            )
            await client.close()
            counts = Counter(r.key for r in fake.chat_requests)
            assert len(counts) == 40 and set(counts.values()) == {1}, counts.most_common(3)

    try:
        asyncio.run(both())
        rows = store.query("SELECT status, attempts FROM completions WHERE run_id = ?", (run_id,))
        assert len(rows) == 40 and {tuple(r) for r in rows} == {("done", 1)}
    finally:
        other.close()
        store.close()


def test_an_eval_run_has_one_grader_at_a_time(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "ws")
    try:
        ds = store.create_dataset("d", "", _items(5))
        run_id = store.add_finished_run(
            [(i.id, {"output": i.reference, "status": "done"}) for i in store.items(ds)],
            dataset_id=ds,
            model="m",
        )
        grader = {
            "type": "string_check",
            "name": "exact",
            "operation": "eq",
            "input": "{{sample.output_text}}",
            "reference": "{{item.reference}}",
        }
        eval_run = start_eval_run(store, create_eval(store, "e", [grader]), run_id)
        assert store.claim_eval_run(eval_run)  # another grader is at it
        with pytest.raises(StoreError, match="being graded already"):
            asyncio.run(EvalRunner(store).run(eval_run))
        assert store.grades(eval_run) == []
        store.set_eval_run_status(eval_run, "cancelled", finished=True)  # it stopped
        finished = asyncio.run(EvalRunner(store).run(eval_run))
        assert finished.status == "done" and len(store.grades(eval_run)) == 5
    finally:
        store.close()
