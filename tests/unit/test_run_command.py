"""`distill-tui run` as a user runs it: the installed command, in its own process, against a
paid backend (the fake server behaving as OpenAI, with OpenAI's prices). Before the first
paid request it prints the estimate and asks; "no" spends nothing, "yes" runs the recipe, and
without a terminal to ask on it refuses unless given --yes."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers.fake_openai import FakeOpenAI, like_openai
from tui.engine.datasets import ItemDraft
from tui.engine.store import Store

COMMAND = Path(sys.executable).parent / "distill-tui"
PROMPT = b"Go ahead? [y/N] "


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with like_openai(tokens_per_reply=3, job_seconds=0.3) as server:
        yield server


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    store = Store.open(ws)
    items = [
        ItemDraft(f"Create a new branch called 'topic-{i}'.", f"git branch topic-{i}")
        for i in range(20)
    ]
    dataset = store.create_dataset("tiny-git", "Reply with a git command.", items)
    store.random_split(dataset, 0.25, seed=3)
    store.close()  # the command is the workspace's one writer
    return ws


def command_env(fake: FakeOpenAI, workspace: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DISTILL_BACKEND="openai",  # OpenAI's rules and prices, at the fake's address
        DISTILL_BASE_URL=fake.base_url,
        OPENAI_API_KEY=fake.api_key,
        DISTILL_WORKSPACE=str(workspace),
    )
    return env


def config(tmp_path: Path) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text('[recipe]\ndataset = "tiny-git"\nmax_tokens = 8\nconcurrency = 4\n')
    return path


def paid_requests(fake: FakeOpenAI) -> list[str]:
    """Requests that cost money or leave something behind: chats, uploads, jobs."""
    return [
        f"{r.method} {r.path}"
        for r in fake.requests
        if r.path.startswith(("/v1/chat", "/v1/files")) or r.method == "POST"
    ]


def run_answering(args: list[str], env: dict[str, str], answer: bytes) -> tuple[int, str]:
    """Run the command with a terminal as its input; answer its question when it asks."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [str(COMMAND), *args],
        stdin=terminal,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    os.close(terminal)
    assert proc.stdout is not None
    out = b""
    asked = False
    deadline = time.monotonic() + 300
    try:
        while True:
            assert time.monotonic() < deadline, out.decode(errors="replace")
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                out += chunk
            if not asked and out.endswith(PROMPT):
                os.write(controller, answer + b"\n")
                asked = True
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(controller)
    assert asked, out.decode(errors="replace")
    return code, out.decode(errors="replace")


