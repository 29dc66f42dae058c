"""The jobs panel: the workspace's fine-tuning jobs, and for the one selected its status, its
clock, its checkpoints, a loss chart and its live events. It redraws once a second from what
the app's job watchers stored; cancelling a job and generating with its model are the
screen's."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.markup import escape
from textual.message import Message
from textual.widgets import Label, ListItem, ListView, RichLog, Static

from tui.engine.finetune import metrics_series
from tui.engine.store import JobInfo
from tui.widgets.loss_chart import LossChart
from tui.widgets.progress_line import Figures, ProgressLine

if TYPE_CHECKING:
    from screens.base import DistillHost


class JobsPanel(Vertical):
    """The jobs and the selected job's detail. Reads the app's store and job updates."""

    @dataclass
    class JobSelected(Message):
        """Another job was highlighted in the list."""

        job_id: int

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.selected_job: int | None = None
        self._job_ids: list[int] = []
        self._last_status: dict[int, str] = {}
        self._shown_events = 0

    @property
    def distill(self) -> DistillHost:
        return cast("DistillHost", self.app)

    def compose(self) -> ComposeResult:
        yield Label("Jobs", classes="section")
        yield ListView(id="jobs")
        yield Static("", id="job-detail")
        yield ProgressLine(id="job-clock")
        yield LossChart(id="loss")
        yield RichLog(id="events", wrap=True, markup=False, max_lines=2000)

    def on_mount(self) -> None:
        self.load_jobs()
        self.set_interval(1.0, self._tick)

    def select(self, job_id: int) -> None:
        """Show a job (one just created) and list it."""
        self.selected_job = job_id
        self.load_jobs()

    def load_jobs(self) -> None:
        jobs = self.distill.store.list_jobs()
        view = self.query_one("#jobs", ListView)
        # Rows carry no ids: clear() removes them asynchronously, and a new row with the same
        # id would collide with the one being removed. The index maps to _job_ids instead.
        self._job_ids = [job.id for job in jobs]
        view.clear()
        view.extend(
            ListItem(
                Label(
                    f"{job.remote_id}  {job.status:<16} {job.fine_tuned_model or job.base_model}",
                    markup=False,
                )
            )
            for job in jobs
        )
        if jobs and self.selected_job is None:
            self.selected_job = jobs[0].id
        if self.selected_job in self._job_ids:
            view.index = self._job_ids.index(self.selected_job)
        self._show_job()

    @on(ListView.Highlighted, "#jobs")
    def _job_highlighted(self, event: ListView.Highlighted) -> None:
        event.stop()
        index = self.query_one("#jobs", ListView).index
        if index is None or index >= len(self._job_ids):
            return
        job_id = self._job_ids[index]
        if job_id != self.selected_job:
            self.selected_job = job_id
            self.query_one("#events", RichLog).clear()
            self._shown_events = 0
            self._show_job()
            self.post_message(self.JobSelected(job_id))

    def _show_job(self) -> None:
        detail = self.query_one("#job-detail", Static)
        if self.selected_job is None:
            detail.update("No jobs yet: validate, then launch (L).")
            self.query_one("#job-clock", ProgressLine).show("")
            return
        store = self.distill.store
        job = store.get_job(self.selected_job)
        update = self.distill.job_updates.get(job.id)
        lines = [f"[b]{escape(job.remote_id)}[/b]  {job.status}  base {escape(job.base_model)}"]
        if update is not None and update.trained_tokens:
            lines.append(f"trained tokens {update.trained_tokens:,}")
        lines.append(f"created {job.created_at[:19].replace('T', ' ')}")
        finish = update.estimated_finish if update is not None and not job.finished else None
        self.query_one("#job-clock", ProgressLine).follow(lambda: _clock_figures(job, finish))
        if job.fine_tuned_model:
            lines.append(
                f"[green]fine-tuned model {escape(job.fine_tuned_model)}[/green] — g generates"
            )
        if job.error:
            lines.append(f"[red]{escape(job.error)}[/red]")
        if update is not None and update.checkpoints:
            cps = ", ".join(
                f"step {c.get('step_number')}: {_fmt(c.get('metrics', {}))}"
                for c in update.checkpoints[:5]
            )
            lines.append(f"checkpoints {cps}")
        detail.update("\n".join(lines))
        events = store.job_events(job.id)
        log = self.query_one("#events", RichLog)
        for event in events[self._shown_events :]:
            log.write(f"{event.created_at[11:19]} {event.level:<5} {event.message}")
        self._shown_events = len(events)
        self.query_one(LossChart).show(metrics_series(events))

    def _tick(self) -> None:
        """Once a second: redraw from what the app's job watchers stored."""
        updates = self.distill.job_updates
        statuses = {job_id: u.job.status for job_id, u in updates.items()}
        if statuses != self._last_status:
            self._last_status = statuses
            self.load_jobs()
        elif self.selected_job in updates:
            self._show_job()


def _fmt(metrics: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.3f}" for k, v in metrics.items() if isinstance(v, float))


def _clock_figures(job: JobInfo, estimated_finish: int | None) -> Figures | None:
    """The job's clocks: time since it was created (until it finished), and the backend's
    estimate of when it ends."""
    try:
        start = datetime.fromisoformat(job.created_at)
        end = datetime.fromisoformat(job.finished_at or job.updated_at) if job.finished else None
    except ValueError:
        return None
    elapsed = ((end or datetime.now(start.tzinfo)) - start).total_seconds()
    eta = max(0.0, estimated_finish - time.time()) if estimated_finish else None
    return Figures(elapsed=elapsed, running=eta is not None, eta=eta)
