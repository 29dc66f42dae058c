"""A backend per role, as the screens show it, driven with real keys: the Generate screen's
picker lists every backend's models under its label and roles and a run goes to the backend
its model was picked from (two fake OpenAI servers on 127.0.0.1, the teacher's and the
student's); the Settings screen saves each role's backend and base URL but never a key; the
Fine-tune screen shows the base a job will name and launches with it."""

from __future__ import annotations

import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from pydantic import SecretStr
from textual.widgets import Button, Input, OptionList, Select, Static

from screens.finetune import FineTuneScreen
from screens.generate import GenerateScreen
from screens.settings import SettingsScreen
from tests.helpers.fake_openai import FakeOpenAI
from tests.tui.conftest import SMALL_ITEMS, SMALL_NAME, SMALL_PROMPT, Db, Driver, drive, plain
from tui.app import DistillApp
from tui.engine.backend import Backend, BackendSpec
from tui.engine.datasets import ItemDraft
from tui.engine.runs import references_as_run
from tui.engine.settings import Price, config_path, load_settings
from tui.engine.store import Store

N_ITEMS = len(SMALL_ITEMS)
TEACHER_KEY = "sk-teacher-secret-0123456789"


@pytest.fixture
def two_servers() -> Iterator[tuple[FakeOpenAI, FakeOpenAI]]:
    """The teacher's server (a big model, as OpenAI or a GPU box would serve it) and the
    student's (a small one), each with its own key and its own models."""
    with (
        FakeOpenAI(api_key=TEACHER_KEY, models=("big-teacher", "gpt-4o")) as teacher,
        FakeOpenAI(api_key="sk-student-key", models=("small-student",)) as student,
    ):
        yield teacher, student


def picker_lines(screen: GenerateScreen) -> list[tuple[str, bool]]:
    """What the model picker's list shows: each line and whether it can be chosen."""
    overlay = screen.query_one("#models", Select).query_one(OptionList)
    return [
        (str(overlay.get_option_at_index(i).prompt), not overlay.get_option_at_index(i).disabled)
        for i in range(overlay.option_count)
    ]


async def pick(t: Driver, screen: GenerateScreen, model: str) -> None:
    """Open the model picker and walk down to `model` with the arrow keys, then enter."""
    await t.pilot.click("#models")
    overlay = screen.query_one("#models", Select).query_one(OptionList)
    for _ in range(overlay.option_count):
        highlighted = overlay.highlighted
        if (
            highlighted is not None
            and str(overlay.get_option_at_index(highlighted).prompt).strip() == model
        ):
            break
        await t.press("down")
    await t.press("enter")
    await t.settle()


