"""The Generate screen: steps 3 and 5 of the recipe (and 7, with the fine-tuned student).

Left, the form: dataset, split, role, model, system prompt, sampling, metadata, few-shot
retrieval, budget, and the estimate of what the run will cost. Right, the live view: the
dataset's runs, the items of the run on view with their status, the text of one item as it
streams, and a progress line.

With 64 replies streaming at once the engine reports thousands of tokens a second. Its events
only write into `LiveRun` (dict and list operations); a timer redraws the table, the stream
panel and the progress line 15 times a second, and only when something changed."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import openai
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.suggester import SuggestFromList
from textual.timer import Timer
from textual.widget import Widget
from textual.widgets import Button, Input, Label, Select, Static, TextArea

from screens.base import DistillScreen
from tui.engine.generation import (
    Estimate,
    Event,
    Generator,
    ItemDelta,
    ItemFinished,
    ItemRetry,
    ItemStarted,
    RunFinished,
    RunStats,
    cost_of,
    create_run,
    estimate_spec,
)
from tui.engine.run_form import (
    ROLES,
    SPLIT_CHOICES,
    FormError,
    RunForm,
    default_metadata,
    format_metadata,
    latest_fine_tuned_model,
    run_size,
)
from tui.engine.store import CompletionRow, DatasetInfo, Item, RunInfo, StoreError
from tui.widgets.virtual_table import Column, VirtualTable

REPAINT_HZ = 15

ITEM_COLUMNS = (
    Column("#", width=5, justify="right"),
    Column("Status", width=9),
    Column("Request", weight=2),
    Column("Output / error", weight=3),
    Column("Tok", width=5, justify="right"),
    Column("ms", width=6, justify="right"),
)
RUN_COLUMNS = (
    Column("Run", width=4, justify="right"),
    Column("Model", weight=2),
    Column("Role", width=10),
    Column("Split", width=5),
    Column("Status", width=11),
    Column("Done", width=5, justify="right"),
    Column("Fail", width=4, justify="right"),
    Column("Items", width=5, justify="right"),
)
# Form fields whose errors can be pointed at: FormError.field → widget id.
FIELD_IDS = {
    "dataset": "dataset",
    "model": "model",
    "split": "split",
    "temperature": "temperature",
    "max_tokens": "max-tokens",
    "seed": "seed",
    "metadata": "metadata",
    "few_shot": "few-shot",
    "budget": "budget",
}


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class LiveRun:
    """The run on view: its items and what is known of each. Engine events write here and
    nothing else happens per event; the screen reads it when it repaints."""

    def __init__(self, run: RunInfo, items: list[Item], completions: list[CompletionRow]) -> None:
        self.run = run
        self.items = items
        self.row_of = {item.id: row for row, item in enumerate(items)}
        self.status: dict[int, str] = {}
        self.text: dict[int, list[str]] = {}
        self.error: dict[int, str] = {}
        self.tokens: dict[int, int] = {}
        self.latency: dict[int, float] = {}
        self.streaming: dict[int, None] = {}  # items streaming now, in the order they started
        self.idle = "pending"  # what an item with no completion shows: "queued" while running
        self.version = 0  # bumped by every change; the screen repaints when it moved
        self.finished: RunFinished | None = None
        self.prompt_tokens = self.completion_tokens = 0
        for c in completions:
            self.status[c.item_id] = c.status
            self.text[c.item_id] = [c.output]
            if c.error:
                self.error[c.item_id] = c.error
            if c.completion_tokens is not None:
                self.tokens[c.item_id] = c.completion_tokens
            if c.latency_ms is not None:
                self.latency[c.item_id] = c.latency_ms
            self.prompt_tokens += c.prompt_tokens or 0
            self.completion_tokens += c.completion_tokens or 0

    def on_event(self, event: Event) -> None:
        if isinstance(event, ItemDelta):
            self.text[event.item_id].append(event.text)
        elif isinstance(event, ItemStarted):
            self.status[event.item_id] = "streaming"
            self.text[event.item_id] = []  # a retry streams from the start again
            self.streaming[event.item_id] = None
        elif isinstance(event, ItemRetry):
            self.status[event.item_id] = "retrying"
            self.error[event.item_id] = (
                f"{event.error} · attempt {event.attempt}, retrying in {event.delay:.1f} s"
            )
            self.streaming.pop(event.item_id, None)
        elif isinstance(event, ItemFinished):
            item_id = event.item_id
            self.status[item_id] = event.status
            self.text[item_id] = [event.output]
            if event.error:
                self.error[item_id] = event.error
            else:
                self.error.pop(item_id, None)
            if event.completion_tokens is not None:
                self.tokens[item_id] = event.completion_tokens
            if event.latency_ms is not None:
                self.latency[item_id] = event.latency_ms
            self.streaming.pop(item_id, None)
        elif isinstance(event, RunFinished):
            self.finished = event
            self.idle = "pending"
        self.version += 1

    def status_of(self, item_id: int) -> str:
        return self.status.get(item_id, self.idle)

    def output_of(self, item_id: int) -> str:
        status = self.status_of(item_id)
        if status in ("failed", "retrying"):
            return self.error.get(item_id, "")
        parts = self.text.get(item_id)
        if not parts:
            return ""
        if len(parts) > 1:
            # Joined once here and kept joined, so a long stream is not re-joined per paint.
            parts[:] = ["".join(parts)]
        return parts[0]

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for item in self.items:
            status = self.status_of(item.id)
            counts[status] = counts.get(status, 0) + 1
        return counts


class _Rows(Sequence[tuple[str, ...]]):
    """The item table's rows, computed when drawn: only the visible ones ever are."""

    def __init__(self, live: LiveRun) -> None:
        self.live = live

    def __len__(self) -> int:
        return len(self.live.items)

    def __getitem__(self, index: Any) -> Any:
        live = self.live
        item = live.items[index]
        tokens = live.tokens.get(item.id)
        latency = live.latency.get(item.id)
        return (
            str(item.position),
            live.status_of(item.id),
            item.input,
            live.output_of(item.id),
            "" if tokens is None else str(tokens),
            "" if latency is None else f"{latency:.0f}",
        )


