"""The seed's own flow on OpenAI, against the fake server behaving as OpenAI does (it refuses
fine-tuning on an alias, plays a job through OpenAI's statuses, names the model OpenAI's way):
the recipe resolves gpt-4o-mini to its snapshot and succeeds; what would fail later is refused
before any paid request; fine-tuned models are priced at their own rates."""

from __future__ import annotations

import openai
import pytest

from tests.helpers.fake_openai import OPENAI_MODELS, FakeOpenAI, like_openai
from tui.engine.datasets import ItemDraft
from tui.engine.evals import compare, create_eval
from tui.engine.finetune import FineTuneError, Source, build_training_set, launch_job
from tui.engine.preflight import NotFineTunable, fine_tune_base
from tui.engine.recipe import Recipe, RecipeConfig, RecipeError
from tui.engine.settings import Settings
from tui.engine.store import Store


def git_dataset(store: Store, n: int = 20, eval_fraction: float = 0.25) -> int:
    items = [
        ItemDraft(f"Create a new branch called 'topic-{i}'.", f"git branch topic-{i}")
        for i in range(n)
    ]
    ds = store.create_dataset("tiny-git", "Reply with a git command.", items)
    store.random_split(ds, eval_fraction, seed=3)
    return ds


def openai_settings(fake: FakeOpenAI, **kw: object) -> Settings:
    # Backend kind "openai" with a URL: OpenAI's rules, the fake's address.
    return Settings(backend="openai", base_url=fake.base_url, api_key=fake.api_key, **kw)  # type: ignore[arg-type]


def client(fake: FakeOpenAI) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=fake.base_url, api_key=fake.api_key, max_retries=0)


def paid_requests(fake: FakeOpenAI) -> list[str]:
    """Requests that cost money or leave something behind: chats, uploads, jobs."""
    return [
        f"{r.method} {r.path}"
        for r in fake.requests
        if r.path.startswith(("/v1/chat", "/v1/files")) or r.method == "POST"
    ]


CONFIG = RecipeConfig(dataset="tiny-git", max_tokens=8, concurrency=4)


async def test_the_recipe_on_openai_resolves_the_snapshot_and_succeeds(store: Store) -> None:
    git_dataset(store)
    with like_openai(tokens_per_reply=3, job_seconds=0.3) as fake:
        settings = openai_settings(fake)
        assert settings.student == "gpt-4o-mini"
        async with client(fake) as c:
            recipe = Recipe(store, c, settings, CONFIG, backend_kind="openai")
            assert recipe.student == "gpt-4o-mini-2024-07-18"  # shown before launch
            report = await recipe.run()
        requests = fake.requests
    # The job named the snapshot, and the baseline ran on it, so the comparison is fair.
    created = [r.body for r in requests if r.path == "/v1/fine_tuning/jobs" and r.method == "POST"]
    assert [body["model"] for body in created] == ["gpt-4o-mini-2024-07-18"]
    (job,) = store.list_jobs()
    assert (job.base_model, job.status) == ("gpt-4o-mini-2024-07-18", "succeeded")
    runs = store.list_runs()
    students = [r for r in runs if r.role == "student"]
    assert students and all(r.model == "gpt-4o-mini-2024-07-18" for r in students)
    assert report["models"]["student"] == "gpt-4o-mini-2024-07-18"
    # A teacher that is not the student labels every train request: no pool was chosen.
    assert (report["teaching"]["pool"], report["teaching"]["pool_choice"]) == (0, None)
    # Named as OpenAI names it, then generated with.
    ft = job.fine_tuned_model or ""
    assert ft.startswith("ft:gpt-4o-mini-2024-07-18:fake-org:distill")
    assert any(r.model == ft and r.n_done for r in runs)
    # Stored completions and metadata were sent, as the seed's dashboard flow needs.
    chats = [r for r in requests if r.path == "/v1/chat/completions"]
    assert chats and all(r.store and (r.metadata or {}).get("role") for r in chats)


async def test_an_unfine_tunable_student_is_refused_before_any_request(store: Store) -> None:
    git_dataset(store)
    with like_openai(models=(*OPENAI_MODELS, "o4-mini")) as fake:
        config = CONFIG.model_copy(update={"student_model": "o4-mini"})
        async with client(fake) as c:
            recipe = Recipe(store, c, openai_settings(fake), config, backend_kind="openai")
            with pytest.raises(RecipeError) as refused:
                await recipe.run()
        assert paid_requests(fake) == []
    message = str(refused.value)
    assert "'o4-mini' cannot be fine-tuned on OpenAI" in message
    assert "gpt-4o-mini (gpt-4o-mini-2024-07-18)" in message  # names what can be
    assert store.list_runs() == []