async def test_picker_groups_models_by_backend_and_a_run_reaches_only_its_backend(
    store: Store, db: Db, two_servers: tuple[FakeOpenAI, FakeOpenAI]
) -> None:
    teacher, student = two_servers
    store.create_dataset(SMALL_NAME, SMALL_PROMPT, SMALL_ITEMS)
    settings = load_settings(
        workspace=store.directory,
        teacher_backend="openai",
        teacher_base_url=teacher.base_url,
        teacher_api_key=TEACHER_KEY,
        teacher_model="big-teacher",
        # The teacher's own price list: what its backend charges.
        teacher_prices={"big-teacher": Price(input=2000.0, output=2000.0)},
        student_backend="url",
        student_base_url=student.base_url,
        student_api_key=student.api_key,
        student_model="small-student",
    )
    # The app opens both backends itself, as at launch (neither is the local one).
    app = DistillApp(settings=settings, store=store)
    async with drive(app) as t:
        await t.press("2")
        await t.settle()
        screen = t.app.screen
        assert isinstance(screen, GenerateScreen)
        # One section per backend, titled with its roles and label; titles can't be chosen.
        assert picker_lines(screen) == [
            ("pick one of 3 models on 2 backends", True),
            (f"teacher, judge: openai · {teacher.base_url}", False),
            ("  big-teacher", True),
            ("  gpt-4o", True),
            (f"student: url · {student.base_url}", False),
            ("  small-student", True),
        ]

        # The teacher role, chosen with the keys; then its model, picked from its section.
        screen.query_one("#role", Select).focus()
        await t.press("enter", "down", "enter")
        await pick(t, screen, "big-teacher")
        assert screen.query_one("#model", Input).value == "big-teacher"
        # Priced at the teacher's backend's rates (the estimate waits for typing to pause).
        await t.wait_until(lambda: "≈$" in plain(screen.query_one("#estimate", Static)))

        await t.press("ctrl+s")
        await t.settle()
        assert not t.errors()
        assert len(teacher.chat_requests) == N_ITEMS
        assert student.chat_requests == []
        # Stored completions follow the backend's kind: the teacher's is OpenAI.
        assert all(r.store is True for r in teacher.chat_requests)
        assert {r.body["model"] for r in teacher.chat_requests} == {"big-teacher"}

        # A model picked from the student's section goes to the student's server, even for
        # a run in the teacher's role.
        await pick(t, screen, "small-student")
        await t.press("ctrl+s")
        await t.settle()
        assert not t.errors()
        assert len(teacher.chat_requests) == N_ITEMS  # nothing more to the teacher
        assert len(student.chat_requests) == N_ITEMS
        assert all(r.store is None for r in student.chat_requests)  # a URL backend: no store

    runs = db.rows("SELECT model, role, status FROM runs ORDER BY id")
    assert runs == [("big-teacher", "teacher", "done"), ("small-student", "teacher", "done")]


async def test_with_one_backend_the_picker_lists_its_models_without_sections(
    store: Store, two_servers: tuple[FakeOpenAI, FakeOpenAI]
) -> None:
    teacher, _ = two_servers
    store.create_dataset(SMALL_NAME, SMALL_PROMPT, SMALL_ITEMS)
    settings = load_settings(
        workspace=store.directory, base_url=teacher.base_url, api_key=TEACHER_KEY
    )
    app = DistillApp(settings=settings, store=store)  # every role on the one URL
    async with drive(app) as t:
        await t.press("2")
        await t.settle()
        screen = t.app.screen
        assert isinstance(screen, GenerateScreen)
        assert picker_lines(screen) == [
            ("pick one of 2 models", True),
            ("big-teacher", True),
            ("gpt-4o", True),
        ]


# -- settings --------------------------------------------------------------------------------


