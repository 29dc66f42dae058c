"""`distill-tui run`'s engine end to end on the local backend with a tiny model and a
20-item dataset: every step's artefacts exist, the report agrees with the stored grades, and
an interrupted recipe resumes where it stopped."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.tiny_model import build_tiny_gguf
from tests.local.server_harness import KEY, client, model_id, start_thread_server
from tui.engine.datasets import ItemDraft
from tui.engine.evals import result_rows
from tui.engine.recipe import STATE_FILE, Recipe, RecipeConfig, RecipeError, Reporter
from tui.engine.settings import Settings
from tui.engine.store import Store


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("recipe")
    gguf = build_tiny_gguf(root / "tiny-recipe.gguf")
    running = start_thread_server(root / "ws", [gguf])
    yield running
    running.stop()


def dataset(store: Store) -> int:
    items = [
        ItemDraft(f"Create a new branch called 'topic-{i}'.", f"git branch topic-{i}")
        for i in range(20)
    ]
    ds = store.create_dataset("tiny-git", "Reply with a git command.", items)
    store.random_split(ds, 0.25, seed=3)
    return ds


class Recorder(Reporter):
    def __init__(self, stop_at: str | None = None) -> None:
        self.started: list[str] = []
        self.skipped: list[str] = []
        self.stop_at = stop_at

    def step(self, key: str, title: str, total: int | None) -> None:
        if key == self.stop_at:
            raise RecipeError(f"interrupted at {key}")
        self.started.append(key)

    def skip(self, key: str, title: str, note: str) -> None:
        self.skipped.append(key)


async def test_recipe_end_to_end_and_resume(server: Any, tmp_path: Path) -> None:
    store = Store.open(tmp_path / "ws")
    dataset(store)
    async with client(server.url) as c:
        tiny = model_id((await c.models.list()).data, "tiny-recipe")
        settings = Settings(api_key=KEY, student_model=tiny, teacher_model=tiny)
        config = RecipeConfig(
            dataset="tiny-git",
            teacher_examples=3,
            max_tokens=6,
            # The tiny random model's greedy reply is blank lines; sampled, it says something.
            temperature=1.0,
            concurrency=4,
            finetune={"n_epochs": 1, "batch_size": 4},
        )

        # Interrupted before the fine-tune: the first steps are recorded as finished.
        first = Recorder(stop_at="finetune")
        with pytest.raises(RecipeError, match="interrupted"):
            await Recipe(store, c, settings, config, backend_kind="local", reporter=first).run()
        assert first.started == ["baseline", "baseline_eval", "teacher", "training_file"]

        second = Recorder()
        recipe = Recipe(store, c, settings, config, backend_kind="local", reporter=second)
        report = await recipe.run()
    assert second.skipped == ["baseline", "baseline_eval", "teacher", "training_file"]
    assert second.started == ["finetune", "finetuned", "finetuned_eval", "compare"]

    state = json.loads((store.directory / STATE_FILE).read_text())
    baseline = store.get_run(state["baseline_run"])
    teacher = store.get_run(state["teacher_run"])
    finetuned = store.get_run(state["finetuned_run"])
    n_eval = store.get_dataset(state["dataset_id"]).n_eval
    assert (baseline.split, baseline.n_done) == ("eval", n_eval)
    assert (teacher.split, teacher.params["retrieve_k"]) == ("train", 3)
    assert finetuned.model == state["fine_tuned_model"]
    assert finetuned.model.startswith(f"ft:{tiny}:")
    job = store.get_job(state["job_id"])
    assert job.status == "succeeded"
    assert Path(state["training_file"]).is_file()

    # The report says what the stored grades say.
    for label, eval_key in (
        ("baseline student", "baseline_eval"),
        ("fine-tuned student", "finetuned_eval"),
    ):
        rows = result_rows(store, state[eval_key])
        for grader, rate in report["pass_rates"][label].items():
            verdicts = [r.grades[grader].passed for r in rows if grader in r.grades]
            decided = [v for v in verdicts if v is not None]
            expected = sum(decided) / len(decided) if decided else None
            assert rate == pytest.approx(expected)
    reports = store.directory / "reports"
    assert json.loads((reports / "recipe.json").read_text())["rows"] == report["rows"]
    markdown = (reports / "recipe.md").read_text()
    assert "baseline student" in markdown and "fine-tuned student" in markdown

    # Everything finished: a third run does nothing again.
    async with client(server.url) as c:
        third = Recorder()
        await Recipe(store, c, settings, config, backend_kind="local", reporter=third).run()
    assert third.started == ["compare"]
    store.close()


def test_unknown_dataset_and_missing_split(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "ws")
    settings = Settings()
    recipe = Recipe(
        store,
        None,
        settings,
        RecipeConfig(dataset="nope"),  # type: ignore[arg-type]
        backend_kind="local",
    )
    with pytest.raises(RecipeError, match="no dataset named 'nope'"):
        recipe.dataset_id()
    store.create_dataset("unsplit", items=[ItemDraft("a"), ItemDraft("b")])
    recipe = Recipe(
        store,
        None,
        settings,
        RecipeConfig(dataset="unsplit"),  # type: ignore[arg-type]
        backend_kind="local",
    )
    with pytest.raises(RecipeError, match="needs a train/eval split"):
        recipe.dataset_id()
    store.close()
