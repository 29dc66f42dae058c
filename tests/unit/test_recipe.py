"""`distill-tui run`'s engine end to end on the local backend with a tiny model and a task it
can learn (tests/helpers/tiny_task.py): every step's artefacts exist, the report agrees with
the stored grades, the fine-tuned student answers held-out questions its untuned self cannot,
and an interrupted recipe resumes where it stopped."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.tiny_model import build_tiny_gguf
from tests.helpers.tiny_task import SYSTEM, colour_task
from tests.local.server_harness import KEY, client, model_id, start_thread_server
from tui.engine.datasets import ItemDraft
from tui.engine.evals import result_rows
from tui.engine.recipe import STATE_FILE, Recipe, RecipeConfig, RecipeError, Reporter
from tui.engine.settings import Settings
from tui.engine.store import Store
from tui.engine.training_data import MIN_EXAMPLES


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("recipe")
    gguf = build_tiny_gguf(root / "tiny-recipe.gguf")
    running = start_thread_server(root / "ws", [gguf])
    yield running
    running.stop()


def dataset(store: Store) -> int:
    """The colour task: its training questions are the train split, the held-out ones (a
    thing asked in a way it was never trained on) the eval split."""
    train, held_out = colour_task()
    items = [ItemDraft(q, a, "train") for q, a in train]
    items += [ItemDraft(q, a, "eval") for q, a in held_out]
    return store.create_dataset("colours", SYSTEM, items)


POOL = 0.67  # of the 18 train questions, 12 are the pool whose answers the pipeline sees
EXACT = {"type": "string_check", "name": "exact", "operation": "eq"}


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


KEEP_NON_EMPTY = (
    "def grade(sample, item):\n    return 1.0 if sample['output_text'].strip() else 0.0\n"
)


async def test_recipe_end_to_end_and_resume(server: Any, tmp_path: Path) -> None:
    store = Store.open(tmp_path / "ws")
    dataset(store)
    async with client(server.url) as c:
        tiny = model_id((await c.models.list()).data, "tiny-recipe")
        settings = Settings(api_key=KEY, student_model=tiny, teacher_model=tiny)
        config = RecipeConfig(
            dataset="colours",
            student_prompt=SYSTEM,
            graders=[EXACT],
            teacher_examples=3,
            teacher_pool=POOL,
            teacher_samples=3,
            gate=[{"type": "python", "name": "non-empty", "source": KEEP_NON_EMPTY}],
            # Keep every label, whatever its samples' agreement (by default only those 4 of 5
            # samples agree on are kept): the check below is that the pipeline, labels and
            # all, teaches the student something.
            min_confidence=0.0,
            rounds=1,
            max_tokens=6,
            concurrency=4,
            # What teaches the tiny model the task in seconds (10: the most OpenAI allows).
            finetune={"n_epochs": 30, "batch_size": 1, "learning_rate_multiplier": 10},
        )

        # Interrupted before the main fine-tune: the first steps are recorded as finished.
        first = Recorder(stop_at="round-1/train")
        with pytest.raises(RecipeError, match="interrupted"):
            await Recipe(store, c, settings, config, backend_kind="local", reporter=first).run()
        before = [
            "baseline",
            "baseline/eval",
            "pool-only/train",
            "pool-only",
            "pool-only/eval",
            "round-1/teacher",
            "round-1/teacher/gate",
        ]
        assert first.started == before

        second = Recorder()
        recipe = Recipe(store, c, settings, config, backend_kind="local", reporter=second)
        assert recipe.pool_teacher and recipe.teacher_samples == 3
        # The defaults' choices, on a state of their own (this one's steps ran with `config`).
        defaults = Recipe(
            store,
            c,
            settings,
            RecipeConfig(dataset="colours"),
            backend_kind="local",
            state_file="defaults.json",
        )
        assert (defaults.teacher_samples, defaults.min_confidence) == (5, 0.0)
        report = await recipe.run()
    assert second.skipped == before
    after = [
        "round-1/train",
        "round-1/student",
        "round-1/student/eval",
        "teacher",
        "teacher/eval",
        "compare",
    ]
    assert second.started == after

    state = json.loads((store.directory / STATE_FILE).read_text())
    runs = state["runs"]
    baseline = store.get_run(runs["baseline"])
    teacher = store.get_run(runs["round-1/teacher"])
    finetuned = store.get_run(runs["round-1/student"])
    info = store.get_dataset(state["dataset_id"])
    assert (baseline.split, baseline.n_done) == ("eval", info.n_eval)
    # The teacher labels the train items outside the pool, sees only the pool's references,
    # and samples 3 times per request with a vote whose share is stored.
    pool = set(state["pool"])
    train = {i.id for i in store.items(info.id, "train")}
    assert pool < train and len(pool) == round(len(train) * POOL) == 12
    assert {r.item_id for r in store.completions(teacher.id)} == train - pool
    assert teacher.params["retrieve_k"] == 3 and set(teacher.params["retrieve_from"]) == pool
    labels = [r for r in store.completions(teacher.id) if r.status == "done"]
    assert labels and all(r.samples and len(r.samples) == 3 for r in labels)
    assert all(r.confidence in (1 / 3, 2 / 3, 1.0) for r in labels)
    # The training file: the pool's references as they are, plus the labels the gate kept.
    kept = [r for r in labels if r.output.strip()]
    lines = Path(state["training_files"]["round-1/train"]).read_text().splitlines()
    job = store.get_job(state["jobs"]["round-1/train"])
    # FineTuneConfig's default validation share, except that a set under 2 × MIN_EXAMPLES is
    # kept whole for training (the recipe's rule).
    n_examples = len(pool) + len(kept)
    n_validation = round(n_examples * 0.1) if n_examples >= 2 * MIN_EXAMPLES else 0
    assert len(lines) == n_examples - n_validation and job.status == "succeeded"
    trained = {
        (m[-2]["content"], m[-1]["content"])
        for m in (json.loads(line)["messages"] for line in lines)
    }
    references = {(i.input, i.reference) for i in store.items(info.id) if i.id in pool}
    assert len(trained & references) >= len(pool) - n_validation
    assert finetuned.model == state["models"]["round-1/train"]
    assert finetuned.model.startswith(f"ft:{tiny}:")
    # The teacher is also run on the eval split, with the same context.
    on_eval = store.get_run(runs["teacher"])
    assert (on_eval.split, on_eval.params["retrieve_from"]) == (
        "eval",
        teacher.params["retrieve_from"],
    )

    # The report: its rows, and what the stored grades say.
    assert [row["run"] for row in report["rows"]] == [
        "teacher",
        "baseline student",
        "pool-only student",
        "fine-tuned student",
    ]
    for label, step in (
        ("teacher", "teacher/eval"),
        ("baseline student", "baseline/eval"),
        ("pool-only student", "pool-only/eval"),
        ("fine-tuned student", "round-1/student/eval"),
    ):
        rows = result_rows(store, state["eval_runs"][step])
        for grader, rate in report["pass_rates"][label].items():
            verdicts = [r.grades[grader].passed for r in rows if grader in r.grades]
            decided = [v for v in verdicts if v is not None]
            expected = sum(decided) / len(decided) if decided else None
            assert rate == pytest.approx(expected)
    # And what the recipe is for: on questions it was never trained on, the fine-tuned student
    # answers where its untuned self (a random model: blank lines) answers none.
    rates = {row: report["pass_rates"][row]["exact"] for row in report["pass_rates"]}
    assert rates["baseline student"] == 0
    # 4 of the 6 measured (and the pool-only student's 4); 2 exact answers are already more
    # than a model that learned nothing gives.
    assert rates["fine-tuned student"] >= 2 / 6, rates
    # Request by request against each other row: the wins and losses the stored grades give.
    tuned = {
        r.item_id: r.grades["exact"].passed
        for r in result_rows(store, state["eval_runs"]["round-1/student/eval"])
    }
    for label, step in (("baseline student", "baseline/eval"), ("teacher", "teacher/eval")):
        other = {
            r.item_id: r.grades["exact"].passed
            for r in result_rows(store, state["eval_runs"][step])
        }
        pair = report["paired"][label]
        assert (pair["wins"], pair["losses"]) == (
            sum(bool(tuned[i]) and not other[i] for i in tuned),
            sum(bool(other[i]) and not tuned[i] for i in tuned),
        )
        assert 0 < pair["p"] <= 1
    assert report["chance"].startswith("Request by request (exact), the fine-tuned student")
    assert "round-1/labels" in report["teaching"]["notes"]
    assert report["teaching"]["pool_choice"] == state["pool_choice"] == "diverse"
    reports = store.directory / "reports"
    assert json.loads((reports / "recipe.json").read_text())["rows"] == report["rows"]
    markdown = (reports / "recipe.md").read_text()
    assert "pool-only student" in markdown and "fine-tuned student" in markdown
    assert "pool of 12 (the requests that best stand for the rest)" in markdown
    assert report["chance"] in markdown

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


def test_a_resume_under_other_settings_is_refused_naming_them(tmp_path: Path) -> None:
    """The state file keeps the config its steps ran with: a resume with another teacher (the
    Recipe view's defaults after a headless `--config` start, say) would mix two recipes."""
    store = Store.open(tmp_path / "ws")
    dataset(store)

    def recipe(**config: Any) -> Recipe:
        return Recipe(
            store,
            None,  # type: ignore[arg-type]
            Settings(),
            RecipeConfig(dataset="colours", **config),
            backend_kind="local",
        )

    recipe(teacher_model="references").dataset_id()  # a first step saves the state
    state = json.loads((store.directory / STATE_FILE).read_text())
    assert state["config"]["teacher_model"] == "references"
    assert "dataset" not in state["config"] and "concurrency" not in state["config"]
    recipe(teacher_model="references", concurrency=3)  # how many at once changes no result
    with pytest.raises(RecipeError) as refused:
        recipe()
    message = str(refused.value)
    assert "teacher_model: 'references' then, None now" in message
    assert f"move {STATE_FILE} away to start over" in message
    assert json.loads((store.directory / STATE_FILE).read_text()) == state  # untouched
    # A state from before this release, with no config: the next run's is adopted.
    del state["config"]
    (store.directory / STATE_FILE).write_text(json.dumps(state))
    recipe().pool()  # its next step saves the state
    assert json.loads((store.directory / STATE_FILE).read_text())["config"]["teacher_model"] is None
    store.close()
