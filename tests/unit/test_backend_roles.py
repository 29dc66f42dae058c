"""A backend per role: a strong teacher on one backend (here the fake OpenAI server, as a GPU
box or OpenAI would be), the student fine-tuned on and served by the embedded local backend.
Settings name each role's backend (environment, .env, TOML, the recipe config); keys go only
to the server they were given for and are never saved; the recipe sends the teacher's
requests to the teacher's backend and keeps the training file, the job and the fine-tuned
model on the student's."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.fake_openai import FakeOpenAI
from tests.helpers.tiny_model import build_tiny_gguf
from tests.local.server_harness import client as local_client
from tests.local.server_harness import start_thread_server
from tui import run_command
from tui.engine.backend import (
    BackendError,
    list_models_by_backend,
    open_backends,
    resolve_backend,
    resolve_role_backend,
)
from tui.engine.datasets import ItemDraft
from tui.engine.recipe import RecipeConfig, RecipeError, load_config
from tui.engine.settings import (
    LOCAL_DEFAULT_MODEL,
    ROLES,
    Settings,
    load_settings,
    save_settings,
)
from tui.engine.store import Store

# -- settings per role -------------------------------------------------------------------------


def test_with_nothing_configured_every_role_uses_the_default_backend(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s = load_settings()
    assert [s.backend_owner(r) for r in ROLES] == [None, None, None]
    assert all(resolve_role_backend(s, r) == resolve_backend(s) for r in ROLES)
    assert s.teacher == s.student == LOCAL_DEFAULT_MODEL
    monkeypatch.setenv("OPENAI_API_KEY", "sk-shared")
    s = load_settings()
    assert {resolve_role_backend(s, r).kind for r in ROLES} == {"openai"}
    assert (s.teacher, s.student) == ("gpt-4o", "gpt-4o-mini")


def test_each_role_names_its_backend_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISTILL_TEACHER_BACKEND", "url")
    monkeypatch.setenv("DISTILL_TEACHER_BASE_URL", "http://gpu-box:8000/v1/")
    monkeypatch.setenv("DISTILL_TEACHER_API_KEY", "sk-teacher-secret")
    monkeypatch.setenv("DISTILL_TEACHER_MODEL", "llama-3.3-70b")
    monkeypatch.setenv("DISTILL_STUDENT_BACKEND", "local")
    s = load_settings()
    teacher = resolve_role_backend(s, "teacher")
    assert (teacher.kind, teacher.base_url, teacher.label) == (
        "url",
        "http://gpu-box:8000/v1",
        "gpu-box:8000",
    )
    assert teacher.api_key is not None and teacher.api_key.get_secret_value() == "sk-teacher-secret"
    assert resolve_role_backend(s, "student").kind == "local"
    assert s.student == LOCAL_DEFAULT_MODEL
    # A judge with no model or backend of its own is the teacher, where the teacher is.
    assert s.judge == "llama-3.3-70b"
    assert resolve_role_backend(s, "judge") == teacher
    assert "sk-teacher-secret" not in repr(s) and "sk-teacher-secret" not in str(s.model_dump())


def test_a_strong_teacher_on_openai_and_a_student_you_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-shared")
    monkeypatch.setenv("DISTILL_STUDENT_BACKEND", "local")
    s = load_settings()
    assert [s.backend_kind(r) for r in ROLES] == ["openai", "local", "openai"]
    assert (s.teacher, s.student, s.judge) == ("gpt-4o", LOCAL_DEFAULT_MODEL, "gpt-4o")
    # The local student is not sent the OpenAI key.
    assert resolve_role_backend(s, "student").api_key is None


def test_a_role_falls_back_to_the_default_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISTILL_BASE_URL", "http://vllm:8000/v1")
    monkeypatch.setenv("DISTILL_TEACHER_BASE_URL", "http://gpu-box:8000/v1")  # a URL: auto → url
    monkeypatch.setenv("DISTILL_JUDGE_MODEL", "judge-7b")  # a model of its own: default backend
    s = load_settings()
    assert resolve_role_backend(s, "teacher").base_url == "http://gpu-box:8000/v1"
    default = resolve_backend(s)
    assert resolve_role_backend(s, "student") == default
    assert resolve_role_backend(s, "judge") == default
    # "default" means the default backend, whatever else the role has.
    monkeypatch.setenv("DISTILL_TEACHER_BACKEND", "default")
    assert resolve_role_backend(load_settings(), "teacher") == default


def test_keys_go_only_to_the_server_they_were_given_for(monkeypatch: pytest.MonkeyPatch) -> None:
    # OPENAI_API_KEY is not sent to the teacher's GPU box...
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    monkeypatch.setenv("DISTILL_TEACHER_BASE_URL", "http://gpu-box:8000/v1")
    assert resolve_role_backend(load_settings(), "teacher").api_key is None
    # ...and a URL's key is not sent to OpenAI: a role on OpenAI then needs its own.
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("DISTILL_TEACHER_BASE_URL")
    monkeypatch.setenv("DISTILL_BASE_URL", "http://vllm:8000/v1")
    monkeypatch.setenv("DISTILL_API_KEY", "vllm-token")
    monkeypatch.setenv("DISTILL_TEACHER_BACKEND", "openai")
    with pytest.raises(BackendError, match="DISTILL_TEACHER_API_KEY"):
        resolve_role_backend(load_settings(), "teacher")
    monkeypatch.setenv("DISTILL_TEACHER_API_KEY", "sk-teacher")
    teacher = resolve_role_backend(load_settings(), "teacher")
    assert (teacher.kind, teacher.base_url) == ("openai", None)  # api.openai.com
    assert teacher.api_key is not None and teacher.api_key.get_secret_value() == "sk-teacher"
    monkeypatch.setenv("DISTILL_STUDENT_BACKEND", "url")
    with pytest.raises(BackendError, match="DISTILL_STUDENT_BASE_URL"):
        resolve_role_backend(load_settings(), "student")


def test_a_role_prices_the_models_on_its_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISTILL_TEACHER_PRICES", '{"llama-3.3-70b": {"input": 0.6, "output": 0.8}}')
    monkeypatch.setenv("DISTILL_STUDENT_PRICES", '{"gpt-4o-mini": {"input": 0.0, "output": 0.0}}')
    s = load_settings()
    assert s.price("llama-3.3-70b", "teacher").output == 0.8
    assert s.price("llama-3.3-70b").output == 0  # unknown to the shared table
    # A student served on the user's own box costs what they say, its fine-tuned models too;
    # the same name elsewhere keeps OpenAI's rates.
    assert s.price("gpt-4o-mini-2024-07-18", "student").output == 0
    assert s.price("ft:gpt-4o-mini-2024-07-18:local:git:1", "student").output == 0
    assert s.price("gpt-4o-mini", "teacher").output == s.prices["gpt-4o-mini"].output > 0


def test_save_keeps_each_roles_backend_and_never_its_key(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for role in ("TEACHER", "STUDENT", "JUDGE"):
        monkeypatch.setenv(f"DISTILL_{role}_API_KEY", f"sk-{role.lower()}-very-secret")
    monkeypatch.setenv("DISTILL_TEACHER_BACKEND", "url")
    monkeypatch.setenv("DISTILL_TEACHER_BASE_URL", "http://gpu-box:8000/v1")
    monkeypatch.setenv("DISTILL_STUDENT_BACKEND", "local")
    s = load_settings(teacher_prices={"llama": {"input": 1, "output": 2}})
    path = save_settings(s)
    text = path.read_text()
    assert "secret" not in text and "api_key" not in text
    data = tomllib.loads(text)
    assert (data["teacher_backend"], data["teacher_base_url"]) == ("url", "http://gpu-box:8000/v1")
    assert data["teacher_prices"]["llama"]["output"] == 2
    for name in ("TEACHER_API_KEY", "STUDENT_API_KEY", "JUDGE_API_KEY", "TEACHER_BACKEND"):
        monkeypatch.delenv(f"DISTILL_{name}")
    monkeypatch.delenv("DISTILL_TEACHER_BASE_URL")
    monkeypatch.delenv("DISTILL_STUDENT_BACKEND")
    reloaded = load_settings()  # from the file alone
    assert [reloaded.backend_kind(r) for r in ROLES] == ["url", "local", "url"]
    assert reloaded.teacher_api_key is None and reloaded.student_api_key is None


def test_the_recipe_config_names_backends(isolated_env: Path) -> None:
    config = RecipeConfig(teacher_backend="http://gpu-box:8000/v1/", student_backend="local")
    s = config.backend_settings(Settings(api_key="sk-shared"))  # type: ignore[arg-type]
    assert (s.backend_kind("teacher"), s.teacher_base_url) == ("url", "http://gpu-box:8000/v1")
    assert s.backend_kind("student") == "local"
    assert s.backend_kind("judge") == "url"  # the judge is the teacher
    assert RecipeConfig().backend_settings(s) is s  # naming none changes nothing
    path = isolated_env / "recipe.toml"
    path.write_text('[recipe]\nteacher_backend = "gpu-box"\n')
    with pytest.raises(RecipeError, match=r"teacher_backend: .*http"):
        load_config(path)


# -- open backends, list their models ----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gguf(tmp_path_factory.mktemp("roles") / "tiny-roles.gguf")


async def test_one_client_per_backend_and_the_models_grouped(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    with FakeOpenAI() as fake:
        settings = Settings(
            workspace=tmp_path / "ws",
            local_models=[tiny_gguf],
            teacher_backend="url",
            teacher_base_url=fake.base_url,
            teacher_api_key=fake.api_key,  # type: ignore[arg-type]
            judge_backend="local",
        )
        backends = await open_backends(settings)
        try:
            # The student and the judge share the one local server and its client.
            assert backends.student is backends.judge
            assert backends.teacher is not backends.student
            assert [b.spec.kind for b in backends.distinct] == ["url", "local"]
            server = backends.student.server
            assert server is not None and server.pid is not None
            assert backends.label.startswith(f"teacher: url · {fake.base_url} | student, judge:")
            groups = await list_models_by_backend(backends)
        finally:
            await backends.aclose()
        assert server.pid is None  # stopped with the rest
    assert [(g.roles, g.error) for g in groups] == [
        (("teacher",), None),
        (("student", "judge"), None),
    ]
    assert groups[0].models == ("fake-model", "gpt-4o", "gpt-4o-mini")
    assert {LOCAL_DEFAULT_MODEL, "tiny-roles"} <= set(groups[1].models)
    assert groups[1].label.startswith("local · 127.0.0.1:")
    # The fake server saw the teacher's key (it answers 401 to any other).
    assert [r.path for r in fake.requests] == ["/v1/models"]


async def test_a_backend_that_does_not_answer_still_leaves_the_others_listed() -> None:
    with FakeOpenAI() as fake:
        settings = Settings(
            base_url=fake.base_url,
            api_key=fake.api_key,  # type: ignore[arg-type]
            student_base_url="http://127.0.0.1:9/v1",  # nothing listens there
        )
        async with await open_backends(settings) as backends:
            assert backends.teacher is backends.judge  # both on the default backend
            groups = await list_models_by_backend(backends)
    assert [g.roles for g in groups] == [("teacher", "judge"), ("student",)]
    assert "gpt-4o" in groups[0].models and groups[0].error is None
    assert groups[1].models == () and "connection error" in (groups[1].error or "")


# -- the whole recipe: the teacher on the fake server, the student on the local backend ---------


def git_items(n: int = 40) -> list[ItemDraft]:
    return [
        ItemDraft(f"Create a new branch called 'topic-{i}'.", f"git branch topic-{i}")
        for i in range(n)
    ]


def knowing_teacher(messages: Sequence[dict[str, Any]]) -> str:
    """A teacher that knows the answers: what a strong model on a GPU box would say."""
    request = str(messages[-1]["content"])
    match = re.search(r"called '([^']+)'", request)
    return f"git branch {match.group(1)}" if match else "git status"


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Store]:
    store = Store.open(tmp_path / "ws")
    ds = store.create_dataset("tiny-git", "Reply with a git command.", git_items())
    store.random_split(ds, 0.25, seed=3)
    yield store
    store.close()


def test_distill_run_with_the_teacher_on_one_backend_and_the_student_on_the_local_one(
    workspace: Store, tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = workspace
    with FakeOpenAI(reply=knowing_teacher) as fake:
        # The key from the environment; the backend from the recipe config; the teacher's
        # own prices (not OpenAI's list price for a model called gpt-4o).
        monkeypatch.setenv("DISTILL_TEACHER_API_KEY", fake.api_key)
        monkeypatch.setenv("DISTILL_TEACHER_PRICES", '{"gpt-4o": {"input": 1000, "output": 2000}}')
        settings = load_settings(workspace=store.directory, local_models=[tiny_gguf])
        config = tmp_path / "recipe.toml"
        config.write_text(
            "[recipe]\n"
            'dataset = "tiny-git"\n'
            'student_model = "tiny-roles"\n'
            'teacher_model = "gpt-4o"\n'
            f'teacher_backend = "{fake.base_url}"\n'
            "max_tokens = 6\n"
            "temperature = 1.0\n"  # the tiny random model's greedy reply is blank
            "concurrency = 4\n"
            "[recipe.finetune]\n"
            "n_epochs = 1\n"
            "batch_size = 4\n",
            encoding="utf-8",
        )
        args = argparse.Namespace(config=config, yes=True)
        assert run_command.run(args, settings, store) == 0
        requests, fake_url = list(fake.requests), fake.base_url

    # The teacher's requests reached the fake server, and only the teacher's: one chat per
    # train item it labelled and per eval item it answered; no file, no job there.
    state = json.loads((store.directory / "recipe-state.json").read_text())
    teacher_runs = [store.get_run(state["runs"][k]) for k in ("round-1/teacher", "teacher")]
    chats = [r for r in requests if r.path == "/v1/chat/completions"]
    assert {r.body["model"] for r in chats} == {"gpt-4o"}
    assert len(chats) == sum(run.n_done for run in teacher_runs) == 40
    assert {r.path for r in requests} <= {"/v1/chat/completions", "/v1/models/gpt-4o"}

    # The training file, the job and the fine-tuned model live on the local backend: a local
    # server started again on the same workspace still has them.
    (job,) = store.list_jobs()
    assert job.status == "succeeded" and job.base_model == "tiny-roles"
    assert job.base_url.startswith("http://127.0.0.1:") and job.base_url != fake_url
    fine_tuned = job.fine_tuned_model or ""
    assert fine_tuned.startswith("ft:tiny-roles:local:")
    local = start_thread_server(store.directory, [tiny_gguf])
    try:
        remote = _on_local(local.url, job.remote_id, job.training_file or "", fine_tuned)
    finally:
        local.stop()
    assert remote["job"] == ("succeeded", fine_tuned)
    assert remote["training_file"] == "fine-tune"
    assert remote["model"] == fine_tuned
    assert remote["stored"]["gpt-4o"] == 0  # none of the teacher's requests went there
    assert remote["stored"]["tiny-roles"] > 0  # the student's baseline did

    # The report: the teacher beside the untuned and the fine-tuned student, priced at the
    # teacher's own rates.
    report = json.loads((store.directory / "reports" / "recipe.json").read_text())
    rows = {row["run"]: row for row in report["rows"]}
    assert list(rows) == ["teacher", "baseline student", "fine-tuned student"]
    assert (rows["teacher"]["model"], rows["fine-tuned student"]["model"]) == (
        "gpt-4o",
        fine_tuned,
    )
    assert rows["teacher"]["exact match"].startswith("100.0%")
    assert report["backends"] == {"teacher": "url", "student": "local"}
    on_eval = store.completions(state["runs"]["teacher"])
    tokens = [(c.prompt_tokens or 0, c.completion_tokens or 0) for c in on_eval]
    dollars = sum(p * 1000 + c * 2000 for p, c in tokens) / 1e6
    assert rows["teacher"]["cost / 1k requests"] == f"${dollars / len(on_eval) * 1000:.2f}"


def _on_local(url: str, job_id: str, file_id: str, model: str) -> dict[str, Any]:
    """What the local backend at `url` has: the job, the training file, the model, and how
    many stored completions of each model."""

    async def ask() -> dict[str, Any]:
        async with local_client(url) as c:
            job = await c.fine_tuning.jobs.retrieve(job_id)
            training_file = await c.files.retrieve(file_id)
            served = await c.models.retrieve(model)
            stored = {
                name: len((await c.chat.completions.list(model=name, limit=100)).data)
                for name in ("gpt-4o", "tiny-roles")
            }
        return {
            "job": (job.status, job.fine_tuned_model),
            "training_file": training_file.purpose,
            "model": served.id,
            "stored": stored,
        }

    return asyncio.run(ask())
