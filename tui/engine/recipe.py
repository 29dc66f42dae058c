"""The whole recipe, unattended: baseline student run on the eval split → eval → teacher run
on the train split → training file → fine-tune → fine-tuned student run on the eval split →
eval → comparison. The same engine the screens use; each step's result is recorded in the
workspace, so re-running skips finished steps and resumes a half-done one.

The default, on the local backend with the shipped git dataset: the student is
SmolLM2-135M-Instruct with a short system prompt; the teacher is the same model given the k
most similar train-split examples as prior chat turns (context distillation), unless a
stronger teacher is configured."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import openai
from pydantic import BaseModel, Field, ValidationError

from tui.engine import preflight
from tui.engine.examples import GIT_DATASET_NAME, ensure_shipped_dataset
from tui.engine.finetune import (
    FineTuneError,
    Hyperparameters,
    JobUpdate,
    JobWatcher,
    Source,
    build_training_set,
    launch_job,
    token_counter_for,
    validate_training_set,
)
from tui.engine.generation import (
    Estimate,
    Event,
    Generator,
    RunSpec,
    SamplingParams,
    create_run,
    estimate_run,
)
from tui.engine.settings import Settings
from tui.engine.store import Store, StoreError

STATE_FILE = "recipe-state.json"
DEFAULT_GRADERS: list[dict[str, Any]] = [
    {"type": "command_match", "name": "command match"},
    {
        "type": "string_check",
        "name": "exact match",
        "input": "{{sample.output_text}}",
        "reference": "{{item.reference}}",
        "operation": "eq",
    },
]
STUDENT_PROMPT = "Reply with the single git command that does what the user asks."


class FineTuneConfig(BaseModel):
    n_epochs: int | str = "auto"
    batch_size: int | str = "auto"
    learning_rate_multiplier: float | str = "auto"
    suffix: str = "distill"
    validation_fraction: float = Field(default=0.1, ge=0, lt=0.5)
    seed: int = 0


class RecipeConfig(BaseModel):
    """`distill-tui run --config FILE` reads a [recipe] table with these keys."""

    dataset: str = GIT_DATASET_NAME
    student_model: str | None = None  # default: settings.student
    teacher_model: str | None = None  # default: settings.teacher
    student_prompt: str | None = None  # default: a short instruction
    teacher_prompt: str | None = None  # default: the student's prompt
    # k most similar train examples given to the teacher as chat turns; None = 10 when the
    # teacher is the student's own model (context distillation), else 0.
    teacher_examples: int | None = Field(default=None, ge=0, le=50)
    max_tokens: int = Field(default=48, ge=1, le=4096)
    temperature: float = Field(default=0.0, ge=0, le=2)
    concurrency: int | None = Field(default=None, ge=1, le=256)
    eval_name: str = "git commands"
    graders: list[dict[str, Any]] = Field(default_factory=lambda: list(DEFAULT_GRADERS))
    finetune: FineTuneConfig = Field(default_factory=FineTuneConfig)


def load_config(path: Path | None) -> RecipeConfig:
    if path is None:
        return RecipeConfig()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise RecipeError(f"{path}: cannot read the recipe config ({error.strerror})") from error
    except tomllib.TOMLDecodeError as error:
        raise RecipeError(f"{path}: not valid TOML ({error})") from error
    try:
        return RecipeConfig.model_validate(data.get("recipe", data))
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
        )
        raise RecipeError(f"{path}: {problems}") from error


class RecipeError(RuntimeError):
    """The recipe cannot go on; the message says why."""


@dataclass
class RecipeState:
    """What each step produced (ids in the workspace); saved after every step."""

    dataset_id: int | None = None
    baseline_run: int | None = None
    baseline_eval: int | None = None
    teacher_run: int | None = None
    training_file: str | None = None
    job_id: int | None = None
    fine_tuned_model: str | None = None
    finetuned_run: int | None = None
    finetuned_eval: int | None = None
    eval_id: int | None = None
    report: dict[str, Any] | None = None
    finished: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> RecipeState:
        if not path.exists():
            return cls()
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError) as error:
            raise RecipeError(
                f"{path}: the recipe's saved state is unreadable ({error}); delete it to start over"
            ) from error

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1), encoding="utf-8")
        tmp.replace(path)


STEPS = (
    ("baseline", "Student outputs on the eval split (baseline)"),
    ("baseline_eval", "Evaluate the baseline"),
    ("teacher", "Teacher outputs on the train split"),
    ("training_file", "Training file from the teacher's outputs"),
    ("finetune", "Fine-tune the student"),
    ("finetuned", "Fine-tuned student outputs on the eval split"),
    ("finetuned_eval", "Evaluate the fine-tuned student"),
    ("compare", "Compare"),
)


class Reporter:
    """How the recipe tells its progress; the CLI shows rich progress bars."""

    def step(self, key: str, title: str, total: int | None) -> None: ...
    def advance(self, key: str, done: int, total: int | None, note: str = "") -> None: ...
    def finish(self, key: str, note: str) -> None: ...
    def skip(self, key: str, title: str, note: str) -> None: ...


Confirm = Callable[[str], Awaitable[bool]]


class Recipe:
    def __init__(
        self,
        store: Store,
        client: openai.AsyncOpenAI,
        settings: Settings,
        config: RecipeConfig,
        *,
        backend_kind: str,
        reporter: Reporter | None = None,
    ) -> None:
        self.store = store
        self.client = client
        self.settings = settings
        self.config = config
        self.backend_kind = backend_kind
        self.reporter = reporter or Reporter()
        self.state_path = store.directory / STATE_FILE
        self.state = RecipeState.load(self.state_path)
        self._checked = False

    # -- configuration resolved ------------------------------------------------------------

    @property
    def student(self) -> str:
        # On OpenAI the dated snapshot: fine-tuning needs it, and the baseline uses it too.
        model = self.config.student_model or self.settings.student
        return preflight.student_model(self.settings, self.backend_kind, model)

    @property
    def teacher(self) -> str:
        return self.config.teacher_model or self.settings.teacher

    @property
    def student_prompt(self) -> str:
        return self.config.student_prompt or STUDENT_PROMPT

    @property
    def teacher_prompt(self) -> str:
        return self.config.teacher_prompt or self.student_prompt

    @property
    def teacher_examples(self) -> int:
        if self.config.teacher_examples is not None:
            return self.config.teacher_examples
        return 10 if self.teacher == self.student else 0

    @property
    def concurrency(self) -> int:
        return self.config.concurrency or self.settings.concurrency

    def _save(self, step: str | None = None) -> None:
        if step and step not in self.state.finished:
            self.state.finished.append(step)
        self.state.save(self.state_path)

    def _done(self, step: str) -> bool:
        return step in self.state.finished

    # -- the dataset ---------------------------------------------------------------------

    def dataset_id(self) -> int:
        if self.state.dataset_id is not None:
            return self.state.dataset_id
        info = self.store.dataset_by_name(self.config.dataset)
        if info is None and self.config.dataset == GIT_DATASET_NAME:
            ensure_shipped_dataset(self.store)
            info = self.store.dataset_by_name(self.config.dataset)
        if info is None:
            names = ", ".join(d.name for d in self.store.list_datasets()) or "none"
            raise RecipeError(
                f"no dataset named {self.config.dataset!r} in the workspace (there are: {names})"
            )
        if info.n_eval == 0 or info.n_train == 0:
            raise RecipeError(
                f"dataset {info.name!r} needs a train/eval split (it has {info.n_train} train "
                f"and {info.n_eval} eval items): split it on the Dataset screen (s)"
            )
        self.state.dataset_id = info.id
        self._save()
        return info.id

    # -- estimates -------------------------------------------------------------------------

    def _spec(self, role: str) -> RunSpec:
        dataset = self.dataset_id()
        sampling = SamplingParams(
            max_tokens=self.config.max_tokens, temperature=self.config.temperature
        )
        task = {"task": self.config.dataset, "recipe": "distill-tui"}
        if role == "teacher":
            return RunSpec(
                dataset_id=dataset,
                model=self.teacher,
                role="teacher",
                system_prompt=self.teacher_prompt,
                split="train",
                params=sampling,
                metadata={**task, "role": "teacher"},
                retrieve_k=self.teacher_examples,
                name="recipe: teacher (train)",
            )
        model = self.student if role == "student" else (self.state.fine_tuned_model or "")
        return RunSpec(
            dataset_id=dataset,
            model=model,
            role=role,
            system_prompt=self.student_prompt,
            split="eval",
            params=sampling,
            metadata={**task, "role": role},
            name=f"recipe: {role} (eval)",
        )

    def estimates(self) -> list[tuple[str, Estimate]]:
        """Cost estimates of the generation steps still to run (for the confirmation)."""
        out = []
        for role, attr in (("student", "baseline_run"), ("teacher", "teacher_run")):
            run_id = getattr(self.state, attr)
            if run_id is None:
                run_id = create_run(self.store, self._spec(role))
                setattr(self.state, attr, run_id)
                self._save()
            model = self.student if role == "student" else self.teacher
            out.append((role, estimate_run(self.store, run_id, self.settings.price(model))))
        return out

    # -- running ---------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        try:
            return await self._run()
        except (FineTuneError, StoreError) as error:
            raise RecipeError(str(error)) from error

    async def _run(self) -> dict[str, Any]:
        self.dataset_id()
        await self.check_before_spending()
        await self._generate("baseline", "baseline_run", "student")
        await self._evaluate("baseline_eval", "baseline_run", "baseline_eval")
        await self._generate("teacher", "teacher_run", "teacher")
        training = self._training_file()
        await self._finetune(training)
        await self._generate("finetuned", "finetuned_run", "fine-tuned")
        await self._evaluate("finetuned_eval", "finetuned_run", "finetuned_eval")
        return self._compare()

    async def check_before_spending(self) -> None:
        """What the steps still to run need, checked before the first paid request (once)."""
        if self._checked:
            return
        todo = {key for key, _ in STEPS if not self._done(key)}
        models = {"student": self.student if todo & {"baseline", "finetune"} else ""}
        models["teacher"] = self.teacher if "teacher" in todo else ""
        fine_tune = "finetune" in todo and self.state.job_id is None
        problems = await preflight.check_before_spending(
            self.client,
            self.settings,
            self.backend_kind,
            models=models,
            fine_tune=self.student if fine_tune else None,
            dataset=self.store.get_dataset(self.dataset_id()) if fine_tune else None,
            validation_fraction=self.config.finetune.validation_fraction,
        )
        if problems:
            raise RecipeError("stopped before any paid request: " + "; ".join(problems))
        self._checked = True

    def _title(self, key: str) -> str:
        return dict(STEPS)[key]

    async def _generate(self, step: str, attr: str, role: str) -> None:
        if self._done(step):
            self.reporter.skip(step, self._title(step), f"run {getattr(self.state, attr)}")
            return
        run_id = getattr(self.state, attr)
        if run_id is None:
            run_id = create_run(self.store, self._spec(role))
            setattr(self.state, attr, run_id)
            self._save()
        total = len(self.store.run_items(run_id))
        self.reporter.step(step, self._title(step), total)
        model = self.store.get_run(run_id).model
        generator = Generator(
            self.store,
            self.client,
            concurrency=self.concurrency,
            max_retries=self.settings.max_retries,
            price=self.settings.price(model),
            store_completions=self.backend_kind in ("openai", "local"),
        )

        def progress(event: Event) -> None:
            stats = generator.stats
            if type(event).__name__ == "ItemFinished":
                self.reporter.advance(
                    step,
                    stats.done_before + stats.finished_items,
                    total,
                    f"{stats.tokens_per_second:.0f} tok/s",
                )

        finished = await generator.run(run_id, on_event=progress)
        if finished.status != "done":
            raise RecipeError(f"{self._title(step)}: {finished.message}")
        run = self.store.get_run(run_id)
        if run.n_done == 0:
            raise RecipeError(f"{self._title(step)}: no item succeeded ({run.n_failed} failed)")
        self.reporter.finish(step, f"{run.n_done} done, {run.n_failed} failed")
        self._save(step)

    def _eval_id(self) -> int:
        from tui.engine.evals import create_eval, update_eval

        existing = self.store.eval_by_name(self.config.eval_name)
        if existing is None:
            return create_eval(self.store, self.config.eval_name, self.config.graders)
        update_eval(self.store, existing.id, graders=self.config.graders)
        return existing.id

    async def _evaluate(self, step: str, run_attr: str, eval_attr: str) -> None:
        from tui.engine.evals import EvalRunner, start_eval_run

        if self._done(step):
            self.reporter.skip(
                step, self._title(step), f"eval run {getattr(self.state, eval_attr)}"
            )
            return
        run_id = getattr(self.state, run_attr)
        if self.state.eval_id is None:
            self.state.eval_id = self._eval_id()
            self._save()
        eval_run_id = getattr(self.state, eval_attr)
        if eval_run_id is None:
            eval_run_id = start_eval_run(self.store, self.state.eval_id, run_id=run_id)
            setattr(self.state, eval_attr, eval_run_id)
            self._save()
        self.reporter.step(step, self._title(step), None)
        runner = EvalRunner.from_settings(
            self.store, self.client, self.settings, concurrency=self.concurrency
        )
        finished = await runner.run(eval_run_id)
        if finished.status != "done":
            raise RecipeError(f"{self._title(step)}: {finished.message}")
        summary = ", ".join(
            f"{name} {r.pass_rate:.0%}" if r.pass_rate is not None else f"{name} n/a"
            for name, r in finished.results.items()
        )
        self.reporter.finish(step, summary)
        self._save(step)

    def _training_file(self) -> Any:
        step = "training_file"
        training = build_training_set(
            self.store,
            Source(run_id=self.state.teacher_run),
            system_prompt=self.student_prompt,
            validation_fraction=self.config.finetune.validation_fraction,
            seed=self.config.finetune.seed,
        )
        if self._done(step):
            self.reporter.skip(step, self._title(step), self.state.training_file or "")
            return training
        self.reporter.step(step, self._title(step), None)
        validation = validate_training_set(
            training,
            count=token_counter_for(self.backend_kind, self.student, self.settings.local_models),
            price=self.settings.price(self.student),
        )
        if not validation.ok:
            raise RecipeError(f"the training file has format errors: {validation.errors()}")
        path = self.store.exports_dir / "recipe-train.jsonl"
        path.write_bytes(training.jsonl("train"))
        self.state.training_file = str(path)
        note = f"{len(training.train)} train + {len(training.validation)} validation examples"
        if validation.warnings:
            note += "; " + "; ".join(validation.warnings)
        self.reporter.finish(step, note)
        self._save(step)
        return training

    async def _finetune(self, training: Any) -> None:
        step = "finetune"
        if self._done(step):
            self.reporter.skip(step, self._title(step), self.state.fine_tuned_model or "")
            return
        self.reporter.step(step, self._title(step), None)
        if self.state.job_id is None:
            c = self.config.finetune
            job = await launch_job(
                self.store,
                self.client,
                training,
                base_model=self.student,
                hyperparameters=Hyperparameters(
                    c.n_epochs, c.batch_size, c.learning_rate_multiplier
                ),
                suffix=c.suffix,
                seed=c.seed,
            )
            self.state.job_id = job.id
            self._save()

        def progress(update: JobUpdate) -> None:
            steps = [e.metrics for e in update.new_events if e.metrics]
            if steps:
                last = steps[-1] or {}
                self.reporter.advance(
                    step,
                    int(last.get("step", 0)),
                    last.get("total_steps"),
                    f"train loss {last.get('train_loss', float('nan')):.3f}",
                )

        job = await JobWatcher(self.store, self.client).watch(self.state.job_id, progress)
        if job.status != "succeeded" or not job.fine_tuned_model:
            # Forget the failed job so a re-run starts a new one.
            self.state.job_id = None
            self._save()
            raise RecipeError(f"the fine-tuning job {job.remote_id} {job.status}: {job.error}")
        self.state.fine_tuned_model = job.fine_tuned_model
        self.reporter.finish(step, job.fine_tuned_model)
        self._save(step)

    def _compare(self) -> dict[str, Any]:
        from tui.engine.evals import compare

        self.reporter.step("compare", self._title("compare"), None)
        assert self.state.eval_id is not None
        assert self.state.baseline_run is not None and self.state.finetuned_run is not None
        comparison = compare(
            self.store,
            self.state.eval_id,
            [self.state.baseline_run, self.state.finetuned_run],
            self.state.baseline_run,
            price=self.settings.price,
        )
        names = {
            self.state.baseline_run: "baseline student",
            self.state.finetuned_run: "fine-tuned student",
        }
        rows = []
        for column in comparison.runs:
            row: dict[str, Any] = {
                "run": names.get(column.run_id, column.label),
                "model": column.model,
            }
            for grader in comparison.graders:
                rate = column.pass_rates.get(grader)
                summary = column.results.get(grader)
                delta = column.deltas.get(grader)
                cell = "n/a" if rate is None else f"{rate:.1%}"
                if summary is not None:
                    cell += f" ({summary.passed}/{summary.passed + summary.failed})"
                if delta is not None:
                    cell += f" {delta * 100:+.1f} pts"
                row[grader] = cell
            row["mean latency"] = (
                f"{column.mean_latency_ms:.0f} ms" if column.mean_latency_ms else "n/a"
            )
            row["tokens"] = f"{column.prompt_tokens + column.completion_tokens:,}"
            row["cost"] = f"${column.cost:.4f}" if column.priced else "unpriced"
            rows.append(row)
        report: dict[str, Any] = {
            "eval": comparison.eval_name,
            "graders": comparison.graders,
            "rows": rows,
            "pass_rates": {names.get(c.run_id, c.label): c.pass_rates for c in comparison.runs},
            "improvements": len(comparison.rows("improvements")),
            "regressions": len(comparison.rows("regressions")),
            "items": len(comparison.items),
        }
        report["models"] = {
            "student": self.student,
            "teacher": self.teacher,
            "fine_tuned": self.state.fine_tuned_model,
        }
        report["teacher_examples"] = self.teacher_examples
        report["created_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        self.state.report = report
        reports = self.store.directory / "reports"
        reports.mkdir(exist_ok=True)
        (reports / "recipe.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
        (reports / "recipe.md").write_text(report_markdown(report), encoding="utf-8")
        self.reporter.finish("compare", str(reports / "recipe.md"))
        self._save("compare")
        return report


def report_markdown(report: dict[str, Any]) -> str:
    lines = ["# distill-tui recipe: comparison", ""]
    models = report.get("models", {})
    lines.append(
        f"Student `{models.get('student')}`, teacher `{models.get('teacher')}` "
        f"(with {report.get('teacher_examples', 0)} retrieved examples), fine-tuned "
        f"`{models.get('fine_tuned')}`."
    )
    lines.append("")
    lines.append(
        f"Eval `{report.get('eval')}` on {report.get('items')} eval-split items: "
        f"{report.get('improvements')} improved, {report.get('regressions')} regressed."
    )
    lines.append("")
    rows = report.get("rows", [])
    if rows:
        headers = list(rows[0].keys())
        lines.append("| " + " | ".join(headers) + " |")
        lines.append("|" + "---|" * len(headers))
        for row in rows:
            lines.append("| " + " | ".join(str(row[h]) for h in headers) + " |")
    return "\n".join(lines) + "\n"


def ensure_known_state(store: Store) -> None:
    """Refuse a state file that points at runs that no longer exist."""
    state = RecipeState.load(store.directory / STATE_FILE)
    for run_id in (state.baseline_run, state.teacher_run, state.finetuned_run):
        if run_id is not None:
            try:
                store.get_run(run_id)
            except StoreError as error:
                raise RecipeError(
                    f"the recipe's saved state names run {run_id}, which is gone; delete "
                    f"{store.directory / STATE_FILE} to start over"
                ) from error


# -- where a dataset stands in the recipe (the TUI's Recipe view) ----------------------------


@dataclass(frozen=True)
class StepStatus:
    number: int
    title: str
    done: bool
    detail: str
    screen: str  # the mode that does this step


def recipe_progress(store: Store, dataset_id: int | None, settings: Settings) -> list[StepStatus]:
    """The seven steps for a dataset, each done or not, read from the workspace."""
    dataset = store.get_dataset(dataset_id) if dataset_id is not None else None
    runs = store.list_runs(dataset_id) if dataset_id is not None else []
    jobs = [j for j in store.list_jobs() if j.status == "succeeded" and j.fine_tuned_model]
    ft_models = {j.fine_tuned_model for j in jobs}

    def finished(run: Any) -> bool:
        return bool(run.n_done)

    def evaluated(run: Any) -> bool:
        return any(er.status == "done" for er in store.list_eval_runs(run_id=run.id))

    students = [r for r in runs if finished(r) and r.model not in ft_models and r.role != "teacher"]
    teachers = [r for r in runs if finished(r) and r.role == "teacher"]
    tuned = [r for r in runs if finished(r) and r.model in ft_models]
    split_ok = dataset is not None and dataset.n_train > 0 and dataset.n_eval > 0
    steps = [
        StepStatus(
            1,
            "Choose the teacher and the student",
            True,
            f"teacher {settings.teacher}, student {settings.student}",
            "settings",
        ),
        StepStatus(
            2,
            "Prepare the dataset (requests, references, train/eval split)",
            split_ok,
            (
                f"{dataset.name}: {dataset.n_items} items, {dataset.n_train} train, "
                f"{dataset.n_eval} eval"
                if dataset
                else "no dataset"
            ),
            "dataset",
        ),
        StepStatus(
            3,
            "Generate the student's outputs (baseline)",
            bool(students),
            f"{len(students)} run(s)" if students else "run the student on the eval split",
            "generate",
        ),
        StepStatus(
            4,
            "Evaluate the student",
            any(evaluated(r) for r in students),
            "graded" if any(evaluated(r) for r in students) else "run an eval on that run",
            "evals",
        ),
        StepStatus(
            5,
            "Generate the teacher's outputs",
            bool(teachers),
            f"{len(teachers)} run(s)" if teachers else "run the teacher on the train split",
            "generate",
        ),
        StepStatus(
            6,
            "Fine-tune the student on the teacher's outputs",
            bool(jobs),
            jobs[0].fine_tuned_model or "" if jobs else "build the training file and launch",
            "finetune",
        ),
        StepStatus(
            7,
            "Evaluate the fine-tuned student and compare",
            any(evaluated(r) for r in tuned),
            "compare it with the baseline" if tuned else "generate with the fine-tuned model",
            "compare",
        ),
    ]
    return steps
