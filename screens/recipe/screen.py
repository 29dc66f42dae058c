"""The Recipe view: the seven steps of the distillation recipe for the current dataset, which
are done, and the key that opens each — a newcomer's map from a fresh start to a comparison.
ctrl+s runs every step in the view (what `distill-tui run` does headless) and shows each
step's progress, then the report; esc stops it, and ctrl+s again resumes from the last
finished step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.markup import escape
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from screens.base import DistillScreen, JobEnded
from screens.dialogs import ConfirmDialog
from screens.recipe.board import RecipeBoard
from tui.engine.finetune import FineTuneError, cancel_job
from tui.engine.generation import Estimate
from tui.engine.offloop import EngineThread
from tui.engine.recipe import (
    STATE_FILE,
    WORKSPACE_CONFIG,
    RecipeConfig,
    RecipeError,
    RecipeState,
    StepStatus,
    ensure_known_state,
    jobs_in_training,
    load_config,
    recipe_progress,
    workspace_config,
)
from tui.engine.recipe_live import LiveRecipe, Preflight, RecipeJob
from tui.engine.store import JobInfo, StoreError
from tui.widgets.progress_line import clock

HINT = (
    "enter opens the step's screen · ctrl+s runs every step here, as `distill-tui run` does "
    "headless"
)


class RecipeScreen(DistillScreen):
    CSS_PATH = "recipe.tcss"
    BINDINGS = [
        Binding("r", "refresh", "Refresh", id="recipe.refresh"),
        Binding("ctrl+s", "run_recipe", "Run all steps", id="recipe.run"),
        Binding("escape", "stop_recipe", "Stop", id="recipe.stop"),
        Binding("x", "cancel_job", "Cancel the job", id="recipe.cancel_job"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.engine: EngineThread[Any] | None = None  # set while a run goes
        # The fine-tuning job a stopped recipe left training (x cancels it).
        self.left_training: JobInfo | None = None

    def compose_body(self) -> ComposeResult:
        with Vertical(id="recipe"):
            yield Static("", id="recipe-intro")
            yield OptionList(id="steps")
            yield RecipeBoard(id="recipe-run")
            yield Static(HINT, id="recipe-hint")

    def on_mount(self) -> None:
        self.sub_title = "Recipe"
        self.query_one(RecipeBoard).display = False
        self.action_refresh()
        self.query_one(OptionList).focus()

    def on_screen_resume(self) -> None:
        self._refresh_map()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "stop_recipe":
            return self.engine is not None  # not running: esc falls through to the app's
        if action == "cancel_job":
            return self.engine is None and self.left_training is not None
        return True

    def _dataset_id(self) -> int | None:
        store = self.distill.store
        current = self.distill.current_dataset_id
        if current is not None:
            return current
        datasets = store.list_datasets()
        if not datasets:
            return None
        preferred = next((d for d in datasets if d.name == "git-requests"), datasets[0])
        return preferred.id

    # -- the map ---------------------------------------------------------------------------

    def action_refresh(self) -> None:
        """The steps' map, read again; a run that ended leaves the view for it."""
        if self.engine is None:
            self._show_board(False)
        self._refresh_map()

    def _refresh_map(self) -> None:
        steps = recipe_progress(self.distill.store, self._dataset_id(), self.distill.settings)
        self.steps = steps
        done = sum(s.done for s in steps)
        nxt = next((s for s in steps if not s.done), None)
        if self.query_one(RecipeBoard).display:
            return
        self.query_one("#recipe-intro", Static).update(
            f"[b]{done} of 7 steps done.[/b] "
            + (
                f"Next: {escape(nxt.title.lower())} (key {self.distill.screen_key(nxt.screen)})."
                if nxt
                else "All done."
            )
            + self._recipe_note()
        )
        option_list = self.query_one(OptionList)
        highlighted = option_list.highlighted
        option_list.clear_options()
        option_list.add_options([_option(s, self.distill.screen_key(s.screen)) for s in steps])
        option_list.highlighted = (
            highlighted if highlighted is not None else ((nxt.number - 1) if nxt else 0)
        )

    def _recipe_note(self) -> str:
        """Where the workspace's recipe (ctrl+s, `distill-tui run`) stands, when it has run
        on this dataset: a user back after a quit sees what ctrl+s will do, and x cancels a
        fine-tuning job the recipe left training (on a paid backend, billed)."""
        self.left_training = None
        self.refresh_bindings()
        store = self.distill.store
        try:
            state = RecipeState.load(store.directory / STATE_FILE)
        except RecipeError as error:
            return f"\n[$warning]{escape(str(error))}[/]"
        if not state.started or state.dataset_id != self._dataset_id():
            return ""
        if state.report is not None and "compare" in state.finished:
            return (
                f"\nThe recipe ran to its report ({escape(str(store.directory / 'reports'))}"
                "/recipe.md): ctrl+s shows it again."
            )
        steps = len(state.finished)
        when = f"after {steps} step{'s' if steps > 1 else ''}" if steps else "during its first step"
        going = jobs_in_training(store, state)
        if not going:
            return f"\nThe recipe stopped {when}: ctrl+s resumes it."
        self.left_training = going[0]
        self.refresh_bindings()
        return (
            f"\nThe recipe stopped {when}; its fine-tuning job "
            f"{escape(going[0].remote_id)} trains on: ctrl+s resumes it, x cancels the job."
        )

    def _show_board(self, board: bool) -> None:
        self.query_one(RecipeBoard).display = board
        self.query_one(OptionList).display = not board
        (self.query_one(RecipeBoard) if board else self.query_one(OptionList)).focus()
        self.query_one("#recipe-hint", Static).update(
            "esc stops the recipe (ctrl+s later resumes it) · the other screens stay usable"
            if board and self.engine is not None
            else "r returns to the steps' map · ctrl+s runs the recipe again (finished steps "
            "are kept)"
            if board
            else HINT
        )
        if board:
            self.query_one("#recipe-intro", Static).update(
                "[b]The whole recipe, step by step[/b] (the seven steps' map: r)"
            )

    @on(OptionList.OptionSelected)
    async def _open(self, event: OptionList.OptionSelected) -> None:
        step = self.steps[event.option_index]
        await self.app.run_action(f"switch_mode('{step.screen}')")

    # -- running every step ----------------------------------------------------------------

    def action_run_recipe(self) -> None:
        if self.engine is not None:
            self.notify("The recipe is running: esc stops it.", severity="warning")
            return
        try:
            config = self._config()
        except (RecipeError, StoreError) as error:
            self.notify(str(error), title="Cannot run the recipe", severity="error", markup=False)
            return
        backends = {
            role: self.distill.backend_for(role) for role in ("student", "teacher", "judge")
        }
        missing = [role for role, backend in backends.items() if backend is None]
        if missing:
            self.notify(
                "The backend is not connected yet (see the status line); try again in a moment.",
                title="Cannot run the recipe",
                severity="warning",
            )
            return
        job = RecipeJob(
            self.distill.store,
            self.distill.settings,
            config,
            {role: b for role, b in backends.items() if b is not None},
        )
        self._run(job)

    def _config(self) -> RecipeConfig:
        """The recipe's defaults on the dataset in view, or on the dataset an earlier run in
        this workspace chose (its steps resume there: another dataset is refused, naming
        the state file to move away)."""
        store = self.distill.store
        ensure_known_state(store)
        path = store.directory / STATE_FILE
        state = RecipeState.load(path)
        dataset_id = self._dataset_id()
        if dataset_id is None:
            raise RecipeError("the workspace has no dataset: import one on the Dataset screen (1)")
        name = store.get_dataset(dataset_id).name
        if state.dataset_id is not None and state.dataset_id != dataset_id:
            try:
                earlier = store.get_dataset(state.dataset_id).name
            except StoreError:
                earlier = f"id {state.dataset_id}"
            raise RecipeError(
                f"this workspace's recipe runs on dataset {earlier!r} ({path}): open that "
                f"dataset to resume it, or move {path.name} away to run the recipe on {name!r}"
            )
        # The workspace's recipe.toml, as `distill-tui run` reads it; on the dataset in view
        # unless it names one.
        config = load_config(workspace_config(store.directory))
        if "dataset" not in config.model_fields_set:
            config = config.model_copy(update={"dataset": name})
        elif config.dataset != name:
            raise RecipeError(
                f"{store.directory / WORKSPACE_CONFIG} runs the recipe on dataset "
                f"{config.dataset!r}: open that dataset to run it (this one is {name!r})"
            )
        # The view runs on the app's open backends (Settings, 7): a file that puts a role
        # elsewhere is for the headless command, which opens the backends it names.
        settings = self.distill.settings
        wanted = config.backend_settings(settings)
        elsewhere = [
            f"{role} on {wanted.backend_kind(role)}"
            for role in ("teacher", "student", "judge")
            if getattr(config, f"{role}_backend") is not None
            and wanted.backend_kind(role) != settings.backend_kind(role)
        ]
        if elsewhere:
            raise RecipeError(
                f"{store.directory / WORKSPACE_CONFIG} puts the {', the '.join(elsewhere)}; the "
                "Recipe view runs on the app's backends (Settings, 7): name them there, or run "
                "`distill-tui run`"
            )
        return config

    @work(exclusive=True, group="recipe", exit_on_error=False)
    async def _run(self, job: RecipeJob) -> None:
        self.left_training = None
        live = LiveRecipe()  # the board holds it once shown
        engine: EngineThread[Any] = EngineThread("recipe-preflight")
        self.engine = engine
        self.refresh_bindings()
        board = self.query_one(RecipeBoard)
        board.show(live, "Checking the models and the dataset…")
        self._show_board(True)
        try:
            preflight: Preflight | None = await engine.run(job.preflight)
            if preflight is None:
                live.end()
                board.say("Stopped before the first step: nothing was spent.")
                return
            source = workspace_config(self.distill.store.directory)
            board.describe(
                f"{job.config.dataset} · {preflight.description}"
                + (f" · config {source.name}" if source else "")
            )
            estimates = preflight.estimates
            if any(e.priced for _, e in estimates) and not await self._agreed(estimates):
                live.end()
                board.say("Not started: nothing was spent.")
                return
            job.reporter = live.reporter()
            engine = EngineThread("recipe")
            self.engine = engine
            board.say("Running the recipe…")
            report = await engine.run(job.run)
        except (RecipeError, StoreError) as error:
            live.end("failed", "")
            board.say(f"Stopped: {error}")
            self.notify(
                f"{error}\nctrl+s runs it again (the finished steps are kept).",
                title="The recipe stopped",
                severity="error",
                markup=False,
            )
            return
        except Exception as error:  # said by the app's worker-error notification too
            live.end("failed", "")
            board.say(f"Failed: {error}")
            raise
        finally:
            self.engine = None
            if self.is_mounted:
                self.refresh_bindings()
                self._show_board(True)
        if report is None:
            live.end("stopped", "stopped here")
            board.say(
                f"Stopped. {self._job_note() or 'ctrl+s resumes from the last finished step.'}"
            )
            self.notify("The recipe stopped: ctrl+s resumes it.", title="Recipe stopped")
            return
        live.end()
        took = clock((live.ended or live.started) - live.started)
        path = Path(self.distill.store.directory) / "reports" / "recipe.md"
        board.say(f"Finished in {took}: the report is {path} (Compare, key 6, shows every run)")
        board.show_report(report)
        self.notify(str(report.get("summary") or "The recipe finished."), title="Recipe done")

    def _job_note(self) -> str:
        """A fine-tuning job the stop left going: it trains on (on a paid backend, billed),
        a resumed run waits for it, and x cancels it."""
        store = self.distill.store
        going = jobs_in_training(store, RecipeState.load(store.directory / STATE_FILE))
        self.left_training = going[0] if going else None
        self.refresh_bindings()
        if self.left_training is None:
            return ""
        return (
            f"Its fine-tuning job {self.left_training.remote_id} trains on: ctrl+s resumes and "
            "waits for it, x cancels it."
        )

    @work(group="recipe-cancel", exit_on_error=False)
    async def action_cancel_job(self) -> None:
        job = self.left_training
        backend = self.distill.backend_for("student")
        if job is None or backend is None or self.engine is not None:
            return
        answer = await self.app.push_screen_wait(
            ConfirmDialog(
                "Cancel the fine-tuning job?",
                f"{job.remote_id} on {backend.label} throws away what it has trained so far; "
                "ctrl+s then starts a new job for this step.",
                ok="Cancel the job",
                cancel="Keep training",
            )
        )
        if not answer:
            return
        board = self.query_one(RecipeBoard)
        try:
            job = await cancel_job(self.distill.store, backend.client, job.id)
        except (FineTuneError, openai.APIError) as error:
            if board.display:
                board.say(f"The job was not cancelled: {error}. {self._job_note()}")
            self.notify(str(error), title="Not cancelled", severity="warning", markup=False)
            return
        self._job_ended(job)
        if not board.display:
            self.notify(
                f"Fine-tuning job {job.remote_id} {job.status}: ctrl+s resumes the recipe.",
                markup=False,
            )

    @on(JobEnded)
    def _on_job_ended(self, event: JobEnded) -> None:
        left = self.left_training
        if self.engine is None and left is not None and event.job.id == left.id:
            self._job_ended(event.job)

    def _job_ended(self, job: JobInfo) -> None:
        """The job a stopped recipe left training ended (x, or the app following it): the
        board or the map says so, and x has nothing left to cancel."""
        self.left_training = None
        self.refresh_bindings()
        if self.query_one(RecipeBoard).display:
            self.query_one(RecipeBoard).say(
                f"Stopped; fine-tuning job {job.remote_id} {job.status}. ctrl+s resumes."
            )
        else:
            self._refresh_map()

    async def _agreed(self, estimates: list[tuple[str, Estimate]]) -> bool:
        lines = [
            f"{role}: {e.items} requests, ≈{e.prompt_tokens:,} prompt + "
            f"{e.completion_tokens:,} output tokens, ≈${e.cost:.2f}"
            for role, e in estimates
        ]
        total = sum(e.cost for _, e in estimates)
        message = "\n".join(
            [*lines, f"Estimated generation cost ≈ ${total:.2f} (fine-tuning is extra)."]
        )
        answer = await self.app.push_screen_wait(
            ConfirmDialog("Run the recipe?", message, ok="Run")
        )
        return bool(answer)

    def action_stop_recipe(self) -> None:
        if self.engine is not None:
            self.engine.cancel()
            self.query_one(RecipeBoard).say("Stopping…")


def _option(step: StepStatus, key: str) -> Option:
    mark = "[green]✓[/green]" if step.done else "[dim]○[/dim]"
    return Option(
        # The detail names the dataset and models, which may hold brackets ("ops [/b]").
        f"{mark} [b]{step.number}. {escape(step.title)}[/b]  [dim](key {key})[/dim]\n"
        f"     {escape(step.detail)}",
        id=f"step-{step.number}",
    )
