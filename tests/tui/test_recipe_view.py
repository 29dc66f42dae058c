"""The Recipe view: from a fresh workspace it says what to do next, and once the recipe is done
it leads, step by step, to the Compare screen."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import OptionList, Static

from tui.app import DistillApp
from tui.engine.datasets import ItemDraft
from tui.engine.evals import EvalRunner, create_eval, start_eval_run
from tui.engine.examples import ensure_shipped_dataset
from tui.engine.settings import load_settings
from tui.engine.store import Store

SIZE = (120, 36)
EXPECTED_SCREENS = ["settings", "dataset", "generate", "evals", "generate", "finetune", "compare"]


def intro(app: DistillApp) -> str:
    return str(app.screen.query_one("#recipe-intro", Static).render())


async def test_a_fresh_workspace_points_at_the_first_missing_step(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "ws")
    ensure_shipped_dataset(store)
    app = DistillApp(
        settings=load_settings(workspace=tmp_path / "ws"), store=store, start_backend=False
    )
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("0")
        await pilot.pause()
        assert app.current_mode == "recipe"
        assert "2 of 7 steps done" in intro(app)
        assert "Next: generate the student's outputs (baseline) (key 2)" in intro(app)
        # enter opens the highlighted (next) step's screen
        await pilot.press("enter")
        await pilot.pause()
        assert app.current_mode == "generate"
    store.close()


async def finished_recipe(store: Store) -> None:
    items = [
        ItemDraft(f"Show branch {i}", f"git show b{i}", "eval" if i % 2 else "train")
        for i in range(10)
    ]
    dataset = store.create_dataset("git-requests", "Reply with a command.", items)
    eval_id = create_eval(
        store,
        "exact",
        [
            {
                "type": "string_check",
                "name": "exact",
                "input": "{{sample.output_text}}",
                "reference": "{{item.reference}}",
                "operation": "eq",
            }
        ],
    )

    def run(model: str, role: str, split: str, right: int) -> int:
        chosen = store.items(dataset, split=split)
        completions = [
            (
                item.id,
                {
                    "output": item.reference if n < right else "git status",
                    "status": "done",
                    "latency_ms": 100.0,
                },
            )
            for n, item in enumerate(chosen)
        ]
        return store.add_finished_run(
            completions, dataset_id=dataset, model=model, role=role, split=split
        )

    baseline = run("student-model", "student", "eval", 1)
    run("teacher-model", "teacher", "train", 5)
    job = store.save_job(
        remote_id="ftjob-1",
        base_url="http://127.0.0.1:1/v1",
        base_model="student-model",
        status="succeeded",
    )
    store.update_job(job, fine_tuned_model="ft:student-model:local:x:1")
    tuned = run("ft:student-model:local:x:1", "fine-tuned", "eval", 4)
    for run_id in (baseline, tuned):
        await EvalRunner(store).run(start_eval_run(store, eval_id, run_id=run_id))


async def test_following_the_recipe_to_the_compare_screen(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "ws")
    await finished_recipe(store)
    app = DistillApp(
        settings=load_settings(workspace=tmp_path / "ws"), store=store, start_backend=False
    )
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("0")
        await pilot.pause()
        assert "7 of 7 steps done" in intro(app)
        for index, screen in enumerate(EXPECTED_SCREENS):
            await pilot.press("0")
            await pilot.pause()
            steps = app.screen.query_one(OptionList)
            steps.focus()
            steps.highlighted = index
            await pilot.press("enter")
            await pilot.pause()
            assert app.current_mode == screen, f"step {index + 1}"
        assert type(app.screen).__name__ == "CompareScreen"
    store.close()


def first_step(app: DistillApp) -> str:
    steps = app.screen.query_one(OptionList)
    return str(steps.get_option("step-1").prompt)


async def test_one_model_in_both_roles_is_told_that_it_teaches_only_with_context(
    tmp_path: Path,
) -> None:
    """The embedded default names the same model as teacher and student: step 1 says what
    that teacher can teach and where a stronger one is named; a teacher of its own is not
    warned about."""
    store = Store.open(tmp_path / "ws")
    ensure_shipped_dataset(store)
    for overrides, warned in (({}, True), ({"teacher_model": "big-teacher"}, False)):
        settings = load_settings(workspace=tmp_path / "ws", **overrides)
        app = DistillApp(settings=settings, store=store, start_backend=False)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("0")
            await pilot.pause()
            step = first_step(app)
            assert f"teacher {settings.teacher}, student {settings.student}" in step
            assert ("one model in both roles" in step) is warned, step
            assert ("a stronger teacher is named in Settings" in step) is warned, step
    store.close()
