"""`distill-tui run` with `teacher_source = {stored = {...}}`: the teacher's outputs are the
backend's stored completions (a production app's logs), matched to the dataset's requests,
instead of generated: the teacher model is never asked, the student is fine-tuned on the
logged answers, and what matched nothing is reported. Against the fake server as OpenAI."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from tests.helpers.fake_openai import like_openai
from tui.engine.datasets import ItemDraft
from tui.engine.recipe import Recipe, RecipeConfig, RecipeError, load_config
from tui.engine.settings import Settings
from tui.engine.store import Store

PROMPT = "Reply with a git command."


def git_dataset(store: Store) -> int:
    items = [
        ItemDraft(f"Create a new branch called 'topic-{i}'.", f"git branch topic-{i}")
        for i in range(20)
    ]
    ds = store.create_dataset("tiny-git", PROMPT, items)
    store.random_split(ds, 0.25, seed=3)
    return ds


def answer(request: str) -> str:
    """The teacher's logged answer: its own words, not the dataset's reference."""
    return "git switch -c " + request.split("'")[1]


STORED = {"stored": {"model": "gpt-4o", "metadata": {"task": "git"}}}


async def test_the_teacher_comes_from_stored_completions(store: Store, tmp_path: Path) -> None:
    ds = git_dataset(store)
    train = store.items(ds, "train")
    evals = store.items(ds, "eval")
    with like_openai(tokens_per_reply=3, job_seconds=0.3) as fake:
        # The production logs: the teacher answered every train request (its own words, not
        # the references), 3 of the 5 eval requests, a request the dataset doesn't hold, and
        # requests of another task.
        def log(request: str, reply: str, task: str = "git") -> None:
            messages = [
                {"role": "system", "content": "You are a git expert."},
                {"role": "user", "content": request},
            ]
            fake.stored.add(messages, reply, model="gpt-4o", metadata={"task": task})

        for item in [*train, *evals[:3]]:
            log(item.input, answer(item.input))
        log("Rebase onto main.", "git rebase main")
        log(train[0].input, "git wrong", task="other")
        config_file = tmp_path / "recipe.toml"
        config_file.write_text(
            '[recipe]\ndataset = "tiny-git"\nmax_tokens = 8\nconcurrency = 4\n'
            'teacher_source = {stored = {model = "gpt-4o", metadata = {task = "git"}}}\n'
        )
        config = load_config(config_file)
        settings = Settings(backend="openai", base_url=fake.base_url, api_key=fake.api_key)  # type: ignore[arg-type]
        async with openai.AsyncOpenAI(
            base_url=fake.base_url, api_key=fake.api_key, max_retries=0
        ) as c:
            recipe = Recipe(store, c, settings, config, backend_kind="openai")
            assert recipe.teacher == "gpt-4o"
            # Nothing to pay for the teacher: only the student's baseline is estimated.
            assert [who for who, _ in recipe.estimates()] == ["student"]
            report = await recipe.run()
        chats = [r for r in fake.chat_requests if r.method == "POST"]
    # The teacher model was never asked; the student was (baseline, fine-tuned).
    assert chats and {r.body["model"] for r in chats}.isdisjoint({"gpt-4o"})
    state = recipe.state
    teacher = {r.input: r.output for r in store.completions(state.runs["round-1/teacher"])}
    assert teacher == {i.input: answer(i.input) for i in train}
    note = state.notes["round-1/teacher"]
    assert note.startswith(f"{len(train)} of {len(train)} requests answered by stored")
    assert "4 match no request of the run" in note  # 3 eval requests and the unrelated one
    # The teacher's eval row: the 3 eval requests that were logged.
    eval_rows = store.completions(state.runs["teacher"])
    assert sorted(r.input for r in eval_rows) == sorted(i.input for i in evals[:3])
    assert state.notes["teacher"].startswith(f"3 of {len(evals)} requests answered")
    # The student was fine-tuned on the logged answers.
    training = Path(state.training_files["round-1/train"]).read_text()
    assert "git switch -c topic-" in training and "git wrong" not in training
    assert report["models"]["teacher"] == "gpt-4o"


async def test_logs_that_answer_no_train_request_stop_the_recipe(store: Store) -> None:
    git_dataset(store)
    with like_openai(tokens_per_reply=3) as fake:
        fake.stored.add(
            [{"role": "user", "content": "Rebase onto main."}],
            "git rebase main",
            model="gpt-4o",
            metadata={"task": "git"},
        )
        settings = Settings(backend="openai", base_url=fake.base_url, api_key=fake.api_key)  # type: ignore[arg-type]
        config = RecipeConfig(dataset="tiny-git", max_tokens=8, teacher_source=STORED)  # type: ignore[arg-type]
        async with openai.AsyncOpenAI(
            base_url=fake.base_url, api_key=fake.api_key, max_retries=0
        ) as c:
            with pytest.raises(RecipeError, match="none of the 1 stored completions matching"):
                await Recipe(store, c, settings, config, backend_kind="openai").run()