async def test_settings_save_each_roles_backend_and_never_a_key(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISTILL_TEACHER_API_KEY", TEACHER_KEY)
    app = DistillApp(
        settings=load_settings(workspace=store.directory), store=store, start_backend=False
    )
    async with drive(app) as t:
        await t.press("7")
        await t.settle()
        screen = t.app.screen
        assert isinstance(screen, SettingsScreen)
        # Whether each role has a key of its own, and where from; never the key.
        assert "set in DISTILL_TEACHER_API_KEY" in plain(screen.query_one("#teacher_api_key"))
        assert "not set" in plain(screen.query_one("#student_api_key"))
        shown = " ".join(plain(w) for w in screen.query(Static))
        assert TEACHER_KEY not in shown and TEACHER_KEY[-4:] not in shown

        # The teacher on a GPU box (url, 4 down from auto), the student on the local backend.
        screen.query_one("#teacher_backend", Select).focus()
        await t.press("enter", "down", "down", "down", "down", "enter")
        await t.pilot.click("#teacher_base_url")
        await t.type("gpu:8000")
        await t.press("ctrl+s")
        await t.settle()
        # A URL without its scheme is refused, and nothing is saved.
        assert "Not saved: teacher_base_url" in plain(screen.query_one("#settings-error"))
        assert not config_path().exists()

        await t.press("home")
        await t.type("http://")
        screen.query_one("#student_backend", Select).focus()
        await t.press("enter", "down", "down", "enter")
        await t.press("ctrl+s")
        await t.settle()
        assert plain(screen.query_one("#settings-error")) == ""

    text = config_path().read_text(encoding="utf-8")
    saved = tomllib.loads(text)
    assert saved["teacher_backend"] == "url"
    assert saved["teacher_base_url"] == "http://gpu:8000"
    assert saved["student_backend"] == "local"
    assert saved["judge_backend"] == "auto"
    assert TEACHER_KEY not in text and "api_key" not in text
    # The app runs on with them, the key still the environment's.
    settings = app.settings
    assert settings.backend_kind("teacher") == "url"
    assert settings.backend_kind("student") == "local"
    assert settings.teacher_api_key is not None
    assert settings.teacher_api_key.get_secret_value() == TEACHER_KEY
    # The next launch reads them back, the key from the environment only.
    again = load_settings()
    assert (again.teacher_backend, again.teacher_base_url) == ("url", "http://gpu:8000")
    assert again.student_backend == "local"


# -- fine-tuning -----------------------------------------------------------------------------


@pytest.fixture
def fine_tuning() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(fine_tuning=True, job_seconds=0.2) as server:
        yield server


def openai_backend(fake: FakeOpenAI) -> Backend:
    """The fake as the student's backend of kind openai (OpenAI's rules at its address)."""
    spec = BackendSpec("openai", fake.base_url, SecretStr(fake.api_key), "openai")
    client = openai.AsyncOpenAI(base_url=fake.base_url, api_key=fake.api_key, max_retries=0)
    return Backend(spec, client, "openai")


def job_requests(fake: FakeOpenAI) -> list[dict[str, object]]:
    return [
        r.body
        for r in fake.requests
        if r.method == "POST" and r.path.rstrip("/") == "/v1/fine_tuning/jobs"
    ]


async def test_fine_tune_shows_the_snapshot_and_launches_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fine_tuning: FakeOpenAI
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-test")
    store = Store.open(tmp_path / "ft-ws")
    items = [
        ItemDraft(f"Create a branch called topic-{i}", f"git branch topic-{i}", "train")
        for i in range(24)
    ]
    references_as_run(store, store.create_dataset("git", "One git command.", items))
    settings = load_settings(workspace=store.directory)
    assert settings.backend_kind("student") == "openai" and settings.student == "gpt-4o-mini"
    app = DistillApp(settings=settings, store=store, start_backend=False)
    app.backend = openai_backend(fine_tuning)
    async with drive(app, size=(140, 45)) as t:
        await t.press("5")
        await t.settle()
        screen = t.app.screen
        assert isinstance(screen, FineTuneScreen)
        base_line = screen.query_one("#ft-base", Static)
        assert "Fine-tunes gpt-4o-mini-2024-07-18" in plain(base_line)
        assert not screen.query_one("#launch", Button).disabled

        # A model OpenAI won't fine-tune: the reason, and no launch.
        await t.pilot.click("#base-model")
        await t.press("end", "ctrl+u")
        await t.type("fake-model")
        assert "'fake-model' cannot be fine-tuned on OpenAI" in plain(base_line)
        assert screen.query_one("#launch", Button).disabled
        t.app.set_focus(None)
        await t.press("L")
        await t.settle()
        assert job_requests(fine_tuning) == [] and store.list_jobs() == []

        await t.pilot.click("#base-model")
        await t.press("end", "ctrl+u")
        await t.type("gpt-4o-mini")
        assert "Fine-tunes gpt-4o-mini-2024-07-18" in plain(base_line)
        t.app.set_focus(None)
        await t.press("L")
        deadline = time.monotonic() + 30
        while not store.list_jobs() or not store.list_jobs()[0].finished:
            assert time.monotonic() < deadline, "the job did not finish"
            await t.pilot.pause(0.1)
        await t.settle()

    # The job named the snapshot, on the student's backend.
    assert [body["model"] for body in job_requests(fine_tuning)] == ["gpt-4o-mini-2024-07-18"]
    job = store.list_jobs()[0]
    assert job.base_model == "gpt-4o-mini-2024-07-18" and job.status == "succeeded"
    store.close()