async def test_missing_models_and_a_small_dataset_are_refused_together(store: Store) -> None:
    git_dataset(store, n=12)  # 9 train items: fewer than 10 training examples
    with like_openai() as fake:
        config = CONFIG.model_copy(update={"teacher_model": "gpt-5-imaginary"})
        async with client(fake) as c:
            recipe = Recipe(store, c, openai_settings(fake), config, backend_kind="openai")
            with pytest.raises(RecipeError) as refused:
                await recipe.run()
        assert paid_requests(fake) == []
    message = str(refused.value)
    assert "the teacher model 'gpt-5-imaginary' does not exist" in message
    assert "fine-tuning needs at least 10" in message


async def test_a_url_without_fine_tuning_is_refused_before_generating(store: Store) -> None:
    git_dataset(store)
    with FakeOpenAI() as fake:  # a plain OpenAI-compatible server: no /v1/fine_tuning
        settings = Settings(
            backend="url",
            base_url=fake.base_url,
            api_key=fake.api_key,
            student_model="fake-model",
            teacher_model="fake-model",
        )
        async with client(fake) as c:
            recipe = Recipe(store, c, settings, CONFIG, backend_kind="url")
            with pytest.raises(RecipeError, match="has no fine-tuning endpoint"):
                await recipe.run()
        assert paid_requests(fake) == []


def test_fine_tune_base_for_the_fine_tune_screen() -> None:
    settings = Settings(backend="openai", api_key="sk-x")
    assert fine_tune_base(settings, "openai", "gpt-4.1-mini") == "gpt-4.1-mini-2025-04-14"
    assert fine_tune_base(settings, "openai", "gpt-4o-2024-08-06") == "gpt-4o-2024-08-06"
    ft = "ft:gpt-4o-mini-2024-07-18:org:git:abc"
    assert fine_tune_base(settings, "openai", ft) == ft  # fine-tuning continues from it
    with pytest.raises(NotFineTunable, match=r"gpt-4\.1-nano"):
        fine_tune_base(settings, "openai", "o4-mini")
    assert fine_tune_base(settings, "local", "smollm2-135m-instruct") == "smollm2-135m-instruct"
    # Overridable: a snapshot published after this release.
    newer = Settings(fine_tunable={"gpt-4o-mini": "gpt-4o-mini-2099-01-01"})
    assert fine_tune_base(newer, "openai", "gpt-4o-mini") == "gpt-4o-mini-2099-01-01"


async def test_the_server_refuses_an_alias_as_openai_does(store: Store) -> None:
    git_dataset(store)
    ds = store.dataset_by_name("tiny-git")
    assert ds is not None
    training = build_training_set(store, Source(dataset_id=ds.id), system_prompt="x")
    with like_openai() as fake:
        async with client(fake) as c:
            with pytest.raises(FineTuneError, match="is not available for fine-tuning"):
                await launch_job(store, c, training, base_model="gpt-4o-mini")
    assert store.list_jobs() == []


def test_compare_prices_fine_tuned_models_at_their_own_rate(store: Store) -> None:
    ds = git_dataset(store, n=8, eval_fraction=0.5)
    items = store.items(ds, "eval")
    ft = "ft:gpt-4o-mini-2024-07-18:personal:git:AbC123xy"
    runs = []
    for model in ("gpt-4o-mini-2024-07-18", ft):
        completions = [
            (
                item.id,
                {
                    "output": "git branch x",
                    "status": "done",
                    "prompt_tokens": 250_000,
                    "completion_tokens": 100_000,
                },
            )
            for item in items
        ]
        runs.append(store.add_finished_run(completions, dataset_id=ds, model=model, split="eval"))
    eval_id = create_eval(store, "exact", [{"type": "command_match", "name": "cm"}])
    settings = Settings()
    comparison = compare(store, eval_id, runs, runs[0], price=settings.price)
    baseline, tuned = comparison.runs
    n = len(items)  # 1M prompt + 0.4M completion tokens per run when n == 4
    assert n == 4
    # gpt-4o-mini: $0.15 / $0.60 per 1M; fine-tuned: $0.30 / $1.20 (not the base, not $0).
    assert baseline.cost == pytest.approx(0.15 + 0.4 * 0.60)
    assert tuned.cost == pytest.approx(0.30 + 0.4 * 1.20)
    assert tuned.priced