def run_without_terminal(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run the command with no terminal to ask on: its exit code and its output, the lines
    the console wrapped to its width joined again (one space between words)."""
    result = subprocess.run(
        [str(COMMAND), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    return result.returncode, " ".join((result.stdout + result.stderr).split())


def test_no_at_the_prompt_spends_nothing(fake: FakeOpenAI, workspace: Path) -> None:
    # Without --config the workspace's own recipe.toml is the config (the Recipe view's too).
    config(workspace)
    code, out = run_answering(["run"], command_env(fake, workspace), b"n")
    assert code == 1, out
    assert "student: 5 requests" in out  # tiny-git's eval split, not the shipped dataset's
    assert "Estimated generation cost ≈ $" in out
    assert "Nothing was spent." in out
    assert paid_requests(fake) == []
    assert not (workspace / "reports").exists()


def test_yes_at_the_prompt_runs_the_recipe(
    fake: FakeOpenAI, workspace: Path, tmp_path: Path
) -> None:
    code, out = run_answering(
        ["run", "--config", str(config(tmp_path))], command_env(fake, workspace), b"y"
    )
    assert code == 0, out
    assert "Report written to" in out
    paid = paid_requests(fake)
    assert "POST /v1/chat/completions" in paid and "POST /v1/fine_tuning/jobs" in paid
    assert (workspace / "reports" / "recipe.json").exists()
    # The key went to the backend and nowhere into the workspace.
    assert all(r.headers["authorization"] == f"Bearer {fake.api_key}" for r in fake.requests)
    for path in workspace.rglob("*"):
        if path.is_file():
            assert fake.api_key.encode() not in path.read_bytes(), path


def test_without_a_terminal_it_refuses_unless_told_yes(
    fake: FakeOpenAI, workspace: Path, tmp_path: Path
) -> None:
    code, said = run_without_terminal(
        ["run", "--config", str(config(tmp_path))], command_env(fake, workspace)
    )
    assert code == 1, said
    assert "add --yes to spend money without asking" in said
    assert paid_requests(fake) == []


def test_a_recipe_that_cannot_start_says_why_and_offers_no_resume(
    fake: FakeOpenAI, workspace: Path
) -> None:
    (workspace / "recipe.toml").write_text('[recipe]\ndataset = "nope"\n')
    code, said = run_without_terminal(["run", "--yes"], command_env(fake, workspace))
    assert code == 1, said
    assert "no dataset named 'nope' in the workspace (there are: tiny-git)" in said
    assert "resumes" not in said  # nothing ran: nothing to resume
    assert paid_requests(fake) == []
    # A recipe with a step behind it is told how to go on once its problem is fixed.
    (workspace / "recipe.toml").write_text('[recipe]\ndataset = "tiny-git"\nmax_tokens = 8\n')
    state = {"version": 2, "finished": ["baseline"], "config": {"max_tokens": 9}}
    (workspace / "recipe-state.json").write_text(json.dumps(state))
    code, said = run_without_terminal(["run", "--yes"], command_env(fake, workspace))
    assert code == 1, said
    assert "max_tokens: 9 then, 8 now" in said
    assert "Once that is fixed, the same command resumes" in said
    assert paid_requests(fake) == []


def interrupt_run(
    tmp_path: Path, env: dict[str, str], ready: Callable[[], bool], timeout: float
) -> tuple[int, str]:
    """`distill-tui run --yes` until `ready()`, then ctrl+c: its exit code and what it said on
    stderr, the lines the console wrapped joined again."""
    proc = subprocess.Popen(
        [str(COMMAND), "run", "--yes", "--config", str(config(tmp_path))],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, " ".join(err.decode().split())


def test_ctrl_c_while_a_job_trains_names_the_job_it_leaves_training(
    workspace: Path, tmp_path: Path
) -> None:
    """The job goes on (on OpenAI, billed): the interrupt says which one and where, and a
    resumed run waits for that job rather than paying for a second."""
    with like_openai(tokens_per_reply=3, job_seconds=120) as fake:
        # A job created is recorded before the recipe stops.
        code, said = interrupt_run(
            tmp_path,
            command_env(fake, workspace),
            lambda: "POST /v1/fine_tuning/jobs" in paid_requests(fake),
            timeout=120,
        )
        assert code == 130, said
        store = Store.open(workspace)
        (job,) = store.list_jobs()
        store.close()
        assert not job.finished
        assert f"Its fine-tuning job {job.remote_id} trains on at {fake.base_url}" in said
        assert "Fine-tune screen (key 5) cancels it" in said
        assert fake.app.jobs[job.remote_id].data["status"] != "cancelled"


@pytest.mark.slow
def test_ctrl_c_on_the_embedded_backend_says_its_job_ends_with_the_server(
    workspace: Path, tmp_path: Path
) -> None:
    """On the embedded backend (no backend set: the default) a job the interrupt leaves does
    not train on: it ends with the local server, which stops with the command. The message
    says so, and that the same command trains again."""
    env = dict(os.environ, DISTILL_WORKSPACE=str(workspace))
    env.pop("DISTILL_BACKEND", None)
    state = workspace / "recipe-state.json"

    def jobs() -> dict[str, int]:
        try:
            return dict(json.loads(state.read_text())["jobs"])
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            return {}

    code, said = interrupt_run(tmp_path, env, lambda: bool(jobs()), timeout=240)
    assert code == 130, said
    store = Store.open(workspace)
    (job,) = store.list_jobs()
    store.close()
    assert f"Its fine-tuning job {job.remote_id} ends with the embedded backend's server" in said
    assert "the same command trains again" in said
    assert "trains on at" not in said
