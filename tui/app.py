"""DistillApp: the screens of the recipe, app-wide keys, the command palette. Kept thin:
each screen lives in its own module under screens/."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from textual import on, work
from textual.app import App, ScreenStackError, SystemCommand
from textual.binding import Binding
from textual.reactive import reactive
from textual.screen import Screen
from textual.worker import Worker, WorkerState

from screens.base import DistillScreen, JobEnded
from tui.engine.settings import Settings
from tui.engine.store import JobInfo, Store
from tui.screen_registry import KEYS, SCREENS_IN_ORDER

if TYPE_CHECKING:
    from screens.base import DistillHost
    from tui.engine.backend import Backend, Backends
    from tui.engine.finetune import JobUpdate
    from tui.engine.selection import CompletionSelection

# Worker groups that write how they ended (a generation's in-flight items and run status, an
# eval run's status) and that quitting waits for after cancelling them: the Generate
# screen's run, the Evals screen's grading, the Compare screen's grading.
WAIT_ON_QUIT = frozenset({"generate", "eval-run", "compare-grade", "recipe"})


class DistillApp(App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "distill-tui"
    MODES = {spec.mode: spec.factory for spec in SCREENS_IN_ORDER}
    BINDINGS = [
        *(
            # Only the Recipe key is in the footer (it lists the others); all are in `?` and
            # the palette. Eight screen keys leave no room for a screen's own keys at 120 cols.
            Binding(
                spec.key,
                f"switch_mode('{spec.mode}')",
                spec.title,
                show=spec.mode == "recipe",
                id=f"go.{spec.mode}",
            )
            for spec in SCREENS_IN_ORDER
        ),
        Binding("question_mark", "toggle_help", "Keys", key_display="?", id="app.help"),
        Binding("q", "quit", "Quit", id="app.quit"),
        Binding("escape", "back", "Back", show=False, id="app.back"),
    ]

    # What the status line shows; set by the backend worker.
    backend_label: reactive[str] = reactive("")

    def __init__(self, settings: Settings, store: Store, *, start_backend: bool = True) -> None:
        super().__init__()
        self.settings = settings
        self.store = store
        self.start_backend = start_backend
        self.backend: Backend | None = None  # the student's (and the default) backend
        self.backends: Backends | None = None
        self._mode_history: list[str] = []
        self.job_updates: dict[int, JobUpdate] = {}
        self._watching: set[int] = set()
        self._asking_to_quit = False  # q's question about a job the server would end
        # Shared between screens: the dataset open on the Dataset screen (the Generate
        # screen's default), and the completions picked on the Completions screen for the
        # Evals or the Fine-tune screen (the mode they were handed to).
        self.current_dataset_id: int | None = None
        self.selection: CompletionSelection | None = None
        self.selection_for: str | None = None
        self.backend_label = f"{settings.backend_kind()} (not started)"

    @property
    def workspace(self) -> Path:
        return self.store.directory

    def on_mount(self) -> None:
        self.switch_mode("dataset")
        if self.store.read_only:
            self.notify(
                self.read_only_notice(),
                title="Read-only",
                severity="warning",
                timeout=60,
                markup=False,
            )
        if self.start_backend:
            self.connect_backend()

    def read_only_notice(self) -> str:
        """Why this window only looks (one writer per workspace): who writes, if anyone."""
        from tui.engine.store import workspace_writer

        writer = workspace_writer(self.store.directory)
        why = (
            f"the workspace is in use by {writer.describe()}"
            if writer is not None
            else "the workspace was opened read-only"
        )
        return (
            f"Read-only: {why}. You can look at everything; changes are refused. "
            "To make changes, close the other one and reopen this workspace."
        )

    # -- navigation ----------------------------------------------------------------------

    async def action_switch_mode(self, mode: str) -> None:
        if mode == self.current_mode:
            return
        if self.current_mode:
            self._mode_history.append(self.current_mode)
        await self.switch_mode(mode)

    async def action_back(self) -> None:
        """esc: close the top screen of this step, else return to the previous step."""
        if len(self.screen_stack) > 1:
            self.pop_screen()
        elif self._mode_history:
            await self.switch_mode(self._mode_history.pop())

    def screen_key(self, mode: str) -> str:
        """The number key that opens a screen (the Recipe view names it)."""
        return KEYS.get(mode, "")

    async def hand_over(self, selection: CompletionSelection, mode: str) -> None:
        """The Completions screen's Evaluate or Distill: the selection goes to the screen of
        `mode`, which takes it when shown."""
        self.selection = selection
        self.selection_for = mode
        await self.action_switch_mode(mode)

    def start_generation_with(self, model: str, system_prompt: str = "") -> None:
        """The Fine-tune screen's "generate with it": the Generate screen, set for the model."""
        self.call_later(self._generate_with, model, system_prompt)

    async def _generate_with(self, model: str, system_prompt: str) -> None:
        await self.action_switch_mode("generate")
        from screens.generate import GenerateScreen

        if isinstance(self.screen, GenerateScreen):
            self.screen.prefill(model=model, role="fine-tuned", system_prompt=system_prompt)

    async def action_quit(self) -> None:
        """q: a fine-tuning job the embedded backend trains ends with its server, which stops
        with the last app using it: asked first, as a stray q must not throw away a
        fine-tune. Then a generation or a grading going on is cancelled and given a moment to
        record its in-flight items and its status, so the next session sees a cancelled run
        or eval run (not one still "running" that no one runs)."""
        if self._asking_to_quit:
            return
        job = self._job_ending_with_the_server()
        if job is None:
            await self._quit()
            return
        from screens.dialogs import ConfirmDialog

        async def answered(quit_anyway: bool | None) -> None:
            self._asking_to_quit = False
            if quit_anyway:
                await self._quit()

        self._asking_to_quit = True
        self.push_screen(
            ConfirmDialog(
                "Quit and lose the fine-tuning job?",
                f"{job.remote_id} (fine-tuning {job.base_model}) trains on the embedded "
                "backend, whose server stops with this window: the job ends unfinished. The "
                "Fine-tune screen (or the recipe's ctrl+s) trains again from the start later.",
                ok="Quit",
                cancel="Keep training",
            ),
            answered,
        )

    def _job_ending_with_the_server(self) -> JobInfo | None:
        """A job the embedded backend trains that quitting would end: none on another backend,
        nor when another app (a window, `distill-tui run`) keeps the server going."""
        from tui.engine.finetune import unfinished_jobs

        backend = self.backend
        if backend is None or backend.server is None or self.store.read_only:
            return None
        jobs = unfinished_jobs(self.store, str(backend.client.base_url))
        if not jobs or not backend.server.ends_with_this_app():
            return None
        return jobs[0]

    async def _quit(self) -> None:
        running = [w for w in self.workers if w.group in WAIT_ON_QUIT and not w.is_finished]
        for worker in running:
            worker.cancel()
        if running:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.workers.wait_for_complete(running), 10)
        self.exit()

    def action_toggle_help(self) -> None:
        if self.screen.query("HelpPanel"):
            self.action_hide_help_panel()
        else:
            self.action_show_help_panel()

    def get_system_commands(self, screen: Screen[object]) -> Iterable[SystemCommand]:
        for spec in SCREENS_IN_ORDER:
            yield SystemCommand(
                f"Go to {spec.title}",
                f"{spec.help} (key {spec.key})",
                lambda mode=spec.mode: self.run_action(f"switch_mode('{mode}')"),
            )
        # The current screen's own actions, so the palette offers what the footer shows.
        if isinstance(screen, DistillScreen):
            yield from screen.palette_commands()
        yield from super().get_system_commands(screen)

    # -- backend -------------------------------------------------------------------------

    # A backend that cannot open (no local extra, a server that won't start) is said on the
    # status line and in a notification (_report_worker_error); the app stays open.
    @work(exclusive=True, group="backend", exit_on_error=False)
    async def connect_backend(self) -> None:
        from tui.engine.backend import open_backends

        def progress(message: str) -> None:
            self.backend_label = message

        # One client per distinct backend: the teacher may live on OpenAI or a GPU box while
        # the student is trained on and served by the local backend. Screens that act for
        # the student (generation by default, fine-tuning, jobs) use `backend`; judges use
        # `backend_for("judge")`.
        backends = await open_backends(self.settings, on_progress=progress)
        self.backends = backends
        self.backend = backends.student
        self.backend_label = backends.label
        self.watch_earlier_jobs(backends.student)

    def watch_earlier_jobs(self, backend: Backend) -> None:
        """Jobs an earlier session started on the student's backend are polled again (their
        ids are in the store), the embedded backend's whatever port it had then."""
        from tui.engine.finetune import unfinished_jobs

        local = backend.spec.kind == "local"
        for job in unfinished_jobs(self.store, str(backend.client.base_url), any_port=local):
            self.watch_job(job.id)

    def watch_job(self, job_id: int) -> None:
        """Poll a fine-tuning job in the background until it ends (app-wide, so it goes on
        whichever screen is shown). Not in a read-only window: the writer records it."""
        if self.store.read_only:
            return
        if job_id not in self._watching:
            self._watching.add(job_id)
            self._watch_job(job_id)

    @work(group="jobs")
    async def _watch_job(self, job_id: int) -> None:
        import openai

        from tui.engine.finetune import JobWatcher

        backend = self.backend
        if backend is None:
            return

        def updated(update: JobUpdate) -> None:
            self.job_updates[job_id] = update

        try:
            job = await JobWatcher(self.store, backend.client).watch(job_id, updated)
        except openai.NotFoundError:
            # Another server's at the same address (a port the local backend once had): not
            # this backend's job to follow.
            return
        finally:
            self._watching.discard(job_id)
        with contextlib.suppress(ScreenStackError):  # the app closing meanwhile
            self.screen.post_message(JobEnded(job))
        if job.status == "succeeded":
            self.notify(
                f"{job.fine_tuned_model} is ready (Fine-tune screen: g generates).", markup=False
            )
        else:
            self.notify(
                f"Fine-tuning job {job.remote_id} {job.status}. {job.error or ''}",
                severity="warning",
                markup=False,
            )

    def backend_for(self, role: str) -> Backend | None:
        """The open backend of a role (teacher, student, judge); None until connected."""
        if self.backends is None:
            return self.backend
        return self.backends.by_role.get(role, self.backend)  # type: ignore[call-overload]

    async def on_unmount(self) -> None:
        if self.backends is not None:
            await self.backends.aclose()
        elif self.backend is not None:
            await self.backend.aclose()

    @on(Worker.StateChanged)
    def _report_worker_error(self, event: Worker.StateChanged) -> None:
        """One place that turns a failed worker into a readable notification."""
        if event.state != WorkerState.ERROR or event.worker.error is None:
            return
        error = event.worker.error
        if event.worker.group == "backend":
            self.backend_label = f"{self.settings.backend_kind()} (failed: {error})"
        self.notify(
            f"{error}",
            title=f"{event.worker.name or 'task'} failed",
            severity="error",
            markup=False,
        )


if TYPE_CHECKING:
    # Screens see the app as a DistillHost; this line has mypy check that it is one.
    _APP_IS_A_HOST: type[DistillHost] = DistillApp