class GenerateScreen(DistillScreen):
    CSS_PATH = "generate.tcss"
    BINDINGS = [
        Binding("ctrl+s", "start", "Start", id="generate.start"),
        Binding("ctrl+r", "resume", "Resume run", id="generate.resume"),
        Binding("escape", "cancel_run", "Cancel run", id="generate.cancel"),
        Binding("f", "follow", "Follow latest", id="generate.follow"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.datasets: list[DatasetInfo] = []
        self.runs: list[RunInfo] = []
        self.live: LiveRun | None = None
        self.generator: Generator | None = None
        self.stats: RunStats | None = None  # of the last generator, kept after it ends
        self.models: list[str] = []
        self.follow = True
        self._followed: int | None = None
        self._painted = -1
        self._stream_key: tuple[Any, ...] = ()
        self._progress_text = ""
        self._estimate_timer: Timer | None = None
        self._dataset_options: list[tuple[str, int]] = []
        self._skip_highlights = 0  # cursor moves made by code, not by the user
        self._ticks = 0
        # What the form's defaults were, to replace them (and only them) when inputs change.
        self._default_model = ""
        self._default_prompt = ""
        self._default_metadata = ""

    # -- layout --------------------------------------------------------------------------

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="generate"):
            with Vertical(id="gen-left"):
                with VerticalScroll(id="gen-form"):
                    yield from self._field("Dataset", Select[int]([], id="dataset", compact=True))
                    yield from self._field(
                        "Split",
                        Select(
                            [(s, s) for s in SPLIT_CHOICES],
                            value="all",
                            allow_blank=False,
                            id="split",
                            compact=True,
                        ),
                    )
                    yield from self._field(
                        "Role",
                        Select(
                            [(r, r) for r in ROLES],
                            value="student",
                            allow_blank=False,
                            id="role",
                            compact=True,
                        ),
                    )
                    yield from self._field(
                        "Model", Input(placeholder="model name", id="model", compact=True)
                    )
                    yield from self._field(
                        "",
                        Select[str]([], id="models", prompt="backend not connected", compact=True),
                    )
                    yield Label("System prompt", classes="field-label")
                    yield TextArea(id="system-prompt", compact=True)
                    yield from self._field(
                        "Temperature",
                        Input(placeholder="default", id="temperature", compact=True),
                    )
                    yield from self._field(
                        "Max tokens",
                        Input(placeholder="default", id="max-tokens", compact=True),
                    )
                    yield from self._field(
                        "Seed", Input(placeholder="none", id="seed", compact=True)
                    )
                    yield from self._field(
                        "Metadata", Input(placeholder="key=value …", id="metadata", compact=True)
                    )
                    yield from self._field(
                        "Few-shot k", Input("0", id="few-shot", compact=True, type="integer")
                    )
                    yield from self._field(
                        "Budget $", Input(placeholder="no cap", id="budget", compact=True)
                    )
                yield Static("", id="estimate")
                with Horizontal(id="gen-buttons"):
                    yield Button("Start ^s", id="start", variant="primary", compact=True)
                    yield Button("Resume ^r", id="resume", compact=True)
                    yield Button("Cancel esc", id="cancel", variant="error", compact=True)
            with Vertical(id="gen-live"):
                yield Label("Runs", id="runs-title")
                yield VirtualTable(RUN_COLUMNS, id="runs")
                yield Static("", id="run-title")
                yield VirtualTable(ITEM_COLUMNS, flagged=self._row_flagged, id="items")
                with VerticalScroll(id="stream"):
                    yield Static("", id="stream-text", markup=False)
                yield Static("", id="progress")

    @staticmethod
    def _field(label: str, widget: Widget) -> ComposeResult:
        with Horizontal(classes="field"):
            yield Label(label)
            yield widget

    def on_mount(self) -> None:
        self.sub_title = "Generate"
        self.query_one("#cancel").display = False
        self.query_one("#stream", VerticalScroll).border_title = "Stream"
        self._load_datasets()
        self.set_interval(1 / REPAINT_HZ, self._repaint)
        self.watch(self.app, "backend_label", self._backend_changed)
        # Not a text box: the number keys that switch screens must keep working on arrival.
        self.runs_table.focus()

    def on_screen_resume(self) -> None:
        if self.generator is None:
            self._load_datasets()
            self._load_runs()
        if not self.models:
            self._backend_changed()

    def palette_commands(self) -> Iterable[SystemCommand]:
        for binding in self.BINDINGS:
            if isinstance(binding, Binding) and self.check_action(binding.action, ()):
                yield SystemCommand(
                    f"Generate: {binding.description}",
                    f"key {binding.key}",
                    lambda action=binding.action: self.run_action(action),
                )

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "cancel_run":
            # Not running: esc falls through to the app's "back".
            return self.generator is not None
        if action == "follow":
            return self.live is not None
        return True

    # -- the form ------------------------------------------------------------------------

    @property
    def dataset(self) -> DatasetInfo | None:
        value = self.query_one("#dataset", Select).value
        return next((d for d in self.datasets if d.id == value), None)

    def _load_datasets(self) -> None:
        store = self.distill.store
        self.datasets = store.list_datasets()
        select = self.query_one("#dataset", Select)
        current = select.value
        options = [(f"{d.name} ({d.n_items:,})", d.id) for d in self.datasets]
        if options == self._dataset_options:
            return
        self._dataset_options = options
        # Text, not markup: a dataset may be called "ops [b]".
        select.set_options([(Text(label), value) for label, value in options])
        ids = [d.id for d in self.datasets]
        preferred = getattr(self.distill, "current_dataset_id", None)
        if isinstance(current, int) and current in ids:
            select.value = current
        elif preferred in ids:
            select.value = preferred
        elif ids:
            select.value = ids[0]

    def _apply_defaults(self) -> None:
        """Fill the prompt, model and metadata from the dataset and role, unless edited."""
        dataset = self.dataset
        role = str(self.query_one("#role", Select).value)
        prompt = self.query_one("#system-prompt", TextArea)
        new_prompt = dataset.system_prompt if dataset else ""
        if prompt.text in ("", self._default_prompt) and prompt.text != new_prompt:
            prompt.text = new_prompt
        self._default_prompt = new_prompt
        model = self.query_one("#model", Input)
        new_model = self._model_for(role)
        if model.value in ("", self._default_model):
            model.value = new_model
        self._default_model = new_model
        metadata = self.query_one("#metadata", Input)
        new_metadata = format_metadata(default_metadata(dataset.name if dataset else "", role))
        if metadata.value in ("", self._default_metadata):
            metadata.value = new_metadata
        self._default_metadata = new_metadata

    def _model_for(self, role: str) -> str:
        settings = self.distill.settings
        if role == "teacher":
            return settings.teacher
        if role == "fine-tuned":
            return latest_fine_tuned_model(self.distill.store) or ""
        return settings.student

    def prefill(self, *, model: str, role: str, system_prompt: str | None = None) -> None:
        """Set up the form for a given model (the Fine-tune screen's "generate with it")."""
        self.query_one("#role", Select).value = role
        self.query_one("#model", Input).value = model
        if system_prompt:
            self.query_one("#system-prompt", TextArea).text = system_prompt
        self._schedule_estimate()

    @on(Select.Changed, "#dataset")
    def _dataset_changed(self) -> None:
        dataset = self.dataset
        if dataset is not None:
            split = self.query_one("#split", Select)
            chosen = split.value
            split.set_options(
                [
                    (f"all ({dataset.n_items:,})", "all"),
                    (f"train ({dataset.n_train:,})", "train"),
                    (f"eval ({dataset.n_eval:,})", "eval"),
                ]
            )
            split.value = chosen if chosen in SPLIT_CHOICES else "all"
        self._apply_defaults()
        self._load_runs(view_latest=True)
        self._schedule_estimate()

    @on(Select.Changed, "#role")
    def _role_changed(self) -> None:
        self._apply_defaults()
        self._schedule_estimate()

    @on(Select.Changed, "#models")
    def _model_picked(self, event: Select.Changed) -> None:
        if isinstance(event.value, str):
            self.query_one("#model", Input).value = event.value

    @on(Select.Changed, "#split")
    @on(Input.Changed)
    @on(TextArea.Changed)
    def _form_changed(self) -> None:
        self._schedule_estimate()

    def read_form(self) -> RunForm:
        dataset = self.dataset

        def value(widget_id: str) -> str:
            return self.query_one(f"#{widget_id}", Input).value

        return RunForm(
            dataset_id=dataset.id if dataset else None,
            model=value("model"),
            role=str(self.query_one("#role", Select).value),
            split=str(self.query_one("#split", Select).value),
            system_prompt=self.query_one("#system-prompt", TextArea).text,
            temperature=value("temperature"),
            max_tokens=value("max-tokens"),
            seed=value("seed"),
            metadata=value("metadata"),
            retrieve_k=value("few-shot"),
            budget=value("budget"),
        )

    def _schedule_estimate(self) -> None:
        if self._estimate_timer is not None:
            self._estimate_timer.stop()
        self._estimate_timer = self.set_timer(0.25, self._estimate)

    @work(exclusive=True, group="estimate", exit_on_error=False)
    async def _estimate(self) -> None:
        line = self.query_one("#estimate", Static)
        try:
            spec = self.read_form().to_spec()
        except FormError as error:
            line.update(Text(str(error), style="red"))
            return
        store = self.distill.store
        price = self.distill.settings.price(spec.model)
        try:
            estimate = await store.in_thread(estimate_spec, store, spec, price)
        except StoreError as error:
            line.update(Text(str(error), style="red"))
            return
        line.update(self._estimate_text(estimate))

    def _estimate_text(self, estimate: Estimate) -> Text:
        text = Text("Estimate ", style="bold")
        text.append(
            f"{estimate.items:,} items · ≈{estimate.prompt_tokens:,} prompt + "
            f"{estimate.completion_tokens:,} completion tokens · "
        )
        if estimate.priced:
            text.append(f"≈${estimate.cost:,.4f}", style="bold")
        elif self._backend_kind() == "local":
            text.append("free (local)")
        else:
            text.append("unpriced", style="yellow")
        return text

    def _backend_kind(self) -> str:
        backend = self.distill.backend
        return backend.spec.kind if backend is not None else self.distill.settings.backend_kind()

    # -- models at the backend -----------------------------------------------------------

    def _backend_changed(self) -> None:
        if self.distill.backend is not None and not self.models:
            self._load_models()

    @work(exclusive=True, group="models", exit_on_error=False)
    async def _load_models(self) -> None:
        backend = self.distill.backend
        if backend is None:
            return
        select = self.query_one("#models", Select)
        try:
            page = await backend.client.models.list()
        except openai.OpenAIError as error:
            select.prompt = "could not list models"
            self.notify(
                f"{error}",
                title="Listing the backend's models failed",
                severity="warning",
                markup=False,
            )
            return
        self.models = sorted(model.id for model in page.data)
        select.prompt = f"pick one of {len(self.models)} models"
        select.set_options([(Text(m), m) for m in self.models])
        self.query_one("#model", Input).suggester = SuggestFromList(
            self.models, case_sensitive=False
        )

    # -- runs ----------------------------------------------------------------------------

    @property
    def runs_table(self) -> VirtualTable:
        return self.query_one("#runs", VirtualTable)

    @property
    def items_table(self) -> VirtualTable:
        return self.query_one("#items", VirtualTable)

    def _load_runs(self, *, view_latest: bool = False) -> None:
        dataset = self.dataset
        store = self.distill.store
        self.runs = store.list_runs(dataset.id) if dataset else []
        self._show_runs(keep_cursor=not view_latest)
        title = Text(f"Runs of {dataset.name}" if dataset else "Runs", style="bold")
        title.append(f" ({len(self.runs)})  ")
        title.append("^r resumes the highlighted one", style="dim")
        self.query_one("#runs-title", Label).update(title)
        if view_latest and self.generator is None:
            if self.runs:
                self._view_run(self.runs[0].id)
            else:
                self._clear_view()

    def _show_runs(self, *, keep_cursor: bool = True) -> None:
        """The runs table; the running one's counts come from the engine, not the store."""
        dataset = self.dataset
        generator, live = self.generator, self.live
        active = live.run.id if live is not None and generator is not None else None
        rows = []
        for run in self.runs:
            status, done, failed = run.status, run.n_done, run.n_failed
            if run.id == active and generator is not None:
                stats = generator.stats
                status, done, failed = "running", stats.done_before + stats.done, stats.failed
            elif status == "running":
                status = "interrupted"  # marked running by a session that ended mid-run
            size = run_size(run, dataset)
            rows.append(
                (
                    str(run.id),
                    run.model,
                    run.role,
                    run.split or "all",
                    status,
                    str(done),
                    str(failed),
                    "" if size is None else str(size),
                )
            )
        self.runs_table.set_rows(rows, keep_cursor=keep_cursor)

    def selected_run(self) -> RunInfo | None:
        cursor = self.runs_table.cursor
        return self.runs[cursor] if 0 <= cursor < len(self.runs) else None

    @on(VirtualTable.Highlighted, "#runs")
    def _run_highlighted(self) -> None:
        run = self.selected_run()
        if run is None or self.generator is not None or not self.runs_table.has_focus:
            return
        if self.live is None or self.live.run.id != run.id:
            self._view_run(run.id)

    @on(VirtualTable.Selected, "#runs")
    def _run_selected(self) -> None:
        self.items_table.focus()

    def _view_run(self, run_id: int) -> None:
        store = self.distill.store
        run = store.get_run(run_id)
        live = LiveRun(run, store.run_items(run_id), store.completions(run_id))
        self.live = live
        self.stats = None
        self._followed = None
        self.follow = True
        self._painted = -1
        self._stream_key = ()
        if live.items:
            self._skip_highlights += 1
        self.items_table.set_rows(_Rows(live), keep_cursor=False)
        parts = [f"run {run.id}", run.model]
        if run.role:
            parts.append(run.role)
        parts.append(run.split or "all items")
        if run.metadata:
            parts.append(format_metadata(run.metadata))
        self.query_one("#run-title", Static).update(Text(" · ".join(parts), style="bold"))
        self.refresh_bindings()
        self._repaint()

    def _clear_view(self) -> None:
        self.live = None
        self.items_table.set_rows([])
        self.query_one("#run-title", Static).update(
            Text("No runs of this dataset yet: fill in the form and start one (ctrl+s).")
        )
        self.query_one("#stream-text", Static).update("")
        self.query_one("#progress", Static).update("")
        self.refresh_bindings()

    # -- start, resume, cancel -----------------------------------------------------------

    async def action_start(self) -> None:
        if self._busy():
            return
        form = self.read_form()
        try:
            spec = form.to_spec()
            budget = form.budget_cap()
        except FormError as error:
            self._form_error(error)
            return
        store = self.distill.store
        run_id = await store.in_thread(create_run, store, spec)
        self._load_runs()
        self.runs_table.cursor = 0
        self._begin(run_id, budget)

    async def action_resume(self) -> None:
        if self._busy():
            return
        run = self.selected_run()
        if run is None:
            self.notify("No run to resume: pick one in the runs table.", severity="warning")
            return
        store = self.distill.store
        pending = await store.in_thread(store.pending_items, run.id)
        if not pending:
            self.notify(f"Run {run.id} has nothing left to generate: every item is done.")
            return
        try:
            budget = self.read_form().budget_cap()
        except FormError as error:
            self._form_error(error)
            return
        self._begin(run.id, budget)

    def _busy(self) -> bool:
        if self.generator is not None:
            self.notify("A run is going: esc cancels it first.", severity="warning")
            return True
        if self.distill.backend is None:
            self.notify(
                "The backend is not connected yet (see the status line).", severity="warning"
            )
            return True
        return False

    def _form_error(self, error: FormError) -> None:
        self.notify(str(error), title="Not started", severity="error", markup=False)
        widget_id = FIELD_IDS.get(error.field)
        if widget_id:
            self.query_one(f"#{widget_id}").focus()

    def _begin(self, run_id: int, budget: float | None) -> None:
        backend = self.distill.backend
        assert backend is not None
        settings = self.distill.settings
        run = self.distill.store.get_run(run_id)
        self.generator = Generator(
            self.distill.store,
            backend.client,
            concurrency=settings.concurrency,
            max_retries=settings.max_retries,
            price=settings.price(run.model),
            budget=budget,
            # Stored completions (and their metadata) exist on OpenAI and the local backend.
            store_completions=backend.spec.kind in ("openai", "local"),
        )
        self._view_run(run_id)
        assert self.live is not None
        self.live.idle = "queued"
        self._set_running(True)
        self._generate(self.generator, self.live)

    @work(exclusive=True, group="generate", exit_on_error=False)
    async def _generate(self, generator: Generator, live: LiveRun) -> None:
        try:
            finished = await generator.run(live.run.id, on_event=live.on_event)
        finally:
            self.stats = generator.stats
            self.generator = None
            if self.is_mounted:
                self._set_running(False)
                self._load_runs()
                self._painted = -1
        self._report(finished)

    def _report(self, finished: RunFinished) -> None:
        title = f"Run {finished.run_id}"
        if finished.status == "failed":
            message = finished.message
            if "HTTP 401" in message or "HTTP 403" in message:
                message += (
                    "\nThe backend refused the request: check the API key (OPENAI_API_KEY or "
                    "DISTILL_API_KEY) and that it may use this model."
                )
            self.notify(
                message, title=f"{title} stopped", severity="error", timeout=15, markup=False
            )
        elif finished.status == "budget":
            self.notify(
                finished.message, title=f"{title} stopped", severity="warning", markup=False
            )
        elif finished.status == "cancelled":
            self.notify(
                "In-flight items were recorded as cancelled; ctrl+r resumes the rest.",
                title=f"{title} cancelled",
            )
        else:
            self.notify(finished.message, title=f"{title} finished", markup=False)

    def _set_running(self, running: bool) -> None:
        self.query_one("#gen-form").disabled = running
        self.query_one("#start", Button).disabled = running
        self.query_one("#resume", Button).disabled = running
        self.query_one("#cancel").display = running
        if running:
            self.items_table.focus()
        self.refresh_bindings()

    def action_cancel_run(self) -> None:
        if self.generator is not None:
            self.generator.cancel()
            self.query_one("#cancel", Button).disabled = True

    def action_follow(self) -> None:
        self.follow = True
        self._followed = None
        self._stream_key = ()
        self.notify("The stream panel follows the latest reply.", timeout=2)

    @on(Button.Pressed, "#start")
    async def _start_pressed(self) -> None:
        await self.action_start()

    @on(Button.Pressed, "#resume")
    async def _resume_pressed(self) -> None:
        await self.action_resume()

    @on(Button.Pressed, "#cancel")
    def _cancel_pressed(self) -> None:
        self.action_cancel_run()

    # -- the live view -------------------------------------------------------------------

    def _row_flagged(self, row: int) -> bool:
        live = self.live
        if live is None or row >= len(live.items):
            return False
        return live.status_of(live.items[row].id) in ("failed", "cancelled", "retrying")

    @on(VirtualTable.Highlighted, "#items")
    def _item_highlighted(self) -> None:
        # Moving the cursor by hand pins the stream panel to that item; f follows again.
        if self._skip_highlights:
            self._skip_highlights -= 1
            return
        if self.items_table.has_focus:
            self.follow = False
            self._repaint()

    def _shown_item(self) -> Item | None:
        live = self.live
        if live is None or not live.items:
            return None
        if not self.follow:
            cursor = self.items_table.cursor
            return live.items[cursor] if cursor < len(live.items) else None
        # Stay on one reply until it ends, then take the one that started last: readable
        # even with 64 streams, where "the latest delta" would jump 64 times a second.
        followed = self._followed
        if (followed is None or followed not in live.streaming) and live.streaming:
            # The latest that has begun to answer (a new batch starts with no text yet).
            candidates = list(reversed(live.streaming))
            followed = next((i for i in candidates[:64] if live.text.get(i)), candidates[0])
        if followed is None:
            return live.items[self.items_table.cursor]
        self._followed = followed
        return live.items[live.row_of[followed]]

    def _repaint(self) -> None:
        """The only place the live view is drawn (15 times a second at most)."""
        live = self.live
        if live is None:
            return
        if live.version != self._painted:
            self._painted = live.version
            self.items_table.refresh()
            self._paint_stream(live)
        self._paint_progress(live)
        if self.generator is not None and self._ticks % REPAINT_HZ == 0:
            self._show_runs()  # once a second: the running run's counts
        self._ticks += 1

    def _paint_stream(self, live: LiveRun) -> None:
        item = self._shown_item()
        if item is None:
            return
        status = live.status_of(item.id)
        output = live.output_of(item.id)
        key = (item.id, status, len(output))
        if key == self._stream_key:
            return
        self._stream_key = key
        panel = self.query_one("#stream", VerticalScroll)
        mode = "following" if self.follow else "selected"
        panel.border_title = f"#{item.position} · {status} · {mode}"
        body = output
        if status in ("failed", "retrying"):
            body = live.error.get(item.id, "")
        panel.border_subtitle = item.input[:60]
        if not body:
            body = {
                "streaming": "… (waiting for the first token)",
                "cancelled": "(cancelled before the reply finished)",
                "pending": "(not generated yet)",
                "queued": "(queued)",
            }.get(status, "(empty reply)")
        self.query_one("#stream-text", Static).update(body)
        panel.scroll_end(animate=False)

    def _paint_progress(self, live: LiveRun) -> None:
        text = self._progress(live)
        if text != self._progress_text:
            self._progress_text = text
            self.query_one("#progress", Static).update(text)

    def _progress(self, live: LiveRun) -> str:
        total = len(live.items)
        stats: RunStats | None = None
        if self.generator is not None:
            stats = self.generator.stats  # replaced by the generator when its run starts
        elif live.finished is not None:
            stats = self.stats
        if stats is not None:
            done = stats.done_before + stats.done
            failed, cancelled, streaming = stats.failed, stats.cancelled, stats.in_flight
        else:
            counts = live.counts()
            done = counts.get("done", 0)
            failed, cancelled, streaming = counts.get("failed", 0), counts.get("cancelled", 0), 0
        width = 12
        filled = int(width * done / total) if total else 0
        bar = f"[green]{'━' * filled}[/green][dim]{'━' * (width - filled)}[/dim]"
        parts = [f"{bar} [b]{done:,}[/b]/{total:,} done"]
        if failed:
            parts.append(f"[red]{failed:,} failed[/red]")
        if cancelled:
            parts.append(f"[yellow]{cancelled:,} cancelled[/yellow]")
        if streaming:
            parts.append(f"{streaming} streaming")
        price = self.distill.settings.price(live.run.model)
        if stats is not None:
            parts += [f"{stats.tokens_per_second:,.0f} tok/s", _clock(stats.elapsed)]
            if self.generator is not None:
                parts.append(f"ETA {_clock(stats.eta)}")
            cost = stats.cost
        else:
            cost = cost_of(price, live.prompt_tokens, live.completion_tokens)
        if price.input or price.output:
            parts.append(f"${cost:,.4f}")
        elif self._backend_kind() == "local":
            parts.append("free (local)")
        else:
            parts.append("unpriced")
        if self.generator is None:
            status = live.finished.status if live.finished else live.run.status
            if status == "running":
                status = "interrupted"  # no generator here: a session ended mid-run
            parts.append(f"[b]{status}[/b]")
        return " · ".join(parts)
